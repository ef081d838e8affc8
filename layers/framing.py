"""Message framing over any ByteStream: a length prefix, or a delimiter.

::

    messages = await framing.prefix(4).attach(stream)      # 4-byte big-endian length, then the body
    lines = await framing.delimiter(b"\\r\\n").attach(stream)
    await messages.send(b"hello")
    msg = await messages.recv()                            # EndOfStream at the end
    stream = await messages.detach()                       # read-ahead bytes go back to `stream`

Both layers keep no buffer of their own: they parse from the lower stream's buffer and consume
a message only once it is whole, so a receive that times out or is cancelled consumes nothing,
and ``detach()`` is always clean and instant. A message is committed whole or not at all.

Limits: a message over ``max_message`` raises :class:`~stack.MessageTooLarge` before anything is
allocated for it (the length header is checked first; a delimiter search stops at the limit).
That is not recoverable (the rest of the stream cannot be parsed): the stream is broken
afterwards. Sending a message over the limit raises ``MessageTooLarge`` and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stack.deadlines import FOREVER, check_deadline
from stack.errors import EndOfStream, MessageTooLarge, ProtocolError
from stack.streams import ByteStream, MessageStream, require

__all__ = ["DelimitedStream", "PrefixStream", "delimiter", "prefix"]

MAX_MESSAGE = 16 * 1024 * 1024
"""Default ``max_message``: 16 MiB."""


class _Framed(MessageStream):
    """What both framings share: sending a frame whole-or-nothing, done and detach."""

    _lower: ByteStream

    async def _send_frame(self, *parts: bytes, deadline: float) -> None:
        out = self._outbuf  # empty here: the base flushed it before calling us
        for part in parts:
            out += part
        total = len(out)
        try:
            await self._lower.send_from(out, deadline=deadline)
        finally:
            if len(out) < total:
                self._message_committed = True
            else:
                out.clear()  # nothing went down: not committed, forget it

    async def _detach(self, deadline: float) -> ByteStream:
        return self._lower  # no read-ahead of our own: the lower buffer holds it already


class PrefixStream(_Framed):
    """Messages each preceded by their length as a ``size``-byte unsigned integer."""

    kind = "prefix"

    def __init__(self, lower: ByteStream, size: int, byteorder: Literal["big", "little"], max_message: int) -> None:
        super().__init__(lower, {"framing": f"prefix{size}"})
        self._size = size
        self._order: Literal["big", "little"] = byteorder
        self._max = max_message

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        n = len(msg)
        if n > self._max:
            raise MessageTooLarge(f"message of {n} bytes is over max_message={self._max}", limit=self._max, size=n)
        out = self._outbuf  # empty here: the base flushed it before calling us (as _send_frame)
        out += n.to_bytes(self._size, self._order)
        out += msg
        try:
            await self._lower.send_from(out, deadline=deadline)
        finally:
            if len(out) < n + self._size:
                self._message_committed = True
            else:
                out.clear()  # nothing went down: not committed, forget it

    async def recv(self, *, deadline: float = FOREVER) -> bytes:
        """Receive the next message; see :meth:`stack.MessageStream.recv`.

        A message already whole in the lower stream's buffer is taken from it directly, with no
        checkpoint (as :meth:`stack.ByteStream.recv_exactly` on buffered bytes): no await per
        message while a burst of small messages is buffered.
        """
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if not (self._receiving or self._ended or self._broken is not None or self._closed is not None):
            # The lower stream lends its read-ahead buffer while we may take from it (else it is
            # empty and super().recv raises what it should): take a whole message, no await.
            buf = self._lower.readahead()
            size = self._size
            if len(buf) >= size:
                end = size + int.from_bytes(buf[:size], self._order)
                if end - size <= self._max and len(buf) >= end:
                    msg = bytes(buf[size:end])
                    del buf[:end]
                    return msg
        return await super().recv(deadline=deadline)

    async def _recv_message(self, deadline: float) -> bytes | None:
        # recv() above already took any message whole in the lower buffer: this one waits.
        lower = self._lower
        try:
            header = await lower.recv_exactly(self._size, deadline=deadline)
        except EndOfStream as exc:
            if not exc.partial:
                return None
            raise ProtocolError(
                f"stream ended inside a length header ({len(exc.partial)} of {self._size} bytes)"
            ) from None
        n = int.from_bytes(header, self._order)
        if n > self._max:
            exc2 = MessageTooLarge(
                f"peer announced a message of {n} bytes, over max_message={self._max}", limit=self._max, size=n
            )
            self._fail(exc2)
            raise exc2
        try:
            return await lower.recv_exactly(n, deadline=deadline)
        except EndOfStream as exc:
            raise ProtocolError(f"stream ended inside a message ({len(exc.partial)} of {n} bytes)") from None
        except BaseException:
            lower.unread(header)  # timed out or cancelled: the whole message stays for next time
            raise


class DelimitedStream(_Framed):
    """Messages each followed by ``delim`` (which a message may therefore not contain)."""

    kind = "delimiter"

    def __init__(self, lower: ByteStream, delim: bytes, max_message: int) -> None:
        super().__init__(lower, {"framing": "delimiter"})
        self._delim = delim
        self._max = max_message

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        if len(msg) > self._max:
            raise MessageTooLarge(
                f"message of {len(msg)} bytes is over max_message={self._max}", limit=self._max, size=len(msg)
            )
        if self._delim in msg:
            raise ValueError(f"message contains the delimiter {self._delim!r}; it cannot be framed")
        await self._send_frame(msg, self._delim, deadline=deadline)

    async def _recv_message(self, deadline: float) -> bytes | None:
        d = self._delim
        try:
            line = await self._lower.recv_until(d, max_bytes=self._max + len(d), deadline=deadline)
        except EndOfStream as exc:
            if not exc.partial:
                return None
            raise ProtocolError(
                f"stream ended inside a message ({len(exc.partial)} bytes with no delimiter {d!r})"
            ) from None
        except MessageTooLarge as exc:
            self._fail(exc)
            raise MessageTooLarge(f"no delimiter {d!r} within max_message={self._max} bytes", limit=self._max) from None
        return line[: -len(d)]


@dataclass(frozen=True)
class prefix:
    """Spec: length-prefixed messages. ``size`` bytes of unsigned length in ``byteorder``.

    ``max_message`` defaults to 16 MiB (or the largest length a 1- or 2-byte prefix can hold).
    """

    size: int = 4
    byteorder: Literal["big", "little"] = "big"
    max_message: int | None = None

    def __post_init__(self) -> None:
        if type(self.size) is not int or self.size not in (1, 2, 4, 8):
            raise ValueError("prefix size must be 1, 2, 4 or 8 bytes")
        if self.byteorder not in ("big", "little"):
            raise ValueError("byteorder must be 'big' or 'little'")
        if self.max_message is not None and (
            type(self.max_message) is not int or not 0 <= self.max_message < 256**self.size
        ):
            raise ValueError(f"max_message must fit in a {self.size}-byte length")

    @property
    def limit(self) -> int:
        """The effective ``max_message``: as given, else 16 MiB or what the prefix can express."""
        if self.max_message is not None:
            return self.max_message
        return min(MAX_MESSAGE, int(256**self.size) - 1)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> PrefixStream:
        """Wrap ``lower``. No handshake: returns at once."""
        check_deadline(deadline)
        return PrefixStream(require(lower, ByteStream, "framing.prefix"), self.size, self.byteorder, self.limit)


@dataclass(frozen=True)
class delimiter:
    """Spec: messages separated by ``delim`` (default CRLF)."""

    delim: bytes = b"\r\n"
    max_message: int = 65536

    def __post_init__(self) -> None:
        if not isinstance(self.delim, bytes):
            raise TypeError(f"delimiter delim must be bytes, not {type(self.delim).__name__}")
        if not self.delim:
            raise ValueError("delimiter must not be empty")
        if type(self.max_message) is not int or self.max_message < 0:
            raise ValueError(f"delimiter max_message must be an int >= 0, not {self.max_message!r:.40}")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> DelimitedStream:
        """Wrap ``lower``. No handshake: returns at once."""
        check_deadline(deadline)
        return DelimitedStream(require(lower, ByteStream, "framing.delimiter"), self.delim, self.max_message)
