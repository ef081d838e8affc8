"""The sans-io QUIC engine under :mod:`layers.quic`: aioquic's ``QuicConnection`` with this layer's
corrections, and the building of its configuration from our certificate helpers.

Theory of operation: aioquic does all of QUIC (packets, TLS 1.3, loss recovery, congestion
control, flow control, connection IDs) and does no I/O; :mod:`layers._quic_conn` feeds it
datagrams and timer expiries and sends what it produces. What aioquic decides differently from
our stream contract, or does not do, is corrected here, in one subclass, so the rest of the
layer never touches aioquic's private state:

* **Receive windows follow consumption, auto-tuned.** aioquic doubles a stream's receive window
  whenever the peer has sent half of it, and the connection's likewise, whatever the application
  read, so a peer could make us buffer without bound. :class:`Engine` grants a stream
  ``consumed + window`` instead (``consumed`` being what the application took from our
  :class:`~layers._quic_stream.QuicStream`), and the connection ``consumed + window`` over all its
  streams, so an unread stream holds at most its window, as an HTTP/2 stream does, and the whole
  connection at most the connection's. A window is doubled, up to ``max_stream_window`` /
  ``max_connection_window``, when its previous update went out less than :data:`TUNE_RTTS` round
  trips before (the reader took half a window in that time, so the window, not the reader, holds
  the transfer back: quiche's and Chromium's rule); a slow or idle reader keeps the initial one.
* **Knobs aioquic has no setting for**: the number of streams a peer may open at once
  (``max_streams``; aioquic grants one more per finished stream, RFC 9000 4.6) and a view of how
  much of a stream's committed data has not yet left (``unsent``), which bounds what a sender
  commits beyond what the network took.
* **Path MTU discovery** (:mod:`layers._quic_pmtu` has the search and the route's MTU): the
  probes (one 1-RTT packet of PING and PADDING of exactly the size tried, RFC 9000 14.4), the
  raising of the datagram size once one is acknowledged (aioquic's congestion controller and pacer
  count in the new size; RFC 9002 7.2's initial window follows it), :class:`Recovery`, for which a
  lost probe is no congestion signal, our ``max_udp_payload_size`` transport parameter (aioquic
  sends none) and the peer's read (aioquic checks it, keeps nothing), and STREAM frames with a
  4-byte length in datagrams over 16 KiB (aioquic writes 2 bytes: at most 16383 bytes a frame).
  A probe may go while the window is still the initial one if it fits the initial window of its
  own size (RFC 9002 7.2: two such datagrams), so a sender that starts at once does not send
  several round trips of small packets first.
* **Bulk sending** (datagrams over 16 KiB): the few-byte tail a 64 KiB write leaves after a full
  datagram is held back (``cork``/``held``) while :class:`~layers._quic_conn.QuicConnection`'s
  driver lets the writer commit more (a third of the datagrams were such tails); a bulk stream's
  send buffer and the 1-RTT header protection copy less (:mod:`layers._quic_copies`). When the
  only thing to send is one bulk stream's data, ``_write_application`` builds its packets itself
  (:func:`~layers._quic_bulk.write_bulk`: aioquic's packets byte for byte, without its packet
  builder's per-packet Python and copies), and a received 1-RTT payload of one STREAM frame goes
  to aioquic's ``_handle_stream_frame`` without ``_payload_received``'s frame loop and its copy
  (:func:`~layers._quic_bulk.stream_payload`), a large 1-RTT datagram of the active path
  without aioquic's ``receive_datagram`` (:func:`~layers._quic_recv.receive_short`: aioquic's
  state changes, statement for statement); anything else stays aioquic's. PADDING is skipped at
  once (aioquic loops over it byte by byte: ~2 ms per 64 KiB path MTU probe).
* **ACKs in slow start**: for the first :data:`QUICK_ACKS` packets received (and the first
  :data:`QUICK_ACK_BYTES` of stream data), an ACK is due at once after two packets (RFC 9000
  13.2.2; Linux's quick ACKs) rather than after aioquic's ack delay (1 ms, a millisecond or two
  on trio's clock, added to every round trip the window needs to grow); then aioquic's delayed
  ACKs (fewer ACKs for the sender to process). A datagram larger than any received before (the
  peer's path MTU probe, whose sender waits for its ACK to send larger ones) is acknowledged at
  once too.
* **Pacing** (:class:`Pacer`): bursts of two milliseconds of the pacing rate, as quinn does, so
  a sender woken by trio's millisecond clock can keep its own rate; the rate 1.25 times the
  window per round trip (RFC 9002 7.7), twice it in slow start (Linux TCP's ratios; aioquic: 1).

All of this reads attributes of aioquic 1.x (``_streams``, ``_local_max_streams_bidi``,
``_loss``, ``_max_datagram_size`` ...): the dependency is pinned to ``aioquic>=1.2,<2`` and
``tests/test_quic.py``, ``tests/test_quic_pmtu.py``, ``tests/test_quic_bulk.py`` (the bulk
path against aioquic's own packet builder, byte for byte) and ``tests/test_quic_recv.py`` (the
receive path against aioquic's ``receive_datagram`` on a twin connection) exercise each of them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aioquic import tls as aioquic_tls
from aioquic._buffer import Buffer
from aioquic.buffer import size_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
)
from aioquic.quic.packet import QuicFrameType, QuicPacketType, pull_quic_transport_parameters
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilderStop
from aioquic.quic.recovery import K_MICRO_SECOND, K_SECOND, QuicPacketPacer, QuicPacketRecovery
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates

from ._quic_bulk import bulk_ready, stream_payload, write_bulk
from ._quic_copies import BULK, SendBuffer, lighten_header_protection, prime_heap
from ._quic_pmtu import PEER_DEFAULT, Search
from ._quic_recv import Fast, receive_short, skip_padding

__all__ = ["Engine", "client_configuration", "server_configuration"]

TUNE_RTTS = 2
"""A receive window is doubled when its previous update was granted less than this many round
trips ago (quiche's and Chromium's rule)."""

PACING_BURST = 0.002
"""Seconds of the pacing rate one burst may send (:class:`Pacer`)."""

PACING_MAX_BURST = 256
"""At most this many datagrams in one paced burst."""

PACING_GAIN = 1.25
"""The pacing rate is this times the congestion window per smoothed round trip (RFC 9002 7.7's
N; aioquic paces at 1, which the RFC says can leave the window unused when round trips vary)."""

PACING_GAIN_SS = 2.0
"""The same in slow start (Linux TCP's ``pacing_ss_ratio``): the window doubles each round trip,
so pacing at 1.25 would hold the sender below the window it has."""


QUICK_ACKS = 256
"""The first packets a connection receives are acknowledged every two (:meth:`Engine.receive_batch`):
the first round trips of slow start at 1350 bytes."""

QUICK_ACK_BYTES = 1024 * 1024
"""... as long as fewer stream bytes than this arrived: at 64 KiB datagrams 256 packets were 16 MiB,
half of a 32 MiB transfer acknowledged every two datagrams (an ACK built by the receiver and
processed by the sender each time, where the window had long outgrown the path's round trip)."""


def initial_window(size: int) -> int:
    """The initial congestion window for datagrams of ``size`` bytes (RFC 9002 7.2)."""
    return min(10 * size, max(14720, 2 * size))


class Pacer(QuicPacketPacer):
    """aioquic's pacer with bursts of at least :data:`PACING_BURST` seconds of its rate.

    aioquic lets a burst be 16 datagrams at most; but a paced sender sleeps on trio's clock,
    whose wakeups come a millisecond apart at best (epoll's timeout is whole milliseconds), so
    once 16 datagrams take less than that to send at the pacing rate (1350-byte datagrams above
    about 20 MB/s) the sender sends below its own rate, whatever the congestion window. As
    quinn's pacer does, a burst may carry two milliseconds of the rate (at most
    :data:`PACING_MAX_BURST` datagrams), so each wakeup sends what the rate allows since the last.
    """

    cc: Any = None
    """The congestion controller (set by :class:`Recovery`): slow start paces faster."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        # aioquic's formula (recovery.QuicPacketPacer) times PACING_GAIN, the burst at least
        # PACING_BURST
        cc = self.cc
        gain = PACING_GAIN_SS if cc is None or cc.ssthresh is None or congestion_window < cc.ssthresh else PACING_GAIN
        rate = gain * congestion_window / max(smoothed_rtt, K_MICRO_SECOND)
        size = self._max_datagram_size
        self.packet_time = packet_time = max(K_MICRO_SECOND, min(size / rate, K_SECOND))
        bucket_max = max(2 * size, min(congestion_window // 4, 16 * size)) / rate
        self.bucket_max = bucket_max = max(bucket_max, min(PACING_BURST, PACING_MAX_BURST * packet_time))
        if self.bucket_time > bucket_max:
            self.bucket_time = bucket_max


class Recovery(QuicPacketRecovery):
    """aioquic's loss recovery, for which a lost path MTU probe is no congestion signal
    (RFC 9000 14.4): its bytes leave the bytes in flight, the window stays."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pacer = Pacer(max_datagram_size=kwargs["max_datagram_size"])
        self._pacer.cc = self._cc
        self.probes: set[int] = set()
        """Packet numbers of the path MTU probes in flight."""

    def track_probe(self, number: int) -> None:
        """Packet ``number`` is a path MTU probe (until :meth:`forget_probe`)."""
        self.probes.add(number)
        self.__dict__["_on_packets_lost"] = self._on_packets_lost_probing

    def forget_probe(self, number: int) -> None:
        self.probes.discard(number)
        if not self.probes:
            self.__dict__.pop("_on_packets_lost", None)

    def _on_packets_lost_probing(self, *, packets: Any, space: Any, now: float, **kwargs: Any) -> None:
        """``_on_packets_lost`` while probes are in flight (only then: aioquic calls it for
        every ACK)."""
        packets = list(packets)
        lost = {p.packet_number for p in packets} & self.probes
        if lost:
            for number in lost:
                self.forget_probe(number)
            QuicPacketRecovery._on_packets_lost(
                self,
                packets=[p for p in packets if p.packet_number in lost],
                space=space,
                now=now,
                congestion_event=False,
            )
            packets = [p for p in packets if p.packet_number not in lost]
        QuicPacketRecovery._on_packets_lost(self, packets=packets, space=space, now=now, **kwargs)


_BIG_FRAMES = 16383 - 64
"""Above this datagram size STREAM frames carry a 4-byte length (aioquic writes 2 bytes)."""


class Engine(QuicConnection):
    """aioquic's connection with receive windows that follow consumption (module docstring).

    ``buffered(stream_id)`` is a callback giving how many bytes of that stream were delivered
    by aioquic and not yet taken by the application (set by the connection that owns this).
    """

    buffered: Callable[[int], int] = staticmethod(lambda stream_id: 0)
    buffered_total: Callable[[], int] = staticmethod(lambda: 0)
    """How many bytes of all streams were delivered and not yet taken (set like ``buffered``)."""
    stream_window: int = 1024 * 1024
    """A stream's initial receive window (each stream's own, once grown: ``recv_window``)."""
    max_stream_window: int = 16 * 1024 * 1024
    max_connection_window: int = 32 * 1024 * 1024

    sends_buffers = False
    """``datagrams_to_send`` may return a bulk packet as the ``bytearray`` it was encrypted into
    (:mod:`layers._quic_bulk`) rather than as ``bytes`` (aioquic's type: ``receive_datagram``
    takes no ``bytearray``): set by a driver that only hands them to ``sendto``."""

    max_udp_payload = 65507
    """The largest datagram we receive (our UDP sockets' buffer), announced to the peer as the
    ``max_udp_payload_size`` transport parameter."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self._configuration
        self._loss = self._recovery = Recovery(
            congestion_control_algorithm=config.congestion_control_algorithm,
            initial_rtt=config.initial_rtt,
            max_datagram_size=self._max_datagram_size,
            peer_completed_address_validation=not self._is_client,
            quic_logger=self._quic_logger,
            send_probe=self._send_probe,
            logger=self._logger,
        )
        self.pmtu: Search | None = None
        """The path MTU search while one runs (:meth:`start_pmtud`)."""
        self.peer_max_udp_payload = PEER_DEFAULT
        self._probing = 0
        self.connection_window = int(config.max_data)
        """The connection's receive window now (auto-tuned up to ``max_connection_window``)."""
        self._connection_window_at: float | None = None
        self._reads = False
        self._now = 0.0
        self._unacked = 0
        self.cork = True
        """Hold back the small tail of a stream that has no FIN yet, once datagrams are large
        (a writer of 64 KiB chunks would otherwise send a full datagram and a few-byte one for
        each): the driver sends it when the writer commits nothing more (``held``)."""
        self.held = False
        """A stream's small tail was held back by the last ``datagrams_to_send``."""
        self._plain: bytearray | None = None
        self._largest_datagram = 1200  # the largest datagram received (RFC 9000 14.1: at least 1200)
        self._bulk = False
        """A stream of this connection took a :class:`~layers._quic_copies.SendBuffer` (only then
        may ``_write_application`` find a bulk stream: :func:`~layers._quic_bulk.bulk_ready`)."""
        self._fast: Fast | None = None
        """A bulk receiver's 1-RTT datagrams go to :func:`~layers._quic_recv.receive_short` (set
        with ``_payload_received_bulk``, once a datagram over :data:`_BIG_FRAMES` bytes came)."""

    # ---- path MTU discovery (layers._quic_pmtu) ----------------------------------------------

    @property
    def datagram_size(self) -> int:
        """The largest datagram sent now (the safe size until path MTU discovery raised it)."""
        return int(self._max_datagram_size)

    def start_pmtud(self, route: int | None, limit: int) -> None:
        """Search for a larger datagram size, up to the smallest of ``route`` (the local route's
        payload; ``None``: unknown, no search), ``limit`` and the peer's max_udp_payload_size."""
        if route is None:
            return
        top = min(route, limit, self.peer_max_udp_payload)
        if top > _BIG_FRAMES:
            prime_heap()  # datagrams of 64 KiB may come and go, both ways (layers._quic_copies)
        if top > self._max_datagram_size:
            self.pmtu = Search(self._max_datagram_size, top)
            self._install("datagrams_to_send", self._datagrams_to_send_probing)

    def _install(self, name: str, method: Callable[..., Any] | None) -> None:
        """Shadow aioquic's method ``name`` on this connection only (``None``: stop): what only a
        path MTU search or large datagrams need costs the other connections nothing per packet."""
        if method is None:
            self.__dict__.pop(name, None)
        else:
            self.__dict__[name] = method

    def _datagrams_to_send_probing(self, now: float) -> list[tuple[bytes, Any]]:
        """``datagrams_to_send`` while a path MTU search runs: a probe first when one is due."""
        pmtu = self.pmtu
        # (a server's HANDSHAKE_DONE first: a probe filling the window would hold it back a round trip)
        confirmed = self._handshake_confirmed and not self._handshake_done_pending
        if pmtu is not None and confirmed and not self._close_pending:
            size = pmtu.next_probe()
            loss = self._loss
            # within the congestion window, or alone in flight (an endpoint that mostly receives
            # never has the window for it; one packet, as a loss-recovery probe would be); in
            # slow start before any loss, within the initial window the probe's size would have
            # (RFC 9002 7.2: two datagrams of that size): a sender that starts at once would
            # otherwise wait several round trips of small packets for a window of 64 KiB
            if size is not None:
                window = loss.congestion_window
                if loss._cc.ssthresh is None:
                    window = max(window, initial_window(size))
                if window - loss.bytes_in_flight >= size or not loss.bytes_in_flight:
                    return self._send_probe_of(size, now) + QuicConnection.datagrams_to_send(self, now=now)
        return QuicConnection.datagrams_to_send(self, now=now)

    def _send_probe_of(self, size: int, now: float) -> list[tuple[bytes, Any]]:
        assert self.pmtu is not None
        # aioquic lets a probe (_probe_pending) fill a whole datagram whatever the window says
        saved = self._max_datagram_size, self._probe_pending
        self._max_datagram_size, self._probe_pending, self._probing = size, True, size
        self._install("_write_application", self._write_probe)
        number = self._packet_number
        try:
            out = QuicConnection.datagrams_to_send(self, now=now)
        finally:
            (self._max_datagram_size, self._probe_pending), self._probing = saved, 0
            self._install("_write_application", None)
        if self._packet_number != number:
            if len(out[0][0]) == size:
                self._recovery.track_probe(number)
                self.pmtu.sent()
            else:  # not a probe of that size after all (nothing to learn from it)
                self._logger.debug("path MTU: a probe of %d bytes came out at %d", size, len(out[0][0]))
                self._end_search()
        return out

    def _write_probe(self, builder: Any, network_path: Any, now: float) -> None:
        """``_write_application`` while a probe is built: one 1-RTT packet of exactly the size
        tried, PING and PADDING (RFC 9000 14.4)."""
        size = self._probing
        builder.start_packet(QuicPacketType.ONE_RTT, self._cryptos[aioquic_tls.Epoch.ONE_RTT])
        builder.start_frame(
            QuicFrameType.PING, handler=self._on_probe_delivery, handler_args=(size, builder.packet_number)
        )
        pad = builder.remaining_flight_space
        if pad > 0:
            builder.start_frame(QuicFrameType.PADDING, capacity=pad).push_bytes(bytes(pad - 1))
        raise QuicPacketBuilderStop

    def _on_probe_delivery(self, delivery: QuicDeliveryState, size: int, number: int) -> None:
        pmtu = self.pmtu
        if pmtu is None:
            return
        if delivery == QuicDeliveryState.ACKED:
            self._recovery.forget_probe(number)
            pmtu.acked(size)
            if pmtu.current > self._max_datagram_size:
                self._set_datagram_size(pmtu.current)
        else:
            pmtu.lost(size)
        if pmtu.done:
            self._end_search()

    def _end_search(self) -> None:
        self.pmtu = None
        self._install("datagrams_to_send", None)

    def _set_datagram_size(self, size: int) -> None:
        """Send datagrams of up to ``size`` bytes from now on; the congestion controller and the
        pacer count in the new size (RFC 9002 7.2: the initial window follows it)."""
        self._logger.debug("path MTU: datagrams of %d bytes", size)
        self._max_datagram_size = size
        self._install("_write_stream_frame", self._write_big_stream_frame if size > _BIG_FRAMES else None)
        loss = self._loss
        loss._pacer._max_datagram_size = size
        cc: Any = loss._cc
        cc._max_datagram_size = size
        if hasattr(cc, "additive_increase_factor"):  # cubic
            cc.additive_increase_factor = size
        initial = initial_window(size)
        if cc.ssthresh is None and cc.congestion_window < initial:
            cc.congestion_window = initial
        if loss._rtt_initialized:
            loss._pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=loss._rtt_smoothed)

    _handle_padding_frame = skip_padding  # (layers._quic_recv: aioquic's loops in Python over each byte)

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        size = pull_quic_transport_parameters(Buffer(data=data)).max_udp_payload_size
        if size is not None:
            self.peer_max_udp_payload = size

    def _serialize_transport_parameters(self) -> bytes:
        # aioquic announces no max_udp_payload_size (the default, 65527, is more than an IPv4
        # socket of ours takes): one more parameter at the end (RFC 9000 18: id, length, value)
        value = Buffer(capacity=8)
        value.push_uint_var(self.max_udp_payload)
        extra = Buffer(capacity=16)
        extra.push_uint_var(0x03)
        extra.push_uint_var(value.tell())
        extra.push_bytes(value.data)
        return super()._serialize_transport_parameters() + extra.data

    def _write_big_stream_frame(self, builder: Any, space: Any, stream: Any, max_offset: int) -> int:
        """``_write_stream_frame`` once datagrams are over :data:`_BIG_FRAMES` bytes."""
        # aioquic writes a STREAM frame's length in 2 bytes (at most 16383 bytes of data): in a
        # larger datagram the frame fills it with a 4-byte length
        sender = stream.sender
        offset = sender.next_offset
        if (
            self.cork
            and sender._buffer_fin is None
            and 0 < 2 * (sender._buffer_stop - offset) < builder.remaining_flight_space
            and builder.packet_is_empty
        ):
            # the tail of what the writer committed so far, alone in a packet of its own: held
            # back while the driver lets the writer commit more (QuicConnection.drive)
            self.held = True
            return 0
        overhead = 5 + size_uint_var(stream.stream_id) + (size_uint_var(offset) if offset else 0)
        previous = sender.highest_offset
        frame = sender.get_frame(builder.remaining_flight_space - overhead, max_offset)
        if frame is None:
            return 0
        frame_type = QuicFrameType.STREAM_BASE | 2
        if frame.offset:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        buf = builder.start_frame(
            frame_type,
            capacity=overhead,
            handler=sender.on_data_delivery,
            handler_args=(frame.offset, frame.offset + len(frame.data), frame.fin),
        )
        buf.push_uint_var(stream.stream_id)
        if frame.offset:
            buf.push_uint_var(frame.offset)
        buf.push_uint32(len(frame.data) | 0x80000000)
        buf.push_bytes(frame.data)
        if self._quic_logger is not None:
            builder.quic_logger_frames.append(self._quic_logger.encode_stream_frame(frame, stream_id=stream.stream_id))
        return int(sender.highest_offset - previous)

    def receive_batch(self, datagrams: Sequence[Any], now: float) -> None:
        """``receive_datagram`` for each of these ``(data, address)`` pairs, then an ACK due
        at once rather than after aioquic's ack delay once two packets wait for
        one (RFC 9000 13.2.2: after at least two ack-eliciting packets)."""
        space = self._spaces.get(aioquic_tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is None:
            self._unacked = 0
        largest = self._largest_datagram
        fast = self._fast
        for data, address in datagrams:
            if fast is None or not receive_short(self, fast, data, address, now):
                self.receive_datagram(data, address, now=now)
            if len(data) > largest:
                largest = len(data)
        if space is not None and space.ack_at is not None and space.ack_at > now:
            if largest > self._largest_datagram:
                # larger than any before: the peer's path MTU probe (or its first datagram of a
                # size it just learnt), whose ACK it waits for to send larger: acknowledged at once
                space.ack_at = now
            elif space.largest_received_packet < QUICK_ACKS and self._local_max_data.used < QUICK_ACK_BYTES:
                self._unacked += len(datagrams)
                if self._unacked >= 2:
                    space.ack_at = now
        if largest > self._largest_datagram:
            if largest > _BIG_FRAMES >= self._largest_datagram:
                self._install("_payload_received", self._payload_received_bulk)
            self._largest_datagram = largest
        if fast is None and largest > _BIG_FRAMES and self._handshake_complete:
            self._fast = Fast(self)  # (the 1-RTT space and keys are final once the handshake completed)

    def lighten_crypto(self) -> None:
        """Our header protection on the 1-RTT keys, once the handshake completed
        (:mod:`layers._quic_copies`)."""
        pair = self._cryptos.get(aioquic_tls.Epoch.ONE_RTT)
        if pair is not None:
            lighten_header_protection((pair.send, pair.recv))

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        QuicConnection.send_stream_data(self, stream_id, data, end_stream)
        if len(data) >= BULK:  # a bulk stream: our send buffer (layers._quic_copies)
            SendBuffer.install(self._streams[stream_id].sender)
            self._bulk = True

    def set_max_streams(self, bidi: int, uni: int) -> None:
        """How many streams of each kind the peer may have open at once (before the handshake)."""
        self._local_max_streams_bidi.value = bidi
        self._local_max_streams_bidi.sent = bidi
        self._local_max_streams_uni.value = uni
        self._local_max_streams_uni.sent = uni

    def unsent(self, stream_id: int) -> int:
        """Bytes committed on ``stream_id`` that have not been sent once yet (0 for a stream that
        is gone or was reset)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    # ---- receive windows: credit follows consumption, auto-tuned -----------------------------

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        self._now = now  # the window auto-tuning's clock (aioquic passes no time further down)
        if self._bulk and self._max_datagram_size > _BIG_FRAMES:  # a bulk stream's packets: ours (layers._quic_bulk)
            stream = bulk_ready(self, builder, network_path, now)
            if stream is not None and write_bulk(self, builder, stream, now):
                return
        QuicConnection._write_application(self, builder, network_path, now)

    def _payload_received_bulk(
        self, context: Any, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        """``_payload_received`` once a datagram over :data:`_BIG_FRAMES` bytes came
        (:meth:`receive_batch` installs it): a payload of one big STREAM frame goes without
        aioquic's frame loop (:func:`~layers._quic_bulk.stream_payload`)."""
        if (
            len(plain) > BULK
            and context.epoch == aioquic_tls.Epoch.ONE_RTT
            and not crypto_frame_required
            and self._quic_logger is None
            and stream_payload(self, context, plain)
        ):
            return True, False  # ack-eliciting, not probing
        return QuicConnection._payload_received(self, context, plain, crypto_frame_required)

    def bulk_plain(self, size: int) -> bytearray:
        """The plaintext buffer :func:`~layers._quic_bulk.write_bulk` reuses (``size`` bytes)."""
        plain = self._plain
        if plain is None or len(plain) < size:
            plain = self._plain = bytearray(size)
        return plain

    def limits_quiet(self) -> bool:
        """Whether :meth:`_write_connection_limits` and :meth:`_write_stream_limits` would write
        nothing and change nothing in a packet built now (:func:`~layers._quic_bulk.bulk_ready`)."""
        limit = self._local_max_data
        if self._reads or limit.value - limit.used < self.connection_window // 4:
            return False
        for lim in (limit, self._local_max_streams_bidi, self._local_max_streams_uni):
            if lim.value != lim.sent and (lim is limit or lim.sent - lim.used < lim.value - lim.sent):
                return False
        for stream in self._streams.values():
            local = stream.max_stream_data_local
            if local and (
                2 * stream.receiver.starting_offset() >= local
                or (stream.max_stream_data_local_sent != local and not stream.receiver.is_finished)
            ):
                return False
        return True

    def _grown(self, window: int, cap: int, last: float | None) -> int:
        """``window``, doubled (up to ``cap``) when the previous update of it was granted less
        than :data:`TUNE_RTTS` round trips ago: the reader consumes it faster than the peer can
        be told, so the window, not the reader, is what limits the transfer."""
        if last is None or window >= cap:
            return window
        loss = self._loss
        rtt = loss._rtt_smoothed if loss._rtt_initialized else self._configuration.initial_rtt
        if self._now - last < TUNE_RTTS * rtt:
            return min(2 * window, cap)
        return window

    def _regrant(
        self, consumed: int, window: int, granted: int, cap: int, last: float | None, what: int | str
    ) -> tuple[int, int]:
        """The limit to grant and the window, for a receive window (``what``: a stream id or
        ``"connection"``) of which ``consumed`` bytes were taken, ``granted`` being the limit the
        peer has: ``(granted, window)`` while less than half a window is to be granted, else
        ``consumed + window`` with the window grown first when the last update was recent
        (:meth:`_grown`, its last update at ``last``, at most ``cap``)."""
        if consumed + window - granted < window // 2:
            return granted, window
        grown = self._grown(window, cap, last)
        if grown != window:
            self._logger.debug("%s receive window grown to %d", f"stream {what}" if type(what) is int else what, grown)
        return consumed + grown, grown

    def credit_due(self, stream_id: int) -> bool:
        """Whether the application consumed enough of ``stream_id`` (or of the connection) for
        a window update to be worth sending (half a window)."""
        self._reads = True
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return self._connection_credit_due()
        window = getattr(stream, "recv_window", self.stream_window)
        consumed = stream.receiver.starting_offset() - self.buffered(stream_id)
        return consumed + window - stream.max_stream_data_local_sent >= window // 2 or self._connection_credit_due()

    def _connection_consumed(self) -> int:
        """Bytes of the whole connection the application consumed (or that were discarded)."""
        undelivered = 0
        for stream in self._streams.values():
            receiver = stream.receiver
            undelivered += receiver.highest_offset - receiver.starting_offset()
        return int(self._local_max_data.used - undelivered - self.buffered_total())

    def _connection_credit_due(self) -> bool:
        limit = self._local_max_data
        window = self.connection_window
        if limit.used + window - limit.sent < window // 2:
            return False  # not even if everything received was consumed
        return self._connection_consumed() + window - limit.sent >= window // 2

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        # aioquic doubles MAX_DATA once half of it was received, read or not: ours grants
        # consumed + window, the window auto-tuned (credit_due), computed after a read, or while
        # the peer has under a quarter window of credit left (bytes that arrived on a stream
        # nobody reads any more, after STOP_SENDING, count as consumed without a read)
        limit = self._local_max_data
        window = self.connection_window
        if self._reads or limit.value - limit.used < window // 4:
            self._reads = False
            if limit.used + window - limit.value >= window // 2:
                value, grown = self._regrant(
                    self._connection_consumed(), window, limit.value, self.max_connection_window,
                    self._connection_window_at, "connection",
                )  # fmt: skip
                if value != limit.value:
                    self._connection_window_at = self._now
                    self.connection_window = grown
                    limit.value = value
        for lim in (limit, self._local_max_streams_bidi, self._local_max_streams_uni):
            if lim is not limit and lim.sent - lim.used >= lim.value - lim.sent:
                continue  # aioquic's batching of MAX_STREAMS
            if lim.value != lim.sent:
                buf = builder.start_frame(
                    lim.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(lim,),
                )
                buf.push_uint_var(lim.value)
                lim.sent = lim.value
                if self._quic_logger is not None:
                    builder.quic_logger_frames.append(
                        self._quic_logger.encode_connection_limit_frame(frame_type=lim.frame_type, maximum=lim.value)
                    )

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream in every packet it builds: the common case (nothing
        # due) costs two comparisons, without looking up the stream's window nor asking the
        # connection what the stream buffers. An update is due once local - consumed <= window / 2,
        # and window <= local (local = consumed then + window), so not before 2 * delivered >= local
        local = stream.max_stream_data_local
        if not local:
            return
        receiver = stream.receiver
        delivered = receiver.starting_offset()
        if 2 * delivered < local:
            pass
        elif (
            delivered + (window := getattr(stream, "recv_window", self.stream_window)) - local >= window // 2
            and not receiver.is_finished
        ):
            # the most the target can be (nothing buffered) would be due: count what is
            # (getattr and setattr: reading a stream's __dict__ would make CPython build one for
            # an object that keeps its attributes inline, slowing all of them down)
            value, grown = self._regrant(
                delivered - self.buffered(stream.stream_id), window, local, self.max_stream_window,
                getattr(stream, "recv_window_at", None), stream.stream_id,
            )  # fmt: skip
            if value != local:
                stream.recv_window_at = self._now
                if grown != window:
                    stream.recv_window = grown
                stream.max_stream_data_local = local = value
        if stream.max_stream_data_local_sent != local and not receiver.is_finished:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def _pem_of(obj: Any, attr: str) -> bytes | None:
    value = getattr(obj, attr, None)
    return value if isinstance(value, bytes) else None


def _load_cert(config: QuicConfiguration, cert: Any) -> None:
    """``cert``: a ``(certfile, keyfile)`` pair of PEM files, or an object with ``cert_pem`` and
    ``key_pem`` (:class:`layers.certs.Leaf`)."""
    chain_pem, key_pem = _pem_of(cert, "cert_pem"), _pem_of(cert, "key_pem")
    if chain_pem is not None and key_pem is not None:
        chain = load_pem_x509_certificates(chain_pem)
        config.certificate = chain[0]
        config.certificate_chain = chain[1:]
        config.private_key = load_pem_private_key(key_pem)
        return
    if isinstance(cert, tuple) and len(cert) == 2:
        config.load_cert_chain(os.fspath(cert[0]), os.fspath(cert[1]))
        return
    raise TypeError(
        "a QUIC certificate is a (certfile, keyfile) pair of PEM files or an object with cert_pem and "
        f"key_pem (layers.certs.Leaf), not {type(cert).__name__}"
    )


def _load_trust(config: QuicConfiguration, ca: Any) -> None:
    """``ca``: a PEM file or directory, PEM text or bytes, or an object with ``cert_pem``
    (:class:`layers.certs.CA`)."""
    pem = _pem_of(ca, "cert_pem")
    if pem is not None:
        config.load_verify_locations(cadata=pem)
    elif isinstance(ca, bytes):
        config.load_verify_locations(cadata=ca)
    elif isinstance(ca, str) and ca.lstrip().startswith("-----BEGIN"):
        config.load_verify_locations(cadata=ca.encode("ascii"))
    elif isinstance(ca, (str, os.PathLike)):
        path = os.fspath(ca)
        if os.path.isdir(path):
            config.load_verify_locations(capath=path)
        else:
            config.load_verify_locations(cafile=path)
    else:
        raise TypeError(f"ca is a PEM file or directory, PEM text, or an object with cert_pem, not {type(ca).__name__}")


def _base(
    alpn: Sequence[str],
    *,
    is_client: bool,
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    if not alpn:
        raise ValueError("QUIC needs ALPN (RFC 9001 8.1): give alpn=[...], e.g. ['h3']")
    return QuicConfiguration(
        alpn_protocols=list(alpn),
        is_client=is_client,
        idle_timeout=idle_timeout,
        max_stream_data=stream_window,
        max_data=max_data,
        max_datagram_size=datagram_size,
    )


def client_configuration(
    *,
    alpn: Sequence[str],
    server_name: str | None,
    verify: bool,
    ca: Any,
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    """The configuration of one client connection (verification on unless ``verify=False``)."""
    config = _base(
        alpn,
        is_client=True,
        idle_timeout=idle_timeout,
        stream_window=stream_window,
        max_data=max_data,
        datagram_size=datagram_size,
    )
    config.server_name = server_name
    if not verify:
        config.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        _load_trust(config, ca)
    return config


def server_configuration(
    cert: Any,
    *,
    alpn: Sequence[str],
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    """The configuration every connection of one listener shares (one certificate)."""
    config = _base(
        alpn,
        is_client=False,
        idle_timeout=idle_timeout,
        stream_window=stream_window,
        max_data=max_data,
        datagram_size=datagram_size,
    )
    _load_cert(config, cert)
    return config
