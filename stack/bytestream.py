"""The byte stream: :class:`ByteStream`, a reliable, ordered stream of bytes both ways.

A layer subclasses it and writes the primitives; the base class does the rest the same way for
every layer: deadlines, the read-ahead buffer (``unread``), the outgoing buffer of committed
bytes, one task per direction, and the closed / done / broken states.

Primitives a ByteStream layer writes (each takes the call's absolute deadline and passes it
unchanged to the stream below):

``_recv_some(max_bytes, deadline) -> bytes``
    1..max_bytes bytes, or ``b""`` at the end of the stream. *Cancel-safe*: if it is cancelled
    or times out it has consumed nothing, or it kept what it consumed in the layer's own state
    (never in a local variable across an ``await``).
``_send_some(data, deadline) -> int``
    Commit at least one and a bounded number of bytes from the front of ``data`` and return how
    many. *Cancel-safe*: cancelled or timed out, it committed nothing. Committed bytes that have
    not gone down yet go into ``self._outbuf``; the base flushes it. It must not keep a
    reference to ``data`` after it returns.
``_recv_into(buffer, deadline) -> int``
    Optional: ``_recv_some`` written into the caller's buffer (the default copies).

and the hooks of :class:`~stack.Stream` (``_done``, ``_close``, ``_detach``, ``_abort``,
``_flush``).

Deadline and cancellation rules (docs/design.md, "deadlines lose nothing"):

* A receive that times out or is cancelled consumes nothing: the bytes that had arrived stay
  buffered for the next call and the stream stays usable.
* A send that times out raises :class:`~stack.Timeout` whose ``sent`` is the number of bytes of
  this call that were committed. Committed bytes are delivered: what has not reached the stream
  below waits in the outgoing buffer and goes first on the next ``send``, ``done`` or ``aclose``.
  A send cancelled by an enclosing cancel scope keeps the same guarantees but cannot report
  ``sent``; use a deadline when you need the count.
* A layer that fails raises :class:`~stack.Broken` and every later call raises it again.

The layer above reads what this stream has buffered through :meth:`ByteStream.readahead`
(take whole messages without an await, as framing does) and :attr:`ByteStream.buffered`.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Mapping
from typing import Any, SupportsIndex

import trio

from .deadlines import FOREVER, cancel_scope_at, check_deadline
from .errors import Broken, EndOfStream, MessageTooLarge, StackError, Timeout
from .stream import Stream

__all__ = ["DEFAULT_RECV", "ByteStream"]

DEFAULT_RECV = 65536
"""Default ``max_bytes`` for :meth:`ByteStream.recv`."""


def _size(value: object, name: str, minimum: int) -> int:
    """The slow path of a size argument's check: ``value`` as an ``int`` >= ``minimum``, else
    :class:`TypeError` (not an integer, or a ``bool``) or :class:`ValueError`, naming it.

    The public methods test ``type(value) is not int or value < minimum`` first and call this
    only when that is true, so a plain ``int`` costs one test."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r:.40}")
    n = operator.index(value)
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {n}")
    return n


def _bytes_view(data: object, name: str) -> memoryview:
    """``memoryview(data)`` as bytes (format ``B``, one dimension), or :class:`TypeError`
    naming the argument: ``str``, ``int`` and other objects without the buffer protocol."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be bytes, a bytearray or a memoryview, not {type(data).__name__} {data!r:.40}"
        ) from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise TypeError(f"{name} must be a contiguous buffer")
        view = view.cast("B")
    return view


class ByteStream(Stream):
    """A reliable, ordered stream of bytes in both directions (TCP, TLS, an HTTP body...).

    ::

        await s.send(data, *, deadline)               # all of data, or an exception
        await s.recv(max_bytes=65536, *, deadline)    # 1..max_bytes bytes; b"" only at the end
        await s.recv_exactly(n, *, deadline)          # exactly n, else EndOfStream(partial=...)
        await s.recv_until(delim, *, max_bytes, deadline)
        await s.done(*, deadline)                     # no more sends from this side
        await s.aclose()                              # graceful close; `async with s:` does it
        lower = await s.detach(*, deadline)           # undo this layer
        s.unread(data)                                # push bytes back: the next recv returns them
        s.buffered                                    # how many bytes the next receive has already
        buf = s.readahead()                           # for the layer above: the buffer itself

    Receiving methods return at once, without a checkpoint, when buffered bytes satisfy them.
    """

    kind = "bytes"

    #: True for a layer whose ``_recv_some`` / ``_recv_into`` / ``_send_some`` enforce their
    #: ``deadline`` themselves: each raises :class:`Timeout` having consumed or committed nothing
    #: once the deadline has passed (already passed on entry, or while it waited). The public
    #: methods then make no cancel scope of their own for a finite deadline, so a call the
    #: primitive completes without waiting costs none (the socket layer makes one only around an
    #: actual wait). Every other layer keeps the default: one scope per call with a deadline.
    _primitives_take_deadline = False

    def __init__(self, lower: Stream | None = None, info: Mapping[str, Any] | None = None) -> None:
        super().__init__(lower, info)
        self._unread = bytearray()
        self._eof = False

    # ---- primitives (layers override) --------------------------------------------------

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        raise NotImplementedError

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        raise NotImplementedError

    async def _recv_into(self, buffer: bytearray | memoryview, deadline: float) -> int:
        """Primitive behind :meth:`recv_into`: like ``_recv_some(len(buffer))``, written into
        ``buffer`` (non-empty, writable, one byte per item); 0 at the end of the stream. The default
        calls ``_recv_some`` and copies; a layer that can read into memory directly (a socket's
        ``recv_into``) overrides it. The same cancel-safety rule as ``_recv_some``."""
        data = await self._recv_some(len(buffer), deadline)
        n = len(data)
        buffer[:n] = data
        return n

    # ---- what is buffered, for the layer above ------------------------------------------

    @property
    def buffered(self) -> int:
        """How many bytes this stream has read ahead: the next receive returns them first."""
        return len(self._unread)

    def readahead(self) -> bytearray:
        """The read-ahead buffer itself, lent to the layer above; empty when it may not take.

        While the stream is idle and usable (no task is receiving on it; it is neither closed,
        detached nor broken) this returns its own buffer, no copy: the bytes the next receive
        would return, in order. The layer above may read it and *take* bytes from its front
        (``del buf[:n]``, ``buf.clear()``) before its next ``await``: that is a receive served from
        the buffer, with no checkpoint, as :meth:`recv_exactly` makes one. It must never add
        bytes (that is :meth:`unread`), nor keep the buffer across an ``await``. Otherwise
        (a receive in progress, closed, broken) it returns a new empty bytearray, so the caller
        falls back on the public receive, which raises :class:`~stack.Busy`, ``Closed`` or
        ``Broken`` as it should. One call, no allocation on the usable path: framing takes each
        buffered message with it.
        """
        if self._receiving or self._broken is not None or self._closed is not None:
            return bytearray()
        return self._unread

    # ---- receiving ---------------------------------------------------------------------

    def unread(self, data: bytes | bytearray | memoryview) -> None:
        """Push ``data`` back to the front: the next receive returns it before anything else.

        This is how a layer hands back bytes it read ahead when it detaches.
        """
        if type(data) is not bytes and not isinstance(data, (bytearray, memoryview)):
            data = _bytes_view(data, "unread's data")
        if data:
            self._unread[:0] = data

    async def _pull(self, max_bytes: int, deadline: float) -> bool:
        """Receive once from the layer into the unread buffer. False at the end of the stream."""
        if self._eof:
            return False
        chunk = await self._recv_some(max_bytes, deadline)
        if not chunk:
            self._eof = True
            return False
        self._unread += chunk
        return True

    async def recv(self, max_bytes: int = DEFAULT_RECV, *, deadline: float = FOREVER) -> bytes:
        """Receive 1..``max_bytes`` bytes; ``b""`` only at the end of the stream (and after it).

        On deadline: :class:`Timeout`, nothing consumed. On cancellation: nothing consumed.
        ``max_bytes`` is a bound, not an allocation: any ``int`` >= 1.
        """
        if type(max_bytes) is not int or max_bytes < 1:
            max_bytes = _size(max_bytes, "max_bytes", 1)
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._receiving or self._broken is not None or self._closed is not None:
            self._enter_recv()  # raises Busy, Broken or Closed
        buf = self._unread
        if buf:  # served from the buffer: no await, so no other task can interleave
            if len(buf) <= max_bytes:
                out = bytes(buf)
                buf.clear()
            else:
                out = bytes(buf[:max_bytes])
                del buf[:max_bytes]
            return out
        if self._eof:
            return b""
        self._receiving = True
        try:
            if deadline == math.inf or self._primitives_take_deadline:
                data = await self._recv_some(max_bytes, deadline)
            else:
                data = b""
                with trio.move_on_at(deadline) as scope:
                    data = await self._recv_some(max_bytes, deadline)
                if scope.cancelled_caught:
                    raise Timeout(f"{self.kind} recv timed out")
            if not data:
                self._eof = True
            return data
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    async def recv_into(self, buffer: bytearray | memoryview, *, deadline: float = FOREVER) -> int:
        """Receive 1..``len(buffer)`` bytes into the front of ``buffer``; return how many.

        ``0`` only at the end of the stream (and after it). The same rules as :meth:`recv`:
        buffered bytes come first, without a checkpoint; on deadline :class:`Timeout`, and on
        deadline or cancellation nothing is consumed (what ``buffer`` holds beyond the returned
        count is unspecified). A reader that reuses one buffer saves an allocation and a copy
        per call. ``buffer``: a ``bytearray`` or a writable, contiguous, non-empty memoryview (else
        ``TypeError`` / ``ValueError``); a multi-byte format is filled byte by byte.
        """
        if type(buffer) is bytearray:
            view: bytearray | memoryview = buffer
        else:
            try:
                view = memoryview(buffer)
            except TypeError:
                raise TypeError(
                    f"recv_into needs a bytearray or a writable memoryview, not {type(buffer).__name__}"
                ) from None
            if view.readonly:
                raise TypeError("recv_into needs a writable buffer")
            if not view.c_contiguous:  # a socket or OpenSSL writes one run of bytes
                raise TypeError("recv_into needs a contiguous buffer")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
        size = len(view)
        if size < 1:
            raise ValueError("recv_into needs a buffer of at least 1 byte")
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._receiving or self._broken is not None or self._closed is not None:
            self._enter_recv()  # raises Busy, Broken or Closed
        buf = self._unread
        if buf:
            n = len(buf) if len(buf) <= size else size
            with memoryview(buf) as src:
                view[:n] = src[:n]
            del buf[:n]
            return n
        if self._eof:
            return 0
        self._receiving = True
        try:
            if deadline == math.inf or self._primitives_take_deadline:
                n = await self._recv_into(view, deadline)
            else:
                n = 0
                with trio.move_on_at(deadline) as scope:
                    n = await self._recv_into(view, deadline)
                if scope.cancelled_caught:
                    raise Timeout(f"{self.kind} recv_into timed out")
            if not n:
                self._eof = True
            return n
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    async def recv_exactly(self, n: int, *, deadline: float = FOREVER) -> bytes:
        """Receive exactly ``n`` bytes.

        If the stream ends first: :class:`EndOfStream` whose ``partial`` holds (and consumes)
        the bytes that did arrive. On deadline or cancellation nothing is consumed: the bytes
        that arrived stay buffered for the next call.
        """
        if type(n) is not int or n < 0:
            n = _size(n, "n", 0)
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._receiving or self._broken is not None or self._closed is not None:
            self._enter_recv()  # raises Busy, Broken or Closed
        buf = self._unread
        if len(buf) >= n:  # served from the buffer: no await, so no other task can interleave
            if len(buf) == n:
                out = bytes(buf)
                buf.clear()
            else:
                out = bytes(buf[:n])
                del buf[:n]
            return out
        if n > sys.maxsize:
            raise ValueError(f"recv_exactly({n}): more bytes than a bytes object can hold")
        self._receiving = True
        try:
            if len(buf) < n:
                with cancel_scope_at(deadline) as scope:
                    while len(buf) < n:
                        if not await self._pull(max(n - len(buf), DEFAULT_RECV), deadline):
                            partial = bytes(buf)
                            buf.clear()
                            raise EndOfStream(
                                f"{self.kind} stream ended after {len(partial)} of {n} bytes",
                                partial=partial,
                            )
                if scope is not None and scope.cancelled_caught:
                    raise Timeout(f"{self.kind} recv_exactly({n}) timed out with {len(buf)} bytes buffered")
            if len(buf) == n:
                out = bytes(buf)
                buf.clear()
            else:
                out = bytes(buf[:n])
                del buf[:n]
            return out
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    async def recv_until(self, delim: bytes, *, max_bytes: int = DEFAULT_RECV, deadline: float = FOREVER) -> bytes:
        """Receive through the first ``delim`` (included in the result).

        If ``max_bytes`` bytes (delimiter included) arrive without it: :class:`MessageTooLarge`;
        the bytes stay buffered, nothing more is read. If the stream ends first:
        :class:`EndOfStream` with the leftover bytes as ``partial``. On deadline or
        cancellation nothing is consumed.
        """
        if not isinstance(delim, bytes):
            delim = bytes(_bytes_view(delim, "delim"))
        if not delim:
            raise ValueError("delim must not be empty")
        if type(max_bytes) is not int or max_bytes < 1:
            max_bytes = _size(max_bytes, "max_bytes", 1)
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        self._enter_recv()
        try:
            buf = self._unread
            searched = 0
            with cancel_scope_at(deadline) as scope:
                while True:
                    at = buf.find(delim, searched)
                    if at >= 0:
                        end = at + len(delim)
                        if end > max_bytes:
                            break
                        out = bytes(buf[:end])
                        del buf[:end]
                        return out
                    if len(buf) >= max_bytes:
                        break
                    searched = max(0, len(buf) - len(delim) + 1)
                    if not await self._pull(DEFAULT_RECV, deadline):
                        partial = bytes(buf)
                        buf.clear()
                        raise EndOfStream(f"{self.kind} stream ended before the delimiter {delim!r}", partial=partial)
            if scope is not None and scope.cancelled_caught:
                raise Timeout(f"{self.kind} recv_until timed out with {len(buf)} bytes buffered")
            raise MessageTooLarge(f"no delimiter {delim!r} within {max_bytes} bytes", limit=max_bytes, size=None)
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    # ---- sending -----------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview, *, deadline: float = FOREVER) -> None:
        """Send all of ``data``, or raise.

        On deadline: :class:`Timeout` with ``sent`` = bytes of ``data`` committed (they will be
        delivered; the rest of ``data`` was not). The stream stays usable.
        """
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._sending or self._send_closed or self._broken is not None or self._closed is not None:
            self._enter_send()  # raises Busy, Broken or Closed
        self._sending = True
        sent = total = 0
        try:
            try:
                view = memoryview(data)
            except TypeError:
                view = _bytes_view(data, "data")  # raises the TypeError that names the argument
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            total = len(view)
            try:
                # The same loop twice: no cancel scope at all for FOREVER (the hot path).
                if deadline == math.inf or self._primitives_take_deadline:
                    if self._outbuf:
                        await self._flush(deadline)
                    while sent < total:
                        sent += await self._send_some(view[sent:] if sent else view, deadline)
                    if self._outbuf:
                        await self._flush(deadline)
                    return
                with trio.move_on_at(deadline):
                    if self._outbuf:
                        await self._flush(deadline)
                    while sent < total:
                        sent += await self._send_some(view[sent:] if sent else view, deadline)
                    if self._outbuf:
                        await self._flush(deadline)
                    return
            except Timeout:  # a lower layer's scope for the same deadline fired first
                pass
            raise Timeout(f"{self.kind} send timed out after {sent} of {total} bytes", sent=sent)
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def send_from(self, buf: bytearray, *, deadline: float = FOREVER) -> None:
        """Send the bytes in ``buf``, removing them from its front as they are committed.

        Whatever ends the call (success, timeout, cancellation, error), ``buf`` then holds
        exactly the bytes that were not committed. Layers use it to flush their outgoing
        buffers without losing or repeating a byte. On deadline: :class:`Timeout` with
        ``sent`` = bytes removed from ``buf``.
        """
        if type(buf) is not bytearray and not isinstance(buf, bytearray):
            raise TypeError(f"send_from needs a bytearray (it removes what it sends), not {type(buf).__name__}")
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._sending or self._send_closed or self._broken is not None or self._closed is not None:
            self._enter_send()  # raises Busy, Broken or Closed
        self._sending = True
        before = len(buf)
        try:
            try:
                if deadline == math.inf or self._primitives_take_deadline:  # no cancel scope
                    if self._outbuf:
                        await self._flush(deadline)
                    while buf:
                        n = await self._send_some(buf, deadline)
                        del buf[:n]
                    if self._outbuf:
                        await self._flush(deadline)
                    return
                with trio.move_on_at(deadline):
                    if self._outbuf:
                        await self._flush(deadline)
                    while buf:
                        n = await self._send_some(buf, deadline)
                        del buf[:n]
                    if self._outbuf:
                        await self._flush(deadline)
                    return
            except Timeout:
                pass
            sent = before - len(buf)
            raise Timeout(f"{self.kind} send timed out after {sent} of {before} bytes", sent=sent)
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Undo this layer; see :meth:`Stream.detach`. Bytes already decoded by this layer and
        not yet received cannot go back below it, so detaching then raises and changes nothing."""
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        self._check_usable()
        if self._unread:
            raise StackError(
                f"cannot detach the {self.kind} layer: {len(self._unread)} bytes it received "
                "were not read yet (recv them first)"
            )
        lower = await super().detach(deadline=deadline)
        if not isinstance(lower, ByteStream):  # pragma: no cover - layer bug
            raise TypeError(f"{type(self).__name__}._detach returned {lower!r}")
        return lower
