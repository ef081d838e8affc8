"""One QUIC stream as a :class:`~stack.ByteStream` (the connection that owns it is in
``_quic_conn.py``; :mod:`layers.quic`'s docstring states the semantics).

Theory of operation: a stream does no I/O of its own, as an HTTP/2 stream does not. ``recv``
waits for what the connection put in its buffer (``_first``, then ``_queue``, then ``_in``) when
aioquic delivered it, and takes from it without an ``await`` in between, so a receive that times
out consumes nothing; what the application takes is what the engine's receive window follows (``_quic_engine.Engine``).
``send`` commits at most :data:`SEND_CHUNK` bytes to aioquic per step, and only while fewer than
:data:`HIGH_WATER` committed bytes of this stream wait to leave, then wakes the connection's
driver; the commit happens after the last ``await``, so an interrupted step commits nothing and
``Timeout.sent`` is exact. ``done()`` is a FIN. ``aclose()`` before both directions ended
abandons the stream: RESET_STREAM for an unfinished sending side and STOP_SENDING for an
unfinished receiving side, with the connection's ``cancel_code`` (HTTP/3 uses
H3_REQUEST_CANCELLED), never harming the connection.

Subclasses (the HTTP/3 request stream) change how bytes are committed (``_commit``,
``_commit_end``) and reuse the rest.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import trio

from stack.errors import Broken, Closed, StackError
from stack.streams import ByteStream, Info

from ._muxed_stream import StreamErrors

__all__ = ["HIGH_WATER", "SEND_CHUNK", "QuicStream", "StreamOwner"]

HIGH_WATER = 256 * 1024
"""Committed bytes of one stream that may wait to leave before its sender waits."""

SEND_CHUNK = 64 * 1024
"""Most bytes one ``send`` step commits."""

BIG_DATA = 16 * 1024
"""Delivered bytes at least this many, arriving while nothing is buffered, are handed to the
reader as the object aioquic delivered (``QuicStream._first``) rather than copied in and out;
what arrives after them while the reader has not taken them is queued as delivered too
(``QuicStream._queue``): a bulk receiver gets several datagrams' worth per batch."""


class StreamOwner(Protocol):
    """What a stream may ask of the connection that owns it."""

    @property
    def info(self) -> Info: ...

    cancel_code: int

    def failure(self) -> StackError | None:
        """Why the connection ended, or ``None`` while it is healthy."""

    def unsent(self, stream_id: int) -> int:
        """Committed bytes of the stream that have not left yet."""

    async def wait_progress(self) -> None:
        """Wait until the driver sent something or the connection ended."""

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Commit ``data`` (and the FIN) to the engine. A :class:`layers.quic.QuicConnection`
        also takes a view (the engine copies it before returning)."""

    def consumed(self, stream: QuicStream) -> None:
        """The application took bytes from ``stream``: send a window update when one is due."""

    def abandon(self, stream: QuicStream, reset: bool, stop: bool) -> None:
        """RESET_STREAM (``reset``) and STOP_SENDING (``stop``) with ``cancel_code``; forget it."""

    def release_if_done(self, stream: QuicStream) -> None:
        """Forget ``stream`` once both directions ended cleanly."""


class QuicStream(StreamErrors, ByteStream):
    """One QUIC stream as a :class:`~stack.ByteStream` (see the module docstring).

    A unidirectional stream works one way: sending on one we did not open, or receiving on one
    we opened, raises :class:`~stack.StackError`. ``info``: ``stream_id``, ``quic_stream``
    (``"bidi"`` or ``"uni"``) and the connection's keys. ``detach``: not possible.
    """

    kind = "quic-stream"
    _commits_views = True
    """``send`` hands aioquic a view of the caller's bytes (it copies them into the stream's
    buffer at once); a subclass with its own ``_commit`` gets ``bytes``."""

    _takes_first = True
    """:data:`BIG_DATA` bytes or more that arrive while nothing is buffered are kept as the
    ``bytes`` aioquic delivered (``_first``), and what follows them while they wait as the
    ``bytes`` delivered too (``_queue``, ``_queued`` bytes), each handed to the reader as it is
    (a ``bytearray`` copied them in and out, and cut its front on each read); a subclass that
    counts what it buffers its own way (``_buffered_in``) keeps to ``_in``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._commits_views = cls._commit is QuicStream._commit
        cls._takes_first = cls._buffered_in is QuicStream._buffered_in

    def __init__(self, conn: StreamOwner, stream_id: int, *, can_send: bool, can_recv: bool) -> None:
        super().__init__(None, {})
        self._conn = conn
        self.stream_id = stream_id
        self._in = bytearray()
        self._first = b""  # bytes delivered before those in _queue and _in, kept as aioquic gave them
        self._queue: deque[bytes] | None = None  # delivered after _first (only while _first is not empty)
        self._queued = 0  # bytes in _queue
        self._in_ended = False
        self._can_send = can_send
        self._can_recv = can_recv
        self._local_ended = not can_send
        self._reset: Broken | None = None
        self._stopped: Broken | None = None  # the peer asked us to stop sending
        self._rd: trio.Event | None = None
        self._released = False
        if not can_recv:
            self._in_ended = True

    @property
    def info(self) -> Info:
        kind = "uni" if self.stream_id & 2 else "bidi"
        return Info({"stream_id": self.stream_id, "quic_stream": kind}, self._conn.info)

    @property
    def ended(self) -> bool:
        """True once the peer ended its side (a FIN) and every byte of it was read: ``recv``
        returns ``b""`` without waiting. An HTTP/3 request whose HEADERS came with the FIN has no
        body: its stream is ``ended`` when the app gets it (the reverse proxy's bodiless path)."""
        return self._in_ended and not self._in and not self._first and not self._unread

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stream_id} {self._closed or ('broken' if self._broken else 'open')}>"

    # ---- what the connection calls -------------------------------------------------------

    def _on_data(self, data: bytes, end: bool) -> None:
        if data:
            if self._in or not self._takes_first:
                self._in += data
            elif self._first:  # no copy: queued behind it, taken by a reader as it is
                queue = self._queue
                if queue is None:
                    queue = self._queue = deque()
                queue.append(data)
                self._queued += len(data)
            elif len(data) >= BIG_DATA:
                self._first = data  # no copy: a reader takes this very object
            else:
                self._in += data
        if end:
            self._in_ended = True
        self._wake()

    def _on_reset(self, exc: Broken) -> None:
        if self._reset is None:
            self._reset = exc
        self._wake()

    def _on_stop(self, exc: Broken) -> None:
        self._stopped = exc
        self._wake()

    def _wake(self) -> None:
        ev = self._rd
        if ev is not None:
            self._rd = None
            ev.set()

    def _buffered_in(self) -> int:
        return len(self._first) + self._queued + len(self._in)

    def _take_queued(self) -> bytes:
        """Everything in ``_first`` and ``_queue``, joined, now taken from them."""
        data = self._first
        if self._queue:
            data = b"".join([data, *self._queue])
            self._queue.clear()
            self._queued = 0
        self._first = b""
        return data

    # ---- state ---------------------------------------------------------------------------

    def _check_send(self) -> None:
        if not self._can_send:
            raise StackError(f"{self.kind} {self.stream_id} is unidirectional from the peer: it cannot send")
        if self._stopped is not None:
            raise self._stopped
        err = self._error()
        if err is not None:
            raise err
        if self._local_ended:
            raise Closed(f"{self.kind} {self.stream_id}: this side already ended the stream")

    # ---- receiving -----------------------------------------------------------------------

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._can_recv:
            raise StackError(f"{self.kind} {self.stream_id} is unidirectional from this side: it cannot receive")
        while True:
            head = self._first
            if head:  # what came while nothing was buffered: given as it is when it fits
                if len(head) <= max_bytes:
                    queue = self._queue
                    if queue:  # the next one takes its place (_queue only holds bytes after _first)
                        self._first = nxt = queue.popleft()
                        self._queued -= len(nxt)
                    else:
                        self._first = b""
                else:
                    head, self._first = head[:max_bytes], head[max_bytes:]
                self._conn.consumed(self)
                return head
            buf = self._in
            if buf:
                if len(buf) <= max_bytes:
                    out = bytes(buf)
                    buf.clear()
                else:
                    out = bytes(buf[:max_bytes])
                    del buf[:max_bytes]
                self._conn.consumed(self)
                return out
            if self._in_ended:
                self._conn.release_if_done(self)
                return b""
            err = self._error()
            if err is not None:
                raise err
            ev = self._rd
            if ev is None:
                ev = self._rd = trio.Event()
            await ev.wait()

    # ---- sending -------------------------------------------------------------------------

    def _commit(self, data: bytes) -> None:
        self._conn.send_stream_data(self.stream_id, data, False)

    def _commit_end(self) -> None:
        self._conn.send_stream_data(self.stream_id, b"", True)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._conn
        while True:
            self._check_send()
            if conn.unsent(self.stream_id) < HIGH_WATER:
                break
            await conn.wait_progress()
        n = min(len(data), SEND_CHUNK)
        if self._commits_views:
            # the caller's bytes object itself when it is sent whole (a bulk stream's buffer keeps
            # it: layers._quic_copies), else a view (copied in before this returns)
            whole = data.obj if type(data) is memoryview and len(data) == n else None
            chunk = whole if type(whole) is bytes and len(whole) == n else data[:n]
            conn.send_stream_data(self.stream_id, chunk, False)  # type: ignore[arg-type]  # a view is fine
        else:
            self._commit(bytes(data[:n]))
        await trio.lowlevel.cancel_shielded_checkpoint()
        return n

    async def _done(self, deadline: float) -> None:
        if self._local_ended:
            await trio.lowlevel.checkpoint()
            return
        self._check_send()
        self._commit_end()
        self._local_ended = True
        self._conn.release_if_done(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _abort(self) -> None:
        if not self._released:
            conn = self._conn
            if conn.failure() is None and self._reset is None:
                conn.abandon(self, reset=not self._local_ended, stop=not self._in_ended)
            self._released = True
        self._wake()
