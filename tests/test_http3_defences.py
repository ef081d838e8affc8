"""HTTP/3 defences (issue 19, item 4): a stream-open flood past the connection's MAX_STREAMS, a
QPACK bomb on the encoder stream, a client that never grants flow control, idle connections.

Theory of operation: the attacker is our own QUIC client (``layers.quic.connect`` with ALPN h3)
writing raw bytes where a well-behaved HTTP/3 client would frame requests, with aioquic's
limits lifted on its side where it would refuse to misbehave (the peer's stream limit). The
server is ``http3.serve`` in the same process, so its CPU is measured with ``time.process_time``
(generous bounds: they catch a quadratic blow-up, not a slow machine), and an honest
``http3.open_client`` keeps getting answers while the attack runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from _servers import running, serve_h3

from layers import http, http3, quic
from layers.certs import CA, Leaf
from stack import Broken, Timeout

TIMEOUT = 20.0


sent_by_app: list[int] = []


async def app(request: http.Request) -> None:
    if request.path == "/big":  # 8 MiB, counting what the app managed to hand over
        out = await request.start_response(200, [("content-type", "application/octet-stream")])
        sent_by_app.append(0)
        chunk = b"b" * 65536
        for _ in range(128):
            await out.send(chunk)
            sent_by_app[-1] += len(chunk)
        await out.done()
    else:
        await request.respond(200, [("content-type", "text/plain")], b"ok")


@asynccontextmanager
async def h3_server(leaf: Leaf, quic_limits: quic.QuicLimits = quic.DEFAULT_QUIC_LIMITS) -> AsyncIterator[int]:
    async with running(serve_h3(app, leaf, quic_limits=quic_limits)) as port:
        yield port


async def ended(conn: quic.QuicConnection) -> None:
    """Wait (5 s at most) for the server to end ``conn``; raise why it ended."""
    with trio.fail_after(5):
        await conn.ended.wait()
    failure = conn.failure()
    assert failure is not None
    raise failure


async def honest(ca: CA, port: int, n: int = 5) -> None:
    async with http3.open_client("127.0.0.1", port, ca=ca) as h3:
        for _ in range(n):
            response = await h3.request("GET", "/")
            assert await response.read() == b"ok"


async def test_stream_flood_past_max_streams_closes_the_flooder_only(ca: CA, leaf: Leaf) -> None:
    limits = quic.QuicLimits(max_streams=20)
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, limits) as port:
            cpu = time.process_time()
            async with quic.connect("127.0.0.1", port, alpn=["h3"], ca=ca).open() as conn:
                conn.engine._remote_max_streams_bidi = 10**6  # lie to ourselves: ignore the server's limit
                with pytest.raises(Broken, match="0x4"):  # STREAM_LIMIT_ERROR (RFC 9000 4.6)
                    for _ in range(2000):
                        await conn.open_stream().send(b"\x01\x10")  # a HEADERS frame's start, never finished
                        await trio.lowlevel.checkpoint()
                    await ended(conn)
                await honest(ca, port)  # the server answers others meanwhile and after
            assert time.process_time() - cpu < 10.0


async def test_many_streams_within_the_limit_wait_their_turn(ca: CA, leaf: Leaf) -> None:
    limits = quic.QuicLimits(max_streams=10)
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, limits) as port, quic.connect("127.0.0.1", port, alpn=["h3"], ca=ca).open() as conn:
            streams = [conn.open_stream() for _ in range(300)]  # QUIC holds those over the limit
            for stream in streams:
                await stream.send(b"\x01\x10")
            await honest(ca, port)
            assert conn.engine._remote_max_streams_bidi <= 10 + 1


async def test_qpack_bomb_on_the_encoder_stream_is_a_connection_error(ca: CA, leaf: Leaf) -> None:
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf) as port:
            cpu = time.process_time()
            async with quic.connect("127.0.0.1", port, alpn=["h3"], ca=ca).open() as conn:
                encoder = conn.open_stream(unidirectional=True)
                # stream type 0x02 (QPACK encoder), then Set Dynamic Table Capacity (001xxxxx, a
                # 5-bit prefix integer) to 2^30 bytes: far past what the server allowed (4096)
                capacity = 2**30 - 31
                varint = bytearray()
                while capacity >= 128:
                    varint.append(capacity % 128 + 128)
                    capacity //= 128
                varint.append(capacity)
                entry = b"\x40" + bytes([0x7F]) + b"\x81\x7f" + b"v" * 200  # insert with literal name
                with pytest.raises(Broken, match=r"0x20[01]"):  # QPACK_ENCODER_STREAM_ERROR / DECOMPRESSION
                    await encoder.send(b"\x02" + bytes([0x20 | 31]) + bytes(varint))
                    # and inserts of large literal entries that no table of 4096 bytes can hold
                    for _ in range(200):
                        await encoder.send(entry)
                    await ended(conn)
            await honest(ca, port)
            assert time.process_time() - cpu < 10.0


async def test_blocked_header_blocks_stay_bounded(ca: CA, leaf: Leaf) -> None:
    """Header blocks that reference dynamic-table entries never inserted wait for the encoder
    stream (QPACK's blocked streams). What they can hold is bounded by the stream limit times
    one header block; pylsqpack keeps them waiting (past the 16 announced it does not fail the
    connection) and no request reaches the app; others are served meanwhile."""
    limits = quic.QuicLimits(max_streams=50)
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, limits) as port:
            cpu = time.process_time()
            async with quic.connect("127.0.0.1", port, alpn=["h3"], ca=ca).open() as conn:
                for _ in range(40):
                    stream = conn.open_stream()
                    # HEADERS frame: type 1, length 3; field section prefix: Required Insert Count
                    # 5 (encoded 6), base 0; one indexed field line (dynamic index 0)
                    await stream.send(b"\x01\x03" + b"\x06\x00" + b"\x80")
                await honest(ca, port)
                assert conn.failure() is None or isinstance(conn.failure(), Broken)
            assert time.process_time() - cpu < 10.0


async def test_a_client_that_never_reads_costs_one_window_then_the_idle_timeout_ends_it(ca: CA, leaf: Leaf) -> None:
    server_limits = quic.QuicLimits(idle_timeout=1.5)
    client_limits = quic.QuicLimits(stream_window=64 * 1024, idle_timeout=60)
    sent_by_app.clear()
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, server_limits) as port:
            async with http3.open_client("127.0.0.1", port, ca=ca, quic_limits=client_limits) as h3:
                response = await h3.request("GET", "/big")
                assert response.status == 200
                await trio.sleep(0.5)  # the app sends until the window and its high water are full
                held = sent_by_app[-1]
                assert held <= 64 * 1024 + quic.HIGH_WATER + 2 * quic.SEND_CHUNK
                with pytest.raises(Broken, match=r"[Ii]dle"):
                    with trio.fail_after(5):
                        while True:  # nothing moves: the server's idle timeout closes the connection
                            await h3.quic.accept_stream()
            await honest(ca, port)


async def test_idle_connections_are_closed(ca: CA, leaf: Leaf) -> None:
    limits = quic.QuicLimits(idle_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, limits) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            response = await h3.request("GET", "/")
            assert await response.read() == b"ok"
            with trio.fail_after(5):
                await h3.quic.ended.wait()
            with pytest.raises((Broken, Timeout)):
                await h3.request("GET", "/")
