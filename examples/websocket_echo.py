"""A WebSocket echo server inside an HTTP server, and our client talking to it three ways.

The server is an ordinary HTTP Stack; its app accepts the WebSocket at ``/echo`` (an HTTP/1.1
Upgrade or an HTTP/2 extended CONNECT, RFC 8441: ``websocket.accept`` answers either) and sends
every message back, text as text, binary as binary. The client connects over HTTP/1.1, then over
HTTP/2 (cleartext, prior knowledge: several WebSockets and plain requests share one connection),
then with the ``websocket.client`` spec straight on TCP against a second server built with
``websocket.server``. Each client measures a ping and closes with a code the server sees.
"""

from __future__ import annotations

import trio

from layers import http, tcp, websocket
from stack import Stack, after


async def echo(ws: websocket.WebSocket) -> None:
    """Echo until the client closes; then say how it closed."""
    async with ws:
        async for msg in ws:
            await ws.send(msg)
    print(f"  server: client closed with {ws.close_code} {ws.close_reason!r}")


async def app(request: http.Request) -> None:
    if request.path == "/echo" and websocket.is_websocket(request):
        await echo(await websocket.accept(request, deadline=after(5)))
    else:
        await request.respond(200, [("content-type", "text/plain")], b"plain HTTP\n")


async def talk(ws: websocket.WebSocket, label: str) -> None:
    """Send text and binary, check the echoes, ping while a task receives, close."""
    async with trio.open_nursery() as nursery:
        got: list[bytes | str] = []

        async def receive() -> None:
            async for msg in ws:  # ends at the server's Close
                got.append(msg)

        nursery.start_soon(receive)
        await ws.send(f"hello over {label}")
        await ws.send(bytes(range(8)))
        rtt = await ws.ping(deadline=after(5))  # the receiving task reads the Pong
        await ws.done(1000, "bye")  # our Close; the server answers with its own
    assert got == [f"hello over {label}", bytes(range(8))], got
    print(f"client over {label}: echoed {got!r}, ping {rtt * 1000:.2f} ms, server closed {ws.close_code}")
    await ws.aclose()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        (host, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
        print(f"HTTP server with a WebSocket at /echo on {host}:{port}")

        # 1. HTTP/1.1: the Upgrade turns this connection into the WebSocket
        async with await Stack(tcp.connect(host, port), http.client()).connect(deadline=after(5)) as conn:
            await talk(await websocket.connect(conn, "/echo", deadline=after(5)), "HTTP/1.1")

        # 2. HTTP/2: each WebSocket is one stream; the connection goes on serving requests
        h2 = Stack(tcp.connect(host, port), http.client(prior_knowledge=True))
        async with await h2.connect(deadline=after(5)) as conn:
            async with trio.open_nursery() as streams:
                for _ in range(3):
                    ws = await websocket.connect(conn, "/echo", deadline=after(5))
                    streams.start_soon(talk, ws, f"HTTP/2 stream {ws.lower.info['stream_id']}")
            response = await conn.request("GET", "/", deadline=after(5))
            print(f"then a plain request on the same HTTP/2 connection: {(await response.read()).decode().strip()}")

        # 3. no HTTP layer of our own: the specs do the opening handshake on a ByteStream
        (host2, port2), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), websocket.server()).serve, echo)
        client = Stack(tcp.connect(host2, port2), websocket.client(f"{host2}:{port2}", "/"))
        await talk(await client.connect(deadline=after(5)), "websocket.client on TCP")

        nursery.cancel_scope.cancel()  # stop the servers: the example is over


if __name__ == "__main__":
    trio.run(main)
