"""Group `http1`: HTTP/1.1 requests per second under wrk, keep-alive and Connection: close.

    wrk -t1 -c50 -d5s http://127.0.0.1:P/                          (keep-alive)
    wrk -t1 -c50 -d5s -H 'Connection: close' http://127.0.0.1:P/   (a new connection per request)

The server runs pinned to CPU 0, wrk pinned to CPU 1.  Each mode has its own baseline: the
hand-written h11 server in the same mode.  The peers (benchmarks/servers.py, HTTP1) are what a user
would pick instead: uvicorn (httptools+uvloop, and h11+asyncio), granian, Go's net/http on one
core, hypercorn; plus trio's ceiling (a raw SocketStream answering without parsing).  Under the
table, ours / each peer of the same mode, with issue 16's target against uvicorn httptools+uvloop.
wrk's socket errors and non-2xx responses are counted in the "notes" column (a server that answers
fast by failing must not look good).
"""

from __future__ import annotations

import re

from benchmarks import servers
from benchmarks.harness import Failed, Group, Measurement, Running, ServerContender, Settings, register, run_load

MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}


def wrk(headers: list[str]):  # type: ignore[no-untyped-def]
    def load(server: Running, settings: Settings) -> Measurement:
        seconds = 2 if settings.quick else 5
        out = run_load(
            ["wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s", *headers, server.url],
            timeout=seconds + 30,
        )
        return parse_wrk(out)

    return load


def parse_wrk(out: str) -> Measurement:
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise Failed(f"no Requests/sec in wrk output: {out[-300:]!r}")
    errors = 0
    notes = []
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if s:
        errors += sum(int(x) for x in s.groups())
        notes.append("socket errors (connect/read/write/timeout)")
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errors += int(n.group(1))
        notes.append("non-2xx responses")
    done = re.search(r"(\d+) requests in", out)
    if done and int(done.group(1)) == 0:
        raise Failed("wrk completed no request")
    return Measurement(float(m.group(1)), errors, ", ".join(notes))


# Issue 16's targets for ours / peer, in both modes.
VERSUS = {servers.UVICORN_HTTPTOOLS.name: 0.75}


def contenders() -> list[ServerContender]:
    out = []
    for mode, headers in MODES.items():
        base = f"{servers.HTTP1[0][0].name} {mode}"
        for server, target in servers.HTTP1:
            name = f"{server.name} {mode}"
            out.append(
                ServerContender(
                    name,
                    server,
                    wrk(headers),
                    baseline=base,
                    target=target,
                    tools=["wrk"],
                    ours=server is servers.OURS,
                    versus=VERSUS.get(server.name),
                )
            )
    return out


register(
    Group(
        name="http1",
        title="HTTP/1.1 hello world under wrk -t1 -c50 (5 s; 2 s with --quick), keep-alive and Connection: close",
        unit="req/s",
        baseline=f"{servers.HTTP1[0][0].name} keep-alive",
        contenders=contenders(),
        rounds=3,
        order=30,
    )
)
