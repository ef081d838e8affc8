"""HTTP/2 client: ``request()`` sends a large or streamed body while the response is read.

A server that answers as the body arrives (a streaming echo) deadlocks a half-duplex client as soon
as both directions fill their flow-control windows; an early answer must reach the caller while
the upload is still going, and whoever ends the exchange (a reset, a closed response, the request's
deadline, a failing iterator) must end the upload and close its iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
from _peers import hypercorn
from test_http2 import h2_pair

from layers import http, http2, tcp
from stack import Broken, Stack, Timeout
from stack.testing import memory_pair

TIMEOUT = 10.0
MIB = 1 << 20


async def streaming_echo(request: http.Request) -> None:
    """/echo: each chunk back as it arrives; /early: 413 at once, body unread; else 200 empty."""
    if request.path == "/echo":
        out = await request.start_response(200, [("content-type", "application/octet-stream")])
        while chunk := await request.body.recv(65536):
            await out.send(chunk)
        await out.done()
    elif request.path == "/early":
        await request.respond(413, [], b"too large")
    else:
        await request.read()
        await request.respond(200, [], b"")


@pytest.fixture
async def conn() -> AsyncIterator[http2.H2ClientConnection]:
    """A client connection to a server running ``streaming_echo``, with 64 KiB stream windows on
    both sides (so a few hundred KiB each way fill every buffer)."""
    limits = http.Limits(stream_window=65535, connection_window=65535)
    async with h2_pair(streaming_echo, limits, limits, capacity=16384) as client:
        yield client


class Chunks:
    """An async iterable of ``count`` chunks of ``size`` bytes that records how it ended."""

    def __init__(self, count: int | None, size: int = 16384, fail_at: int | None = None) -> None:
        self.count, self.size, self.fail_at = count, size, fail_at
        self.given = 0
        self.closed = trio.Event()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        try:
            while self.count is None or self.given < self.count:
                if self.given == self.fail_at:
                    raise ValueError("the body's source failed")
                self.given += 1
                yield bytes([self.given % 251]) * self.size
                await trio.lowlevel.checkpoint()
        finally:
            self.closed.set()

    def expected(self) -> bytes:
        return b"".join(bytes([i % 251]) * self.size for i in range(1, self.given + 1))


async def test_streaming_echo_of_a_streamed_body_beyond_every_window(conn: http2.H2ClientConnection) -> None:
    body = Chunks(count=64)  # 1 MiB each way, 16x the windows
    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/echo", body=body)
        assert response.status == 200
        echoed = await response.read(max_bytes=2 * MIB)
    assert len(echoed) == 64 * 16384 and echoed == body.expected()


async def test_streaming_echo_of_a_large_bytes_body(conn: http2.H2ClientConnection) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than the peer's windows
    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/echo", body=data)
        assert await response.read(max_bytes=2 * MIB) == data


async def test_a_small_body_goes_with_the_request_and_the_connection_is_reused(
    conn: http2.H2ClientConnection,
) -> None:
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            response = await conn.request("POST", "/echo", body=b"ping")
            assert await response.read() == b"ping"


async def test_an_early_answer_arrives_while_an_endless_body_is_uploading(conn: http2.H2ClientConnection) -> None:
    body = Chunks(count=None)
    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/early", body=body)
        assert response.status == 413
        assert await response.read() == b"too large"
        await body.closed.wait()  # the server reset the upload: the iterator was closed, not drained
    assert body.given < 1000


async def test_closing_the_response_stops_the_upload(conn: http2.H2ClientConnection) -> None:
    body = Chunks(count=None)
    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/echo", body=body)
        assert len(await response.body.recv(65536)) > 0
        await response.aclose()
        await body.closed.wait()
        response = await conn.request("GET", "/")  # the connection is unharmed
        assert response.status == 200


async def test_an_iterator_failing_after_the_head_breaks_the_response_body(conn: http2.H2ClientConnection) -> None:
    body = Chunks(count=None, fail_at=20)
    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/echo", body=body)
        assert response.status == 200
        with pytest.raises(Broken, match="request body failed") as info:
            await response.read(max_bytes=2 * MIB)
        assert isinstance(info.value.__cause__, ValueError)
        assert body.closed.is_set()
        assert (await conn.request("GET", "/")).status == 200


async def test_an_iterator_failing_before_the_head_raises_its_own_error(conn: http2.H2ClientConnection) -> None:
    for fail_at in (0, 20):  # before anything was sent, and with the body under way
        body = Chunks(count=None, fail_at=fail_at)
        with trio.fail_after(TIMEOUT), pytest.raises(ValueError, match="source failed"):
            await conn.request("POST", "/", body=body)  # this app answers only after the whole body
        assert body.closed.is_set()
    with trio.fail_after(TIMEOUT):
        assert (await conn.request("GET", "/")).status == 200


async def test_the_deadline_passing_during_the_upload_breaks_the_response_body(
    conn: http2.H2ClientConnection,
) -> None:
    async def slow() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 100
            await trio.sleep(0.01)

    with trio.fail_after(TIMEOUT):
        response = await conn.request("POST", "/echo", body=slow(), deadline=trio.current_time() + 0.3)
        assert response.status == 200
        with pytest.raises(Broken, match="deadline"):
            await response.read(max_bytes=2 * MIB)
        assert (await conn.request("GET", "/")).status == 200


async def test_the_deadline_passing_before_the_head_is_a_timeout(conn: http2.H2ClientConnection) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b"start"
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT), pytest.raises(Timeout):
        await conn.request("POST", "/", body=stalls(), deadline=trio.current_time() + 0.2)
    with trio.fail_after(TIMEOUT):
        assert (await conn.request("GET", "/")).status == 200


@pytest.mark.interop
async def test_interop_hypercorn_streaming_echo(tmp_path: Path) -> None:
    """hypercorn's trio worker over h2c (prior knowledge): it echoes each chunk as it arrives.

    Not its early 413: hypercorn 0.18's HTTP/2 server drops the whole connection when DATA reaches
    a stream it has already answered (a KeyError in its event loop), and some DATA is always in
    flight when the answer goes; our stop is tested against a bare h2 server below."""
    with trio.fail_after(60):
        async with hypercorn(tmp_path) as port:
            client = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=True))
            async with await client.connect(deadline=trio.current_time() + 10) as conn:
                assert isinstance(conn, http2.H2ClientConnection)
                body = Chunks(count=256)  # 4 MiB
                response = await conn.request("POST", "/echo", body=body)
                assert response.status == 200
                assert body.given < 256  # hypercorn answered while the body was going out
                echoed = await response.read(max_bytes=8 * MIB)
                assert len(echoed) == 4 * MIB and echoed == body.expected()
                response = await conn.request("POST", "/echo", body=b"the same connection")
                assert await response.read() == b"the same connection"


async def test_an_early_final_answer_stops_the_upload_with_rst_stream_cancel() -> None:
    """Against a bare h2 server that answers 413 at the first DATA, never resets the stream and
    never acknowledges what it reads: without the stop the upload would wait on a shut window
    until send_timeout."""
    a, b = memory_pair(capacity=1 << 20)
    core = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    core.initiate_connection()
    resets: list[tuple[int, int]] = []
    answered: set[int] = set()

    async def bare_server() -> None:
        await b.send(core.data_to_send())
        while data := await b.recv(65536):
            for event in core.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id not in answered:
                    answered.add(event.stream_id)
                    core.send_headers(event.stream_id, [(b":status", b"413"), (b"content-length", b"9")])
                    core.send_data(event.stream_id, b"too large", end_stream=True)
                elif isinstance(event, h2.events.RequestReceived) and (b":method", b"GET") in event.headers:
                    core.send_headers(event.stream_id, [(b":status", b"204")], end_stream=True)
                elif isinstance(event, h2.events.StreamReset):
                    resets.append((event.stream_id, event.error_code))
            await b.send(core.data_to_send())

    limits = http.Limits(send_timeout=30.0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bare_server)
            async with await http2.client(limits, "test.example", "http").attach(a) as conn:
                endless = Chunks(count=None)
                response = await conn.request("PUT", "/upload", body=endless)
                assert response.status == 413
                await endless.closed.wait()  # well before send_timeout
                assert await response.read() == b"too large"  # still readable after the stop
                assert (await conn.request("GET", "/")).status == 204  # the connection is unharmed
                assert resets == [(response.body.stream_id, h2.errors.ErrorCodes.CANCEL)]  # sent before the GET
            nursery.cancel_scope.cancel()
