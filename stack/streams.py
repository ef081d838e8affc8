"""The two kinds of stream every layer speaks: :class:`ByteStream` and :class:`MessageStream`.

A layer subclasses one of them and fills in a few small primitives; the base classes do the
rest the same way for every layer: deadlines, the read-ahead (``unread``) buffer, the outgoing
buffer of committed bytes, one-task-per-direction checks, and the closed / done / broken states.

Primitives a ByteStream layer writes (all of them take the call's absolute deadline and pass it
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
``_done(deadline)``, ``_close(deadline)``, ``_detach(deadline) -> lower``
    Half-close, graceful close and undo of this layer only; the base has already flushed the
    outgoing buffer and takes care of the stream below.

Deadline and cancellation rules (DESIGN.md, "deadlines lose nothing"):

* A receive that times out or is cancelled consumes nothing: the bytes that had arrived stay
  buffered for the next call and the stream stays usable.
* A send that times out raises :class:`~stack.Timeout` whose ``sent`` is the number of bytes of
  this call that were committed. Committed bytes are delivered: what has not reached the stream
  below waits in the outgoing buffer and goes first on the next ``send``, ``done`` or ``aclose``.
  A send cancelled by an enclosing cancel scope keeps the same guarantees but cannot report
  ``sent``; use a deadline when you need the count.
* A layer that fails raises :class:`~stack.Broken` and every later call raises it again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import trio

from .deadlines import FOREVER
from .errors import Broken, Busy, Closed, EndOfStream, MessageTooLarge, StackError, Timeout

__all__ = ["ByteStream", "Info", "Listener", "MessageStream", "Stream"]

log = logging.getLogger("stack")

DEFAULT_RECV = 65536
"""Default ``max_bytes`` for :meth:`ByteStream.recv`."""

CLOSE_GRACE = 5.0
"""Seconds :meth:`Stream.aclose` spends on graceful work (flush, close_notify) by default."""

S = TypeVar("S", bound="Stream")


class Info(Mapping[str, Any]):
    """A read-only view of what a stream knows: its own keys first, then its lower stream's.

    Keys in use by the bundled layers: ``peer`` and ``local`` (addresses), ``transport``
    (``"tcp"``, ``"unix"``, ``"memory"``), ``alpn``, ``server_name``, ``tls_version``,
    ``cipher``, ``peer_certificate``, ``http_version``.
    """

    __slots__ = ("_maps",)

    def __init__(self, *maps: Mapping[str, Any]) -> None:
        self._maps = maps

    def __getitem__(self, key: str) -> Any:
        for m in self._maps:
            if key in m:
                return m[key]
        raise KeyError(key)

    # Mapping's own get() and __contains__ go through __getitem__ and a KeyError per miss: these
    # ask each map directly (layers read info on every new connection).
    def get(self, key: str, default: Any = None) -> Any:
        for m in self._maps:
            if key in m:
                return m[key]
        return default

    def __contains__(self, key: object) -> bool:
        return any(key in m for m in self._maps)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for m in self._maps:
            for k in m:
                if k not in seen:
                    seen.add(k)
                    yield k

    def __len__(self) -> int:
        return len(set().union(*self._maps))

    def __repr__(self) -> str:
        return f"Info({dict(self)!r})"


class Stream:
    """What both kinds of stream share: state, direction guards, ``info``, ``aclose``.

    States: open; *done* (this side called ``done()``: sends raise :class:`Closed`, receives
    go on); *closed* (``aclose()`` or ``detach()`` was called: every call raises
    :class:`Closed`); *broken* (a failure: every call raises :class:`Broken`).
    """

    #: Name used in error messages and logs ("tcp", "tls", "prefix", ...).
    kind = "stream"

    def __init__(self, lower: Stream | None = None, info: Mapping[str, Any] | None = None) -> None:
        self._lower = lower
        self._info: dict[str, Any] = dict(info or {})
        self._outbuf = bytearray()
        self._sending = False
        self._receiving = False
        self._send_closed = False
        self._closed: str | None = None  # "closed" or "detached"
        self._broken: BaseException | None = None

    # ---- what the stream knows ----------------------------------------------------------

    @property
    def info(self) -> Info:
        """Read-only mapping of facts about the connection, this layer's and those below."""
        if self._lower is None:
            return Info(self._info)
        return Info(self._info, self._lower.info)

    @property
    def lower(self) -> Stream | None:
        """The stream this layer sits on (``None`` for a bottom stream)."""
        return self._lower

    def __repr__(self) -> str:
        state = self._closed or ("broken" if self._broken else "open")
        return f"<{type(self).__name__} {self.kind} {state}>"

    # ---- guards ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise Broken(f"{self.kind} stream is broken: {self._broken}") from self._broken
        if self._closed is not None:
            raise Closed(f"{self.kind} stream was {self._closed} on this side")

    def _enter_send(self) -> None:
        self._check_usable()
        if self._send_closed:
            raise Closed(f"{self.kind} stream: done() was called, no more sends")
        if self._sending:
            raise Busy(f"another task is already sending on this {self.kind} stream")
        self._sending = True

    def _enter_recv(self) -> None:
        self._check_usable()
        if self._receiving:
            raise Busy(f"another task is already receiving on this {self.kind} stream")
        self._receiving = True

    def _fail(self, exc: BaseException) -> None:
        """Mark the stream broken (sticky). Layers call it when they give up."""
        if self._broken is None:
            self._broken = exc
            log.debug("%s stream broken: %s", self.kind, exc)

    # ---- outgoing buffer ---------------------------------------------------------------

    async def _flush(self, deadline: float) -> None:
        """Push committed bytes waiting in ``self._outbuf`` to the stream below.

        The lower stream removes bytes from the buffer as it commits them, so a timeout or a
        cancellation leaves exactly the bytes that still have to go.
        """
        if self._outbuf:
            lower = self._lower
            if not isinstance(lower, ByteStream):  # pragma: no cover - layer bug
                raise TypeError(f"{type(self).__name__} buffered output but has no lower ByteStream")
            await lower.send_from(self._outbuf, deadline=deadline)

    # ---- the end of a direction / of the stream ----------------------------------------

    async def _done(self, deadline: float) -> None:
        """Layer hook: tell the peer this side sends no more. Default: pass ``done`` down."""
        if self._lower is not None:
            await self._lower.done(deadline=deadline)

    async def _close(self, deadline: float) -> None:
        """Layer hook: graceful close of this layer only (close_notify, GOAWAY...). Default: nothing."""

    def _abort(self) -> None:
        """Layer hook: release this layer's own resources at once (sockets, tasks). Default: nothing."""

    async def _detach(self, deadline: float) -> Stream:
        """Layer hook: undo this layer, hand read-ahead bytes back to the lower stream, return it."""
        raise StackError(f"the {self.kind} layer cannot be detached")

    async def done(self, *, deadline: float = FOREVER) -> None:
        """No more sends from this side (TCP FIN, TLS close_notify, HTTP/2 END_STREAM).

        Flushes committed bytes first. Receiving goes on. Calling it again does nothing;
        ``send`` after it raises :class:`Closed`. On deadline: :class:`Timeout`, and the call
        may be repeated.
        """
        if self._send_closed and self._closed is None and self._broken is None:
            return
        self._enter_send()
        try:
            with _deadline(deadline) as scope:
                await self._flush(deadline)
                await self._done(deadline)
                self._send_closed = True
            if scope is not None and scope.cancelled_caught:
                raise Timeout(f"{self.kind} done() timed out")
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close this stream and every stream below it. Idempotent; never raises a StackError.

        Graceful first: committed bytes are flushed and the layer says goodbye (close_notify,
        GOAWAY) until ``deadline`` (default: :data:`CLOSE_GRACE` seconds from now); what is not
        done by then is abandoned and the resources are released anyway. A task blocked in
        ``recv`` on this stream gets :class:`Closed`. If the caller is cancelled, the stream is
        still closed (forcefully) before ``Cancelled`` propagates, as in trio.
        """
        if self._closed is not None:
            return
        graceful = self._broken is None and not self._sending
        self._closed = "closed"
        if deadline is None:
            deadline = trio.current_time() + CLOSE_GRACE
        try:
            if graceful:
                with trio.move_on_at(deadline):
                    try:
                        await self._flush(deadline)
                        await self._close(deadline)
                    except StackError as exc:
                        log.debug("%s: graceful close failed: %s", self.kind, exc)
        finally:
            self._abort()
            if self._lower is not None:
                await self._lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> Any:
        """Undo this layer and return the stream below it, read-ahead bytes intact.

        Every byte this layer read from below and did not use is pushed back into the lower
        stream (its next ``recv`` returns them). Committed outgoing bytes are flushed first.
        A layer that cannot be undone cleanly raises a :class:`~stack.StackError` saying why and
        stays as it was. After a successful detach this stream raises :class:`Closed`.
        """
        self._check_usable()
        if self._sending or self._receiving:
            raise Busy(f"cannot detach the {self.kind} layer while another task uses it")
        self._sending = self._receiving = True
        try:
            with _deadline(deadline):
                await self._flush(deadline)
                lower = await self._detach(deadline)
                self._closed = "detached"
                self._abort()
                return lower
            raise Timeout(f"detaching the {self.kind} layer timed out")  # only reached on deadline
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = self._receiving = False

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _deadline:
    """``with _deadline(d) as scope``: a trio cancel scope at ``d``, or nothing for FOREVER.

    ``scope`` is ``None`` for FOREVER, else the trio scope; check ``scope.cancelled_caught``
    after the block.
    """

    __slots__ = ("_scope",)

    def __init__(self, deadline: float) -> None:
        self._scope = None if deadline == math.inf else trio.move_on_at(deadline)

    def __enter__(self) -> trio.CancelScope | None:
        if self._scope is not None:
            self._scope.__enter__()
        return self._scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is None:
            return False
        return bool(self._scope.__exit__(exc_type, exc, tb))


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

    # ---- receiving ---------------------------------------------------------------------

    def unread(self, data: bytes | bytearray | memoryview) -> None:
        """Push ``data`` back to the front: the next receive returns it before anything else.

        This is how a layer hands back bytes it read ahead when it detaches.
        """
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
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
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
            view = memoryview(buffer)
            if view.readonly:
                raise TypeError("recv_into needs a writable buffer")
            if not view.c_contiguous:  # a socket or OpenSSL writes one run of bytes
                raise TypeError("recv_into needs a contiguous buffer")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
        size = len(view)
        if size < 1:
            raise ValueError("recv_into needs a buffer of at least 1 byte")
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
        if n < 0:
            raise ValueError("n must be >= 0")
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
        self._receiving = True
        try:
            if len(buf) < n:
                with _deadline(deadline) as scope:
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
        if not delim:
            raise ValueError("delim must not be empty")
        self._enter_recv()
        try:
            buf = self._unread
            searched = 0
            with _deadline(deadline) as scope:
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
        if self._sending or self._send_closed or self._broken is not None or self._closed is not None:
            self._enter_send()  # raises Busy, Broken or Closed
        self._sending = True
        sent = total = 0
        try:
            view = memoryview(data)
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


class MessageStream(Stream):
    """A reliable, ordered stream of messages (bytes objects; an empty message is valid).

    ::

        await m.send(msg, *, deadline)     # the message whole, or not at all
        msg = await m.recv(*, deadline)    # EndOfStream at the end
        async for msg in m: ...
        done / aclose / detach / info      # as for ByteStream

    Primitives a layer writes: ``_send_message(msg, deadline)`` commits the message whole (into
    ``self._outbuf`` and down via ``send_from``) or not at all, and sets
    ``self._message_committed`` once it has; ``_recv_message(deadline)`` returns the next
    message or ``None`` at the end, consuming nothing if it is cancelled or times out.
    """

    kind = "messages"

    def __init__(self, lower: Stream | None = None, info: Mapping[str, Any] | None = None) -> None:
        super().__init__(lower, info)
        self._message_committed = False
        self._ended = False

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        raise NotImplementedError

    async def _recv_message(self, deadline: float) -> bytes | None:
        raise NotImplementedError

    async def send(self, msg: bytes | bytearray | memoryview, *, deadline: float = FOREVER) -> None:
        """Send one message, committed whole or not at all.

        On deadline: :class:`Timeout` with ``committed`` (and ``sent``: ``len(msg)`` or 0).
        A committed message is delivered; its bytes still waiting go first on the next call.
        """
        if self._sending or self._send_closed or self._broken is not None or self._closed is not None:
            self._enter_send()  # raises Busy, Broken or Closed
        self._sending = True
        self._message_committed = False
        try:
            if not isinstance(msg, bytes):  # a bytes subclass (udp.Datagram) passes through as it is
                msg = bytes(msg)
            try:
                if deadline == math.inf:  # no cancel scope for FOREVER (the hot path)
                    if self._outbuf:
                        await self._flush(deadline)
                    await self._send_message(msg, deadline)
                    return
                with trio.move_on_at(deadline):
                    if self._outbuf:
                        await self._flush(deadline)
                    await self._send_message(msg, deadline)
                    return
            except Timeout:
                pass
            c = self._message_committed
            how = "committed, the rest of its bytes go out first on the next call" if c else "not sent"
            raise Timeout(f"{self.kind} send timed out: message {how}", sent=len(msg) if c else 0, committed=c)
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def recv(self, *, deadline: float = FOREVER) -> bytes:
        """Receive the next message; :class:`EndOfStream` once the peer has finished.

        On deadline: :class:`Timeout`, nothing consumed; on cancellation, nothing consumed.
        """
        if self._receiving or self._broken is not None or self._closed is not None:
            self._enter_recv()  # raises Busy, Broken or Closed
        if self._ended:
            raise EndOfStream(f"{self.kind} stream: the peer finished sending")
        self._receiving = True
        try:
            if deadline == math.inf:  # no cancel scope for FOREVER (the hot path)
                msg = await self._recv_message(deadline)
            else:
                msg = None
                with trio.move_on_at(deadline) as scope:
                    msg = await self._recv_message(deadline)
                if scope.cancelled_caught:
                    raise Timeout(f"{self.kind} recv timed out")
            if msg is None:
                self._ended = True
                raise EndOfStream(f"{self.kind} stream: the peer finished sending")
            return msg
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                msg = await self.recv()
            except EndOfStream:
                return
            yield msg


class Listener:
    """A source of accepted bottom streams (what ``tcp.listen`` and ``unix.listen`` open).

    ``await accept(deadline=)`` returns the next connection; ``address`` is where it listens;
    ``aclose()`` stops listening (a task blocked in ``accept`` gets :class:`Closed`).
    """

    address: Any = None

    async def accept(self, *, deadline: float = FOREVER) -> ByteStream:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
