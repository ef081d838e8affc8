"""The sans-io core of HTTP/1.1: everything the server decides about bytes, with no I/O and no trio.

Theory of operation. A server connection (``_h1server.py``) moves bytes; this module says what
they mean and what may happen next:

* **Head framing** (:class:`HeadBuffer`): the bytes read ahead, searched for the end of a request
  head (the first empty line). Empty lines before a request-line are skipped (RFC 9112 2.2), a
  bare LF ending the head or a head over ``max_header_bytes`` is a :class:`Refused` (400, 431).
* **The engine seam**: a complete head goes to a :class:`HeadParser`, which returns one
  :class:`ParsedHead` or raises :class:`Refused`; the request body goes through a
  :class:`BodyDecoder` (fed bytes; gives data, the end of the body with its trailers, or "needs
  more"). :class:`ReferenceEngine` is h11 plus our strict checks, and is the behaviour every
  other engine must match; another engine (a compiled parser) implements the same two protocols
  and reuses the shared checks (:func:`check_head_bytes`, :func:`check_version`,
  :func:`framed_head`), so the refusals stay the same whoever parses.
* **The strict request checks** h11 leaves out (request smuggling shapes): Content-Length with
  Transfer-Encoding, a repeated or list-valued Content-Length, obs-fold, bare LF, Transfer-Encoding
  in HTTP/1.0, a major version other than 1 (505); and :class:`_ChunkedCheck`, the strict
  chunked framing (chunk-size lines, CRLF after data, trailer lines).
* **The response writer** (:class:`ResponseWriter`): status line, header field checks and the
  body's framing (Content-Length, chunked, close-delimited, none for HEAD / 204 / 304), committed
  into the connection's ``outbuf``.
* **The state table** of the request / connection cycle, as h11's ``_state.py``: named states,
  one table of the legal transitions, and :func:`advance`, the one function that applies them
  (a dict lookup; an illegal transition raises :class:`IllegalTransition`)::

      IDLE --REQUEST--> AWAIT_RESPONSE --RESPOND--> DONE --NEXT_CYCLE--> IDLE
                              |  \\--START_BODY--> SEND_BODY --END_BODY--> DONE
                              \\--SWITCH--> SWITCHED      (any) --CLOSE--> CLOSED

Nothing here allocates per request beyond what parsing needs (one :class:`ParsedHead`).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Protocol

import h11

from layers._http_model import HeaderInput, Headers, date_header, remember, small_fields
from stack.errors import ProtocolError, StackError

# --------------------------------------------------------------------------------------------------
# Constants (re-exported by layers.http1)

RECV = 65536
"""Bytes asked of the stream below per receive."""

SEND_CHUNK = 65536
"""Most body bytes committed per step of a body ``send`` (one chunk in chunked encoding)."""

MAX_DRAIN = 65536
"""Most bytes of an unread request body the server reads and discards to keep the connection."""

DRAIN_TIME = 1.0
"""Seconds the server (or the client closing a response early) spends draining an unread body."""

LINGER = 2.0
"""Seconds the server keeps reading (and discarding) after an error response, before closing, so
the client reads the response instead of a reset."""

CONTINUE_TIMEOUT = 1.0
"""Seconds the client waits for ``100 Continue`` before sending the body anyway (as curl does)."""

INLINE_SEND = 65536
"""A request whose head and body come to at most this many bytes is written whole before its
response is read (the socket buffers take it); a larger or streamed body is sent by a task while
the response is read (full duplex, see :class:`layers.http1.ClientConnection`)."""

DUPLEX_BUFFER = 1024 * 1024
"""Most response body bytes a connection used without ``async with conn:`` keeps while it finishes
sending a request body that the server answers (2xx) as it arrives."""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BODYLESS_STATUS = frozenset({204, 304})

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# RFC 9110 renamed these (Python's HTTPStatus has the new names from 3.13 on)
_REASONS.update({413: b"Content Too Large", 416: b"Range Not Satisfiable", 422: b"Unprocessable Content"})
_BLANK_LINE = re.compile(rb"\n\r?\n")
_CL_LINE = re.compile(rb"\ncontent-length:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?\r\n")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""A control byte that may not appear in a field section (RFC 9110 5.5: no CTL in a value but
HTAB; CR and LF are the line endings, checked by the framing); one search over the whole block."""


def reason(status: int) -> bytes:
    """The reason phrase of ``status`` (empty for an unknown one)."""
    return _REASONS.get(status, b"")


def raw_response(status: int, detail: str) -> bytes:
    """A complete ``Connection: close`` response with a short text body, built without any parser
    state (which may be broken when we refuse a request)."""
    body = f"{status} {reason(status).decode()}: {detail}\n".encode("latin-1", "replace")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\ndate: %s\r\n\r\n%s" % (status, reason(status), len(body), date_header(), body)
    )


class Refused(StackError):
    """A request the server refuses with ``status`` (and then closes the connection)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# The state table of the request / connection cycle


IDLE = "IDLE"
"""No request in progress: waiting for the next head."""
AWAIT_RESPONSE = "AWAIT_RESPONSE"
"""A request arrived; no response started."""
SEND_BODY = "SEND_BODY"
"""A streamed response's head went out; its body is being written."""
DONE = "DONE"
"""The response is complete; the cycle ends (next request, or close) at the next ``recv``."""
SWITCHED = "SWITCHED"
"""The connection switched protocols (101, a 2xx to CONNECT, h2c): HTTP/1.1 is over on it."""
CLOSED = "CLOSED"
"""The connection is closed (or detached)."""

REQUEST = "REQUEST"
RESPOND = "RESPOND"
START_BODY = "START_BODY"
END_BODY = "END_BODY"
SWITCH = "SWITCH"
NEXT_CYCLE = "NEXT_CYCLE"
CLOSE = "CLOSE"

STATES = (IDLE, AWAIT_RESPONSE, SEND_BODY, DONE, SWITCHED, CLOSED)

TRANSITIONS: dict[str, dict[str, str]] = {
    REQUEST: {IDLE: AWAIT_RESPONSE},
    RESPOND: {AWAIT_RESPONSE: DONE},  # a whole response (also the server's own error response)
    START_BODY: {AWAIT_RESPONSE: SEND_BODY},
    END_BODY: {SEND_BODY: DONE},
    SWITCH: {AWAIT_RESPONSE: SWITCHED},
    NEXT_CYCLE: {DONE: IDLE},
    CLOSE: {state: CLOSED for state in STATES},
}
"""event -> {state -> next state}: every legal transition; anything else is illegal.

The server takes the three transitions of the usual keep-alive cycle (REQUEST from IDLE, RESPOND
from AWAIT_RESPONSE, NEXT_CYCLE from DONE) inline, without calling :func:`advance` (this is per
request); the table must keep them as they are (checked below), and every other goes through
:func:`advance`."""
assert TRANSITIONS[REQUEST][IDLE] is AWAIT_RESPONSE and TRANSITIONS[RESPOND][AWAIT_RESPONSE] is DONE
assert TRANSITIONS[NEXT_CYCLE][DONE] is IDLE


class IllegalTransition(StackError):
    """An event that the state table does not allow in the current state (a caller's error)."""


def advance(state: str, event: str) -> str:
    """The state after ``event`` in ``state``; :class:`IllegalTransition` if it is not allowed."""
    nxt = TRANSITIONS[event].get(state)
    if nxt is None:
        raise IllegalTransition(f"HTTP/1.1: {event} is not possible in state {state}")
    return nxt


# --------------------------------------------------------------------------------------------------
# Head framing


class HeadBuffer(bytearray):
    """Bytes read ahead of the parser; :meth:`take_head` cuts a complete request head off its front.

    ``scan`` remembers how far the buffer was searched, so bytes arriving one by one are not
    searched again from the start.
    """

    __slots__ = ("scan",)  # no instance dict: every connection holds one

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.scan = 0

    def take_head(self, limit: int) -> bytes | None:
        """The complete head at the front (removed from the buffer, the bytes after it stay), or
        None while it is not all there. Empty lines before it are dropped. :class:`Refused` with 400
        for a head that ends in a bare LF, 431 for one over ``limit`` bytes (complete or not)."""
        while self.startswith(b"\r\n"):  # RFC 9112 2.2: ignore empty lines before a request-line
            del self[:2]
            self.scan = 0
        if not self:
            return None
        m = _BLANK_LINE.search(self, self.scan)
        if m is not None:
            if m.end() - m.start() == 2:
                raise Refused(400, "bare LF line ending in the request head")
            end = m.end()
            if end > limit:
                raise Refused(431, f"request head is over {limit} bytes")
            if end == len(self):
                head = bytes(self)
                self.clear()
            else:
                head = bytes(memoryview(self)[:end])
                del self[:end]
            self.scan = 0
            return head
        if len(self) > limit:
            raise Refused(431, f"request head is over {limit} bytes")
        self.scan = max(0, len(self) - 2)
        return None

    def exact_head(self, data: bytes, limit: int) -> bytes | None:
        """``data`` itself when it is exactly one complete head and this buffer is empty (the usual
        read: no copy); else None, and ``data`` is appended for :meth:`take_head`."""
        if not self and 0 < len(data) <= limit and data[0] != 13:  # (a CR first: empty lines first, take_head's)
            m = _BLANK_LINE.search(data)
            # the first empty line is the last and ends the data, with CRLF: one head, as take_head cuts it
            if m is not None and m.start() == len(data) - 3 and m.end() == len(data):
                return data
        self += data
        return None


# --------------------------------------------------------------------------------------------------
# The engine seam: the parsed head, head parsers and body decoders


class ParsedHead:
    """A request head as a :class:`HeadParser` returns it, already checked.

    ``method``, ``target``, ``http_version`` (``b"1.1"`` or ``b"1.0"``) as bytes; ``fields``: the
    header fields as ``(lower-cased name, value)`` byte pairs, in order; ``keep_alive``: the client
    keeps the connection (HTTP/1.1 without ``Connection: close``); ``chunked``: the body is
    chunked; ``content_length``: the declared length, or None; ``expect_100``: the client waits
    for ``100 Continue``; ``host``: the first Host value, or None; ``upgrade``: an Upgrade field came.
    """

    __slots__ = (
        "chunked",
        "content_length",
        "expect_100",
        "fields",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        fields: list[tuple[bytes, bytes]],
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        expect_100: bool,
        host: bytes | None = None,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.fields = fields
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.expect_100 = expect_100
        self.host = host
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"<ParsedHead {self.method!r} {self.target!r} HTTP/{self.http_version.decode()}>"


class HeadParser(Protocol):
    """Parses one complete request head (the bytes up to and including the empty line)."""

    def parse_head(self, head: bytes) -> ParsedHead:
        """The checked head, or :class:`Refused` (status and detail) for what the server refuses."""
        ...


Trailers = Sequence[tuple[bytes, bytes]]


class BodyDecoder(Protocol):
    """Decodes the body of the request whose head was parsed last.

    ``feed(data)`` gives it received bytes (``b""``: the end of the stream) and may raise
    :class:`~stack.ProtocolError` for bytes that break the framing. ``next_body()`` returns the
    next body bytes (``bytes``, never empty), the end of the body as the trailer fields (a sequence
    of ``(name, value)`` byte pairs, empty if none), or None when it needs more bytes; a malformed
    body raises :class:`~stack.ProtocolError`. ``client_waits_for_100`` is True while the client
    asked for ``100 Continue`` and no body byte was decoded. ``reset()`` makes it ready for the
    next request and returns the bytes fed past the end of this body (the next request's start);
    ``trailing()`` returns those bytes without resetting (for a protocol switch).
    """

    def feed(self, data: bytes) -> None: ...

    def next_body(self) -> bytes | Trailers | None: ...

    @property
    def client_waits_for_100(self) -> bool: ...

    def trailing(self) -> bytes: ...

    def reset(self) -> bytes: ...


class ServerEngine(HeadParser, BodyDecoder, Protocol):
    """What a server connection parses with: one object per connection, made by
    ``engine_class(max_header_bytes)``. The head parser and the body decoder work in turn: a head,
    then its body, then ``reset()``. ``name`` is what ``info["http_engine"]`` shows."""

    name: str


def check_head_bytes(head: bytes) -> None:
    """Refuse bare LF line endings and obs-fold anywhere in a complete head (400)."""
    if head.count(b"\n") != head.count(b"\r\n"):
        raise Refused(400, "bare LF line ending in the request head")
    if b"\n " in head or b"\n\t" in head:
        raise Refused(400, "obs-fold (a header line continued on the next line)")


def check_field_bytes(head: bytes, start: int) -> None:
    """Refuse (400) a control byte in the header fields of ``head``, searched from ``start`` (the
    end of the request line, which h11's rules check): RFC 9110 5.5 allows none in a field value
    but HTAB, and a proxy must never forward one (the usual start of header obfuscation). One
    search over the whole block, not one per field."""
    m = CONTROL_BYTE.search(head, start)
    if m is not None:
        raise Refused(400, f"control character {head[m.start()]:#04x} in a header field")


def check_version(http_version: bytes) -> None:
    """Refuse a version other than HTTP/1.1 and 1.0 (505)."""
    if http_version != b"1.1" and http_version != b"1.0":
        raise Refused(505, f"HTTP/{http_version.decode()} is not supported")


def framed_head(
    head: bytes,
    method: bytes,
    target: bytes,
    http_version: bytes,
    fields: list[tuple[bytes, bytes]],
    expect_100: bool,
) -> ParsedHead:
    """The :class:`ParsedHead` of a request whose fields (lower-cased names) were parsed from
    ``head``, after :func:`check_version` and the framing checks: :class:`Refused` (400) for Content-Length with
    Transfer-Encoding, more than one Content-Length line (looked up in the raw ``head``: a parser
    may have merged equal ones), a Content-Length that is not digits, Transfer-Encoding in HTTP/1.0.
    """
    if http_version != b"1.1" and http_version != b"1.0":
        check_version(http_version)
    cl = te = upgrade = False
    keep_alive = http_version == b"1.1"
    host = None
    for name, value in fields:
        if name == b"host":
            if host is None:
                host = value
        elif name == b"content-length":
            cl = True
        elif name == b"transfer-encoding":
            te = True
        elif name == b"connection":
            if b"close" in value.lower():
                keep_alive = False
        elif name == b"upgrade":
            upgrade = True
    length: int | None = None
    if cl:
        if te:
            raise Refused(400, "both Content-Length and Transfer-Encoding")
        values = _CL_LINE.findall(head.lower())
        if len(values) != 1:
            raise Refused(400, "more than one Content-Length")
        if not values[0].isdigit():
            raise Refused(400, f"bad Content-Length {values[0][:20]!r}")
        length = int(values[0])
    if te and http_version == b"1.0":
        raise Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
    return ParsedHead(method, target, http_version, fields, keep_alive, te, length, expect_100, host, upgrade)


class ReferenceEngine:
    """The reference :class:`ServerEngine`: h11 parses, and our checks refuse what h11 lets through.

    h11 is given exactly one head per request cycle, then the body bytes; a chunked body is checked
    by :class:`_ChunkedCheck` before h11 sees it. What h11 itself refuses (a bad Content-Length,
    an unknown transfer coding: 501, a missing Host, malformed lines) is a :class:`Refused` with
    h11's status. A fresh h11 state machine per request cycle.
    """

    __slots__ = ("_chunked_check", "_h11", "_limit")

    name = "reference"

    def __init__(self, max_header_bytes: int) -> None:
        self._limit = max_header_bytes
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._chunked_check: _ChunkedCheck | None = None

    def parse_head(self, head: bytes) -> ParsedHead:
        check_head_bytes(head)
        check_field_bytes(head, head.find(b"\n"))
        h = self._h11
        h.receive_data(head)
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            raise Refused(exc.error_status_hint, str(exc)) from None
        if type(event) is not h11.Request:  # pragma: no cover - a whole head always parses
            raise Refused(400, "incomplete request head")
        version = event.http_version
        # raw_items() is one list: iterating h11's Headers itself indexes it field by field
        fields = [(name.lower(), value) for name, value in event.headers.raw_items()]
        parsed = framed_head(head, event.method, event.target, version, fields, h.they_are_waiting_for_100_continue)
        self._chunked_check = _ChunkedCheck(self._limit) if parsed.chunked else None
        return parsed

    def feed(self, data: bytes) -> None:
        check = self._chunked_check
        if data and check is not None:
            try:
                check.feed(data)
            except ProtocolError:
                self._h11.receive_data(b"")
                raise
        self._h11.receive_data(data)

    def next_body(self) -> bytes | Trailers | None:
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"HTTP/1.1 request body: {exc}") from None
        if type(event) is h11.Data:
            return bytes(event.data)
        if type(event) is h11.EndOfMessage:
            return event.headers.raw_items() if event.headers else ()
        if event is h11.NEED_DATA:
            return None
        raise ProtocolError(f"HTTP/1.1: unexpected {event!r} in a request body")  # pragma: no cover

    @property
    def client_waits_for_100(self) -> bool:
        return self._h11.they_are_waiting_for_100_continue

    def trailing(self) -> bytes:
        return self._h11.trailing_data[0]

    def reset(self) -> bytes:
        trailing = self._h11.trailing_data[0]
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limit)
        return trailing


# --------------------------------------------------------------------------------------------------
# Strict chunked framing: h11 parses chunked bodies; this checks, ahead of it, the rules it relaxes.


class _ChunkedCheck:
    """Validates chunked framing (RFC 9112 section 7.1) over the bytes about to be given to h11.

    Chunk-size lines must be ``1*16HEXDIG [";" chunk-ext] CRLF`` (h11 refuses whitespace before
    the ";" too); chunk data must be followed by CRLF; trailer lines must end in CRLF, with no
    obs-fold and no control byte (:data:`CONTROL_BYTE`, as in heads), and fit in ``limit``
    bytes in all. Stops checking at the end of the body (what
    follows is the next request, checked as a head).
    """

    __slots__ = ("_left", "_limit", "_line", "_state", "_trailer_bytes")

    SIZE, DATA, CRLF, TRAILER, END = range(5)

    def __init__(self, limit: int) -> None:
        self._state = self.SIZE
        self._left = 0
        self._line = b""
        self._limit = limit
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self._state != self.END:
            if self._state == self.DATA:
                take = min(self._left, n - i)
                i += take
                self._left -= take
                if not self._left:
                    self._state = self.CRLF
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self._line += data[i:]
                if len(self._line) > self._limit:
                    raise ProtocolError("chunked body: a chunk-size or trailer line is too long")
                return
            line = self._line + data[i : j + 1]
            self._line = b""
            i = j + 1
            self._take_line(line)

    def _take_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise ProtocolError("chunked body: a line ends in a bare LF")
        if self._state == self.CRLF:
            if line != b"\r\n":
                raise ProtocolError("chunked body: chunk data is not followed by CRLF")
            self._state = self.SIZE
        elif self._state == self.SIZE:
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None:
                raise ProtocolError(f"chunked body: bad chunk-size line {line[:40]!r}")
            self._left = int(m.group(1), 16)
            self._state = self.DATA if self._left else self.TRAILER
        else:  # TRAILER
            if line == b"\r\n":
                self._state = self.END
                return
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("chunked body: obs-fold in the trailer section")
            self._trailer_bytes += len(line)
            if self._trailer_bytes > self._limit:
                raise ProtocolError("chunked body: trailer section too large")
            m = CONTROL_BYTE.search(line, 0, len(line) - 2)  # h11 lets most through, as in heads
            if m is not None:
                raise ProtocolError(f"chunked body: control character {line[m.start()]:#04x} in a trailer field")


# --------------------------------------------------------------------------------------------------
# The response writer


def field_lines(fields: Sequence[tuple[bytes, bytes]], out: list[bytes]) -> None:
    """Append ``name: value`` lines, refusing (ValueError) what would break the framing."""
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}: {value[:40]!r}")
        out.append(b"%s: %s\r\n" % (name, value))


@functools.lru_cache(maxsize=16)
def extra_lines(fields: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The ``name: value`` lines of a server's ``response_headers`` (ValueError as
    :func:`field_lines`), made once per distinct set (a server's connections share them)."""
    out: list[bytes] = []
    field_lines(fields, out)
    return b"".join(out)


def switch_head(status: int, fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The head of a protocol switch: 101 as given, a 2xx to CONNECT with a Date."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    field_lines(fields if status == 101 else [*fields, (b"date", date_header())], lines)
    lines.append(b"\r\n")
    return b"".join(lines)


_Framed = tuple[bytes, bytes, bool, bool, "int | None", bool, "str | None"]
_HEADS: dict[tuple[object, ...], _Framed] = {}
"""Response heads by shape (see ``ResponseWriter._frame_head``): at most :data:`_HEADS_MAX`."""
_HEADS_MAX = 512


def _frame(
    status: int,
    fields: list[tuple[bytes, bytes]],
    whole: int | None,
    head_request: bool,
    http11: bool,
    close: bool,
    unread: str | None,
    shutting_down: bool,
) -> _Framed:
    """The head of one response shape: (the lines before the Date line, the lines after it,
    whether a Date line goes between, and the body's framing: discard, bytes left under a
    Content-Length, chunked; why the connection closes). ValueError as ``_frame_head``."""
    bodyless = head_request or status in BODYLESS_STATUS
    length: int | None = None
    chunked = has_date = False
    why: str | None = None
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}: {value[:40]!r}")
        if name == b"content-length":
            if length is not None or not value.isdigit():
                raise ValueError(f"invalid or repeated Content-Length {value!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked" or whole is not None:
                raise ValueError("Transfer-Encoding: only chunked, and only for start_response()")
            chunked = True
        elif name == b"connection":
            close = close or b"close" in value.lower()
            continue  # written below, from what will actually happen
        elif name == b"date":
            has_date = True
        lines.append(b"%s: %s\r\n" % (name, value))
    if chunked and length is not None:
        raise ValueError("both Content-Length and Transfer-Encoding")
    if not close and unread is not None:  # say now if the unread body means closing
        close = True
        why = unread
    if whole is not None:
        if length is None:
            if status not in BODYLESS_STATUS:
                lines.append(b"content-length: %d\r\n" % whole)
        elif length != whole and not bodyless:
            raise ValueError(f"Content-Length is {length} but the body has {whole} bytes")
        length = whole
    elif length is None and not chunked and not bodyless:
        if http11:
            chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        else:
            close = True  # an HTTP/1.0 client: the body ends with the connection
    if not close and shutting_down:
        close = True
    after = [b"connection: close\r\n", b"\r\n"] if close else [b"\r\n"]
    if close:
        why = why or "this response closes the connection"
    left = None if bodyless or chunked else length
    return b"".join(lines), b"".join(after), not has_date, bodyless, left, chunked and not bodyless, why


_time = time.time
_date_line: tuple[int, bytes] = (0, b"")
"""(second, the ``date:`` field line of that second): what ``_frame_head`` writes."""


def _new_date_line() -> tuple[int, bytes]:
    global _date_line
    _date_line = (int(_time()), b"date: %s\r\n" % date_header())
    return _date_line


class ResponseWriter:
    """Frames one response at a time into ``outbuf`` (a connection's buffer of committed bytes).

    :meth:`_frame_head` checks and writes the head and sets the framing of the body;
    :meth:`_frame_data` and :meth:`_frame_end` write the body under it: ``_left`` (bytes still due
    under a Content-Length), ``_chunked``, ``_discard`` (HEAD, 204, 304: body bytes are not sent);
    none of them (close-delimited, for an HTTP/1.0 client). What to do about errors (closing the
    connection) is the connection's business: these only raise.
    """

    outbuf: bytearray
    _left: int | None = None
    _chunked = False
    _discard = False
    _extra_lines = b""  # the server's response_headers (extra_lines), after the app's fields

    def _frame_head(
        self,
        status: int,
        fields: HeaderInput,
        whole: int | None,
        head_request: bool,
        http11: bool,
        close: bool,
        unread: str | None,
        shutting_down: bool,
    ) -> str | None:
        """Check and commit a response head and set the body's framing; return why the connection
        must close after it (None: it may stay open).

        ``whole``: the length of a whole body (None: streamed). ``close``: the connection closes
        anyway. ``unread``: why the connection closes if it would otherwise stay open (an unread
        request body). ``shutting_down``: close too. ValueError for an invalid field or framing
        fields that contradict the body; then nothing was committed.

        A head is built once per shape: everything it depends on is the key of :data:`_HEADS`,
        and only the Date line is written fresh (once a second, :func:`date_header`); the server's
        ``response_headers`` (``_extra_lines``, made once) go after the app's fields. ``fields``:
        what the app gave (a list or tuple of pairs is the key as it is, so a repeated response
        builds no :class:`~layers._http_model.Headers`), or a ``Headers``.
        """
        if type(fields) is Headers:
            fields = fields.raw
        elif type(fields) is not list and type(fields) is not tuple:
            fields = Headers(fields).raw  # a mapping
        # (the fields as one tuple in the key: cheaper than unpacking them into it)
        key = (
            status,
            fields if type(fields) is tuple else tuple(fields),
            whole,
            head_request,
            http11,
            close,
            unread,
            shutting_down,
        )
        try:
            framed = _HEADS.get(key)
        except TypeError:  # pairs that are not hashable (lists): the key from their bytes
            fields = Headers(fields).raw
            key = (status, tuple(fields), whole, head_request, http11, close, unread, shutting_down)
            framed = _HEADS.get(key)
        if framed is None:
            framed = _frame(status, Headers(fields).raw, whole, head_request, http11, close, unread, shutting_down)
            if small_fields(key[1]):  # (an app may echo what a client sent)
                remember(_HEADS, key, framed, _HEADS_MAX)
        before, after, dated, self._discard, self._left, self._chunked, why = framed
        out = self.outbuf
        out += before
        if self._extra_lines:
            out += self._extra_lines
        if dated:  # the Date line of this second, made once a second (date_header's clock, inline)
            line = _date_line
            if line[0] != int(_time()):
                line = _new_date_line()
            out += line[1]
        out += after
        return why

    def _frame_data(self, data: bytes | bytearray | memoryview) -> None:
        """Commit body bytes under the framing; :class:`~stack.StackError` (nothing committed) for
        more bytes than the Content-Length announced."""
        if self._discard or not data:
            return
        out = self.outbuf
        left = self._left
        if left is not None:
            if len(data) > left:
                raise StackError(f"response body longer than its Content-Length ({len(data)} bytes, {left} due)")
            self._left = left - len(data)
            out += data
        elif self._chunked:
            out += b"%x\r\n" % len(data)
            out += data
            out += b"\r\n"
        else:
            out += data

    def _frame_end(self, trailers: Sequence[tuple[bytes, bytes]] | None) -> None:
        """Commit the end of the body: the last chunk and ``trailers`` when chunked. ValueError
        (nothing committed) for invalid trailers, or trailers on a body that is not chunked. The
        caller checks ``_left`` (bytes missing under a Content-Length) afterwards."""
        if self._chunked:
            lines = [b"0\r\n"]
            if trailers:
                field_lines(trailers, lines)
            lines.append(b"\r\n")
            self.outbuf += b"".join(lines)
        elif trailers and not self._discard:
            raise ValueError("trailers need chunked encoding: this response has a Content-Length")
