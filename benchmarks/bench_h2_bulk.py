"""Group `h2-bulk`: bulk download over HTTP/2, MB/s: one response of 100 MB, cleartext (h2c).

    h2load -n 3 -c 1 -m 1 -w 30 -W 30 http://127.0.0.1:P/      (-n 1 with --quick)

The client opens its stream and connection windows to 2^30 - 1, so the server's send path (framing,
flow-control bookkeeping, writes) is what is measured.  Every server holds the 100 MB body in memory
and sends it as one response:

* hand-written: h2 on trio, one task per connection, no task per stream: after every read it
  queues as many DATA frames as the windows allow (``memoryview`` slices, the peer's frame size) and
  writes them in one ``send_all``;
* hypercorn (trio worker) with an ASGI app sending the body in one ``http.response.body`` message;
* ours: ``Stack(tcp.listen(...), http.server(app))`` whose app calls ``request.respond(200, ..., body)``.

The servers are run by this module: ``python -m benchmarks.bench_h2_bulk serve-hand|serve-ours --port P``
and ``hypercorn ... benchmarks.bench_h2_bulk:asgi_app``.  Server pinned to CPU 0, h2load to CPU 1.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import Any

from benchmarks import servers
from benchmarks.harness import (
    PY,
    Failed,
    Group,
    Measurement,
    Running,
    Server,
    ServerContender,
    Settings,
    register,
    run_load,
)

SIZE = 100 * 1024 * 1024
BODY = b"\x5a" * SIZE  # allocated at import, in each server process (and the runner: cheap, one buffer)
HEADERS = [("content-type", "application/octet-stream"), ("content-length", str(SIZE))]

HAND = Server(
    "h2 (hand-written)", [PY, "-m", "benchmarks.bench_h2_bulk", "serve-hand", "--port", "{port}"], ready=r"serving on"
)
HYPERCORN = Server(
    "hypercorn-trio",
    [PY, "-m", "hypercorn", *servers.HYPERCORN_ARGS, "--bind", "127.0.0.1:{port}", "benchmarks.bench_h2_bulk:asgi_app"],
    requires=["hypercorn.trio"],
    ready=r"Running on",
)
OURS = Server(
    "ours (layers.http2)",
    [PY, "-m", "benchmarks.bench_h2_bulk", "serve-ours", "--port", "{port}"],
    requires=["layers.http2"],
    ready=r"serving on",
)


def download(server: Running, settings: Settings) -> Measurement:
    n = 1 if settings.quick else 3
    out = run_load(["h2load", f"-n{n}", "-c1", "-m1", "-w30", "-W30", server.url], timeout=300)
    m = re.search(r"finished in ([\d.]+)(m?s), [\d.]+ req/s, ([\d.]+)([KMG]?B)/s", out)
    r = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or not r:
        raise Failed(f"unexpected h2load output: {out[-300:]!r}")
    if int(r.group(1)) != n:
        raise Failed(f"h2load: {r.group(1)} of {n} downloads succeeded")
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[m.group(4)]
    return Measurement(float(m.group(3)) * scale)


register(
    Group(
        name="h2-bulk",
        title="HTTP/2 bulk download, one 100 MB response per request (h2load -n3 -c1 -w30 -W30; -n1 with --quick)",
        unit="MiB/s",
        baseline=HAND.name,
        contenders=[
            ServerContender(HAND.name, HAND, download, tools=["h2load"]),
            ServerContender(HYPERCORN.name, HYPERCORN, download, tools=["h2load"]),
            ServerContender(OURS.name, OURS, download, tools=["h2load"], target=0.95),
        ],
        rounds=3,
        order=42,
    )
)


# --------------------------------------------------------------------------- the servers


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """hypercorn's contender: the whole body in one message."""
    if scope["type"] == "http":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(k.encode(), v.encode()) for k, v in HEADERS]}
        )
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def serve_hand(port: int) -> None:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import trio

    view = memoryview(BODY)
    response = [(b":status", b"200"), *[(k.encode(), v.encode()) for k, v in HEADERS]]

    async def handle(stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        pending: dict[int, int] = {}  # stream id -> offset still to send

        def push() -> None:
            for sid in list(pending):
                offset = pending[sid]
                try:
                    while offset < SIZE:
                        n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, SIZE - offset)
                        if n <= 0:
                            break
                        conn.send_data(sid, view[offset : offset + n], end_stream=offset + n == SIZE)
                        offset += n
                except h2.exceptions.StreamClosedError:
                    offset = SIZE
                if offset >= SIZE:
                    del pending[sid]
                else:
                    pending[sid] = offset

        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(conn.data_to_send())
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await stream.send_all(conn.data_to_send())
                    return
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        conn.send_headers(ev.stream_id, response)
                        pending[ev.stream_id] = 0
                    elif isinstance(ev, h2.events.StreamReset):
                        pending.pop(ev.stream_id, None)
                push()
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, handle, port)
            print(f"serving on http://127.0.0.1:{port}/", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)


def serve_ours(port: int) -> None:
    import trio

    from layers import http, tcp
    from stack import Stack

    async def app(request: http.Request) -> None:
        await request.respond(200, HEADERS, BODY)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(Stack(tcp.listen("127.0.0.1", port), http.server(app)).serve)
            print(f"serving on http://127.0.0.1:{port}/", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description="the servers of the h2-bulk group")
    parser.add_argument("role", choices=["serve-hand", "serve-ours"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    (serve_hand if args.role == "serve-hand" else serve_ours)(args.port)
    sys.exit(0)


if __name__ == "__main__":
    main()
