"""Tracing a stack: watch what crosses two of its boundaries, in the log and in a recorder.

The story: a client stack ``tcp | trace("tcp") | prefix(4) | trace("messages")`` talks to a
length-prefixed echo server. The lower trace shows the bytes the framing layer exchanges with
TCP (each message is 4 bytes of length plus its body); the upper one shows the messages the
application sends and receives, with a 12-byte preview of each (previews are off by default:
payloads can be secrets). Both log to the ``stack.trace`` logger (data at DEBUG, attach, done,
close and detach at INFO, failures at WARNING); the upper one also records its events in a
``Recorder``, which is how tests look at a trace. A receive that times out shows in the trace
too, and loses nothing.

Run it: ``python examples/trace_stack.py``
"""

from __future__ import annotations

import contextlib
import logging
import sys

import trio

from layers import framing, tcp, trace
from stack import MessageStream, Stack, Timeout, after

MESSAGES = [b"hello, tracer", b"", b"a third message, a little longer"]


async def echo(messages: MessageStream) -> None:
    async for msg in messages:
        await messages.send(msg)


async def main() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(levelname)-5s %(message)s")
    recorder = trace.Recorder()
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), framing.prefix(4)).serve, echo)
        client = Stack(
            tcp.connect(host, port),
            trace.log("tcp"),
            framing.prefix(4),
            trace.log("messages", preview=12, recorder=recorder),
        )
        async with await client.connect(deadline=after(5)) as conn:
            for msg in MESSAGES:
                await conn.send(msg, deadline=after(5))
                assert await conn.recv(deadline=after(5)) == msg
            with contextlib.suppress(Timeout):  # nothing more was sent: the trace shows a recv that timed out
                await conn.recv(deadline=after(0.05))
            await conn.done()
        nursery.cancel_scope.cancel()

    print("\nrecorded at the message boundary:")
    for event in recorder.events:
        print(f"  {event.describe()}")
    assert recorder.ops() == ["attach"] + ["send", "recv"] * len(MESSAGES) + ["recv", "done", "close"]
    assert recorder.total("send") == recorder.total("recv") == sum(map(len, MESSAGES))
    print("done")


if __name__ == "__main__":
    trio.run(main)
