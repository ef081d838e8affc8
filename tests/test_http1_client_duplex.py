"""layers.http1's client in full duplex: an early answer while a request body is still going out.

Against our own server (memory pairs with small buffers, and TCP with small socket buffers) and
against minimal raw servers written here with plain trio sockets (no code of ours on that side):
an early 413 during a large upload, a server that answers early and shuts its read side or closes,
echo streams of several MiB each way, a body that waits for the echo of its previous chunk,
cancellation and deadlines in the middle of an upload, and when the connection is kept.

Most tests run twice: inside ``async with conn:`` (the body task lives in the connection's
nursery and goes on after ``request()`` returned) and on a plain connection (the body task lives
in ``request()``'s own nursery). Every test bounds its time with ``trio.fail_after``.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from _peers import hypercorn

from layers import http, http1, tcp
from layers.http1 import CLIENT_ENGINES
from stack import Broken, ByteStream, Closed, ProtocolError, Stack, StackError, Timeout
from stack.testing import memory_pair

CHUNK = 64 * 1024
SMALL_BUFFER = 64 * 1024  # socket buffer sizes asked of the kernel (it doubles them)
MODES = ["async-with", "plain"]


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class Body:
    """A request body as an async iterable: ``payload`` in ``CHUNK`` pieces, or endless; counts
    what the client took and records whether the generator ended (finally ran)."""

    def __init__(self, payload: bytes = b"", *, endless: bool = False, delay: float = 0.0, chunk: int = CHUNK) -> None:
        self.payload = payload
        self.chunk = chunk
        self.endless = endless
        self.delay = delay
        self.taken = 0
        self.ended = False
        self.gate: trio.MemoryReceiveChannel[None] | None = None  # one item per chunk, if set

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            i = 0
            while self.endless or i < len(self.payload):
                if self.gate is not None:
                    await self.gate.receive()
                elif self.delay:
                    await trio.sleep(self.delay)
                else:
                    await trio.lowlevel.checkpoint()
                piece = self.payload[i : i + self.chunk] if not self.endless else b"x" * self.chunk
                i += len(piece)
                self.taken += len(piece)
                yield piece
        finally:
            self.ended = True


def no_tasks_left() -> bool:
    """Whether no request body task of the client runs anywhere in this trio run."""
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.name == "stack.http1 request body":
            return False
        todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return True


@pytest.fixture(autouse=True, params=["reference", "fast"])
def client_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both client engines (``engine="auto"`` picks the one under test)."""
    monkeypatch.setitem(CLIENT_ENGINES, "auto", CLIENT_ENGINES[request.param])
    return str(request.param)


@asynccontextmanager
async def client(lower: ByteStream, mode: str) -> AsyncIterator[http1.ClientConnection]:
    conn = await http1.client(authority="duplex.test").attach(lower)
    if mode == "async-with":
        async with conn:
            yield conn
    else:
        try:
            yield conn
        finally:
            await conn.aclose()


async def read_all(response: http.Response, *, limit: float = 30) -> bytes:
    out = bytearray()
    with trio.fail_after(limit):
        while chunk := await response.body.recv():
            out += chunk
    return bytes(out)


# ------------------------------------------------------------------------------------ our server


async def echo_app(request: http.Request) -> None:
    """Answers 200 at once, then echoes the request body as it arrives."""
    stream = await request.start_response(200, [("content-type", "application/octet-stream")])
    while chunk := await request.body.recv():
        await stream.send(chunk)
    await stream.done()


def serve_memory(nursery: trio.Nursery, app: http.App, capacity: int = SMALL_BUFFER) -> ByteStream:
    """Our server on one end of a memory pair with small buffers; the other end is returned."""
    client_end, server_end = memory_pair(capacity=capacity)

    async def run() -> None:
        conn = await http1.server(app).attach(server_end)
        await conn.serve(app)

    nursery.start_soon(run)
    return client_end


def shrink(sock: socket.socket | trio.socket.SocketType) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)


async def connect_small(port: int) -> ByteStream:
    lower = await tcp.connect("127.0.0.1", port).connect(deadline=trio.current_time() + 5)
    shrink(lower.socket)  # type: ignore[attr-defined]
    return lower


@asynccontextmanager
async def our_tcp_server(app: http.App) -> AsyncIterator[int]:
    """Our server on 127.0.0.1 with small socket buffers (set on the listener, so accepted sockets
    have them too); yields the port."""
    listener = await tcp.listen("127.0.0.1", 0).listen()
    shrink(listener.socket)
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            async with trio.open_nursery() as conns:
                while True:
                    stream = await listener.accept()
                    conn = await http1.server(app).attach(stream)
                    conns.start_soon(conn.serve, app)

        nursery.start_soon(serve)
        yield listener.address[1]
        nursery.cancel_scope.cancel()
    await listener.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_early_413_stops_a_large_upload(nursery: trio.Nursery, mode: str) -> None:
    async def refuse(request: http.Request) -> None:
        await request.respond(413, body=b"too large")  # without reading the body

    body = Body(endless=True)
    with trio.fail_after(10):
        async with client(serve_memory(nursery, refuse), mode) as conn:
            response = await conn.request("PUT", "/upload", body=body.chunks())
            assert response.status == 413
            assert await response.read() == b"too large"
            assert body.taken < 2 * 1024 * 1024  # the upload stopped early, it did not run on
            with pytest.raises(StackError):  # the request never ended: the connection closed
                await conn.request("GET", "/")
            assert no_tasks_left()


@pytest.mark.parametrize("mode", MODES)
async def test_echo_both_ways_larger_than_every_buffer_over_tcp(mode: str) -> None:
    payload = data(6 * 1024 * 1024)
    with trio.fail_after(60):
        async with our_tcp_server(echo_app) as port:
            async with client(await connect_small(port), mode) as conn:
                if mode == "plain":  # no nursery of the connection: the answer cannot be read as it comes
                    with pytest.raises(Broken, match="async with conn"):
                        await conn.request("POST", "/echo", body=Body(payload).chunks())
                    return
                body = Body(payload)
                response = await conn.request("POST", "/echo", body=body.chunks())
                assert response.status == 200
                assert body.taken < len(payload)  # request() returned while the body was still going
                echoed = await read_all(response)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
                assert body.ended
                # both the request and the response ended: the connection is kept
                response = await conn.request("POST", "/echo", body=b"again")
                assert await response.read() == b"again"
            assert no_tasks_left()


@pytest.mark.parametrize("mode", MODES)
async def test_small_echo_on_a_memory_pair(nursery: trio.Nursery, mode: str) -> None:
    payload = data(300_000, seed=2)  # over the pair's buffers, under DUPLEX_BUFFER
    with trio.fail_after(20):
        async with client(serve_memory(nursery, echo_app, capacity=4096), mode) as conn:
            response = await conn.request("POST", "/echo", body=Body(payload).chunks())
            assert await read_all(response) == payload
            response = await conn.request("GET", "/")  # kept alive
            assert response.status == 200 and await response.read() == b""


async def test_a_body_that_waits_for_its_echo(nursery: trio.Nursery) -> None:
    """Each chunk goes out only after the echo of the previous one was read: only a client whose
    sending goes on by itself while the caller reads can do this."""
    body = Body(data(20 * 1000, seed=3), chunk=1000)
    send_gate, body.gate = trio.open_memory_channel[None](1)
    with trio.fail_after(20):
        async with client(serve_memory(nursery, echo_app), "async-with") as conn:
            await send_gate.send(None)
            response = await conn.request("POST", "/ping-pong", body=body.chunks())
            got = bytearray()
            while chunk := await response.body.recv():
                got += chunk
                if len(got) % 1000 == 0 and len(got) < len(body.payload):
                    await send_gate.send(None)  # the echo of a chunk came: let the next one go
            assert bytes(got) == body.payload


async def test_cancelled_before_the_head_leaves_nothing_running(nursery: trio.Nursery) -> None:
    never = trio.Event()

    async def slow(request: http.Request) -> None:
        await never.wait()  # reads nothing, answers nothing

    for mode in MODES:
        body = Body(endless=True)
        with trio.fail_after(10):
            async with client(serve_memory(nursery, slow), mode) as conn:
                with trio.move_on_after(0.2) as scope:
                    await conn.request("POST", "/", body=body.chunks())
                assert scope.cancelled_caught
                assert body.ended  # the body's generator was stopped (cancelled), not left hanging
                assert no_tasks_left()
                with pytest.raises(Broken, match="failed in the middle"):
                    await conn.request("GET", "/")


async def test_cancelled_read_does_not_stop_the_body_and_aclose_does(nursery: trio.Nursery) -> None:
    body = Body(endless=True, delay=0.01)
    with trio.fail_after(10):
        async with client(serve_memory(nursery, echo_app), "async-with") as conn:
            response = await conn.request("POST", "/echo", body=body.chunks())
            assert await response.body.recv_exactly(CHUNK) == b"x" * CHUNK
            with trio.move_on_after(0.05):
                await trio.sleep_forever()  # the caller does something else; the body goes on
            with trio.move_on_after(0.1):
                while True:
                    await response.body.recv()  # a cancelled recv consumes nothing...
            taken = body.taken
            await trio.sleep(0.1)
            assert body.taken > taken  # ...and does not stop the body
            await response.aclose()  # closing the response before its end stops the body
            assert body.ended and no_tasks_left()
            taken = body.taken
            await trio.sleep(0.05)
            assert body.taken == taken
            with pytest.raises(Closed, match="closed before its end"):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_deadline_before_the_head(nursery: trio.Nursery, mode: str) -> None:
    async def read_slowly(request: http.Request) -> None:
        while True:  # 100 kB/s: the upload cannot end before the deadline
            if not await request.body.recv(1000):
                break
            await trio.sleep(0.01)
        await request.respond(200)

    body = Body(endless=True)
    with trio.fail_after(10):
        async with client(serve_memory(nursery, read_slowly), mode) as conn:
            start = trio.current_time()
            with pytest.raises(Timeout):
                await conn.request("POST", "/", body=body.chunks(), deadline=start + 0.3)
            assert trio.current_time() - start < 2
            assert body.ended and no_tasks_left()
            with pytest.raises(Broken, match="timed out"):
                await conn.request("GET", "/")


async def test_deadline_after_the_head_stops_the_body_and_breaks_the_response(nursery: trio.Nursery) -> None:
    body = Body(endless=True, delay=0.01)
    with trio.fail_after(10):
        async with client(serve_memory(nursery, echo_app), "async-with") as conn:
            start = trio.current_time()
            response = await conn.request("POST", "/echo", body=body.chunks(), deadline=start + 0.5)
            assert response.status == 200
            got = 0
            with pytest.raises(Broken, match="request's deadline") as caught:
                while chunk := await response.body.recv():
                    got += len(chunk)
            assert isinstance(caught.value.__cause__, Timeout)
            assert got > 0 and 0.4 < trio.current_time() - start < 3
            await trio.testing.wait_all_tasks_blocked()  # the body task was closing the connection
            assert body.ended and no_tasks_left()
            with pytest.raises(Broken):
                await conn.request("GET", "/")


async def test_response_recv_deadline_loses_nothing_and_leaves_the_body_alone(nursery: trio.Nursery) -> None:
    gate_send, gate = trio.open_memory_channel[None](0)
    body = Body(data(3 * CHUNK, seed=4))
    body.gate = gate
    with trio.fail_after(10):
        async with client(serve_memory(nursery, echo_app), "async-with") as conn:
            response = await conn.request("POST", "/echo", body=body.chunks())
            with pytest.raises(Timeout):  # nothing was sent yet: nothing to echo
                await response.body.recv(deadline=trio.current_time() + 0.05)
            got = bytearray()
            for _ in range(3):
                await gate_send.send(None)  # the body task still waits on its iterator
                got += await response.body.recv_exactly(CHUNK, deadline=trio.current_time() + 5)
            assert await response.body.recv() == b""
            assert bytes(got) == body.payload
            response = await conn.request("GET", "/")  # both ended: kept
            assert await response.read() == b""


@pytest.mark.parametrize("mode", MODES)
async def test_body_error_before_and_after_the_head(nursery: trio.Nursery, mode: str) -> None:
    class Boom(Exception):
        pass

    async def failing(n: int, delay: float) -> AsyncIterator[bytes]:
        for _ in range(n):
            await trio.sleep(delay)
            yield b"y" * 1000
        raise Boom("the source of the body failed")

    async def read_all_then_answer(request: http.Request) -> None:
        await request.read()
        await request.respond(200)

    with trio.fail_after(10):
        async with client(serve_memory(nursery, read_all_then_answer), mode) as conn:
            with pytest.raises(Boom):  # before the head: the iterator's own exception
                await conn.request("POST", "/", body=failing(3, 0))
        async with client(serve_memory(nursery, echo_app), mode) as conn:
            if mode == "plain":  # request() waits for the body: the same error, from request()
                with pytest.raises(Boom):
                    await conn.request("POST", "/", body=failing(5, 0.01))
                return
            response = await conn.request("POST", "/", body=failing(5, 0.01))
            with pytest.raises(Broken, match="request body failed") as caught:
                await response.read()
            assert isinstance(caught.value.__cause__, Boom)
            await trio.testing.wait_all_tasks_blocked()  # the body task was closing the connection
            assert no_tasks_left()


@pytest.mark.parametrize("mode", MODES)
async def test_expect_100_continue_with_an_early_refusal(nursery: trio.Nursery, mode: str) -> None:
    async def refuse(request: http.Request) -> None:
        await request.respond(417, body=b"no")

    body = Body(endless=True)
    with trio.fail_after(10):
        async with client(serve_memory(nursery, refuse), mode) as conn:
            response = await conn.request("POST", "/", headers={"expect": "100-continue"}, body=body.chunks())
            assert response.status == 417 and await response.read() == b"no"
            assert body.taken == 0  # never asked for a chunk
            with pytest.raises(StackError):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_large_bytes_body_read_whole_then_answered_keeps_the_connection(nursery: trio.Nursery, mode: str) -> None:
    async def not_found(request: http.Request) -> None:
        await request.read()
        await request.respond(404, body=b"nothing here")

    with trio.fail_after(10):
        async with client(serve_memory(nursery, not_found), mode) as conn:
            for _ in range(3):  # a body over INLINE_SEND goes out from a task; read whole, then a 404
                response = await conn.request("PUT", "/", body=data(http1.INLINE_SEND * 4))
                assert response.status == 404 and await response.read() == b"nothing here"


@pytest.mark.parametrize("mode", MODES)
async def test_a_2xx_head_before_the_request_head_was_flushed(nursery: trio.Nursery, mode: str) -> None:
    """The server answers 200 after the first byte of the request, while the client still flushes a
    large head: the body must still go out (the server waits for it before ending its answer)."""
    client_end, server_end = memory_pair(capacity=1024)

    async def raw() -> None:
        await server_end.recv_exactly(1)
        await server_end.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await server_end.recv_until(b"\r\n\r\n", max_bytes=65536)
        body = await server_end.recv_until(b"0\r\n\r\n")
        await server_end.send(body)  # the chunked request body, echoed as the chunked response body

    async def hello() -> AsyncIterator[bytes]:
        yield b"hello"

    nursery.start_soon(raw)
    with trio.fail_after(10):
        async with client(client_end, mode) as conn:
            headers = {"x-padding": "p" * 20_000}
            response = await conn.request("POST", "/", headers=headers, body=hello())
            assert response.status == 200 and await response.read() == b"hello"


# -------------------------------------------------------------------------------- raw servers


Handler = Callable[[trio.SocketStream], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """One connection served by ``handler`` on a plain trio socket with small buffers."""
    sock = trio.socket.socket()
    shrink(sock)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            conn, _ = await sock.accept()
            async with trio.SocketStream(conn) as stream:
                await handler(stream)

        nursery.start_soon(accept)
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()
    sock.close()


async def read_head(stream: trio.SocketStream, head: bytes = b"") -> bytes:
    """The request head (starting with ``head``, bytes already read); what follows it is left in
    the kernel (we read byte by byte at the end)."""
    while not head.endswith(b"\r\n\r\n"):
        byte = await stream.receive_some(1)
        assert byte, "the client closed before its head ended"
        head += byte
    return head


async def discard(stream: trio.SocketStream, seconds: float) -> None:
    with trio.move_on_after(seconds):
        while await stream.receive_some(65536):
            pass


@pytest.mark.parametrize("mode", MODES)
async def test_raw_server_413_then_stops_reading(mode: str) -> None:
    """The server answers 413 after the head and reads nothing more: without full duplex the
    client would block on a full socket buffer forever."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 7\r\nconnection: close\r\n\r\ntoo big"
        )
        await trio.sleep_forever()

    body = Body(endless=True)
    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), mode) as conn:
            response = await conn.request("PUT", "/big", body=body.chunks())
            assert response.status == 413 and await response.read() == b"too big"
            assert body.ended and no_tasks_left()
            with pytest.raises(StackError):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_raw_server_413_for_a_large_bytes_body(mode: str) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), mode) as conn:
            response = await conn.request("PUT", "/big", body=data(8 * 1024 * 1024))
            assert response.status == 413 and await response.read() == b"no"
            assert no_tasks_left()
            with pytest.raises(Closed, match="before the request body was sent whole"):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_raw_server_answers_and_shuts_its_read_side(mode: str) -> None:
    """A complete 200 with ``Connection: close`` while the upload goes on, then SHUT_RD (Linux
    then leaves the client's bytes unacknowledged: its sends block). The response ends first and
    the server will close: the body is given up at once and the connection is not kept."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        stream.socket.shutdown(socket.SHUT_RD)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await trio.sleep_forever()

    body = Body(endless=True)
    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), mode) as conn:
            response = await conn.request("PUT", "/", body=body.chunks())
            assert response.status == 200 and await response.read() == b"ok"
            assert body.ended and no_tasks_left()
            with pytest.raises(Closed, match="before the request body was sent whole"):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_raw_server_answers_then_closes_abruptly(mode: str) -> None:
    """413, then close() with unread bytes: the kernel sends a reset, our later sends fail; the
    response that arrived before is still returned."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.receive_some(1000)
        await stream.send_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 7\r\n\r\ntoo big")
        await trio.sleep(0.05)
        stream.socket.close()

    body = Body(endless=True)
    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), mode) as conn:
            response = await conn.request("PUT", "/", body=body.chunks())
            assert response.status == 413 and await response.read() == b"too big"
            assert body.ended and no_tasks_left()
            with pytest.raises(StackError):
                await conn.request("GET", "/")


@pytest.mark.parametrize("mode", MODES)
async def test_raw_server_answers_early_and_reads_on(mode: str) -> None:
    """A complete 200 after the head, on a kept-alive connection, then the server reads the rest of
    the body (it must, to find the next request): the body goes on to its end, the next request
    waits for it and uses the same connection."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
        seen = b""
        while (end := seen.find(b"\r\n0\r\n\r\n")) < 0:  # the chunked body's end (not in the data)
            more = await stream.receive_some(65536)
            assert more
            seen = seen[-16:] + more
        await read_head(stream, seen[end + 7 :])  # the next head may have come in the same read
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
        await discard(stream, 5)

    body = Body(b"b" * (6 * CHUNK), delay=0.02)
    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), mode) as conn:
            response = await conn.request("PUT", "/", body=body.chunks())
            assert await response.read() == b"early"
            if mode == "async-with":
                assert body.taken < len(body.payload)  # the response ended before the body
            response = await conn.request("GET", "/second")
            assert body.taken == len(body.payload) and body.ended
            assert await response.read() == b"second"


async def test_raw_server_breaks_its_answer_while_the_body_goes_on() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        await discard(stream, 10)

    body = Body(endless=True, delay=0.005)
    with trio.fail_after(10):
        async with raw_server(handler) as port, client(await connect_small(port), "async-with") as conn:
            response = await conn.request("POST", "/", body=body.chunks())
            assert await response.body.recv() == b"abc"
            with pytest.raises(ProtocolError):
                await response.body.recv()
            assert body.ended and no_tasks_left()  # a broken answer stops the body at once


async def chunked_echo(stream: trio.SocketStream, rest: bytes = b"") -> bytes:
    """Answer 200 chunked at once, then copy the chunked request body back as it comes (the same
    framing serves both ways), one chunk at a time: read a chunk, write it, read the next.
    Returns the bytes read past the body."""
    await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    buf = bytearray(rest)

    async def fill(n: int) -> None:
        while len(buf) < n:
            more = await stream.receive_some(65536)
            assert more, "the client closed in the middle of its body"
            buf.extend(more)

    while True:
        while b"\r\n" not in buf:
            await fill(len(buf) + 1)
        end = buf.index(b"\r\n") + 2
        size = int(bytes(buf[: end - 2]).split(b";")[0], 16)
        await fill(end + size + 2)
        await stream.send_all(bytes(buf[: end + size + 2]))  # the size line, the data, CRLF (no trailers)
        del buf[: end + size + 2]
        if size == 0:
            return bytes(buf)


async def test_raw_chunked_echo_server_several_mib_each_way() -> None:
    payload = data(4 * 1024 * 1024, seed=5)

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        rest = await chunked_echo(stream)
        await read_head(stream, rest)  # a second request on the same connection
        await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        await discard(stream, 5)

    with trio.fail_after(60):
        async with raw_server(handler) as port, client(await connect_small(port), "async-with") as conn:
            response = await conn.request("POST", "/echo", body=Body(payload).chunks())
            assert response.status == 200
            echoed = await read_all(response)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            response = await conn.request("GET", "/again")  # both ended: the same connection
            assert response.status == 204


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


# ------------------------------------------------------------------ interop: hypercorn (trio worker)


@pytest.mark.interop
async def test_interop_hypercorn_streaming_echo_and_early_413(tmp_path: Path) -> None:
    payload = data(4 * 1024 * 1024, seed=6)
    with trio.fail_after(60):
        async with hypercorn(tmp_path) as port:
            client = Stack(tcp.connect("127.0.0.1", port), http.client())
            async with await client.connect(deadline=trio.current_time() + 10) as conn:
                assert isinstance(conn, http1.ClientConnection)
                body = Body(payload)
                response = await conn.request("POST", "/echo", body=body.chunks())
                assert response.status == 200
                assert body.taken < len(payload)  # hypercorn answered while the body was going out
                echoed = await read_all(response)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
                response = await conn.request("POST", "/echo", body=b"kept alive")  # the same connection
                assert await response.read() == b"kept alive"
            async with await client.connect(deadline=trio.current_time() + 10) as conn:
                body = Body(endless=True)
                response = await conn.request("PUT", "/refuse", body=body.chunks())
                assert response.status == 413 and await response.read() == b"too large"
                assert body.ended and 0 < body.taken < 32 * 1024 * 1024
                with pytest.raises(StackError):  # the upload was cut: the connection is not kept
                    await conn.request("GET", "/echo")
            assert no_tasks_left()
