"""TLS inside an HTTP/2 stream inside TLS: a CONNECT tunnel is just another ByteStream.

The outer server is TCP + TLS (ALPN ``h2``) + HTTP/2. Its app answers ``CONNECT inner.test:443``
with ``start_response(200)``, which returns the tunnel: a ByteStream carried by one HTTP/2
stream. On that stream the app attaches *another* TLS server (a different certificate) and an
HTTP server, and serves requests coming through the tunnel: five layers, each unaware of the
others.

The client mirrors it: TCP + TLS + HTTP/2 to the outer server, ``connect_tunnel`` for the
stream, then TLS (checking the inner certificate, ALPN ``h2``) and HTTP on the tunnel. Its inner
requests travel as HTTP/2 frames, encrypted, inside DATA frames of one outer stream, encrypted
again. Other requests on the outer connection are unaffected: one is made meanwhile.

Run it: ``python examples/h2_tunnel_tls.py``
"""

from __future__ import annotations

import trio

from layers import http, tcp, tls
from layers.certs import CA
from stack import Stack, after

ca = CA.new("tunnel example CA")
OUTER = ca.issue("proxy.test", "127.0.0.1")
INNER = ca.issue("inner.test")


async def inner_app(request: http.Request) -> None:
    info = request.info
    text = (
        f"inner: {request.method} {request.path} over HTTP/{request.http_version}, "
        f"TLS {info['tls_version']} for {info['server_name']}, "
        f"carried by outer stream {info['stream_id']} (HTTP/{info['http_version']})"
    )
    await request.respond(200, [("content-type", "text/plain")], text.encode())


async def proxy_app(request: http.Request) -> None:
    if request.method != "CONNECT":
        await request.respond(200, [], f"outer: {request.path} over HTTP/{request.http_version}".encode())
        return
    if request.target != "inner.test:443":
        await request.respond(403, [], b"only inner.test:443\n")
        return
    tunnel = await request.start_response(200)
    secure = await tls.server(INNER, alpn=["h2", "http/1.1"]).attach(tunnel, deadline=after(5))
    conn = await http.server(inner_app).attach(secure, deadline=after(5))
    try:
        await conn.serve(inner_app)
    finally:
        await conn.aclose()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        outer_server = Stack(tcp.listen("127.0.0.1", 0), tls.server(OUTER, alpn=["h2"]), http.server(proxy_app))
        (host, port), *_ = await nursery.start(outer_server.serve)

        outer = Stack(
            tcp.connect(host, port), tls.client(server_hostname="proxy.test", ca=ca, alpn=["h2"]), http.client()
        )
        async with await outer.connect(deadline=after(5)) as conn:
            print(f"outer connection: TLS {conn.info['tls_version']}, ALPN {conn.info['alpn']}")
            tunnel = await conn.connect_tunnel("inner.test:443", deadline=after(5))
            inner_tls = tls.client(server_hostname="inner.test", ca=ca, alpn=["h2"])
            secure = await inner_tls.attach(tunnel, deadline=after(5))
            async with await http.client().attach(secure, deadline=after(5)) as inner:
                for path in ("/a", "/b"):
                    response = await inner.request("GET", path, deadline=after(5))
                    print((await response.read(deadline=after(5))).decode())
                side = await conn.request("GET", "/side", deadline=after(5))
                print((await side.read(deadline=after(5))).decode())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
