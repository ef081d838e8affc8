"""An HTTP server inside a trio program, and our client fetching from it over one connection.

The server is a Stack: TCP at the bottom, HTTP on top (HTTP/1.1 here: cleartext without the HTTP/2
preface). The app is one async function per request. The client keeps its connection alive for
three requests: a GET, a POST with a body, and a streamed upload (chunked).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from layers import http, tcp
from stack import Stack, after


async def app(request: http.Request) -> None:
    body = await request.read()  # the whole request body (limits.max_body at most)
    text = f"hello from {request.path}: {request.method} with {len(body)} bytes, HTTP/{request.http_version}\n"
    await request.respond(200, [("content-type", "text/plain")], text.encode())


async def upload() -> AsyncIterator[bytes]:
    for part in (b"streamed ", b"in ", b"parts"):
        yield part


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = Stack(tcp.listen("127.0.0.1", 0), http.server(app))
        (host, port), *_ = await nursery.start(server.serve)
        print(f"server listening on {host}:{port}")

        client = Stack(tcp.connect(host, port), http.client())
        async with await client.connect(deadline=after(5)) as conn:
            for method, path, body in [("GET", "/", None), ("POST", "/form", b"name=trio"), ("PUT", "/up", upload())]:
                response = await conn.request(method, path, body=body, deadline=after(5))
                text = await response.read(deadline=after(5))
                print(response.status, text.decode().strip())
                assert response.status == 200
        nursery.cancel_scope.cancel()  # stop the server: the example is over


if __name__ == "__main__":
    trio.run(main)
