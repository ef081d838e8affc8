"""layers._h1core: the sans-io HTTP/1.1 core, without any I/O.

The state table (every legal transition and the illegal ones), head framing, each refusal of the
reference engine's head parser, its body decoder, the strict chunked validator, and the response
writer's framing.
"""

from __future__ import annotations

import pytest

from layers import _h1core as core
from layers._h1core import HeadBuffer, IllegalTransition, ReferenceEngine, Refused, ResponseWriter, _ChunkedCheck
from stack import ProtocolError, StackError

# ------------------------------------------------------------------------------------ state table

LEGAL = [
    (core.IDLE, core.REQUEST, core.AWAIT_RESPONSE),
    (core.AWAIT_RESPONSE, core.RESPOND, core.DONE),
    (core.AWAIT_RESPONSE, core.START_BODY, core.SEND_BODY),
    (core.SEND_BODY, core.END_BODY, core.DONE),
    (core.AWAIT_RESPONSE, core.SWITCH, core.SWITCHED),
    (core.DONE, core.NEXT_CYCLE, core.IDLE),
] + [(state, core.CLOSE, core.CLOSED) for state in core.STATES]


@pytest.mark.parametrize(("state", "event", "after"), LEGAL)
def test_legal_transitions(state: str, event: str, after: str) -> None:
    assert core.advance(state, event) == after


def test_every_other_transition_is_illegal() -> None:
    legal = {(state, event) for state, event, _ in LEGAL}
    illegal = [(s, e) for s in core.STATES for e in core.TRANSITIONS if (s, e) not in legal]
    assert (core.IDLE, core.RESPOND) in illegal and (core.DONE, core.REQUEST) in illegal
    assert (core.AWAIT_RESPONSE, core.END_BODY) in illegal and (core.SEND_BODY, core.NEXT_CYCLE) in illegal
    assert (core.SWITCHED, core.NEXT_CYCLE) in illegal and (core.CLOSED, core.REQUEST) in illegal
    for state, event in illegal:
        with pytest.raises(IllegalTransition, match=event):
            core.advance(state, event)
    assert issubclass(IllegalTransition, StackError)


def test_a_whole_cycle() -> None:
    state = core.IDLE
    for event in (core.REQUEST, core.START_BODY, core.END_BODY, core.NEXT_CYCLE, core.REQUEST, core.RESPOND):
        state = core.advance(state, event)
    assert state == core.DONE


# ------------------------------------------------------------------------------------ head framing


def test_head_buffer_takes_one_head_and_keeps_the_rest() -> None:
    buf = HeadBuffer()
    buf += b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n"
    assert buf.take_head(1000) is None
    assert buf.scan > 0 and bytes(buf).startswith(b"GET")  # the empty lines before it are gone
    buf += b"\r\nGET /2 HTTP/1.1\r\n"
    assert buf.take_head(1000) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert bytes(buf) == b"GET /2 HTTP/1.1\r\n" and buf.scan == 0
    assert buf.take_head(1000) is None


def test_head_buffer_empty() -> None:
    buf = HeadBuffer()
    assert buf.take_head(10) is None
    buf += b"\r\n"
    assert buf.take_head(10) is None and not buf


def test_head_buffer_refuses_a_bare_lf_end() -> None:
    buf = HeadBuffer()
    buf += b"GET / HTTP/1.1\nHost: x\n\n"
    with pytest.raises(Refused) as caught:
        buf.take_head(1000)
    assert caught.value.status == 400


@pytest.mark.parametrize("complete", [True, False])
def test_head_buffer_refuses_an_oversized_head(complete: bool) -> None:
    buf = HeadBuffer()
    buf += b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + (b"\r\n\r\n" if complete else b"")
    with pytest.raises(Refused) as caught:
        buf.take_head(64)
    assert caught.value.status == 431


# ------------------------------------------------------------------------ the reference head parser


def parse(head: bytes, limit: int = 65536) -> core.ParsedHead:
    return ReferenceEngine(limit).parse_head(head)


def test_parse_head_record() -> None:
    head = parse(b"POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Y: Z\r\nExpect: 100-continue\r\n\r\n")
    assert (head.method, head.target, head.http_version) == (b"POST", b"/a?b", b"1.1")
    assert head.fields == [(b"host", b"x"), (b"content-length", b"5"), (b"x-y", b"Z"), (b"expect", b"100-continue")]
    assert head.keep_alive and not head.chunked and head.content_length == 5 and head.expect_100
    head = parse(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert head.chunked and head.content_length is None and not head.keep_alive and not head.expect_100
    head = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert head.http_version == b"1.0" and not head.keep_alive and head.content_length is None
    assert "GET" in repr(head)


REFUSED = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400, "more than one"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n", 400, ""),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, ""),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "obs-fold"),
    (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400, "bare LF"),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "not supported"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, ""),  # no Host (h11)
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, ""),  # unknown coding (h11)
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""),  # a malformed request-line (h11)
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, ""),  # a space before the colon (h11)
]


@pytest.mark.parametrize(("head", "status", "detail"), REFUSED)
def test_parse_head_refusals(head: bytes, status: int, detail: str) -> None:
    with pytest.raises(Refused) as caught:
        parse(head)
    assert caught.value.status == status and detail in caught.value.detail


# ------------------------------------------------------------------------ the reference body decoder


def drain(engine: ReferenceEngine) -> list[object]:
    out: list[object] = []
    while True:
        got = engine.next_body()
        out.append(got)
        if not isinstance(got, bytes):
            return out


def test_body_decoder_content_length_and_pipelined_rest() -> None:
    engine = ReferenceEngine(65536)
    engine.parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert engine.next_body() is None
    engine.feed(b"he")
    assert drain(engine) == [b"he", None]
    engine.feed(b"lloGET / HTTP/1.1\r\n")
    assert drain(engine) == [b"llo", ()]
    assert engine.trailing() == b"GET / HTTP/1.1\r\n"
    assert engine.reset() == b"GET / HTTP/1.1\r\n"
    assert engine.parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").method == b"GET"  # a fresh cycle


def test_body_decoder_chunked_with_trailers() -> None:
    engine = ReferenceEngine(65536)
    engine.parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    engine.feed(b"3;ext=1\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
    got = drain(engine)
    assert got[0] == b"abc" and [(bytes(k).lower(), bytes(v)) for k, v in got[-1]] == [(b"x-sum", b"1")]  # type: ignore[attr-defined]


def test_body_decoder_100_continue() -> None:
    engine = ReferenceEngine(65536)
    head = engine.parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert head.expect_100 and engine.client_waits_for_100
    assert engine.next_body() is None and engine.client_waits_for_100
    engine.feed(b"h")
    assert engine.next_body() == b"h" and not engine.client_waits_for_100


@pytest.mark.parametrize(
    "body",
    [
        b"12345678901234567\r\n",  # 17 hex digits
        b"3 \r\nabc\r\n",  # whitespace after the size
        b"3\nabc\r\n",  # bare LF
        b"3\r\nabcX\r\n",  # no CRLF after the data
        b"0\r\nX: 1\r\n folded\r\n\r\n",  # obs-fold in a trailer
        b"0\r\nX: 1\n\r\n",  # bare LF in a trailer
        b"zz\r\n",  # not hex
    ],
)
def test_body_decoder_refuses_bad_chunked_framing(body: bytes) -> None:
    engine = ReferenceEngine(65536)
    engine.parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError):
        engine.feed(body)
        drain(engine)


def test_body_decoder_refuses_what_h11_refuses() -> None:
    engine = ReferenceEngine(65536)
    engine.parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    engine.feed(b"ab")
    engine.feed(b"")  # the end of the stream in the middle of the body
    assert engine.next_body() == b"ab"
    with pytest.raises(ProtocolError, match="request body"):
        engine.next_body()


def test_chunked_check_limits() -> None:
    check = _ChunkedCheck(16)
    with pytest.raises(ProtocolError, match="too long"):
        check.feed(b"1" * 20)
    check = _ChunkedCheck(16)
    with pytest.raises(ProtocolError, match="trailer section too large"):
        check.feed(b"0\r\nX-A: 123456\r\nX-B: 123456\r\n")
    check = _ChunkedCheck(16)
    check.feed(b"2\r\nab\r\n0\r\n\r\nanything after the end is not checked\n")


# ---------------------------------------------------------------------------------- the writer


class Writer(ResponseWriter):
    def __init__(self) -> None:
        self.outbuf = bytearray()

    def head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        whole: int | None,
        *,
        head_request: bool = False,
        http11: bool = True,
        close: bool = False,
        unread: str | None = None,
        shutting_down: bool = False,
    ) -> str | None:
        return self._frame_head(status, fields, whole, head_request, http11, close, unread, shutting_down)

    def text(self) -> bytes:
        out = bytes(self.outbuf)
        self.outbuf.clear()
        return out


def fields_of(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n")[1:] if line and not line.startswith(b"date: ")]


def test_writer_whole_body() -> None:
    w = Writer()
    assert w.head(200, [(b"content-type", b"text/plain")], 5) is None
    head = w.text()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n") and b"\r\ndate: " in head
    assert fields_of(head) == [b"content-type: text/plain", b"content-length: 5"]
    assert w._left == 5 and not w._chunked and not w._discard


def test_writer_streamed_body_is_chunked_with_trailers() -> None:
    w = Writer()
    w.head(200, [], None)
    assert fields_of(w.text()) == [b"transfer-encoding: chunked"]
    w._frame_data(b"hello")
    w._frame_data(b"")
    w._frame_end([(b"x-sum", b"1")])
    assert w.text() == b"5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"


def test_writer_content_length_stream_and_overrun() -> None:
    w = Writer()
    w.head(200, [(b"content-length", b"3")], None)
    w.text()
    w._frame_data(b"ab")
    with pytest.raises(StackError, match="longer"):
        w._frame_data(b"cd")
    assert w.text() == b"ab" and w._left == 1  # nothing of the overrun was committed
    with pytest.raises(ValueError, match="chunked"):
        w._frame_end([(b"x", b"1")])
    w._frame_end(None)
    assert w._left == 1 and w.text() == b""  # the caller sees the missing byte


def test_writer_http10_is_close_delimited() -> None:
    w = Writer()
    assert w.head(200, [], None, http11=False) == "this response closes the connection"
    assert fields_of(w.text()) == [b"connection: close"]
    w._frame_data(b"raw")
    assert w.text() == b"raw"


@pytest.mark.parametrize(("status", "head_request"), [(204, False), (304, False), (200, True)])
def test_writer_bodyless(status: int, head_request: bool) -> None:
    w = Writer()
    w.head(status, [], 0 if status != 200 else 10, head_request=head_request)
    lines = fields_of(w.text())
    assert (b"content-length: 10" in lines) == head_request and w._discard
    w._frame_data(b"ignored")
    assert w.text() == b""


def test_writer_connection_field_is_ours() -> None:
    w = Writer()
    assert w.head(200, [(b"connection", b"keep-alive")], 0) is None
    assert b"connection" not in w.text()
    assert w.head(200, [(b"connection", b"Close")], 0) == "this response closes the connection"
    assert fields_of(w.text()) == [b"content-length: 0", b"connection: close"]
    assert w.head(200, [], 0, shutting_down=True) is not None
    assert w.head(200, [], 0, unread="unread body") == "unread body"
    assert w.head(200, [], 0, close=True, unread="unread body") == "this response closes the connection"


@pytest.mark.parametrize(
    ("fields", "whole"),
    [
        ([(b"bad name", b"x")], 0),
        ([(b"x", b"a\r\nb")], 0),
        ([(b"content-length", b"1"), (b"content-length", b"1")], 1),
        ([(b"content-length", b"x")], None),
        ([(b"content-length", b"3")], 5),
        ([(b"transfer-encoding", b"chunked")], 5),
        ([(b"transfer-encoding", b"gzip")], None),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], None),
    ],
)
def test_writer_refuses_bad_fields_and_commits_nothing(fields: list[tuple[bytes, bytes]], whole: int | None) -> None:
    w = Writer()
    with pytest.raises(ValueError):
        w.head(200, fields, whole)
    assert w.outbuf == b""


def test_switch_head_and_raw_response() -> None:
    assert core.switch_head(101, [(b"upgrade", b"x")]) == b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"
    assert b"\r\ndate: " in core.switch_head(200, [])
    with pytest.raises(ValueError):
        core.switch_head(101, [(b"x", b"\n")])
    raw = core.raw_response(431, "too big")
    assert raw.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n") and raw.endswith(b"too big\n")
    assert b"connection: close" in raw and core.reason(799) == b""
