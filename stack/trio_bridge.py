"""Bridges to trio's stream interfaces, both ways: :func:`to_trio` and :func:`from_trio`.

Theory of operation
-------------------

trio's ``trio.abc.Stream`` family and our :class:`~stack.ByteStream` describe the same thing (an
ordered byte stream both ways, half-closeable) with different contracts, so each direction of
the bridge is a thin adapter that translates the calls and the errors, never the bytes:

``to_trio(stream) -> TrioStreamAdapter``
    A ``trio.abc.HalfCloseableStream`` over any of our ByteStreams (TCP, TLS, an HTTP/2 or QUIC
    stream, framing's lower stream ...), for code written against trio: ``send_all`` is
    ``send``, ``receive_some`` is ``recv``, ``send_eof`` is ``done``. It keeps trio's contract
    exactly: every method is a checkpoint (``checkpoint_if_cancelled`` before, a
    ``cancel_shielded_checkpoint`` after a call that did not block, as trio's own sockets do);
    ``receive_some`` checks its argument like trio (``TypeError`` / ``ValueError``); our errors
    become trio's (``Closed`` -> ``ClosedResourceError``, ``Busy`` -> ``BusyResourceError``, every
    other :class:`~stack.StackError` -> ``BrokenResourceError``, chained); and after a local
    ``aclose`` every call raises ``ClosedResourceError``, even on a stream that had broken
    first. trio's ``aclose`` is a graceful close whose peer reads the end of the stream, so the
    adapter calls ``done()`` before ``aclose()`` (within :data:`~stack.stream.CLOSE_GRACE`):
    on an HTTP/2 stream that is END_STREAM rather than RST_STREAM. Our own API is untouched:
    the adapter only adds work to its own calls.

    Where the contracts differ: a ``send_all`` cancelled part-way leaves trio's stream in an
    unknown state, ours in a known one (the committed bytes are delivered), so the adapter is
    stricter than trio asks. ``wait_send_all_might_not_block`` waits for the bytes already
    committed to go below (our streams have no "writable" wait): allowed by trio, which calls it
    a hint.

``from_trio(trio_stream) -> TrioBottom``
    A bottom ByteStream over any ``trio.abc.Stream`` (trio's SocketStream or SSLStream, a
    subprocess pipe pair, another library's stream), so our layers stack on it. It keeps our
    contract as far as the stream below allows:

    * a receive that times out or is cancelled loses nothing, provided the trio stream's
      ``receive_some`` keeps trio's rule that a cancelled low-level call had no effect (trio's
      SocketStream does; SSLStream does once its handshake is done; trio's docs say so);
    * a send cut by its deadline cannot know what trio's ``send_all`` wrote (trio does not say),
      so it raises :class:`~stack.Timeout` with ``sent=None`` and the stream becomes broken:
      every later call raises :class:`~stack.Broken`. A send that finishes commits everything.
      Where a lossless send deadline matters, use our own bottom (``layers.tcp``) instead;
    * ``done()`` is ``send_eof()`` (a ``trio.abc.Stream`` that is not half-closeable raises
      :class:`~stack.StackError` and stays usable); ``aclose()`` closes the trio stream, gracefully
      within the deadline, forcefully after it or on cancel; a task blocked in a receive gets
      :class:`~stack.Closed`;
    * ``detach()`` is refused: this is a bottom, there is nothing of ours below it. The wrapped
      stream is :attr:`TrioBottom.trio_stream` (receive the buffered bytes first).

    ``info``: ``transport="trio"``, ``trio_type`` (the wrapped class's name), and ``peer`` /
    ``local`` when the trio stream has a ``socket`` (SocketStream).
"""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Any

import trio

from .bytestream import DEFAULT_RECV, ByteStream
from .errors import Broken, Busy, Closed, StackError, Timeout
from .stream import CLOSE_GRACE

__all__ = ["TrioBottom", "TrioStreamAdapter", "from_trio", "to_trio"]


# =============================================================================================
# ours, seen as trio's


def _to_trio_error(exc: StackError) -> Exception:
    """The trio exception class that means what ``exc`` means (the caller chains ``exc``)."""
    if isinstance(exc, Closed):
        return trio.ClosedResourceError(str(exc))
    if isinstance(exc, Busy):
        return trio.BusyResourceError(str(exc))
    return trio.BrokenResourceError(str(exc))


class TrioStreamAdapter(trio.abc.HalfCloseableStream):
    """One of our ByteStreams as a ``trio.abc.HalfCloseableStream`` (see the module docstring)."""

    def __init__(self, stream: ByteStream) -> None:
        if not isinstance(stream, ByteStream):
            raise TypeError(f"to_trio needs a stack ByteStream, not {type(stream).__name__}")
        self._stream = stream
        self._closed = False

    @property
    def stack_stream(self) -> ByteStream:
        """The ByteStream this adapter speaks for."""
        return self._stream

    def _raise(self, exc: StackError) -> None:
        if self._closed:  # trio: after a local close, "closed" wins over any earlier failure
            raise trio.ClosedResourceError("this stream was closed on this side") from exc
        raise _to_trio_error(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed on this side")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """``send``: every byte or an exception; a checkpoint even when nothing waited."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            await self._stream.send(data)  # b"" too: it reports "closed", "busy" or "broken"
        except StackError as exc:
            self._raise(exc)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Waits until the bytes already committed have gone below (an empty ``send``), which is
        our nearest thing to "writable"; trio calls this method a hint, so that is allowed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            await self._stream.send(b"")
        except StackError as exc:
            self._raise(exc)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        """``done()``: the peer reads the end of the stream; calling it again does nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            await self._stream.done()
        except StackError as exc:
            self._raise(exc)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """``recv``: 1..max_bytes bytes, ``b""`` at the end; trio's argument checks."""
        if max_bytes is None:
            max_bytes = DEFAULT_RECV
        else:
            max_bytes = operator.index(max_bytes)  # TypeError for 1.5, as trio
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            data = await self._stream.recv(max_bytes)
        except StackError as exc:
            self._raise(exc)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        """Graceful: ``done()`` then ``aclose()`` within CLOSE_GRACE; forceful on cancel."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        stream = self._stream
        deadline = trio.current_time() + CLOSE_GRACE
        try:
            if stream.broken is None:
                # closed, busy, the peer went away, cannot half-close: close anyway
                with trio.move_on_at(deadline), contextlib.suppress(StackError):
                    await stream.done(deadline=deadline)
        finally:
            await stream.aclose(deadline=deadline)
        await trio.lowlevel.checkpoint()


def to_trio(stream: ByteStream) -> TrioStreamAdapter:
    """``stream`` as a ``trio.abc.HalfCloseableStream`` (see the module docstring)."""
    return TrioStreamAdapter(stream)


# =============================================================================================
# trio's, seen as ours


class TrioBottom(ByteStream):
    """A ``trio.abc.Stream`` as a bottom ByteStream (see the module docstring)."""

    kind = "trio"
    _primitives_take_deadline = True  # sends need their own handling of a cut deadline

    def __init__(self, stream: trio.abc.Stream) -> None:
        if not isinstance(stream, trio.abc.Stream):
            raise TypeError(f"from_trio needs a trio.abc.Stream, not {type(stream).__name__}")
        info: dict[str, Any] = {"transport": "trio", "trio_type": type(stream).__name__}
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                info["peer"] = tuple(sock.getpeername()[:2])
                info["local"] = tuple(sock.getsockname()[:2])
            except (OSError, TypeError):  # not connected, or an AF_UNIX path
                pass
        super().__init__(None, info)
        self._trio = stream
        self._trio_closed = False

    @property
    def trio_stream(self) -> trio.abc.Stream:
        """The wrapped trio stream."""
        return self._trio

    def _from_trio_error(self, exc: BaseException) -> StackError:
        if isinstance(exc, trio.ClosedResourceError) and self._closed is not None:
            return Closed(f"trio stream was {self._closed} on this side")
        return Broken(f"trio stream failed: {exc!r}")

    async def _receive(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._trio.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._from_trio_error(exc) from exc

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        if deadline == math.inf:
            return await self._receive(max_bytes)
        data = b""
        with trio.move_on_at(deadline) as scope:
            data = await self._receive(max_bytes)
        if scope.cancelled_caught:
            raise Timeout(f"{self.kind} recv timed out")
        return data

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        if deadline != math.inf and trio.current_time() >= deadline:
            raise Timeout(f"{self.kind} send timed out before it started", sent=0)
        done = False
        try:
            with trio.move_on_at(deadline):
                await self._trio.send_all(data)
                done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._from_trio_error(exc) from exc
        finally:
            if not done:  # cut by the deadline, a cancel or an error: what went is unknown
                self._fail(Broken("a send to the trio stream was interrupted; trio cannot say what it wrote"))
        if not done:
            raise Timeout(f"{self.kind} send timed out; what trio's send_all wrote is unknown: now broken")
        return len(data)

    async def send(self, data: bytes | bytearray | memoryview, *, deadline: float = math.inf) -> None:
        """:meth:`ByteStream.send`; a deadline that cut trio's ``send_all`` part-way gives
        ``Timeout.sent = None`` (unknown) and leaves the stream broken."""
        try:
            await super().send(data, deadline=deadline)
        except Timeout as exc:
            if self._broken is not None:
                exc.sent = None
            raise

    async def _done(self, deadline: float) -> None:
        if not isinstance(self._trio, trio.abc.HalfCloseableStream):
            raise StackError(f"{type(self._trio).__name__} cannot half-close (it has no send_eof)")
        try:
            await self._trio.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._from_trio_error(exc) from exc

    async def _close(self, deadline: float) -> None:
        self._trio_closed = True
        await self._trio.aclose()

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close the trio stream: gracefully until ``deadline``, forcefully after it or on cancel."""
        if self._closed is not None:
            return
        try:
            await super().aclose(deadline=deadline)
        finally:
            if not self._trio_closed:
                self._trio_closed = True
                await trio.aclose_forcefully(self._trio)

    async def _detach(self, deadline: float) -> ByteStream:
        raise StackError(
            "a trio stream is the bottom of this stack: there is nothing of ours below it to detach to "
            "(use .trio_stream after receiving what is buffered)"
        )


def from_trio(stream: trio.abc.Stream) -> TrioBottom:
    """``stream`` as a bottom :class:`~stack.ByteStream` (see the module docstring)."""
    return TrioBottom(stream)
