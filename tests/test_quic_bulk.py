"""layers._quic_bulk: the packets our bulk path builds are aioquic's, byte for byte, and a bulk
transfer through them arrives whole, with losses and with control frames coming due midway.

Theory of operation: a client and a server ``Engine`` run in memory on a virtual clock (as in
tests/test_quic_window.py), both at 64 KiB datagrams as path MTU discovery leaves them on
loopback. The client sends random bytes on one stream; every datagram that came out of
:func:`layers._quic_bulk.write_bulk` (a ``bytearray``: aioquic's are ``bytes``) is rebuilt by
aioquic's own ``QuicPacketBuilder`` from the packet's number and frame (its delivery handler's
range) and must come out identical, with the same ``QuicSentPacket`` fields. Dropping every
n-th client datagram makes aioquic retransmit from the pending ranges the bulk path takes
frames from; pings, a second stream and key updates midway make the bulk path hand calls back
to aioquic. The server's application reads everything at once.
"""

from __future__ import annotations

import heapq
import os
from typing import Any

import pytest
from aioquic import tls as aioquic_tls
from aioquic.quic import events as qe
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder

from layers import _quic_bulk, _quic_copies
from layers import _quic_engine as engine_module
from layers._quic_engine import Engine, client_configuration, server_configuration
from layers._quic_pmtu import Search
from layers.certs import CA, Leaf

pytestmark = pytest.mark.skipif(not _quic_copies.PYTHON_HP, reason="aioquic's header protection is not Python here")

ONE_WAY = 0.001
ADDR_C, ADDR_S = ("10.0.0.1", 1111), ("10.0.0.2", 4433)
BIG = 65507
ONE_RTT = aioquic_tls.Epoch.ONE_RTT


class Pair:
    def __init__(self, ca: CA, leaf: Leaf, drop_every: int = 0, buffers: bool = True) -> None:
        common: dict[str, Any] = {"alpn": ["bulk"], "idle_timeout": 60.0, "stream_window": 4 << 20, "max_data": 8 << 20}
        cconf = client_configuration(server_name="localhost", verify=True, ca=ca, **common)
        self.sconf = server_configuration(leaf, **common)
        self.client = Engine(configuration=cconf)
        self.client.sends_buffers = buffers  # bulk datagrams as the bytearray encrypted into: told apart
        self.server: Engine | None = None
        self.now = 0.0
        self.wire: list[tuple[float, int, bool, bytes]] = []
        self.seq = 0
        self.sent = 0
        self.drop_every = drop_every
        self.received: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.bulk_datagrams = 0
        self.checked = 0
        self.types: set[type] = set()
        self.resent = 0  # bulk packets carrying bytes sent before (a retransmission)
        self.highest: dict[int, int] = {}
        self.client.connect(ADDR_S, now=0.0)

    def _send(self, engine: Engine, to_server: bool) -> None:
        out: list[tuple[Any, Any]] = list(engine.datagrams_to_send(self.now))
        if to_server and any(type(data) is bytearray for data, _ in out):
            self._check_against_aioquic(engine, [data for data, _ in out])
        for data, _ in out:
            if to_server:
                self.sent += 1
                if self.drop_every and self.sent % self.drop_every == 0:
                    continue
            self.seq += 1
            heapq.heappush(self.wire, (self.now + ONE_WAY, self.seq, to_server, bytes(data)))
            self.types.add(type(data))

    def _check_against_aioquic(self, engine: Engine, datagrams: list[Any]) -> None:
        """Each datagram the bulk path built is what aioquic's builder builds from its frame."""
        space = engine._spaces[ONE_RTT]
        packets = list(space.sent_packets.values())[-len(datagrams) :]
        assert len(packets) == len(datagrams)
        for datagram, packet in zip(datagrams, packets, strict=True):
            if type(datagram) is not bytearray:
                continue
            self.bulk_datagrams += 1
            (handler, (start, stop, fin)), *rest = packet.delivery_handlers
            assert not rest
            stream = getattr(handler, "__self__", None)
            sid = int(next(s.stream_id for s in engine._streams.values() if s.sender is stream))  # type: ignore[arg-type]
            builder = QuicPacketBuilder(
                host_cid=engine.host_cid,
                is_client=True,
                max_datagram_size=engine._max_datagram_size,
                packet_number=packet.packet_number,
                peer_cid=engine._peer_cid.cid,
                spin_bit=engine._spin_bit,
                version=int(engine._version),  # type: ignore[arg-type]
            )
            builder.start_packet(QuicPacketType.ONE_RTT, engine._cryptos[ONE_RTT])
            frame_type = 0x0A | (4 if start else 0) | (1 if fin else 0)
            buf = builder.start_frame(frame_type, capacity=8, handler=handler, handler_args=(start, stop, fin))
            buf.push_uint_var(sid)
            if start:
                buf.push_uint_var(start)
            buf.push_uint32((stop - start) | 0x80000000)
            buf.push_bytes(self.payload[sid][start:stop])
            theirs, their_packets = builder.flush()
            assert theirs == [bytes(datagram)]
            expected = their_packets[0]
            for name in ("epoch", "in_flight", "is_ack_eliciting", "is_crypto_packet", "packet_type", "sent_bytes"):
                assert getattr(packet, name) == getattr(expected, name), name
            assert packet.delivery_handlers == expected.delivery_handlers
            self.checked += 1
            if start < self.highest.get(sid, 0):
                self.resent += 1
            self.highest[sid] = max(stop, self.highest.get(sid, 0))

    def _deliver(self, data: bytes, to_server: bool) -> None:
        if to_server:
            if self.server is None:
                self.server = Engine(configuration=self.sconf, original_destination_connection_id=data[6 : 6 + data[5]])
                self.server.stream_window = 4 << 20
            self.server.receive_batch([(data, ADDR_C)], self.now)
            while (ev := self.server.next_event()) is not None:
                if isinstance(ev, qe.StreamDataReceived):
                    self.received.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ev.end_stream:
                        self.ended.add(ev.stream_id)
                    self.server.credit_due(ev.stream_id)  # the application read it all
        else:
            self.client.receive_batch([(data, ADDR_S)], self.now)
            while self.client.next_event() is not None:
                pass

    def step(self) -> None:
        client, server = self.client, self.server
        self._send(client, True)
        if server is not None:
            self._send(server, False)
        times = [t for t in (client.get_timer(), server and server.get_timer()) if t]
        if self.wire:
            times.append(self.wire[0][0])
        self.now = max(self.now, min(times))
        while self.wire and self.wire[0][0] <= self.now:
            _, _, to_server, data = heapq.heappop(self.wire)
            self._deliver(data, to_server)
        for engine in (client, self.server):
            timer = engine.get_timer() if engine is not None else None
            if engine is not None and timer is not None and timer <= self.now:
                engine.handle_timer(self.now)

    def transfer(self, sizes: dict[int, int], midway: Any = None) -> None:
        """Send ``sizes[i]`` random bytes on stream number i (by 64 KiB commits, the FIN at the
        end) and run until the server has them all; ``midway(pair)`` once half was committed."""
        client = self.client
        while not client._handshake_confirmed:
            self.step()
        for engine in (client, self.server):
            assert engine is not None
            engine._set_datagram_size(BIG)
            engine.lighten_crypto()
        sids = []
        for _ in sizes:
            sids.append(client.get_next_available_stream_id())
            client.send_stream_data(sids[-1], b"")
        self.payload = {sid: os.urandom(n) for sid, n in zip(sids, sizes.values(), strict=True)}
        committed = dict.fromkeys(sids, 0)
        total = sum(sizes.values())
        called = midway is None
        for _ in range(100_000):
            for sid in sids:
                data = self.payload[sid]
                if committed[sid] < len(data) and client.unsent(sid) < 256 * 1024:
                    n = min(65536, len(data) - committed[sid])
                    chunk = data[committed[sid] : committed[sid] + n]
                    committed[sid] += n
                    client.send_stream_data(sid, chunk, end_stream=committed[sid] == len(data))
            if not called and sum(committed.values()) >= total // 2:
                called = True
                midway(self)
            self.step()
            if self.ended == set(sids):
                break
        for sid in sids:
            assert bytes(self.received[sid]) == self.payload[sid]
        assert "_payload_received" in self.server.__dict__  # the one-STREAM-frame receive path took them


def test_bulk_packets_are_aioquics_byte_for_byte(ca: CA, leaf: Leaf) -> None:
    pair = Pair(ca, leaf)
    pair.transfer({0: 6 * 1024 * 1024 + 77})
    assert pair.bulk_datagrams > 50  # the bulk path built most of them
    assert pair.checked == pair.bulk_datagrams


def test_without_sends_buffers_datagrams_are_bytes(ca: CA, leaf: Leaf) -> None:
    # aioquic's type, which receive_datagram requires: a driver that feeds datagrams to another
    # engine in memory (not to sendto) gets bytes from the bulk path too
    pair = Pair(ca, leaf, buffers=False)
    pair.transfer({0: 2 * 1024 * 1024})
    assert pair.types == {bytes}
    assert pair.bulk_datagrams == 0


def test_a_lossy_bulk_transfer_is_retransmitted_by_the_bulk_path(ca: CA, leaf: Leaf) -> None:
    pair = Pair(ca, leaf, drop_every=9)
    pair.transfer({0: 4 * 1024 * 1024 + 5})
    assert pair.sent > 64 + 7  # 4 MiB is 64 datagrams: 8 or more were dropped and sent again
    assert pair.checked == pair.bulk_datagrams > 30
    assert pair.resent > 3


def test_control_frames_and_a_second_stream_hand_calls_back_to_aioquic(ca: CA, leaf: Leaf) -> None:
    used: list[bool] = []
    ready = _quic_bulk.bulk_ready

    def watched(*args: Any) -> Any:
        stream = ready(*args)
        used.append(stream is not None)
        return stream

    def midway(pair: Pair) -> None:
        pair.client.send_ping(1)
        pair.client._cryptos[ONE_RTT].update_key()  # a key update: aioquic's packets carry it

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "bulk_ready", watched)
        pair = Pair(ca, leaf, drop_every=13)
        pair.transfer({0: 3 * 1024 * 1024, 4: 2 * 1024 * 1024 + 1}, midway=midway)
        assert True in used and False in used  # two streams with data at once: aioquic's
        used.clear()
        pair2 = Pair(ca, leaf)
        pair2.transfer({0: 3 * 1024 * 1024}, midway=midway)
        assert pair2.checked == pair2.bulk_datagrams > 20
        assert True in used and False in used


def test_a_datagram_larger_than_any_before_is_acknowledged_at_once(ca: CA, leaf: Leaf) -> None:
    # the peer's path MTU probe: its sender waits for this ACK to send larger datagrams
    pair = Pair(ca, leaf)
    while not pair.client._handshake_confirmed:
        pair.step()
    server = pair.server
    assert server is not None
    for _ in range(300):  # past the quick ACKs of slow start (Engine.receive_batch)
        pair.client.send_ping(1)
        pair.step()
    space = server._spaces[ONE_RTT]
    assert space.largest_received_packet >= 256
    server.datagrams_to_send(pair.now + 1)  # nothing waits for an ACK now
    assert space.ack_at is None
    pair.client.pmtu = Search(1350, BIG)
    probe = pair.client._send_probe_of(20000, pair.now)
    assert len(probe) == 1 and len(probe[0][0]) == 20000
    server.receive_batch([(probe[0][0], ADDR_C)], pair.now)
    assert space.ack_at == pair.now
    server.datagrams_to_send(pair.now)  # the ACK
    assert space.ack_at is None
    pair.client.send_ping(2)  # a smaller datagram after it: aioquic's ack delay again
    later = pair.now + 0.01
    server.receive_batch([(data, ADDR_C) for data, _ in pair.client.datagrams_to_send(later)], later)
    assert space.ack_at is not None and space.ack_at > later
