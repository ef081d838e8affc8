"""Instructions per HTTP/2 request, under callgrind: the figure this noisy host cannot blur.

    python benchmarks/h2_instructions.py                # ours and the hand-written h2 server
    python benchmarks/h2_instructions.py --requests 4000 --only ours

The HTTP/2 twin of ``instructions.py``. Each server of ``servers.H2_SERVERS`` that runs in one
Python process (ours and the hand-written h2-on-trio server; granian's worker is another process)
runs under ``valgrind --tool=callgrind`` (pinned to CPU 0), with ``h2load -c10 -m10`` (pinned to
CPU 1, h2c prior knowledge) as the load: a warm-up of 500 requests, then the counters of *that
pid* are zeroed (``callgrind_control -z PID``: other callgrind runs on the host keep theirs),
h2load sends ``--requests``, and the counters are dumped (``-d PID``). The figure is user-space
instructions executed by the server divided by the requests h2load completed; it leaves out the
kernel, and is deterministic to about 1%, where req/s drift 10-15% here.

Needs valgrind (``callgrind_control``) and h2load (Debian ``nghttp2-client``).
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

SERVERS = {"ours": servers.OURS, "h2": servers.H2}


def h2load(port: int, requests: int) -> int:
    """Run h2load against ``port``; the number of requests that succeeded (all must)."""
    out = run_load(["h2load", "-c10", "-m10", f"-n{requests}", f"http://127.0.0.1:{port}/"], timeout=600)
    r = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    s = re.search(r"status codes: (\d+) 2xx", out)
    if not r or not s or int(r.group(2)) != requests or int(s.group(1)) != requests:
        raise Failed(f"h2load did not run cleanly: {out[-400:]!r}")
    return requests


def instructions(server: Server, requests: int) -> tuple[int, int]:
    """(instructions, requests) for one server."""
    port = free_port()
    return callgrind.count(
        _fill(server.cmd, {"port": port}),
        port,
        lambda: h2load(port, 500),  # warm-up: imports, caches, the first connections
        lambda: h2load(port, requests),
        what=server.name,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="h2load -n under callgrind (default: 3000)")
    parser.add_argument("--only", choices=list(SERVERS), action="append", help="run only this server (repeatable)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    names = args.only or list(SERVERS)
    print(f"h2load -c10 -m10 -n{args.requests} (h2c) under callgrind; user-space instructions per request")
    results: dict[str, float] = {}
    for name in names:
        server = SERVERS[name]
        try:
            total, requests = instructions(server, args.requests)
        except Failed as exc:
            print(f"{server.name:22} FAILED: {exc}")
            continue
        results[name] = per = total / max(requests, 1)
        print(f"{server.name:22} {per / 1000:8.1f}k  ({requests} requests)")
    if "ours" in results and "h2" in results:
        print(f"ours / hand-written h2: {results['ours'] / results['h2']:.2f} of its instructions")


if __name__ == "__main__":
    main()
