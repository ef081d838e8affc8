"""An ASGI application (Starlette when installed, else a raw ASGI function) served by our HTTP/1.1
and HTTP/2 server inside a trio program, with its lifespan, a streamed response and a WebSocket.

``layers.asgi.serve_asgi`` runs the app's lifespan startup, listens, and on the shutdown event
drains the connections and runs the lifespan shutdown. The same app from the command line::

    python -m stack serve examples.asgi_app:app --no-tls --port 8000

Our own client then talks to it over HTTP/1.1 and HTTP/2 (cleartext, prior knowledge): a plain
GET that reads the lifespan state, a streamed response, and a WebSocket (an Upgrade over HTTP/1.1,
an extended CONNECT stream over HTTP/2) whose close code the app chooses.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import trio

from layers import asgi, http, tcp, websocket
from stack import Stack, after


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same three routes without a framework (used when Starlette is not installed)."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            scope["state"]["greeting"] = "hello from the lifespan"
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"].upper()})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        body = f"{scope['state']['greeting']} over HTTP/{scope['http_version']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello from the lifespan"}

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.state.greeting} over HTTP/{request.scope['http_version']}")

    async def stream(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"part %d\n" % i

        return StreamingResponse(parts(), media_type="text/plain")

    async def shout(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text((await ws.receive_text()).upper())
        await ws.close(code=4000, reason="done")

    routes = [Route("/", home), Route("/stream", stream), WebSocketRoute("/ws", shout)]
    return Starlette(routes=routes, lifespan=lifespan)


try:
    app = starlette_app()
except ImportError:
    app = raw_app


async def main() -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(functools.partial(asgi.serve_asgi, app, "127.0.0.1", 0, shutdown=shutdown))
        port = addresses[0][1]
        print(f"serving {type(app).__name__ if app is not raw_app else 'a raw ASGI app'} on port {port}")
        for h2 in (False, True):
            stack = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=h2))
            async with await stack.connect(deadline=after(5)) as conn:
                response = await conn.request("GET", "/", deadline=after(5))
                print(f"  GET /        -> {response.status} {(await response.read()).decode()}")
                response = await conn.request("GET", "/stream", deadline=after(5))
                print(f"  GET /stream  -> {(await response.read()).decode().split()}")
                ws = await websocket.connect(conn, "/ws", deadline=after(5))
                await ws.send("shout this")
                print(f"  WebSocket    -> {await ws.recv()!r}", end="")
                try:
                    await ws.recv()
                except websocket.CloseReceived as closed:
                    print(f", closed by the app with {closed.code} {closed.reason!r}")
                await ws.aclose()
        shutdown.set()  # drain, then the lifespan shutdown
    print("stopped")


if __name__ == "__main__":
    trio.run(main)
