"""The request cycle of an HTTP/1.1 server connection: one request read, answered and ended.

Theory of operation. :class:`ServerCycle` is the base of :class:`layers._h1server.ServerConnection`
and holds the connection's state and everything that happens to one request once its head was
parsed: the :class:`~layers._h1request.Request` made from it (``_start_request``), its body read
through the engine (``read_body``, with 100 Continue when the client waits for it), the response
committed through the core's :class:`~layers._h1core.ResponseWriter` (a whole one in one write,
``send_response``; a streamed one, ``start_streamed_response`` / ``write_body`` / ``end_body``;
1xx; a protocol switch), the wait for the client to leave (``wait_disconnect``), and the end of
the cycle (``_ended_at_once`` without a coroutine in the usual case, else ``_end_cycle``: drain a
small unread body or decide to close), closing and detaching. It is the ``RequestOwner`` a
request, its body and its response stream reach their connection through.

The serve loop (waiting for heads under the limits, the watchdog and the shutdown event, running
the app on each request, its failures) is :class:`~layers._h1server.ServerConnection`'s, in
``_h1server.py``. Every change of the request's state follows the core's state table: through
:func:`~layers._h1core.advance`, but for the three transitions of the usual keep-alive cycle, taken
inline where the current state is the usual one (the table is checked to keep them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from layers._h1conn import H1Connection, _Tunnel
from layers._h1core import (
    AWAIT_RESPONSE,
    CLOSE,
    CLOSED,
    CONTINUE,
    DONE,
    DRAIN_TIME,
    END_BODY,
    IDLE,
    LINGER,
    MAX_DRAIN,
    NEXT_CYCLE,
    RECV,
    REQUEST,
    RESPOND,
    SEND_BODY,
    START_BODY,
    SWITCH,
    SWITCHED,
    HeadBuffer,
    ParsedHead,
    ReferenceEngine,
    ResponseWriter,
    ServerEngine,
    advance,
    raw_response,
    reason,
    switch_head,
)
from layers._h1request import Request, RequestBody, ResponseStream
from layers._http_model import HeaderInput, Headers, Limits, remember
from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, EndOfStream, ProtocolError, StackError, Timeout
from stack.streams import ByteStream
from stack.watchdog import Watchdog

log = logging.getLogger("stack.http1")
_new = object.__new__

_ASCII: dict[bytes, str] = {}
_LATIN1: dict[bytes, str] = {}
"""Methods and targets (ASCII), Host values (Latin-1) decoded, by their bytes: a request reads them
from here (a dict lookup costs a third of a decode); at most :data:`_DECODED_MAX` each, then
forgotten all at once."""
_DECODED_MAX = 1024
_DECODED_LEN = 256
"""Only values of at most this many bytes are remembered: the tables stay under ~1 MiB whatever
clients send (1,024 targets of 64 KiB would hold over 100 MiB)."""


def _decoded(table: dict[bytes, str], raw: bytes, encoding: str) -> str:
    """``raw.decode(encoding)`` (raising as it does), remembered in ``table`` when short."""
    text = raw.decode(encoding)
    if len(raw) <= _DECODED_LEN:
        remember(table, raw, text, _DECODED_MAX)
    return text


class ServerCycle(H1Connection, ResponseWriter):
    """The state of an HTTP/1.1 server connection and the cycle of its requests (see the module
    docstring); :class:`~layers._h1server.ServerConnection` adds the serve loop."""

    def __init__(
        self,
        lower: ByteStream,
        limits: Limits,
        shutdown: trio.Event | None,
        engine: Callable[[int], ServerEngine] = ReferenceEngine,
    ) -> None:
        self._engine: ServerEngine = engine(limits.max_header_bytes)
        super().__init__(lower, limits, self._engine.name)
        self._shutdown = shutdown
        self.scheme = "https" if "tls_version" in self.info else "http"
        self._inbuf = HeadBuffer()  # read ahead, not yet given to the engine
        self._head_started: float | None = None  # when the first byte of the awaited head came
        self._state = IDLE  # the cycle of the current request (see _h1core's state table)
        self._current: Request | None = None
        self._requests = 0
        # when the connection last became idle: attached (the first request's header_timeout
        # counts from it), then the end of each response (the keep-alive timeout's start)
        self._idle_since = trio.current_time()
        self._expect_100 = False
        self._sent_100 = False
        self._closing: str | None = None  # why the connection closes after this request
        self._linger = False  # read what the client still sends before closing
        self._ended: StackError | None = None
        self._watchdog: Watchdog | None = None  # the run's, once serve() waited

    def _start_request(self, head: ParsedHead) -> Request:
        state = self._state  # the usual transitions of a cycle are taken without a call (see _h1core)
        self._state = AWAIT_RESPONSE if state is IDLE else advance(state, REQUEST)
        self._expect_100 = head.expect_100
        self._sent_100 = False
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), and the engine is
        # not asked for the end it would report: the end of the request body is
        # ``body._complete``. A zero Content-Length ends here too.
        body = _new(RequestBody)  # (RequestBody has no __init__: made here only, no call per request)
        body._lower = self.lower
        body._unread = bytearray()
        body._owner = self
        body._complete = not head.chunked and not head.content_length
        request = _new(Request)  # (Request has no __init__ either: made here only)
        text = _ASCII.get(raw := head.method)  # the decoded strings, remembered: clients repeat them
        request.method = text if text is not None else _decoded(_ASCII, raw, "ascii")
        text = _ASCII.get(raw := head.target)
        request.target = text if text is not None else _decoded(_ASCII, raw, "ascii")
        request.http_version = "1.1" if head.http_version == b"1.1" else "1.0"
        request.body = request._body = body
        request.info = self.info
        request.scheme = self.scheme
        host = head.host
        if host is None:
            request.authority = ""
        else:
            text = _LATIN1.get(host)
            request.authority = text if text is not None else _decoded(_LATIN1, host, "latin-1")
        request.limits = self.limits
        request._owner = self
        request._head = head
        request.raw_headers = head.fields
        self._current = request
        self._requests += 1
        return request

    async def read_body(self, body: RequestBody, deadline: float) -> bytes:
        """The next bytes of the request body (``b""`` at its end), sending 100 Continue first if
        the client waits for it. The engine keeps what arrived, so cancelling this loses nothing."""
        engine = self._engine
        while True:
            try:
                got = engine.next_body()
            except ProtocolError:
                self.close_after("malformed request body", linger=False)
                raise
            if isinstance(got, bytes):
                return got
            if got is not None:
                body._complete = True
                if got:
                    body.trailers = Headers(got)
                return b""
            if (
                self._expect_100
                and not self._sent_100
                and self._current is not None
                and self._state is AWAIT_RESPONSE
                and engine.client_waits_for_100
            ):
                self.outbuf += CONTINUE
                self._sent_100 = True
                await self.flush(deadline)
            await self._receive_body(deadline)

    async def _receive_body(self, deadline: float) -> None:
        if self._inbuf:
            data = bytes(self._inbuf)
            self._inbuf.clear()
        else:
            data = await self.lower.recv(RECV, deadline=deadline)
        try:
            self._engine.feed(data)
        except ProtocolError:
            self.close_after("malformed chunked body", linger=False)
            raise

    # ---- writing responses -----------------------------------------------------------------

    def _head(self, request: Request, status: int, headers: HeaderInput, whole: int | None) -> None:
        """Commit a response head and set the framing of its body (see ``ResponseWriter``), with
        what this connection knows: whether it closes after the response, and why."""
        unread = None
        if not request._body._complete:  # say now if the unread body means closing
            if self._expect_100 and not self._sent_100:
                unread = "the app answered without reading a 100-continue body"
            else:
                declared = request.headers.get("content-length")
                if declared is not None and int(declared) > MAX_DRAIN:
                    unread = "a large request body was not read"
        shutdown = self._shutdown
        why = self._frame_head(
            status,
            headers,
            whole,
            request.method == "HEAD",
            request.http_version == "1.1",
            self._closing is not None or not request._head.keep_alive,
            unread,
            shutdown is not None and shutdown.is_set(),
        )
        if why is not None:
            self.close_after(why, linger=why is unread)

    def _check_current(self, request: Request) -> None:
        if request is not self._current:
            raise StackError(f"{request!r} is not the request in progress on this connection")

    def write_body(self, request: Request, data: bytes | bytearray | memoryview) -> None:
        """Commit body bytes of a streamed response, framed."""
        if request is not self._current or self._state is not SEND_BODY:
            raise StackError("the response is already complete")
        try:
            self._frame_data(data)
        except StackError:
            self.close_after("the response body overran its Content-Length", linger=False)
            raise

    def end_body(self, request: Request, trailers: Headers | None) -> None:
        """Commit the end of a streamed response (the last chunk and trailers), if it is going."""
        if request is not self._current or self._state is not SEND_BODY:
            return
        self._frame_end(trailers.raw if trailers else None)
        self._state = advance(self._state, END_BODY)
        if self._left:
            self.close_after("the response body fell short of its Content-Length", linger=False)
            raise StackError(f"response body shorter than its Content-Length: {self._left} bytes missing")

    async def send_response(
        self, request: Request, status: int, headers: HeaderInput, body: bytes, deadline: float
    ) -> None:
        """A whole response (``RequestOwner``); a 101 or a 2xx to CONNECT switches protocols.
        ``headers``: as the app gave them (the head cache takes a list of pairs as it is)."""
        if status == 101 or (request.method == "CONNECT" and 200 <= status < 300):
            if body:
                raise ValueError("a protocol switch response has no body")
            await self._switch(request, status, Headers(headers), deadline)
            return
        if request is not self._current:  # _check_current, inline: this is per request
            self._check_current(request)
        if request._body._complete:  # _head, inline in the usual case (this is per request)
            shutdown = self._shutdown
            why = self._frame_head(
                status,
                headers,
                len(body),
                request.method == "HEAD",
                request.http_version == "1.1",
                self._closing is not None or not request._head.keep_alive,
                None,
                shutdown is not None and shutdown.is_set(),
            )
            if why is not None:
                self.close_after(why, linger=False)
        else:
            self._head(request, status, headers, len(body))
        if body and not self._discard:
            self.outbuf += body
        state = self._state
        self._state = DONE if state is AWAIT_RESPONSE else advance(state, RESPOND)
        if self._flushing:  # another task flushes (a 100 Continue): wait for it
            await self.flush(deadline)
        else:
            self._flushing = True
            try:
                await self.lower.send_from(self.outbuf, deadline=deadline)
            finally:
                self._flushing = False
                if self._flush_lot is not None:
                    self._flush_lot.unpark_all()

    async def send_informational(self, request: Request, status: int, headers: Headers, deadline: float) -> None:
        """A 1xx response before the final one (``RequestOwner``); nothing to an HTTP/1.0 client."""
        self._check_current(request)
        if self._state is not AWAIT_RESPONSE:
            raise StackError("the final response already started")
        if request.http_version == "1.0":
            return
        self.outbuf += switch_head(status, headers.raw)
        await self.flush(deadline)

    async def wait_disconnect(self, request: Request) -> None:
        """Return once the client closed or broke the connection (``RequestOwner``). Reads the
        stream below; bytes that come (a pipelined request) go back into it, and then the end of
        the connection cannot be seen before the next request: this waits until cancelled."""
        if request is not self._current or self._state is CLOSED:
            return
        if not request._body._complete:
            raise StackError("wait_disconnect: read the request body to its end first")
        lower = self.lower
        if not lower.buffered and not self._inbuf:
            try:
                data = await lower.recv(RECV)
            except StackError:
                return
            if not data:
                return
            lower.unread(data)
        await trio.sleep_forever()

    async def start_streamed_response(
        self, request: Request, status: int, headers: Headers, deadline: float
    ) -> ByteStream:
        """The head of a streamed response and its body stream (``RequestOwner``)."""
        if status == 101 or (request.method == "CONNECT" and 200 <= status < 300):
            return await self._switch(request, status, headers, deadline)
        self._check_current(request)
        self._head(request, status, headers.raw, None)
        self._state = advance(self._state, START_BODY)
        stream = request._response = ResponseStream(self, request)
        await self.flush(deadline)
        return stream

    async def _switch(self, request: Request, status: int, headers: Headers, deadline: float) -> ByteStream:
        """Answer an Upgrade (101) or CONNECT (2xx) and hand the raw connection over."""
        self._check_current(request)
        proposed = "upgrade" in request.headers if status == 101 else request.method == "CONNECT"
        if not proposed or not request._body._complete:
            what = "an Upgrade" if status == 101 else "a CONNECT"
            raise StackError(f"cannot switch protocols: the request is not {what} request whose body was read")
        self.outbuf += switch_head(status, headers.raw)
        self._state = advance(self._state, SWITCH)
        self._hand_over()
        await self.flush(deadline)
        return _Tunnel(self.lower)

    def _hand_over(self) -> None:
        """Push every byte read past the request back into the stream below."""
        self.lower.unread(self._engine.trailing() + bytes(self._inbuf))
        self._inbuf.clear()

    def close_after(self, why: str, *, linger: bool = True) -> None:
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
        request._response = None  # a streamed response's stream and its request: no cycle left (see Request)
        try:
            if self.outbuf:
                await self.flush(trio.current_time() + self.limits.send_timeout)
            if self._state is SWITCHED:
                raise EndOfStream("HTTP/1.1: the connection switched protocols")
            if self._state is not DONE:
                self.close_after("the response was not completed", linger=False)
            if self._closing is None and not request._body._complete:
                if self._expect_100 and not self._sent_100:
                    self.close_after("the app answered without reading a 100-continue body")
                else:
                    await self._drain(request)
            if self._closing is not None:
                self._ended = EndOfStream(f"HTTP/1.1: closing the connection: {self._closing}")
                await self._shutdown_connection()
                return
            if not request._body._complete:  # pragma: no cover - a drained body is complete
                raise EndOfStream("HTTP/1.1: the request did not end cleanly")
            self._next_cycle()
        except StackError as exc:
            self._ended = exc if isinstance(exc, EndOfStream) else EndOfStream(str(exc))
            await self._shutdown_connection()

    def _ended_at_once(self) -> bool:
        """End the cycle of the current request here, without a coroutine, in the usual case (the
        response went out whole, the request body was read, nothing closes); False otherwise (then
        :meth:`_end_cycle` ends it)."""
        request = self._current
        assert request is not None
        if self._state is not DONE or self._closing is not None or self.outbuf or not request._body._complete:
            return False
        self._current = None
        if request._response is not None:  # (as _end_cycle)
            request._response = None
        self._next_cycle()
        return True

    def _next_cycle(self) -> None:
        """Ready for the next request (the response went out whole, the request body was read)."""
        trailing = self._engine.reset()
        if trailing:  # pipelined bytes read past the body: they are checked as a head again
            self._inbuf[:0] = trailing
        state = self._state
        self._state = IDLE if state is DONE else advance(state, NEXT_CYCLE)
        dog = self._watchdog
        self._idle_since = trio.current_time() if dog is None else dog.now()

    async def _drain(self, request: Request) -> None:
        """Read and discard a small unread rest of the request body, or decide to close."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_DRAIN:
            self.close_after("a large request body was not read")
            return
        total = 0
        body = request._body
        try:
            deadline = trio.current_time() + DRAIN_TIME
            while total <= MAX_DRAIN:
                chunk = body._pending or await self.read_body(body, deadline)
                body._pending = b""
                if not chunk:
                    return
                total += len(chunk)
        except (Timeout, ProtocolError, Broken):
            pass
        self.close_after("the request body was not read")

    async def _shutdown_connection(self) -> None:
        """Flush, then close: after an error, half-close first and read what the client still
        sends for up to :data:`LINGER` seconds, so it reads our response rather than a reset."""
        lower = self.lower
        try:
            await self.flush(trio.current_time() + self.limits.send_timeout)
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
        """Send a complete error response (whatever state the parser is in) and close."""
        log.info("refusing a request from %s with %d: %s", self.info.get("peer"), status, detail)
        self.outbuf += raw_response(status, detail)
        self._linger = True
        await self._shutdown_connection()

    async def _error_response(self, request: Request, status: int, detail: str) -> None:
        """Answer ``status``; the connection goes on only for a 500 to a request whose body was
        read. Bounded by ``limits.send_timeout``."""
        if status != 500 or not request._body._complete:
            self.close_after(detail)
        request.responded, request.status = True, status
        body = f"{status} {reason(status).decode()}: {detail}\n".encode()
        headers = Headers([(b"content-type", b"text/plain; charset=utf-8")])
        self._head(request, status, headers.raw, len(body))
        if not self._discard:
            self.outbuf += body
        self._state = advance(self._state, RESPOND)

    # ---- closing, detaching ------------------------------------------------------------------

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Flush what was committed (until ``deadline``, default 2 s) and close the connection
        and the stream below. Idempotent; never raises a StackError."""
        if self._state is CLOSED:
            return
        self._state = advance(self._state, CLOSE)
        if self._ended is None:
            self._ended = EndOfStream("HTTP/1.1 server connection closed")
        if deadline is None:
            deadline = trio.current_time() + 2.0
        try:
            if self.outbuf and not self._flushing:
                with trio.move_on_at(deadline):
                    await self.lower.send_from(self.outbuf, deadline=deadline)
        except StackError:
            pass
        finally:
            await self.lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Give the stream below back, read-ahead bytes pushed back into it.

        Possible between requests (nothing in progress) and after a protocol switch; otherwise a
        :class:`~stack.StackError` and nothing changes.
        """
        if self._state is CLOSED:
            raise Closed("HTTP/1.1 server connection was closed")
        if self._current is not None and self._state is SWITCHED:
            pass
        elif self._current is None and self._state is IDLE and self._ended is None:
            self._hand_over()
        else:
            raise StackError("cannot detach HTTP/1.1 in the middle of a request")
        await self.flush(deadline)
        self._state = advance(self._state, CLOSE)
        self._ended = EndOfStream("HTTP/1.1 server connection was detached")
        return self.lower
