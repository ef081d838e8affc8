"""Receive-window auto-tuning of layers.quic (``_quic_engine.Engine``'s stream and connection limits).

Theory of operation: a client and a server ``Engine`` are driven in memory on a virtual clock
(every datagram takes :data:`ONE_WAY` seconds to arrive, timers fire when the clock reaches them),
so the round trip aioquic measures is known and the run is deterministic. The client sends one
stream as fast as flow control lets it; the server's "application" reads what aioquic delivered
either at once (a fast reader: every window is taken within a round trip, so both windows double
up to their caps) or a little at a time (a slow reader: half a window takes many round trips, the
windows stay at their initial size). Throughout, credit never exceeds what was read plus the
current window, and what the server buffers never exceeds the windows.
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest
from aioquic.quic import events as qe

from layers._quic_engine import Engine, client_configuration, server_configuration
from layers.certs import CA, Leaf

ONE_WAY = 0.005
"""Virtual seconds a datagram takes from one end to the other (a 10 ms round trip)."""

KIB = 1024
WINDOW, MAX_WINDOW = 64 * KIB, 1024 * KIB
CONN_WINDOW, MAX_CONN_WINDOW = 256 * KIB, 2048 * KIB
ADDR_C, ADDR_S = ("10.0.0.1", 1111), ("10.0.0.2", 4433)


class Run:
    """One transfer of ``total`` bytes; ``read_every`` / ``read_size``: the reader takes at most
    ``read_size`` bytes every ``read_every`` virtual seconds (``read_size=None``: all, on arrival)."""

    def __init__(self, ca: CA, leaf: Leaf, total: int, read_every: float, read_size: int | None) -> None:
        common: dict[str, Any] = {"alpn": ["bulk"], "idle_timeout": 60.0, "datagram_size": 16000}
        cconf = client_configuration(
            server_name="localhost", verify=True, ca=ca, stream_window=WINDOW, max_data=CONN_WINDOW, **common
        )
        self.sconf = server_configuration(leaf, stream_window=WINDOW, max_data=CONN_WINDOW, **common)
        self.client = Engine(configuration=cconf)
        self.server: Engine | None = None
        self.now = 0.0
        self.wire: list[tuple[float, int, Engine | None, bytes]] = []
        self.seq = 0
        self.total, self.read_every, self.read_size = total, read_every, read_size
        self.unread = 0
        self.read = 0
        self.next_read = 0.0
        self.fin = False
        self.most_unread = 0
        self.largest_window = 0
        self.client.connect(ADDR_S, now=0.0)

    def _make_server(self, data: bytes) -> Engine:
        server = Engine(configuration=self.sconf, original_destination_connection_id=data[6 : 6 + data[5]])
        server.stream_window, server.max_stream_window = WINDOW, MAX_WINDOW
        server.max_connection_window = MAX_CONN_WINDOW
        server.buffered = lambda stream_id: self.unread
        server.buffered_total = lambda: self.unread
        return server

    def _send(self, engine: Engine, to_server: bool) -> None:
        for data, _ in engine.datagrams_to_send(self.now):
            self.seq += 1
            heapq.heappush(self.wire, (self.now + ONE_WAY, self.seq, None if to_server else self.client, data))

    def _deliver(self, data: bytes, to: Engine | None) -> None:
        if to is None:  # to the server
            if self.server is None:
                self.server = self._make_server(data)
            self.server.receive_datagram(data, ADDR_C, self.now)
            while (ev := self.server.next_event()) is not None:
                if isinstance(ev, qe.StreamDataReceived):
                    self.unread += len(ev.data)
                    self.fin = self.fin or ev.end_stream
        else:
            to.receive_datagram(data, ADDR_S, self.now)
            while to.next_event() is not None:
                pass

    def _reader(self) -> None:
        server = self.server
        if server is None or not self.unread or self.now < self.next_read:
            return
        n = self.unread if self.read_size is None else min(self.unread, self.read_size)
        self.unread -= n
        self.read += n
        self.next_read = self.now + self.read_every
        server.credit_due(self.sid)

    def _check(self) -> None:
        """Credit never runs ahead of what was read."""
        server = self.server
        if server is None:
            return
        stream = server._streams.get(self.sid)
        if stream is not None:
            window = getattr(stream, "recv_window", WINDOW)
            assert stream.max_stream_data_local <= self.read + window
            self.largest_window = max(self.largest_window, window)
        assert server._local_max_data.value <= self.read + server.connection_window
        self.most_unread = max(self.most_unread, self.unread)

    def go(self) -> Engine:
        client = self.client
        self.sid = sid = client.get_next_available_stream_id()
        committed = 0
        chunk = b"x" * (64 * KIB)
        for _ in range(200_000):
            if client._handshake_complete and committed < self.total and client.unsent(sid) < 256 * KIB:
                n = min(len(chunk), self.total - committed)
                committed += n
                client.send_stream_data(sid, chunk[:n], end_stream=committed >= self.total)
            self._reader()
            self._send(client, True)
            if self.server is not None:
                self._send(self.server, False)
            self._check()
            if self.fin and not self.unread:
                assert self.server is not None and self.read == self.total
                return self.server
            # the clock moves to the next arrival, timer or read
            times = [t for t in (client.get_timer(), self.server and self.server.get_timer()) if t]
            if self.wire:
                times.append(self.wire[0][0])
            if self.unread:
                times.append(self.next_read)
            self.now = max(self.now, min(times))
            while self.wire and self.wire[0][0] <= self.now:
                _, _, to, data = heapq.heappop(self.wire)
                self._deliver(data, to)
            for engine in (client, self.server):
                timer = engine.get_timer() if engine is not None else None
                if engine is not None and timer is not None and timer <= self.now:
                    engine.handle_timer(self.now)
        raise AssertionError("the transfer did not finish")


def test_a_fast_reader_grows_both_windows_to_their_caps(ca: CA, leaf: Leaf) -> None:
    run = Run(ca, leaf, total=12 * MAX_WINDOW, read_every=0.0, read_size=None)
    server = run.go()
    assert run.largest_window == MAX_WINDOW
    assert server.connection_window == MAX_CONN_WINDOW
    assert run.most_unread <= MAX_CONN_WINDOW
    # at the initial stream window, one window a round trip, it would take 1.9 virtual seconds
    assert run.now < 0.5 * run.total / WINDOW * 2 * ONE_WAY


def test_a_slow_reader_keeps_the_initial_windows(ca: CA, leaf: Leaf) -> None:
    # 16 KiB every 50 ms: half a stream window takes 100 ms, ten round trips
    run = Run(ca, leaf, total=8 * WINDOW, read_every=0.05, read_size=16 * KIB)
    server = run.go()
    assert run.largest_window == WINDOW
    assert server.connection_window == CONN_WINDOW
    assert run.most_unread <= WINDOW  # an unread stream holds at most its window


def test_limits_validate_the_caps() -> None:
    from layers.quic import QuicLimits

    assert QuicLimits().max_stream_window == 16 * 1024 * KIB
    assert QuicLimits().max_connection_window == 32 * 1024 * KIB
    with pytest.raises(ValueError):
        QuicLimits(stream_window=4 * 1024 * KIB, max_stream_window=1024 * KIB)
    with pytest.raises(ValueError):
        QuicLimits(max_connection_window=KIB)
