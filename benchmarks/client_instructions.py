"""Instructions per request of the HTTP/1.1 client, under callgrind: sequential keep-alive GETs.

    python benchmarks/client_instructions.py                      # both engines (and httpx)
    python benchmarks/client_instructions.py --engines fast --requests 2000

The server is ``benchmarks/peers/raw_trio_server.py`` (a canned answer per request head: it is
never the limit), run as a plain process. The client runs under ``valgrind --tool=callgrind``
twice per contender, once with ``--requests`` GETs and once with a tenth of them, over one
keep-alive connection (each answer's status checked, its body read whole); the figure is the
difference of the two instruction totals divided by the difference of the request counts, so the
start-up (the interpreter, imports, connecting) cancels out. User-space instructions only: the
kernel's share (system calls, loopback TCP) is left out, so it reads cleaner than req/s on a noisy
host. ``--wall`` prints plain req/s for ``--requests`` GETs without valgrind instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = b"Hello, world!"


async def run_ours(port: int, n: int, engine: str) -> None:
    from layers import http1, tcp
    from stack.compose import Stack

    conn = await Stack(tcp.connect("127.0.0.1", port), http1.client(engine=engine)).connect()
    async with conn:
        assert conn.info["http_engine"] == engine
        for _ in range(n):
            response = await conn.request("GET", "/")
            body = await response.read()
            if response.status != 200 or body != BODY:
                raise SystemExit(f"wrong answer: {response.status} {body!r}")


async def run_httpx(port: int, n: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=limits) as client:
        for _ in range(n):
            response = await client.get(f"http://127.0.0.1:{port}/")
            if response.status_code != 200 or response.content != BODY:
                raise SystemExit(f"wrong answer: {response.status_code}")


def child(args: argparse.Namespace) -> None:
    import trio

    if args.engine == "httpx":
        trio.run(run_httpx, args.port, args.requests)
    else:
        trio.run(run_ours, args.port, args.requests, args.engine)


def total_instructions(path: str) -> int:
    from benchmarks.callgrind import total
    from benchmarks.harness import Failed

    try:
        return total(path)
    except Failed:
        raise SystemExit(f"no totals in {path}") from None


def measure(engine: str, port: int, n: int, outdir: str) -> float:
    totals = []
    for count in (n // 10, n):
        out = os.path.join(outdir, f"cg.{engine}.{count}")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
               "--child", "--engine", engine, "--port", str(port), "--requests", str(count)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        totals.append(total_instructions(out))
    return (totals[1] - totals[0]) / (n - n // 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="reference,fast,httpx")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--wall", action="store_true", help="req/s without valgrind instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from benchmarks.harness import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.peers.raw_trio_server", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "serving on ..."
        with tempfile.TemporaryDirectory() as outdir:
            for engine in args.engines.split(","):
                if args.wall:
                    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--port", str(port),
                           "--requests", str(args.requests)]  # fmt: skip
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, timeout=600)
                    print(f"{engine:10} {args.requests / (time.perf_counter() - t0):10.0f} req/s (with start-up)")
                else:
                    print(f"{engine:10} {measure(engine, port, args.requests, outdir):12,.0f} instructions/request")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
