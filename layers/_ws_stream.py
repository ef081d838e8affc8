"""The WebSocket message stream: :class:`WebSocket`, framing, Ping/Pong, fragments and Close.

See :mod:`layers.websocket` for the semantics. wsproto's :class:`~wsproto.frame_protocol.FrameProtocol`
does the frame rules; this module decides what it is fed and when. Receiving: bytes from below are
buffered and fed to wsproto one frame at a time (never past the end of the current frame, so the
bytes after the peer's Close stay ours for ``detach``), and a data frame's size is checked from its
header before it is read (:func:`_frame_header`), so a message over ``max_message`` is refused
before it is buffered; at most :data:`FRAMES_PER_STEP` frames are parsed between two checkpoints,
so a burst of tiny frames cannot hold the event loop, and a fragmented message grows one buffer
(never a list of pieces). A non-final continuation frame that is whole in the buffer bypasses
wsproto (:meth:`WebSocket._continuation`: unmasked by one integer XOR, inflated and decoded with
the extension's and wsproto's own state), ~3x cheaper per fragment; every other frame goes
through wsproto, which checks the rules. Sending: every write goes through one lock (:meth:`WebSocket._write`),
a message is cut into frames of at most :data:`FRAGMENT` payload bytes, and the control frames owed
(Pings, the Pongs owed, then our Close once no fragment is left) go between them. A receiving task
that has control frames to send writes them *while* it waits for data, never before.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import trio
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Frame, FrameProtocol, Opcode, ParseFailed

from stack.deadlines import FOREVER, check_deadline
from stack.errors import Broken, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.streams import ByteStream, MessageStream

log = logging.getLogger("stack.websocket")

MAX_MESSAGE = 16 * 1024 * 1024
"""Default ``max_message``: 16 MiB."""

RECV = 65536
"""Bytes asked of the stream below per receive."""

FRAGMENT = 65536
"""Payload bytes per frame of an outgoing message: a longer message is sent as several frames
(RFC 6455 5.4), with the control frames owed sent between them."""

MAX_PONGS = 32
"""Pongs owed at most: each Ping is answered with its own Pong, but a peer that sends Pings
faster than it reads our Pongs gets answers to its last 32 only (RFC 6455 5.5.3 allows answering
only the most recent), so what we owe stays bounded (32 x 125 bytes)."""

PING_FLOOD = 1000
"""Pings a peer may send in about one second: past it the WebSocket closes with 1008 (policy
violation) and fails with :class:`~stack.ProtocolError`. Every Ping costs a parse and a Pong
(~10 us of CPU here); without a cap a peer could keep a core busy answering them for as long as
it likes. Counted in windows: the window starts at a Ping and ends at the first Ping past
``PING_FLOOD`` (a new window if a second has passed, else the flood is refused), so a sustained
flood costs at most ~2 x PING_FLOOD Pings' work, and a keep-alive Ping every few seconds never
comes near it."""

PING_WINDOW = 1.0
"""Seconds of the :data:`PING_FLOOD` window."""

FRAMES_PER_STEP = 256
"""Frames parsed at most between two checkpoints: a read full of tiny frames (a 64 KiB read
holds up to ~11,000 of them: Pings, empty fragments) is parsed in steps of this many, and the
other tasks of the process run between the steps."""

ERROR_CLOSE_TIME = 1.0
"""Seconds spent at most sending the Close frame that reports a protocol error."""

Message = bytes | str
_MAX_REASON = 123  # a Close frame's payload is at most 125 bytes, 2 of them the code


class _PingFlood(ProtocolError):
    """The peer sent more than :data:`PING_FLOOD` Pings within :data:`PING_WINDOW` (closed with 1008)."""


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


class WebSocket(MessageStream):
    """One WebSocket connection over a ByteStream (see :mod:`layers.websocket` for the semantics).

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
        self._acc: bytearray | io.StringIO | None = None  # the fragmented message being received
        self._ready: Message | None = None  # one whole message, waiting for recv
        self._peer_close: tuple[int, str] | None = None
        # sending: every write goes through _write, under this lock, frames whole and in order
        self._wlock = trio.Lock()
        self._frames: deque[bytearray] = deque()  # the committed message's frames not sent yet
        self._pongs: deque[bytes] = deque(maxlen=MAX_PONGS)  # the Pongs we owe, oldest first
        self._pings_out: list[bytes] = []  # Pings to send
        self._pings: dict[bytes, tuple[trio.Event, list[float]]] = {}  # waiting for their Pong
        self._pings_in = 0  # Pings received in the current PING_WINDOW (see PING_FLOOD)
        self._ping_window = 0.0  # when that window began
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
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)  # an int passes; a str, None or NaN is refused naming it
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
        """The next control frame owed to the peer (Pings, the Pongs, then our Close once no
        fragment of a message is left to send), or None."""
        if self._close_sent:
            return None
        if self._pings_out:
            payload = self._pings_out.pop(0)
            entry = self._pings.get(payload)
            if entry is not None:
                entry[1].append(trio.current_time())
            return self._proto.ping(payload)
        if self._pongs:
            return self._proto.pong(self._pongs.popleft())
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
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
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
        # the base class's loop; its recv is this class's, so text messages stay str
        return cast(AsyncIterator[Message], self._iterate())

    async def _next_message(self, deadline: float) -> Message | None:
        """The next whole message, or None once the peer's Close came. Cancel-safe: whatever was
        read from below is in this layer's state before the next await."""
        while True:
            try:
                more = self._parse()
            except MessageTooLarge as exc:
                await self._give_up(1009, exc, deadline)
            except _PingFlood as exc:  # the Pongs owed (MAX_PONGS at most) still go before the Close
                await self._give_up(1008, exc, deadline, pongs=True)
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
                if self._acc is not None or self._frame_left:
                    # the message is lost, but the connection is sound: answer the Close (Autobahn 7.1.5)
                    lost = Broken(f"websocket: the peer closed ({self._peer_close[0]}) in the middle of a message")
                    await self._give_up(self._echo()[0], lost, deadline)
                return None
            if more:  # a peer's burst of small frames: let the other tasks run between steps
                # (not a cancellation point: the deadline is checked by the next read; with a plain
                # checkpoint the kit's check_message_stream.busy hung with FRAGMENT=7, cause not found)
                await trio.lowlevel.cancel_shielded_checkpoint()
                continue
            if not await self._read(deadline):
                raise Broken("websocket: the connection ended without a Close frame (1006); data may be lost")

    async def _read(self, deadline: float) -> bool:
        """Read once from below into the buffer; False at the end of the stream.

        Control frames we owe (Pongs, Pings) go down *while* this waits, never before it: a
        receiving task that blocked on writing could deadlock with a peer doing the same. The
        writing is cancelled once data arrived; what it committed goes first on the next write.
        """
        if self._wlock.locked() or not (self._pongs or self._pings_out or self._outbuf or self._frames):
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

    def _parse(self) -> bool:
        """Feed wsproto the buffered bytes, never past the end of the current frame, until a
        message is whole, the peer's Close came, or more bytes are needed (then False), or
        :data:`FRAMES_PER_STEP` frames were begun (then True: the caller yields, then goes on)."""
        buf = self._inbuf
        budget = FRAMES_PER_STEP
        try:
            while self._ready is None and self._peer_close is None:
                if self._frame_left == 0:
                    if not budget:
                        return True
                    budget -= 1
                    head = _frame_header(buf, self._pos)
                    if head is None:
                        return False
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
                        if (
                            opcode == 0
                            and not head[4]  # fin
                            and self._acc is not None
                            and (hlen == 6 or (hlen == 8 and n >= 126))  # masked, minimal length
                            and not self.client
                            and not buf[self._pos] & 0x70  # no RSV bit
                            and self._pos + hlen + n <= len(buf)
                        ):
                            self._continuation(buf, self._pos + hlen, n)
                            self._pos += hlen + n
                            continue
                    self._frame_left = hlen + n
                take = min(len(buf) - self._pos, self._frame_left)
                if take <= 0:
                    return False
                self._proto.receive_bytes(bytes(buf[self._pos : self._pos + take]))
                self._pos += take
                self._frame_left -= take
                for frame in self._proto.received_frames():
                    self._on_frame(frame)
            return False
        finally:
            if self._pos and (self._pos == len(buf) or self._pos >= RECV):
                del buf[: self._pos]
                self._pos = 0

    def _continuation(self, buf: bytearray, start: int, n: int) -> None:
        """A whole, masked, non-final continuation frame of the message being received, whose
        payload is ``buf[start : start + n]`` (its mask the 4 bytes before): what wsproto would do
        with it, without its per-frame objects and copies. Between two frames wsproto keeps no
        state but the message's (the kind, the UTF-8 decoder) and the extension's, used here as
        it would use them; the fragments of a large message (Autobahn 12.*: 256-byte fragments)
        cost ~3x less this way."""
        payload: bytes = bytes(buf[start : start + n])
        if n:
            key = buf[start - 4 : start]
            mask = int.from_bytes((key * ((n >> 2) + 1))[:n], "big")
            payload = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
        proto = self._proto
        for ext in proto.extensions:  # permessage-deflate (the only extension we negotiate)
            if isinstance(ext, PerMessageDeflate):
                ext._inbound_is_compressible = True  # as its frame_inbound_header sets it for a continuation
            out = ext.frame_inbound_payload_data(proto, payload)
            if isinstance(out, CloseReason):
                raise ParseFailed("error in extension", out)
            payload = out
        acc = self._acc
        decoder = proto._message_decoder.decoder
        if decoder is None:
            assert isinstance(acc, bytearray)
            acc += payload
            return
        try:
            text = decoder.decode(payload, False)
        except UnicodeDecodeError as exc:
            raise ParseFailed(str(exc), CloseReason.INVALID_FRAME_PAYLOAD_DATA) from None
        assert isinstance(acc, io.StringIO)
        acc.write(text)

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        payload = frame.payload
        if op is Opcode.TEXT or op is Opcode.BINARY:
            acc = self._acc
            if frame.message_finished and acc is None:  # a message in one frame
                self._msg_wire = 0
                self._ready = cast(str, payload) if op is Opcode.TEXT else bytes(cast(bytes, payload))
                return
            # fragments go into one growing buffer (a list of pieces would cost ~50 bytes per
            # fragment: a message of 1-byte fragments would take 50x max_message in memory)
            if acc is None:
                acc = self._acc = io.StringIO(newline="") if op is Opcode.TEXT else bytearray()
            if isinstance(acc, bytearray):
                acc += cast(bytes, payload)
            else:
                acc.write(cast(str, payload))
            if frame.message_finished:
                self._acc = None
                self._msg_wire = 0
                self._ready = bytes(acc) if isinstance(acc, bytearray) else acc.getvalue()
        elif op is Opcode.PING:
            assert isinstance(payload, (bytes, bytearray))
            self._pongs.append(bytes(payload))  # past MAX_PONGS owed, the oldest is dropped
            self._pings_in += 1
            if self._pings_in == 1:
                self._ping_window = trio.current_time()
            elif self._pings_in > PING_FLOOD:
                self._ping_flood()
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

    def _ping_flood(self) -> None:
        """Past :data:`PING_FLOOD` Pings in this window: a new window if it is over, else refuse."""
        now = trio.current_time()
        if now - self._ping_window >= PING_WINDOW:
            self._ping_window = now
            self._pings_in = 1
            return
        raise _PingFlood(f"websocket: Ping flood (over {PING_FLOOD} Pings within {PING_WINDOW:g} s)")

    async def _give_up(self, code: int | None, exc: StackError, deadline: float, *, pongs: bool = False) -> None:
        """The peer broke the rules (or the size limit): say so with a Close ``code`` (None: a
        Close without a code), best effort, then raise ``exc``; the WebSocket stays broken.
        ``pongs``: the Pongs owed go before the Close (else they are dropped)."""
        self._fail(exc)
        self._wake_pings()
        if not self._close_sent:
            if not pongs:
                self._pongs.clear()
            self._pings_out.clear()
            self._frames.clear()  # the message being sent is given up: Close goes next
            self._close_pending = (code, str(exc)[:60] if code is not None else "")
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
