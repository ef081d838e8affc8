"""The raw ASGI hello app every ASGI server in the benchmarks runs: uvicorn, granian, hypercorn.

    uvicorn --http httptools --loop uvloop benchmarks.peers.asgi_app:app
    granian --interface asgi benchmarks.peers.asgi_app:app
    hypercorn --worker-class trio --workers 0 benchmarks.peers.hypercorn_app:app   (the same function)

(run from the repository root).  No framework: any request gets ``200`` with the same 13-byte body
``Hello, world!`` and the same two headers as the hand-written peers, in two ``send`` calls (the
least ASGI allows).  The request body is not read: the benchmarks send none.  Lifespan events are
acknowledged so servers that run them start cleanly.  HTTP/1.1 and HTTP/2 are the server's; the app
only answers.
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
