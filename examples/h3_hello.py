"""One app on HTTP/1.1, HTTP/2 and HTTP/3 at once, on one port number (TCP and UDP).

The app is the same function for every version: ``request.http_version`` says which one carried
the request. TCP gets TLS with ALPN (``h2``, ``http/1.1``) and ``http.server``; UDP gets QUIC with
ALPN ``h3`` and ``http3.server``, from the same certificate. The client side asks once per version.
"""

from __future__ import annotations

import functools

import trio

from layers import http, http3, tcp, tls
from layers.certs import CA
from stack import Stack, after


async def app(request: http.Request) -> None:
    text = f"hello over HTTP/{request.http_version} ({request.method} {request.path})\n"
    await request.respond(200, [("content-type", "text/plain")], text.encode())


async def main() -> None:
    ca = CA.new()
    leaf = ca.issue("localhost", "127.0.0.1")
    async with trio.open_nursery() as nursery:
        tcp_server = Stack(tcp.listen("127.0.0.1", 0), tls.server(leaf, alpn=["h2", "http/1.1"]), http.server(app))
        (host, port), *_ = await nursery.start(tcp_server.serve)
        await nursery.start(functools.partial(http3.serve, app, host, port, leaf))  # UDP, same port
        print(f"serving HTTP/1.1 and HTTP/2 on tcp {host}:{port}, HTTP/3 on udp {host}:{port}")

        for alpn in (["http/1.1"], ["h2"]):
            client = Stack(tcp.connect(host, port), tls.client(alpn=alpn, ca=ca), http.client())
            async with await client.connect(deadline=after(5)) as conn:
                response = await conn.request("GET", "/", deadline=after(5))
                print(response.status, (await response.read()).decode().strip())
        async with http3.open_client(host, port, ca=ca, deadline=after(5)) as h3:
            response = await h3.request("GET", "/", deadline=after(5))
            print(response.status, (await response.read()).decode().strip())
            assert response.http_version == "3"
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
