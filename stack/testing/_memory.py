"""In-memory ByteStream pairs: the bottom layer for tests.

``memory_pair(capacity=65536)`` returns two connected :class:`MemoryStream`\\ s. Each direction is
a bounded buffer: a sender blocks while the buffer is full (that is how tests make
backpressure, and so send deadlines), a receiver blocks while it is empty.

Semantics follow TCP: ``done()`` is a FIN (the peer reads what was sent, then ``b""``);
``aclose()`` is a FIN plus "I read no more" (the peer's later sends raise
:class:`~stack.Broken`); :meth:`MemoryStream.reset` is an RST (the peer's receives and sends
raise :class:`~stack.Broken` at once, buffered bytes are discarded).
"""

from __future__ import annotations

import trio

from stack.deadlines import FOREVER, check_deadline
from stack.errors import Broken, Closed, StackError
from stack.streams import ByteStream

__all__ = ["MemoryStream", "memory_pair"]


class _Pipe:
    """One direction: a bounded buffer and the tasks waiting on it."""

    __slots__ = ("buf", "capacity", "eof", "readable", "reader_gone", "reset", "writable")

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray()
        self.capacity = capacity
        self.eof = False
        self.reset = False
        self.reader_gone = False
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self.readable.unpark_all()
        self.writable.unpark_all()


class MemoryStream(ByteStream):
    """One end of a :func:`memory_pair`. ``info``: ``transport="memory"``, ``peer``, ``local``."""

    kind = "memory"

    def __init__(self, outgoing: _Pipe, incoming: _Pipe, name: str, peer: str) -> None:
        super().__init__(None, {"transport": "memory", "local": name, "peer": peer})
        self._out = outgoing
        self._in = incoming

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        pipe = self._in
        while True:
            if self._closed is not None:
                raise Closed("memory stream was closed while a recv was waiting")
            if pipe.reset:
                raise Broken("memory stream: connection reset by peer")
            if pipe.buf:
                data = bytes(pipe.buf[:max_bytes])
                del pipe.buf[:max_bytes]
                pipe.writable.unpark_all()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            if pipe.eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            await pipe.readable.park()

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        pipe = self._out
        while True:
            if self._closed is not None:
                raise Closed("memory stream was closed while a send was waiting")
            if pipe.reset or pipe.reader_gone:
                raise Broken("memory stream: the peer closed its end (connection reset)")
            space = pipe.capacity - len(pipe.buf)
            if space > 0:
                n = min(space, len(data))
                pipe.buf += data[:n]
                pipe.readable.unpark_all()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return n
            await pipe.writable.park()

    async def _done(self, deadline: float) -> None:
        await trio.lowlevel.checkpoint()
        self._out.eof = True
        self._out.wake()

    def _abort(self) -> None:
        self._out.eof = True
        self._in.reader_gone = True
        self._out.wake()
        self._in.wake()

    async def aclose(self, *, deadline: float | None = None) -> None:
        """FIN plus "I read no more". Bytes already committed stay readable by the peer."""
        if self._closed is None:
            self._closed = "closed"
            self._abort()
        if deadline is not None:
            check_deadline(deadline)  # closed all the same: a wrong deadline is the caller's bug
        await trio.lowlevel.checkpoint()

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        check_deadline(deadline)
        raise StackError("memory is the bottom layer: there is nothing below it to detach to")

    def reset(self) -> None:
        """Simulate a connection reset: both ends' pending and future I/O raise Broken."""
        for pipe in (self._out, self._in):
            pipe.reset = True
            pipe.buf.clear()
            pipe.wake()
        self._closed = "closed"


def memory_pair(*, capacity: int = 65536) -> tuple[MemoryStream, MemoryStream]:
    """Two connected in-memory ByteStreams ``(a, b)``; each direction buffers ``capacity`` bytes."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    ab, ba = _Pipe(capacity), _Pipe(capacity)
    return MemoryStream(ab, ba, "a", "b"), MemoryStream(ba, ab, "b", "a")
