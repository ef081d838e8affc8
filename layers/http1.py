"""HTTP/1.1 on h11: server and client connections whose bodies are ByteStreams.

::

    conn = await http1.server(app).attach(stream)        # a ServerConnection
    await conn.serve(app)                                # or: async for request in conn: ...

    conn = await http1.client(authority="example.org").attach(stream)
    response = await conn.request("GET", "/")            # a Response; response.body is a ByteStream
    body = await response.read()

Most code uses the version-agnostic :mod:`layers.http` specs, which pick this module for HTTP/1.x.

h11 is the state machine: it parses every request and response, head and body, and keeps the state
of the peer's side; the client writes its requests through h11 too. The server writes its responses
itself, by the same rules, because h11's writer was the most expensive step of a request (see
:class:`ServerConnection`). The I/O lives in a few small methods (the wait in ``recv``,
``_receive_body``, ``_receive``, ``_flush``). On top of h11 this module adds what a server facing
the Internet needs and h11 leaves out:

* **Limits** (:class:`layers.http.Limits`). A request head over ``max_header_bytes`` gets 431. A
  request head must be complete ``header_timeout`` seconds after its first byte arrived (for the first
  request: after the connection was attached), else 408 and the connection closes (slowloris). An idle
  keep-alive connection is closed after ``keepalive_timeout`` seconds. ``request.read()`` stops at
  ``max_body`` (:class:`~stack.MessageTooLarge`; an app that lets it escape gets 413).
* **Request smuggling shapes are refused** with 400 and the connection closed, where h11 is lenient:
  Content-Length together with Transfer-Encoding, more than one Content-Length (h11 merges equal
  ones) or a list value (``5, 5``), obs-fold (h11 unfolds it), bare LF line endings (h11 accepts
  them), Transfer-Encoding in an HTTP/1.0 request, a major version other than 1 (505), and chunk-size
  lines that are not strict ``1*16HEXDIG [chunk-ext] CRLF`` (h11 takes 20 digits and trailing
  whitespace; it also takes bare LF in trailers). What h11 already refuses (bad Content-Length, an
  unknown transfer coding: 501, a missing Host, malformed lines) is refused the same way.
* **An app that raises** gets a 500 and a log line (``stack.http1`` logger). The connection goes on
  when that is safe (the response had not started and the request body was read, or a small rest of
  it could be drained); otherwise it closes.
* **Expect: 100-continue**: the ``100 Continue`` goes out when the app first reads the body; an app
  that answers without reading never gets the body sent (the connection then closes).
* **Pipelining**: requests are answered one at a time, in order; bytes read ahead wait in this
  layer's buffer for the next request.
* **A full-duplex client**: a large or streamed request body goes out from a task while the
  response is read, so an early answer (413, 401, a streaming echo's 200) is returned at once; see
  :class:`ClientConnection` for who owns that task and when the connection is kept.
* **Upgrade and CONNECT**: ``request.start_response(101, ...)`` (or a 2xx to CONNECT) returns the
  raw connection as a ByteStream: every byte h11 had read ahead is pushed back into the stream below
  (``lower.unread``) first, so TLS, WebSocket or anything else attaches on top with nothing lost.
  ``detach()`` on that stream returns the stream below. The client does the same: the response body
  of a 101, or of a 2xx to CONNECT, is the tunnel.

Bodies are :class:`~stack.ByteStream`\\ s with the usual guarantees: a ``recv`` that times out or is
cancelled consumes nothing (h11 and this layer keep every byte that arrived); ``b""`` marks the end
of the body. A response body's ``send`` commits at most 64 KiB per step (one chunk), so a timed-out
send's ``Timeout.sent`` is exact. h11 exceptions never escape: bad input from the peer is a
:class:`~stack.ProtocolError` (client) or a 4xx (server); bad input from the caller (an invalid
header, a body longer than its Content-Length) is a :class:`ValueError` or :class:`~stack.StackError`.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

import h11
import trio

from layers import _http_model as http
from layers._http_model import DEFAULT_LIMITS, App, Body, HeaderInput, Headers, Limits, Response, date_header
from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.streams import ByteStream, Info

__all__ = ["ClientConnection", "Request", "ServerConnection", "client", "server"]

log = logging.getLogger("stack.http1")

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

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_BLANK_LINE = re.compile(rb"\n\r?\n")
_CL_LINE = re.compile(rb"\ncontent-length:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?\r\n")
_BODYLESS_STATUS = frozenset({204, 304})


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _raw_response(status: int, detail: str) -> bytes:
    """A complete ``Connection: close`` response with a short text body, built without h11 (whose
    state may be ERROR when we refuse a request)."""
    body = f"{status} {_reason(status).decode()}: {detail}\n".encode("latin-1", "replace")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\ndate: %s\r\n\r\n%s" % (status, _reason(status), len(body), date_header(), body)
    )


def _local_error(exc: h11.LocalProtocolError) -> ValueError:
    return ValueError(f"HTTP/1.1: {exc}")


class _Refused(StackError):
    """Internal: a request the server refuses with ``status`` and closes."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Strict chunked framing: h11 parses chunked bodies; this checks, ahead of it, the rules it relaxes.


class _ChunkedCheck:
    """Validates chunked framing (RFC 9112 section 7.1) over the bytes about to be given to h11.

    Chunk-size lines must be ``1*16HEXDIG [";" chunk-ext] CRLF`` (h11 refuses whitespace before
    the ";" too); chunk data must be followed by CRLF; trailer lines must end in CRLF, with no
    obs-fold, and fit in ``limit`` bytes in all. Stops checking at the end of the body (what
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


# --------------------------------------------------------------------------------------------------
# What server and client connections share: h11, the lower stream, the outgoing buffer.


class _H11Conn:
    """An h11 connection over a lower ByteStream, with one outgoing buffer of committed bytes.

    Every byte of output (h11's, or the server's response writer's) is appended to ``_out`` at
    once (committed) and pushed down by
    :meth:`_flush`, which consumes the buffer exactly as the stream below commits it: a flush that
    times out or is cancelled leaves the rest for the next one. Two tasks may flush (the server's
    ``100 Continue`` from a body reader while another task starts the response): the second waits
    for the first, whose ``send_from`` takes the bytes it appended too.
    """

    _role: Any = h11.SERVER

    def __init__(self, lower: ByteStream, limits: Limits) -> None:
        self._lower = lower
        self._limits = limits
        self._h11 = h11.Connection(self._role, max_incomplete_event_size=limits.max_header_bytes)
        self._out = bytearray()
        self._flushing = False
        self._flush_lot: trio.lowlevel.ParkingLot | None = None
        self.info = Info({"http_version": "1.1"}, lower.info)

    async def _flush(self, deadline: float) -> None:
        out = self._out
        while out:
            if self._flushing:
                if self._flush_lot is None:
                    self._flush_lot = trio.lowlevel.ParkingLot()
                with trio.move_on_at(deadline) as scope:
                    await self._flush_lot.park()
                if scope.cancelled_caught:
                    raise Timeout("HTTP/1.1: waiting to send timed out")
                continue
            self._flushing = True
            try:
                await self._lower.send_from(out, deadline=deadline)
            finally:
                self._flushing = False
                if self._flush_lot is not None:
                    self._flush_lot.unpark_all()

    def _feed(self, data: bytes) -> None:
        """Give received bytes (``b""``: the end of the stream) to h11."""
        self._h11.receive_data(data)

    async def _receive(self, deadline: float) -> bytes:
        """Receive once from below and give it to h11; return what arrived (``b""`` at EOF)."""
        data = await self._lower.recv(RECV, deadline=deadline)
        self._feed(data)
        return data


# --------------------------------------------------------------------------------------------------
# Server


class _Drainer:
    """One per shutdown event: once it is set, wakes every connection idling between requests.

    It runs as a trio *system* task (started the first time a connection with that event serves),
    so no connection needs a task of its own to notice a shutdown.
    """

    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle: set[trio.CancelScope] = set()

    async def run(self, event: trio.Event) -> None:
        await event.wait()
        for scope in list(self.idle):
            scope.cancel()


_drainers: weakref.WeakKeyDictionary[trio.Event, _Drainer] = weakref.WeakKeyDictionary()


def _drainer(event: trio.Event) -> _Drainer:
    d = _drainers.get(event)
    if d is None:
        d = _drainers[event] = _Drainer()
        trio.lowlevel.spawn_system_task(d.run, event, name="stack.http1 shutdown watcher")
    return d


_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _field_lines(fields: list[tuple[bytes, bytes]], out: list[bytes]) -> None:
    """Append ``name: value`` lines for trailer fields, refusing what would break the framing."""
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}: {value[:40]!r}")
        out.append(b"%s: %s\r\n" % (name, value))


# What _parse_head returns: the request event, its fields, keep-alive, chunked, bodyless.
_Head = tuple[h11.Request, Headers, bool, bool, bool]

# Response states (Request._state)
_NOT_STARTED, _STREAMING, _COMPLETE, _SWITCHED = range(4)


class Request(http.Request):
    """A request on an HTTP/1.1 server connection (see :class:`layers.http.Request`).

    ``trailers`` holds the request's trailer fields once its body has ended.
    """

    def __init__(
        self, conn: ServerConnection, event: h11.Request, headers: Headers, body: _RequestBody, keep_alive: bool
    ) -> None:
        super().__init__(
            event.method.decode("ascii"),
            event.target.decode("ascii"),
            headers,
            "1.1" if event.http_version == b"1.1" else "1.0",
            body,
            conn.info,
            scheme=conn._scheme,
            limits=conn._limits,
        )
        self._conn = conn
        self._body = body
        self._keep_alive = keep_alive
        self._response: _ResponseStream | None = None
        # the response writer's state for this request
        self._state = _NOT_STARTED
        self._left: int | None = None  # body bytes still due under a Content-Length
        self._chunked = False
        self._discard = False  # HEAD, 204, 304: body bytes are not sent

    async def _respond(self, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        await self._conn._respond(self, status, headers, body, deadline)

    async def _start_response(self, status: int, headers: Headers, deadline: float) -> ByteStream:
        return await self._conn._start_response(self, status, headers, deadline)


class _RequestBody(ByteStream):
    """The body of a request, as the server app reads it. ``b""`` at its end.

    The first receive that has to wait for the network sends ``100 Continue`` if the client asked
    for it. A malformed body raises :class:`~stack.ProtocolError` (the connection then closes). On
    deadline or cancellation nothing is consumed. ``aclose()`` only stops this stream (the server
    drains or closes when the request is over); ``detach()`` is not possible.
    """

    kind = "http1-request-body"

    def __init__(self, conn: ServerConnection, complete: bool) -> None:
        super().__init__(conn._lower, _BODY_INFO)
        self._conn = conn
        self._pending = b""
        self._complete = complete
        self._request: Request | None = None

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        if not self._pending:
            if self._complete:
                return b""
            self._pending = await self._conn._body_data(self, deadline)
        out = self._pending
        if len(out) > max_bytes:
            self._pending = out[max_bytes:]
            return out[:max_bytes]
        self._pending = b""
        return out

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        raise Closed("a request body cannot be sent on; use the response stream")

    async def _done(self, deadline: float) -> None:
        pass

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Stop using this body (the rest is drained or the connection closed after the response)."""
        self._closed = self._closed or "closed"
        await trio.lowlevel.checkpoint()

    async def _detach(self, deadline: float) -> ByteStream:
        raise StackError("an HTTP/1.1 request body cannot be detached")


_BODY_INFO = {"http_version": "1.1"}


class _ResponseStream(ByteStream):
    """The body of a streamed response (:meth:`Request.start_response`).

    ``send`` writes body bytes: chunked, unless the response has a Content-Length (then more bytes
    than announced raise :class:`~stack.StackError` and the connection closes) or the client
    speaks HTTP/1.0 (then the body ends when the connection closes). Each send step commits at
    most :data:`SEND_CHUNK` bytes. For HEAD, 204 and 304 the bytes are discarded.
    ``done(trailers=...)`` ends the response (trailers only in chunked encoding; fewer bytes than
    a Content-Length announced raise :class:`~stack.StackError` and close the connection).
    ``recv`` reads what is left of the request body. ``aclose()`` before ``done()`` abandons the
    response: the connection closes once the app returns. If the app returns without either, the
    server calls ``done()`` for it.
    """

    kind = "http1-response-body"

    def __init__(self, conn: ServerConnection, request: Request) -> None:
        super().__init__(conn._lower, _BODY_INFO)
        self._conn = conn
        self._request = request
        self._trailers: Headers | None = None
        self._outbuf = conn._out  # one buffer for the connection: bytes stay in order

    async def _flush(self, deadline: float) -> None:
        await self._conn._flush(deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        n = min(len(data), SEND_CHUNK)
        self._conn._write_body(self._request, data[:n] if n < len(data) else data)
        return n

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        return await self._request.body.recv(max_bytes, deadline=deadline)

    async def done(self, *, trailers: HeaderInput | None = None, deadline: float = FOREVER) -> None:
        """End the response, with ``trailers`` (chunked encoding only). See :meth:`ByteStream.done`."""
        if trailers is not None:
            self._trailers = Headers(trailers)
        await super().done(deadline=deadline)

    async def _done(self, deadline: float) -> None:
        if self._request._state == _STREAMING:
            self._conn._end_body(self._request, self._trailers)
        await self._conn._flush(deadline)

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Abandon the response if it was not ended (the connection closes); never raises."""
        if self._closed is None:
            self._closed = "closed"
            if not self._send_closed:
                self._conn._close_after("the app abandoned a streamed response", linger=False)
        await trio.lowlevel.checkpoint()

    async def _detach(self, deadline: float) -> ByteStream:
        raise StackError("an HTTP/1.1 response body cannot be detached (only an Upgrade/CONNECT tunnel can)")


class _Tunnel(ByteStream):
    """The raw connection after a protocol switch (101 Switching Protocols, or a 2xx to CONNECT).

    Bytes go straight to and from the stream below (h11's read-ahead was pushed back into it
    first). ``done()`` is the lower stream's ``done()`` (a TCP FIN), ``aclose()`` closes it, and
    ``detach()`` returns it. Sends commit at most :data:`SEND_CHUNK` bytes per step.
    """

    kind = "http1-tunnel"

    def __init__(self, lower: ByteStream) -> None:
        super().__init__(lower, _BODY_INFO)
        self._raw = lower

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        return await self._raw.recv(max_bytes, deadline=deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        n = min(len(data), SEND_CHUNK)
        self._outbuf += data[:n]
        return n

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Return the stream below; bytes received here and not read yet go back into it."""
        if self._unread and self._closed is None and self._broken is None:
            self._raw.unread(self._unread)  # the same bytes at both levels: nothing to undo
            self._unread.clear()
        return await super().detach(deadline=deadline)

    async def _detach(self, deadline: float) -> ByteStream:
        return self._raw


class ServerConnection(_H11Conn, http.ServerConnection):
    """The server side of one HTTP/1.1 connection: a stream of :class:`Request`\\ s.

    ``await conn.recv(deadline=)`` returns the next request once its head has arrived. Respond to
    each request (and finish a streamed response) before receiving the next; an unread rest of the
    previous request body is drained (up to :data:`MAX_DRAIN` bytes) or the connection closes.
    ``recv`` raises :class:`~stack.EndOfStream` when the connection ends cleanly (the client closed
    it, it idled past ``keepalive_timeout``, the last response said ``Connection: close``, or the
    shutdown event was set), :class:`~stack.ProtocolError` after the server refused a request
    (400, 408, 413, 431, 501, 505: already sent, and the connection closed), and
    :class:`~stack.Timeout` when the caller's own ``deadline`` passes (nothing is consumed; the
    connection stays usable). ``serve(app)`` runs the app on every request, one at a time.

    h11 parses every request and keeps the state of the client's side; responses are written by
    this class (h11's writer validates each header twice and runs its state machine three times
    per response, which made it the most expensive step of a request): status line and fields
    checked (a field name must be a token, a value must hold no control character but tab),
    ``Content-Length`` set for a whole body, chunked encoding for a streamed one (close-delimited
    for an HTTP/1.0 client), no body for HEAD, 204 and 304, ``Connection: close`` whenever the
    connection will close after the response.

    ``detach()`` returns the stream below when no request is in progress (every byte read ahead is
    pushed back into it) or after a protocol switch.
    """

    http_version = "1.1"

    def __init__(self, lower: ByteStream, limits: Limits, shutdown: trio.Event | None) -> None:
        super().__init__(lower, limits)
        self._shutdown = shutdown
        self._idle_scopes: set[trio.CancelScope] | None = None  # the shutdown drainer's, once known
        self._scheme = "https" if "tls_version" in self.info else "http"
        self._inbuf = bytearray()  # read ahead, not yet given to h11
        self._scan = 0  # how far _inbuf was searched for the end of a head
        self._head_started: float | None = None  # when the first byte of the awaited head came
        self._current: Request | None = None
        self._requests = 0
        self._attached_at = trio.current_time()
        self._idle_since = self._attached_at
        self._expect_100 = False
        self._sent_100 = False
        self._chunked_check: _ChunkedCheck | None = None
        self._closing: str | None = None  # why the connection closes after this request
        self._linger = False  # read what the client still sends before closing
        self._ended: StackError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<http1.ServerConnection {self.info.get('peer')} requests={self._requests}>"

    # ---- receiving requests ------------------------------------------------------------------

    async def recv(self, *, deadline: float = FOREVER) -> Request:
        """The next request, once its head has arrived (see the class docstring for the ends).

        Waiting is bounded by the limits as well as ``deadline``: the first head must be complete
        ``header_timeout`` after attach, a later one ``header_timeout`` after its first byte,
        which must come within ``keepalive_timeout`` of the previous response.
        """
        if self._closed:
            raise Closed("HTTP/1.1 server connection was closed")
        request = await self._next_request(deadline)
        if request is None:
            assert self._ended is not None
            raise type(self._ended)(str(self._ended))
        return request

    async def _next_request(self, deadline: float = FOREVER) -> Request | None:
        """:meth:`recv`, returning None where the connection ended cleanly (``self._ended`` says
        why): the normal end of a connection raises nothing."""
        if self._current is not None:
            await self._end_cycle()
        if self._ended is not None:
            return None
        lower = self._lower
        limits = self._limits
        shutdown = self._shutdown
        try:
            while True:  # one frame for the whole wait: an idle connection holds little
                parsed = self._find_head()
                if parsed is not None:
                    return self._start_request(parsed)
                idle = not self._inbuf
                if idle and shutdown is not None and shutdown.is_set():
                    self._ended = EndOfStream("HTTP/1.1: the server is shutting down")
                    return None
                if lower._unread:  # bytes pushed back below (a sniffed preface): no need to wait
                    self._inbuf += await lower.recv(RECV)
                    continue
                if self._requests == 0:
                    policy = self._attached_at + limits.header_timeout
                elif self._head_started is not None:
                    policy = self._head_started + limits.header_timeout
                else:
                    policy = self._idle_since + limits.keepalive_timeout
                data = None
                with trio.move_on_at(min(policy, deadline)) as scope:
                    if idle and shutdown is not None:
                        waiting = self._idle_scopes
                        if waiting is None:
                            waiting = self._idle_scopes = _drainer(shutdown).idle
                        waiting.add(scope)
                        try:
                            data = await lower.recv(RECV)
                        finally:
                            waiting.discard(scope)
                    else:
                        data = await lower.recv(RECV)
                if data is None:  # cancelled by the scope: the caller's deadline, a limit, or shutdown
                    if idle and shutdown is not None and shutdown.is_set():
                        self._ended = EndOfStream("HTTP/1.1: the server is shutting down")
                        return None
                    if deadline < policy:
                        raise Timeout("HTTP/1.1 recv timed out waiting for a request")
                    if idle:
                        what = "before a first request" if self._requests == 0 else "idle"
                        log.debug("closing the connection from %s: %s for too long", self.info.get("peer"), what)
                        self._ended = EndOfStream(f"HTTP/1.1: connection {what} for too long")
                        return None
                    raise _Refused(408, f"request head not complete within {limits.header_timeout:g}s")
                if not data:
                    if self._inbuf:
                        raise self._end(ProtocolError("the client closed the connection in a request head"))
                    self._ended = EndOfStream("the client closed the connection")
                    return None
                self._inbuf += data
        except _Refused as exc:
            await self._refuse(exc.status, exc.detail)
            raise self._end(ProtocolError(f"request refused with {exc.status}: {exc.detail}")) from None

    def _end(self, exc: StackError) -> StackError:
        self._ended = exc
        return exc

    def _find_head(self) -> _Head | None:
        """Take a whole request head from ``_inbuf`` (bytes after it stay there) and parse it;
        None if it is not all there yet."""
        buf = self._inbuf
        while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request-line
            del buf[:2]
            self._scan = 0
        if not buf:
            return None
        limit = self._limits.max_header_bytes
        m = _BLANK_LINE.search(buf, self._scan)
        if m is not None:
            if m.end() - m.start() == 2:
                raise _Refused(400, "bare LF line ending in the request head")
            end = m.end()
            if end > limit:
                raise _Refused(431, f"request head is over {limit} bytes")
            head = bytes(buf[:end])
            del buf[:end]
            self._scan = 0
            self._head_started = None
            return self._parse_head(head)
        if len(buf) > limit:
            raise _Refused(431, f"request head is over {limit} bytes")
        self._scan = max(0, len(buf) - 2)
        if self._head_started is None:
            self._head_started = trio.current_time()
        return None

    def _parse_head(self, head: bytes) -> _Head:
        """Parse a whole head with h11, refusing the smuggling shapes h11 lets through. Returns
        the request event, its fields, whether the client keeps the connection, whether the body
        is chunked, and whether there is no body at all."""
        if head.count(b"\n") != head.count(b"\r\n"):
            raise _Refused(400, "bare LF line ending in the request head")
        if b"\n " in head or b"\n\t" in head:
            raise _Refused(400, "obs-fold (a header line continued on the next line)")
        h = self._h11
        h.receive_data(head)
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Refused(exc.error_status_hint, str(exc)) from None
        if type(event) is not h11.Request:  # pragma: no cover - a whole head always parses
            raise _Refused(400, "incomplete request head")
        if event.http_version not in (b"1.1", b"1.0"):
            raise _Refused(505, f"HTTP/{event.http_version.decode()} is not supported")
        cl = te = False
        keep_alive = event.http_version == b"1.1"
        # raw_items() is one list: iterating h11's Headers itself indexes it field by field
        fields = [(name.lower(), value) for name, value in event.headers.raw_items()]
        for name, value in fields:
            if name == b"content-length":
                cl = True
            elif name == b"transfer-encoding":
                te = True
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        if cl:
            if te:
                raise _Refused(400, "both Content-Length and Transfer-Encoding")
            values = _CL_LINE.findall(head.lower())  # h11 merged repeated equal values: look at the bytes
            if len(values) != 1:
                raise _Refused(400, "more than one Content-Length")
            if not values[0].isdigit():
                raise _Refused(400, f"bad Content-Length {values[0][:20]!r}")
        if te and event.http_version == b"1.0":
            raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        return event, Headers._wire(fields), keep_alive, te, not cl and not te

    def _start_request(self, parsed: _Head) -> Request:
        event, headers, keep_alive, te, bodyless = parsed
        h = self._h11
        self._expect_100 = h.they_are_waiting_for_100_continue
        self._sent_100 = False
        self._chunked_check = _ChunkedCheck(self._limits.max_header_bytes) if te else None
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), and h11 is not
        # asked for the EndOfMessage it would report (its state then stays SEND_BODY: the end of
        # the request body is ``body._complete``). Otherwise a zero-length body ends here too.
        complete = bodyless or type(h.next_event()) is h11.EndOfMessage
        body = _RequestBody(self, complete)
        request = Request(self, event, headers, body, keep_alive)
        body._request = request
        self._current = request
        self._requests += 1
        return request

    async def _body_data(self, body: _RequestBody, deadline: float) -> bytes:
        """The next bytes of the request body (``b""`` at its end), sending 100 Continue first if
        the client waits for it. h11 keeps what arrived, so cancelling this loses nothing."""
        h = self._h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                self._close_after("malformed request body", linger=False)
                raise ProtocolError(f"HTTP/1.1 request body: {exc}") from None
            if type(event) is h11.Data:
                return bytes(event.data)
            if type(event) is h11.EndOfMessage:
                body._complete = True
                if body._request is not None and event.headers:
                    body._request.trailers = Headers(event.headers.raw_items())
                return b""
            if event is not h11.NEED_DATA:  # pragma: no cover - h11 ends a body with EndOfMessage
                raise ProtocolError(f"HTTP/1.1: unexpected {event!r} in a request body")
            request = self._current
            if (
                self._expect_100
                and not self._sent_100
                and request is not None
                and request._state == _NOT_STARTED
                and h.they_are_waiting_for_100_continue
            ):
                self._out += b"HTTP/1.1 100 Continue\r\n\r\n"
                self._sent_100 = True
                await self._flush(deadline)
            await self._receive_body(deadline)

    async def _receive_body(self, deadline: float) -> None:
        if self._inbuf:
            data = bytes(self._inbuf)
            self._inbuf.clear()
        else:
            data = await self._lower.recv(RECV, deadline=deadline)
        if data and self._chunked_check is not None:
            try:
                self._chunked_check.feed(data)
            except ProtocolError:
                self._close_after("malformed chunked body", linger=False)
                self._feed(b"")
                raise
        self._feed(data)

    # ---- writing responses -----------------------------------------------------------------

    def _head(self, request: Request, status: int, headers: Headers, whole: int | None) -> bytes:
        """Serialize a response head and set the request's framing. ``whole``: the length of the
        body given to ``respond()``; None for a streamed response. Raises ValueError for invalid
        fields or framing headers that contradict the body; then nothing changed."""
        bodyless = request.method == "HEAD" or status in _BODYLESS_STATUS
        length: int | None = None
        chunked = has_date = False
        close = self._closing is not None or not request._keep_alive
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        for name, value in headers.raw:
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
        if not close and not request._body._complete:  # say now if the unread body means closing
            if self._expect_100 and not self._sent_100:
                close = True
                self._close_after("the app answered without reading a 100-continue body")
            else:
                declared = request.headers.get("content-length")
                if declared is not None and int(declared) > MAX_DRAIN:
                    close = True
                    self._close_after("a large request body was not read")
        if whole is not None:
            if length is None:
                if status not in _BODYLESS_STATUS:
                    lines.append(b"content-length: %d\r\n" % whole)
            elif length != whole and not bodyless:
                raise ValueError(f"Content-Length is {length} but the body has {whole} bytes")
            length = whole
        elif length is None and not chunked and not bodyless:
            if request.http_version == "1.1":
                chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # an HTTP/1.0 client: the body ends with the connection
        if not has_date:
            lines.append(b"date: %s\r\n" % date_header())
        shutdown = self._shutdown
        if not close and shutdown is not None and shutdown.is_set():
            close = True
        if close:
            lines.append(b"connection: close\r\n")
            self._close_after(self._closing or "this response closes the connection", linger=False)
        lines.append(b"\r\n")
        request._discard = bodyless
        request._left = None if bodyless or chunked else length
        request._chunked = chunked and not bodyless
        return b"".join(lines)

    def _write_body(self, request: Request, data: bytes | bytearray | memoryview) -> None:
        """Commit body bytes of a streamed response, framed."""
        if request._state != _STREAMING:
            raise StackError("the response is already complete")
        if request._discard or not data:
            return
        out = self._out
        left = request._left
        if left is not None:
            if len(data) > left:
                self._close_after("the response body overran its Content-Length", linger=False)
                raise StackError(f"response body longer than its Content-Length ({len(data)} bytes, {left} due)")
            request._left = left - len(data)
            out += data
        elif request._chunked:
            out += b"%x\r\n" % len(data)
            out += data
            out += b"\r\n"
        else:
            out += data

    def _end_body(self, request: Request, trailers: Headers | None) -> None:
        """Commit the end of a streamed response (the last chunk and trailers)."""
        if request._chunked:
            lines = [b"0\r\n"]
            if trailers:
                _field_lines(trailers.raw, lines)
            lines.append(b"\r\n")
            self._out += b"".join(lines)
        elif trailers and not request._discard:
            raise ValueError("trailers need chunked encoding: this response has a Content-Length")
        request._state = _COMPLETE
        if request._left:
            self._close_after("the response body fell short of its Content-Length", linger=False)
            raise StackError(f"response body shorter than its Content-Length: {request._left} bytes missing")

    async def _respond(self, request: Request, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        if status == 101 or (request.method == "CONNECT" and 200 <= status < 300):
            if body:
                raise ValueError("a protocol switch response has no body")
            await self._switch(request, status, headers, deadline)
            return
        self._check_current(request)
        head = self._head(request, status, headers, len(body))
        out = self._out
        out += head
        if body and not request._discard:
            out += body
        request._state = _COMPLETE
        await self._flush(deadline)

    async def _start_response(self, request: Request, status: int, headers: Headers, deadline: float) -> ByteStream:
        if status == 101 or (request.method == "CONNECT" and 200 <= status < 300):
            return await self._switch(request, status, headers, deadline)
        self._check_current(request)
        self._out += self._head(request, status, headers, None)
        request._state = _STREAMING
        stream = request._response = _ResponseStream(self, request)
        await self._flush(deadline)
        return stream

    async def _switch(self, request: Request, status: int, headers: Headers, deadline: float) -> ByteStream:
        """Answer an Upgrade (101) or CONNECT (2xx) and hand the raw connection over."""
        self._check_current(request)
        proposed = "upgrade" in request.headers if status == 101 else request.method == "CONNECT"
        if not proposed or not request._body._complete:
            what = "an Upgrade" if status == 101 else "a CONNECT"
            raise StackError(f"cannot switch protocols: the request is not {what} request whose body was read")
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        fields = headers.raw if status == 101 else [*headers.raw, (b"date", date_header())]
        _field_lines(fields, lines)
        lines.append(b"\r\n")
        self._out += b"".join(lines)
        request._state = _SWITCHED
        trailing, _ = self._h11.trailing_data
        self._lower.unread(trailing + bytes(self._inbuf))
        self._inbuf.clear()
        await self._flush(deadline)
        return _Tunnel(self._lower)

    async def _h2c(self, app: App, request: Request) -> bool:
        """Serve HTTP/2 on this connection if ``request`` asks for ``Upgrade: h2c`` (RFC 7540 3.2)
        properly; True once that connection is over. False (serve the request over HTTP/1.1, the
        Upgrade ignored) for a malformed ask or a body that is chunked or over
        ``limits.stream_window``: the whole body is read first, as stream 1's."""
        from layers import http2  # only connections that upgrade need h2

        settings = http2.h2c_settings(request.headers)
        length = int(request.headers.get("content-length") or 0)  # checked digits by _parse_head
        if settings is None or "transfer-encoding" in request.headers or length > self._limits.stream_window:
            return False
        deadline = trio.current_time() + self._limits.header_timeout
        try:
            body = await request.read(deadline=deadline)
            request._state = _SWITCHED
            trailing, _ = self._h11.trailing_data
            self._lower.unread(trailing + bytes(self._inbuf))
            self._inbuf.clear()
            self._ended = EndOfStream("HTTP/1.1: the connection switched to HTTP/2 (h2c)")
            limits, shutdown = self._limits, self._shutdown
            await http2.serve_h2c_upgrade(
                self._lower, request, settings, body, app, limits=limits, shutdown=shutdown, deadline=deadline
            )
        except StackError as exc:
            log.debug("h2c upgrade from %s: %s", self.info.get("peer"), exc)
        return True

    def _check_current(self, request: Request) -> None:
        if request is not self._current:
            raise StackError(f"{request!r} is not the request in progress on this connection")
        if request._state != _NOT_STARTED:  # pragma: no cover - Request._claim stops this first
            raise StackError(f"{request!r}: a response was already sent")

    def _close_after(self, why: str, *, linger: bool = True) -> None:
        """Decide that the connection closes once the current request is over."""
        if self._closing is None:
            self._closing = why
        self._linger = self._linger or linger

    # ---- the end of a request --------------------------------------------------------------

    async def _end_cycle(self) -> None:
        """After a response: drain the rest of the request body if small, then get ready for the
        next request, or close the connection. Never raises a StackError (it records why it ended)."""
        request, self._current = self._current, None
        assert request is not None
        h = self._h11
        try:
            if self._out:
                await self._flush(trio.current_time() + self._limits.send_timeout)
            if request._state == _SWITCHED:
                raise EndOfStream("HTTP/1.1: the connection switched protocols")
            if request._state != _COMPLETE:
                self._close_after("the response was not completed", linger=False)
            if self._closing is None and not request._body._complete:
                if self._expect_100 and not self._sent_100:
                    self._close_after("the app answered without reading a 100-continue body")
                else:
                    await self._drain(request)
            if self._closing is not None:
                self._ended = EndOfStream(f"HTTP/1.1: closing the connection: {self._closing}")
                await self._shutdown_connection()
                return
            if not request._body._complete:  # pragma: no cover - a drained body is complete
                raise EndOfStream("HTTP/1.1: the request did not end cleanly")
            trailing, _ = h.trailing_data
            if trailing:  # pipelined bytes h11 read past the body: they are checked as a head again
                self._inbuf[:0] = trailing
            self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes)
            self._idle_since = trio.current_time()
        except StackError as exc:
            self._ended = exc if isinstance(exc, EndOfStream) else EndOfStream(str(exc))
            await self._shutdown_connection()

    async def _drain(self, request: Request) -> None:
        """Read and discard a small unread rest of the request body, or decide to close."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_DRAIN:
            self._close_after("a large request body was not read")
            return
        total = 0
        body = request._body
        try:
            deadline = trio.current_time() + DRAIN_TIME
            while total <= MAX_DRAIN:
                chunk = body._pending or await self._body_data(body, deadline)
                body._pending = b""
                if not chunk:
                    return
                total += len(chunk)
        except (Timeout, ProtocolError, Broken):
            pass
        self._close_after("the request body was not read")

    async def _shutdown_connection(self) -> None:
        """Flush, then close: after an error, half-close first and read what the client still
        sends for up to :data:`LINGER` seconds, so it reads our response rather than a reset."""
        lower = self._lower
        try:
            await self._flush(trio.current_time() + self._limits.send_timeout)
            if self._linger:
                await lower.done(deadline=trio.current_time() + 1.0)
                deadline = trio.current_time() + LINGER
                total = 0
                while total < 16 * MAX_DRAIN:
                    chunk = await lower.recv(RECV, deadline=deadline)
                    if not chunk:
                        break
                    total += len(chunk)
        except StackError:
            pass
        await self.aclose()

    async def _refuse(self, status: int, detail: str) -> None:
        """Send a complete error response (whatever state h11 is in) and close the connection."""
        log.info("refusing a request from %s with %d: %s", self.info.get("peer"), status, detail)
        self._out += _raw_response(status, detail)
        self._linger = True
        await self._shutdown_connection()

    # ---- running an app --------------------------------------------------------------------

    async def serve(self, app: App) -> None:
        """Run ``app`` on every request, one at a time, until the connection ends.

        An app that raises gets a 500 (413 for :class:`~stack.MessageTooLarge`, 400 for a
        malformed request body) if its response had not started, and a log line; the connection
        goes on when the request body was read (or a small rest of it could be drained), and closes
        otherwise. An app that returns without responding gets a 500 too; one that returns
        without ending a streamed response has it ended for it. Returns when the connection ended;
        the connection is closed by then. Cancellation closes the connection.
        """
        try:
            while True:
                try:
                    request = await self._next_request()
                except StackError as exc:
                    log.debug("connection from %s: %s", self.info.get("peer"), exc)
                    return
                if request is None:
                    return
                if self._scheme == "http" and "upgrade" in request.headers and await self._h2c(app, request):
                    return
                await self._run(app, request)
                del request  # an idle connection keeps nothing of the last request
        finally:
            if not self._closed:
                with trio.CancelScope(shield=True):
                    await self.aclose(deadline=trio.current_time() + 1.0)

    async def _run(self, app: App, request: Request) -> None:
        try:
            await app(request)
        except Exception as exc:
            await self._app_failed(request, exc)
        else:
            if request._state == _NOT_STARTED:
                log.error("app returned without responding to %r from %s", request, self.info.get("peer"))
                await self._error_response(request, 500, "the application did not respond")
            elif request._state == _STREAMING:
                stream = request._response
                if stream is not None and stream._closed is None and stream._broken is None:
                    try:
                        await stream.done(deadline=trio.current_time() + self._limits.send_timeout)
                    except (StackError, ValueError) as exc:
                        self._close_after(f"ending the response failed: {exc}", linger=False)
                else:
                    self._close_after("the response was not ended", linger=False)
        await self._end_cycle()

    async def _app_failed(self, request: Request, exc: Exception) -> None:
        peer = self.info.get("peer")
        if isinstance(exc, MessageTooLarge):
            log.info("request %r from %s: %s (413)", request, peer, exc)
            status, detail = 413, "request body too large"
        elif isinstance(exc, ProtocolError) and self._closing is not None:
            log.info("request %r from %s: %s (400)", request, peer, exc)
            status, detail = 400, "malformed request body"
        elif isinstance(exc, StackError) and self._lower._broken is not None:
            log.debug("request %r from %s: the connection failed: %s", request, peer, exc)
            self._close_after("the connection failed", linger=False)
            return
        else:
            log.error("app failed on %r from %s", request, peer, exc_info=exc)
            status, detail = 500, "internal server error"
        if request._state == _NOT_STARTED:
            request.responded, request.status = True, status
            await self._error_response(request, status, detail)
        else:
            self._close_after("the app failed after its response started", linger=False)

    async def _error_response(self, request: Request, status: int, detail: str) -> None:
        """Answer ``status``; the connection goes on only for a 500 to a request whose body was
        read. Bounded by ``limits.send_timeout``."""
        if status != 500 or not request._body._complete:
            self._close_after(detail)
        request.responded, request.status = True, status
        body = f"{status} {_reason(status).decode()}: {detail}\n".encode()
        headers = Headers([(b"content-type", b"text/plain; charset=utf-8")])
        self._out += self._head(request, status, headers, len(body))
        if not request._discard:
            self._out += body
        request._state = _COMPLETE

    # ---- closing, detaching ------------------------------------------------------------------

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Flush what was committed (until ``deadline``, default 2 s) and close the connection
        and the stream below. Idempotent; never raises a StackError."""
        if self._closed:
            return
        self._closed = True
        if self._ended is None:
            self._ended = EndOfStream("HTTP/1.1 server connection closed")
        if deadline is None:
            deadline = trio.current_time() + 2.0
        try:
            if self._out and not self._flushing:
                with trio.move_on_at(deadline):
                    await self._lower.send_from(self._out, deadline=deadline)
        except StackError:
            pass
        finally:
            await self._lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Give the stream below back, read-ahead bytes pushed back into it.

        Possible between requests (nothing in progress) and after a protocol switch; otherwise a
        :class:`~stack.StackError` and nothing changes.
        """
        if self._closed:
            raise Closed("HTTP/1.1 server connection was closed")
        current = self._current
        if current is not None and current._state == _SWITCHED:
            pass
        elif current is None and self._h11.their_state is h11.IDLE and self._ended is None:
            trailing, _ = self._h11.trailing_data
            self._lower.unread(trailing + bytes(self._inbuf))
            self._inbuf.clear()
        else:
            raise StackError("cannot detach HTTP/1.1 in the middle of a request")
        await self._flush(deadline)
        self._closed = True
        self._ended = EndOfStream("HTTP/1.1 server connection was detached")
        return self._lower


@dataclass(frozen=True)
class server:
    """Spec: an HTTP/1.1 server connection running ``app`` (see :class:`ServerConnection`).

    ``limits``: :class:`layers.http.Limits`. ``shutdown``: once set, idle connections close at
    once and a request in flight finishes with ``Connection: close``; pass the same event to
    :meth:`stack.Stack.serve`.
    """

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ServerConnection:
        """Wrap ``lower``. No handshake: returns at once; ``header_timeout`` starts now."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http1.server attaches to a ByteStream, not {type(lower).__name__}")
        return ServerConnection(lower, self.limits, self.shutdown)

    async def handle(self, conn: ServerConnection) -> None:
        """Run the app on every request of ``conn`` (what :meth:`stack.Stack.serve` calls)."""
        await conn.serve(self.app)


# --------------------------------------------------------------------------------------------------
# Client


INLINE_SEND = 65536
"""A request whose head and body come to at most this many bytes is written whole before its
response is read (the socket buffers take it); a larger or streamed body is sent by a task while
the response is read (full duplex, see :class:`ClientConnection`)."""

DUPLEX_BUFFER = 1024 * 1024
"""Most response body bytes a connection used without ``async with conn:`` keeps while it finishes
sending a request body that the server answers (2xx) as it arrives."""

_STOP_WAIT = 1.0
"""Seconds :meth:`_BodySender.stop` waits for the cancelled task to exit (shielded)."""


class _BodySender:
    """Sends one request (the committed head, then the body) in a task of its own, so that the
    response can be read meanwhile. Client-only.

    **Owner**: the exchange (request and response) of one :class:`ClientConnection`. The task runs
    in the connection's nursery (``async with conn:``; it then goes on after ``request()``
    returned, while the response is read) or in a nursery ``request()`` opens for the call (it then
    never outlives the call). Whoever ends the exchange ends the task: :meth:`stop` cancels it and
    waits (shielded, at most :data:`_STOP_WAIT` seconds) until it exited. That happens when an
    early final response (status 300 or more) makes the rest of the body useless, when the
    response ends before the body (unless a 2xx on a kept-alive connection), when the response is
    closed before its end, when ``request()`` fails or is cancelled, and in ``conn.aclose()``.
    If the response ended first on a kept-alive connection (``response_ended``), the task ends
    the exchange when it exits (:meth:`ClientConnection._finish_exchange`).

    **Outcomes**, once ``exited`` is set: ``complete`` (the end of the body was flushed);
    ``stopped`` (given up by us: cancelled); ``send_error`` (the stream below refused bytes: the
    server reset or closed the connection, and what it answered may still be read); ``failure``
    (the body iterator raised, h11 refused its data, or the request's deadline passed: the exchange
    is broken). The task itself never raises anything but ``Cancelled``.

    **Waking the reader**: ``waiter`` is the cancel scope of the task waiting on the response (in
    ``request()``); the task cancels it when it exits with a ``failure``, or on any exit if
    ``wake_on_exit``. Once ``request()`` returned while the task goes on (``detached``), nobody
    waits: a ``failure`` then closes the connection, so a reader blocked on the response wakes.
    """

    def __init__(
        self, conn: ClientConnection, chunks: AsyncIterator[bytes] | None, expect_100: bool, deadline: float
    ) -> None:
        self.conn = conn
        self.chunks = chunks
        self.expect_100 = expect_100
        self.deadline = deadline
        self.scope = trio.CancelScope()
        self.exited = trio.Event()
        self.continued = trio.Event()  # a 100 Continue arrived
        self.body_started = chunks is None  # past the wait for 100 Continue (a bytes body: at once)
        self.complete = False
        self.stopped = False
        self.send_error: StackError | None = None
        self.failure: BaseException | None = None
        self.waiter: trio.CancelScope | None = None
        self.wake_on_exit = False
        self.detached = False
        self.response_ended = False  # the response ended first: our exit ends the exchange
        self.exchange = conn._exchange
        self._task: trio.lowlevel.Task | None = None

    async def run(self) -> None:
        """The task: send until the body ended, failed or was stopped (see the class docstring)."""
        self._task = trio.lowlevel.current_task()
        try:
            with self.scope:
                try:
                    if self.deadline == FOREVER:
                        await self._send()
                    else:
                        with trio.move_on_at(self.deadline):
                            await self._send()
                        if not self.complete and self.failure is None:
                            raise Timeout("the deadline passed")
                except Timeout:
                    self.failure = Timeout("HTTP/1.1: the request body was not sent by the request's deadline")
                except StackError as exc:  # from the stream below: the server no longer takes bytes
                    self.send_error = exc
                    log.debug("HTTP/1.1 client: sending the request stopped: %s", exc)
        finally:
            if not self.complete:
                await self._close_chunks()
            self.exited.set()
            await self._exit()

    async def _close_chunks(self) -> None:
        """The body is given up: close its iterator (an async generator's ``finally`` runs now, not
        when it is collected), shielded, for at most :data:`_STOP_WAIT` seconds."""
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is None:
            return
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(_STOP_WAIT):
                await aclose()
        except Exception as exc:
            log.debug("HTTP/1.1 client: closing the request body's iterator failed: %r", exc)

    async def _send(self) -> None:
        conn = self.conn
        await conn._flush(self.deadline)
        chunks = self.chunks
        if chunks is not None:
            if self.expect_100:
                with trio.move_on_at(min(self.deadline, trio.current_time() + CONTINUE_TIMEOUT)):
                    await self.continued.wait()
            self.body_started = True
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:  # the caller's iterator: its error is the caller's to see
                    self.failure = exc
                    return
                if chunk and not self._commit(h11.Data(data=chunk)):
                    return
                await conn._flush(self.deadline)
            if not self._commit(h11.EndOfMessage()):
                return
            await conn._flush(self.deadline)
        self.complete = True

    def _commit(self, event: h11.Data | h11.EndOfMessage) -> bool:
        try:
            self.conn._send_event(event)
        except StackError as exc:  # h11 refused the caller's data (over or under its Content-Length)
            self.failure = exc
            return False
        return True

    async def _exit(self) -> None:
        conn = self.conn
        if self.waiter is not None:
            if self.failure is not None or self.wake_on_exit:
                self.waiter.cancel()
        elif self.failure is not None and self.detached and not self.stopped and conn._exchange == self.exchange:
            with trio.CancelScope(shield=True):
                await conn._poison(self.broken())
        if self.response_ended and conn._exchange == self.exchange:
            await conn._finish_exchange()

    def broken(self) -> Broken:
        """The error a reader of the response gets after a ``failure`` (raise it from that)."""
        return Broken(f"HTTP/1.1: the request body failed ({self.failure}); the connection was closed")

    async def stop(self) -> None:
        """Give the body up if it is still going: cancel the task and wait until it exited (at
        most :data:`_STOP_WAIT` seconds; shielded). Committed bytes that did not go are dropped:
        the connection is not used again after a stopped body."""
        if self.exited.is_set():
            return
        self.stopped = True
        self.scope.cancel()
        if trio.lowlevel.current_task() is self._task:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(_STOP_WAIT):
            await self.exited.wait()
        if self.exited.is_set():
            self.conn._out.clear()


class _ResponseBody(ByteStream):
    """The body of a response, as the client reads it. ``b""`` at its end.

    When the body ends the connection is ready for the next request if the request ended too
    (else, or if the server said ``Connection: close``, it closes). A malformed body, or the
    server closing in the middle of it, raises :class:`~stack.ProtocolError` (and stops a request
    body still going). On deadline or
    cancellation nothing is consumed, and a request body still being sent goes on. If that request
    body fails after the response head came (its iterator raised, the request's deadline passed),
    receiving raises :class:`~stack.Broken` with the failure as ``__cause__``. ``aclose()`` before
    the end drains a small rest (up to :data:`MAX_DRAIN` bytes, for :data:`DRAIN_TIME` seconds) to
    keep the connection, or, with the request body still going, stops it and closes the connection.
    """

    kind = "http1-response-body"

    def __init__(self, conn: ClientConnection, sender: _BodySender | None) -> None:
        super().__init__(conn._lower)
        self._conn = conn
        self._sender = sender
        self._response: Response | None = None
        self._pending = b""
        self._buffered: deque[bytes] = deque()  # read while request() finished sending (no nursery)
        self._complete = False

    @property
    def info(self) -> Info:
        """The connection's ``info`` (asked of it each time, never copied per response)."""
        return self._conn.info

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        if not self._pending:
            if self._buffered:
                self._pending = self._buffered.popleft()
            elif self._complete:
                return b""
            else:
                sender = self._sender
                if sender is not None and sender.failure is not None:
                    raise sender.broken() from sender.failure
                try:
                    self._pending = await self._conn._body_data(self, deadline)
                except StackError as exc:
                    if sender is not None:
                        if sender.failure is not None:
                            raise sender.broken() from sender.failure
                        if not isinstance(exc, Timeout):  # the response broke: no use sending on
                            await sender.stop()
                    raise
        out = self._pending
        if len(out) > max_bytes:
            self._pending = out[max_bytes:]
            return out[:max_bytes]
        self._pending = b""
        return out

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        raise Closed("a response body cannot be sent on (only an Upgrade/CONNECT tunnel can)")

    async def _done(self, deadline: float) -> None:
        pass

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Release the response: drain a small rest or close the connection. Never raises."""
        if self._closed is not None:
            return
        self._closed = "closed"
        if self._complete:
            return
        conn = self._conn
        sender = self._sender
        if sender is None or sender.complete:  # the request ended: the connection may be kept
            try:
                with trio.CancelScope(shield=True):
                    drain_deadline = trio.current_time() + DRAIN_TIME
                    total = len(self._pending) + sum(map(len, self._buffered))
                    while not self._complete and total <= MAX_DRAIN:
                        total += len(await conn._body_data(self, drain_deadline))
            except StackError:
                pass
        self._pending = b""
        self._buffered.clear()
        if not self._complete:
            await conn._poison(Closed("HTTP/1.1: a response was closed before its end, closing the connection"))


class ClientConnection(_H11Conn, http.ClientConnection):
    """The client side of one HTTP/1.1 connection (see :class:`layers.http.ClientConnection`).

    Requests queue on the one connection: a request waits until the previous response's body was
    read to its end or closed (read or close every response). ``request()`` returns once the
    response head arrived. When the server closed the connection, later requests raise
    :class:`~stack.EndOfStream`. A 101 response, or a 2xx to CONNECT, makes the response body the
    tunnel (a ByteStream straight on the stream below; ``detach()`` on it returns that stream) and
    the connection takes no more requests.

    **Full duplex.** A request whose body is streamed (an async iterable) or larger than
    :data:`INLINE_SEND` is sent by a task while the response head is awaited, so an answer that
    comes early is seen at once:

    * A final response of status 300 or more that arrives while the body is still being produced
      (a 413, a 401) stops it, as curl does: ``request()`` returns that response, the rest of the
      body is not sent, and the connection closes after the response (read it as usual). A body
      already whole in the outgoing buffer (bytes, or the last chunk) goes on while the response
      is read, as the server may have read all but its end; if it is still going when that
      response ended, it is given up then. Any final response that arrives while an ``Expect:
      100-continue`` body still waits for ``100 Continue`` (at most :data:`CONTINUE_TIMEOUT`
      seconds) means the body is not sent at all.
    * A 2xx that arrives early (a streaming echo) is returned at once while the body goes on,
      **inside** ``async with conn:``: the task then runs in a nursery that block owns and keeps
      sending while the caller reads the response, each direction waiting only on the server, so
      both may exceed every buffer on the way. On a connection used without ``async with``,
      ``request()`` returns once the body was sent too, keeping the response bytes that arrived
      meanwhile (at most :data:`DUPLEX_BUFFER`; past that, :class:`~stack.Broken` saying so).
    * If the server stops taking the body (it reset or closed the connection), sending stops and
      the response is still read, as far as it arrived.
    * The connection is kept for the next request only when both the request and the response
      ended. A 2xx that ends before its request body lets the body go on to its end if the
      connection is kept alive (the server must read the rest to find the next request; the next
      request waits for it, and a success is never cut short behind the caller's back); if the
      server will close the connection (``Connection: close``, HTTP/1.0), the body is given up.

    **Deadline**: ``request()``'s deadline covers waiting for the connection, sending the whole
    request (also the part of the body sent after ``request()`` returned) and receiving the head.
    If it passes (or the call is cancelled) before the head, the body stops and the connection
    cannot be used again (:class:`~stack.Broken` on later requests). If it passes after the head
    while the body is still going, the body stops, the connection closes, and the response body's
    next ``recv`` raises :class:`~stack.Broken`. Deadlines of ``response.body.recv`` concern the
    response only: they consume nothing and never stop the request body.

    **Body errors**: an exception raised by the body iterator before the head arrived comes out of
    ``request()`` unchanged; after it, the connection closes and the response body's ``recv``
    raises :class:`~stack.Broken` with the exception as ``__cause__``. A body that is given up
    (stopped, failed, or refused by the server) may be cancelled in the middle of producing a chunk,
    and its iterator is then closed (``aclose()``, if it has one: an async generator's ``finally``
    runs at once, not when it is collected).

    **Cancel and ownership**: the sending task belongs to the exchange. It ends when the body is
    sent, and is stopped (cancelled, and waited for) when ``request()`` fails or is cancelled, when
    the response is closed before its end (``response.aclose()``, ``async with response:``), by
    ``conn.aclose()`` and when the ``async with conn:`` block ends. Cancelling a ``recv`` on the
    response does not touch it. No task outlives the block (without it: the ``request()`` call).

    **End of stream**: the server closing before the head raises :class:`~stack.EndOfStream`
    ("without responding"), or the :class:`~stack.Broken` that sending got; in the middle of the
    response body, :class:`~stack.ProtocolError`.
    """

    _role = h11.CLIENT
    http_version = "1.1"

    def __init__(self, lower: ByteStream, limits: Limits, authority: str, scheme: str) -> None:
        super().__init__(lower, limits)
        self.authority = authority
        self.scheme = scheme
        self._host = authority.encode("ascii") if authority.isascii() else authority.encode("idna")
        self._slot = trio.Semaphore(1)
        self._error: StackError | None = None
        self._closed = False
        self._exchange = 0  # the exchange holding the slot (0: none)
        self._exchanges = 0
        self._sender: _BodySender | None = None  # the current exchange's, when it has one
        self._method = b""
        self._status = 0  # the current exchange's response status
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"<http1.ClientConnection {self.authority}>"

    async def __aenter__(self) -> Self:
        """Run the connection in this block: request bodies go on in a nursery the block owns
        while their responses are read (full duplex). Leaving the block closes the connection."""
        if self._exit_stack is not None:
            raise Busy("this HTTP/1.1 connection is already in an `async with` block")
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._exit_stack = self._exit_stack, None
        try:
            await self.aclose()
        finally:
            self._nursery = None
            if stack is not None:
                await stack.aclose()

    def _check(self) -> None:
        if self._closed:
            raise Closed("HTTP/1.1 client connection was closed")
        if self._error is not None:
            raise type(self._error)(str(self._error))

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeaderInput = (),
        body: Body = None,
        deadline: float = FOREVER,
    ) -> Response:
        """Send a request and return the response once its head arrived (see the class docstring
        for full duplex, deadline, errors and cancellation).

        ``body``: bytes (sent with a Content-Length), an async iterable of bytes (chunked unless
        ``headers`` has a Content-Length), or None (no body). With ``Expect: 100-continue`` in
        ``headers`` a streamed body waits for ``100 Continue`` (at most :data:`CONTINUE_TIMEOUT`
        seconds). A Host header is added from ``authority`` unless given. An invalid method,
        target or header raises :class:`ValueError` and sends nothing.
        """
        self._check()
        event, streaming, expect_100 = self._build(method, target, Headers(headers), body)
        try:
            self._slot.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(deadline) as scope:
                await self._slot.acquire()
            if scope.cancelled_caught:
                raise Timeout(
                    "HTTP/1.1: waiting for the connection timed out (is a previous response unread?)"
                ) from None
        self._exchanges += 1
        self._exchange = exchange = self._exchanges
        self._sender = None
        self._method = event.method
        ok = False
        try:
            self._check()
            response = await self._exchange_request(event, body, streaming, expect_100, deadline)
            ok = True
            return response
        except Timeout:
            await self._poison(Broken("HTTP/1.1: an earlier request timed out in the middle of its exchange"))
            raise
        except StackError as exc:
            await self._poison(exc if isinstance(exc, (EndOfStream, Broken, Closed)) else Broken(str(exc)))
            raise
        except BaseException:
            await self._poison(Broken("HTTP/1.1: an earlier request failed in the middle of its exchange"))
            raise
        finally:
            if not ok:
                self._release(exchange)

    def _build(self, method: str, target: str, headers: Headers, body: Body) -> tuple[h11.Request, bool, bool]:
        """The h11 request event (framing headers and Host added); whether the body streams;
        whether it waits for 100 Continue."""
        raw = headers.raw
        has_host = has_length = expect_100 = False
        for name, value in raw:
            if name == b"host":
                has_host = True
            elif name == b"content-length" or name == b"transfer-encoding":
                has_length = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_100 = True
        extra: list[tuple[bytes, bytes]] = [] if has_host else [(b"host", self._host)]
        streaming = body is not None and not isinstance(body, (bytes, bytearray, memoryview))
        if isinstance(body, (bytes, bytearray, memoryview)) and not has_length:
            if len(body) or method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"):
                extra.append((b"content-length", b"%d" % len(body)))
        elif streaming and not has_length:
            extra.append((b"transfer-encoding", b"chunked"))
        try:
            return h11.Request(method=method, target=target, headers=extra + raw), streaming, expect_100
        except h11.LocalProtocolError as exc:
            raise _local_error(exc) from None

    async def _exchange_request(
        self, event: h11.Request, body: Body, streaming: bool, expect_100: bool, deadline: float
    ) -> Response:
        """Send the request and return the response once its head came (see the class docstring)."""
        self._send_event(event)
        chunks: AsyncIterator[bytes] | None = None
        if streaming:
            assert isinstance(body, AsyncIterable)
            chunks = aiter(body)
        else:
            if body:
                self._send_event(h11.Data(data=body))  # type: ignore[arg-type]
            self._send_event(h11.EndOfMessage())
            if len(self._out) <= INLINE_SEND:  # head and body in one write, then the response
                return await self._response(await self._inline_head(deadline))
        sender = self._sender = _BodySender(self, chunks, expect_100, deadline)
        if self._nursery is not None:  # inside `async with conn:` the body goes on after we return
            self._nursery.start_soon(sender.run, name="stack.http1 request body")
            response = await self._duplex_response(sender, deadline)
            sender.detached = True  # no await since the last look at sender.failure
            return response
        failure: Exception | None = None
        result: Response | None = None
        async with trio.open_nursery() as nursery:  # the body's task never outlives this call
            nursery.start_soon(sender.run, name="stack.http1 request body")
            try:
                result = await self._duplex_response(sender, deadline)
                await self._finish_sending(result, sender, deadline)
            except Exception as exc:  # raised below, outside the nursery (no exception group)
                failure = exc
                sender.scope.cancel()
        if failure is not None:
            raise failure
        assert result is not None
        return result

    async def _inline_head(self, deadline: float) -> h11.Response | h11.InformationalResponse:
        """Flush the whole request, then receive the response head."""
        send_error: StackError | None = None
        try:
            await self._flush(deadline)
        except Broken as exc:  # the server may have answered early (413...) and closed: read it
            send_error = exc
        try:
            return await self._read_head(deadline)
        except StackError:
            if send_error is not None:
                raise send_error from None
            raise

    async def _duplex_response(self, sender: _BodySender, deadline: float) -> Response:
        """Receive the response head while ``sender`` sends; stop the body if the answer makes it
        useless; return the response."""
        head = None
        with trio.CancelScope() as wake:
            sender.waiter = wake  # woken if the body fails: no use waiting for an answer then
            try:
                if sender.failure is None:
                    head = await self._read_head(deadline, sender)
            except StackError:
                if sender.failure is not None:
                    raise sender.failure from None
                if sender.send_error is not None:
                    raise sender.send_error from None
                raise
            finally:
                sender.waiter = None
        if sender.failure is not None:
            raise sender.failure
        assert head is not None
        status = head.status_code
        if not sender.exited.is_set():
            producing = self._h11.our_state is h11.SEND_BODY  # else only flushing what is committed
            unwanted = sender.expect_100 and not sender.body_started  # final answer, no 100 Continue
            if (status >= 300 and producing) or unwanted:  # an early final answer: no more body
                log.debug("HTTP/1.1 client: a %d came before the request body ended; it stops", status)
                await sender.stop()
            elif status == 101 or (self._method == b"CONNECT" and status < 300):
                with trio.move_on_at(deadline):  # the tunnel may not share the stream with the task
                    await sender.exited.wait()
                if not sender.exited.is_set():
                    raise Timeout("HTTP/1.1: the request was not sent by the deadline")
        response = await self._response(head)
        if sender.failure is not None:
            raise sender.failure
        return response

    async def _finish_sending(self, response: Response, sender: _BodySender, deadline: float) -> None:
        """Without a nursery of the connection: read the response into its body's buffer (at most
        :data:`DUPLEX_BUFFER` bytes) until ``sender`` exited."""
        body = response.body
        if not isinstance(body, _ResponseBody):
            return
        kept = 0
        with trio.CancelScope() as wake:
            sender.waiter, sender.wake_on_exit = wake, True  # woken when the body task exits
            try:
                while not sender.exited.is_set():
                    if body._complete:  # the response ended first: the body goes on to its end
                        await sender.exited.wait()
                        break
                    data = await self._body_data(body, deadline)
                    if data:
                        body._buffered.append(data)
                        kept += len(data)
                        if kept > DUPLEX_BUFFER:
                            raise Broken(
                                f"HTTP/1.1: the server answers while the request body is still being sent, and "
                                f"over {DUPLEX_BUFFER} bytes of its answer came meanwhile: use the connection in "
                                "`async with conn:` to read the response as the body goes out (full duplex)"
                            )
            finally:
                sender.waiter = None
        if sender.failure is not None:
            raise sender.failure

    def _send_event(self, event: h11.Event) -> None:
        try:
            parts = self._h11.send_with_data_passthrough(event)
        except h11.LocalProtocolError as exc:
            raise StackError(f"HTTP/1.1 request: {exc}") from None
        if parts:
            out = self._out
            for part in parts:
                out += part

    def _next_event(self) -> Any:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise MessageTooLarge(
                    f"response head over max_header_bytes={self._limits.max_header_bytes}",
                    limit=self._limits.max_header_bytes,
                ) from None
            raise ProtocolError(f"HTTP/1.1 response: {exc}") from None

    async def _read_head(
        self, deadline: float, sender: _BodySender | None = None
    ) -> h11.Response | h11.InformationalResponse:
        """The response head (a 101 counts as one); other 1xx responses are skipped (a 100 lets
        ``sender`` send its body). A head over ``max_header_bytes`` raises MessageTooLarge (h11
        only limits heads still incomplete). Cancel-safe: what arrived stays in h11."""
        h = self._h11
        fed = len(h.trailing_data[0])
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                data = await self._lower.recv(RECV, deadline=deadline)
                if not data and h.their_state is h11.SEND_RESPONSE and not h.trailing_data[0]:
                    raise EndOfStream("HTTP/1.1: the server closed the connection without responding")
                self._feed(data)
                fed += len(data)
                continue
            if type(event) is h11.Response or type(event) is h11.InformationalResponse:
                size = fed - len(h.trailing_data[0])
                fed -= size
                limit = self._limits.max_header_bytes
                if size > limit:
                    raise MessageTooLarge(
                        f"response head of {size} bytes is over max_header_bytes={limit}", limit=limit, size=size
                    )
            if type(event) is h11.Response:
                return event
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101:
                    return event
                if event.status_code == 100 and sender is not None:
                    sender.continued.set()
                continue
            raise ProtocolError(f"HTTP/1.1: unexpected {event!r} instead of a response")

    async def _response(self, event: h11.Response | h11.InformationalResponse) -> Response:
        status = event.status_code
        headers = Headers._wire([(k.lower(), v) for k, v in event.headers.raw_items()])
        reason = event.reason.decode("latin-1")
        version = event.http_version.decode("ascii")
        self._status = status
        h = self._h11
        if h.our_state is h11.SWITCHED_PROTOCOL:
            trailing, _ = h.trailing_data
            self._lower.unread(trailing)
            self._error = StackError("HTTP/1.1: the connection switched protocols; it takes no more requests")
            self._release(self._exchange)
            return Response(status, headers, version, _Tunnel(self._lower), reason)
        body = _ResponseBody(self, self._sender)
        response = Response(status, headers, version, body, reason)
        body._response = response
        if self._method == b"HEAD" or status in _BODYLESS_STATUS or headers.get("content-length") == "0":
            nxt = self._next_event()  # a bodiless response ends at once: the next request need not wait
            if type(nxt) is h11.EndOfMessage:
                body._complete = True
                await self._end_exchange()
        return response

    async def _body_data(self, body: _ResponseBody, deadline: float) -> bytes:
        while True:
            event = self._next_event()
            if type(event) is h11.Data:
                return bytes(event.data)
            if type(event) is h11.EndOfMessage:
                body._complete = True
                if event.headers and body._response is not None:
                    body._response.trailers = Headers(event.headers)
                await self._end_exchange()
                return b""
            if event is h11.NEED_DATA:
                await self._receive(deadline)
                continue
            raise ProtocolError(f"HTTP/1.1: unexpected {event!r} in a response body")

    async def _end_exchange(self) -> None:
        """The response ended. If the request body is still going after a 2xx on a kept-alive
        connection, the body goes on and its task ends the exchange when it exits; after a status
        of 300 or more, or if the server will close, the body is given up. Else the exchange ends
        here."""
        sender = self._sender
        if sender is not None and not sender.exited.is_set():
            closing = self._h11.their_state is h11.MUST_CLOSE or self._h11.their_state is h11.CLOSED
            if self._status < 300 and not closing:
                sender.response_ended = True  # no await since exited was looked at: one of us ends it
                return
            with trio.CancelScope(shield=True):
                await sender.stop()
        await self._finish_exchange()

    async def _finish_exchange(self) -> None:
        """Request and response ended (or gave up): keep the connection if both ended, else close
        it. Shielded and bounded, so the decision is never cut in half by a cancellation."""
        h = self._h11
        sender = self._sender
        with trio.CancelScope(shield=True):
            sent = not self._out and (sender is None or sender.complete)
            if h.our_state is h11.DONE and h.their_state is h11.DONE and sent:
                h.start_next_cycle()
                self._release(self._exchange)
            elif not sent:
                await self._poison(
                    Closed(
                        "HTTP/1.1: the server answered before the request body was sent whole, "
                        "so the connection was closed"
                    )
                )
            else:
                await self._poison(EndOfStream("HTTP/1.1: the server closed the connection"))

    def _release(self, exchange: int) -> None:
        if exchange and self._exchange == exchange:
            self._exchange = 0
            self._slot.release()

    async def _poison(self, exc: StackError) -> None:
        """No more requests on this connection: record why, stop a request body still going,
        close the stream below, let the next waiting request go (it raises)."""
        if self._error is None:
            self._error = exc
        if self._sender is not None:
            await self._sender.stop()
        self._release(self._exchange)
        with trio.CancelScope(shield=True):
            await self._lower.aclose(deadline=trio.current_time() + 1.0)

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close the connection and the stream below; a request body still going is stopped.
        Idempotent; never raises a StackError. Requests waiting for the connection get
        :class:`~stack.Closed`."""
        if self._closed:
            return
        self._closed = True
        try:
            sender = self._sender
            if sender is not None:
                await sender.stop()
            if self._out and not self._flushing and (sender is None or sender.complete):
                d = trio.current_time() + 1.0 if deadline is None else deadline
                with trio.move_on_at(d):
                    await self._lower.send_from(self._out, deadline=d)
        except StackError:
            pass
        finally:
            self._release(self._exchange)
            await self._lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Give the stream below back (read-ahead pushed back into it): between requests, or after
        a protocol switch (the tunnel's own ``detach()`` does the same). Else a StackError."""
        h = self._h11
        if self._closed:
            raise Closed("HTTP/1.1 client connection was closed")
        switched = h.our_state is h11.SWITCHED_PROTOCOL
        if not switched:
            if self._exchange or self._error is not None or h.our_state is not h11.IDLE:
                raise StackError("cannot detach HTTP/1.1 in the middle of a request")
            trailing, _ = h.trailing_data
            self._lower.unread(trailing)
        await self._flush(deadline)
        self._closed = True
        return self._lower


@dataclass(frozen=True)
class client:
    """Spec: an HTTP/1.1 client connection (see :class:`ClientConnection`).

    ``authority`` is the Host header sent (default: ``localhost``); ``scheme`` is informational.
    """

    limits: Limits = DEFAULT_LIMITS
    authority: str | None = None
    scheme: str | None = None

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ClientConnection:
        """Wrap ``lower``. No handshake: returns at once."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http1.client attaches to a ByteStream, not {type(lower).__name__}")
        scheme = self.scheme or ("https" if "tls_version" in lower.info else "http")
        return ClientConnection(lower, self.limits, self.authority or http.authority_of(lower.info), scheme)
