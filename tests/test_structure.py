"""The import rules of docs/design.md ("The package map"), checked on the source with ``ast``.

Every module of ``stack/`` and ``layers/`` is parsed (not imported) and every ``import`` in it is
collected, at any depth: module level, inside functions, under ``if TYPE_CHECKING:``. Each import
becomes an edge to the most specific module of the two packages it names (``from stack import
streams`` is ``stack.streams``; ``from stack.streams import ByteStream`` is ``stack.streams``;
``import stack`` is the package ``stack`` itself); imports of anything else are ignored. A parent
package that Python runs first (``stack/__init__.py`` before ``stack.streams``) is not an edge: a
package and its submodules would otherwise always form a circle.

The rules:

* the core (``stack`` and ``stack.*`` outside ``stack.cli``) imports no ``layers`` module;
* no ``layers`` module imports the app (``stack.cli`` and below);
* no circle: no module reaches itself through the edges, whatever the length of the path.

Each failure names the offenders (the importing file and what it imports, or the modules of the
circle in order). The checker itself is tested on a synthetic package tree in ``tmp_path``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stack", "layers")
APP = "stack.cli"


# ---- the checker ------------------------------------------------------------------------------


def module_name(root: Path, path: Path) -> str:
    """``stack/cli/serve.py`` -> ``stack.cli.serve``; ``stack/cli/__init__.py`` -> ``stack.cli``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the checked packages under ``root``, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def _resolve(dotted: str, modules: dict[str, Path]) -> str | None:
    """The most specific known module that ``dotted`` names (itself or a parent), or None."""
    while dotted:
        if dotted in modules:
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def _imports(tree: ast.AST, name: str, is_package: bool, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``tree`` that names a known module.

    ``import X.Y`` is X.Y (or the nearest known parent); ``from X import a`` is ``X.a`` when that is
    a module, else X. Relative imports are resolved against the module's own package.
    """
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                target = submodule if submodule in modules else _resolve(source, modules)
                if target is not None:
                    yield target, node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the modules of ``stack/`` and ``layers/``."""
    modules = find_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for target, line in sorted(_imports(tree, name, path.name == "__init__.py", modules), key=lambda e: e[1]):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _is_core(name: str) -> bool:
    return name.split(".")[0] == "stack" and not _in(name, APP)


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden_imports(root: Path) -> list[str]:
    """``"stack/x.py:12 imports layers.tcp (...)"`` for every import that breaks a package rule."""
    modules = find_modules(root)
    out = []
    for name, edges in sorted(import_graph(root).items()):
        where = modules[name].relative_to(root)
        for target, line in sorted(edges.items()):
            if _is_core(name) and _in(target, "layers"):
                out.append(f"{where}:{line} imports {target} (the core imports no layers module)")
            elif _in(name, "layers") and _in(target, APP):
                out.append(f"{where}:{line} imports {target} (a layer never imports the app)")
    return out


def circles(root: Path) -> list[list[str]]:
    """Every import circle: the strongly connected components of more than one module (Tarjan),
    and modules that import themselves. Each is one circle path, in import order."""
    graph = {name: sorted(edges) for name, edges in import_graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for start in sorted(graph):
        if start in index:
            continue
        # Iterative Tarjan: (node, iterator over its successors).
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(graph[start])))
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph[succ])))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(_cycle_path(sorted(component), graph))
    return components


def _cycle_path(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """One closed path through the component, from its first module back to it (a BFS)."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in graph[node]:
                if succ == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = came_from[node]
                    return [start, *reversed(path[1:]), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    nxt.append(succ)
        frontier = nxt
    return [*component, start]  # pragma: no cover - a component always has a cycle


# ---- the rules on this repository ---------------------------------------------------------------


def test_the_core_imports_no_layer_and_no_layer_imports_the_app() -> None:
    offenders = forbidden_imports(ROOT)
    assert not offenders, "imports against the package map (docs/design.md):\n  " + "\n  ".join(offenders)


def test_no_import_circle() -> None:
    found = circles(ROOT)
    assert not found, "import circles (docs/design.md):\n  " + "\n  ".join(" -> ".join(c) for c in found)


# ---- the checker on a synthetic tree -------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


CLEAN = {
    "stack/__init__.py": "from .streams import Stream\n",
    "stack/streams.py": "from .errors import Broken\n",
    "stack/errors.py": "class Broken(Exception): ...\n",
    "stack/testing/__init__.py": "from stack.streams import Stream\nfrom . import _kit\n",
    "stack/testing/_kit.py": "from ..errors import Broken\n",
    "stack/cli/__init__.py": "from layers import tcp\nfrom . import serve\n",
    "stack/cli/serve.py": "import layers.tcp\nfrom stack.cli.common import x\n",
    "stack/cli/common.py": "from layers.framing import prefix\nx = 1\n",
    "layers/__init__.py": "",
    "layers/tcp.py": "from stack import Stream\nfrom stack.streams import Stream as S\n",
    "layers/framing.py": "from . import tcp\nimport os\nfrom typing import TYPE_CHECKING\n",
}


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    write(tmp_path, CLEAN)
    assert forbidden_imports(tmp_path) == []
    assert circles(tmp_path) == []
    graph = import_graph(tmp_path)
    assert set(graph["layers.framing"]) == {"layers.tcp"}
    assert set(graph["layers.tcp"]) == {"stack", "stack.streams"}
    assert set(graph["stack.cli"]) == {"layers.tcp", "stack.cli.serve"}
    assert set(graph["stack.cli.serve"]) == {"layers.tcp", "stack.cli.common"}
    assert set(graph["stack.testing"]) == {"stack.streams", "stack.testing._kit"}
    assert set(graph["stack.testing._kit"]) == {"stack.errors"}


def test_checker_catches_forbidden_imports_at_any_depth(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            **CLEAN,
            # a core module reaching a layer inside a function, another under TYPE_CHECKING
            "stack/errors.py": "class Broken(Exception):\n    def f(self):\n        from layers import tcp\n",
            "stack/testing/_kit.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import layers.framing\n",
            # a layer importing the app
            "layers/framing.py": "def main():\n    from stack.cli.common import x\n",
        },
    )
    offenders = forbidden_imports(tmp_path)
    assert offenders == [
        "layers/framing.py:2 imports stack.cli.common (a layer never imports the app)",
        "stack/errors.py:3 imports layers.tcp (the core imports no layers module)",
        "stack/testing/_kit.py:3 imports layers.framing (the core imports no layers module)",
    ]


def test_checker_catches_circles_of_any_length(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            **CLEAN,
            # two modules, one of the imports lazy
            "layers/tcp.py": "from stack import Stream\ndef f():\n    from layers import framing\n",
            # three modules through relative imports
            "stack/cli/serve.py": "from .common import x\n",
            "stack/cli/common.py": "from . import workers\nx = 1\n",
            "stack/cli/workers.py": "from stack.cli import serve\n",
            # a module importing itself
            "stack/errors.py": "import stack.errors\n",
        },
    )
    found = circles(tmp_path)
    assert sorted(found) == [
        ["layers.framing", "layers.tcp", "layers.framing"],
        ["stack.cli.common", "stack.cli.workers", "stack.cli.serve", "stack.cli.common"],
        ["stack.errors", "stack.errors"],
    ]
