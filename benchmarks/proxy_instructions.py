"""Instructions per proxied request, under callgrind: ``python -m stack proxy`` in front of the raw-trio backend.

    python benchmarks/proxy_instructions.py                  # both fronts: HTTP/1.1 (wrk) and h2c (h2load)
    python benchmarks/proxy_instructions.py --front h2c --seconds 30

The model is ``benchmarks/instructions.py``. The backend (``benchmarks/peers/raw_trio_server.py``, a
canned answer per request head) runs pinned to CPU 1; the proxy (``python -m stack proxy --no-tls
--quiet``) runs under ``valgrind --tool=callgrind`` pinned to CPU 0; the load runs on CPU 1 with the
backend: ``wrk -t1 -c50`` for the HTTP/1.1 front, ``h2load -c10 -m10`` (prior knowledge) for h2c.
After a warm-up the proxy's counters are zeroed (``callgrind_control -z PID``: always by pid, other
callgrind runs may share the host), the load runs for ``--seconds`` and the counters are dumped
(``-d PID``). The figure is the proxy's user-space instructions divided by the requests completed:
both the front server and the backend client of one request, not the kernel's part.

Less steady than instructions.py: the proxy batches more requests per wake-up when the load and
the backend (sharing CPU 1) keep up, so the figure falls as the request count rises (the same code:
598k with 792 requests, 529k with 2687). Compare runs with similar request counts, on a quiet CPU 1.

Needs valgrind, wrk and h2load.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import callgrind, servers
from benchmarks.bench_h2 import parse_h2load
from benchmarks.harness import LOAD_CPU, PY, Failed, Proc, _fill, free_port, pinned
from benchmarks.instructions import wrk


def h2load(port: int, seconds: int) -> int:
    """Run h2load -c10 -m10 against ``port`` for ``seconds``; the number of requests that succeeded."""
    from benchmarks.harness import run_load

    out = run_load(["h2load", "-c10", "-m10", f"-D{seconds}", f"http://127.0.0.1:{port}/"], timeout=seconds + 90)
    r = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not r or int(r.group(2)) or int(r.group(3)):
        raise Failed(f"h2load did not run cleanly: {out[-300:]!r}")
    parse_h2load(out)
    return int(r.group(1))


FRONTS = {"http1": lambda port, seconds: wrk(port, seconds, []), "h2c": h2load}


def instructions(front: str, seconds: int, engine: str) -> tuple[int, int]:
    """(instructions, requests) of the proxy for one front."""
    bport, pport = free_port(), free_port()
    backend = Proc(pinned(_fill(servers.RAW_TRIO.cmd, {"port": bport}), LOAD_CPU))
    try:
        backend.wait_for_output(r"serving on", 30)
        backend.wait_for_port(bport, 30)
        cmd = [PY, "-m", "stack", "proxy", "--listen", f"127.0.0.1:{pport}", "--upstream", f"http://127.0.0.1:{bport}",
               "--no-tls", "--quiet", "--engine", engine]  # fmt: skip
        return callgrind.count(
            cmd,
            pport,
            lambda: FRONTS[front](pport, 3),  # warm-up: imports, caches, the pool's connections
            lambda: FRONTS[front](pport, seconds),
            what=f"the {front} front",
            startup=180,
        )
    finally:
        backend.stop(grace=10)
        backend.close_files()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--front", choices=[*FRONTS, "both"], default="both")
    parser.add_argument("--seconds", type=int, default=20, help="load duration under callgrind (default: 20)")
    parser.add_argument("--engine", default="auto", help="the proxy's --engine (default: auto)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    fronts = list(FRONTS) if args.front == "both" else [args.front]
    print(f"{args.seconds}s of load under callgrind; the proxy's user-space instructions per request")
    for front in fronts:
        try:
            total, requests = instructions(front, args.seconds, args.engine)
        except Failed as exc:
            print(f"{front:6} FAILED: {exc}")
            continue
        print(f"{front:6} {total / max(requests, 1) / 1000:8.0f}k  ({requests} requests)", flush=True)


if __name__ == "__main__":
    main()
