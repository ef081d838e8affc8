"""layers.http, the version-agnostic model: Headers, Limits, Request helpers, the cleartext sniff."""

from __future__ import annotations

import pytest
import trio

from layers import http
from layers.http import Headers, Limits, _sniff, date_header
from stack import EndOfStream, MessageTooLarge, ProtocolError, Timeout
from stack.testing import memory_pair


def test_headers() -> None:
    h = Headers([("Content-Type", "text/plain"), (b"X-A", b"1"), ("x-a", "2")])
    assert h["content-type"] == "text/plain" and h.get("CONTENT-TYPE") == "text/plain"
    assert h.get_all("x-a") == ["1", "2"] and h.get("x-missing") is None and h.get("x-missing", "d") == "d"
    assert "x-a" in h and "x-b" not in h and 3 not in h
    assert list(h) == [("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")]
    assert h.raw[0] == (b"content-type", b"text/plain") and len(h) == 3
    assert Headers({"A": "b"}) == Headers([("a", "b")]) and Headers(h) == h
    with pytest.raises(KeyError):
        h["nope"]


def test_limits_defaults() -> None:
    limits = Limits()
    assert limits.max_header_bytes == 64 * 1024 and limits.header_timeout > 0 and limits.keepalive_timeout > 0
    assert limits.max_body == 16 * 1024 * 1024 and limits.drain_timeout > 0
    assert Limits(header_timeout=1).header_timeout == 1


def test_raw_headers_of_the_model_are_headers_raw() -> None:
    a, _ = memory_pair()
    request = http.Request("GET", "/", Headers([("X-A", "1")]), "1.1", a, a.info)
    assert request.raw_headers == [(b"x-a", b"1")] and request.raw_headers is request.headers.raw


def test_date_header_is_an_http_date() -> None:
    assert date_header().endswith(b" GMT") and len(date_header()) == 29


@pytest.mark.parametrize(
    "first, version",
    [
        (b"GET / HTTP/1.1\r\n", "1.1"),
        (b"G", "1.1"),  # decided at once: a slow client does not stall the sniff
        (b"POST", "1.1"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "2"),
    ],
)
async def test_sniff(first: bytes, version: str) -> None:
    a, b = memory_pair()
    await a.send(first)
    assert await _sniff(b, trio.current_time() + 5) == version
    assert await b.recv_exactly(len(first)) == first  # every byte pushed back


async def test_sniff_refusals() -> None:
    for garbage in (b"\x16\x03\x01", b"\x00", b"PRI * HTTP/2.0\r\n\r\nXX"):
        a, b = memory_pair()
        await a.send(garbage)
        with pytest.raises(ProtocolError):
            await _sniff(b, trio.current_time() + 5)
    a, b = memory_pair()
    await a.send(b"PRI * HT")  # could still be the preface: waits
    with pytest.raises(Timeout):
        await _sniff(b, trio.current_time() + 0.05)
    a, b = memory_pair()
    await a.aclose()
    with pytest.raises(ProtocolError):
        await _sniff(b, trio.current_time() + 5)


async def test_read_limits_and_request_helpers() -> None:
    a, b = memory_pair()

    class Req(http.Request):
        pass

    req = Req("GET", "/a/b?c=d", Headers({"host": "h.test", "content-length": "20"}), "1.1", b, b.info)
    assert (req.path, req.query, req.authority) == ("/a/b", "c=d", "h.test")
    assert repr(req) == "<Request GET /a/b?c=d HTTP/1.1>"
    with pytest.raises(MessageTooLarge):
        await req.read(max_bytes=10)  # refused from Content-Length, nothing read
    await a.send(b"x" * 30)
    await a.done()
    req2 = Req("POST", "/", Headers(), "1.1", b, b.info)
    with pytest.raises(MessageTooLarge):
        await req2.read(max_bytes=10)
    with pytest.raises(NotImplementedError):
        await req2.respond(200)
    with pytest.raises(ValueError):
        await Req("GET", "/", Headers(), "1.1", b, b.info).respond(99)


async def test_response_read() -> None:
    a, b = memory_pair()
    response = http.Response(200, Headers(), "1.1", b)
    await a.send(b"body")
    await a.done()
    assert await response.read() == b"body" and repr(response) == "<Response 200 HTTP/1.1>"
    await response.aclose()
    with pytest.raises(EndOfStream):
        raise EndOfStream()
