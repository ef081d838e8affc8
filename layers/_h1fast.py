"""The fast HTTP/1.1 server engine: llhttp (through httptools) parses heads, our own code decodes bodies.

Theory of operation. A server connection parses with one :class:`~layers._h1core.ServerEngine`
(the seam in ``_h1core``); the reference engine is h11 plus our strict checks. This one keeps the
same contract and the same decisions at a fraction of the cost:

* **Heads.** The connection hands over one complete head (its end was found by
  :class:`~layers._h1core.HeadBuffer`). llhttp, a C parser, splits it into method, target,
  version and fields with one Python callback per field (it refuses every bare LF and obs-fold
  itself); then the same framing checks (``framed_head``: CL with TE, repeated or bad
  Content-Length, TE in HTTP/1.0) and h11's own rules that llhttp does not apply (Host, the
  target's characters). llhttp is strict where smuggling lives and refuses everything odd.
  **Whatever llhttp refuses is handed to the reference engine**, which then refuses it with
  exactly the status and detail it always gives, or accepts it (a method llhttp does not know,
  such as ``PROPFIND``: llhttp knows a fixed list): both engines take the same decisions and say
  the same things, and the odd path costs what it cost before.
* **Bodies** need no parser for Content-Length (a count). Chunked bodies are decoded here, by
  :class:`ChunkedDecoder`, with the reference's strict rules (``1*16HEXDIG [; ext] CRLF``, CRLF
  after data, no bare LF, no obs-fold in trailers, trailer fields valid as h11 checks them, the
  chunk-size and trailer lines bounded by ``max_header_bytes``).
* Nothing here allocates per request beyond the field list and the parsed head. One llhttp
  parser per thread serves every connection (a head is fed whole, and the parser is back at rest
  after a bodyless request; after any other it is replaced), so an idle connection holds none.

The differential tests (``tests/test_h1_engines.py``) hold both engines to the same answers on
generated requests, the smuggling shapes included.
"""

from __future__ import annotations

import re
import threading

import httptools

from stack.errors import ProtocolError

from ._h1core import (
    CONTROL_BYTE,
    ParsedHead,
    ReferenceEngine,
    Trailers,
    check_field_bytes,
    framed_head,
)

__all__ = ["ChunkedDecoder", "FastEngine"]

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?\r\n")
# h11's rules for a field line (RFC 9110 5.5 / 5.6.2): a token, a colon, a value of visible bytes,
# obs-text, spaces and tabs, optional whitespace around it.
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD_VALUE = rb"((?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?)"
_FIELD_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*" + _FIELD_VALUE + rb"[ \t]*\r\n")
# h11's request-target: any bytes but whitespace and NUL; llhttp's URL rules are laxer about
# control bytes, so we apply h11's.
_TARGET = re.compile(rb"[^\x00-\x20\x7f]+")
_OWS = (b" ", b"\t")


_SHARED = threading.local()
"""One llhttp parser per thread, shared by every connection: it is given one whole head at a time
and is back at rest after it (or replaced), so a connection holds no parser while it idles."""


class _Fields:
    """llhttp's one callback for a head: its fields (names lower-cased). The target is cut from the
    request line, and whether the message ended within the head follows from its fields (no
    Content-Length or Transfer-Encoding: no body), so no other callback runs per request."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading whitespace from a value but keeps trailing whitespace (h11 drops both)
        self.fields.append((name.lower(), value.rstrip(b" \t") if value[-1:] in _OWS else value))


class ChunkedDecoder:
    """Decodes one chunked body (RFC 9112 7.1), sans-io, with the reference engine's strict rules.

    ``feed(data)`` appends bytes; ``next_body()`` returns the next data bytes, the trailer fields
    at the end (a list, empty if none), or None for more bytes; a malformed body raises
    :class:`~stack.ProtocolError` (sticky). ``rest()`` is what was fed past the end of the body.
    A chunk-size or trailer line longer than ``limit`` (and the trailers in all) is refused.
    """

    __slots__ = ("_buf", "_done", "_error", "_left", "_limit", "_state", "_trailer_bytes", "_trailers")

    SIZE, DATA, CRLF, TRAILER, END = range(5)

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._state = self.SIZE
        self._left = 0
        self._limit = limit
        self._trailers: list[tuple[bytes, bytes]] = []
        self._trailer_bytes = 0
        self._error: ProtocolError | None = None
        self._done = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def _fail(self, why: str) -> ProtocolError:
        self._error = ProtocolError(f"HTTP/1.1 request body: chunked body: {why}")
        return self._error

    def _line(self) -> bytes | None:
        buf = self._buf
        j = buf.find(b"\n")
        if j < 0:
            if len(buf) > self._limit:
                raise self._fail("a chunk-size or trailer line is too long")
            return None
        line = bytes(buf[: j + 1])
        del buf[: j + 1]
        if not line.endswith(b"\r\n"):
            raise self._fail("a line ends in a bare LF")
        return line

    def next_body(self) -> bytes | Trailers | None:
        if self._error is not None:
            raise self._error
        buf = self._buf
        while True:
            state = self._state
            if state == self.DATA:
                if not buf:
                    return None
                take = min(self._left, len(buf))
                data = bytes(buf[:take])
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._state = self.CRLF
                return data
            if state == self.END:
                if self._done:
                    return None
                self._done = True
                return self._trailers
            line = self._line()
            if line is None:
                return None
            if state == self.CRLF:
                if line != b"\r\n":
                    raise self._fail("chunk data is not followed by CRLF")
                self._state = self.SIZE
            elif state == self.SIZE:
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise self._fail(f"bad chunk-size line {line[:40]!r}")
                self._left = int(m.group(1), 16)
                self._state = self.DATA if self._left else self.TRAILER
            else:  # TRAILER
                if line == b"\r\n":
                    self._state = self.END
                    continue
                if line[:1] in (b" ", b"\t"):
                    raise self._fail("obs-fold in the trailer section")
                self._trailer_bytes += len(line)
                if self._trailer_bytes > self._limit:
                    raise self._fail("trailer section too large")
                m = _FIELD_LINE.fullmatch(line)
                if m is None:
                    raise self._fail(f"malformed trailer field {line[:40]!r}")
                self._trailers.append((m.group(1), m.group(2)))

    def rest(self) -> bytes:
        """The bytes fed past the end of the body (the start of the next request)."""
        return bytes(self._buf) if self._state == self.END else b""


class FastEngine:
    """The fast :class:`~layers._h1core.ServerEngine` (see the module docstring)."""

    __slots__ = ("_chunked", "_eof", "_expect_100", "_fallback", "_left", "_limit", "_trailing")

    name = "fast"

    def __init__(self, max_header_bytes: int) -> None:
        self._limit = max_header_bytes
        self._fallback: ReferenceEngine | None = None
        # The body of the current request: a ChunkedDecoder, or None and ``_left`` bytes due under
        # a Content-Length (-1 once its end was reported).
        self._chunked: ChunkedDecoder | None = None
        self._left = 0
        # body bytes under a Content-Length, then what follows the body: made on the first such
        # byte (an idle connection that only took bodyless requests holds none)
        self._trailing: bytearray | None = None
        self._eof = False
        self._expect_100 = False

    # ---- heads -------------------------------------------------------------------------------

    def parse_head(self, head: bytes) -> ParsedHead:
        # No check_head_bytes here: llhttp refuses every bare LF and obs-fold itself, and a head it
        # refuses goes to the reference engine, which runs those checks first and words them.
        shared = _SHARED
        try:
            parser, sink = shared.parser, shared.sink
        except AttributeError:  # the first head this thread parses
            sink = shared.sink = _Fields()
            parser = shared.parser = httptools.HttpRequestParser(sink)
        fields = sink.fields = []
        switched = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            switched = True  # CONNECT or Upgrade: what follows is not HTTP/1.1's business
        except httptools.HttpParserError:
            shared.parser = httptools.HttpRequestParser(sink)
            return self._refer(head)
        method = parser.get_method()
        version = parser.get_http_version().encode("ascii")
        hosts = codings = 0
        host = None
        expect = upgrade = length = False
        keep_alive = version == b"1.1"
        for name, value in fields:  # one pass: h11's rules below, and the facts of the head
            if name == b"host":
                hosts += 1
                if host is None:
                    host = value
            elif name == b"content-length":
                length = True
            elif name == b"transfer-encoding":
                if value != b"chunked":
                    if value.lower() != b"chunked":
                        codings += 2
                        continue
                    fields[fields.index((name, value))] = (name, b"chunked")  # h11 lower-cases the coding
                codings += 1
            elif name == b"connection":
                if b"close" in value.lower():
                    keep_alive = False
            elif name == b"upgrade":
                upgrade = True
            elif name == b"expect" and b"100-continue" in value.lower():
                expect = True
        if switched or length or codings or not keep_alive:
            # llhttp waits for a body (ours to decode), or will refuse what follows a closing
            # message: the next head, on any connection, gets a new parser
            shared.parser = httptools.HttpRequestParser(sink)
        eol = head.find(b"\r\n")
        if CONTROL_BYTE.search(head, eol) is not None:  # llhttp lets some through; the reference's words
            check_field_bytes(head, eol)
        # h11 wants exactly "method SP target SP HTTP/x.y" (llhttp lets more spaces through)
        start = len(method) + 1
        target = head[start : eol - 9]
        if (
            head[start - 1] != 0x20
            or not head.startswith(b" HTTP/", eol - 9)
            or head[eol - 3 : eol] != version
            or _TARGET.fullmatch(target) is None
        ):
            return self._refer(head)
        # h11's rules, in h11's words (and before the version check, as h11): exactly one Host in
        # HTTP/1.1, at most one in 1.0; no transfer coding but a single "chunked" (501)
        if (hosts != 1 and (hosts or version == b"1.1")) or codings > 1:
            return self._refer(head)
        expect = expect and version == b"1.1"
        if length or codings or (version != b"1.1" and version != b"1.0"):
            # a body, or an unusual version: the shared framing checks (505, CL with TE, ...)
            parsed = framed_head(head, method, target, version, fields, expect)
            self._start_body(parsed)
            return parsed
        # no body (RFC 9112 6.3), HTTP/1.1 or 1.0: what framed_head would return, without its pass
        self._expect_100 = expect
        self._left = 0
        self._chunked = None
        self._eof = False
        return ParsedHead(method, target, version, fields, keep_alive, False, None, expect, host, upgrade)

    def _refer(self, head: bytes) -> ParsedHead:
        """Parse ``head`` with the reference engine: its decision and its words."""
        ref = self._fallback
        if ref is None:
            ref = self._fallback = ReferenceEngine(self._limit)
        else:
            ref.reset()
        parsed = ref.parse_head(head)  # raises Refused as the reference does
        self._start_body(parsed)  # the body is ours to decode, as for any other head
        return parsed

    def _start_body(self, parsed: ParsedHead) -> None:
        self._expect_100 = parsed.expect_100
        if parsed.chunked:
            self._chunked = ChunkedDecoder(self._limit)
        else:
            self._left = parsed.content_length or 0
            self._chunked = None
        self._eof = False

    # ---- bodies ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._chunked is not None:
            self._chunked.feed(data)
        elif self._trailing is None:
            self._trailing = bytearray(data)
        else:
            self._trailing += data

    def next_body(self) -> bytes | Trailers | None:
        chunked = self._chunked
        if chunked is not None:
            got = chunked.next_body()
            if got is None:
                if self._eof:
                    raise ProtocolError("HTTP/1.1 request body: the client closed the connection in the body")
                return None
            self._expect_100 = False
            if type(got) is list:  # the end: what follows belongs to the next request
                self._chunked = None
                self._left = -1
                rest = chunked.rest()
                if rest:
                    self.feed(rest)
            return got
        left = self._left
        if left <= 0:
            if left == 0:
                self._left = -1
                self._expect_100 = False
                return ()
            return None  # the end was reported already
        buf = self._trailing
        if not buf:  # None or empty
            if self._eof:
                raise ProtocolError("HTTP/1.1 request body: the client closed the connection in the body")
            return None
        self._expect_100 = False
        if len(buf) <= left:
            data = bytes(buf)
            self._trailing = None
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self._left = left - len(data)
        return data

    @property
    def client_waits_for_100(self) -> bool:
        return self._expect_100

    def trailing(self) -> bytes:
        return bytes(self._trailing) if self._trailing else b""

    def reset(self) -> bytes:
        trailing = self._trailing
        rest = bytes(trailing) if trailing else b""
        self._trailing = None
        self._left = 0
        self._chunked = None
        self._eof = self._expect_100 = False
        return rest
