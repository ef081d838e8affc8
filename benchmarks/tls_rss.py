"""The TLS server's memory under connection churn: a few minutes' reproducer of the soak's TLS RSS growth.

::

    python benchmarks/tls_rss.py                     # 3 minutes sampled: every kind of TLS client at once
    python benchmarks/tls_rss.py --clear             # the control: the same clients, a cleartext server
    python benchmarks/tls_rss.py --lanes abort       # one kind of client only
    python benchmarks/tls_rss.py --set layers._tls_stream.RECV_SIZE=65536 --env MALLOC_ARENA_MAX=2

Not a test: it loads the host for minutes. Theory of operation. One ``python -m stack serve DIR``
process over TLS (the soak's site, the soak's certificates) is started through a small wrapper
that can first set module attributes (``--set module.NAME=VALUE``, to try a buffer size without
editing the library) and installs two signal handlers: SIGWINCH prints glibc's ``mallinfo2()``
(malloc'ed bytes in use and free-but-held) and the number of live ``ssl.SSLObject`` objects
(after a ``gc.collect()`` with ``--collect``); SIGURG prints ``malloc_stats()`` and Python's
allocator statistics at the end. Against it, in loops, all at once, the soak's TLS clients
(:mod:`benchmarks.soak`): ``h2load`` HTTP/2 short connections (``h2``), ``h2load --h1``
(``h1``), a connection per request (``conn``), the aborting clients over TLS (``abort``: a
request head, a body, a response, a WebSocket frame, each cut, half with a TCP reset) and
WebSocket echoes over wss:// (``ws``). After ``--warmup`` seconds the server is sampled every
``--interval`` seconds: RSS, split into the ``[heap]`` mapping (glibc's main arena, where OpenSSL
and Python's larger blocks live) and the other anonymous mappings (Python's object arenas, the
worker threads' malloc arenas), and the malloc figures above. The end prints the soak's growth
figure (last third against first third), the least-squares slope in MiB per minute, and the
malloc statistics.

What it found (issue 17; CONTRIBUTING.md, TLS): a closed TLS connection's OpenSSL state lived as
long as the stream object, which upper layers leave in reference cycles, so the live SSL objects
and malloc's in-use bytes climbed between the collector's full passes and the ``[heap]`` grew
about 2 MiB a minute under this mix, while the cleartext server's stayed flat.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.soak import URIS, Tally, abort, growth, h2load, make_site, one_per_connection, websockets_round  # noqa: E402
from layers import certs  # noqa: E402

WRAPPER = """
import ctypes, importlib, runpy, signal, sys
for item in sys.argv[1].split(";") if sys.argv[1] else ():
    target, value = item.split("=", 1)
    module, name = target.rsplit(".", 1)
    setattr(importlib.import_module(module), name, int(value))
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
def info(*_):
    import gc, os, ssl
    garbage = 0
    if os.environ.get("TLS_RSS_COLLECT"):
        garbage = gc.collect()
    i = libc.mallinfo2()
    live = sum(1 for o in gc.get_objects() if isinstance(o, ssl.SSLObject))
    print(f"mallinfo heap={i.arena} used={i.uordblks} free={i.fordblks} top={i.keepcost} "
          f"mmapped={i.hblkhd} chunks={i.ordblks} sslobjects={live} collected={garbage} gc={gc.get_count()}",
          file=sys.stderr, flush=True)
signal.signal(signal.SIGWINCH, info)
signal.signal(signal.SIGURG, lambda *_: (sys.stderr.flush(), libc.malloc_stats(), sys._debugmallocstats()))
sys.argv = ["stack", *sys.argv[2:]]
runpy.run_module("stack", run_name="__main__")
"""


def rss_kib(pid: int) -> tuple[int, int]:
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def rss_parts(pid: int) -> tuple[int, int]:
    """RSS (KiB) of the ``[heap]`` mapping (glibc's main arena) and of the other anonymous
    mappings (Python's object arenas, the threads' malloc arenas and stacks, large mmapped blocks)."""
    heap = anon = 0
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if not line[0].isupper() or ":" not in line.split()[0]:  # a mapping's first line
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
        elif line.startswith("Rss:"):
            if name == "[heap]":
                heap += int(line.split()[1])
            elif name == "":
                anon += int(line.split()[1])
    return heap, anon


def slope(points: Sequence[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


async def run(args: argparse.Namespace) -> int:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="tls-rss-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        make_site(site)
        ca = certs.CA.new("soak CA")
        certfile, keyfile = ca.issue("localhost", "127.0.0.1").write(tmp, "localhost")
        context = ssl.create_default_context(cafile=ca.write(Path(tmp) / "ca.pem"))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.update(item.split("=", 1) for item in args.env)
        if args.collect:
            env["TLS_RSS_COLLECT"] = "1"
        cmd = [sys.executable, "-c", WRAPPER, ";".join(args.set), "serve", "--port", "0", "-q", str(site)]
        cmd += ["--no-tls"] if args.clear else ["--cert", certfile, "--key", keyfile]
        if args.clear:
            context = None  # type: ignore[assignment]
        log = bytearray()
        async with trio.open_nursery() as nursery:
            proc = await trio.lowlevel.open_process(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT), env=env
            )
            assert proc.stdout is not None and proc.stderr is not None

            logged = [trio.Event()]

            async def collect(stream: trio.abc.ReceiveStream) -> None:
                async for chunk in stream:
                    log.extend(chunk)
                    logged[0].set()
                    logged[0] = trio.Event()

            nursery.start_soon(collect, proc.stderr)
            out = b""
            with trio.fail_after(60):
                while b"\n" not in out:
                    out += await proc.stdout.receive_some()
            url = out.decode().split()[-1].rstrip("/")
            port = int(url.rsplit(":", 1)[1])
            uris = [url + u for u in URIS]
            ws = url.replace("http", "ws") + "/ws/echo"
            kinds: dict[str, Callable[[], Awaitable[None]]] = {
                "h2": partial(h2load, tally, "h2 tls short", ["-c8", "-m4", "-n1000"], uris),
                "h1": partial(h2load, tally, "http1.1 tls", ["--h1", "-c8", "-n1000"], uris),
                "conn": partial(one_per_connection, tally, "tls, a connection each", port, context, 20),
                "ws": partial(websockets_round, tally, "websocket tls", ws, context, 4, 200),
            }

            async def aborters() -> None:
                async with trio.open_nursery() as n:
                    for reset in (False, True):
                        for kind in ("head", "body", "response", "ws"):
                            n.start_soon(abort, tally, kind, port, context, reset)
                await trio.sleep(args.abort_pause)

            kinds["abort"] = aborters
            start = trio.current_time()
            end = start + args.warmup + args.minutes * 60

            async def loop(batch: Callable[[], Awaitable[None]]) -> None:
                while trio.current_time() < end:
                    await batch()

            print(f"tls_rss: {url} lanes={args.lanes} set={args.set} env={args.env}", flush=True)
            print(f"{'time':>6} {'rss MiB':>8} {'[heap]':>7} {'anon':>7} {'used':>6} {'free':>6} {'ssl/gc':>9} "
                  f"{'threads':>7} {'answered':>9} {'aborts':>7}", flush=True)  # fmt: skip
            points: list[tuple[float, float]] = []
            async with trio.open_nursery() as lanes:
                for name in args.lanes.split(","):
                    lanes.start_soon(loop, kinds[name])
                next_sample = start + args.warmup
                while trio.current_time() < end:
                    await trio.sleep_until(min(next_sample, end))
                    now = trio.current_time()
                    rss, threads = rss_kib(proc.pid)
                    heap, anon = rss_parts(proc.pid)
                    seen = len(log)
                    proc.send_signal(signal.SIGWINCH)
                    with trio.move_on_after(3):
                        while b"mallinfo" not in log[seen:]:
                            await logged[0].wait()
                    found = re.search(rb"mallinfo heap=(\d+) used=(\d+) free=(\d+) top=(\d+)", log[seen:])
                    used, free = (int(found[2]) / 2**20, int(found[3]) / 2**20) if found else (0.0, 0.0)
                    objs = re.search(rb"sslobjects=(\d+) collected=(\d+)", log[seen:])
                    live = f"{int(objs[1])}/{int(objs[2])}" if objs else "-"
                    phase = "warmup" if now < start + args.warmup else ""
                    if not phase:
                        points.append(((now - start) / 60, rss / 1024))
                    print(f"{now - start:6.0f} {rss / 1024:8.1f} {heap / 1024:7.1f} {anon / 1024:7.1f} {used:6.1f} "
                          f"{free:6.1f} {live:>9} {threads:7d} {tally.total_answered:9,} "
                          f"{sum(tally.aborted.values()):7,} {phase}", flush=True)  # fmt: skip
                    next_sample = now + args.interval if not phase else start + args.warmup
            await trio.sleep(3)
            rss, _ = rss_kib(proc.pid)
            seen = len(log)
            proc.send_signal(signal.SIGURG)
            await trio.sleep(2)  # the handler prints (it runs between the server's steps)
            stats = bytes(log[seen:]).decode(errors="replace")
            proc.terminate()
            await proc.wait()
            nursery.cancel_scope.cancel()
    values = [y for _, y in points]
    g = growth(values)
    print(f"\nrequests answered {tally.total_answered:,} of {tally.total_sent:,}; aborting clients "
          f"{sum(tally.aborted.values()):,}; problems {len(tally.problems)}")  # fmt: skip
    for problem in tally.problems[:5]:
        print(f"  {problem}")
    if values:
        print(f"rss after warm-up {values[0]:.1f} -> {values[-1]:.1f} MiB; idle at the end {rss / 1024:.1f} MiB")
        print(f"growth (last third vs first third) {'-' if g is None else f'{g * 100:+.1f}%'}; "
              f"slope {slope(points):+.2f} MiB/min")  # fmt: skip
    arenas = re.findall(r"Arena \d+:\s+system bytes\s+=\s+(\d+)\s+in use bytes\s+=\s+(\d+)", stats)
    for i, (system, used) in enumerate(arenas):
        print(f"malloc arena {i}: held {int(system) / 2**20:.1f} MiB, in use {int(used) / 2**20:.1f} MiB")
    total = re.search(r"Total \(incl. mmap\):\s+system bytes\s+=\s+(\d+)\s+in use bytes\s+=\s+(\d+)", stats)
    if total:
        held, used = int(total[1]) / 2**20, int(total[2]) / 2**20
        print(f"malloc total (incl. mmap): held {held:.1f} MiB, in use {used:.1f} MiB")
    for line in stats.splitlines():
        if re.match(r"# arenas (allocated current|highwater)|Total  |# bytes in (allocated|available) blocks", line):
            print(f"pymalloc: {line.strip()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reproduce the TLS server's RSS growth under connection churn.")
    p.add_argument("--minutes", type=float, default=3.0, help="minutes sampled after warm-up (default 3)")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of warm-up, not sampled (default 30)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--lanes", default="h2,h1,conn,abort,ws", help="of h2,h1,conn,abort,ws (default: all)")
    p.add_argument("--abort-pause", type=float, default=0.5, help="seconds between rounds of 8 aborting clients")
    p.add_argument("--set", action="append", default=[], help="module.NAME=INT set in the server before it starts")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE in the server's environment")
    p.add_argument("--clear", action="store_true", help="the control: the same clients against a cleartext server")
    p.add_argument("--collect", action="store_true", help="the server runs gc.collect() before each sample")
    return trio.run(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
