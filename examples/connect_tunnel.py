"""TLS inside an HTTP/2 CONNECT tunnel through our own proxy.

Three parties, all in this program:

* an **echo server** speaking TLS (certificate ``echo.test``) over TCP;
* **our proxy** (:class:`layers.reverse_proxy.ProxyApp`, what ``python -m stack proxy`` runs): TLS with
  ALPN ``h2`` in front, forwarding ordinary requests to an HTTP/1.1 backend and tunnelling
  ``CONNECT`` to the authorities it allows (``--allow-connect``);
* a **client** with one HTTP/2 connection to the proxy. On it, ``connect_tunnel`` opens a stream
  that is a ByteStream to the echo server, and the client attaches *another* TLS layer on that
  stream: end-to-end encryption the proxy cannot read (it only copies ciphertext). The same
  connection meanwhile carries ordinary requests to the backend, and a CONNECT the proxy does not
  allow is refused with 403.

The stacks, bottom first: client ``tcp | tls(h2) | http/2 stream | tls(echo.test)``; proxy
``tcp | tls | http`` in front and ``tcp`` to the echo server behind.

Run it: ``python examples/connect_tunnel.py``
"""

from __future__ import annotations

import logging

import trio

from layers import http, tcp, tls
from layers.certs import CA
from layers.http2 import TunnelRefused
from layers.reverse_proxy import BackendPool, ProxyApp
from stack import ByteStream, Stack, after

ca = CA.new("tunnel example CA")
PROXY_CERT = ca.issue("proxy.test", "127.0.0.1")
ECHO_CERT = ca.issue("echo.test")


async def echo(stream: ByteStream) -> None:
    """The far end: echo lines back, over TLS."""
    while line := await stream.recv_until(b"\n", deadline=after(10)):
        await stream.send(b"echo: " + line)


async def backend(request: http.Request) -> None:
    """The proxy's ordinary backend (HTTP/1.1)."""
    text = f"backend saw {request.method} {request.target}, via {request.headers.get('via')}\n"
    await request.respond(200, [("content-type", "text/plain")], text.encode())


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  [proxy log] %(message)s")
    logging.getLogger("stack.access").setLevel(logging.INFO)
    async with trio.open_nursery() as nursery:
        echo_server = Stack(tcp.listen("127.0.0.1", 0), tls.server(ECHO_CERT))
        (_, echo_port), *_ = await nursery.start(echo_server.serve, echo)
        (_, backend_port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(backend)).serve)

        pool = BackendPool(Stack(tcp.connect("127.0.0.1", backend_port), http.client()))
        app = ProxyApp(pool, allow_connect=[f"127.0.0.1:{echo_port}"])
        front = Stack(tcp.listen("127.0.0.1", 0), tls.server(PROXY_CERT, alpn=["h2", "http/1.1"]), http.server(app))
        (host, port), *_ = await nursery.start(front.serve)
        print(f"echo server on port {echo_port}, backend on {backend_port}, proxy on {port}")

        client = Stack(tcp.connect(host, port), tls.client(server_hostname="proxy.test", ca=ca, alpn=["h2"]),
                       http.client())  # fmt: skip
        async with await client.connect(deadline=after(5)) as conn:
            print(f"client -> proxy: HTTP/{conn.http_version} over {conn.info['tls_version']}")

            tunnel = await conn.connect_tunnel(f"127.0.0.1:{echo_port}", deadline=after(5))
            inner = await tls.client(server_hostname="echo.test", ca=ca).attach(tunnel, deadline=after(5))
            print(f"client -> echo server, inside stream {tunnel.stream_id}: {inner.info['tls_version']}, "
                  f"certificate checked for {inner.info['server_name']}")  # fmt: skip

            response = await conn.request("GET", "/meanwhile", deadline=after(5))  # same connection
            print(f"  GET /meanwhile -> {response.status}: {(await response.read()).decode().strip()}")

            for line in (b"first line\n", b"second line\n"):
                await inner.send(line, deadline=after(5))
                reply = await inner.recv_until(b"\n", deadline=after(5))
                print(f"  sent {line!r}, got {reply!r}")
                assert reply == b"echo: " + line
            await inner.aclose()  # close_notify to the echo server, then the tunnel's stream ends

            try:
                await conn.connect_tunnel("example.org:443", deadline=after(5))
            except TunnelRefused as exc:
                print(f"  CONNECT example.org:443 -> {exc.response.status} (not in --allow-connect)")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
