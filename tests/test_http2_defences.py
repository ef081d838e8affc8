"""HTTP/2 defences: each hostile client is cut off, the server's memory for it stays bounded,
and another client on another connection is served normally meanwhile.

The attackers are raw frame writers (:class:`test_http2_conformance.RawClient`); the victim is
a real ``Stack(tcp.listen(...), http.server(app, limits))`` whose connections the tests record
to look at their bookkeeping.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_http2_conformance import ENHANCE_YOUR_CALM, NO_ERROR, REFUSED_STREAM, RawClient

from layers import http, http2, tcp
from layers.http import Limits
from stack import Broken, Stack

App = Callable[[http.Request], Awaitable[None]]


async def app(request: http.Request) -> None:
    if request.path == "/slow":
        await trio.sleep(1.0)
    if request.path == "/big":
        out = await request.start_response(200)
        await out.send(b"b" * 1_000_000)
        await out.done()
        return
    await request.respond(200, [], b"Hello, world!")


class Victim:
    """A TCP server whose HTTP/2 connections are recorded."""

    def __init__(self, host: str, port: int, conns: list[http2.H2ServerConnection]) -> None:
        self.host = host
        self.port = port
        self.conns = conns

    async def first_conn(self) -> http2.H2ServerConnection:
        """The first server connection, once the server's handler has it (the client's
        handshake can finish before the server's handler starts)."""
        with trio.fail_after(5):
            while not self.conns:  # noqa: ASYNC110 - waiting for another task's state
                await trio.sleep(0.01)
        return self.conns[0]

    async def attacker(self) -> RawClient:
        stream = await tcp.connect(self.host, self.port).connect(deadline=trio.current_time() + 5)
        return RawClient(stream)

    async def good_client_works(self, n: int = 5) -> None:
        """A well-behaved client on its own connection gets its answers in time."""
        with trio.fail_after(5):
            async with await Stack(
                tcp.connect(self.host, self.port), http.client(prior_knowledge=True)
            ).connect() as conn:
                for _ in range(n):
                    r = await conn.request("GET", "/")
                    assert await r.read() == b"Hello, world!"


@contextlib.asynccontextmanager
async def victim(limits: Limits, the_app: App = app, handshake_timeout: float = 10.0) -> AsyncIterator[Victim]:
    conns: list[http2.H2ServerConnection] = []

    async def handler(conn: Any) -> None:
        conns.append(conn)
        await conn.serve(the_app)

    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(
            lambda task_status: Stack(tcp.listen("127.0.0.1", 0), http.server(the_app, limits)).serve(
                handler, handshake_timeout=handshake_timeout, task_status=task_status
            )
        )
        yield Victim(addrs[0][0], addrs[0][1], conns)
        nursery.cancel_scope.cancel()


async def cut_off(c: RawClient, code: int = ENHANCE_YOUR_CALM) -> None:
    """The attacker gets GOAWAY with ``code`` and then the end of the connection."""
    goaway = await c.goaway()
    assert goaway.error_code == code, goaway
    with trio.fail_after(5):
        await c.closed()


# =============================================================================================


async def test_rapid_reset_ends_the_connection_and_bounds_work() -> None:
    limits = Limits(rapid_reset_limit=50, flood_period=10.0, max_concurrent_streams=20)
    async with victim(limits) as v:
        c = await v.attacker()
        await c.handshake()
        peak = 0
        sid = 1
        with trio.fail_after(10):
            while not c.eof:
                frames = []
                for _ in range(10):
                    frames += [c.headers(sid, path="/slow"), RstStreamFrame(sid, error_code=0x8)]
                    sid += 2
                try:
                    await c.send(*frames)
                except Broken:
                    break
                if v.conns:  # the server's handler may not have started yet
                    peak = max(peak, v.conns[0]._active)
                if sid > 2000:
                    break
                await trio.sleep(0.001)
        goaway = await c.goaway()
        assert goaway.error_code == ENHANCE_YOUR_CALM
        assert goaway.last_stream_id < 2 * 60, "the server went on processing"
        with trio.fail_after(5):
            await c.closed()
        assert peak <= limits.max_concurrent_streams
        await v.good_client_works()


async def test_ping_flood() -> None:
    async with victim(Limits(ping_flood_limit=20)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(*[PingFrame(0, opaque_data=b"%08d" % i) for i in range(40)])
        await cut_off(c)
        await v.good_client_works()


async def test_ping_flood_from_a_client_that_never_reads_stops_our_reading() -> None:
    """Each PING makes 17 bytes of ACK: a client that never reads cannot grow our buffer."""
    limits = Limits(ping_flood_limit=10**9, no_progress_limit=10**9, send_timeout=1.0)
    async with victim(limits) as v:
        c = await v.attacker()
        await c.handshake()
        ping = PingFrame(0, opaque_data=b"12345678").serialize()
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):
                while True:
                    await c.stream.send(ping * 1000)
        conn = await v.first_conn()
        assert conn.queued() <= http2.READER_HIGH_WATER + 65536 * 17 // 17 * 2
        await v.good_client_works()


async def test_settings_flood() -> None:
    async with victim(Limits(settings_flood_limit=20)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(*[SettingsFrame(0) for _ in range(40)])
        await cut_off(c)
        await v.good_client_works()


async def test_continuation_flood() -> None:
    async with victim(Limits(max_continuation_frames=8)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(c.headers(1, end_headers=False))
        await c.send(*[ContinuationFrame(1, data=b"\x40\x01a\x01b") for _ in range(50)])
        await cut_off(c)
        assert len((await v.first_conn()).core.incoming_buffer._headers_buffer) <= 8
        await v.good_client_works()


async def test_continuation_flood_of_big_frames() -> None:
    async with victim(Limits(max_header_list_size=16384)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(c.headers(1, end_headers=False))
        await c.send(*[ContinuationFrame(1, data=b"\x00" * 16000) for _ in range(5)])
        await cut_off(c)
        await v.good_client_works()


async def test_header_list_over_the_limit() -> None:
    async with victim(Limits(max_header_list_size=4096)) as v:
        c = await v.attacker()
        await c.handshake()
        hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
        hdrs += [(f"x-h{i}", "v" * 100) for i in range(100)]
        await c.send(c.headers(1, hdrs))
        goaway = await c.goaway()
        assert goaway.error_code in (ENHANCE_YOUR_CALM, 0x9)
        await v.good_client_works()


async def test_streams_beyond_the_limit_are_refused_and_tasks_bounded() -> None:
    limits = Limits(max_concurrent_streams=10)
    async with victim(limits) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(*[c.headers(sid, path="/slow") for sid in range(1, 200, 2)])
        refused = 0
        with trio.fail_after(5):
            while refused < 90:
                f = await c.until(lambda f: isinstance(f, RstStreamFrame))
                assert f.error_code == REFUSED_STREAM
                refused += 1
        assert (await v.first_conn())._active <= 10
        await v.good_client_works()


async def test_window_never_opened_stream_is_reset_after_send_timeout() -> None:
    limits = Limits(send_timeout=0.5)
    async with victim(limits) as v:
        c = await v.attacker()
        await c.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        await c.request(1, path="/big")
        rst = await c.rst(1, within=5)
        assert rst.error_code == 0x8  # CANCEL
        await c.request(3)  # the connection itself is fine
        headers = await c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
        assert headers is not None
        await v.good_client_works()


async def test_client_that_never_reads_is_dropped_after_send_timeout() -> None:
    limits = Limits(send_timeout=0.5)
    async with victim(limits) as v:
        c = await v.attacker()
        await c.handshake(window=2**31 - 1 - 65535)
        big = SettingsFrame(0)
        big.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}
        await c.send(big)
        await c.send(*[c.headers(sid, path="/big") for sid in range(1, 40, 2)])
        # never read: the kernel buffers fill, our writer blocks, send_timeout drops us
        with trio.fail_after(10):
            conn = await v.first_conn()
            while conn._failure is None:  # noqa: ASYNC110 - polling another task's state
                await trio.sleep(0.05)
        assert "read nothing" in str(conn._failure)
        await v.good_client_works()
        await c.stream.aclose()


async def test_idle_connection_is_closed() -> None:
    async with victim(Limits(idle_timeout=0.3)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.request(1)
        await c.response(1)
        with trio.fail_after(3):
            await cut_off(c, NO_ERROR)
        await v.good_client_works()


async def test_idle_after_a_request_with_no_frame_after_it() -> None:
    """The idle clock starts when the last stream ends, even if the client sends nothing more."""
    async with victim(Limits(idle_timeout=0.3)) as v:
        c = await v.attacker()
        await c.handshake(window=1 << 20)
        await c.request(1)
        await c.until(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)  # no WINDOW_UPDATE back
        with trio.fail_after(3):
            await cut_off(c, NO_ERROR)


async def test_unfinished_header_block_does_not_hold_the_connection() -> None:
    async with victim(Limits(idle_timeout=0.3)) as v:
        c = await v.attacker()
        await c.handshake()
        await c.send(c.headers(1, end_headers=False))
        with trio.fail_after(3):
            await c.closed()
        await v.good_client_works()


async def test_silent_connection_is_dropped_at_the_handshake() -> None:
    async with victim(Limits(), handshake_timeout=0.3) as v:
        c = await v.attacker()
        await c.send_raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the preface, then nothing
        with trio.fail_after(3):
            await c.closed()
        await v.good_client_works()


async def test_data_flood_on_closed_streams_is_harmless() -> None:
    async with victim(Limits()) as v:
        c = await v.attacker()
        await c.handshake(window=1 << 30)
        await c.request(1)
        await c.response(1)
        # DATA on a stream we closed: answered with RST_STREAM(STREAM_CLOSED); the connection
        # window is credited, so it cannot stall the connection for others
        await c.send(*[DataFrame(1, data=b"x" * 16000) for _ in range(20)])
        await c.send(WindowUpdateFrame(0, window_increment=1))
        await v.good_client_works()
        await c.request(3)
        assert (await c.response(3))[0] == 200
