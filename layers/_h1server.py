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

Two files: this one is the serve loop (``recv`` and ``serve``: waiting for the next head under
the limits, the run's watchdog and the shutdown event; running the app on each request and
answering its failures); ``_h1server_cycle.py`` is :class:`ServerCycle`, the base class, with
the connection's state and the cycle of one request (its body, its response, its end, closing
and detaching). ``ServerCycle`` and ``log`` are importable from here too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import FunctionType, MethodType

import trio

from layers import _http_model as http
from layers._h1core import (
    AWAIT_RESPONSE,
    CLOSED,
    DONE,
    IDLE,
    RECV,
    SEND_BODY,
    SWITCH,
    ReferenceEngine,
    Refused,
    ServerEngine,
    advance,
    extra_lines,
)
from layers._h1request import Request
from layers._h1server_cycle import ServerCycle, log
from layers._http_model import App, Limits
from stack.deadlines import FOREVER
from stack.errors import Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from stack.streams import ByteStream
from stack.watchdog import watchdog

__all__ = ["ServerConnection", "ServerCycle", "log"]


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


class ServerConnection(ServerCycle, http.ServerConnection):
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
        super().__init__(lower, limits, shutdown, engine)
        self._drainer: _Drainer | None = None  # the shutdown event's, once known
        self._waited_idle = False  # what the last watched wait was for (see _wait_timed_out)

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
            raise await self._refused(exc) from None

    async def _refused(self, exc: Refused) -> StackError:
        """Answer a refused head (the refusal's status) and close; the connection's end, to raise."""
        await self._refuse(exc.status, exc.detail)
        return self._end(ProtocolError(f"request refused with {exc.status}: {exc.detail}"))

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
                self.lower,
                request,
                settings,
                body,
                app,
                limits=limits,
                shutdown=shutdown,
                deadline=deadline,
                response_headers=extra,
            )
        except StackError as exc:
            log.debug("h2c upgrade from %s: %s", self.info.get("peer"), exc)
        return True

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
        if type(type(app).__call__) is FunctionType:  # an instance of a class with a Python __call__ (ASGIApp):
            app = MethodType(type(app).__call__, app)  # bound once, a request calls a method, not the instance
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
            # No more locals than these: every slot of this frame is held by every idle connection.
            with trio.CancelScope() as watch:
                while True:
                    got = None
                    if (  # _can_idle, inline (this is per request): the idle wait, in this frame
                        self._current is None
                        and self._ended is None
                        and not self._inbuf
                        and not self.lower.buffered
                        and (self._shutdown is None or not self._shutdown.is_set())
                    ):
                        drainer = self._arm(watch, self._idle_since + self.limits.keepalive_timeout, True)
                        try:
                            got = await self.lower.recv(RECV)
                        finally:
                            armed = self._watchdog.disarm(self)  # type: ignore[union-attr]  # set by _arm
                            if drainer is not None:
                                drainer.idle.discard(watch)
                        if not armed or (drainer is not None and drainer.fired):
                            break  # ``watch`` was cancelled just as the bytes came: timed out all the same
                        if got:  # the usual read, one whole head: parsed here (no _next_request coroutine)
                            got = self._inbuf.exact_head(got, self.limits.max_header_bytes)
                            if got is not None:
                                try:
                                    request = self._start_request(self._engine.parse_head(got))
                                except Refused as exc:
                                    return self._ended_by(await self._refused(exc))
                                except StackError as exc:  # (as _next_request's caller below)
                                    return self._ended_by(exc)
                                # _dispatch, inline (this is per request: no coroutine of its own)
                                if request._head.upgrade and self.scheme == "http" and await self._h2c(app, request):
                                    break
                                try:
                                    await app(request)
                                except Exception as exc:
                                    await self._app_failed(request, exc)
                                else:
                                    if not self._cycle_ended():
                                        await self._finish_cycle(request)
                                if self._ended is not None:
                                    break
                                del request
                                continue
                            # else appended to the read-ahead: _next_request goes on from there
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

    def _ended_by(self, exc: StackError) -> None:
        log.debug("connection from %s: %s", self.info.get("peer"), exc)

    async def _dispatch(self, app: App, request: Request) -> bool:
        """Run ``app`` on ``request`` (or hand the connection to HTTP/2 for an h2c upgrade); False
        once the connection ended. (The serve loop's usual path has this inline.)"""
        if request._head.upgrade and self.scheme == "http" and await self._h2c(app, request):
            return False
        try:
            await app(request)
        except Exception as exc:
            await self._app_failed(request, exc)
        else:
            if not self._cycle_ended():
                await self._finish_cycle(request)
        return self._ended is None

    def _cycle_ended(self) -> bool:
        """After the app: end the cycle here, without a coroutine, in the usual case (the response
        went out whole and was flushed, the request body was read, nothing closes); False when
        :meth:`_finish_cycle` must end it."""
        current = self._current
        if (
            current is None
            or self._state is not DONE
            or self._closing is not None
            or self.outbuf
            or not current._body._complete
        ):
            return False
        self._current = None  # _next_cycle, inline (the state is DONE: NEXT_CYCLE makes it IDLE)
        if current._response is not None:  # a streamed response's stream and its request: no cycle left
            current._response = None
        trailing = self._engine.reset()
        if trailing:  # pipelined bytes read past the body: they are checked as a head again
            self._inbuf[:0] = trailing
        self._state = IDLE
        dog = self._watchdog
        self._idle_since = trio.current_time() if dog is None else dog.now()
        return True

    async def _finish_cycle(self, request: Request) -> None:
        """After the app returned, when :meth:`_cycle_ended` could not end the cycle: a 500 for an
        app that did not respond, the end of a streamed response it left open, then the cycle's end."""
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
        if not self._cycle_ended():
            await self._end_cycle()

    async def _app_failed(self, request: Request, exc: Exception) -> None:
        """After the app raised: answer the failure (see :meth:`serve`), then the cycle's end."""
        await self._answer_failure(request, exc)
        if not self._cycle_ended():
            await self._end_cycle()

    async def _answer_failure(self, request: Request, exc: Exception) -> None:
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
