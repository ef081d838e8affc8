"""The 1-RTT packets of a bulk stream, built without aioquic's packet builder: the sending side
of a QUIC bulk transfer (:class:`layers._quic_engine.Engine` calls :func:`write_bulk` from its
``_write_application`` once datagrams are large).

Theory of operation: with 64 KiB datagrams (path MTU discovery on loopback) a bulk sender spent
most of its CPU in aioquic's per-packet Python (``_write_application``'s loop re-checks a
dozen kinds of control frame for every packet, its ``QuicPacketBuilder`` starts, pads, ends and
flushes each packet through a ``Buffer``) and in the packet's bytes being copied about seven
times on the way (the frame's data sliced, pushed into the builder's buffer, sliced out of it
twice, encrypted, joined to the protected header, pushed back, copied out as the datagram).

:func:`write_bulk` builds the packets of one call of aioquic's ``_write_application`` itself, but
only when they would carry nothing but STREAM frames of one stream, which :func:`bulk_ready`
checks once per call (not per packet) against everything aioquic's loop would otherwise write:
an ACK that is due, path validation, HANDSHAKE_DONE, connection IDs, STREAMS_BLOCKED, our
MAX_DATA / MAX_STREAMS / MAX_STREAM_DATA (``Engine`` decides those: its ``limits_quiet``), PING,
CRYPTO, DATAGRAM, STOP_SENDING, RESET_STREAM, a finished stream to discard, more than one stream
with data, qlog, an unvalidated path's amplification limit. Anything of that, and any frame the
loop cannot build exactly as a full-size one (a FIN alone, flow control holding the stream),
leaves the call to aioquic, which then runs as always, after whatever packets this built.

Each packet is exactly what aioquic builds: a short header (2-byte packet number), one STREAM
frame with an offset when not 0, a 4-byte length (``Engine``'s large-datagram frames) and the
FIN on the last byte, the same ``QuicSentPacket`` with the stream's ``on_data_delivery`` handler
(so acknowledgements, losses and retransmissions go through aioquic unchanged), the same
accounting (packet number, the builder's flight bytes, the connection's flow control used, the
pacer after each packet, the served stream moved to the end of the queue); the frame's range is
taken from the stream sender's pending ranges as aioquic's ``get_frame`` takes it. The copies: the
stream's bytes into one reused plaintext buffer (from :class:`~layers._quic_copies.SendBuffer`'s
chunks, no intermediate object), AES-GCM encrypting from it straight into the datagram
(``encrypt_into``), the header protected in place. The datagram is that ``bytearray`` when the
engine's driver says it only hands datagrams to ``sendto`` (``Engine.sends_buffers``, set by
:class:`~layers._quic_conn.QuicConnection`), else ``bytes`` (aioquic's type: one more copy).

Relies on aioquic 1.x internals (the builder's ``_packets``/``_datagrams``/``_flight_bytes``/
``_packet_number``, the sender's ``_pending``/``_buffer_start``/``_buffer_fin``/``_pending_eof``,
the AEAD's ``_aead``/``_iv``, the header protection's ``_mask``, the connection's attributes
:func:`bulk_ready` reads); ``tests/test_quic_bulk.py`` checks that packets built here are
byte for byte the packets aioquic builds, and whole transfers through lossy paths.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aioquic import tls as aioquic_tls
from aioquic.buffer import size_uint_var
from aioquic.quic.packet import PACKET_FIXED_BIT, QuicPacketType
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE, QuicSentPacket
from aioquic.quic.stream import StreamFinishedError

from ._quic_copies import PYTHON_HP, SendBuffer

__all__ = ["bulk_ready", "stream_payload", "write_bulk"]

_ONE_RTT = aioquic_tls.Epoch.ONE_RTT
_TAG = 16
_PN_BITS = PACKET_NUMBER_SEND_SIZE - 1  # the packet number's length - 1, in the first byte


def _uint_var(value: int) -> bytes:
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def bulk_ready(conn: Any, builder: Any, network_path: Any, now: float) -> Any:
    """The one stream whose STREAM frames would be all that aioquic's ``_write_application``
    writes in this call, or ``None`` (module docstring)."""
    if (
        builder._packet is not None
        or builder.max_total_bytes is not None
        or builder.max_flight_bytes is None
        or conn._quic_logger is not None
        or not conn._handshake_complete
        or not conn._handshake_confirmed
        or conn._handshake_done_pending
        or conn._streams_blocked_pending
        or conn._ping_pending
        or conn._probe_pending
        or conn._datagrams_pending
        or conn._retire_connection_ids
        or not network_path.is_validated
        or network_path.remote_challenges
        or not PYTHON_HP
    ):
        return None
    crypto = conn._cryptos[_ONE_RTT]
    if (
        not crypto.send.is_valid()
        or crypto._update_key_requested
        or not hasattr(crypto.send.aead._aead, "encrypt_into")
    ):
        return None
    space = conn._spaces[_ONE_RTT]
    if space.ack_at is not None and space.ack_at <= now:
        return None
    if not conn._crypto_streams[_ONE_RTT].sender.buffer_is_empty:
        return None
    for cid in conn._host_cids:
        if not cid.was_sent:
            return None
    if not conn.limits_quiet():
        return None
    found = None
    for stream in conn._streams_queue:
        sender = stream.sender
        if stream.is_finished or stream.receiver.stop_pending or sender.reset_pending:
            return None
        if not stream.is_blocked and not sender.buffer_is_empty:
            if found is not None or type(sender._buffer) is not SendBuffer:
                return None
            found = stream
    return found


def write_bulk(conn: Any, builder: Any, stream: Any, now: float) -> bool:
    """Build the packets of ``stream``'s data that the congestion window and the pacer let go
    now, straight into ``builder`` (:func:`bulk_ready` chose the stream). True when this call
    of ``_write_application`` is complete (the window or the pacer stopped it, or ``Engine.cork``
    held a small tail back); False when aioquic's ``_write_application`` is to run after it."""
    sender = stream.sender
    buffer: SendBuffer = sender._buffer
    pacer = conn._loss._pacer
    crypto = conn._cryptos[_ONE_RTT]
    send = crypto.send
    aead = send.aead._aead
    iv = send.aead._iv
    mask_of = send.hp._mask
    peer_cid = builder._peer_cid
    first_byte = PACKET_FIXED_BIT | (builder._spin_bit << 5) | (crypto.key_phase << 2) | _PN_BITS
    head = first_byte.to_bytes(1, "big") + peer_cid
    header_size = len(head) + PACKET_NUMBER_SEND_SIZE
    sample = header_size + 4 - PACKET_NUMBER_SEND_SIZE  # RFC 9001 5.4.2: pn offset + 4
    sid = _uint_var(stream.stream_id)
    capacity = builder._buffer_capacity
    plain = conn.bulk_plain(capacity)
    view = memoryview(plain)
    as_buffers = conn.sends_buffers
    sent = False
    done = False
    while True:
        pacing_at = pacer.next_send_time(now)
        if pacing_at is not None:  # (no ACK is due: bulk_ready)
            conn._pacing_at = pacing_at
            done = True
            break
        room = min(capacity, builder.max_flight_bytes - builder._flight_bytes) - header_size - _TAG
        pending = sender._pending
        try:
            first = pending[0]
        except IndexError:
            if not sender._pending_eof:
                sender.buffer_is_empty = True
            break  # (a FIN alone: aioquic's)
        start = first.start
        if conn.cork and sender._buffer_fin is None and 0 < 2 * (sender._buffer_stop - start) < room:
            conn.held = True  # Engine._write_big_stream_frame's rule
            done = True
            break
        overhead = 5 + len(sid) + (size_uint_var(start) if start else 0)
        if room - overhead <= 0:  # the window is full: aioquic's loop would build nothing more
            done = True
            break
        stop = min(
            first.stop,
            start + room - overhead,
            sender.highest_offset + conn._remote_max_data - conn._remote_max_data_used,
            stream.max_stream_data_remote,
        )
        if stop <= start:  # flow control: aioquic's
            break
        fin = sender._buffer_fin == stop
        # the frame: type, stream id, offset, 4-byte length, data (what Engine writes)
        frame = (0x0A | (4 if start else 0) | (1 if fin else 0)).to_bytes(1, "big") + sid
        if start:
            frame += _uint_var(start)
        frame += ((stop - start) | 0x80000000).to_bytes(4, "big")
        size = len(frame) + stop - start
        view[: len(frame)] = frame
        buffer.copy_into(view[len(frame) : size], start - sender._buffer_start)
        # the sender's state, as aioquic's get_frame leaves it
        pending.subtract(start, stop)
        used = max(0, stop - sender.highest_offset)
        if stop > sender.highest_offset:
            sender.highest_offset = stop
        if fin:
            sender._pending_eof = False
        conn._remote_max_data_used += used
        # the packet
        number = builder._packet_number
        header = head + (number & 0xFFFF).to_bytes(2, "big")
        datagram = bytearray(header_size + size + _TAG)
        datagram[:header_size] = header
        aead.encrypt_into((iv ^ number).to_bytes(12, "big"), view[:size], header, memoryview(datagram)[header_size:])
        mask = mask_of(datagram[sample : sample + 16])
        datagram[0] ^= mask[0] & 0x1F
        datagram[header_size - 2] ^= mask[1]
        datagram[header_size - 1] ^= mask[2]
        packet = QuicSentPacket(
            epoch=_ONE_RTT,
            in_flight=True,
            is_ack_eliciting=True,
            is_crypto_packet=False,
            packet_number=number,
            packet_type=QuicPacketType.ONE_RTT,
            sent_bytes=len(datagram),
        )
        packet.delivery_handlers.append((sender.on_data_delivery, (start, stop, fin)))
        builder._packets.append(packet)
        builder._datagrams.append(datagram if as_buffers else bytes(datagram))
        builder._flight_bytes += len(datagram)
        builder._total_bytes += len(datagram)
        builder._packet_number = number + 1
        pacer.update_after_send(now=now)
        sent = True
    if sent:  # aioquic's service order: the stream served goes to the end
        queue = conn._streams_queue
        if queue[-1] is not stream:
            queue.remove(stream)
            queue.append(stream)
    return done


# ---------------------------------------------------------------- receiving


class _Frame:
    """What aioquic's ``_handle_stream_frame`` reads of a STREAM frame's buffer (its varints in
    order, then its data), parsed already: the data is handed over as it was sliced, once."""

    __slots__ = ("_data", "pull_uint_var")

    def __init__(self, fields: list[int], data: bytes) -> None:
        self.pull_uint_var = iter(fields).__next__
        self._data = data

    def pull_bytes(self, length: int) -> bytes:
        return self._data


_VARINT_MASKS = (0x3F, 0x3FFF, 0x3FFFFFFF, 0x3FFFFFFFFFFFFFFF)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The variable-length integer at ``pos`` and the position after it (IndexError: truncated)."""
    first = data[pos]
    kind = first >> 6
    if not kind:
        return first, pos + 1
    end = pos + (1 << kind)
    if end > len(data):
        raise IndexError
    return int.from_bytes(data[pos:end], "big") & _VARINT_MASKS[kind], end


def stream_payload(conn: Any, context: Any, plain: bytes) -> bool:
    """Handle a 1-RTT payload that is one STREAM frame with a length, exactly filling it (what a
    bulk sender's packets are, ours and aioquic's alike) through aioquic's own
    ``_handle_stream_frame``, without aioquic's ``_payload_received`` (its ``Buffer`` copies the
    payload, then the frame's data out of it): True when handled; False for any other payload,
    left to aioquic whole (it also raises the errors of a malformed one)."""
    frame_type = plain[0]
    if frame_type & 0xFA != 0x0A:  # STREAM (0x08-0x0f) with the LEN bit
        return False
    try:
        stream_id, pos = _varint(plain, 1)
        fields = [stream_id]
        if frame_type & 4:
            offset, pos = _varint(plain, pos)
            fields.append(offset)
        length, pos = _varint(plain, pos)
    except IndexError:
        return False
    if pos + length != len(plain):
        return False
    fields.append(length)
    with contextlib.suppress(StreamFinishedError):  # as aioquic: no state left for the stream, ignored
        conn._handle_stream_frame(context, frame_type, _Frame(fields, plain[pos:]))
    return True
