"""Group `asgi`: one raw ASGI hello app on four ASGI servers, HTTP/1.1 keep-alive under wrk.

    wrk -t1 -c50 -d5s http://127.0.0.1:P/

Every server loads the very same app, benchmarks/peers/asgi_app.py (200, 13 bytes, two `send`
calls): ours (`python -m stack serve benchmarks.peers.asgi_app:app`, i.e. layers.asgi on our
HTTP/1.1 server, fast engine), hypercorn's trio worker (the only other ASGI server on trio),
uvicorn with httptools + uvloop (what `pip install 'uvicorn[standard]'` runs) and granian (Rust).
The server is pinned to CPU 0, wrk to CPU 1, rounds interleaved (benchmarks/harness.py).  The
baseline is hypercorn-trio; under the table, ours / each peer with issue 18's targets: >= 4x
hypercorn-trio and >= 1.0x uvicorn.  For the cost of the adapter itself, compare with the
`http1` group's "ours (stack serve)" row: the same server answering through our own Request API.
"""

from __future__ import annotations

from benchmarks import servers
from benchmarks.bench_http1 import wrk
from benchmarks.harness import Contender, Group, ServerContender, register
from benchmarks.servers import OURS_ASGI

# Issue 18's targets for ours / peer.
VERSUS = {servers.HYPERCORN.name: 4.0, servers.UVICORN_HTTPTOOLS.name: 1.0}

SERVERS = [servers.HYPERCORN, servers.UVICORN_HTTPTOOLS, servers.GRANIAN, OURS_ASGI]


def contenders() -> list[Contender]:
    return [
        ServerContender(
            server.name,
            server,
            wrk([]),
            baseline=servers.HYPERCORN.name,
            tools=["wrk"],
            ours=server is OURS_ASGI,
            versus=VERSUS.get(server.name),
        )
        for server in SERVERS
    ]


register(
    Group(
        name="asgi",
        title="ASGI hello app, HTTP/1.1 keep-alive under wrk -t1 -c50 (5 s; 2 s with --quick)",
        unit="req/s",
        baseline=servers.HYPERCORN.name,
        contenders=contenders(),
        rounds=3,
        order=35,
    )
)
