"""An echo server behind a (pretend) load balancer that speaks the PROXY protocol.

The story: a TCP load balancer such as HAProxy (``send-proxy-v2``) relays connections to our
server, so every connection the server accepts comes from the balancer's address. The PROXY
protocol fixes that: the balancer opens each connection with a short header naming the real
client. Our server stack is ``tcp.listen`` + ``proxy_protocol.server()``: the layer reads the
header and hands up every byte after it, untouched, with ``info["peer"]`` set to the real
client (and ``info["proxy_via"]`` to the balancer). The handler greets the client by its real
address and echoes lines.

Here the "balancer" is two clients in this file, each sending the header a balancer would send
(one v1 text header, one v2 binary header with an ALPN TLV) with ``proxy_protocol.client``.
A third client connects directly, without a header: the server refuses it at once.

Run it: ``python examples/proxy_protocol_echo.py``
"""

from __future__ import annotations

import trio

from layers import proxy_protocol, tcp
from stack import Broken, ByteStream, Stack, after

CLIENTS = [
    proxy_protocol.client(("203.0.113.7", 51000), ("198.51.100.1", 443), version=1),
    proxy_protocol.client(
        ("2001:db8::42", 40001), ("2001:db8::1", 443), version=2, tlvs=((proxy_protocol.PP2_TYPE_ALPN, b"h2"),)
    ),
]


async def greet_and_echo(stream: ByteStream) -> None:
    """The server's handler: says who it sees, then echoes every line until the client is done."""
    host, port = stream.info["peer"]
    via = stream.info["proxy_via"]
    alpn = stream.info.get("proxy_alpn", "-")
    await stream.send(f"hello {host} port {port} (relayed by {via[0]}, alpn {alpn})\n".encode())
    while line := await stream.recv():
        await stream.send(line)


async def main() -> None:
    server = Stack(tcp.listen("127.0.0.1", 0), proxy_protocol.server())
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(server.serve, greet_and_echo)
        print(f"server listening on {host}:{port}")

        for spec in CLIENTS:
            async with await Stack(tcp.connect(host, port), spec).connect(deadline=after(5)) as conn:
                greeting = await conn.recv_until(b"\n", deadline=after(5))
                print(f"v{spec.version} client got: {greeting.decode().strip()}")
                assert spec.source is not None and spec.source[0].encode() in greeting
                await conn.send(b"ping\n", deadline=after(5))
                assert await conn.recv_exactly(5, deadline=after(5)) == b"ping\n"
                await conn.done()

        async with await tcp.connect(host, port).connect(deadline=after(5)) as direct:
            await direct.send(b"GET / HTTP/1.1\r\n\r\n", deadline=after(5))
            try:
                answer = await direct.recv(deadline=after(5))  # the server closed it: end of stream
            except Broken:  # or a reset, if it closed with our bytes unread
                answer = b""
            print(f"a client without a header: refused (the connection ended, {answer!r})")
            assert answer == b""
        nursery.cancel_scope.cancel()  # stop the server
    print("done")


if __name__ == "__main__":
    trio.run(main)
