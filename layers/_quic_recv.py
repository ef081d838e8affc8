"""A bulk receiver's 1-RTT datagrams, taken without aioquic's ``receive_datagram``: the receiving
side of a QUIC bulk transfer (:class:`layers._quic_engine.Engine` calls :func:`receive_short`
for each datagram of a batch once datagrams are large).

Theory of operation: with 64 KiB datagrams a bulk receiver's CPU per datagram went, after the
decryption and the one STREAM frame (:func:`layers._quic_bulk.stream_payload`), mostly to
aioquic's ``receive_datagram`` itself: a copy of the whole datagram into a ``Buffer``, a
``QuicHeader`` parsed for a header of one byte and a connection ID, a dozen checks that only
long-header packets, a new path or a closing connection need, and ``enum.__hash__`` each time
it looks up a packet number space or keys by epoch (Python's ``Enum`` hashes in Python).

:func:`receive_short` takes a datagram only when it is what a bulk transfer's datagrams are: a
single short-header (1-RTT) packet over :data:`~layers._quic_copies.BULK` bytes, of a connection
that is connected (not closing), on its active network path (the first, validated: no
anti-amplification count), addressed to the connection ID in use (one of ours: no migration),
with the key phase of the current keys (no key update), no qlog, the peer's connection ID known,
the idle timer armed. It checks all of that before changing anything, and hands everything else
back untouched (``False``: the caller runs aioquic's ``receive_datagram``), including a packet
that fails to decrypt, a duplicate and reserved bits set (aioquic decrypts it again and drops it
or closes, as always). What it does then is aioquic's ``receive_datagram`` for that packet,
statement for statement, minus the branches those conditions rule out: header protection
removed and the payload decrypted from a view of the datagram (as
:class:`~layers._quic_copies.RecvContext` does), the expected packet number raised, a server's
0-RTT keys torn down, the spin bit, the same ``QuicReceiveContext`` to aioquic's (or our
engine's) ``_payload_received``, a ``QuicConnectionError`` closing the connection, the idle
timer re-armed, a server's switch to the connection ID of the packet (after the payload, as
aioquic does), the path bookkeeping, and the packet recorded in its space (received packets,
ACK ranges capped at ``MAX_ACK_RANGES``, the ACK timer).

The 1-RTT keys and packet number space (and a server's 0-RTT keys) are looked up once, when the
path is installed (:class:`Fast`, once the handshake completed): aioquic creates them when it
initializes the connection (a server again for a new first Initial, before any handshake
completed) and never replaces them after (a key update changes the keys inside the same
``CryptoPair``). Relies on aioquic 1.x internals (``receive_datagram``'s body,
``_network_paths``, ``_host_cids``, ``_spaces``, ``_cryptos``, ``_spin_*``, ``_close_at``,
``_idle_timeout``, ``QuicReceiveContext``);
``tests/test_quic_recv.py`` runs every datagram of bulk transfers (lossy, reordered, with a key
update, pings and a second stream) through this and through aioquic's ``receive_datagram`` on a
copy of the connection, and compares the connections' state and events after each.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls as aioquic_tls
from aioquic._crypto import CryptoError
from aioquic.quic.connection import QuicConnectionError, QuicConnectionState, QuicReceiveContext, dump_cid
from aioquic.quic.packet import PACKET_FIXED_BIT, PACKET_SPIN_BIT, decode_packet_number
from aioquic.quic.recovery import MAX_ACK_RANGES

from ._quic_copies import BULK

__all__ = ["Fast", "receive_short", "skip_padding"]

_ONE_RTT = aioquic_tls.Epoch.ONE_RTT
_CONNECTED = QuicConnectionState.CONNECTED


class Fast:
    """What :func:`receive_short` looks up once per connection (module docstring)."""

    __slots__ = ("crypto", "space", "zero_rtt")

    def __init__(self, conn: Any) -> None:
        self.crypto = conn._cryptos[_ONE_RTT]
        self.space = conn._spaces[_ONE_RTT]
        self.zero_rtt = conn._cryptos[aioquic_tls.Epoch.ZERO_RTT]


def receive_short(conn: Any, fast: Fast, data: bytes, addr: Any, now: float) -> bool:
    """aioquic's ``receive_datagram(data, addr, now)`` for a bulk transfer's datagram; ``False``
    (nothing changed) when ``data`` is not one (module docstring): the caller runs aioquic's."""
    if (
        len(data) <= BULK
        or data[0] & 0xC0 != PACKET_FIXED_BIT
        or conn._state is not _CONNECTED
        or conn._quic_logger is not None
        or conn._close_at is None
        or conn._peer_cid.sequence_number is None
    ):
        return False
    paths = conn._network_paths
    if not paths:
        return False
    network_path = paths[0]
    if network_path.addr != addr or not network_path.is_validated:
        return False
    cid_end = 1 + conn._configuration.connection_id_length
    host_cid = data[1:cid_end]
    if host_cid != conn.host_cid:
        return False
    destination_cid_seq = None
    for connection_id in conn._host_cids:
        if host_cid == connection_id.cid:
            destination_cid_seq = connection_id.sequence_number
            break
    if destination_cid_seq is None:
        return False
    recv = fast.crypto.recv
    aead = recv.aead
    if aead is None:
        return False
    space = fast.space
    plain_header, truncated = recv.hp.remove(data, cid_end)
    first_byte = plain_header[0]
    if (first_byte & 4) >> 2 != recv.key_phase or first_byte & 0x18:
        return False  # a key update, or reserved bits set: aioquic's
    pn_length = (first_byte & 0x03) + 1
    packet_number = decode_packet_number(truncated, pn_length * 8, space.expected_packet_number)
    if packet_number in space.received_packets:
        return False  # a duplicate: aioquic drops it
    try:
        plain_payload = aead.decrypt(memoryview(data)[len(plain_header) :], plain_header, packet_number)
    except CryptoError:
        return False  # aioquic drops it
    # from here on, aioquic's receive_datagram for a 1-RTT packet
    if packet_number > space.expected_packet_number:
        space.expected_packet_number = packet_number + 1
    is_client = conn._is_client
    if not is_client and fast.zero_rtt.recv.is_valid():
        fast.zero_rtt.recv.teardown()
    if packet_number > conn._spin_highest_pn:
        spin_bit = bool(first_byte & PACKET_SPIN_BIT)
        conn._spin_bit = not spin_bit if is_client else spin_bit
        conn._spin_highest_pn = packet_number
    context = QuicReceiveContext(
        epoch=_ONE_RTT, host_cid=host_cid, network_path=network_path, quic_logger_frames=None, time=now, version=None
    )
    try:
        is_ack_eliciting, is_probing = conn._payload_received(context, plain_payload, crypto_frame_required=False)
    except QuicConnectionError as exc:
        conn._logger.warning(exc)
        conn.close(error_code=exc.error_code, frame_type=exc.frame_type, reason_phrase=exc.reason_phrase)
    if conn._state is not _CONNECTED or conn._close_pending:
        return True
    conn._close_at = now + conn._idle_timeout()
    conn._ack_eliciting_sent_since_receipt = False
    if not is_client and not is_probing and host_cid != conn.host_cid:
        conn._logger.debug("Peer switching to CID %s (%d)", dump_cid(host_cid), destination_cid_seq)
        conn.host_cid = host_cid
        if network_path.peer_cid is None:
            conn.change_connection_id()
    if network_path not in conn._network_paths:
        conn._add_network_path(network_path)
    idx = conn._network_paths.index(network_path)
    if not is_client and idx and not is_probing and packet_number > space.largest_received_packet:
        conn._logger.debug("Network path %s promoted", network_path.addr)
        conn._network_paths.pop(idx)
        conn._network_paths.insert(0, network_path)
        if network_path.peer_cid is not None:
            conn._use_reserved_peer_cid(network_path)
        if not network_path.is_validated:
            network_path.local_challenge_sent = False
            network_path.validation_deadline = None
    if not space.discarded:
        if packet_number > space.largest_received_packet:
            space.largest_received_packet = packet_number
            space.largest_received_time = now
        space.ack_queue.add(packet_number)
        space.received_packets.add(packet_number)
        if len(space.ack_queue) > MAX_ACK_RANGES:
            space.ack_queue.shift()
        if is_ack_eliciting and space.ack_at is None:
            space.ack_at = now + conn._ack_delay
    return True


def skip_padding(conn: Any, context: Any, frame_type: int, buf: Any) -> None:
    """aioquic's ``_handle_padding_frame`` (``Engine``'s): the PADDING bytes after the frame's
    first skipped at once. aioquic's loops over them one by one in Python: about 2 ms for a 64 KiB
    path MTU probe, which each end receives as the first large datagram, while its sender waits
    for the ACK before sending large datagrams (RFC 9000 14.4)."""
    pos = buf.tell()
    rest = buf.data_slice(pos, buf.capacity)
    buf.seek(pos + len(rest) - len(rest.lstrip(b"\x00")))
    if conn._quic_logger is not None:
        context.quic_logger_frames.append(conn._quic_logger.encode_padding_frame())
