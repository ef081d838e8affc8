"""WebSocket (RFC 6455) on wsproto: a :class:`~stack.MessageStream` of text and binary messages.

Three ways to get one::

    # (a) from HTTP: the app accepts the upgrade (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT, RFC 8441)
    async def app(request: http.Request) -> None:
        if websocket.is_websocket(request):
            async with await websocket.accept(request, deadline=after(10)) as ws:
                async for msg in ws:
                    await ws.send(msg)

    async with await Stack(tcp.connect(host, port), http.client()).connect() as conn:   # h1 or h2
        ws = await websocket.connect(conn, "/chat", deadline=after(10))

    # (b) straight over any ByteStream: the spec does the HTTP/1.1 opening handshake itself
    server = Stack(tcp.listen("127.0.0.1", 0), websocket.server())
    client = Stack(tcp.connect(host, port), websocket.client(f"{host}:{port}", "/chat"))

    # (c) already negotiated elsewhere: no handshake, just the frames
    ws = await websocket.raw("client").attach(tunnel)

**Messages.** ``send(str)`` sends a text message (UTF-8), ``send(bytes)`` (or ``bytearray``,
``memoryview``) a binary one; ``recv()`` returns ``str`` for a text message and ``bytes`` for a
binary one, so an echo (``await ws.send(await ws.recv())``) keeps the kind. Code written for byte
MessageStreams works unchanged with a peer that sends binary messages. Fragmented messages are
reassembled; a message over ``max_message`` bytes (default 16 MiB; UTF-8 bytes for text, the
inflated size with permessage-deflate) raises :class:`~stack.MessageTooLarge` before it is
buffered, sends Close 1009 and leaves the WebSocket broken (the rest cannot be parsed).
Invalid frames and invalid UTF-8 raise :class:`~stack.ProtocolError` and send Close 1002 / 1007.

**Deadlines lose nothing.** A ``recv`` that times out or is cancelled consumes nothing: the bytes
of a message that arrived in part stay in this layer for the next call. A ``send`` commits a
message whole or not at all: on deadline :class:`~stack.Timeout` says which (``committed``;
``sent`` is 0 or the message's size in bytes) and a committed message is delivered, its
remaining bytes going first on the next call. With permessage-deflate a message is committed as
soon as it is compressed (the compressor's state already holds it), so a send that times out
after that point reports ``committed=True``.

**Closing** is a half-close, like TCP's FIN. ``done(code=1000, reason="")`` sends a Close frame:
this side sends no more messages, receiving goes on. When the peer's Close arrives, ``recv``
raises :class:`CloseReceived` (an :class:`~stack.EndOfStream`) with the peer's ``code`` and
``reason`` (``1005`` and ``""`` for a Close without a code), and again on every later call;
``ws.close_code`` / ``ws.close_reason`` keep them. We do not answer a Close on our own, so the
application can finish what it sends: ``done()`` or ``aclose()`` sends our Close (``aclose``
echoes the peer's code). ``aclose()`` sends Close if it was not sent, then the end of the stream
below (``done()`` on it: TCP FIN, HTTP/2 END_STREAM) and closes it; it does not wait for the
peer's Close (for a complete closing handshake: ``done()``, then ``recv()`` until
:class:`CloseReceived`, then ``aclose()``). A connection that ends without a Close frame is
:class:`~stack.Broken` (code 1006: the messages may be truncated).

**Ping.** Pings from the peer are answered with a Pong automatically: by the receiving task while
it waits for more data (never blocking its reading on the write: two peers that both stopped
reading to write could deadlock), or by the next send, done or aclose; when several Pings are
pending only the last is answered (RFC 6455 5.5.3). ``await ws.ping()`` sends a Ping and returns
the round-trip time in seconds once its Pong was read, which :meth:`WebSocket.recv` does: call it
while another task receives (or give it a deadline). A Ping still waiting when the peer's Close
arrives raises :class:`~stack.Closed`. A message longer than :data:`FRAGMENT` bytes goes out as
several frames, and the Pongs and Pings owed go out between them, so a large message delays a
Pong by one fragment at most; our Close waits for the end of the message being sent.

**Detach** is the closing handshake: ``detach()`` sends Close (1000, unless ``done()`` sent one),
reads until the peer's Close and returns the stream below with every byte the peer sent after its
Close pushed back into it. A message that arrives first is kept for ``recv`` and detach raises
:class:`~stack.StackError` (receive it, then detach again). The stream below is the one the
``server``/``client``/``raw`` spec was attached to; after :func:`accept` or :func:`connect` it is
the HTTP/1.1 tunnel (its own ``detach()`` gives the raw connection) or the HTTP/2 stream.

**permessage-deflate** (RFC 7692) is off unless ``deflate=True``; then it is offered (client) or
accepted when offered (server), with the size limit applied to the inflated bytes as they are
inflated, so a small compressed frame cannot inflate past ``max_message`` in memory.

``info`` adds ``websocket_subprotocol`` (or ``None``) and ``websocket_deflate``; after an HTTP
handshake also ``websocket_path`` and ``http_version`` (``"1.1"`` or ``"2"``).

Over an HTTP/1.1 Upgrade the WebSocket takes the whole connection (closing the HTTP connection
closes it; the HTTP/1.1 client takes no more requests); over HTTP/2 it is one stream and the
connection goes on carrying requests and other WebSockets.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Frame, FrameDecoder, FrameProtocol, Opcode, ParseFailed, RsvBits
from wsproto.handshake import client_extensions_handshake, server_extensions_handshake
from wsproto.utilities import RemoteProtocolError, generate_accept_token

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.streams import ByteStream, MessageStream

from . import http, http1

__all__ = [
    "MAX_MESSAGE",
    "CloseReceived",
    "UpgradeRefused",
    "WebSocket",
    "accept",
    "client",
    "connect",
    "is_websocket",
    "raw",
    "server",
]

log = logging.getLogger("stack.websocket")

MAX_MESSAGE = 16 * 1024 * 1024
"""Default ``max_message``: 16 MiB."""

RECV = 65536
"""Bytes asked of the stream below per receive."""

FRAGMENT = 65536
"""Payload bytes per frame of an outgoing message: a longer message is sent as several frames
(RFC 6455 5.4), with the control frames owed sent between them."""

ERROR_CLOSE_TIME = 1.0
"""Seconds spent at most sending the Close frame that reports a protocol error."""

Message = bytes | str

_GUID_KEY_BYTES = 16
_MAX_REASON = 123  # a Close frame's payload is at most 125 bytes, 2 of them the code


class CloseReceived(EndOfStream):
    """The peer sent its Close frame: it sends no more messages.

    ``code`` is the peer's close code (``1005`` when its Close had none), ``reason`` its reason
    (``""`` if none). Raised by ``recv`` once the messages sent before the Close were received,
    and by every later ``recv``.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the WebSocket peer closed with code {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class UpgradeRefused(StackError):
    """The server answered the opening handshake with something other than a WebSocket.

    ``status`` is its HTTP status, ``body`` the start of its answer (at most 1 KiB).
    """

    def __init__(self, message: str, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _check_close(code: int, reason: str) -> None:
    """Raise ValueError unless ``code`` may be sent in a Close frame and ``reason`` fits."""
    if not (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent (1000-1003, 1007-1014 or 3000-4999)")
    if len(reason.encode("utf-8")) > _MAX_REASON:
        raise ValueError(f"close reason is over {_MAX_REASON} bytes in UTF-8")


def _frame_header(buf: bytearray, pos: int) -> tuple[int, int, bool, int, bool] | None:
    """``(header length, payload length, rsv1, opcode, fin)`` of the frame at ``buf[pos:]``, or
    None while its header is incomplete. Only the lengths matter here: wsproto checks the rest."""
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    n = b1 & 0x7F
    hlen = 6 if b1 & 0x80 else 2
    if n == 126:
        hlen += 2
        if avail < hlen:
            return None
        n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
    elif n == 127:
        hlen += 8
        if avail < hlen:
            return None
        n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
    elif avail < hlen:
        return None
    return hlen, n, bool(b0 & 0x40), b0 & 0x0F, bool(b0 & 0x80)


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflating stops at ``max_message`` bytes per message.

    wsproto inflates each frame's payload whole; a few KiB of compressed zeros would inflate to
    gigabytes before any limit could be checked. Here each step inflates at most one byte past
    what the message may still grow by, and a message over the limit fails with 1009.
    """

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self.max_message = max_message
        self._inflated = 0

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        d = self._decompressor
        assert d is not None
        try:
            out = d.decompress(data, self.max_message - self._inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if d.unconsumed_tail or self._inflated > self.max_message:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        # A control frame (a Ping between two messages, or inside a fragmented one) must not touch
        # the state of the message being received: wsproto's version records its RSV1 as the next
        # message's "compressed" bit (or forgets it mid-message), which delivers that message
        # still compressed.
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        if not fin:
            return None
        if not self._inbound_is_compressible:
            return None  # a control frame: the message state is not ours to reset
        if not self._inbound_compressed:
            self._inbound_compressed = None
            self._inflated = 0
            return None
        out = self._inflate(b"\x00\x00\xff\xff")
        if isinstance(out, CloseReason):
            return out
        takeover_off = self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        if takeover_off:
            self._decompressor = None
        self._inbound_compressed = None
        self._inflated = 0
        return out


class WebSocket(MessageStream):
    """One WebSocket connection over a ByteStream (see the module docstring for the semantics).

    ``send(msg)``: ``str`` is a text message, bytes-like a binary one. ``recv()``: ``str`` or
    ``bytes``; :class:`CloseReceived` after the peer's Close. ``done(code, reason)``: send Close.
    ``ping()``: round-trip time. ``close_code`` / ``close_reason``: the peer's, once received.
    ``subprotocol``: the one agreed in the handshake, or None.
    """

    kind = "websocket"

    def __init__(
        self,
        lower: ByteStream,
        *,
        client: bool,
        max_message: int = MAX_MESSAGE,
        extensions: Sequence[Extension] = (),
        info: dict[str, Any] | None = None,
    ) -> None:
        deflate = any(isinstance(e, PerMessageDeflate) and e.enabled() for e in extensions)
        base_info: dict[str, Any] = {"websocket_deflate": deflate, "websocket_subprotocol": None}
        base_info.update(info or {})
        super().__init__(lower, base_info)
        self._lower: ByteStream = lower
        self.client = client
        self.subprotocol: str | None = base_info["websocket_subprotocol"]
        self._proto = FrameProtocol(client, list(extensions))
        self._deflate = deflate
        self._max = max_message
        # receiving: raw bytes from below, fed to wsproto one frame at a time (so the bytes
        # after the peer's Close are never fed, and detach can hand them back)
        self._inbuf = bytearray()
        self._pos = 0
        self._frame_left = 0  # bytes of the current frame not fed to wsproto yet
        self._msg_wire = 0  # payload bytes on the wire of the message being received
        self._msg_compressed = False
        self._parts: list[Any] = []  # pieces of the message being received (all str or all bytes)
        self._ready: Message | None = None  # one whole message, waiting for recv
        self._peer_close: tuple[int, str] | None = None
        # sending: every write goes through _write, under this lock, frames whole and in order
        self._wlock = trio.Lock()
        self._frames: deque[bytearray] = deque()  # the committed message's frames not sent yet
        self._pong: bytes | None = None  # the Pong we owe (the last Ping's payload)
        self._pings_out: list[bytes] = []  # Pings to send
        self._pings: dict[bytes, tuple[trio.Event, list[float]]] = {}  # waiting for their Pong
        self._close_pending: tuple[int | None, str] | None = None  # our Close, not taken yet
        self._close_sent = False  # our Close frame is committed
        self._close_requested: tuple[int, str] | None = None

    # ---- what it knows ---------------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The peer's close code once its Close arrived (1005: it gave none), else None."""
        return self._peer_close[0] if self._peer_close is not None else None

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason once its Close arrived, else None."""
        return self._peer_close[1] if self._peer_close is not None else None

    def __repr__(self) -> str:
        role = "client" if self.client else "server"
        state = self._closed or ("broken" if self._broken else "open")
        return f"<WebSocket {role} {state}>"

    # ---- sending -----------------------------------------------------------------------------

    async def send(self, msg: bytes | bytearray | memoryview | str, *, deadline: float = FOREVER) -> None:
        """Send one message: ``str`` as text, bytes-like as binary; committed whole or not at all.

        On deadline: :class:`~stack.Timeout` with ``committed`` and ``sent`` (0, or the
        message's size in bytes). After ``done()``: :class:`~stack.Closed`.
        """
        self._enter_send()
        try:
            payload: bytes | str
            if isinstance(msg, (str, bytes)):
                payload = msg
            elif isinstance(msg, (bytearray, memoryview)):
                payload = bytes(msg)
            else:
                raise TypeError(f"a WebSocket message is str or bytes, not {type(msg).__name__}")
            if self._close_sent or self._close_pending is not None:
                raise Closed("websocket: a Close frame was sent, no more messages")
            self._message_committed = False
            if deadline == math.inf:
                await self._write(deadline, payload)
                return
            with trio.move_on_at(deadline):
                try:
                    await self._write(deadline, payload)
                    return
                except Timeout:  # a lower layer's scope for the same deadline fired first
                    pass
            c = self._message_committed
            size = (len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)) if c else 0
            how = "committed, the rest of its bytes go out first on the next call" if c else "not sent"
            raise Timeout(f"websocket send timed out: message {how}", sent=size, committed=c)
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def _write(self, deadline: float, payload: bytes | str | None = None) -> None:
        """The one way bytes go down: what is buffered, control frames owed and the rest of a
        committed message, then ``payload`` as a message (if any), then what came meanwhile.
        Frames never interleave; control frames go between the fragments of a message."""
        lock = self._wlock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._drain(deadline)
            if payload is None:
                return
            out = self._outbuf
            frames = self._fragments(payload)
            out += frames[0]
            n = len(out)
            if self._deflate:
                self._message_committed = True  # the compressor's context already holds it
            self._frames.extend(frames[1:])
            try:
                await self._lower.send_from(out, deadline=deadline)
            finally:
                if len(out) < n:
                    self._message_committed = True
                elif not self._message_committed:
                    out.clear()  # nothing went down: not sent, forget it
                    self._frames.clear()
            await self._drain(deadline)
        finally:
            lock.release()

    def _fragments(self, payload: bytes | str) -> list[bytearray]:
        """``payload`` as the frames of one message, at most :data:`FRAGMENT` payload bytes each
        (a text message is cut between characters: each piece is valid UTF-8 on its own)."""
        proto = self._proto
        if len(payload) <= FRAGMENT:  # a str counts characters (each piece: FRAGMENT at most)
            return [proto.send_data(payload, True)]
        pieces = [payload[i : i + FRAGMENT] for i in range(0, len(payload), FRAGMENT)]
        last = len(pieces) - 1
        return [proto.send_data(piece, i == last) for i, piece in enumerate(pieces)]

    async def _drain(self, deadline: float) -> None:
        """Send what is buffered, then, frame by frame, the control frames owed and the rest of
        the committed message (control frames first: they may go between its fragments)."""
        out = self._outbuf
        frames = self._frames
        while True:
            if not out:
                frame = self._take_control()
                if frame is None:
                    if not frames:
                        return
                    frame = frames.popleft()
                out += frame
            await self._lower.send_from(out, deadline=deadline)

    def _take_control(self) -> bytearray | None:
        """The next control frame owed to the peer (Pings, the Pong, then our Close once no
        fragment of a message is left to send), or None."""
        if self._close_sent:
            return None
        if self._pings_out:
            payload = self._pings_out.pop(0)
            entry = self._pings.get(payload)
            if entry is not None:
                entry[1].append(trio.current_time())
            return self._proto.ping(payload)
        if self._pong is not None:
            payload, self._pong = self._pong, None
            return self._proto.pong(payload)
        if self._close_pending is not None and not self._frames:
            code, reason = self._close_pending
            self._close_pending = None
            self._close_sent = True
            return self._proto.close(code, reason if code is not None else None)
        return None

    async def _flush(self, deadline: float) -> None:
        await self._write(deadline)

    async def done(self, code: int = 1000, reason: str = "", *, deadline: float = FOREVER) -> None:
        """Send a Close frame with ``code`` and ``reason``: no more messages from this side.

        Receiving goes on until the peer's Close (:class:`CloseReceived`). Calling it again does
        nothing. On deadline: :class:`~stack.Timeout`, and the call may be repeated (the Close
        frame is committed once). ``code`` must be one a peer may send (1000-1003, 1007-1014,
        3000-4999) and ``reason`` at most 123 bytes in UTF-8, else :class:`ValueError`.
        """
        _check_close(code, reason)
        if self._close_requested is None:
            self._close_requested = (code, reason)
        await super().done(deadline=deadline)

    async def _done(self, deadline: float) -> None:
        if not self._close_sent and self._close_pending is None:
            self._close_pending = self._close_requested or (1000, "")
        await self._write(deadline)

    async def _close(self, deadline: float) -> None:
        if not self._close_sent and self._close_pending is None:
            self._close_pending = self._close_requested or self._echo()
        await self._write(deadline)
        await self._lower.done(deadline=deadline)

    def _echo(self) -> tuple[int | None, str]:
        """The Close that answers the peer's: its code echoed (none for 1005), else 1000."""
        if self._peer_close is None:
            return (1000, "")
        code = self._peer_close[0]
        return (None, "") if code == 1005 else (code, "")

    # ---- receiving ---------------------------------------------------------------------------

    async def recv(self, *, deadline: float = FOREVER) -> Message:  # type: ignore[override]
        """The next message: ``str`` (text) or ``bytes`` (binary).

        After the peer's Close: :class:`CloseReceived` (every time). On deadline:
        :class:`~stack.Timeout`, nothing consumed; on cancellation, nothing consumed.
        """
        self._enter_recv()
        try:
            if deadline == math.inf:
                msg = await self._next_message(deadline)
            else:
                msg = None
                with trio.move_on_at(deadline) as scope:
                    msg = await self._next_message(deadline)
                if scope.cancelled_caught:
                    raise Timeout("websocket recv timed out")
            if msg is None:
                assert self._peer_close is not None
                self._ended = True
                raise CloseReceived(*self._peer_close)
            return msg
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._receiving = False

    def __aiter__(self) -> AsyncIterator[Message]:  # type: ignore[override]
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                msg = await self.recv()
            except EndOfStream:
                return
            yield msg

    async def _next_message(self, deadline: float) -> Message | None:
        """The next whole message, or None once the peer's Close came. Cancel-safe: whatever was
        read from below is in this layer's state before the next await."""
        while True:
            try:
                self._parse()
            except MessageTooLarge as exc:
                await self._give_up(1009, exc, deadline)
            except ParseFailed as exc:
                detail = f"websocket: bad frame from the peer: {exc}"
                if exc.code == CloseReason.MESSAGE_TOO_BIG:
                    big = MessageTooLarge(f"websocket message inflates past max_message={self._max}", limit=self._max)
                    await self._give_up(1009, big, deadline)
                await self._give_up(int(exc.code), ProtocolError(detail), deadline)
            msg = self._ready
            if msg is not None:
                self._ready = None
                return msg
            if self._peer_close is not None:
                if self._parts or self._frame_left:
                    raise Broken(f"websocket: the peer closed ({self._peer_close[0]}) in the middle of a message")
                return None
            if not await self._read(deadline):
                raise Broken("websocket: the connection ended without a Close frame (1006); data may be lost")

    async def _read(self, deadline: float) -> bool:
        """Read once from below into the buffer; False at the end of the stream.

        Control frames we owe (Pongs, Pings) go down *while* this waits, never before it: a
        receiving task that blocked on writing could deadlock with a peer doing the same. The
        writing is cancelled once data arrived; what it committed goes first on the next write.
        """
        if self._wlock.locked() or not (self._pong is not None or self._pings_out or self._outbuf or self._frames):
            chunk = await self._lower.recv(RECV, deadline=deadline)
            self._inbuf += chunk
            return bool(chunk)
        got = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_meanwhile, deadline)
            chunk = await self._lower.recv(RECV, deadline=deadline)
            self._inbuf += chunk  # in our state before the next checkpoint (the nursery's exit)
            got = bool(chunk)
            nursery.cancel_scope.cancel()
        return got

    async def _write_meanwhile(self, deadline: float) -> None:
        try:
            await self._write(deadline)
        except StackError as exc:  # the read beside it meets the same failure and reports it
            log.debug("websocket: writing control frames failed: %s", exc)

    def _parse(self) -> None:
        """Feed wsproto the buffered bytes, never past the end of the current frame, until a
        message is whole, the peer's Close came, or more bytes are needed."""
        buf = self._inbuf
        try:
            while self._ready is None and self._peer_close is None:
                if self._frame_left == 0:
                    head = _frame_header(buf, self._pos)
                    if head is None:
                        return
                    hlen, n, rsv1, opcode, _ = head
                    if opcode <= 2:  # a data frame: check the size before reading it
                        if opcode != 0:
                            self._msg_compressed = rsv1 and self._deflate
                        limit = self._max + (self._max >> 3) + 1024 if self._msg_compressed else self._max
                        if self._msg_wire + n > limit:
                            raise MessageTooLarge(
                                f"websocket message of at least {self._msg_wire + n} bytes is over "
                                f"max_message={self._max}",
                                limit=self._max,
                                size=self._msg_wire + n,
                            )
                        self._msg_wire += n
                    self._frame_left = hlen + n
                take = min(len(buf) - self._pos, self._frame_left)
                if take <= 0:
                    return
                self._proto.receive_bytes(bytes(buf[self._pos : self._pos + take]))
                self._pos += take
                self._frame_left -= take
                for frame in self._proto.received_frames():
                    self._on_frame(frame)
        finally:
            if self._pos and (self._pos == len(buf) or self._pos >= RECV):
                del buf[: self._pos]
                self._pos = 0

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        payload = frame.payload
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if payload:
                self._parts.append(payload)
            if frame.message_finished:
                parts, self._parts = self._parts, []
                self._msg_wire = 0
                self._ready = "".join(parts) if op is Opcode.TEXT else b"".join(parts)
        elif op is Opcode.PING:
            assert isinstance(payload, (bytes, bytearray))
            self._pong = bytes(payload)
        elif op is Opcode.PONG:
            assert isinstance(payload, (bytes, bytearray))
            entry = self._pings.get(bytes(payload))
            if entry is not None:
                entry[1].append(trio.current_time())
                entry[0].set()
        elif op is Opcode.CLOSE:
            assert isinstance(payload, tuple)
            code, reason = payload
            self._peer_close = (int(code), reason)
            self._wake_pings()  # no Pong comes after the peer's Close
            log.debug("websocket: the peer closed with %s %r", int(code), reason)

    async def _give_up(self, code: int, exc: StackError, deadline: float) -> None:
        """The peer broke the rules (or the size limit): say so with a Close ``code``, best
        effort, then raise ``exc``; the WebSocket stays broken."""
        self._fail(exc)
        self._wake_pings()
        if not self._close_sent:
            self._pong = None
            self._pings_out.clear()
            self._frames.clear()  # the message being sent is given up: Close goes next
            self._close_pending = (code, str(exc)[:60])
            if not self._wlock.locked():
                with trio.move_on_at(min(deadline, trio.current_time() + ERROR_CLOSE_TIME)):
                    try:
                        await self._write(deadline)
                    except StackError as err:
                        log.debug("websocket: could not send Close %d: %s", code, err)
        raise exc

    # ---- ping ----------------------------------------------------------------------------------

    async def ping(self, payload: bytes | None = None, *, deadline: float = FOREVER) -> float:
        """Send a Ping and return the round-trip time in seconds once its Pong was received.

        The Pong is read by :meth:`recv`: call this while another task receives. ``payload``
        (at most 125 bytes) defaults to 8 random bytes. On deadline: :class:`~stack.Timeout`.
        If the WebSocket closes or breaks first: :class:`~stack.Closed` or :class:`~stack.Broken`.
        """
        self._check_usable()
        if self._close_sent or self._close_pending is not None:
            raise Closed("websocket: a Close frame was sent, no more pings")
        if self._peer_close is not None:
            raise Closed("websocket: the peer closed, it answers no more pings")
        key = os.urandom(8) if payload is None else bytes(payload)
        if len(key) > 125:
            raise ValueError("a Ping payload is at most 125 bytes")
        if key in self._pings:
            raise ValueError("a Ping with this payload is already waiting for its Pong")
        done = trio.Event()
        times: list[float] = []
        self._pings[key] = (done, times)
        self._pings_out.append(key)
        try:
            with trio.move_on_at(deadline) as scope:
                if not self._sending:
                    await self._write(deadline)
                await done.wait()
            if scope.cancelled_caught:
                raise Timeout("websocket ping: no Pong before the deadline")
            if len(times) < 2:
                self._check_usable()
                raise Closed("websocket: closed (or the peer closed) before the Pong arrived")
            return times[1] - times[0]
        finally:
            self._pings.pop(key, None)
            if key in self._pings_out:
                self._pings_out.remove(key)

    def _wake_pings(self) -> None:
        for done, _ in self._pings.values():
            done.set()

    def _fail(self, exc: BaseException) -> None:
        super()._fail(exc)
        self._wake_pings()

    def _abort(self) -> None:
        self._wake_pings()

    # ---- detach --------------------------------------------------------------------------------

    async def _detach(self, deadline: float) -> ByteStream:
        """The closing handshake, then the stream below with the bytes after the peer's Close."""
        if not self._close_sent and self._close_pending is None:
            self._close_pending = self._close_requested or self._echo()
        await self._write(deadline)
        msg = await self._next_message(deadline)
        if msg is not None:
            self._ready = msg
            raise StackError(
                "cannot detach the WebSocket: a message arrived before the peer's Close (recv it first); "
                "our Close was sent"
            )
        lower = self._lower
        lower.unread(self._inbuf[self._pos :])
        self._inbuf.clear()
        self._pos = 0
        return lower


# =================================================================================================
# the opening handshake


def _tokens(values: Sequence[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def is_websocket(request: http.Request) -> bool:
    """Does ``request`` ask for a WebSocket? (HTTP/1.1: ``Upgrade: websocket``; HTTP/2: an
    extended CONNECT with ``:protocol websocket``.) Whether it asks properly is for
    :func:`accept` to judge."""
    if request.http_version == "2":
        return request.method == "CONNECT" and getattr(request, "protocol", None) == "websocket"
    return any(t.lower() == "websocket" for t in _tokens(request.headers.get_all("upgrade")))


def _request_problem(request: http.Request) -> tuple[int, str] | None:
    """Why ``request`` is not a valid opening handshake (status, detail), or None."""
    h = request.headers
    if request.http_version == "2":
        if request.method != "CONNECT" or getattr(request, "protocol", None) != "websocket":
            return 400, "not an extended CONNECT with :protocol websocket (RFC 8441)"
    else:
        if request.method != "GET":
            return 400, "a WebSocket upgrade is a GET request"
        if request.http_version != "1.1":
            return 400, "a WebSocket upgrade needs HTTP/1.1"
        if not any(t.lower() == "websocket" for t in _tokens(h.get_all("upgrade"))):
            return 400, "no 'Upgrade: websocket'"
        if not any(t.lower() == "upgrade" for t in _tokens(h.get_all("connection"))):
            return 400, "no 'Connection: Upgrade'"
        key = h.get_all("sec-websocket-key")
        try:
            ok = len(key) == 1 and len(base64.b64decode(key[0].strip(), validate=True)) == _GUID_KEY_BYTES
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            return 400, "Sec-WebSocket-Key is missing or not 16 bytes in base64"
        if (h.get("content-length") or "0") != "0" or "transfer-encoding" in h:
            return 400, "a WebSocket upgrade request has no body"
    if h.get_all("sec-websocket-version") != ["13"]:
        return 426, "Sec-WebSocket-Version must be 13"
    return None


@dataclass(frozen=True)
class _Options:
    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE


async def _accept_stream(
    request: http.Request, opts: _Options, headers: http.HeaderInput, deadline: float
) -> tuple[ByteStream, list[Extension], dict[str, Any]]:
    """Answer the opening handshake of ``request``; the stream, extensions and info."""
    problem = _request_problem(request)
    if problem is not None:
        status, detail = problem
        fields = [("content-type", "text/plain; charset=utf-8")]
        if status == 426:
            fields.append(("sec-websocket-version", "13"))
        await request.respond(status, fields, f"not a WebSocket handshake: {detail}\n".encode(), deadline=deadline)
        raise ProtocolError(f"websocket: refused the opening handshake from {request.info.get('peer')}: {detail}")
    h = request.headers
    offered = _tokens(h.get_all("sec-websocket-protocol"))
    chosen = next((p for p in opts.subprotocols if p in offered), None)
    fields2: list[tuple[str, str]] = []
    if request.http_version != "2":
        token = generate_accept_token(h["sec-websocket-key"].strip().encode("ascii")).decode("ascii")
        fields2 += [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", token)]
    if chosen is not None:
        fields2.append(("sec-websocket-protocol", chosen))
    extensions: list[Extension] = []
    if opts.deflate:
        ext = _BoundedDeflate(opts.max_message)
        accepted = server_extensions_handshake(_tokens(h.get_all("sec-websocket-extensions")), [ext])
        if accepted is not None:
            fields2.append(("sec-websocket-extensions", accepted.decode("ascii")))
            extensions.append(ext)
    fields2 += list(http.Headers(headers))
    status = 200 if request.http_version == "2" else 101
    stream = await request.start_response(status, fields2, deadline=deadline)
    info = {"websocket_path": request.path, "websocket_subprotocol": chosen, "http_version": request.http_version}
    return stream, extensions, info


async def accept(
    request: http.Request,
    *,
    subprotocols: Sequence[str] = (),
    deflate: bool = False,
    max_message: int = MAX_MESSAGE,
    headers: http.HeaderInput = (),
    deadline: float = FOREVER,
) -> WebSocket:
    """Accept the WebSocket ``request`` asks for, over HTTP/1.1 (101) or HTTP/2 (200 to the
    extended CONNECT), and return it. The app must not have responded yet.

    ``subprotocols``: the ones this server speaks, preferred first; the first the client offered
    is chosen (``ws.subprotocol``), else none. ``deflate``: accept permessage-deflate if
    offered. ``headers``: extra response fields. A request that is not a valid opening handshake
    gets 400 (426 for a wrong ``Sec-WebSocket-Version``) and raises :class:`~stack.ProtocolError`.
    On deadline: :class:`~stack.Timeout`. Use the result in ``async with``: the app's request is
    over when it returns.
    """
    opts = _Options(tuple(subprotocols), deflate, max_message)
    stream, extensions, info = await _accept_stream(request, opts, headers, deadline)
    log.debug(
        "websocket %s accepted from %s over HTTP/%s", request.path, request.info.get("peer"), request.http_version
    )
    return WebSocket(stream, client=False, max_message=max_message, extensions=extensions, info=info)


def _offer_fields(opts: _Options) -> tuple[list[tuple[str, str]], list[Extension]]:
    fields: list[tuple[str, str]] = [("sec-websocket-version", "13")]
    if opts.subprotocols:
        fields.append(("sec-websocket-protocol", ", ".join(opts.subprotocols)))
    extensions: list[Extension] = []
    if opts.deflate:
        ext = _BoundedDeflate(opts.max_message)
        extensions.append(ext)
        fields.append(("sec-websocket-extensions", f"permessage-deflate; {ext.offer()}"))
    return fields, extensions


def _agreed(response: http.Response, opts: _Options, offered: list[Extension]) -> tuple[list[Extension], str | None]:
    """The extensions and subprotocol the server's answer agreed to; ProtocolError if it agreed
    to something not offered."""
    h = response.headers
    try:
        extensions = client_extensions_handshake(_tokens(h.get_all("sec-websocket-extensions")), offered)
    except (RemoteProtocolError, ValueError) as exc:
        raise ProtocolError(f"websocket handshake: the server chose an extension not offered: {exc}") from None
    chosen = h.get("sec-websocket-protocol")
    if chosen is not None and chosen not in opts.subprotocols:
        raise ProtocolError(f"websocket handshake: the server chose the subprotocol {chosen!r}, not offered")
    return extensions, chosen


async def _refused(response: http.Response, what: str) -> UpgradeRefused:
    body = b""
    try:
        with trio.move_on_after(1.0):
            body = await response.body.recv(1024)
    except StackError:
        pass
    with trio.CancelScope(shield=True):
        await response.aclose()
    return UpgradeRefused(
        f"websocket: {what} answered {response.status} {response.reason}".rstrip(), response.status, body
    )


async def _connect_stream(
    conn: http.ClientConnection, path: str, opts: _Options, headers: http.HeaderInput, deadline: float
) -> tuple[ByteStream, list[Extension], dict[str, Any]]:
    fields, offered = _offer_fields(opts)
    fields += list(http.Headers(headers))
    if conn.http_version == "2":
        from . import http2

        assert isinstance(conn, http2.H2ClientConnection)
        try:
            stream = await conn.connect_tunnel(
                conn.authority, protocol="websocket", path=path, headers=fields, deadline=deadline
            )
        except http2.TunnelRefused as exc:
            raise await _refused(exc.response, f"the extended CONNECT to {path}") from None
        response: http.Response = await stream.response(deadline=deadline)
        lower: ByteStream = stream
    else:
        key = base64.b64encode(os.urandom(_GUID_KEY_BYTES))
        fields = [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-key", key.decode()), *fields]
        response = await conn.request("GET", path, headers=fields, deadline=deadline)
        if response.status != 101:
            raise await _refused(response, f"the upgrade request for {path}")
        h = response.headers
        problems = []
        if not any(t.lower() == "websocket" for t in _tokens(h.get_all("upgrade"))):
            problems.append("no 'Upgrade: websocket'")
        if not any(t.lower() == "upgrade" for t in _tokens(h.get_all("connection"))):
            problems.append("no 'Connection: Upgrade'")
        if h.get("sec-websocket-accept") != generate_accept_token(key).decode():
            problems.append("a wrong Sec-WebSocket-Accept")
        if problems:
            with trio.CancelScope(shield=True):
                await response.aclose()
            raise ProtocolError(f"websocket handshake: the server's 101 has {', '.join(problems)}")
        lower = response.body
    try:
        extensions, chosen = _agreed(response, opts, offered)
    except ProtocolError:
        with trio.CancelScope(shield=True):
            await lower.aclose()
        raise
    info = {"websocket_path": path, "websocket_subprotocol": chosen, "http_version": conn.http_version}
    return lower, extensions, info


async def connect(
    conn: http.ClientConnection,
    path: str = "/",
    *,
    subprotocols: Sequence[str] = (),
    deflate: bool = False,
    max_message: int = MAX_MESSAGE,
    headers: http.HeaderInput = (),
    deadline: float = FOREVER,
) -> WebSocket:
    """Open a WebSocket to ``path`` over an HTTP client connection: an HTTP/1.1 Upgrade (the
    connection then carries only the WebSocket) or an HTTP/2 extended CONNECT stream (RFC 8441;
    the connection goes on carrying other requests; the server must advertise
    SETTINGS_ENABLE_CONNECT_PROTOCOL, else :class:`~stack.StackError`).

    ``subprotocols``: offered, preferred first (``ws.subprotocol`` is the server's choice).
    ``deflate``: offer permessage-deflate. A server that answers with anything but a WebSocket
    raises :class:`UpgradeRefused`; a bad answer, :class:`~stack.ProtocolError`. On deadline:
    :class:`~stack.Timeout`.
    """
    opts = _Options(tuple(subprotocols), deflate, max_message)
    lower, extensions, info = await _connect_stream(conn, path, opts, headers, deadline)
    return WebSocket(lower, client=True, max_message=max_message, extensions=extensions, info=info)


# =================================================================================================
# specs


def _need_bytestream(lower: object, what: str) -> ByteStream:
    if not isinstance(lower, ByteStream):
        raise TypeError(f"{what} attaches to a ByteStream, not {type(lower).__name__}")
    return lower


@dataclass(frozen=True)
class server:
    """Spec: the server side of a WebSocket straight on a ByteStream (TCP, TLS...): reads the
    HTTP/1.1 opening handshake (with :mod:`layers.http1`'s limits and defences) and answers it.

    ``paths``: the request paths accepted (empty: any; another path gets 404). A request that
    is not a valid opening handshake gets 400 or 426 and the attach raises
    :class:`~stack.ProtocolError`. ``subprotocols``, ``deflate``, ``max_message``: as for
    :func:`accept`. The WebSocket's lower stream is ``lower`` itself (the bytes after the
    handshake are pushed back into it first). ``info["websocket_path"]`` is the request path.
    """

    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE
    paths: tuple[str, ...] = ()
    limits: http.Limits = http.DEFAULT_LIMITS

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = _need_bytestream(lower, "websocket.server")
        conn = http1.ServerConnection(lower, self.limits, None)
        request = await conn.recv(deadline=deadline)
        if self.paths and request.path not in self.paths:
            await request.respond(404, [("content-type", "text/plain")], b"no WebSocket here\n", deadline=deadline)
            raise ProtocolError(f"websocket: no WebSocket at {request.path!r}")
        opts = _Options(tuple(self.subprotocols), self.deflate, self.max_message)
        tunnel, extensions, info = await _accept_stream(request, opts, (), deadline)
        bottom = await tunnel.detach(deadline=deadline)
        return WebSocket(bottom, client=False, max_message=self.max_message, extensions=extensions, info=info)


@dataclass(frozen=True)
class client:
    """Spec: the client side of a WebSocket straight on a ByteStream: sends the HTTP/1.1 opening
    handshake for ``path`` with ``Host: host`` and checks the answer.

    ``subprotocols``, ``deflate``, ``max_message``, ``headers``: as for :func:`connect`. The
    WebSocket's lower stream is ``lower`` itself.
    """

    host: str
    path: str = "/"
    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE
    headers: tuple[tuple[str, str], ...] = ()
    limits: http.Limits = http.DEFAULT_LIMITS

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = _need_bytestream(lower, "websocket.client")
        scheme = "https" if "tls_version" in lower.info else "http"
        conn = await http1.client(self.limits, self.host, scheme).attach(lower, deadline=deadline)
        opts = _Options(tuple(self.subprotocols), self.deflate, self.max_message)
        tunnel, extensions, info = await _connect_stream(conn, self.path, opts, self.headers, deadline)
        bottom = await tunnel.detach(deadline=deadline)
        return WebSocket(bottom, client=True, max_message=self.max_message, extensions=extensions, info=info)


@dataclass(frozen=True)
class raw:
    """Spec: a WebSocket whose opening handshake was done elsewhere: frames only.

    ``role``: ``"client"`` (masks what it sends) or ``"server"``. ``deflate``: the
    ``Sec-WebSocket-Extensions`` value the handshake agreed for permessage-deflate (for example
    ``"permessage-deflate"``), or None. No I/O: attach returns at once.
    """

    role: Literal["client", "server"]
    max_message: int = MAX_MESSAGE
    deflate: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        if self.max_message < 0:
            raise ValueError("max_message must be >= 0")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = _need_bytestream(lower, "websocket.raw")
        extensions: list[Extension] = []
        if self.deflate is not None:
            ext = _BoundedDeflate(self.max_message)
            ext.finalize(self.deflate)
            extensions.append(ext)
        return WebSocket(lower, client=self.role == "client", max_message=self.max_message, extensions=extensions)
