"""Length-prefixed echo over TCP: a server and its client in one file.

The story: a server listens on 127.0.0.1, port 0 (the OS picks a free port and ``serve`` tells
us which), with a stack of two layers: TCP at the bottom and a 4-byte length prefix on top, so
the handler sees whole messages, never fragments. It echoes every message back. The client
builds the same two layers over ``tcp.connect``, sends a few messages (an empty one too: a
valid message; and a large one, which arrives whole), prints each echo and hangs up. Then the
server is cancelled, which closes every connection it still holds, and the program exits 0.

Run it: ``python examples/echo_prefix_tcp.py``
"""

from __future__ import annotations

import trio

from layers import framing, tcp
from stack import MessageStream, Stack, after

MESSAGES = [b"hello", b"", b"length-prefixed messages keep their boundaries", b"x" * 100_000]


async def echo(messages: MessageStream) -> None:
    """The server's handler: one call per connection, until the client says it is done."""
    async for msg in messages:
        await messages.send(msg)


async def main() -> None:
    server = Stack(tcp.listen("127.0.0.1", 0), framing.prefix(4))
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(server.serve, echo)
        print(f"server listening on {host}:{port}")

        client = Stack(tcp.connect(host, port), framing.prefix(4))
        async with await client.connect(deadline=after(5)) as conn:
            for msg in MESSAGES:
                await conn.send(msg, deadline=after(5))
                reply = await conn.recv(deadline=after(5))
                assert reply == msg, "the echo differs from what was sent"
                shown = reply if len(reply) <= 60 else reply[:20] + b"..."
                print(f"echo: {shown!r} ({len(reply)} bytes)")
        nursery.cancel_scope.cancel()  # stop the server
    print("done")


if __name__ == "__main__":
    trio.run(main)
