"""Length-prefixed echo over a Unix socket: a server and its client in one file.

The story: the same echo service as ``echo_prefix_tcp.py``, on a Unix domain socket in a fresh
temporary directory instead of a TCP port: only processes that can reach the path can connect,
and the peer's pid and uid come with every connection (``info["peer_pid"]``). Only the bottom
layer changed: ``unix.listen(path)`` and ``unix.connect(path)``; the framing layer above it and
the handler are the same code. The server removes its socket file when it stops.

Run it: ``python examples/echo_prefix_unix.py``
"""

from __future__ import annotations

import os
import tempfile

import trio

from layers import framing, unix
from stack import MessageStream, Stack, after

MESSAGES = [b"over a unix socket", b"", b"same layers above the bottom one"]


async def echo(messages: MessageStream) -> None:
    """The server's handler: one call per connection, until the client says it is done."""
    print(f"server: connection from pid {messages.info.get('peer_pid')}")
    async for msg in messages:
        await messages.send(msg)


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "echo.sock")
        server = Stack(unix.listen(path), framing.prefix(4))
        async with trio.open_nursery() as nursery:
            [address] = await nursery.start(server.serve, echo)
            print(f"server listening on {address}")

            client = Stack(unix.connect(path), framing.prefix(4))
            async with await client.connect(deadline=after(5)) as conn:
                for msg in MESSAGES:
                    await conn.send(msg, deadline=after(5))
                    reply = await conn.recv(deadline=after(5))
                    assert reply == msg, "the echo differs from what was sent"
                    print(f"echo: {reply!r}")
            nursery.cancel_scope.cancel()  # stop the server
        assert not await trio.Path(path).exists(), "the server left its socket file behind"
    print("done")


if __name__ == "__main__":
    trio.run(main)
