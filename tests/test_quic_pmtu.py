"""Path MTU discovery of layers.quic (layers/_quic_pmtu.py, the probes in layers/_quic_engine.py).

The search alone (sans-io) against simulated paths; then two ends of ours over loopback (Linux:
the route's MTU is 65536, elsewhere nothing is probed): the size rises only after an acknowledged
probe, never above the peer's max_udp_payload_size nor our max_datagram_size, the data stays
intact in 4-byte-length STREAM frames, and a path that drops large datagrams ends the search
below its MTU without a congestion reaction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import pull_quic_transport_parameters
from aioquic.quic.recovery import QuicPacketRecovery

from layers import _quic_pmtu, udp
from layers._quic_engine import Engine
from layers.quic import QuicConnection, QuicLimits
from stack import after
from tests.test_quic import TIMEOUT, client, server

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the route MTU is read on Linux only")


def _search(base: int, limit: int, path: int) -> tuple[int, int]:
    """Run a search against a path carrying datagrams up to ``path`` bytes: (size, probes)."""
    search = _quic_pmtu.Search(base, limit)
    probes = 0
    while (size := search.next_probe()) is not None:
        probes += 1
        search.sent()
        (search.acked if size <= path else search.lost)(size)
        assert probes < 100
    assert search.done
    return search.current, probes


@pytest.mark.parametrize("path", [1350, 1400, 1472, 8972, 20000, 65507, 70000])
def test_search_finds_the_path_mtu_from_below(path: int) -> None:
    size, probes = _search(1350, 65507, path)
    best = min(path, 65507)
    assert size <= best and best - size <= _quic_pmtu.SEARCH_DONE
    if path >= 65507:
        assert probes == 1  # loopback: the route's payload is the path's


def test_search_never_starts_above_nothing() -> None:
    search = _quic_pmtu.Search(1350, 1350)
    assert search.next_probe() is None and search.done
    assert _search(1350, 1400, 1200) == (1350, _quic_pmtu.MAX_PROBES)


def test_route_payload_of_loopback() -> None:
    payload = _quic_pmtu.route_payload(("127.0.0.1", 4433))
    if sys.platform.startswith("linux"):
        assert payload is not None and 65000 <= payload <= 65507  # lo: MTU 65536, an IP packet at most 65535
    else:
        assert payload is None


def test_we_announce_max_udp_payload_size() -> None:
    engine = Engine(configuration=QuicConfiguration(is_client=True, alpn_protocols=["x"]))
    engine._version = 1  # as once connect() chose it
    params = pull_quic_transport_parameters(Buffer(data=engine._serialize_transport_parameters()))
    assert params.max_udp_payload_size == udp.MAX_DATAGRAM
    assert params.initial_max_data is not None  # aioquic's own parameters intact


def test_limits_validate_max_datagram_size() -> None:
    with pytest.raises(ValueError):
        QuicLimits(max_datagram_size=1300)  # below datagram_size
    with pytest.raises(ValueError):
        QuicLimits(max_datagram_size=70000)


async def _transfer(ca: Any, leaf: Any, limits: QuicLimits, size: int = 2_000_000) -> tuple[int, int, Engine]:
    """Send ``size`` varied bytes client -> server and back; both ends' datagram sizes."""
    data = bytes(range(251)) * (size // 251)
    async with (
        server(leaf, limits=limits) as srv,
        client(ca, srv.port, limits=limits).open(deadline=after(TIMEOUT)) as conn,
    ):
        sconn: QuicConnection = await srv.conns.receive()
        a = conn.open_stream()
        async with trio.open_nursery() as nursery:

            async def upload() -> None:
                await a.send(data)
                await a.done()

            nursery.start_soon(upload)
            b = await sconn.accept_stream(deadline=after(TIMEOUT))
            assert await b.recv_exactly(len(data), deadline=after(TIMEOUT)) == data

            async def download() -> None:
                await b.send(data)
                await b.done()

            nursery.start_soon(download)
            assert await a.recv_exactly(len(data), deadline=after(TIMEOUT)) == data
        return conn.engine.datagram_size, sconn.engine.datagram_size, conn.engine


@linux
async def test_loopback_rises_to_the_largest_datagram_after_a_probe(ca: Any, leaf: Any) -> None:
    client_size, server_size, engine = await _transfer(ca, leaf, QuicLimits())
    assert client_size == server_size == 65507
    assert engine.pmtu is None  # the search ended
    assert engine._loss._cc.ssthresh is None  # no loss, no congestion event


@linux
async def test_pmtu_off_and_the_caps(ca: Any, leaf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await _transfer(ca, leaf, QuicLimits(pmtu=False), 300_000))[:2] == (1350, 1350)
    # ours: max_datagram_size (below the size where STREAM frames need a 4-byte length)
    assert (await _transfer(ca, leaf, QuicLimits(max_datagram_size=9000), 300_000))[:2] == (9000, 9000)
    # the peer's max_udp_payload_size (both ends announce 20000 here)
    monkeypatch.setattr(Engine, "max_udp_payload", 20000)
    assert (await _transfer(ca, leaf, QuicLimits(), 300_000))[:2] == (20000, 20000)


@linux
async def test_a_path_dropping_large_datagrams_ends_the_search_below(
    ca: Any, leaf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = 20000
    sent: list[int] = []
    send_batch: Callable[..., Any] = udp.UDPStream.send_batch

    async def lossy(self: udp.UDPStream, datagrams: list[tuple[bytes, Any]]) -> int:
        sent.extend(len(d) for d, _ in datagrams)
        return int(await send_batch(self, [(d, a) for d, a in datagrams if len(d) <= path]))

    monkeypatch.setattr(udp.UDPStream, "send_batch", lossy)
    congestion: list[int] = []  # sizes of the packets reported lost as congestion
    on_lost: Callable[..., None] = QuicPacketRecovery._on_packets_lost

    def recording(self: QuicPacketRecovery, *, packets: Any, congestion_event: bool = True, **kw: Any) -> None:
        packets = list(packets)
        if congestion_event:
            congestion.extend(p.sent_bytes for p in packets if p.in_flight)
        on_lost(self, packets=packets, congestion_event=congestion_event, **kw)

    monkeypatch.setattr(QuicPacketRecovery, "_on_packets_lost", recording)
    limits = QuicLimits()
    async with (
        server(leaf, limits=limits) as srv,
        client(ca, srv.port, limits=limits).open(deadline=after(TIMEOUT)) as conn,
    ):
        sconn: QuicConnection = await srv.conns.receive()
        a = conn.open_stream()
        b: Any = None
        with trio.fail_after(TIMEOUT):
            while conn.engine.pmtu is not None:  # traffic lets the probes' losses be detected
                await a.send(b"x" * 50_000)
                if b is None:
                    b = await sconn.accept_stream()
                await b.recv_exactly(50_000)
        size = conn.engine.datagram_size
        assert path - _quic_pmtu.SEARCH_DONE <= size <= path
        assert max(sent) > path  # probes above it were sent, and lost
        # No lost probe was a congestion signal (a real loss of an ordinary packet, rare on a
        # loaded host, may be one: it does not fail the test).
        assert all(n <= path for n in congestion), congestion
        await a.send(b"y" * 200_000)
        assert await b.recv_exactly(200_000) == b"y" * 200_000
