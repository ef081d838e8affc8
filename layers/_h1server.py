"""The HTTP/1.1 server connection: requests in, responses out, over a lower ByteStream.

Theory of operation. :class:`ServerConnection` does the I/O and the policy (limits, timeouts,
draining, closing, 100-continue, protocol switches, running an app); the meaning of the bytes
comes from the sans-io core (``_h1core.py``): the head is cut from the read-ahead by
:class:`~layers._h1core.HeadBuffer`, parsed and checked by the connection's engine (a
:class:`~layers._h1core.ServerEngine`, the reference one by default), the body decoded by the
same engine, responses framed by :class:`~layers._h1core.ResponseWriter`, and the cycle of a
request moves only through :func:`~layers._h1core.advance` on the state table.

A :class:`Request`, its body and its response stream reach their connection only through
:class:`RequestOwner`, a small named interface the connection implements.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import trio

from layers import _http_model as http
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
    Refused,
    ResponseWriter,
    ServerEngine,
    advance,
    extra_lines,
    raw_response,
    reason,
    switch_head,
)
from layers._h1request import Request, RequestBody, ResponseStream
from layers._http_model import App, HeaderInput, Headers, Limits
from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.streams import ByteStream
from stack.watchdog import Watchdog, watchdog

log = logging.getLogger("stack.http1")


class _Drainer:
    """One per shutdown event: once it is set, wakes every connection idling between requests.

    It runs as a trio *system* task (started the first time a connection with that event serves),
    so no connection needs a task of its own to notice a shutdown.
    """

    __slots__ = ("fired", "idle")

    def __init__(self) -> None:
        self.idle: set[trio.CancelScope] = set()
        self.fired = False  # every scope in ``idle`` then was cancelled

    async def run(self, event: trio.Event) -> None:
        await event.wait()
        self.fired = True
        for scope in list(self.idle):
            scope.cancel()


_drainers: weakref.WeakKeyDictionary[trio.Event, _Drainer] = weakref.WeakKeyDictionary()


def _drainer(event: trio.Event) -> _Drainer:
    d = _drainers.get(event)
    if d is None:
        d = _drainers[event] = _Drainer()
        trio.lowlevel.spawn_system_task(d.run, event, name="stack.http1 shutdown watcher")
    return d


class ServerConnection(H1Connection, ResponseWriter, http.ServerConnection):
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

    The engine (``engine``, a class of :class:`~layers._h1core.ServerEngine`; the reference, h11
    with our checks, by default) parses every request; responses are written by the core's
    :class:`~layers._h1core.ResponseWriter` (h11's writer validates each header twice and runs its
    state machine three times per response, which made it the most expensive step of a request):
    status line and fields checked (a field name must be a token, a value must hold no control
    character but tab), ``Content-Length`` set for a whole body, chunked encoding for a streamed
    one (close-delimited for an HTTP/1.0 client), no body for HEAD, 204 and 304,
    ``Connection: close`` whenever the connection will close after the response.

    ``detach()`` returns the stream below when no request is in progress (every byte read ahead is
    pushed back into it) or after a protocol switch.
    """

    http_version = "1.1"
    _response_headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(
        self,
        lower: ByteStream,
        limits: Limits,
        shutdown: trio.Event | None,
        engine: Callable[[int], ServerEngine] = ReferenceEngine,
        response_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        if response_headers:  # fields every response carries (the spec's, checked), also over h2c
            self._response_headers, self._extra_lines = response_headers, extra_lines(response_headers)
        self._engine: ServerEngine = engine(limits.max_header_bytes)
        super().__init__(lower, limits, self._engine.name)
        self._shutdown = shutdown
        self._drainer: _Drainer | None = None  # the shutdown event's, once known
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
        self._waited_idle = False  # what the last watched wait was for (see _wait_timed_out)
        self._watchdog: Watchdog | None = None  # the run's, once serve() waited

    def __repr__(self) -> str:
        return f"<http1.ServerConnection {self.info.get('peer')} requests={self._requests}>"

    # ---- receiving requests ------------------------------------------------------------------

    async def recv(self, *, deadline: float = FOREVER) -> Request:
        """The next request, once its head has arrived (see the class docstring for the ends).

        Waiting is bounded by the limits as well as ``deadline``: the first head must be complete
        ``header_timeout`` after attach, a later one ``header_timeout`` after its first byte,
        which must come within ``keepalive_timeout`` of the previous response.
        """
        if self._state is CLOSED:
            raise Closed("HTTP/1.1 server connection was closed")
        request = await self._next_request(deadline)
        if request is None:
            assert self._ended is not None
            raise type(self._ended)(str(self._ended))
        return request

    async def _next_request(
        self, deadline: float = FOREVER, watch: trio.CancelScope | None = None, got: bytes | None = None
    ) -> Request | None:
        """:meth:`recv`, returning None where the connection ended cleanly (``self._ended`` says
        why): the normal end of a connection raises nothing.

        ``watch``: the scope :meth:`serve` runs the connection in. The limits are then kept by the
        run's :class:`~stack.watchdog.Watchdog` (no cancel scope per wait): past its limit the
        wait is cancelled with ``watch``, and :meth:`serve` ends the connection as a timed-out
        wait does here (``self._waited_idle`` says which limit it was). ``got``: what :meth:`serve`
        received while the connection idled (it waits in its own frame: see :meth:`_idle_wait`)."""
        if self._current is not None and not self._ended_at_once():
            await self._end_cycle()
        if self._ended is not None:
            return None
        lower = self.lower
        limits = self.limits
        shutdown = self._shutdown
        inbuf = self._inbuf
        try:
            if got is not None:
                if not got:
                    self._ended = EndOfStream("the client closed the connection")
                    return None
                head = inbuf.exact_head(got, limits.max_header_bytes)
                if head is not None:  # the usual read: one whole head, no copy
                    return self._start_request(self._engine.parse_head(head))
            while True:  # one frame for the whole wait: an idle connection holds little
                if inbuf:
                    head = inbuf.take_head(limits.max_header_bytes)
                    if head is not None:
                        self._head_started = None
                        return self._start_request(self._engine.parse_head(head))
                idle = not inbuf
                if not idle and self._head_started is None:
                    self._head_started = trio.current_time()
                if idle and shutdown is not None and shutdown.is_set():
                    self._ended = EndOfStream("HTTP/1.1: the server is shutting down")
                    return None
                if lower.buffered:  # bytes pushed back below (a sniffed preface): no need to wait
                    inbuf += await lower.recv(RECV)
                    continue
                if self._requests == 0:
                    policy = self._idle_since + limits.header_timeout  # since attach
                elif self._head_started is not None:
                    policy = self._head_started + limits.header_timeout
                else:
                    policy = self._idle_since + limits.keepalive_timeout
                if watch is not None and deadline == FOREVER:  # no frame of its own: an idle connection holds this
                    drainer = self._arm(watch, policy, idle)
                    try:
                        got = await lower.recv(RECV)
                    finally:
                        armed = self._watchdog.disarm(self)  # type: ignore[union-attr]  # set by _arm
                        if drainer is not None:
                            drainer.idle.discard(watch)
                    if not armed or (drainer is not None and drainer.fired):
                        return None  # ``watch`` was cancelled just as the bytes came: timed out all the same
                    if not got:
                        if inbuf:
                            raise self._end(ProtocolError("the client closed the connection in a request head"))
                        self._ended = EndOfStream("the client closed the connection")
                        return None
                    head = inbuf.exact_head(got, limits.max_header_bytes)
                    if head is not None:  # the usual read: one whole head, no copy
                        self._head_started = None
                        return self._start_request(self._engine.parse_head(head))
                    continue
                data = None
                with trio.move_on_at(min(policy, deadline)) as scope:
                    if idle and shutdown is not None:
                        waiting = (self._drainer or self._find_drainer(shutdown)).idle
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
                    raise Refused(408, f"request head not complete within {limits.header_timeout:g}s")
                if not data:
                    if inbuf:
                        raise self._end(ProtocolError("the client closed the connection in a request head"))
                    self._ended = EndOfStream("the client closed the connection")
                    return None
                head = inbuf.exact_head(data, limits.max_header_bytes)
                if head is not None:
                    self._head_started = None
                    return self._start_request(self._engine.parse_head(head))
        except Refused as exc:
            await self._refuse(exc.status, exc.detail)
            raise self._end(ProtocolError(f"request refused with {exc.status}: {exc.detail}")) from None

    def _find_drainer(self, shutdown: trio.Event) -> _Drainer:
        self._drainer = _drainer(shutdown)
        return self._drainer

    def _arm(self, watch: trio.CancelScope, policy: float, idle: bool) -> _Drainer | None:
        """Before a wait under the watchdog (see :meth:`_next_request`): arm it for ``policy`` and,
        idle under a shutdown event, let the drainer cancel ``watch`` too (the drainer is returned:
        ``watch`` is in its ``idle`` set)."""
        dog = self._watchdog
        if dog is None:
            dog = self._watchdog = watchdog()
        limits = self.limits
        dog.arm(self, policy, watch, (limits.header_timeout if not idle else limits.keepalive_timeout) / 8)
        self._waited_idle = idle
        shutdown = self._shutdown
        if not idle or shutdown is None:
            return None
        drainer = self._drainer or self._find_drainer(shutdown)
        drainer.idle.add(watch)
        return drainer

    async def _wait_timed_out(self) -> None:
        """The end of a connection whose wait :meth:`serve`'s watchdog cancelled (outside its scope)."""
        shutdown = self._shutdown
        if self._waited_idle:
            if shutdown is not None and shutdown.is_set():
                self._ended = EndOfStream("HTTP/1.1: the server is shutting down")
                return
            what = "before a first request" if self._requests == 0 else "idle"
            log.debug("closing the connection from %s: %s for too long", self.info.get("peer"), what)
            self._ended = EndOfStream(f"HTTP/1.1: connection {what} for too long")
            return
        detail = f"request head not complete within {self.limits.header_timeout:g}s"
        await self._refuse(408, detail)
        self._ended = ProtocolError(f"request refused with 408: {detail}")

    def _end(self, exc: StackError) -> StackError:
        self._ended = exc
        return exc

    def _start_request(self, head: ParsedHead) -> Request:
        self._state = advance(self._state, REQUEST)
        self._expect_100 = head.expect_100
        self._sent_100 = False
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), and the engine is
        # not asked for the end it would report: the end of the request body is
        # ``body._complete``. A zero Content-Length ends here too.
        body = RequestBody(self, not head.chunked and not head.content_length)
        request = Request(self, head, body)
        body._request = request
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
                if body._request is not None and got:
                    body._request.trailers = Headers(got)
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
        self._check_current(request)
        self._head(request, status, headers, len(body))
        if body and not self._discard:
            self.outbuf += body
        self._state = advance(self._state, RESPOND)
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

    async def _h2c(self, app: App, request: Request) -> bool:
        """Serve HTTP/2 on this connection if ``request`` asks for ``Upgrade: h2c`` (RFC 7540 3.2)
        properly; True once that connection is over. False (serve the request over HTTP/1.1, the
        Upgrade ignored) for a malformed ask or a body that is chunked or over
        ``limits.stream_window``: the whole body is read first, as stream 1's."""
        from layers import http2  # only connections that upgrade need h2

        settings = http2.h2c_settings(request.headers)
        length = int(request.headers.get("content-length") or 0)  # digits: checked by the engine
        if settings is None or "transfer-encoding" in request.headers or length > self.limits.stream_window:
            return False
        deadline = trio.current_time() + self.limits.header_timeout
        try:
            body = await request.read(deadline=deadline)
            self._state = advance(self._state, SWITCH)
            self._hand_over()
            self._ended = EndOfStream("HTTP/1.1: the connection switched to HTTP/2 (h2c)")
            limits, shutdown, extra = self.limits, self._shutdown, self._response_headers
            await http2.serve_h2c_upgrade(
                self.lower, request, settings, body, app, limits=limits, shutdown=shutdown, deadline=deadline,
                response_headers=extra,
            )
        except StackError as exc:
            log.debug("h2c upgrade from %s: %s", self.info.get("peer"), exc)
        return True

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
        self._next_cycle()
        return True

    def _next_cycle(self) -> None:
        """Ready for the next request (the response went out whole, the request body was read)."""
        trailing = self._engine.reset()
        if trailing:  # pipelined bytes read past the body: they are checked as a head again
            self._inbuf[:0] = trailing
        self._state = advance(self._state, NEXT_CYCLE)
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
        watch: trio.CancelScope | None = None
        try:
            # The first request needs no scope (with deferred accept its head is already here; if
            # not, the wait gets one); a connection kept alive then runs in one scope, which the
            # watchdog cancels when a wait for the next head passes its limit. The waits are in
            # this frame, not in a helper's: an idle connection holds one frame less.
            try:
                request = await self._next_request(FOREVER, None)
            except StackError as exc:
                return self._ended_by(exc)
            if request is None or not await self._dispatch(app, request):
                return
            del request  # an idle connection keeps nothing of the last request
            with trio.CancelScope() as watch:
                while True:
                    got = None
                    if self._can_idle():  # the idle wait, in this frame: an idle connection holds no other
                        drainer = self._arm(watch, self._idle_since + self.limits.keepalive_timeout, True)
                        try:
                            got = await self.lower.recv(RECV)
                        finally:
                            armed = self._watchdog.disarm(self)  # type: ignore[union-attr]  # set by _arm
                            if drainer is not None:
                                drainer.idle.discard(watch)
                        if not armed or (drainer is not None and drainer.fired):
                            break  # ``watch`` was cancelled just as the bytes came: timed out all the same
                    try:
                        request = await self._next_request(FOREVER, watch, got)
                    except StackError as exc:
                        return self._ended_by(exc)
                    if request is None or not await self._dispatch(app, request):
                        break
                    del request
            if watch.cancel_called and self._ended is None:
                await self._wait_timed_out()
        finally:
            if self._state is not CLOSED:
                with trio.CancelScope(shield=True):
                    await self.aclose(deadline=trio.current_time() + 1.0)

    def _can_idle(self) -> bool:
        """Whether :meth:`serve` waits for the next request itself: the last one is over, nothing
        is buffered (here or below), the connection goes on and the server is not shutting down."""
        shutdown = self._shutdown
        return (
            self._current is None
            and self._ended is None
            and not self._inbuf
            and not self.lower.buffered
            and (shutdown is None or not shutdown.is_set())
        )

    def _ended_by(self, exc: StackError) -> None:
        log.debug("connection from %s: %s", self.info.get("peer"), exc)

    async def _dispatch(self, app: App, request: Request) -> bool:
        """Run ``app`` on ``request`` (or hand the connection to HTTP/2 for an h2c upgrade); False
        once the connection ended."""
        if request._head.upgrade and self.scheme == "http" and await self._h2c(app, request):
            return False
        try:
            await app(request)
        except Exception as exc:
            await self._app_failed(request, exc)
        else:
            if self._state is AWAIT_RESPONSE:
                log.error("app returned without responding to %r from %s", request, self.info.get("peer"))
                await self._error_response(request, 500, "the application did not respond")
            elif self._state is SEND_BODY:
                stream = request._response
                if stream is not None and stream._closed is None and stream.broken is None:
                    try:
                        await stream.done(deadline=trio.current_time() + self.limits.send_timeout)
                    except (StackError, ValueError) as exc:
                        self.close_after(f"ending the response failed: {exc}", linger=False)
                else:
                    self.close_after("the response was not ended", linger=False)
        if not self._ended_at_once():
            await self._end_cycle()
        return self._ended is None

    async def _app_failed(self, request: Request, exc: Exception) -> None:
        peer = self.info.get("peer")
        if isinstance(exc, MessageTooLarge):
            log.info("request %r from %s: %s (413)", request, peer, exc)
            status, detail = 413, "request body too large"
        elif isinstance(exc, ProtocolError) and self._closing is not None:
            log.info("request %r from %s: %s (400)", request, peer, exc)
            status, detail = 400, "malformed request body"
        elif isinstance(exc, StackError) and self.lower.broken is not None:
            log.debug("request %r from %s: the connection failed: %s", request, peer, exc)
            self.close_after("the connection failed", linger=False)
            return
        else:
            log.error("app failed on %r from %s", request, peer, exc_info=exc)
            status, detail = 500, "internal server error"
        if self._state is AWAIT_RESPONSE:
            request.responded, request.status = True, status
            await self._error_response(request, status, detail)
        else:
            self.close_after("the app failed after its response started", linger=False)

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
