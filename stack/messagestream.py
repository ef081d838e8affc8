"""The message stream: :class:`MessageStream`, a reliable, ordered stream of whole messages.

A layer subclasses it and writes two primitives; the base class does deadlines, one task per
direction, the states and flushing committed bytes first, as for a ByteStream:

``_send_message(msg, deadline)``
    Commit ``msg`` whole or not at all: append its frame to ``self._outbuf``, hand that to
    ``self._lower.send_from``, and set ``self._message_committed = True`` as soon as any byte
    went down (then the message will be delivered: the rest goes first on the next call). If
    nothing went down when it raises, clear ``self._outbuf``: the message was not sent.
``_recv_message(deadline) -> bytes | None``
    The next message, or ``None`` at the end; consumes nothing if it is cancelled or times out.

A layer over another MessageStream reads :attr:`MessageStream.committed` of the stream below
when that stream's ``send`` was interrupted (trace and throttle do).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio

from .deadlines import FOREVER, check_deadline
from .errors import Broken, EndOfStream, Timeout
from .stream import Stream

__all__ = ["MessageStream"]


def _message_bytes(msg: object) -> bytes:
    """A message given as a bytearray or a memoryview, as bytes; :class:`TypeError` for anything
    without the buffer protocol (``bytes(5)`` would be five zero bytes, ``bytes("x")`` an error
    that does not say which argument)."""
    try:
        view = memoryview(msg)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"a message must be bytes, a bytearray or a memoryview, not {type(msg).__name__} {msg!r:.40}"
        ) from None
    with view:
        return view.tobytes()


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

    @property
    def committed(self) -> bool:
        """Whether the last ``send`` committed its message (it will be delivered whole).

        Set while the send runs, so it also answers for a send that was cancelled or timed out:
        a layer above whose own scope caught the cancellation reads it in its ``except`` to
        know whether the lower stream's send committed the message.
        """
        return self._message_committed

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        raise NotImplementedError

    async def _recv_message(self, deadline: float) -> bytes | None:
        raise NotImplementedError

    async def send(self, msg: bytes | bytearray | memoryview, *, deadline: float = FOREVER) -> None:
        """Send one message, committed whole or not at all.

        On deadline: :class:`Timeout` with ``committed`` (and ``sent``: ``len(msg)`` or 0).
        A committed message is delivered; its bytes still waiting go first on the next call.
        ``msg``: bytes, a bytearray or a memoryview (an ``int`` or a ``str`` is a ``TypeError``).
        """
        if not isinstance(msg, bytes):  # a bytes subclass (udp.Datagram) passes through as it is
            msg = _message_bytes(msg)
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._sending or self._send_closed or self._broken is not None or self._closed is not None:
            self._enter_send()  # raises Busy, Broken or Closed
        self._sending = True
        self._message_committed = False
        try:
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
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
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
