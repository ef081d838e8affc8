"""Instructions per HTTP/1.1 request, under callgrind: the figure this noisy host cannot blur.

    python benchmarks/instructions.py                   # every HTTP/1.1 server, both modes
    python benchmarks/instructions.py --mode close --seconds 30
    python benchmarks/instructions.py --asgi --mode keep-alive   # the ASGI adapter: uvicorn, ours native, ours ASGI

Each server of ``servers.HTTP1`` runs under ``valgrind --tool=callgrind`` (pinned to CPU 0), with
``wrk -t1 -c50`` (pinned to CPU 1) as the load: 3 s of warm-up (``--warm``), then the counters are zeroed
(``callgrind_control -z``), ``wrk`` runs for ``--seconds``, and the counters are dumped. The figure
is user-space instructions executed by the server divided by the requests wrk completed. It leaves
out what the kernel does (system calls, loopback TCP), so the req/s ratios of ``run.py http1``
are smaller than these; it is deterministic to about 1%, where req/s drift 10-15% here.

Needs valgrind (``callgrind_control``) and wrk. The server is about 50 times slower under valgrind,
so a run completes a few thousand requests; that is plenty for a per-request mean.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import callgrind, servers
from benchmarks.harness import Failed, Server, _fill, free_port, run_load

ASGI = [servers.UVICORN_HTTPTOOLS, servers.OURS, servers.OURS_ASGI]
"""``--asgi``: the baseline (uvicorn), our native API, our ASGI adapter (the same server below)."""

MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}


def wrk(port: int, seconds: int, headers: list[str]) -> int:
    """Run wrk against ``port``; the number of requests it completed."""
    out = run_load(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "30s", *headers, f"http://127.0.0.1:{port}/"],
        timeout=seconds + 60,
    )
    m = re.search(r"(\d+) requests in", out)
    if not m or re.search(r"Non-2xx|Socket errors", out):
        raise Failed(f"wrk did not run cleanly: {out[-300:]!r}")
    return int(m.group(1))


def instructions(server: Server, mode: str, seconds: int, warm: int = 3) -> tuple[int, int]:
    """(instructions, requests) for one server in one mode."""
    port = free_port()
    return callgrind.count(
        _fill(server.cmd, {"port": port}),
        port,
        lambda: wrk(port, warm, MODES[mode]),  # warm-up: imports, caches, the first connections
        lambda: wrk(port, seconds, MODES[mode]),
        what=server.name,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration under callgrind (default: 20)")
    parser.add_argument("--warm", type=int, default=3, help="wrk warm-up before counting (default: 3)")
    parser.add_argument("--only", metavar="TEXT", help="only the servers whose name contains TEXT")
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="the raw ASGI hello (benchmarks/peers/asgi_app.py) on uvicorn (httptools+uvloop) and on layers.asgi, "
        "with our native hello for the adapter's cost, instead of every HTTP/1.1 server",
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    modes = list(MODES) if args.mode == "both" else [args.mode]
    chosen = ASGI if args.asgi else [server for server, _ in servers.HTTP1]
    print(f"wrk -t1 -c50 -d{args.seconds}s under callgrind; user-space instructions per request")
    for mode in modes:
        base: float | None = None
        for server in chosen:
            if args.only and args.only not in server.name:
                continue
            try:
                total, requests = instructions(server, mode, args.seconds, args.warm)
            except Failed as exc:
                print(f"{mode:10} {server.name:22} FAILED: {exc}")
                continue
            per = total / max(requests, 1)
            base = per if base is None else base
            share = per / base
            print(f"{mode:10} {server.name:22} {per / 1000:8.0f}k  ({requests} requests) {share:5.2f} of the first")


if __name__ == "__main__":
    main()
