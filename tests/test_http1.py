"""layers.http1: the HTTP/1.1 server and client, in process, over memory pairs.

Raw-protocol tests write request bytes on one end of a memory pair and read what the server
answers, so every rule is checked on the wire: keep-alive, pipelining, chunked both ways,
Content-Length, HEAD, 100-continue, Connection: close, Upgrade/CONNECT hand-over, the limits,
the app-error policy and each request smuggling shape.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import trio.testing
from _garbage import collected_only

from layers import http, http1
from layers.http import Limits
from layers.http1 import CLIENT_ENGINES
from stack import ByteStream, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.testing import memory_pair


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The tests that use a client connection run on both client engines."""
    if "client(" in inspect.getsource(metafunc.function):
        metafunc.parametrize("client_engine", ["reference", "fast"], indirect=True)


@pytest.fixture(autouse=True)
def client_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``engine="auto"`` picks the client engine under test (the default one elsewhere)."""
    name = str(getattr(request, "param", "auto"))
    monkeypatch.setitem(CLIENT_ENGINES, "auto", CLIENT_ENGINES[name])
    return name


App = Callable[[http.Request], Awaitable[None]]


async def echo_app(request: http.Request) -> None:
    body = await request.read()
    text = f"{request.method} {request.target} {len(body)} {request.http_version}|".encode()
    await request.respond(200, [("content-type", "text/plain")], text + body)


async def serving(
    nursery: trio.Nursery, app: App = echo_app, limits: Limits = http.DEFAULT_LIMITS, shutdown: trio.Event | None = None
) -> ByteStream:
    """Start a server connection on one end of a memory pair; return the other (raw) end."""
    client, server = memory_pair()
    conn = await http1.server(app, limits, shutdown).attach(server)
    nursery.start_soon(conn.serve, app)
    return client


async def read_all(stream: ByteStream, seconds: float = 5.0) -> bytes:
    """Everything until the server closes (fails the test after ``seconds``)."""
    out = bytearray()
    with trio.fail_after(seconds):
        while chunk := await stream.recv():
            out += chunk
    return bytes(out)


async def read_response(stream: ByteStream, head_request: bool = False) -> tuple[h11.Response, bytes]:
    """One response, parsed by an independent h11 client (content-length or chunked)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head_request else "GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    response = None
    body = bytearray()
    with trio.fail_after(5):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.recv())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                stream.unread(conn.trailing_data[0])  # what follows the response stays in the stream
                return response, bytes(body)
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:  # pragma: no cover
                raise AssertionError(event)


def header(response: h11.Response, name: str) -> str | None:
    for k, v in response.headers:
        if k == name.encode():
            return v.decode()
    return None


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

# ------------------------------------------------------------------------------------------ basics


async def test_get_and_keep_alive(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    for target in ("/a", "/b?x=1"):
        await c.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, body = await read_response(c)
        assert response.status_code == 200
        assert response.reason == b"OK"
        assert body == f"GET {target} 0 1.1|".encode()
        assert header(response, "content-length") == str(len(body))
        assert header(response, "date") is not None
        assert header(response, "connection") is None


async def test_pipelined_requests_answered_in_order(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await read_all(c)
    bodies = re.findall(rb"\r\n\r\n([A-Z]+ /\d [^|]*\|[a-z]*)", data)
    assert bodies == [b"GET /1 0 1.1|", b"POST /2 3 1.1|abc", b"POST /3 2 1.1|de", b"GET /4 0 1.1|"]
    assert data.count(b"connection: close") == 1


async def test_connection_close_and_http10(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await read_all(c)  # the server closes after the response
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data
    c2 = await serving(nursery)
    await c2.send(b"GET / HTTP/1.0\r\n\r\n")
    data = await read_all(c2)
    assert b"connection: close" in data and data.endswith(b"GET / 0 1.0|")


async def test_leading_empty_lines_are_ignored(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(b"\r\n\r\n" + GET)
    response, _ = await read_response(c)
    assert response.status_code == 200


async def test_request_attributes(nursery: trio.Nursery) -> None:
    seen: list[http.Request] = []

    async def app(request: http.Request) -> None:
        seen.append(request)
        await request.respond(204)

    c = await serving(nursery, app)
    await c.send(b"OPTIONS /p/q?a=b&c HTTP/1.1\r\nHost: example.test:8080\r\nX-Thing: 1\r\nX-Thing: 2\r\n\r\n")
    response, body = await read_response(c)
    assert response.status_code == 204 and body == b""
    assert header(response, "content-length") is None  # never on a 204
    (r,) = seen
    assert isinstance(r, http1.Request)
    assert (r.method, r.target, r.path, r.query) == ("OPTIONS", "/p/q?a=b&c", "/p/q", "a=b&c")
    assert r.authority == "example.test:8080" and r.scheme == "http" and r.http_version == "1.1"
    assert r.headers.get_all("x-thing") == ["1", "2"]
    assert r.info["http_version"] == "1.1" and r.info["transport"] == "memory"


async def test_request_raw_headers_are_the_fields_as_received(nursery: trio.Nursery) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(request: http.Request) -> None:
        seen.append(request.raw_headers)  # before ``headers`` is built, then after
        seen.append(request.headers.raw)
        await request.respond(204)

    c = await serving(nursery, app)
    for _ in range(2):  # (the second request reads its method and target from the decoded ones remembered)
        await c.send(b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: 1 \r\n\r\n")
        response, _ = await read_response(c)
        assert response.status_code == 204
    assert seen[0] == seen[1] == seen[2] == [(b"host", b"x"), (b"x-a", b"1")]


async def test_head_response_has_no_body(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.respond(200, [("content-type", "text/plain")], b"twelve bytes")

    c = await serving(nursery, app)
    await c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    response, body = await read_response(c, head_request=True)
    assert header(response, "content-length") == "12" and body == b""
    response, body = await read_response(c)  # the next response follows at once: nothing was sent for HEAD
    assert body == b"twelve bytes"


# ------------------------------------------------------------------------------------------ bodies


async def test_request_bodies_content_length_and_chunked(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    big = bytes(range(256)) * 4096  # 1 MiB
    await c.send(b"PUT /cl HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big))
    async with trio.open_nursery() as n:
        n.start_soon(c.send, big)
        _, body = await read_response(c)
    assert body == b"PUT /cl %d 1.1|" % len(big) + big
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"a", b"bc" * 1000, b"d"))
    await c.send(b"POST /ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    _response, body = await read_response(c)
    assert body == b"POST /ch 2002 1.1|a" + b"bc" * 1000 + b"d"


async def test_request_trailers(nursery: trio.Nursery) -> None:
    seen: list[Any] = []

    async def app(request: http.Request) -> None:
        await request.read()
        assert isinstance(request, http1.Request)
        seen.append(request.trailers.get("x-sum"))
        await request.respond(200)

    c = await serving(nursery, app)
    await c.send(CHUNKED + b"1\r\nz\r\n0\r\nX-Sum: 42\r\n\r\n")
    await read_response(c)
    assert seen == ["42"]


async def test_streamed_response_chunked_with_trailers(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        stream = await request.start_response(200, [("content-type", "text/plain")])
        for part in (b"one,", b"", b"two,", b"three" * 20000):
            await stream.send(part)
        await stream.done(trailers=[("x-checksum", "abc")])  # type: ignore[call-arg]

    c = await serving(nursery, app)
    await c.send(GET)
    raw = bytearray()
    with trio.fail_after(5):
        while not raw.endswith(b"0\r\nx-checksum: abc\r\n\r\n"):
            raw += await c.recv()
    assert b"transfer-encoding: chunked" in raw
    await c.send(GET)  # the connection goes on
    _response, body = await read_response(c)
    assert body.startswith(b"one,two,threethree")


async def test_streamed_response_with_content_length_and_errors(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []

    async def app(request: http.Request) -> None:
        if request.path == "/exact":
            stream = await request.start_response(200, [("content-length", "6")])
            await stream.send(b"abc")
            await stream.send(b"def")
            await stream.done()
        elif request.path == "/over":
            stream = await request.start_response(200, [("content-length", "2")])
            try:
                await stream.send(b"abc")
            except StackError as exc:
                errors.append(exc)
                raise

    c = await serving(nursery, app)
    await c.send(b"GET /exact HTTP/1.1\r\nHost: x\r\n\r\n")
    response, body = await read_response(c)
    assert body == b"abcdef" and header(response, "transfer-encoding") is None
    await c.send(b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_all(c)  # the response started: the connection can only close
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n")
    assert errors and "longer than its Content-Length" in str(errors[0])


async def test_streamed_response_to_http10_is_close_delimited(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        stream = await request.start_response(200)
        await stream.send(b"no framing")
        await stream.done()

    c = await serving(nursery, app)
    await c.send(b"GET / HTTP/1.0\r\n\r\n")
    data = await read_all(c)
    assert b"transfer-encoding" not in data and b"content-length" not in data
    assert data.endswith(b"\r\n\r\nno framing") and b"connection: close" in data


async def test_app_that_forgets_done_gets_it_done(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        stream = await request.start_response(200)
        await stream.send(b"partial")

    c = await serving(nursery, app)
    await c.send(GET)
    _response, body = await read_response(c)
    assert body == b"partial"
    await c.send(GET)
    assert (await read_response(c))[1] == b"partial"


async def test_response_stream_reads_the_request_body(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        stream = await request.start_response(200)
        while data := await stream.recv(3):
            await stream.send(data.upper())
        await stream.done()

    c = await serving(nursery, app)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\nabcdefg")
    assert (await read_response(c))[1] == b"ABCDEFG"


# ------------------------------------------------------------------------------------- 100-continue


async def test_100_continue_sent_when_the_app_reads(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    with trio.fail_after(5):
        assert await c.recv_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await c.send(b"hello")
    _response, body = await read_response(c)
    assert body == b"POST / 5 1.1|hello"
    await c.send(GET)  # still alive
    assert (await read_response(c))[0].status_code == 200


async def test_100_continue_not_sent_when_the_app_does_not_read(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.respond(403, body=b"no")

    c = await serving(nursery, app)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
    data = await read_all(c)  # the body never came: the server closes after its answer
    assert data.startswith(b"HTTP/1.1 403 ") and b"100 Continue" not in data
    assert b"connection: close" in data


async def test_100_continue_not_sent_for_an_oversized_body(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.read(max_bytes=10)

    c = await serving(nursery, app)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    data = await read_all(c)
    assert data.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data


# ---------------------------------------------------------------------------------- Upgrade / CONNECT


async def test_upgrade_hands_over_the_raw_stream_with_read_ahead(nursery: trio.Nursery) -> None:
    tunnels: list[ByteStream] = []

    async def app(request: http.Request) -> None:
        tunnel = await request.start_response(101, [("connection", "upgrade"), ("upgrade", "echo")])
        tunnels.append(tunnel)
        data = await tunnel.recv_exactly(8)
        await tunnel.send(b"echo:" + data)
        lower = await tunnel.detach()  # the memory stream itself
        assert await lower.recv_exactly(4) == b"more"
        await lower.send(b"!")

    c = await serving(nursery, app)
    # the first raw bytes come in the same write as the request head: h11 reads them ahead
    await c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nTRAILING")
    head = await c.recv_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and b"upgrade: echo" in head
    assert await c.recv_exactly(13) == b"echo:TRAILING"
    await c.send(b"more")
    assert await c.recv_exactly(1) == b"!"
    assert tunnels[0].info["http_version"] == "1.1"


async def test_connect_tunnel(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        assert request.method == "CONNECT" and request.path == "example.test:443"
        tunnel = await request.start_response(200)
        while data := await tunnel.recv():
            await tunnel.send(data[::-1])
        await tunnel.done()

    c = await serving(nursery, app)
    await c.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\nabc")
    head = await c.recv_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length" not in head
    assert await c.recv_exactly(3) == b"cba"
    await c.send(b"xy")
    assert await c.recv_exactly(2) == b"yx"
    await c.done()
    assert await c.recv() == b""


async def test_switch_refused_without_a_proposal(nursery: trio.Nursery) -> None:
    errors: list[Exception] = []

    async def app(request: http.Request) -> None:
        try:
            await request.start_response(101, [("upgrade", "x")])
        except StackError as exc:
            errors.append(exc)
            raise

    c = await serving(nursery, app)
    await c.send(GET)
    assert (await read_response(c))[0].status_code == 500
    assert "not an Upgrade request" in str(errors[0])


async def test_detach_between_requests(nursery: trio.Nursery) -> None:
    client, server = memory_pair()
    conn = await http1.server(echo_app).attach(server)
    await client.send(GET + b"RAW BYTES")
    request = await conn.recv()
    with pytest.raises(StackError, match="middle of a request"):
        await conn.detach()
    await request.respond(200, body=b"ok")
    await read_response(client)
    await conn._end_cycle()  # what recv() or serve() do before the next request
    lower = await conn.detach()
    assert lower is server and await lower.recv_exactly(9) == b"RAW BYTES"
    with pytest.raises(Closed):
        await conn.recv()


# ------------------------------------------------------------------------------------------ limits


async def test_header_bytes_limit_431(nursery: trio.Nursery) -> None:
    c = await serving(nursery, limits=Limits(max_header_bytes=1024))
    await c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    data = await read_all(c)
    assert data.startswith(b"HTTP/1.1 431 ") and b"connection: close" in data
    c2 = await serving(nursery, limits=Limits(max_header_bytes=1024))
    await c2.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 970 + b"\r\n\r\n")  # just under
    assert (await read_response(c2))[0].status_code == 200


async def test_header_timeout_408_for_a_slow_head(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    c = await serving(nursery, limits=Limits(header_timeout=5))
    await c.send(b"GET / HTTP/1.1\r\n")
    await trio.sleep(3)
    await c.send(b"Host: x\r\n")  # still not complete at 5 s
    data = await read_all(c, seconds=30)
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_header_timeout_counts_from_the_first_byte_of_later_heads(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    c = await serving(nursery, limits=Limits(header_timeout=5, keepalive_timeout=60))
    await c.send(GET)
    await read_response(c)
    await trio.sleep(30)  # idle, within keepalive_timeout
    await c.send(b"GET / HTTP/1.1\r\n")
    await trio.sleep(4)
    await c.send(b"Host: x\r\n\r\n")
    assert (await read_response(c))[0].status_code == 200
    await c.send(b"GET / HTTP/1.1\r\n")
    data = await read_all(c, seconds=30)
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_idle_keepalive_timeout_closes_silently(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    c = await serving(nursery, limits=Limits(keepalive_timeout=7))
    await c.send(GET)
    await read_response(c)
    t0 = trio.current_time()
    assert await read_all(c, seconds=30) == b""
    assert 7 <= trio.current_time() - t0 < 8
    c2 = await serving(nursery, limits=Limits(header_timeout=3))
    assert await read_all(c2, seconds=30) == b""  # no first request at all: closed, no 408


async def test_max_body_413(nursery: trio.Nursery) -> None:
    c = await serving(nursery, limits=Limits(max_body=10))
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n01234567890")
    data = await read_all(c)
    assert data.startswith(b"HTTP/1.1 413 ") and b"connection: close" in data
    c2 = await serving(nursery, limits=Limits(max_body=10))
    await c2.send(CHUNKED + b"8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n")
    assert (await read_all(c2)).startswith(b"HTTP/1.1 413 ")
    c3 = await serving(nursery, limits=Limits(max_body=10))
    await c3.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
    assert (await read_response(c3))[0].status_code == 200


# -------------------------------------------------------------------------------------- app errors


async def test_app_error_500_logged_and_connection_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(request: http.Request) -> None:
        if request.path == "/boom":
            raise RuntimeError("kaboom")
        await echo_app(request)

    c = await serving(nursery, app)
    with caplog.at_level(logging.ERROR, logger="stack.http1"):
        await c.send(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        response, _body = await read_response(c)
    assert response.status_code == 500 and header(response, "connection") is None
    assert any("kaboom" in (r.exc_text or "") or "kaboom" in str(r.exc_info) for r in caplog.records)
    await c.send(GET)  # the request body was read (none): the connection continues
    assert (await read_response(c))[0].status_code == 200


async def test_app_error_with_unread_large_body_closes(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        raise RuntimeError("kaboom")

    c = await serving(nursery, app)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    data = await read_all(c)
    assert data.startswith(b"HTTP/1.1 500 ") and b"connection: close" in data


async def test_small_unread_body_is_drained_to_keep_the_connection(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.respond(200, body=b"ignored your body")

    c = await serving(nursery, app)
    await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + GET)
    assert (await read_response(c))[1] == b"ignored your body"
    assert (await read_response(c))[1] == b"ignored your body"


async def test_app_without_response_gets_500(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    async def app(request: http.Request) -> None:
        pass

    c = await serving(nursery, app)
    with caplog.at_level(logging.ERROR, logger="stack.http1"):
        await c.send(GET)
        assert (await read_response(c))[0].status_code == 500
    assert any("without responding" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "headers, body",
    [
        ([("x-bad", "a\r\nInjected: yes")], b""),  # header injection
        ([("bad name", "v")], b""),
        ([("content-length", "3")], b"four"),  # a Content-Length that lies
        ([("transfer-encoding", "chunked")], b"whole"),  # respond() sends a whole body
    ],
)
async def test_invalid_response_fields_are_refused(
    nursery: trio.Nursery, headers: list[tuple[str, str]], body: bytes
) -> None:
    errors: list[Exception] = []

    async def app(request: http.Request) -> None:
        try:
            await request.respond(200, headers, body)
        except ValueError as exc:
            errors.append(exc)
            raise

    c = await serving(nursery, app)
    await c.send(GET)
    response, _ = await read_response(c)
    assert response.status_code == 500 and errors
    assert b"Injected" not in b"".join(v for _, v in response.headers)


async def test_respond_twice_and_bad_status() -> None:
    client, server = memory_pair()
    conn = await http1.server(echo_app).attach(server)
    await client.send(GET)
    request = await conn.recv()
    with pytest.raises(ValueError):
        await request.respond(100)
    await request.respond(200)
    with pytest.raises(StackError, match="already sent"):
        await request.respond(200)


# ------------------------------------------------------------------------------------- smuggling

CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

SMUGGLING = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate-cl-equal": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "duplicate-cl-apart": (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "cl-conflict": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    "cl-junk": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3a\r\n\r\nabc", 400),
    "cl-empty": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
    "cl-huge": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 123456789012345678901234\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tcontinued\r\n\r\n", 400),
    "fold-first-line": (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
    "bare-lf-everywhere": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "bare-lf-request-line": (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    "bare-lf-end": (b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "te-in-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-unknown": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te-twice": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        501,
    ),
    "version-2": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "chunk-size-0x": (CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-negative": (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-17-digits": (CHUNKED + b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-bws": (CHUNKED + b"5 ;a=b\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-trailing-space": (CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-leading-space": (CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-bare-lf": (CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-too-long": (CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-bare-lf": (CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400),
    "chunk-missing-size": (CHUNKED + b"\r\nhello\r\n0\r\n\r\n", 400),
    "trailer-bare-lf": (CHUNKED + b"0\r\nX-A: 1\n\r\n", 400),
    "trailer-obs-fold": (CHUNKED + b"0\r\nX-A: 1\r\n b\r\n\r\n", 400),
    # control bytes in field values (RFC 9110 5.5; issue 17 item 5): refused, never forwarded by a proxy
    **{
        f"control-{c:#04x}": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a%cb\r\n\r\n" % c, 400)
        for c in (0x00, 0x01, 0x04, 0x08, 0x0B, 0x0C, 0x1B, 0x1F, 0x7F)
    },
    "control-in-host": (b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n", 400),
    "control-at-value-end": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ab\x01\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_smuggling_shapes_are_refused_and_closed(nursery: trio.Nursery, name: str) -> None:
    request, status = SMUGGLING[name]
    seen: list[bytes] = []

    async def app(r: http.Request) -> None:
        seen.append(await r.read())  # reads the body: chunked errors surface here
        await r.respond(200, body=b"served")

    c = await serving(nursery, app)
    # a well-formed request smuggled behind: it must never be answered
    await c.send(request + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_all(c)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert b"connection: close" in data
    assert data.count(b"HTTP/1.1") == 1  # nothing else answered
    assert b"served" not in data


async def test_allowed_chunk_extensions_and_zero_padding(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(CHUNKED + b'005;name=value\r\nhello\r\n5;q="x"\r\nworld\r\n0\r\n\r\n')
    assert (await read_response(c))[1] == b"POST / 10 1.1|helloworld"


async def test_client_closing_mid_head_or_body(nursery: trio.Nursery) -> None:
    c = await serving(nursery)
    await c.send(b"GET / HTTP/1.1\r\nHo")
    await c.done()
    assert await read_all(c) == b""
    c2 = await serving(nursery)
    await c2.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await c2.done()
    assert (await read_all(c2)).startswith(b"HTTP/1.1 400 ")


# ------------------------------------------------------------------------------------ deadlines


async def test_recv_deadline_consumes_nothing() -> None:
    client, server = memory_pair()
    conn = await http1.server(echo_app).attach(server)
    await client.send(b"GET / HTTP/1.1\r\nHo")
    with pytest.raises(Timeout):
        await conn.recv(deadline=trio.current_time() + 0.05)
    await client.send(b"st: x\r\n\r\n")
    request = await conn.recv()
    assert request.headers["host"] == "x"


async def test_request_body_recv_deadline_and_cancel_lose_nothing() -> None:
    client, server = memory_pair()
    conn = await http1.server(echo_app).attach(server)
    await client.send(CHUNKED + b"3\r\nabc\r\n4\r\nde")
    request = await conn.recv()
    assert await request.body.recv_exactly(3) == b"abc"
    with pytest.raises(Timeout):
        await request.body.recv_exactly(4, deadline=trio.current_time() + 0.05)
    with trio.move_on_after(0.05):
        await request.body.recv_exactly(4)
    await client.send(b"fg\r\n0\r\n\r\n")
    assert await request.body.recv_exactly(4) == b"defg"
    assert await request.body.recv() == b""


# --------------------------------------------------------------------------------------- shutdown


async def test_shutdown_closes_idle_connections_and_finishes_in_flight(nursery: trio.Nursery) -> None:
    shutdown = trio.Event()
    release = trio.Event()

    async def app(request: http.Request) -> None:
        if request.path == "/slow":
            await release.wait()
        await request.respond(200, body=b"done")

    idle = await serving(nursery, app, shutdown=shutdown)
    busy = await serving(nursery, app, shutdown=shutdown)
    await idle.send(GET)
    await read_response(idle)
    await busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    shutdown.set()
    assert await read_all(idle) == b""  # the idle one closes at once
    release.set()
    data = await read_all(busy)  # the one in flight finishes, saying it closes
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data and data.endswith(b"done")


# ------------------------------------------------------------------------------------------ client


async def client_server(
    nursery: trio.Nursery, app: App = echo_app, limits: Limits = http.DEFAULT_LIMITS
) -> http1.ClientConnection:
    c = await serving(nursery, app, limits)
    return await http1.client(authority="example.test").attach(c)


async def test_client_requests_and_keep_alive(nursery: trio.Nursery) -> None:
    conn = await client_server(nursery)
    for i in range(3):
        response = await conn.request("GET", f"/{i}")
        assert response.status == 200 and response.reason == "OK" and response.http_version == "1.1"
        assert await response.read() == f"GET /{i} 0 1.1|".encode()
    response = await conn.request("PUT", "/bytes", body=b"x" * 100_000)
    assert len(await response.read()) == len(b"PUT /bytes 100000 1.1|") + 100_000

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"ab", b"", b"cd" * 40_000):
            yield p

    response = await conn.request("POST", "/stream", body=parts())
    assert (await response.read()).startswith(b"POST /stream 80002 1.1|abcd")
    await conn.aclose()
    with pytest.raises(Closed):
        await conn.request("GET", "/")


async def test_client_host_header_and_head(nursery: trio.Nursery) -> None:
    seen: list[str | None] = []

    async def app(request: http.Request) -> None:
        seen.append(request.headers.get("host"))
        await request.respond(200, body=b"body")

    conn = await client_server(nursery, app)
    response = await conn.request("HEAD", "/")
    assert response.headers["content-length"] == "4"
    # HEAD's response ends at once: the next request does not wait for a read
    response = await conn.request("GET", "/", headers={"host": "other.test"})
    assert await response.read() == b"body"
    assert seen == ["example.test", "other.test"]


async def test_client_requests_queue_on_one_connection(nursery: trio.Nursery) -> None:
    conn = await client_server(nursery)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        response = await conn.request("GET", f"/{i}")
        results[i] = await response.read()

    async with trio.open_nursery() as n:
        for i in range(5):
            n.start_soon(one, i)
    assert results == {i: f"GET /{i} 0 1.1|".encode() for i in range(5)}


async def test_client_response_close_early(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        size = int(request.path[1:])
        await request.respond(200, body=b"z" * size)

    conn = await client_server(nursery, app)
    response = await conn.request("GET", "/1000")
    assert await response.body.recv(10) == b"z" * 10
    await response.aclose()  # a small rest is drained: the connection goes on
    response = await conn.request("GET", "/10")
    assert await response.read() == b"z" * 10
    response = await conn.request("GET", "/5000000")
    await response.body.recv(10)
    await response.aclose()  # too much to drain: the connection closes
    with pytest.raises(StackError):
        await conn.request("GET", "/1")


async def test_client_trailers_and_streamed_body(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        stream = await request.start_response(200)
        await stream.send(b"abc")
        await stream.done(trailers={"x-end": "yes"})  # type: ignore[call-arg]

    conn = await client_server(nursery, app)
    response = await conn.request("GET", "/")
    assert await response.read() == b"abc"
    assert response.trailers.get("x-end") == "yes"


async def test_client_server_closes(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.respond(200, [("connection", "close")], b"bye")

    conn = await client_server(nursery, app)
    response = await conn.request("GET", "/")
    assert await response.read() == b"bye"
    with pytest.raises(EndOfStream):
        await conn.request("GET", "/")


async def test_client_bad_input_never_escapes_as_h11(nursery: trio.Nursery) -> None:
    async def garbage_server(data: bytes) -> http1.ClientConnection:
        client, server = memory_pair()

        async def serve() -> None:
            await server.recv_until(b"\r\n\r\n")
            await server.send(data)
            await server.aclose()

        nursery.start_soon(serve)
        return await http1.client(limits=Limits(max_header_bytes=1024)).attach(client)

    conn = await garbage_server(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(ProtocolError):
        await conn.request("GET", "/")
    conn = await garbage_server(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 4000 + b"\r\n\r\n")
    with pytest.raises(MessageTooLarge):
        await conn.request("GET", "/")
    conn = await garbage_server(b"")
    with pytest.raises(EndOfStream, match="without responding"):
        await conn.request("GET", "/")
    conn = await garbage_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    response = await conn.request("GET", "/")
    with pytest.raises(ProtocolError):
        await response.read()
    conn = await garbage_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    response = await conn.request("GET", "/")
    with pytest.raises(ProtocolError):
        await response.read()
    with pytest.raises(ValueError):
        await conn.request("GET", "/", headers={"x": "a\r\nb"})


async def test_client_expect_100_continue(nursery: trio.Nursery) -> None:
    conn = await client_server(nursery)

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello"

    response = await conn.request("POST", "/", headers={"expect": "100-continue"}, body=parts())
    assert await response.read() == b"POST / 5 1.1|hello"

    async def refuse(request: http.Request) -> None:
        await request.respond(417, body=b"no")

    conn = await client_server(nursery, refuse)
    sent: list[bytes] = []

    async def tracked() -> AsyncIterator[bytes]:
        sent.append(b"x")
        yield b"never"

    response = await conn.request("POST", "/", headers={"expect": "100-continue"}, body=tracked())
    assert response.status == 417 and await response.read() == b"no"
    assert sent == []  # the body was not sent
    with pytest.raises(StackError):
        await conn.request("GET", "/")  # the request never ended: the connection closed


async def test_client_request_deadline_poisons_the_connection(nursery: trio.Nursery) -> None:
    never = trio.Event()

    async def app(request: http.Request) -> None:
        await never.wait()

    conn = await client_server(nursery, app)
    with pytest.raises(Timeout):
        await conn.request("GET", "/", deadline=trio.current_time() + 0.05)
    with pytest.raises(StackError, match="timed out"):
        await conn.request("GET", "/")


async def test_client_connect_tunnel_and_detach(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        tunnel = await request.start_response(200)
        await tunnel.send(b"from the server, then raw")
        while data := await tunnel.recv():
            await tunnel.send(data)

    conn = await client_server(nursery, app)
    response = await conn.request("CONNECT", "example.test:443")
    assert response.status == 200
    tunnel = response.body
    assert await tunnel.recv_exactly(16) == b"from the server,"
    await tunnel.send(b"ping")
    lower = await tunnel.detach()  # the memory stream, with the read-ahead intact
    assert await lower.recv_exactly(9) == b" then raw"
    assert await lower.recv_exactly(4) == b"ping"
    with pytest.raises(StackError):
        await conn.request("GET", "/")


async def test_client_upgrade(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        tunnel = await request.start_response(101, [("connection", "upgrade"), ("upgrade", "x")])
        await tunnel.send(b"switched")

    conn = await client_server(nursery, app)
    response = await conn.request("GET", "/", headers=[("connection", "upgrade"), ("upgrade", "x")])
    assert response.status == 101
    assert await response.body.recv_exactly(8) == b"switched"


async def test_client_open_tunnel(nursery: trio.Nursery) -> None:
    seen: list[http.Request] = []

    async def app(request: http.Request) -> None:
        seen.append(request)
        tunnel = await request.start_response(101, [("connection", "upgrade"), ("upgrade", "echo")])
        await tunnel.send(b"hello " + await tunnel.recv_exactly(4))
        await tunnel.aclose()

    conn = await client_server(nursery, app)
    response = await conn.open_tunnel("echo", "/chat", headers=[("x-extra", "1")], deadline=trio.current_time() + 5)
    assert response.status == 101 and response.headers["upgrade"] == "echo"
    await response.body.send(b"ping")
    assert await response.body.recv_exactly(10) == b"hello ping"
    request = seen[0]
    assert (request.method, request.target) == ("GET", "/chat")
    assert request.headers["upgrade"] == "echo" and request.headers["connection"].lower() == "upgrade"
    assert request.headers["x-extra"] == "1"
    with pytest.raises(StackError):  # the connection is a tunnel now: no more requests
        await conn.request("GET", "/")


async def test_client_open_tunnel_refused(nursery: trio.Nursery) -> None:
    async def app(request: http.Request) -> None:
        await request.respond(426, [("content-type", "text/plain")], b"not here")

    conn = await client_server(nursery, app)
    with pytest.raises(http.TunnelRefused) as caught:
        await conn.open_tunnel("echo", "/", deadline=trio.current_time() + 5)
    response = caught.value.response
    assert response.status == 426 and await response.read() == b"not here"
    await response.aclose()
    response = await conn.request("GET", "/again")  # a refusal leaves the connection usable
    assert response.status == 426
    await response.aclose()


async def test_server_engine_is_chosen_by_name() -> None:
    assert http1.server(echo_app, engine="reference").engine == "reference"
    assert "reference" in http1.ENGINES
    with pytest.raises(ValueError):
        http1.server(echo_app, engine="nope")


async def test_http_specs_pick_http1_in_cleartext(nursery: trio.Nursery) -> None:
    client_raw, server_raw = memory_pair()

    async def run_server() -> None:
        conn = await http.server(echo_app).attach(server_raw)
        assert isinstance(conn, http1.ServerConnection)
        await conn.serve(echo_app)

    nursery.start_soon(run_server)
    conn = await http.client().attach(client_raw)
    assert isinstance(conn, http1.ClientConnection) and conn.info["http_version"] == "1.1"
    response = await conn.request("GET", "/x")
    assert await response.read() == b"GET /x 0 1.1|"
    assert conn.authority == "localhost"  # a memory pair has no host name: the default authority


async def test_spec_types() -> None:
    with pytest.raises(TypeError):
        await http1.server(echo_app).attach("not a stream")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await http1.client().attach(object())  # type: ignore[arg-type]
    assert http1.server(echo_app) == http1.server(echo_app)  # specs compare by value


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_client_says_which_engine_runs(client_engine: str) -> None:
    a, _b = memory_pair()
    conn = await http1.client().attach(a)
    assert conn.info["http_engine"] == ("fast" if client_engine == "auto" else client_engine)
    for name in ("reference", "fast"):
        assert (await http1.client(engine=name).attach(a)).info["http_engine"] == name
    with pytest.raises(ValueError, match="unknown engine"):
        http1.client(engine="nope")


async def test_client_keeps_only_small_built_heads() -> None:
    """A bodiless request's built head is kept for the next one alike (a proxy's backend
    connection repeats them), but only a small one: a proxy forwards what clients send, and
    32 heads of 64 KiB kept on each backend connection would be megabytes each."""
    a, b = memory_pair()
    conn = await http1.client(authority="example.test").attach(a)

    async def answer() -> None:
        for _ in range(3):
            await b.recv_until(b"\r\n\r\n", max_bytes=65536)
            await b.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async with trio.open_nursery() as n:
        n.start_soon(answer)
        with trio.fail_after(5):
            for target in ("/" + "x" * 5000, "/short", "/short"):
                r = await conn.request("GET", target)
                assert r.status == 200 and await r.read() == b""
    kept = conn._built or {}
    assert [key[1] for key in kept] == ["/short"]


async def test_response_heads_built_once_are_only_small_ones(nursery: trio.Nursery) -> None:
    """Response heads are built once per shape and remembered process-wide; an app that echoes
    what a client sent (here a 5,000-byte header) must not make that memory grow with it."""
    from layers import _h1core

    async def echo_header(request: http.Request) -> None:
        await request.respond(200, [("x-echo", request.target)], b"ok")

    c = await serving(nursery, echo_header)
    for target in ("/" + "e" * 5000, "/small"):
        await c.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, body = await read_response(c)
        assert response.status_code == 200 and body == b"ok" and header(response, "x-echo") == target
    assert all(len(str(key[1])) < 5000 for key in _h1core._HEADS)
    assert any(key[1] == (("x-echo", "/small"),) for key in _h1core._HEADS)


async def test_finished_requests_leave_no_cyclic_garbage(nursery: trio.Nursery) -> None:
    """A request, its body and its response stream are freed by reference counting once the
    cycle ends: garbage in a cycle would cost a collection every few hundred requests."""

    async def app(request: http.Request) -> None:
        await request.read()
        if request.target == "/streamed":
            stream = await request.start_response(200)
            await stream.send(b"part")
            await stream.done()
        else:
            await request.respond(200, body=request.trailers.get("x-sum", "").encode())

    c = await serving(nursery, app)
    with collected_only() as garbage:
        for _ in range(3):
            await c.send(GET)
            assert (await read_response(c))[1] == b""
            await c.send(CHUNKED + b"1\r\nz\r\n0\r\nX-Sum: 42\r\n\r\n")
            assert (await read_response(c))[1] == b"42"
            await c.send(GET.replace(b"/", b"/streamed", 1))
            assert (await read_response(c))[1] == b"part"
    kinds = {type(o).__name__ for o in garbage}
    assert not kinds & {"Request", "RequestBody", "ResponseStream", "ParsedHead"}, kinds


async def test_client_responses_read_to_their_end_leave_no_cyclic_garbage(nursery: trio.Nursery) -> None:
    """A response and its body hold each other only until the body ends (the trailers go to the
    response then): a read response is freed by reference counting, like the server's requests."""

    async def app(request: http.Request) -> None:
        if request.target == "/streamed":
            stream = await request.start_response(200)
            await stream.send(b"abc")
            await stream.done(trailers={"x-end": "yes"})  # type: ignore[call-arg]
        else:
            await request.respond(200, body=b"whole")

    conn = await client_server(nursery, app)
    with collected_only() as garbage:
        for _ in range(3):
            response = await conn.request("GET", "/")
            assert await response.read() == b"whole"
            response = await conn.request("GET", "/streamed")
            assert await response.read() == b"abc" and response.trailers.get("x-end") == "yes"
        del response
    kinds = {type(o).__name__ for o in garbage}
    assert not kinds & {"Response", "_ResponseBody", "Request", "RequestBody", "ResponseStream"}, kinds
    await conn.aclose()
