"""Differential tests: the fast HTTP/1.1 server engine and the reference one agree.

Each generated request (``tests/_h1_shapes.py``: mostly valid, often a smuggling shape) goes
through both engines the way a server connection drives them: the head is cut off by
``HeadBuffer``, parsed, then the rest arrives in random fragments and the body is decoded until
its end, an error, or the end of the stream. Both must give the same decision (accept, or refuse
with the same status), the same parsed head, the same body bytes and trailers, the same error kind,
and the same bytes left over for the next request. A disagreement is a bug in one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from _h1_shapes import Shape, requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layers._h1core import HeadBuffer, ReferenceEngine, Refused, ServerEngine
from stack import ProtocolError
from stack.testing import check_settings

httptools = pytest.importorskip("httptools", reason="the fast engine needs httptools (pip install httptools)")
from layers._h1fast import ChunkedDecoder, FastEngine  # noqa: E402

LIMIT = 8192


@dataclass
class Outcome:
    refused: int | None = None
    head: tuple[Any, ...] | None = None
    body: bytes = b""
    trailers: tuple[tuple[bytes, bytes], ...] | None = None
    error: str | None = None
    rest: bytes = b""
    waits_for_100: bool | None = None


def drive(engine: ServerEngine, raw: bytes, cuts: list[int]) -> Outcome:
    out = Outcome()
    buf = HeadBuffer(raw)
    try:
        head = buf.take_head(LIMIT)
        if head is None:
            out.error = "incomplete head"
            return out
        parsed = engine.parse_head(head)
    except Refused as exc:
        out.refused = exc.status
        return out
    out.head = (
        parsed.method,
        parsed.target,
        parsed.http_version,
        tuple(parsed.fields),
        parsed.keep_alive,
        parsed.chunked,
        parsed.content_length,
        parsed.expect_100,
    )
    out.waits_for_100 = engine.client_waits_for_100
    if not parsed.chunked and parsed.content_length is None:
        return out  # no body: the server never asks the engine (RFC 9112 6.3)
    rest = bytes(buf)
    pieces, at = [], 0
    for c in sorted(set(cuts)):
        if 0 < c < len(rest):
            pieces.append(rest[at:c])
            at = c
    pieces.append(rest[at:])
    pieces.append(b"")  # the end of the stream
    try:
        for piece in pieces:
            if piece or pieces[-1] is piece:
                engine.feed(piece)
            while True:
                got = engine.next_body()
                if got is None:
                    break
                if isinstance(got, bytes):
                    out.body += got
                    continue
                out.trailers = tuple((bytes(n).lower(), bytes(v)) for n, v in got)
                out.rest = engine.reset()
                return out
    except ProtocolError:
        out.error = "ProtocolError"
    return out


@settings(check_settings(scale=10))
@given(requests(), st.lists(st.integers(0, 200), max_size=6))
@example(Shape(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ()), [])
@example(Shape(b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n", ()), [])
@example(Shape(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET", ()), [1])
@example(
    Shape(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\nX", ()), [5]
)
@example(Shape(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", ()), [])
@example(Shape(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\x01b\r\n\r\n", ()), [])
@example(Shape(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: \x7f\r\n\r\n", ()), [9])
def test_engines_agree(shape: Shape, cuts: list[int]) -> None:
    ref = drive(ReferenceEngine(LIMIT), shape.raw, cuts)
    fast = drive(FastEngine(LIMIT), shape.raw, cuts)
    assert_same(fast, ref, shape)


def assert_same(fast: Outcome, ref: Outcome, shape: object) -> None:
    """The two engines' outcomes agree. On a malformed body, the reference checks each fragment
    whole before decoding any of it while the fast engine decodes as it goes, so how much came out
    before the error may differ: both must have delivered the start of the same bytes."""
    if ref.error is not None and fast.error == ref.error:
        shorter, longer = sorted((ref.body, fast.body), key=len)
        assert longer.startswith(shorter), shape
        ref.body = fast.body = b""
    assert fast == ref, shape


def drive_sequence(engine: ServerEngine, shapes: list[Shape]) -> list[Outcome]:
    """Requests one after the other on one connection's engine, as long as the connection would
    live (a refusal, a body error or a closing request ends it)."""
    outcomes = []
    for shape in shapes:
        out = drive(engine, shape.raw, [])
        outcomes.append(out)
        if out.head is None or out.error is not None or not out.head[4]:
            break
        engine.reset()
    return outcomes


@settings(check_settings(scale=3))
@given(st.lists(requests(), min_size=2, max_size=4))
def test_engines_agree_on_a_connection(shapes: list[Shape]) -> None:
    fast, ref = drive_sequence(FastEngine(LIMIT), shapes), drive_sequence(ReferenceEngine(LIMIT), shapes)
    assert len(fast) == len(ref), shapes
    for f, r in zip(fast, ref, strict=True):
        assert_same(f, r, shapes)


def test_the_fast_engine_takes_a_keep_alive_sequence() -> None:
    engine = FastEngine(LIMIT)
    for _ in range(3):
        parsed = engine.parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        assert (parsed.method, parsed.target, parsed.fields) == (b"GET", b"/a", [(b"host", b"x"), (b"accept", b"*/*")])
        assert engine.reset() == b""
    parsed = engine.parse_head(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
    engine.feed(b"hiGET")
    assert engine.next_body() == b"hi"
    assert engine.next_body() == ()
    assert engine.reset() == b"GET"


def test_refusals_come_in_the_reference_engines_words() -> None:
    for head, status in [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ]:
        with pytest.raises(Refused) as fast:
            FastEngine(LIMIT).parse_head(head)
        with pytest.raises(Refused) as ref:
            ReferenceEngine(LIMIT).parse_head(head)
        assert (fast.value.status, str(fast.value)) == (ref.value.status, str(ref.value))
        assert fast.value.status == status


def test_chunked_decoder_bounds_its_lines() -> None:
    decoder = ChunkedDecoder(64)
    decoder.feed(b"1" * 100)
    with pytest.raises(ProtocolError, match="too long"):
        decoder.next_body()
    with pytest.raises(ProtocolError):  # sticky
        decoder.next_body()
