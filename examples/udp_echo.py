"""UDP echo: one datagram is one message, in both of the UDP layer's modes.

The story: a server on an unconnected socket (``udp.bind``) answers anyone: each ``recv``
returns a ``Datagram``, the bytes plus the sender's address, and sending that Datagram back
answers the sender. A client on a connected socket (``udp.connect``) talks to that one server
with plain bytes. Then the limits: a datagram over the client's ``max_datagram`` is refused
before it is sent (``MessageTooLarge``), and one over the server's limit is dropped on arrival,
logged and counted, without ending the server's loop. Last, what UDP does not have: ``done()``
tells the peer nothing, so the client's last receive ends on its deadline, not on an end of
stream.

Run it: ``python examples/udp_echo.py``
"""

from __future__ import annotations

import logging

import trio

from layers import udp
from stack import MessageTooLarge, Timeout, after

MESSAGES = [b"hello over udp", b"", b"one datagram, one message"]


async def echo(server: udp.UDPStream) -> None:
    """The server: answer every datagram to its sender, upper-cased."""
    async for dgram in server:
        assert isinstance(dgram, udp.Datagram)
        await server.send(udp.Datagram(dgram.upper(), dgram.address))


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    async with await udp.bind("127.0.0.1", 0, max_datagram=1024).connect() as server, trio.open_nursery() as nursery:
        nursery.start_soon(echo, server)
        host, port = server.info["local"]
        print(f"server on udp {host}:{port}")

        async with await udp.connect(host, port, max_datagram=2048).connect(deadline=after(5)) as client:
            for msg in MESSAGES:
                await client.send(msg)
                reply = await client.recv(deadline=after(5))
                assert reply == msg.upper(), f"unexpected reply {reply!r}"
                print(f"echo: {reply!r}")

            try:
                await client.send(b"x" * 3000)
            except MessageTooLarge as exc:
                print(f"refused before sending: {exc}")

            await client.send(b"y" * 1500)  # fine for the client, over the server's 1024: dropped there
            await client.send(b"after the big one")
            assert await client.recv(deadline=after(5)) == b"AFTER THE BIG ONE"
            print(f"the server dropped {server.dropped} oversized datagram and went on")

            await client.done()  # no wire meaning: the server is not told anything
            try:
                await client.recv(deadline=after(0.2))
            except Timeout:
                print("no end of stream in UDP: the last receive ended on its deadline")
        nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    trio.run(main)
