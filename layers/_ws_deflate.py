"""permessage-deflate (RFC 7692) with a size limit, and work-arounds for wsproto's state keeping.

:class:`_BoundedDeflate` is wsproto's :class:`~wsproto.extensions.PerMessageDeflate` with two
changes. Inflating is bounded: wsproto inflates each frame's payload whole, so a few KiB of
compressed zeros could take gigabytes before any limit is checked; here each step inflates at
most one byte past what the message may still grow by, and a message over ``max_message`` fails
with 1009 (MESSAGE_TOO_BIG). And a control frame (a Ping between two messages, or inside a
fragmented one) never touches the state of the message being received: wsproto's version records
its RSV1 as the next message's "compressed" bit, or forgets that bit mid-message, and then
delivers a message still compressed.

Compressing uses a window of at most :data:`WINDOW_BITS` (12: 4 KiB, or less when the peer asked
for less) and zlib's ``memLevel`` :data:`MEM_LEVEL` (5), the `websockets` library's choice: about
twice as fast as zlib's defaults (window 15, memLevel 8) on text, for a few percent of ratio, and
about 4x less memory per connection. A compressor may always use a smaller window than agreed (the
peer's decompressor keeps the agreed one), so nothing changes in the negotiation.

The WebSocket handshake offers it (client), accepts it when offered (server), or finalizes it from
an agreed ``Sec-WebSocket-Extensions`` value (``websocket.raw(deflate=...)``).
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

WINDOW_BITS = 12
"""The largest compression window we use (log2 of its size), whatever the peer allows."""

MEM_LEVEL = 5
"""zlib's memLevel for compressing (1-9; its default is 8)."""

_TAIL = b"\x00\x00\xff\xff"


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

    def frame_outbound(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, data: bytes, fin: bool
    ) -> tuple[RsvBits, bytes]:
        # wsproto's, with a smaller window and memLevel (see the module docstring)
        if not self._compressible_opcode(opcode):
            return (rsv, data)
        if opcode is not Opcode.CONTINUATION:
            rsv = RsvBits(True, rsv[1], rsv[2])
        c = self._compressor
        if c is None:
            bits = self.client_max_window_bits if proto.client else self.server_max_window_bits
            c = self._compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -min(int(bits), WINDOW_BITS), MEM_LEVEL
            )
        out = c.compress(data)
        if not fin:
            return (rsv, out)
        out += c.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(_TAIL):  # always, after a sync flush
            out = out[:-4]
        if self.client_no_context_takeover if proto.client else self.server_no_context_takeover:
            self._compressor = None
        return (rsv, out)

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
