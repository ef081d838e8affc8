"""The HTTP/1.1 client's engine seam: what writes requests and parses responses, sans-io.

Theory of operation. A client connection (``_h1client.py``) moves bytes and makes the policy
decisions (full duplex, keeping the connection, tunnels); a :class:`ClientEngine` says what the
bytes mean, with no I/O and no trio:

* **Writing**: :meth:`ClientEngine.build_request` checks a request head and serializes it
  (ValueError for an invalid method, target or field, before anything is sent);
  :meth:`~ClientEngine.send_request` commits it (the request's framing starts then);
  :meth:`~ClientEngine.send_data` / :meth:`~ClientEngine.send_end` frame the body under it
  (Content-Length or chunked; :class:`~stack.StackError` for more or fewer bytes than declared).
* **Reading**: :meth:`~ClientEngine.receive_data` stores received bytes (``b""``: the end of the
  stream); :meth:`~ClientEngine.next_event` returns the next :class:`ResponseHead` (1xx ones too),
  body bytes (``bytes``), the end of the body as its trailer fields (a ``list`` of lower-cased
  ``(name, value)`` pairs, empty if none), None when it needs more bytes, or another object for
  what the client does not expect (its repr goes in the error). Malformed input raises
  :class:`~stack.ProtocolError`; a head over ``max_header_bytes`` :class:`~stack.MessageTooLarge`.
  Body framing follows RFC 9112 6.3: no body for HEAD, 1xx, 204, 304, a 2xx to CONNECT;
  chunked; Content-Length; else until the end of the stream.
* **State** the client asks about: ``sending_body`` (the request head went, its end did not),
  ``switched`` (a 101 to an Upgrade, a 2xx to CONNECT, once the request ended), ``peer_closing``
  (the server will close: ``Connection: close``, HTTP/1.0), ``cycle_done`` (request and response
  ended on a kept-alive connection: :meth:`~ClientEngine.start_next_cycle` may run), ``idle``,
  ``trailing`` (bytes received and not parsed) and ``buffered`` (whether there are any).

:class:`ReferenceClientEngine` is h11, as the client always ran: the behaviour every other engine
matches. :class:`FastClientEngine` keeps h11's grammar and decisions (the same regular expressions,
the same leniencies: bare LF and obs-fold in heads and trailers, chunk-size lines of up to 20 hex
digits, chunk extensions; the same checks of Content-Length and Transfer-Encoding, in the same
words) with none of h11's per-event machinery: one head cut off the buffer, one pass over its
lines, bodies counted or decoded in place, request heads serialized once per shape (a small
cache) and written with their body in one buffer. ``tests/test_h1_client_engines.py`` holds both
to the same answers on generated responses.
"""

from __future__ import annotations

from typing import Any, Protocol

import h11

from layers._h1client_grammar import (
    _BLANK_LINE,
    _CACHE_SIZE,
    _CHUNK_HEADER,
    _HEADS,
    _HEADS_BLOCK,
    _HEADS_SIZE,
    _NAME,
    _STATUS_LINE,
    _TARGET,
    _VALUE,
    _comma_values,
    _control_byte,
    _control_in_trailers,
    _field_lines,
    _head_facts,
    _normalize,
    _split_lines,
)
from layers._http_model import remember
from stack.errors import MessageTooLarge, ProtocolError, StackError

__all__ = ["CLIENT_ENGINES", "ClientEngine", "FastClientEngine", "ReferenceClientEngine", "ResponseHead"]


class ResponseHead:
    """A response head: ``status`` (int), ``reason`` and ``http_version`` (bytes, e.g. ``b"1.1"``),
    ``fields``: ``(lower-cased name, value)`` byte pairs in order (Content-Length normalized,
    Transfer-Encoding lower-cased, as h11 hands them over)."""

    __slots__ = ("fields", "http_version", "reason", "status")

    def __init__(self, status: int, reason: bytes, http_version: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.fields = fields

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} HTTP/{self.http_version.decode()}>"


class ClientEngine(Protocol):
    """What a client connection writes and parses with (see the module docstring). One object
    per connection, made by ``engine_class(max_header_bytes)``."""

    name: str

    def build_request(self, method: str, target: str, fields: list[tuple[bytes, bytes]]) -> Any: ...

    def request_method(self, built: Any) -> bytes: ...

    def send_request(self, built: Any) -> bytes: ...

    def send_data(self, data: bytes) -> bytes: ...

    def send_end(self) -> bytes: ...

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> ResponseHead | bytes | list[tuple[bytes, bytes]] | object | None: ...

    @property
    def sending_body(self) -> bool: ...

    @property
    def switched(self) -> bool: ...

    @property
    def peer_closing(self) -> bool: ...

    @property
    def cycle_done(self) -> bool: ...

    @property
    def idle(self) -> bool: ...

    @property
    def trailing(self) -> bytes: ...

    @property
    def buffered(self) -> bool: ...

    def start_next_cycle(self) -> None: ...


def _too_large_incomplete(limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"response head over max_header_bytes={limit}", limit=limit)


def _too_large(size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"response head of {size} bytes is over max_header_bytes={limit}", limit=limit, size=size)


# --------------------------------------------------------------------------------------------------
# The reference: h11


class ReferenceClientEngine:
    """The reference :class:`ClientEngine`: h11 writes and parses, as the client always did."""

    name = "reference"

    def __init__(self, max_header_bytes: int) -> None:
        self._limit = max_header_bytes
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self._fed = 0  # bytes fed since the last head was parsed (for its size)
        self._refused: ProtocolError | None = None  # a head we refused (h11 would take it): sticky

    def build_request(self, method: str, target: str, fields: list[tuple[bytes, bytes]]) -> h11.Request:
        try:
            return h11.Request(method=method, target=target, headers=fields)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"HTTP/1.1: {exc}") from None

    def request_method(self, built: h11.Request) -> bytes:
        return built.method

    def _send(self, event: h11.Event) -> bytes:
        try:
            parts = self._h11.send_with_data_passthrough(event)
        except h11.LocalProtocolError as exc:
            raise StackError(f"HTTP/1.1 request: {exc}") from None
        return b"".join(parts) if parts else b""

    def send_request(self, built: h11.Request) -> bytes:
        self._fed = len(self._h11.trailing_data[0])
        return self._send(built)

    def send_data(self, data: bytes) -> bytes:
        return self._send(h11.Data(data=data))

    def send_end(self) -> bytes:
        return self._send(h11.EndOfMessage())

    def receive_data(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._fed += len(data)

    def next_event(self) -> ResponseHead | bytes | list[tuple[bytes, bytes]] | object | None:
        h = self._h11
        if self._refused is not None:
            raise self._refused
        if h.their_state is h11.SEND_RESPONSE:  # a head is due: refuse control bytes in its fields
            data = h.trailing_data[0]
            end = _BLANK_LINE.search(data)
            why = _control_byte(data[: end.end()]) if end is not None else None
            if why is not None:
                self._refused = ProtocolError(f"HTTP/1.1 response: {why}")
                raise self._refused
        try:
            event: Any = h.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _too_large_incomplete(self._limit) from None
            raise ProtocolError(f"HTTP/1.1 response: {exc}") from None
        kind = type(event)
        if kind is h11.Data:
            return bytes(event.data)
        if kind is h11.EndOfMessage:
            trailers = list(event.headers)
            if trailers:
                why = _control_in_trailers(trailers)
                if why is not None:
                    self._refused = ProtocolError(f"HTTP/1.1 response: {why}")
                    raise self._refused
            return trailers
        if event is h11.NEED_DATA:
            return None
        if kind is h11.Response or kind is h11.InformationalResponse:
            size = self._fed - len(h.trailing_data[0])
            self._fed -= size
            if size > self._limit:
                raise _too_large(size, self._limit)
            return ResponseHead(event.status_code, event.reason, event.http_version, list(event.headers))
        unexpected: object = event  # PAUSED, ConnectionClosed: the client says what it did not expect
        return unexpected

    @property
    def sending_body(self) -> bool:
        return self._h11.our_state is h11.SEND_BODY

    @property
    def switched(self) -> bool:
        return self._h11.our_state is h11.SWITCHED_PROTOCOL

    @property
    def peer_closing(self) -> bool:
        # (not after refused trailers either: as for cycle_done, that response never ended)
        state = self._h11.their_state
        return (state is h11.MUST_CLOSE or state is h11.CLOSED) and self._refused is None

    @property
    def cycle_done(self) -> bool:
        h = self._h11
        # (not after refused trailers: h11 had ended the response before we saw them)
        return h.our_state is h11.DONE and h.their_state is h11.DONE and self._refused is None

    @property
    def idle(self) -> bool:
        return self._h11.our_state is h11.IDLE

    @property
    def trailing(self) -> bytes:
        return self._h11.trailing_data[0]

    @property
    def buffered(self) -> bool:
        return bool(self._h11.trailing_data[0])

    def start_next_cycle(self) -> None:
        self._h11.start_next_cycle()


# --------------------------------------------------------------------------------------------------
# The fast engine: h11's grammar and decisions, without h11's machinery (the grammar and the field
# helpers: _h1client_grammar.py)

# framing of the response body being read
_NONE, _LENGTH, _CHUNKED, _UNTIL_EOF = range(4)
# where the reader is
_HEAD, _BODY, _DONE, _SWITCHED = range(4)
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _CHUNK_TRAILER = range(4)


class FastClientEngine:
    """The fast :class:`ClientEngine` (see the module docstring)."""

    name = "fast"

    __slots__ = (
        "_buf",
        "_cache",
        "_chunk_state",
        "_eof",
        "_framing",
        "_keep_alive",
        "_left",
        "_limit",
        "_method",
        "_our",
        "_proposals",
        "_received",
        "_their",
        "_w_chunked",
        "_w_left",
    )

    def __init__(self, max_header_bytes: int) -> None:
        self._limit = max_header_bytes
        self._buf = bytearray()
        self._eof = False
        self._cache: dict[tuple[str, str, tuple[tuple[bytes, bytes], ...]], tuple[bytes, bytes, int, bool, int]] = {}
        self._method = b""
        self._our = 0  # 0 idle, 1 sending the body, 2 request ended, 3 switched
        self._their = _HEAD
        self._proposals = 0  # 1: Upgrade, 2: CONNECT
        self._keep_alive = True
        self._framing = _NONE
        self._left = 0  # body bytes due under a Content-Length; bytes of the chunk being read
        self._chunk_state = _CHUNK_SIZE
        self._received = 0  # bytes of a Content-Length body read so far
        self._w_chunked = False
        self._w_left = 0

    # ---- writing -----------------------------------------------------------------------------

    def build_request(
        self, method: str, target: str, fields: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, bytes, int, bool, int]:
        """(head bytes, method, body length or -1 for chunked, keep-alive, switch proposals),
        checked as h11 checks a Request; cached per shape."""
        key = (method, target, tuple(fields))
        cache = self._cache
        built = cache.get(key)
        if built is not None:
            return built
        m = method.encode("ascii")
        t = target.encode("ascii")
        try:
            for name, value in fields:
                if _NAME.fullmatch(name) is None:
                    raise ValueError(f"Illegal header name {name!r}")
                if _VALUE.fullmatch(value) is None:
                    raise ValueError(f"Illegal header value {value!r}")
            # names as given go on the wire; h11's checks look at them lower-cased
            lowered = [(name.lower(), value) for name, value in fields]
            normal = _normalize(lowered)
            hosts = sum(1 for name, _ in normal if name == b"host")
            if hosts == 0:
                raise ValueError("Missing mandatory Host: header")
            if hosts > 1:
                raise ValueError("Found multiple Host: headers")
            if _NAME.fullmatch(m) is None:
                raise ValueError("Illegal method characters")
            if _TARGET.fullmatch(t) is None:
                raise ValueError("Illegal target characters")
        except ValueError as exc:
            raise ValueError(f"HTTP/1.1: {exc}") from None
        lines = [b"%s %s HTTP/1.1\r\n" % (m, t)]
        for (raw, _), (name, value) in zip(fields, normal, strict=True):
            if name == b"host":
                lines.append(b"%s: %s\r\n" % (raw, value))
        for (raw, _), (name, value) in zip(fields, normal, strict=True):
            if name != b"host":
                lines.append(b"%s: %s\r\n" % (raw, value))
        lines.append(b"\r\n")
        if _comma_values(normal, b"transfer-encoding"):
            length = -1
        else:
            lengths = _comma_values(normal, b"content-length")
            length = int(lengths[0]) if lengths else 0
        keep_alive = b"close" not in _comma_values(normal, b"connection")
        proposals = (1 if _comma_values(normal, b"upgrade") else 0) | (2 if m == b"CONNECT" else 0)
        return remember(cache, key, (b"".join(lines), m, length, keep_alive, proposals), _CACHE_SIZE)

    def request_method(self, built: tuple[bytes, bytes, int, bool, int]) -> bytes:
        return built[1]

    def send_request(self, built: tuple[bytes, bytes, int, bool, int]) -> bytes:
        if self._our != 0:
            raise StackError(f"HTTP/1.1 request: can't send a request in state {self._our}")
        head, self._method, length, keep_alive, self._proposals = built
        self._keep_alive = keep_alive
        self._their = _HEAD
        self._w_chunked = length < 0
        self._w_left = length
        self._our = 1
        return head

    def send_data(self, data: bytes) -> bytes:
        if self._our != 1:
            raise StackError("HTTP/1.1 request: can't send data now")
        if self._w_chunked:
            if not data:
                return b""
            return b"%x\r\n%s\r\n" % (len(data), data)
        self._w_left -= len(data)
        if self._w_left < 0:
            self._our = -1
            raise StackError("HTTP/1.1 request: Too much data for declared Content-Length")
        return bytes(data)

    def send_end(self) -> bytes:
        if self._our != 1:
            raise StackError("HTTP/1.1 request: can't end the request now")
        if self._w_chunked:
            out = b"0\r\n\r\n"
        elif self._w_left:
            self._our = -1
            raise StackError("HTTP/1.1 request: Too little data for declared Content-Length")
        else:
            out = b""
        self._our = 3 if self._their == _SWITCHED else 2
        return out

    # ---- reading -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if data:
            if self._eof:
                raise RuntimeError("received close, then received more data?")
            self._buf += data
        else:
            self._eof = True

    def _fail(self, why: str) -> ProtocolError:
        self._their = -1
        return ProtocolError(f"HTTP/1.1 response: {why}")

    def _need(self) -> None:
        """No event in what is buffered: h11's checks then (too long, closed)."""
        if len(self._buf) > self._limit:
            self._their = -1
            raise _too_large_incomplete(self._limit)
        if self._eof:
            raise self._fail("peer unexpectedly closed connection")

    def next_event(self) -> ResponseHead | bytes | list[tuple[bytes, bytes]] | object | None:
        their = self._their
        if their == _BODY:
            framing = self._framing
            if framing == _LENGTH:
                return self._length_body()
            if framing == _CHUNKED:
                return self._chunked_body()
            if framing == _UNTIL_EOF:
                buf = self._buf
                if buf:
                    data = bytes(buf)
                    buf.clear()
                    return data
                if self._eof:
                    return self._end([])
                return None
            return self._end([])
        if their == _HEAD:
            return self._head()
        if their == -1:
            raise ProtocolError("HTTP/1.1 response: Can't receive data when peer state is ERROR")
        return h11.PAUSED

    def _head(self) -> ResponseHead | None:
        buf = self._buf
        if not buf:  # nothing yet (the usual first look): the checks below, short
            if self._eof:
                raise self._fail("can't handle event type ConnectionClosed when role=SERVER and state=SEND_RESPONSE")
            return None
        if buf[:1] == b"\n" or buf[:2] == b"\r\n":
            raise self._fail("no response line received")
        m = _BLANK_LINE.search(buf)
        if m is None:
            if buf and buf[0] < 0x21:
                raise self._fail("illegal request line")
            if not buf and self._eof:
                raise self._fail("can't handle event type ConnectionClosed when role=SERVER and state=SEND_RESPONSE")
            self._need()
            return None
        end = m.end()
        block = bytes(buf[:end])
        del buf[:end]
        known = _HEADS.get(block)
        if known is not None:  # this very head was parsed before: only the state changes again
            status, reason, version, cached, facts = known
            head = ResponseHead(status, reason, version, list(cached))
            self._take_head(status, facts)
            if end > self._limit:
                raise _too_large(end, self._limit)
            return head
        why = _control_byte(block)
        if why is not None:
            raise self._fail(why)
        lines = _split_lines(block)
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise self._fail(f"illegal status line: {bytearray(lines[0])!r}")
        try:
            fields = _field_lines(lines[1:]) if len(lines) > 1 else []
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        version, code, reason = status_line.groups()
        status = int(code)
        if status < 100:
            raise self._fail(f"InformationalResponse status_code should be in range [100, 200), not {status}")
        head = ResponseHead(status, reason or b"", version, fields)
        facts = _head_facts(fields, version)
        if end <= _HEADS_BLOCK:
            remember(_HEADS, block, (status, head.reason, version, tuple(fields), facts), _HEADS_SIZE)
        self._take_head(status, facts)
        if end > self._limit:  # checked once the head counted, as the reference does
            raise _too_large(end, self._limit)
        return head

    def _take_head(self, status: int, facts: tuple[bool, bool, int]) -> None:
        """The state and the body's framing after a head of ``status`` with :func:`_head_facts`'s ``facts``."""
        if status < 200:
            if status == 101:
                if not self._proposals & 1:
                    raise self._fail("Received server _SWITCH_UPGRADE event without a pending proposal")
                self._switch()
            return
        if self._proposals & 2 and status < 300 and self._method == b"CONNECT":
            self._switch()
            return
        self._proposals = 0
        closing, chunked, length = facts
        if closing:
            self._keep_alive = False
        self._their = _BODY
        if status == 204 or status == 304 or self._method == b"HEAD" or (self._method == b"CONNECT" and status < 300):
            self._framing = _LENGTH
            self._left = self._received = 0
        elif chunked:
            self._framing = _CHUNKED
            self._chunk_state = _CHUNK_SIZE
            self._left = 0
        elif length >= 0:
            self._framing = _LENGTH
            self._left = length
            self._received = 0
        else:
            self._framing = _UNTIL_EOF

    def _switch(self) -> None:
        self._their = _SWITCHED
        if self._our == 2:
            self._our = 3

    def _end(self, trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        self._their = _DONE
        return trailers

    def _length_body(self) -> bytes | list[tuple[bytes, bytes]] | None:
        left = self._left
        if not left:
            return self._end([])
        buf = self._buf
        if not buf:
            if self._eof:
                raise self._fail(
                    "peer closed connection without sending complete message body "
                    f"(received {self._received} bytes, expected {self._received + left})"
                )
            return None
        if len(buf) <= left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self._left = left - len(data)
        self._received += len(data)
        return data

    def take_whole(self) -> bytes | None:
        """A body framed by its length, when every byte of it is buffered: those bytes, and the
        response ended, as ``next_event`` returning them and then its end (``[]``) leaves it;
        else None, nothing changed (the usual small response, in one call instead of three;
        the reference engine has no such method)."""
        if self._their != _BODY or self._framing != _LENGTH:
            return None
        left = self._left
        buf = self._buf
        n = len(buf)
        if n < left:
            return None
        if n == left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self._left = 0
        self._received += left
        self._their = _DONE
        return data

    def _chunked_body(self) -> bytes | list[tuple[bytes, bytes]] | None:
        buf = self._buf
        while True:
            state = self._chunk_state
            if state == _CHUNK_DATA:
                if not buf:
                    self._chunk_need()
                    return None
                left = self._left
                if len(buf) <= left:
                    data = bytes(buf)
                    buf.clear()
                else:
                    data = bytes(buf[:left])
                    del buf[:left]
                self._left = left - len(data)
                if not self._left:
                    self._chunk_state = _CHUNK_CRLF
                    self._left = 2
                return data
            if state == _CHUNK_CRLF:
                if not buf:
                    self._chunk_need()
                    return None
                due = b"\r\n"[2 - self._left :]
                got = bytes(buf[: len(due)])
                if got != due[: len(got)]:
                    raise self._fail(f"malformed chunk footer: {bytearray(got)!r} (expected {due!r})")
                del buf[: len(got)]
                self._left -= len(got)
                if self._left:
                    self._chunk_need()
                    return None
                self._chunk_state = _CHUNK_SIZE
                continue
            if state == _CHUNK_SIZE:
                j = buf.find(b"\r\n")
                if j < 0:
                    self._chunk_need()
                    return None
                line = bytes(buf[: j + 2])
                del buf[: j + 2]
                m = _CHUNK_HEADER.fullmatch(line)
                if m is None:
                    raise self._fail(f"illegal chunk header: {bytearray(line)!r}")
                self._left = int(m.group(1), 16)
                self._chunk_state = _CHUNK_DATA if self._left else _CHUNK_TRAILER
                continue
            # the trailer section (h11's maybe_extract_lines)
            if buf[:1] == b"\n":
                del buf[:1]
                return self._end([])
            if buf[:2] == b"\r\n":
                del buf[:2]
                return self._end([])
            m2 = _BLANK_LINE.search(buf)
            if m2 is None:
                self._chunk_need()
                return None
            block = bytes(buf[: m2.end()])
            del buf[: m2.end()]
            try:
                trailers = _field_lines(_split_lines(block))
            except ValueError as exc:
                raise self._fail(str(exc)) from None
            why = _control_in_trailers(trailers)
            if why is not None:
                raise self._fail(why)
            return self._end(trailers)

    def _chunk_need(self) -> None:
        if not self._buf and self._eof:
            raise self._fail("peer closed connection without sending complete message body (incomplete chunked read)")
        self._need()

    # ---- state -------------------------------------------------------------------------------

    @property
    def sending_body(self) -> bool:
        return self._our == 1

    @property
    def switched(self) -> bool:
        return self._our == 3

    @property
    def peer_closing(self) -> bool:
        return not self._keep_alive and self._their == _DONE

    @property
    def cycle_done(self) -> bool:
        return self._our == 2 and self._their == _DONE and self._keep_alive

    @property
    def idle(self) -> bool:
        return self._our == 0

    @property
    def trailing(self) -> bytes:
        return bytes(self._buf)

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    def start_next_cycle(self) -> None:
        if not self.cycle_done:
            raise StackError("HTTP/1.1: not in a reusable state")
        self._our = 0
        self._their = _HEAD
        self._framing = _NONE


CLIENT_ENGINES: dict[str, type[ReferenceClientEngine] | type[FastClientEngine]] = {
    "reference": ReferenceClientEngine,
    "fast": FastClientEngine,
    "auto": FastClientEngine,
}
"""The client's engines by name (``client(engine=...)``); ``"auto"`` is the fast one (it needs no
compiled library: nothing can be missing)."""
