"""The benchmark framework: groups, contenders, pinned subprocesses, interleaved rounds, ratio tables.

A *group* is one question ("how fast is bulk TCP?") answered by several *contenders* (the peers and
ours) under the same load.  The runner measures every contender of a group once per round, in the
same order each round (A, B, C, A, B, C, ...), so slow drift of a noisy host hits all of them alike;
it reports the median per contender and its ratio to the group's baseline.

Every measurement runs in fresh subprocesses: the server side is pinned to ``SERVER_CPU`` and the
load side to ``LOAD_CPU`` with ``taskset``.  Nothing a contender does can crash the runner: a failure
is recorded and shown in the table.  Every wait is bounded and every process started is stopped
(its whole process group: each child runs in a new session).

Group modules (``benchmarks/bench_*.py``) call :func:`register` at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
PY = sys.executable
SERVER_CPU = 0
LOAD_CPU = 1

# Set from the command line (--no-pin) or when taskset / a second CPU is missing.
PINNING = {"enabled": bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2}


class Failed(Exception):
    """A measurement did not produce a figure; the message goes into the table."""


@dataclasses.dataclass
class Settings:
    rounds: int
    quick: bool


@dataclasses.dataclass
class Measurement:
    value: float
    errors: int = 0  # protocol/socket errors the load generator counted (shown, not fatal)
    note: str = ""


# --------------------------------------------------------------------------- processes


def pinned(cmd: Sequence[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if PINNING["enabled"] else list(cmd)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONDEVMODE", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-400:]


class Proc:
    """A child process in its own session, stdout/stderr in temp files (never a full pipe)."""

    _live: list[Proc] = []  # noqa: RUF012 - registry of everything started, for stop_all()

    def __init__(self, cmd: Sequence[str], *, stdin: bool = False) -> None:
        self.cmd = list(cmd)
        # Files, not pipes: a chatty child can never block on a full pipe.  Closed by close_files().
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=REPO,
                env=child_env(),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
                start_new_session=True,
            )
        except OSError as exc:
            raise Failed(f"cannot start {self.cmd[0]}: {exc}") from exc
        Proc._live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def label(self) -> str:
        """A short name for messages: the program, or the module for ``python -m``."""
        cmd = self.cmd[3:] if self.cmd[:1] == ["taskset"] else self.cmd
        if len(cmd) > 2 and cmd[1] == "-m":
            return cmd[2]
        return Path(cmd[0]).name if cmd else "?"

    def _read(self, f: Any) -> str:
        # pread, not seek + read: the child writes through the same open file description, so
        # moving its offset here made the child's next write land in the wrong place.
        fd = f.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def stdout(self) -> str:
        return self._read(self._out)

    def stderr(self) -> str:
        return self._read(self._err)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def describe_exit(self) -> str:
        return f"exited with code {self.popen.returncode}: {tail(self.stderr() or self.stdout())}"

    def wait_for_output(self, pattern: str, timeout: float, *, stderr_too: bool = True) -> re.Match[str]:
        """Wait until `pattern` matches the output so far; Failed if the process exits first."""
        rx = re.compile(pattern, re.MULTILINE)
        end = time.monotonic() + timeout
        while True:
            text = self.stdout() + ("\n" + self.stderr() if stderr_too else "")
            m = rx.search(text)
            if m:
                return m
            if self.exited():
                raise Failed(f"{self.label} {self.describe_exit()}")
            if time.monotonic() > end:
                raise Failed(f"no {pattern!r} within {timeout:.0f}s: {tail(text)}")
            time.sleep(0.02)

    def wait_for_port(self, port: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            if self.exited():
                raise Failed(f"server {self.describe_exit()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise Failed(f"server not accepting on port {port} within {timeout:.0f}s")
            time.sleep(0.05)

    def send_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise Failed(f"child stdin closed: {self.describe_exit() if self.exited() else exc}") from exc

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise Failed(f"{self.label} still running after {timeout:.0f}s") from exc

    def stop(self, grace: float = 5.0) -> None:
        """SIGINT to the child's process group, SIGKILL after `grace` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children the leader left behind in its group (e.g. a crashed multi-process server).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.stdin:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self in Proc._live:
            Proc._live.remove(self)

    def close_files(self) -> None:
        self._out.close()
        self._err.close()


def stop_all() -> None:
    for p in list(Proc._live):
        p.stop(grace=2.0)


def run_load(cmd: Sequence[str], timeout: float) -> str:
    """Run a load generator pinned to LOAD_CPU; return its stdout, Failed on error or timeout."""
    proc = Proc(pinned(cmd, LOAD_CPU))
    try:
        code = proc.wait(timeout)
        if code != 0:
            raise Failed(f"{proc.label} {proc.describe_exit()}")
        return proc.stdout()
    finally:
        proc.stop()
        proc.close_files()


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS from /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise Failed(f"cannot read RSS of {pid}: {exc}") from exc
    raise Failed(f"no VmRSS for {pid}")


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- contenders


class Contender:
    """One line of a group's table.

    requires: modules that must import for the contender to run, as "pkg.mod" or "pkg.mod:attr,attr"
        (a name ending in "__main__" is only looked up, not run).  Checked once, in a subprocess.
    probe: a command that must exit 0 (e.g. ``python -m stack serve --help``).
    tools: programs that must be on PATH (wrk, h2load).
    Missing any of these → "not available" in the table, not a failure.
    baseline: name of the contender this one's ratio is against (default: the group's baseline).
    target: the ratio this contender should reach (>= for higher-is-better groups, <= otherwise).
    ours: this is trio-stack's own contender: the "ours / peer" lines under the table compare it with
        every peer (a contender not ours) that has the same baseline.
    versus: for a peer, the ratio ours / this peer should reach (checked in those lines).
    """

    def __init__(
        self,
        name: str,
        *,
        requires: Sequence[str] = (),
        probe: Sequence[str] | None = None,
        tools: Sequence[str] = (),
        baseline: str | None = None,
        target: float | None = None,
        ours: bool = False,
        versus: float | None = None,
    ) -> None:
        self.name = name
        self.ours = ours
        self.versus = versus
        self.requires = tuple(requires)
        self.tools = tuple(tools)
        self.probe = list(probe) if probe else None
        self.baseline = baseline
        self.target = target
        self._availability: tuple[str | None] | None = None

    def unavailable(self) -> str | None:
        """None when runnable, else why not (cached)."""
        if self._availability is None:
            self._availability = (self._check(),)
        return self._availability[0]

    def _check(self) -> str | None:
        missing = [t for t in self.tools if not shutil.which(t)]
        if missing:
            return f"not available: {', '.join(missing)} not installed"
        if self.requires:
            script = (
                "import importlib, importlib.util, sys\n"
                "for spec in sys.argv[1:]:\n"
                "    mod, _, attrs = spec.partition(':')\n"
                "    if mod.endswith('__main__'):\n"
                "        if importlib.util.find_spec(mod) is None:\n"
                "            sys.exit('no module ' + mod)\n"
                "        continue\n"
                "    m = importlib.import_module(mod)\n"
                "    for a in filter(None, attrs.split(',')):\n"
                "        getattr(m, a)\n"
            )
            r = subprocess.run(
                [PY, "-c", script, *self.requires],
                cwd=REPO,
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if r.returncode != 0:
                return "not available: " + (tail(r.stderr, 1) or f"needs {', '.join(self.requires)}")
        if self.probe:
            try:
                r = subprocess.run(
                    self.probe,
                    cwd=REPO,
                    env=child_env(),
                    capture_output=True,
                    text=True,
                    timeout=120,  # a probe may build a peer (go_build: a few seconds, more on a busy host)
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"not available: {exc}"
            if r.returncode != 0:
                return "not available: " + (tail(r.stderr, 1) or f"{' '.join(self.probe)} failed")
        return None

    def measure(self, settings: Settings) -> Measurement:
        raise NotImplementedError


Fmt = Callable[[Settings], dict[str, Any]]


def _fill(cmd: Sequence[str], values: dict[str, Any]) -> list[str]:
    return [part.format(**values) for part in cmd]


class PairContender(Contender):
    """Two processes: a receiver pinned to SERVER_CPU and a sender pinned to LOAD_CPU.

    The receiver prints ``READY <port>`` once listening, then ``RESULT <json>`` with at least
    ``{"value": float}`` before exiting.  The sender command may use ``{port}``.  Both commands may
    use the names returned by ``params(settings)`` as ``{name}`` (e.g. sizes that depend on --quick).
    """

    def __init__(
        self,
        name: str,
        receiver: Sequence[str],
        sender: Sequence[str],
        *,
        params: Fmt = lambda s: {},
        timeout: float = 120.0,
        **kw: Any,
    ) -> None:
        super().__init__(name, **kw)
        self.receiver = list(receiver)
        self.sender = list(sender)
        self.params = params
        self.timeout = timeout

    def measure(self, settings: Settings) -> Measurement:
        values = self.params(settings)
        recv = Proc(pinned(_fill(self.receiver, values), SERVER_CPU))
        try:
            port = int(recv.wait_for_output(r"^READY (\d+)", 20, stderr_too=False).group(1))
            send = Proc(pinned(_fill(self.sender, {**values, "port": port}), LOAD_CPU))
            try:
                code = send.wait(self.timeout)
                if code != 0:
                    raise Failed(f"sender {send.describe_exit()}")
            finally:
                send.stop()
                send.close_files()
            code = recv.wait(30)
            if code != 0:
                raise Failed(f"receiver {recv.describe_exit()}")
            m = re.search(r"^RESULT (.*)$", recv.stdout(), re.MULTILINE)
            if not m:
                raise Failed(f"receiver printed no RESULT: {tail(recv.stdout() + recv.stderr())}")
            result = json.loads(m.group(1))
            return Measurement(float(result["value"]), int(result.get("errors", 0)), result.get("note", ""))
        finally:
            recv.stop()
            recv.close_files()


@dataclasses.dataclass
class Running:
    """A started server, as a load step sees it."""

    proc: Proc
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclasses.dataclass
class Server:
    """How to start one server program.  `cmd` may use {port}; it is run pinned to SERVER_CPU.

    ready: a regex the server prints when it is ready (checked on stdout and stderr) in addition to
    the port accepting connections.  Groups that read the server's RSS need its pid to be the serving
    process (no forking); the req/s groups do not (granian serves from a child it spawns).
    tools: programs that must be on PATH for this server (added to the contender's own tools).
    """

    name: str
    cmd: Sequence[str]
    requires: Sequence[str] = ()
    probe: Sequence[str] | None = None
    tools: Sequence[str] = ()
    ready: str | None = None
    startup_timeout: float = 20.0


class ServerContender(Contender):
    """A server process pinned to SERVER_CPU (fresh for each measurement) plus a load step.

    `load(running, settings)` runs the load generator (normally through :func:`run_load`, which pins
    it to LOAD_CPU) and returns the figure.
    """

    def __init__(
        self,
        name: str,
        server: Server,
        load: Callable[[Running, Settings], Measurement],
        **kw: Any,
    ) -> None:
        kw.setdefault("requires", server.requires)
        kw.setdefault("probe", server.probe)
        kw["tools"] = [*kw.get("tools", ()), *server.tools]
        super().__init__(name, **kw)
        self.server = server
        self.load = load

    def measure(self, settings: Settings) -> Measurement:
        port = free_port()
        proc = Proc(pinned(_fill(self.server.cmd, {"port": port}), SERVER_CPU))
        try:
            if self.server.ready:
                proc.wait_for_output(self.server.ready, self.server.startup_timeout)
            proc.wait_for_port(port, self.server.startup_timeout)
            result = self.load(Running(proc, port), settings)
            if proc.exited():
                raise Failed(f"server {proc.describe_exit()}")
            return result
        finally:
            proc.stop()
            proc.close_files()


# --------------------------------------------------------------------------- groups


@dataclasses.dataclass
class Group:
    name: str
    title: str  # one line: what is measured, how
    unit: str
    baseline: str  # contender name
    contenders: list[Contender]
    rounds: int = 5  # default rounds (--rounds overrides; --quick uses 2)
    higher_is_better: bool = True
    order: int = 50  # position in "all groups"
    notes: str = ""  # printed under the table

    def contender(self, name: str) -> Contender:
        for c in self.contenders:
            if c.name == name:
                return c
        raise KeyError(name)


GROUPS: dict[str, Group] = {}


def register(group: Group) -> Group:
    names = [c.name for c in group.contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"group {group.name}: duplicate contender names")
    for c in group.contenders:
        base = c.baseline or group.baseline
        if base not in names:
            raise ValueError(f"group {group.name}: contender {c.name!r} has unknown baseline {base!r}")
    GROUPS[group.name] = group
    return group


def discover() -> dict[str, Group]:
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        importlib.import_module(f"benchmarks.{path.stem}")
    return dict(sorted(GROUPS.items(), key=lambda kv: (kv[1].order, kv[0])))


@dataclasses.dataclass
class Row:
    contender: Contender
    by_round: list[float | None] = dataclasses.field(default_factory=list)  # None: that run failed
    errors: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    unavailable: str | None = None

    @property
    def values(self) -> list[float]:
        return [v for v in self.by_round if v is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_group(group: Group, settings: Settings) -> list[Row]:
    rows = [Row(c) for c in group.contenders]
    for row in rows:
        row.unavailable = row.contender.unavailable()
        if row.unavailable:
            log(f"[{group.name}] {row.contender.name}: {row.unavailable}")
    active = [r for r in rows if not r.unavailable]
    for rnd in range(1, settings.rounds + 1):
        for row in active:
            t0 = time.monotonic()
            try:
                m = row.contender.measure(settings)
            except Failed as exc:
                row.by_round.append(None)
                row.failures.append(str(exc))
                log(f"[{group.name}] round {rnd}/{settings.rounds} {row.contender.name}: FAILED {exc}")
                continue
            except Exception as exc:  # a contender must never crash the runner
                row.by_round.append(None)
                row.failures.append(f"{type(exc).__name__}: {exc}")
                log(f"[{group.name}] round {rnd}/{settings.rounds} {row.contender.name}: ERROR {exc!r}")
                continue
            finally:
                stop_all()
            row.by_round.append(m.value)
            row.errors += m.errors
            if m.note and m.note not in row.notes:
                row.notes.append(m.note)
            log(
                f"[{group.name}] round {rnd}/{settings.rounds} {row.contender.name}: "
                f"{m.value:,.1f} {group.unit}"
                + (f" ({m.errors} errors)" if m.errors else "")
                + f" [{time.monotonic() - t0:.1f}s]"
            )
    return rows


# --------------------------------------------------------------------------- reporting


def machine_facts() -> list[tuple[str, str]]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for mod in ("trio", "h11", "h2", "hypercorn", "uvicorn", "httptools", "uvloop", "granian", "httpx"):
        try:
            from importlib.metadata import version

            versions.append(f"{mod} {version(mod)}")
        except Exception:
            versions.append(f"{mod} ?")
    tools = []
    for cmd in (["wrk", "-v"], ["h2load", "--version"], ["nghttpx", "--version"], ["haproxy", "-v"], ["go", "version"]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
            first = (r.stdout + r.stderr).strip().splitlines()
            if first:  # the program's name and the first word with a digit: its version
                version = next((w for w in first[0].split()[1:] if any(ch.isdigit() for ch in w)), "?")
                tools.append(f"{cmd[0]} {version}")
    pin = (
        f"server CPU {SERVER_CPU}, load CPU {LOAD_CPU} (taskset)"
        if PINNING["enabled"]
        else "OFF (no taskset or fewer than 2 CPUs, or --no-pin)"
    )
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpu", f"{cpu} ({os.cpu_count()} CPUs)"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("libraries", ", ".join(versions)),
        ("tools", ", ".join(tools) or "-"),
        ("pinning", pin),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min, at the start)"),
    ]


def _fmt(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def table(group: Group, rows: list[Row], settings: Settings) -> tuple[list[str], list[list[str]]]:
    """Header and cells; the baseline column appears only when a group has several baselines."""
    by_name = {r.contender.name: r for r in rows}
    several = len({r.contender.baseline or group.baseline for r in rows}) > 1
    header = ["contender", f"median ({group.unit})", "ratio" if several else f"ratio vs {group.baseline}"]
    header += ["paired"] + (["baseline"] if several else [])
    header += ["target", "spread", "runs", "notes"]
    body = []
    for row in rows:
        c = row.contender
        base_name = c.baseline or group.baseline
        base = by_name[base_name]
        med = row.median
        ratio = med / base.median if med is not None and base.median else None
        if row.unavailable:
            ratio_s = "-"
        elif c.name == base_name and med is not None:
            ratio_s = "base"
        else:
            ratio_s = f"{ratio:.2f}" if ratio is not None else "-"
        paired = paired_ratio(row, base)
        paired_s = "-" if paired is None or c.name == base_name else f"{paired:.2f}"
        spread = "-"
        if med and len(row.values) > 1:
            spread = f"±{(max(row.values) - min(row.values)) / 2 / med * 100:.0f}%"
        notes = []
        if row.unavailable:
            notes.append(row.unavailable)
        elif not row.values:
            notes.append("FAILED: " + (row.failures[-1] if row.failures else "?"))
        elif row.failures:
            notes.append(f"{len(row.failures)} failed run(s): {row.failures[-1]}")
        if row.errors:
            notes.append(f"{row.errors} errors")
        notes.extend(row.notes)
        runs = "-" if row.unavailable else f"{len(row.values)}/{settings.rounds}"
        cells = [c.name, _fmt(med), ratio_s, paired_s] + ([base_name] if several else [])
        cells += [_target(group, c, None if row.unavailable else ratio), spread, runs, "; ".join(notes)[:300]]
        body.append(cells)
    return header, body


def paired_ratio(row: Row, base: Row) -> float | None:
    """Median over rounds of (this run / the baseline's run in the same round): cancels slow drift."""
    pairs = [a / b for a, b in zip(row.by_round, base.by_round, strict=False) if a is not None and b]
    return statistics.median(pairs) if pairs else None


@dataclasses.dataclass
class Versus:
    """One "ours / peer" line: our contender's median over a peer's, in the same run."""

    ours: str
    peer: str
    ratio: float | None
    paired: float | None
    target: float | None
    target_text: str


def versus(group: Group, rows: list[Row]) -> list[Versus]:
    """Every contender marked ``ours`` against every available peer with the same baseline."""
    out = []
    for mine in rows:
        if not mine.contender.ours or mine.unavailable:
            continue
        base = mine.contender.baseline or group.baseline
        for peer in rows:
            c = peer.contender
            if c.ours or peer.unavailable or (c.baseline or group.baseline) != base:
                continue
            ratio = mine.median / peer.median if mine.median is not None and peer.median else None
            out.append(Versus(mine.contender.name, c.name, ratio, paired_ratio(mine, peer), c.versus,
                              _verdict(group, c.versus, ratio)))  # fmt: skip
    return out


def _versus_lines(group: Group, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    header = ["ours / peer", "ratio", "paired", "target"]
    body = [
        [
            f"{v.ours} / {v.peer}",
            "-" if v.ratio is None else f"{v.ratio:.2f}",
            "-" if v.paired is None else f"{v.paired:.2f}",
            v.target_text,
        ]
        for v in versus(group, rows)
    ]
    return header, body


def _target(group: Group, c: Contender, ratio: float | None) -> str:
    return _verdict(group, c.target, ratio)


def _verdict(group: Group, target: float | None, ratio: float | None) -> str:
    if target is None:
        return ""
    op = ">=" if group.higher_is_better else "<="
    text = f"{op} {target:g}"
    if ratio is not None:
        ok = ratio >= target if group.higher_is_better else ratio <= target
        text += " ok" if ok else " MISS"
    return text


Result = tuple[Group, list[Row], Settings]


def render_text(results: list[Result], *, facts: bool = True) -> str:
    out = []
    if facts:
        rows = machine_facts()
        width = max(len(k) for k, _ in rows)
        out.extend(f"{k:<{width}}  {v}" for k, v in rows)
    for group, rows_, settings in results:
        header, body = table(group, rows_, settings)
        better = "higher" if group.higher_is_better else "lower"
        out.append("")
        out.append(f"== {group.name}: {group.title}")
        out.append(f"   {group.unit}, {better} is better; {_rounds(settings)}")
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
        for r in [header, *body]:
            cells = [r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(widths))]
            out.append("  ".join(cells) + "  " + r[-1])
        vheader, vbody = _versus_lines(group, rows_)
        if vbody:
            out.append("   " + "(ratio: of the medians; paired: median of the per-round ratios)")
            vwidths = [max(len(r[i]) for r in [vheader, *vbody]) for i in range(len(vheader))]
            for r in [vheader, *vbody]:
                out.append("   " + "  ".join(r[i].ljust(vwidths[i]) if i == 0 else r[i].rjust(vwidths[i])
                                             for i in range(len(r))).rstrip())  # fmt: skip
        if group.notes:
            out.append(f"   {group.notes}")
    return "\n".join(out)


def _rounds(settings: Settings) -> str:
    return f"{settings.rounds} interleaved round(s), median per contender" + (
        ", --quick sizes" if settings.quick else ""
    )


def render_markdown(results: list[Result], *, facts: bool = True) -> str:
    out = []
    if facts:
        out += ["**Machine**", ""]
        out.extend(f"- {k}: {v}" for k, v in machine_facts())
    for group, rows, settings in results:
        header, body = table(group, rows, settings)
        better = "higher" if group.higher_is_better else "lower"
        out += ["", f"### `{group.name}`: {group.title}", ""]
        out += [f"{group.unit}, {better} is better; {_rounds(settings)}.", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---:" if 0 < i < len(header) - 1 else "---" for i in range(len(header))) + "|")
        out.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body)
        vheader, vbody = _versus_lines(group, rows)
        if vbody:
            out += ["", "| " + " | ".join(vheader) + " |", "|---|---:|---:|---:|"]
            out.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in vbody)
        if group.notes:
            out += ["", group.notes]
    return "\n".join(out)


def to_json(results: list[Result]) -> dict[str, Any]:
    return {
        "machine": dict(machine_facts()),
        "groups": {
            g.name: {
                "unit": g.unit,
                "baseline": g.baseline,
                "rounds": s.rounds,
                "quick": s.quick,
                "contenders": {
                    r.contender.name: {
                        "by_round": r.by_round,
                        "median": r.median,
                        "errors": r.errors,
                        "failures": r.failures,
                        "unavailable": r.unavailable,
                        "baseline": r.contender.baseline or g.baseline,
                        "target": r.contender.target,
                        "paired_ratio": paired_ratio(
                            r, next(b for b in rows if b.contender.name == (r.contender.baseline or g.baseline))
                        ),
                    }
                    for r in rows
                },
                "versus": [dataclasses.asdict(v) for v in versus(g, rows)],
            }
            for g, rows, s in results
        },
    }
