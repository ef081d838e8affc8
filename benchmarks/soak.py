"""Soak: a million requests of every kind against ``python -m stack serve``, watching for leaks.

::

    python benchmarks/soak.py                     # 1,000,000 requests (about 15-30 minutes on 2 cores)
    python benchmarks/soak.py --quick             # 50,000 requests, 2 s samples: a smoke run
    python benchmarks/soak.py --requests 200000 --interval 5

Not a test (it takes minutes and loads the host): a benchmark that ends with a verdict and exits
1 when a check fails. It needs ``h2load`` (nghttp2-client) and the ``websockets`` library.

Theory of operation. Two ``python -m stack serve DIR`` processes run, because one port cannot be
both: ``tls`` (HTTP/1.1 and HTTP/2 over TLS by ALPN, WebSocket over TLS) and ``clear``
(``--no-tls``: HTTP/1.1, HTTP/2 with prior knowledge, WebSocket). Both serve the same small site
(a 13-byte file, a small HTML page, a directory listing, a 256 KiB file that is streamed in
chunks). Against them, at the same time:

* **lanes**, all at once, each repeating its batch until ``--requests`` are done: long-lived
  HTTP/2 connections (``h2load -c2 -m10`` on each server, each of the two connections carrying
  ``--per-connection`` requests: 100,000 by default, the total's tenth with ``--quick``);
  ``h2load --h1`` (HTTP/1.1 keep-alive, several URIs) and ``h2load`` (HTTP/2, short connections)
  on both servers; a connection per request (HTTP/1.1 ``Connection: close``, raw sockets, plain and
  TLS); WebSocket echoes with the ``websockets`` library (each message sent and checked back, a
  request each); and aborting clients, which are counted apart: a request head cut in the middle,
  a request body cut in the middle, a response abandoned mid-body (half of them with a TCP reset),
  an HTTP/2 stream cut mid-body, a WebSocket frame cut in the middle.

Every ``--interval`` seconds each server is sampled: RSS (``VmRSS`` of ``/proc/PID/status``), open
file descriptors (``/proc/PID/fd``) and live trio tasks (``serve`` logs ``stats: N live trio
tasks`` on SIGUSR1: :func:`stack.cli.common.live_tasks`). One row per sample is printed.

The verdict, per server: *flat*, when RSS grows less than ``--tolerance`` (5 %) after warm-up
(``--warmup`` seconds): the mean of the last third of the samples taken under the whole mix
against the mean of the first third; fds and tasks swing with the connections open at the instant
a sample is taken (their trend is printed, not judged), so for them the check is *no leak at
rest*: once idle after the run they are back to their idle values after the warm-up batch; *no
server errors*: no WARNING, ERROR or traceback in its log; *every honest request answered*: 2xx
for each request the load generators sent (h2load's counts, our own clients' checks).

When RSS grows, ``benchmarks/tls_rss.py`` runs one server's share of this mix for a few minutes
and splits RSS into glibc's main heap and the rest, with malloc's in-use and free-but-held bytes
(how issue 17's TLS growth was found: OpenSSL state held by connections left in reference cycles).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h2.config
import h2.connection
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layers import certs  # noqa: E402 - after the path set-up, as the other benchmarks

ERROR_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
H2LOAD_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
URIS = ("/hello.txt", "/hello.txt", "/page.html", "/", "/hello.txt", "/stream.bin")


# --------------------------------------------------------------------------------------------------
# bookkeeping


@dataclass
class Tally:
    """What the clients did: honest requests sent and answered (2xx), by kind; aborting clients."""

    sent: dict[str, int] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)
    aborted: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, sent: int, answered: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + sent
        self.answered[kind] = self.answered.get(kind, 0) + answered
        if answered != sent and len(self.problems) < 20:
            self.problems.append(f"{kind}: {sent - answered} of {sent} not answered with 2xx")

    def abort(self, kind: str) -> None:
        self.aborted[kind] = self.aborted.get(kind, 0) + 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())


@dataclass
class Sample:
    elapsed: float
    phase: str  # "start", "idle", "warmup", "load" (the whole mix), "drain" (lanes ending, long-lived going on)
    answered: int
    rss: int  # KiB
    fds: int
    tasks: int | None


class Server:
    """One ``python -m stack serve`` process: started, its stderr collected, sampled."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.args = list(args)
        self.log = bytearray()
        self.samples: list[Sample] = []
        self.process: trio.Process | None = None
        self.url = ""
        self.port = 0
        self._logged = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        cmd = [sys.executable, "-m", "stack", "serve", "--port", "0", "-q", *self.args]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT), env=env
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        nursery.start_soon(self._collect, self.process.stderr)
        out = b""
        with trio.fail_after(60):
            while b"\n" not in out:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"{self.name}: serve exited: {self.log.decode(errors='replace')}")
                out += chunk
        self.url = out.decode().split()[-1].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    async def _collect(self, stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            self.log += chunk
            self._logged.set()
            self._logged = trio.Event()

    def errors(self) -> list[str]:
        return [line for line in self.log.decode(errors="replace").splitlines() if ERROR_LINE.search(line)]

    async def sample(self, elapsed: float, phase: str, answered: int) -> Sample:
        assert self.process is not None
        pid = self.process.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():  # noqa: ASYNC240 - /proc: no disk
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        seen = self.log.count(b"live trio tasks")
        self.process.send_signal(signal.SIGUSR1)  # serve logs its live task count
        tasks = None
        with trio.move_on_after(5):
            while self.log.count(b"live trio tasks") == seen:
                await self._logged.wait()
            found = re.findall(rb"stats: (\d+) live trio tasks", bytes(self.log))
            tasks = int(found[-1])
        sample = Sample(elapsed, phase, answered, rss, fds, tasks)
        self.samples.append(sample)
        return sample

    async def stop(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        with trio.move_on_after(30):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


# --------------------------------------------------------------------------------------------------
# clients


async def h2load(tally: Tally, kind: str, args: Sequence[str], urls: Sequence[str]) -> None:
    """Run h2load; count its requests and 2xx answers under ``kind``."""
    result = await trio.run_process(["h2load", *args, *urls], capture_stdout=True, capture_stderr=True, check=False)
    text = result.stdout.decode(errors="replace")
    requests, status = H2LOAD_REQUESTS.search(text), H2LOAD_STATUS.search(text)
    if requests is None or status is None:
        tally.problems.append(f"{kind}: h2load said {text[-500:]!r} {result.stderr[-300:]!r}")
        return
    tally.add(kind, int(requests.group(1)), int(status.group(1)))


async def _open(port: int, context: ssl.SSLContext | None) -> trio.abc.Stream:
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if context is not None:
        tls = trio.SSLStream(stream, context, server_hostname="localhost")
        await tls.do_handshake()
        stream = tls
    return stream


async def _read_response(stream: trio.abc.Stream) -> bytes:
    """An HTTP/1.1 response to a ``Connection: close`` request, to the end of the connection."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # a TLS peer closing without close_notify
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def one_per_connection(tally: Tally, kind: str, port: int, context: ssl.SSLContext | None, n: int) -> None:
    """``n`` requests, a new connection each (``Connection: close``)."""
    answered = 0
    for i in range(n):
        with trio.move_on_after(30):
            stream = await _open(port, context)
            async with stream:
                target = URIS[i % len(URIS)]
                await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode())
                response = await _read_response(stream)
            answered += response.startswith(b"HTTP/1.1 200 ")
    tally.add(kind, n, answered)


def websocket_echoes(url: str, context: ssl.SSLContext | None, messages: int) -> int:
    """Open a WebSocket to ``url`` with the ``websockets`` library and echo ``messages`` messages
    (text and binary, small and 20 KiB); return how many came back equal (runs in a thread)."""
    from websockets.sync.client import connect

    ok = 0
    with connect(url, ssl=context, open_timeout=30, close_timeout=10) as ws:
        for i in range(messages):
            msg: str | bytes = f"message {i}" if i % 2 else os.urandom(20 * 1024 if i % 10 == 0 else 64)
            ws.send(msg)
            ok += ws.recv(timeout=30) == msg
    return ok


async def websockets_round(tally: Tally, kind: str, url: str, context: ssl.SSLContext | None, conns: int,
                           messages: int) -> None:  # fmt: skip
    async def one() -> None:
        try:
            ok = await trio.to_thread.run_sync(websocket_echoes, url, context, messages)
        except Exception as exc:  # counted as unanswered, and said
            tally.problems.append(f"{kind}: {type(exc).__name__}: {exc}")
            ok = 0
        tally.add(kind, messages, ok)

    async with trio.open_nursery() as nursery:
        for _ in range(conns):
            nursery.start_soon(one)


def _reset_on_close(stream: trio.abc.Stream) -> None:
    """Make closing ``stream`` send a TCP reset instead of a FIN."""
    sock = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def abort(tally: Tally, kind: str, port: int, context: ssl.SSLContext | None, reset: bool) -> None:
    """One aborting client of ``kind``: it starts something and goes away in the middle."""
    suffix = ("-tls" if context is not None else "") + ("-rst" if reset else "")
    try:
        with trio.move_on_after(30):
            stream = await _open(port, context)
            async with stream:
                if reset:
                    _reset_on_close(stream)
                if kind == "head":
                    await stream.send_all(b"GET /hello.txt HTTP/1.1\r\nhost: localhost\r\nuser-ag")
                elif kind == "body":
                    await stream.send_all(
                        b"POST /hello.txt HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000000\r\n\r\n"
                    )
                    await stream.send_all(os.urandom(10_000))
                elif kind == "response":
                    await stream.send_all(b"GET /stream.bin HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    await stream.receive_some(4096)
                elif kind in ("h2-body", "h2-response"):
                    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                    conn.initiate_connection()
                    method, path = ("POST", "/hello.txt") if kind == "h2-body" else ("GET", "/stream.bin")
                    conn.send_headers(1, [(":method", method), (":path", path), (":scheme", "http"),
                                          (":authority", "localhost")], end_stream=kind != "h2-body")  # fmt: skip
                    if kind == "h2-body":
                        conn.send_data(1, os.urandom(5000))
                    await stream.send_all(conn.data_to_send())
                    await stream.receive_some(4096)
                elif kind == "ws":
                    await stream.send_all(
                        b"GET /ws/echo HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
                    )
                    await stream.receive_some(4096)  # 101
                    await stream.send_all(b"\x82\xfe\x10\x00abcd" + b"x" * 100)  # a 4 KiB frame, cut short
                tally.abort(kind + suffix)
    except (OSError, trio.BrokenResourceError) as exc:
        tally.problems.append(f"abort {kind}{suffix}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class Plan:
    requests: int
    per_connection: int
    interval: float
    warmup: float
    tolerance: float


def make_site(directory: Path) -> None:
    (directory / "hello.txt").write_bytes(b"Hello, world!")
    (directory / "page.html").write_text("<!doctype html>\n<p>a small page</p>\n" * 20)
    (directory / "stream.bin").write_bytes(os.urandom(256 * 1024))


Lane = Callable[[], Awaitable[None]]


def lanes(
    tally: Tally, tls: Server, clear: Server, context: ssl.SSLContext, scale: int, per_connection: int
) -> list[Lane]:
    """The mix (see the module docstring): each lane is one batch of one kind of client; the
    soak runs every lane in a loop of its own, all at once, so the load never pauses. The
    long-lived lanes open two HTTP/2 connections that carry ``per_connection`` requests each."""
    each = ["-c2", "-m10", f"-n{per_connection * 2}"]
    clear_uris = [clear.url + u for u in URIS]
    tls_uris = [tls.url + u for u in URIS]
    ws_clear, ws_tls = clear.url.replace("http", "ws") + "/ws/echo", tls.url.replace("https", "wss") + "/ws/echo"
    out: list[Lane] = [
        partial(h2load, tally, "h2c long-lived (2 conns)", each, [clear.url + "/hello.txt"]),
        partial(h2load, tally, "h2 tls long-lived (2 conns)", each, [tls.url + "/hello.txt"]),
        partial(h2load, tally, "http1.1 clear (h2load --h1)", ["--h1", "-c8", f"-n{2000 // scale}"], clear_uris),
        partial(h2load, tally, "http1.1 tls (h2load --h1)", ["--h1", "-c8", f"-n{1000 // scale}"], tls_uris),
        partial(h2load, tally, "h2c short (h2load)", ["-c8", "-m4", f"-n{2000 // scale}"], clear_uris),
        partial(h2load, tally, "h2 tls short (h2load)", ["-c8", "-m4", f"-n{1000 // scale}"], tls_uris),
        partial(one_per_connection, tally, "http1.1 clear, a connection each", clear.port, None, 100 // scale),
        partial(one_per_connection, tally, "http1.1 tls, a connection each", tls.port, context, 20 // scale),
        partial(websockets_round, tally, "websocket clear (echoes)", ws_clear, None, 4, 200 // scale),
        partial(websockets_round, tally, "websocket tls (echoes)", ws_tls, context, 4, 200 // scale),
    ]

    async def aborters() -> None:
        async with trio.open_nursery() as n:
            for reset in (False, True):
                for kind in ("head", "body", "response", "ws"):
                    n.start_soon(abort, tally, kind, clear.port, None, reset)
                    n.start_soon(abort, tally, kind, tls.port, context, reset)
                for kind in ("h2-body", "h2-response"):
                    n.start_soon(abort, tally, kind, clear.port, None, reset)
        await trio.sleep(0.5)  # a few dozen aborts a second, not a flood

    out.append(aborters)
    return out


async def run_lanes(batches: Sequence[Lane], until: Callable[[], bool]) -> None:
    """Run each batch over and over, all at once, until ``until()`` (checked between batches)."""

    async def loop(batch: Lane) -> None:
        while not until():
            await batch()

    async with trio.open_nursery() as nursery:
        for batch in batches:
            nursery.start_soon(loop, batch)


async def sampler(servers: Sequence[Server], tally: Tally, plan: Plan, start: float, phase: Callable[[], str],
                  stop: trio.Event) -> None:  # fmt: skip
    while not stop.is_set():
        with trio.move_on_after(plan.interval):
            await stop.wait()
        if stop.is_set():
            return
        await sample_all(servers, tally, start, phase())


async def sample_all(servers: Sequence[Server], tally: Tally, start: float, phase: str) -> None:
    elapsed = time.monotonic() - start
    samples = [await s.sample(elapsed, phase, tally.total_answered) for s in servers]
    cells = "".join(f" {x.rss / 1024:9.1f} {x.fds:5d} {x.tasks if x.tasks is not None else '-':>6}" for x in samples)
    print(f"{elapsed:7.0f}s {phase:>6} {tally.total_answered:>10,}{cells}", flush=True)


async def wait_idle(seconds: float = 3.0) -> None:
    """Give closed connections time to be noticed and released."""
    await trio.sleep(seconds)


async def soak(plan: Plan) -> int:
    if shutil.which("h2load") is None:
        print("soak: h2load (nghttp2-client) is needed", file=sys.stderr)
        return 2
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        make_site(site)
        ca = certs.CA.new("soak CA")
        certfile, keyfile = ca.issue("localhost", "127.0.0.1").write(tmp, "localhost")
        cafile = ca.write(Path(tmp) / "ca.pem")
        context = ssl.create_default_context(cafile=cafile)
        tls = Server("tls", [str(site), "--cert", certfile, "--key", keyfile])
        clear = Server("clear", [str(site), "--no-tls"])
        servers = (tls, clear)
        async with trio.open_nursery() as nursery:
            for server in servers:
                await server.start(nursery)
            start = time.monotonic()
            head = "".join(f" {s.name + ' rss MiB':>9} {'fds':>5} {'tasks':>6}" for s in servers)
            print(f"soak: {plan.requests:,} requests; tls at {tls.url}, clear at {clear.url}", flush=True)
            print("(answered: so far; the long-lived connections' requests are counted at their end)")
            print(f"{'time':>8} {'phase':>6} {'answered':>10}{head}", flush=True)
            await sample_all(servers, tally, start, "start")
            # warm-up: each lane once, small; then the idle values the end is compared with
            async with trio.open_nursery() as warm:
                for batch in lanes(tally, tls, clear, context, scale=4, per_connection=1000):
                    warm.start_soon(batch)
            await wait_idle()
            await sample_all(servers, tally, start, "idle")
            idle_before = [s.samples[-1] for s in servers]
            state = {"phase": "load"}
            warm_until = time.monotonic() + plan.warmup
            stop = trio.Event()
            nursery.start_soon(sampler, servers, tally, plan, start,
                               lambda: "warmup" if time.monotonic() < warm_until else state["phase"], stop)  # fmt: skip
            state["phase"] = "load"

            def reached() -> bool:
                if tally.total_sent >= plan.requests:
                    state["phase"] = "drain"  # the lanes finish their batches: the mix thins out
                return state["phase"] == "drain"

            await run_lanes(lanes(tally, tls, clear, context, 1, plan.per_connection), reached)
            stop.set()
            await wait_idle()
            await sample_all(servers, tally, start, "idle")
            idle_after = [s.samples[-1] for s in servers]
            errors = {s.name: s.errors() for s in servers}
            codes = [await s.stop() for s in servers]
            nursery.cancel_scope.cancel()
    return report(plan, tally, servers, idle_before, idle_after, errors, codes)


def growth(values: Sequence[float]) -> float | None:
    """(mean of the last third - mean of the first third) / mean of the first third."""
    if len(values) < 3:
        return None
    k = len(values) // 3
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return (last - first) / first if first else None


def report(plan: Plan, tally: Tally, servers: Sequence[Server], idle_before: Sequence[Sample],
           idle_after: Sequence[Sample], errors: dict[str, list[str]], codes: Sequence[int | None]) -> int:  # fmt: skip
    ok = True
    print()
    print(f"{'clients':<40} {'requests':>10} {'answered':>10}")
    for kind, sent in sorted(tally.sent.items()):
        print(f"{kind:<40} {sent:>10,} {tally.answered[kind]:>10,}")
    print(f"{'total':<40} {tally.total_sent:>10,} {tally.total_answered:>10,}")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.aborted.items()))
    print(f"aborting clients: {sum(tally.aborted.values()):,} ({kinds})")
    answered = tally.total_sent == tally.total_answered and not tally.problems
    ok &= answered
    print(f"every honest request answered: {'yes' if answered else 'NO'}")
    for problem in tally.problems:
        print(f"  {problem}")
    for server, before, after, code in zip(servers, idle_before, idle_after, codes, strict=True):
        load = [s for s in server.samples if s.phase == "load"]
        print(f"\n{server.name}: {len(load)} samples under the mixed load after warm-up; exit status {code}")
        metrics: tuple[tuple[str, Callable[[Sample], int | None]], ...] = (
            ("rss", lambda s: s.rss), ("fds", lambda s: s.fds), ("tasks", lambda s: s.tasks),
        )  # fmt: skip
        for name, get in metrics:
            values = [v for v in (get(s) for s in load) if v is not None]
            g = growth(values)
            shown = "too few samples (run longer, or a smaller --interval)" if g is None else f"{g * 100:+.1f}%"
            if name == "rss":
                flat = g is not None and g < plan.tolerance
                ok &= flat or g is None
                verdict = "flat" if flat else ("?" if g is None else "GROWS")
            else:  # they swing with the connections open at the instant: judged at rest (below)
                verdict = "(swings)"
            idle = f"idle before {get(before)} after {get(after)}" + (" KiB" if name == "rss" else "")
            print(f"  {name:<6} growth under load {shown:<8} {verdict:<8} {idle}")
        rest = after.fds <= before.fds and (after.tasks or 0) <= (before.tasks or 0)
        ok &= rest
        print(f"  no leak at rest (fds and tasks once idle after the run <= after warm-up): {'yes' if rest else 'NO'}")
        errs = errors[server.name]
        ok &= not errs
        print(f"  server errors logged: {len(errs)}")
        for line in errs[:10]:
            print(f"    {line}")
    print(f"\nsoak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Soak python -m stack serve with a million mixed requests.")
    p.add_argument("--requests", type=int, default=1_000_000, help="honest requests in all (default: 1,000,000)")
    p.add_argument("--per-connection", type=int, help="requests per long-lived HTTP/2 connection (default: 100,000)")
    p.add_argument("--interval", type=float, help="seconds between samples (default: 10; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up not judged (default: 60; 15 with --quick)")
    p.add_argument("--tolerance", type=float, default=0.05, help="growth allowed after warm-up (default: 0.05)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 50,000 requests unless --requests")
    args = p.parse_args(argv)
    requests = args.requests if not args.quick or "--requests" in (argv or sys.argv) else 50_000
    per_connection = args.per_connection or (max(1000, requests // 10) if args.quick else 100_000)
    plan = Plan(requests, per_connection, args.interval or (2.0 if args.quick else 10.0),
                args.warmup if args.warmup is not None else (15.0 if args.quick else 60.0), args.tolerance)  # fmt: skip
    return trio.run(soak, plan)


if __name__ == "__main__":
    sys.exit(main())
