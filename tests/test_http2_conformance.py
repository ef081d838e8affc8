"""RFC 9113 conformance of our HTTP/2 server, driven frame by frame by a raw peer.

Every protocol error must get the right error code (GOAWAY or RST_STREAM), never a traceback
or a hang. :class:`RawClient` (also used by ``test_http2_defences.py``) speaks HTTP/2 with
hyperframe and hpack only, so it can break every rule on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from layers import http, http2, tcp
from layers.http import Limits
from stack import ByteStream, Stack, StackError
from stack.testing import memory_pair

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# error codes (RFC 9113 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

TIMEOUT = 5.0


class RawClient:
    """A hand-driven HTTP/2 client: send any frame, read frames back (hyperframe objects)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.seen: list[Frame] = []
        self.pending: list[Frame] = []
        self.eof = False
        self.server_settings: dict[int, int] = {}

    # ---- sending -----------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data, deadline=trio.current_time() + TIMEOUT)

    async def send(self, *frames: Frame) -> None:
        await self.send_raw(b"".join(f.serialize() for f in frames))

    async def handshake(self, settings: dict[int, int] | None = None, *, window: int = 0) -> None:
        """Preface and SETTINGS; reads the server's SETTINGS and acknowledges it."""
        sf = SettingsFrame(0)
        sf.settings = dict(settings or {})
        frames: list[Frame] = [sf]
        if window:
            frames.append(WindowUpdateFrame(0, window_increment=window))
        await self.send_raw(PREFACE + b"".join(f.serialize() for f in frames))
        first = await self.frame()
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, first
        self.server_settings = dict(first.settings)
        await self.send(SettingsFrame(0, flags=["ACK"]))

    def block(self, headers: Sequence[tuple[str | bytes, str | bytes]]) -> bytes:
        return bytes(self.encoder.encode(list(headers)))

    def headers(
        self,
        sid: int,
        headers: Sequence[tuple[str | bytes, str | bytes]] | None = None,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        path: str = "/",
        method: str = "GET",
    ) -> HeadersFrame:
        if headers is None:
            headers = [(":method", method), (":scheme", "http"), (":authority", "test"), (":path", path)]
        flags = []
        if end_stream:
            flags.append("END_STREAM")
        if end_headers:
            flags.append("END_HEADERS")
        return HeadersFrame(sid, data=self.block(headers), flags=flags)

    async def request(self, sid: int, path: str = "/", **kw: Any) -> None:
        await self.send(self.headers(sid, path=path, **kw))

    # ---- receiving ---------------------------------------------------------------------

    async def frame(self, within: float = TIMEOUT) -> Frame | None:
        """The next frame, or None at EOF (or reset). Fails the test on timeout."""
        with trio.fail_after(within):
            while True:
                if len(self.buf) >= 9:
                    f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                    if len(self.buf) >= 9 + length:
                        f.parse_body(memoryview(self.buf[9 : 9 + length]))
                        del self.buf[: 9 + length]
                        if isinstance(f, (HeadersFrame, ContinuationFrame)) and f.data:
                            f.decoded = self.decoder.decode(f.data, raw=True)  # type: ignore[attr-defined]
                        self.seen.append(f)
                        return f
                if self.eof:
                    return None
                try:
                    data = await self.stream.recv(65536)
                except Exception:
                    data = b""
                if not data:
                    self.eof = True
                else:
                    self.buf += data

    async def until(self, pred: Callable[[Frame], bool], within: float = TIMEOUT) -> Frame:
        """The first frame matching ``pred``, earlier unconsumed ones first; fails at EOF.
        Frames read meanwhile that do not match stay for later calls."""
        for i, f in enumerate(self.pending):
            if pred(f):
                del self.pending[i]
                return f
        with trio.fail_after(within):
            while True:
                f = await self.frame(within)
                if f is None:
                    raise AssertionError(f"connection ended before the expected frame; saw {self.seen!r}")
                if pred(f):
                    return f
                self.pending.append(f)

    async def goaway(self, within: float = TIMEOUT) -> GoAwayFrame:
        f = await self.until(lambda f: isinstance(f, GoAwayFrame), within)
        assert isinstance(f, GoAwayFrame)
        return f

    async def rst(self, sid: int, within: float = TIMEOUT) -> RstStreamFrame:
        f = await self.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == sid, within)
        assert isinstance(f, RstStreamFrame)
        return f

    async def closed(self, within: float = TIMEOUT) -> list[Frame]:
        """Read to EOF; return the frames not consumed yet (pending ones first)."""
        out, self.pending = self.pending, []
        while True:
            f = await self.frame(within)
            if f is None:
                return out
            out.append(f)

    async def response(self, sid: int, within: float = TIMEOUT) -> tuple[int, bytes]:
        """Status and body of the response on ``sid`` (frames of other streams stay pending)."""
        status = 0
        body = bytearray()
        with trio.fail_after(within):
            while True:
                f = await self.until(lambda f: f.stream_id == sid, within)
                if isinstance(f, HeadersFrame) and not status:
                    status = int(dict(f.decoded)[b":status"])  # type: ignore[attr-defined]
                elif isinstance(f, DataFrame):
                    body += f.data
                    if f.data:
                        await self.send(WindowUpdateFrame(0, window_increment=len(f.data)))
                elif isinstance(f, RstStreamFrame):
                    raise AssertionError(f"stream {sid} reset: {f.error_code}")
                if "END_STREAM" in f.flags:
                    return status, bytes(body)

    async def error_code(self, sid: int | None = None, within: float = TIMEOUT) -> tuple[str, int]:
        """The first GOAWAY (``("goaway", code)``) or RST_STREAM on ``sid`` (``("rst", code)``)."""
        f = await self.until(
            lambda f: (
                isinstance(f, GoAwayFrame) or (isinstance(f, RstStreamFrame) and (sid is None or f.stream_id == sid))
            ),
            within,
        )
        if isinstance(f, GoAwayFrame):
            return "goaway", f.error_code
        assert isinstance(f, RstStreamFrame)
        return "rst", f.error_code


async def hello(request: http.Request) -> None:
    body = await request.read()
    if request.path == "/echo":
        await request.respond(200, [("content-type", "application/octet-stream")], body)
    elif request.path == "/big":
        await request.respond(200, [], b"x" * 200_000)
    else:
        await request.respond(200, [("content-type", "text/plain")], b"Hello, world!")


@contextlib.asynccontextmanager
async def raw_server(
    app: Callable[[http.Request], Awaitable[None]] = hello,
    limits: Limits = http.DEFAULT_LIMITS,
    *,
    shutdown: trio.Event | None = None,
    handshake: bool = True,
    settings: dict[int, int] | None = None,
) -> AsyncIterator[RawClient]:
    """A server connection on a memory pair, running ``app``; yields the raw client end."""
    a, b = memory_pair(capacity=1 << 20)
    client = RawClient(a)
    async with trio.open_nursery() as nursery:

        async def run_server() -> None:
            try:
                conn = await http2.server(app, limits, shutdown).attach(b, deadline=trio.current_time() + TIMEOUT)
            except StackError:  # as Stack.serve: a failed handshake closes the connection
                await b.aclose()
                return
            try:
                await conn.serve(app)
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()

        nursery.start_soon(run_server)
        if handshake:
            await client.handshake(settings, window=(1 << 30))
        yield client
        await a.aclose()  # the server's lingering close ends at our EOF
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def tcp_server(
    app: Callable[[http.Request], Awaitable[None]] = hello,
    limits: Limits = http.DEFAULT_LIMITS,
    shutdown: trio.Event | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Stack(tcp.listen, http.server(app)) serving in the background; yields (host, port)."""
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app, limits, shutdown)).serve)
        yield addrs[0]
        nursery.cancel_scope.cancel()


async def raw_tcp(host: str, port: int) -> RawClient:
    stream = await tcp.connect(host, port).connect(deadline=trio.current_time() + TIMEOUT)
    return RawClient(stream)


# =============================================================================================
# the connection preface and SETTINGS (RFC 9113 3.4, 6.5)


async def test_raw_client_gets_a_response() -> None:
    async with raw_server() as c:
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")
        await c.request(3, path="/echo", end_stream=False)
        await c.send(DataFrame(3, data=b"abc", flags=["END_STREAM"]))
        assert await c.response(3) == (200, b"abc")


async def test_server_settings_advertise_the_limits() -> None:
    limits = Limits(max_concurrent_streams=7, max_header_list_size=12345, stream_window=70000, max_frame_size=20000)
    async with raw_server(limits=limits) as c:
        s = c.server_settings
        assert s[SettingsFrame.MAX_CONCURRENT_STREAMS] == 7
        assert s[SettingsFrame.MAX_HEADER_LIST_SIZE] == 12345
        assert s[SettingsFrame.INITIAL_WINDOW_SIZE] == 70000
        assert s[SettingsFrame.MAX_FRAME_SIZE] == 20000
        assert s[SettingsFrame.ENABLE_CONNECT_PROTOCOL] == 1


async def test_preface_not_followed_by_settings_is_a_protocol_error() -> None:
    async with raw_server(handshake=False) as c:
        await c.send_raw(PREFACE + c.headers(1).serialize())
        kind, code = await c.error_code()
        assert (kind, code) == ("goaway", PROTOCOL_ERROR)
        assert c.eof or await c.closed() is not None


async def test_bad_preface_ends_the_connection() -> None:
    async with raw_server(handshake=False) as c:
        await c.send_raw(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
        frames = await c.closed()
        assert all(not isinstance(f, HeadersFrame) for f in frames)


async def test_settings_ack_with_payload_is_frame_size_error() -> None:
    async with raw_server() as c:
        # SETTINGS with ACK and a payload: FRAME_SIZE_ERROR (6.5)
        bad = bytearray(SettingsFrame(0, flags=["ACK"]).serialize())
        bad[0:3] = (6).to_bytes(3, "big")
        await c.send_raw(bytes(bad) + b"\x00\x03\x00\x00\x00\x01")
        assert await c.error_code() == ("goaway", FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(b"\x00\x00\x07\x04\x00\x00\x00\x00\x00" + b"\x00" * 7, FRAME_SIZE_ERROR, id="settings-len-7"),
        pytest.param(b"\x00\x00\x05\x03\x00\x00\x00\x00\x01" + b"\x00" * 5, FRAME_SIZE_ERROR, id="rst-len-5"),
        pytest.param(
            b"\x00\x00\x03\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x01", FRAME_SIZE_ERROR, id="window-update-len-3"
        ),
        pytest.param(b"\x00\x00\x04\x02\x00\x00\x00\x00\x01" + b"\x00" * 4, FRAME_SIZE_ERROR, id="priority-len-4"),
    ],
)
async def test_frames_of_the_wrong_size(frame: bytes, code: int) -> None:
    async with raw_server() as c:
        await c.request(1, end_stream=False, method="POST")
        await c.send_raw(frame)
        _kind, got = await c.error_code()
        assert got == code


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        (SettingsFrame.ENABLE_PUSH, 2, PROTOCOL_ERROR),
        (SettingsFrame.INITIAL_WINDOW_SIZE, 2**31, FLOW_CONTROL_ERROR),
        (SettingsFrame.MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR),
        (SettingsFrame.MAX_FRAME_SIZE, 2**24, PROTOCOL_ERROR),
    ],
)
async def test_invalid_settings_values(setting: int, value: int, code: int) -> None:
    async with raw_server() as c:
        sf = SettingsFrame(0)
        sf.settings = {setting: value}
        await c.send(sf)
        assert await c.error_code() == ("goaway", code)


async def test_settings_on_a_stream_is_a_protocol_error() -> None:
    async with raw_server() as c:
        raw = bytearray(SettingsFrame(0).serialize())
        raw[5:9] = (1).to_bytes(4, "big")
        await c.send_raw(bytes(raw))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_unknown_settings_and_frame_types_are_ignored() -> None:
    async with raw_server() as c:
        sf = SettingsFrame(0)
        sf.settings = {0x99: 7}
        await c.send(sf)
        # an unknown frame type (0xEE) on stream 0 and on a stream: ignored (5.5)
        await c.send_raw(b"\x00\x00\x03\xee\x00\x00\x00\x00\x00abc" + b"\x00\x00\x01\xee\x00\x00\x00\x00\x05z")
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")


async def test_initial_window_size_change_applies_to_open_streams() -> None:
    async with raw_server(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) as c:
        await c.request(1, path="/big")
        headers = await c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
        assert headers is not None
        with trio.move_on_after(0.2):
            f = await c.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1)
            raise AssertionError(f"DATA sent with a zero window: {f}")
        sf = SettingsFrame(0)
        sf.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}
        await c.send(sf)
        status_body = bytearray()
        while True:
            f = await c.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1)
            status_body += f.data
            if "END_STREAM" in f.flags:
                break
        assert len(status_body) == 200_000


def _size_updates(block: bytes) -> list[int]:
    """The dynamic table size updates (RFC 7541 6.3) that start a header block."""
    updates = []
    i = 0
    while i < len(block) and block[i] & 0xE0 == 0x20:  # 001xxxxx
        value = block[i] & 0x1F
        i += 1
        if value == 0x1F:
            shift = 0
            while True:
                value += (block[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not block[i - 1] & 0x80:
                    break
        updates.append(value)
    return updates


@pytest.mark.parametrize(
    "sizes", [[0], [256], [1024], [1025], [4096], [65536], [256, 65536], [65536, 1024], [1024, 1024]], ids=str
)
async def test_hpack_table_size_updates_follow_rfc7541(sizes: list[int]) -> None:
    """Every SETTINGS_HEADER_TABLE_SIZE the client sends gets what strict decoders (nghttp2,
    Chromium's) demand of our next header block (RFC 7541 4.2, 6.3): at most two size updates at
    its start, none over the client's last size; when a size set since the previous block is
    below the decoder's current limit, an update must come and the first one may not exceed the
    lowest such size. Regression: a client lowering its size to exactly our encoder's cap (1024,
    ``h2load --header-table-size=1024``) got no update, and COMPRESSION_ERROR from its decoder."""
    sent = [*sizes, 128, 65536]  # the last two mid-connection, below and above our cap
    async with raw_server(settings={SettingsFrame.HEADER_TABLE_SIZE: sizes[0]}) as c:
        c.decoder.max_allowed_table_size = max(sent)  # the strict checks are below
        for size in sizes[1:]:
            await c.send(SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: size}))
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")
        sid = 3
        for size in (128, 65536):
            await c.send(SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: size}))
            for _ in range(3):
                await c.request(sid)
                assert await c.response(sid) == (200, b"Hello, world!")
                sid += 2
    # replay the frames as a strict decoder sees them: a size applies once the server ACKed it
    unacked = list(sent)
    limit, final, lowest = 4096, 4096, math.inf
    blocks = 0
    for f in c.seen:
        if isinstance(f, SettingsFrame) and "ACK" in f.flags:
            final = unacked.pop(0)
            lowest = min(lowest, final)
        elif isinstance(f, HeadersFrame):
            blocks += 1
            updates = _size_updates(f.data)
            assert len(updates) <= 2, updates
            assert all(u <= final for u in updates), (updates, final)
            if lowest < limit:
                assert updates and updates[0] <= lowest, (updates, lowest, limit)
            if updates:
                limit = updates[-1]
            lowest = math.inf
    assert not unacked and blocks == 7


# =============================================================================================
# PING and GOAWAY (6.7, 6.8)


async def test_ping_is_answered_and_ping_ack_is_not() -> None:
    async with raw_server() as c:
        await c.send(PingFrame(0, opaque_data=b"12345678"))
        f = await c.until(lambda f: isinstance(f, PingFrame))
        assert "ACK" in f.flags and f.opaque_data == b"12345678"
        await c.send(PingFrame(0, opaque_data=b"abcdefgh", flags=["ACK"]))
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")
        assert not any(isinstance(f, PingFrame) and f.opaque_data == b"abcdefgh" for f in c.seen)


async def test_ping_with_bad_length_or_stream() -> None:
    async with raw_server() as c:
        raw = bytearray(PingFrame(0, opaque_data=b"12345678").serialize())
        raw[0:3] = (7).to_bytes(3, "big")
        await c.send_raw(bytes(raw[:-1]))
        assert await c.error_code() == ("goaway", FRAME_SIZE_ERROR)
    async with raw_server() as c:
        raw = bytearray(PingFrame(0, opaque_data=b"12345678").serialize())
        raw[5:9] = (1).to_bytes(4, "big")
        await c.send_raw(bytes(raw))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_client_goaway_lets_streams_in_flight_finish() -> None:
    release = trio.Event()

    async def slow(request: http.Request) -> None:
        await release.wait()
        await request.respond(200, [], b"done")

    async with raw_server(slow) as c:
        await c.request(1)
        await c.request(3)
        await trio.sleep(0.05)
        await c.send(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR))
        release.set()
        assert await c.response(1) == (200, b"done")
        assert await c.response(3) == (200, b"done")
        frames = await c.closed()
        assert any(isinstance(f, GoAwayFrame) for f in c.seen + frames)


async def test_graceful_shutdown_two_step_goaway() -> None:
    shutdown = trio.Event()
    release = trio.Event()

    async def slow(request: http.Request) -> None:
        if request.path == "/slow":
            await release.wait()
        await request.respond(200, [], b"ok")

    async with raw_server(slow, shutdown=shutdown) as c:
        await c.request(1, path="/slow")
        await trio.sleep(0.05)
        shutdown.set()
        first = await c.goaway()
        assert first.last_stream_id == 2**31 - 1 and first.error_code == NO_ERROR
        ping = await c.until(lambda f: isinstance(f, PingFrame) and "ACK" not in f.flags)
        # a request sent before the client saw the GOAWAY is still served
        await c.request(3)
        await c.send(PingFrame(0, opaque_data=ping.opaque_data, flags=["ACK"]))
        second = await c.goaway()
        assert second.last_stream_id == 3 and second.error_code == NO_ERROR
        assert await c.response(3) == (200, b"ok")
        # one sent after the final GOAWAY is refused (or ignored)
        await c.request(5)
        release.set()
        assert await c.response(1) == (200, b"ok")
        rest = await c.closed()
        assert not any(isinstance(f, HeadersFrame) and f.stream_id == 5 for f in rest)


async def test_graceful_shutdown_drain_timeout_cuts_slow_streams() -> None:
    shutdown = trio.Event()

    async def forever(request: http.Request) -> None:
        await trio.sleep_forever()

    limits = Limits(drain_timeout=0.3)
    async with raw_server(forever, limits, shutdown=shutdown) as c:
        await c.request(1)
        await trio.sleep(0.05)
        shutdown.set()
        ping = await c.until(lambda f: isinstance(f, PingFrame) and "ACK" not in f.flags)
        await c.send(PingFrame(0, opaque_data=ping.opaque_data, flags=["ACK"]))
        with trio.fail_after(3):
            await c.closed()


# =============================================================================================
# stream states (5.1) and stream identifiers (5.1.1)


async def test_even_stream_id_from_client_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.request(2)
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_decreasing_stream_id_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.request(5)
        assert (await c.response(5))[0] == 200
        await c.request(3)
        kind, code = await c.error_code()
        assert kind == "goaway" and code in (PROTOCOL_ERROR, STREAM_CLOSED)


async def test_data_on_idle_stream_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send(DataFrame(1, data=b"x"))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_rst_stream_on_idle_stream_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send(RstStreamFrame(1, error_code=CANCEL))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_window_update_on_idle_stream_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send(WindowUpdateFrame(1, window_increment=10))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_priority_on_idle_stream_is_fine() -> None:
    async with raw_server() as c:
        await c.send(PriorityFrame(9, depends_on=0, stream_weight=10))
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")


async def test_data_on_half_closed_remote_stream_is_stream_closed() -> None:
    release = trio.Event()

    async def slow(request: http.Request) -> None:
        await release.wait()
        await request.respond(200, [], b"late")

    async with raw_server(slow) as c:
        await c.request(1)  # END_STREAM with the headers: half-closed (remote) on the server
        await c.send(DataFrame(1, data=b"too late"))
        kind, code = await c.error_code(1)
        assert code == STREAM_CLOSED
        release.set()
        # the connection goes on if it was only a stream error
        if kind == "rst":
            await c.request(3)
            assert await c.response(3) == (200, b"late")


async def test_frames_after_our_response_finished_first() -> None:
    """The server answered before the request body ended (and stopped the upload with
    RST_STREAM NO_ERROR, RFC 9113 8.1). Then: DATA still in flight is ignored but counts for
    the connection window (6.9); DATA past the connection window is FLOW_CONTROL_ERROR; the
    connection is otherwise unharmed."""

    async def early(request: http.Request) -> None:
        await request.respond(200, [], b"early")

    async with raw_server(early) as c:
        await c.request(1, end_stream=False, method="POST")
        assert await c.response(1) == (200, b"early")
        rst = await c.rst(1)
        assert rst.error_code == NO_ERROR
        # DATA sent before the client saw the RST: ignored, no error, connection fine
        await c.send(DataFrame(1, data=b"x" * 1000))
        await c.request(3)
        assert await c.response(3) == (200, b"early")
        assert not any(isinstance(f, GoAwayFrame) for f in c.seen)


async def test_ignored_data_on_a_stream_we_reset_is_credited_to_the_connection() -> None:
    """DATA the client sent before it saw our RST_STREAM is ignored (RFC 9113 5.1) but counts
    against the connection window and is given back (6.9): a client that keeps sending on the
    reset stream past the connection window's size gets WINDOW_UPDATEs, no error, and the
    connection keeps working."""

    async def early(request: http.Request) -> None:
        await request.respond(200, [], b"early")

    async with raw_server(early, Limits(stream_window=65535, connection_window=65535)) as c:
        await c.request(1, end_stream=False, method="POST")
        assert await c.response(1) == (200, b"early")
        assert (await c.rst(1)).error_code == NO_ERROR
        for _ in range(6):  # 96,000 bytes on a window of 65,535
            await c.send(DataFrame(1, data=b"x" * 16000))
        update = await c.until(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 0)
        assert isinstance(update, WindowUpdateFrame) and update.window_increment > 0
        await c.request(3)
        assert await c.response(3) == (200, b"early")
        assert not any(isinstance(f, (GoAwayFrame, RstStreamFrame)) and f.stream_id != 1 for f in c.seen)


async def test_half_closed_local_stream_still_enforces_flow_control() -> None:
    """Our response is complete but the handler still runs and reads nothing: the client's DATA
    past the stream window is FLOW_CONTROL_ERROR (6.9.1), not silently dropped."""
    gate = trio.Event()

    async def answers_then_waits(request: http.Request) -> None:
        await request.respond(200, [], b"early")
        await gate.wait()

    async with raw_server(answers_then_waits, Limits(stream_window=65535)) as c:
        await c.request(1, end_stream=False, method="POST")
        assert await c.response(1) == (200, b"early")
        for _ in range(5):
            await c.send(DataFrame(1, data=b"x" * 16384))
        _kind, code = await c.error_code(1)
        assert code == FLOW_CONTROL_ERROR
        gate.set()


async def test_data_after_end_stream_when_our_response_finished_first() -> None:
    """Our response finished first (half-closed local), then the client ends its body: the
    stream is closed, and DATA after that is STREAM_CLOSED (5.1, 6.1)."""
    gate = trio.Event()

    async def answers_then_waits(request: http.Request) -> None:
        await request.respond(200, [], b"early")
        await gate.wait()

    async with raw_server(answers_then_waits) as c:
        await c.request(1, end_stream=False, method="POST")
        assert await c.response(1) == (200, b"early")
        await c.send(DataFrame(1, data=b"body", flags=["END_STREAM"]))
        await c.send(DataFrame(1, data=b"after the end"))
        _kind, code = await c.error_code(1)
        assert code == STREAM_CLOSED
        gate.set()


async def test_data_after_end_stream_on_closed_stream_is_stream_closed() -> None:
    async with raw_server() as c:
        await c.request(1, path="/echo", end_stream=False, method="POST")
        await c.send(DataFrame(1, data=b"abc", flags=["END_STREAM"]))
        assert await c.response(1) == (200, b"abc")
        # the stream is closed (both sides sent END_STREAM); more DATA breaks 5.1/6.1
        await c.send(DataFrame(1, data=b"more"))
        _kind, code = await c.error_code(1)
        assert code == STREAM_CLOSED


async def test_headers_after_end_stream_on_closed_stream_is_stream_closed() -> None:
    async with raw_server() as c:
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")
        await c.send(c.headers(1))
        _kind, code = await c.error_code()
        assert code == STREAM_CLOSED


async def test_data_over_the_stream_window_on_open_stream_is_flow_control_error() -> None:
    gate = trio.Event()

    async def never_reads(request: http.Request) -> None:
        await gate.wait()

    limits = Limits(stream_window=65535)
    async with raw_server(never_reads, limits) as c:
        await c.request(1, end_stream=False, method="POST")
        for _ in range(4):
            await c.send(DataFrame(1, data=b"x" * 16384))
        await c.send(DataFrame(1, data=b"x" * 16384))  # 81920 > 65535
        _kind, code = await c.error_code(1)
        assert code == FLOW_CONTROL_ERROR
        gate.set()


async def test_data_over_the_connection_window_is_flow_control_error() -> None:
    gate = trio.Event()

    async def never_reads(request: http.Request) -> None:
        await gate.wait()

    limits = Limits(stream_window=65535, connection_window=65535 * 2)
    async with raw_server(never_reads, limits) as c:
        for sid in (1, 3, 5):
            await c.request(sid, end_stream=False, method="POST")
        for sid in (1, 3):
            for _ in range(4):
                await c.send(DataFrame(sid, data=b"x" * 16383))
        for _ in range(4):
            await c.send(DataFrame(5, data=b"x" * 16383))
        kind, code = await c.error_code()
        assert (kind, code) == ("goaway", FLOW_CONTROL_ERROR)
        gate.set()


async def test_window_update_overflow_on_stream_is_flow_control_error() -> None:
    gate = trio.Event()

    async def waits(request: http.Request) -> None:
        await gate.wait()

    async with raw_server(waits) as c:
        await c.request(1)
        await c.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
        _kind, code = await c.error_code(1)
        assert code == FLOW_CONTROL_ERROR
        gate.set()


async def test_window_update_overflow_on_connection_is_flow_control_error() -> None:
    async with raw_server() as c:
        await c.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
        assert await c.error_code() == ("goaway", FLOW_CONTROL_ERROR)


async def test_zero_window_increment_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send_raw(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
        _kind, code = await c.error_code()
        assert code == PROTOCOL_ERROR


async def test_rst_stream_from_client_cancels_the_handler_stream_only() -> None:
    seen: list[str] = []
    entered = trio.Event()

    async def waits_for_body(request: http.Request) -> None:
        if request.path == "/wait":
            entered.set()
            try:
                await request.read()
            except Exception as exc:
                seen.append(type(exc).__name__)
                raise
        await request.respond(200, [], b"ok")

    async with raw_server(waits_for_body) as c:
        await c.request(1, path="/wait", end_stream=False, method="POST")
        await entered.wait()
        await c.send(RstStreamFrame(1, error_code=CANCEL))
        await c.request(3)
        assert await c.response(3) == (200, b"ok")
        await trio.sleep(0.05)
        assert seen == ["Broken"]


# =============================================================================================
# frame errors (4.2, 6.x)


async def test_frame_over_max_frame_size_is_frame_size_error() -> None:
    async with raw_server() as c:
        await c.request(1, end_stream=False, method="POST", path="/echo")
        await c.send(DataFrame(1, data=b"x" * 16385))
        _kind, code = await c.error_code()
        assert code == FRAME_SIZE_ERROR


async def test_data_on_stream_zero_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_headers_on_stream_zero_is_a_protocol_error() -> None:
    async with raw_server() as c:
        block = c.block([(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/")])
        await c.send_raw(len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x00" + block)
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_bad_padding_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.request(1, end_stream=False, method="POST")
        # PADDED DATA frame whose pad length exceeds the payload
        await c.send_raw(b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x09x")
        _kind, code = await c.error_code()
        assert code == PROTOCOL_ERROR


async def test_continuation_without_headers_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.send(ContinuationFrame(1, data=b"", flags=["END_HEADERS"]))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_other_frame_inside_a_header_block_is_a_protocol_error() -> None:
    async with raw_server() as c:
        f = c.headers(1, end_headers=False)
        await c.send(f, PingFrame(0, opaque_data=b"12345678"))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)


async def test_headers_split_over_continuations_work() -> None:
    async with raw_server() as c:
        block = c.block(
            [(":method", "GET"), (":scheme", "http"), (":authority", "test"), (":path", "/"), ("x-long", "y" * 300)]
        )
        parts = [block[i : i + 50] for i in range(0, len(block), 50)]
        frames: list[Frame] = [HeadersFrame(1, data=parts[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(1, data=p) for p in parts[1:-1]]
        frames.append(ContinuationFrame(1, data=parts[-1], flags=["END_HEADERS"]))
        await c.send(*frames)
        assert await c.response(1) == (200, b"Hello, world!")


async def test_hpack_garbage_is_a_compression_error() -> None:
    async with raw_server() as c:
        await c.send(HeadersFrame(1, data=b"\xff\xff\xff\xff\xff", flags=["END_HEADERS", "END_STREAM"]))
        kind, code = await c.error_code()
        assert kind == "goaway" and code in (COMPRESSION_ERROR, PROTOCOL_ERROR)


async def test_push_promise_from_a_client_is_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.request(1, end_stream=False, method="POST")
        await c.send_raw(b"\x00\x00\x04\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02")
        kind, code = await c.error_code()
        assert (kind, code) == ("goaway", PROTOCOL_ERROR)


# =============================================================================================
# header errors (8.2, 8.3): malformed requests


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("Upper", "x"), (":authority", "a")],
            id="uppercase-name",
        ),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":authority", "a")], id="no-path"),
        pytest.param([(":scheme", "http"), (":path", "/"), (":authority", "a")], id="no-method"),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":method", "GET")], id="duplicate-pseudo"
        ),
        pytest.param([(":method", "GET"), (":scheme", "http"), ("x", "1"), (":path", "/")], id="pseudo-after-regular"),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":status", "200")], id="response-pseudo"
        ),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":bogus", "1")], id="unknown-pseudo"),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("connection", "close")], id="connection-header"
        ),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("te", "gzip")], id="te-not-trailers"),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a")], id="empty-path"),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", "a\nb")], id="newline-value"),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":protocol", "websocket")],
            id="protocol-without-connect",
        ),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("host", "b")],
            id="authority-host-mismatch",
        ),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "a"), ("host", "a")], id="two-hosts"
        ),
        pytest.param([(":method", "GET"), (":scheme", "http"), (":path", "/")], id="no-authority-no-host"),
        pytest.param([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")], id="connect-with-path"),
        pytest.param([(":method", "CONNECT"), (":scheme", "http")], id="connect-without-authority"),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("x:y", "1")],
            id="colon-in-name",
        ),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("x", " v")],
            id="leading-space-value",
        ),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("", "v")], id="empty-name"
        ),
        pytest.param(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("keep-alive", "5")],
            id="keep-alive-header",
        ),
    ],
)
async def test_malformed_request_headers(headers: list[tuple[str, str]]) -> None:
    async with raw_server() as c:
        await c.send(c.headers(1, headers))
        _kind, code = await c.error_code(1)
        assert code == PROTOCOL_ERROR
        # whichever the error's scope, no handler saw the request and nothing crashed
        assert not any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in c.seen)


async def test_malformed_request_is_a_stream_error_and_the_connection_goes_on() -> None:
    async with raw_server() as c:
        await c.send(
            c.headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), ("Bad", "x"), (":authority", "a")])
        )
        assert await c.error_code(1) == ("rst", PROTOCOL_ERROR)
        await c.request(3)
        assert await c.response(3) == (200, b"Hello, world!")


async def test_cookies_are_joined_and_headers_reach_the_app() -> None:
    seen: list[http.Headers] = []

    async def app(request: http.Request) -> None:
        seen.append(request.headers)
        await request.respond(200, [], b"")

    async with raw_server(app) as c:
        hdrs = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a.test"),
            (":path", "/p?q=1"),
            ("cookie", "a=1"),
            ("x-multi", "1"),
            ("cookie", "b=2"),
            ("x-multi", "2"),
        ]
        await c.send(c.headers(1, hdrs))
        await c.response(1)
    assert seen[0]["cookie"] == "a=1; b=2"
    assert seen[0].get_all("x-multi") == ["1", "2"]


async def test_content_length_mismatch_is_a_protocol_error() -> None:
    async with raw_server() as c:
        hdrs = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/echo"),
            ("content-length", "10"),
        ]
        await c.send(c.headers(1, hdrs, end_stream=False), DataFrame(1, data=b"abc", flags=["END_STREAM"]))
        _kind, code = await c.error_code(1)
        assert code == PROTOCOL_ERROR


async def test_trailers_without_end_stream_are_a_protocol_error() -> None:
    async with raw_server() as c:
        await c.request(1, end_stream=False, method="POST")
        await c.send(HeadersFrame(1, data=c.block([("x-trailer", "1")]), flags=["END_HEADERS"]))
        _kind, code = await c.error_code(1)
        assert code == PROTOCOL_ERROR


# =============================================================================================
# concurrency limit (5.1.2) and REFUSED_STREAM


async def test_streams_over_the_limit_are_refused_not_the_connection() -> None:
    gate = trio.Event()

    async def waits(request: http.Request) -> None:
        await gate.wait()
        await request.respond(200, [], b"ok")

    async with raw_server(waits, Limits(max_concurrent_streams=2)) as c:
        await c.request(1)
        await c.request(3)
        await c.request(5)
        rst = await c.rst(5)
        assert rst.error_code == REFUSED_STREAM
        gate.set()
        assert await c.response(1) == (200, b"ok")
        assert await c.response(3) == (200, b"ok")
        await c.request(7)
        assert await c.response(7) == (200, b"ok")
        assert not any(isinstance(f, GoAwayFrame) for f in c.seen)


# =============================================================================================
# cleartext sniffing (http.server): neither the preface nor HTTP/1.x ends the connection


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x00\x00\x00\x00garbage\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    ],
)
async def test_cleartext_garbage_ends_the_connection(garbage: bytes) -> None:
    async with tcp_server() as (host, port):
        c = await raw_tcp(host, port)
        await c.send_raw(garbage)
        with trio.fail_after(TIMEOUT):
            data = b""
            while True:
                chunk = await c.stream.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert b"HTTP/1.1" not in data
        await c.stream.aclose()


async def test_cleartext_preface_gets_http2() -> None:
    async with tcp_server() as (host, port):
        c = await raw_tcp(host, port)
        await c.handshake(window=1 << 20)
        await c.request(1)
        assert await c.response(1) == (200, b"Hello, world!")
        await c.stream.aclose()


async def test_protocol_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with tcp_server() as (host, port):
        c = await raw_tcp(host, port)
        await c.handshake()
        await c.send(DataFrame(1, data=b"x"))
        assert await c.error_code() == ("goaway", PROTOCOL_ERROR)
        assert await c.closed() is not None
        await c.stream.aclose()
    assert not [r for r in caplog.records if r.exc_info]


def _unused(*_: Any) -> None:  # keep imports used in type positions only
    _ = math
