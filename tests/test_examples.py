"""Every ``examples/*.py`` runs to completion (exit 0) as a subprocess, within a time limit.

New examples are picked up automatically. An example that needs a program declares it in a
comment line such as ``# needs: curl`` or ``# needs: openssl, nghttp``; without the program
the example is skipped on a developer's machine and fails in CI (``CI`` set), where the
program must be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
WITH_PEER = {"socks5_get.py"}  # take a peer's address: run by their own tests below, which start the peer
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name not in WITH_PEER)
TIMEOUT = 120.0
NEEDS = re.compile(r"^#\s*needs:\s*(.+)$", re.MULTILINE)


def needed_programs(path: Path) -> list[str]:
    """The programs an example declares with ``# needs: a, b`` comment lines."""
    return [name for line in NEEDS.findall(path.read_text()) for name in re.split(r"[,\s]+", line.strip()) if name]


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ has no *.py files"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_example_runs(path: Path) -> None:
    missing = [p for p in needed_programs(path) if shutil.which(p) is None]
    if missing:
        message = f"{path.name} needs {', '.join(missing)}, not installed"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install it: .ci/run)")
        pytest.skip(message)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, str(path)], cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"{path.name} exited {result.returncode}:\n{output[-4000:]}"


def test_needs_comment_is_parsed(tmp_path: Path) -> None:
    example = tmp_path / "x.py"
    example.write_text('"""doc"""\n# needs: curl, openssl\n# needs: nghttp\nprint("hi")\n')
    assert needed_programs(example) == ["curl", "openssl", "nghttp"]


async def test_socks5_get_through_dante(tmp_path: Path) -> None:
    """``examples/socks5_get.py PROXY``: its own page fetched through a Dante started here."""
    from test_socks5 import danted

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with trio.fail_after(TIMEOUT):
        async with danted(tmp_path) as (port, _):
            result = await trio.run_process(
                [sys.executable, str(ROOT / "examples" / "socks5_get.py"), f"127.0.0.1:{port}"],
                cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0 and "every byte arrived" in output, output[-4000:]
