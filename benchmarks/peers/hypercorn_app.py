"""A minimal ASGI app for hypercorn's trio worker: the same 13-byte body as the hand-written peers.

    hypercorn --worker-class trio --workers 0 --bind 127.0.0.1:8080 benchmarks.peers.hypercorn_app:app

(run from the repository root).  ``--workers 0`` serves in the hypercorn process itself, so its pid
is the one whose RSS the http1-mem group reads.  HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN
with --certfile/--keyfile) are hypercorn's; the app only answers.
"""

from __future__ import annotations

from typing import Any

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
