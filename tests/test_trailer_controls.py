"""Control bytes in trailers are refused exactly as in heads (RFC 9110 5.5; issue 17 item 5).

A field value may hold no control byte but HTAB (0x00-0x08, 0x0a-0x1f, 0x7f); a proxy that let
one through in a trailer would forward it to a laxer backend as surely as one in a head. Heads are
checked elsewhere (``test_http1.py``'s smuggling shapes, ``test_h1_client_engines.py``,
``test_http2_hardening.py``); here the trailer section of each side of each version, on both
HTTP/1.1 engines of each side, over a real connection: HTTP/1.1 chunked trailers (a server
answers 400 and closes; a client's read raises :class:`~stack.ProtocolError`) and HTTP/2
trailing HEADERS (RST_STREAM PROTOCOL_ERROR, the connection goes on; the client's read raises).
HTAB passes everywhere.
"""

from __future__ import annotations

import functools
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from _h2raw import OnEvent, raw_h2_server
from hyperframe.frame import DataFrame
from test_http2_conformance import raw_server

import stack
from layers import http, http1, http2
from stack import ProtocolError
from stack.testing import memory_pair

CONTROLS = [0x00, 0x01, 0x04, 0x08, 0x0B, 0x0C, 0x1B, 0x1F, 0x7F]
ENGINES = ["reference", "fast"]
CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n"


def _needs(engine: str) -> None:
    if engine == "fast":
        pytest.importorskip("httptools", reason="the fast engines need httptools")


async def _read_all(stream: stack.ByteStream) -> bytes:
    out = bytearray()
    with trio.fail_after(5):
        while chunk := await stream.recv():
            out += chunk
    return bytes(out)


async def _h1_server_answer(engine: str, trailer: bytes, seen: list[Any]) -> bytes:
    """What an HTTP/1.1 server (``engine``) answers a chunked request whose trailer section is
    ``trailer`` (a pipelined GET behind it); ``seen`` gets the trailers the app saw."""

    async def app(request: http.Request) -> None:
        await request.read()
        assert isinstance(request, http1.Request)
        seen.append(request.trailers.get("x-sum"))
        await request.respond(200, body=b"served")

    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        conn = await http1.server(app, engine=engine).attach(b)
        nursery.start_soon(conn.serve, app)
        await a.send(CHUNKED + trailer + b"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await _read_all(a)
        nursery.cancel_scope.cancel()
    return data


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("byte", CONTROLS, ids=lambda b: f"0x{b:02x}")
async def test_h1_server_refuses_a_control_byte_in_a_trailer(engine: str, byte: int) -> None:
    _needs(engine)
    seen: list[Any] = []
    data = await _h1_server_answer(engine, b"X-Sum: a%cb\r\n" % byte, seen)
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert data.count(b"HTTP/1.1") == 1 and b"served" not in data  # nothing behind it answered
    assert seen == []


@pytest.mark.parametrize("engine", ENGINES)
async def test_h1_server_takes_htab_in_a_trailer(engine: str) -> None:
    _needs(engine)
    seen: list[Any] = []
    data = await _h1_server_answer(engine, b"X-Sum: a\tb\r\n", seen)
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert seen[0] == "a\tb"


async def _h1_raw_server(lower: stack.ByteStream, response: bytes) -> None:
    """Reads one request head, answers ``response``, then reads until the client closes."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = await lower.recv()
        if not chunk:
            return
        buf += chunk
    await lower.send(response)
    try:
        while await lower.recv():
            pass
    except stack.StackError:
        pass


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("byte", [*CONTROLS, 0x09], ids=lambda b: f"0x{b:02x}")
async def test_h1_client_refuses_a_control_byte_in_a_trailer(engine: str, byte: int) -> None:
    _needs(engine)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-End: a%cb\r\n\r\n" % byte
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_h1_raw_server, b, raw)
        conn = await http1.client(engine=engine).attach(a)
        response = await conn.request("GET", "/")
        if byte == 0x09:  # HTAB is allowed
            assert await response.read() == b"abc"
            assert response.trailers.get("x-end") == "a\tb"
        else:
            with trio.fail_after(5), pytest.raises(ProtocolError, match=r"control character|illegal header line"):
                await response.read()
        await conn.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-End: a\x01b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["trailer", "chunk-size"],
)
async def test_h1_client_after_a_broken_response_body_a_next_request_raises_at_once(engine: str, raw: bytes) -> None:
    """A response body that broke (ProtocolError) leaves the connection unusable: the next request
    raises Broken at once instead of waiting for the exchange's slot forever (the body was never
    closed by the caller)."""
    _needs(engine)
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_h1_raw_server, b, raw)
        conn = await http1.client(engine=engine).attach(a)
        response = await conn.request("GET", "/")
        with trio.fail_after(5), pytest.raises(ProtocolError):
            await response.read()
        with trio.fail_after(5), pytest.raises(stack.Broken, match="earlier response broke"):
            await conn.request("GET", "/again")
        await conn.aclose()
        nursery.cancel_scope.cancel()


# ---- HTTP/2 --------------------------------------------------------------------------------------

GET = [(":method", "POST"), (":scheme", "http"), (":authority", "test"), (":path", "/")]


@pytest.mark.parametrize("byte", [*CONTROLS, 0x0A, 0x0D], ids=lambda b: f"0x{b:02x}")
async def test_h2_server_refuses_a_control_byte_in_trailers(byte: int) -> None:
    seen: list[Any] = []

    async def app(request: http.Request) -> None:
        try:
            await request.read()
        except ProtocolError:
            seen.append("refused")
            raise
        seen.append(request.trailers)
        await request.respond(200, body=b"served")

    async with raw_server(app) as c:
        await c.send(
            c.headers(1, GET, end_stream=False),
            DataFrame(1, data=b"abc"),
            c.headers(1, [("x-sum", b"a" + bytes([byte]) + b"b")], end_stream=True),
        )
        assert await c.error_code(1) == ("rst", 0x1)  # PROTOCOL_ERROR
        await c.send(
            c.headers(3, GET, end_stream=False),
            DataFrame(3, data=b"abc"),
            c.headers(3, [("x-sum", "a\tb")], end_stream=True),
        )
        assert (await c.response(3)) == (200, b"served")  # the connection goes on; HTAB passes
    assert seen[-1].get("x-sum") == "a\tb"


def _trailers(value: bytes) -> OnEvent:
    """An h2 server's events (see tests/_h2raw.py): every request answered with a body and
    trailers ``x-end: value`` (run with h2's outbound checks off)."""

    def on_event(core: h2.connection.H2Connection, ev: h2.events.Event) -> bytes:
        if isinstance(ev, h2.events.RequestReceived):
            core.send_headers(ev.stream_id, [(b":status", b"200")])
            core.send_data(ev.stream_id, b"abc")
            core.send_headers(ev.stream_id, [(b"x-end", value)], end_stream=True)
        return b""

    return on_event


@pytest.mark.parametrize("byte", [*CONTROLS, 0x09], ids=lambda b: f"0x{b:02x}")
async def test_h2_client_refuses_a_control_byte_in_trailers(byte: int) -> None:
    a, b = memory_pair(capacity=1 << 20)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(raw_h2_server, validate_outbound=False)
        nursery.start_soon(serve, b, _trailers(b"a" + bytes([byte]) + b"b"))
        async with await http2.client().attach(a) as conn:
            response = await conn.request("GET", "/")
            if byte == 0x09:
                assert await response.read() == b"abc"
                assert response.trailers.get("x-end") == "a\tb"
            else:
                with trio.fail_after(5), pytest.raises(ProtocolError, match="malformed trailers"):
                    await response.read()
                again = await conn.request("GET", "/")  # a stream error: the connection goes on
                with pytest.raises(ProtocolError):
                    await again.read()
        nursery.cancel_scope.cancel()
