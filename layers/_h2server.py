"""The server side of an HTTP/2 connection, and the h2c hand-off from HTTP/1.1.

:class:`H2ServerConnection` adds to the shared base (``_h2conn.py``) what only a server does:

* **request dispatch**: a HEADERS block that opens a stream becomes an
  :class:`~layers._h2stream.H2Request` (``_on_request`` checks it and the defences first) and is
  *admitted*: handed to the app (``serve(app)``) or queued for :meth:`H2ServerConnection.recv`.
* **the batching of apps** (CONTRIBUTING, "The requests of one read share a task"): the requests
  admitted by one read share a task; each app call is stepped by hand (``_run_batch``,
  :class:`_Resume`), the first one that suspends keeps the task and each of the rest gets a task
  of its own in the same scheduling round (their answers then leave in one write), each app in
  its own copy of the context. Such a task, once its app returned, waits to be handed the next
  request that needs one (``_worker``, ``_hand_over``) instead of exiting.
* **defences**: REFUSED_STREAM past ``max_concurrent_streams`` (counting handlers still running),
  and GOAWAY ENHANCE_YOUR_CALM once more than ``rapid_reset_limit`` streams were refused in
  ``flood_period`` (a stream flood: the rest of the burst is never processed), rapid-reset
  counting, the idle timeout (``_recv_deadline`` / ``_on_idle``).
* **shutdown**: the two-step GOAWAY of :meth:`H2ServerConnection.graceful_shutdown` and the
  drain; what an app left unfinished is completed in ``_after_app`` (500, END_STREAM or a reset).

:func:`serve_h2c_upgrade` answers an HTTP/1.1 ``Upgrade: h2c`` with 101 and serves HTTP/2 on the
same connection, the upgrading request being stream 1 (:func:`~layers._h2core.h2c_settings`
checks the request first).
"""

from __future__ import annotations

import base64
import contextvars
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, ClassVar

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import outcome
import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, EndOfStream, ProtocolError, StackError, Timeout
from stack.streams import ByteStream

from ._h2conn import RECV_SIZE, H2ConnectionBase, _Calm, _Rate
from ._h2core import Malformed, ProtocolViolation, check_fields, check_request_pseudo, error_name
from ._h2stream import _EMPTY, H2Request, H2Stream, _headers
from ._http_model import DEFAULT_LIMITS, App, Limits, Request, ServerConnection, small_fields

__all__ = ["PING_WAIT", "H2ServerConnection", "serve_h2c_upgrade"]

log = logging.getLogger("stack.http2")

PING_WAIT = 5.0
"""Longest wait for the PING round trip between the two GOAWAYs of a graceful shutdown."""

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
_MAX_STREAM_ID = 2**31 - 1
_SC = h2.settings.SettingCodes
_REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path", b":protocol"])
_HEAD_CACHE = 64
"""Request heads remembered per connection, checked and decoded (see ``_make_request``)."""
_DIRECT_RUN = 64
"""Requests admitted straight into a task of their own once an app of a batch suspended (then
a batch probes again: see ``_run_batch``)."""
_IDLE_WORKERS = 32
"""Stream tasks a connection keeps waiting for the next request once theirs is done (see ``_worker``)."""
_Head = tuple[str, str, tuple[tuple[bytes, bytes], ...], str, str, str | None]
_Value = outcome.Value
_reschedule = trio.lowlevel.reschedule


class _Resume:
    """Awaiting it carries on a coroutine that was started by hand and suspended on ``trap``
    (what it yielded to trio): the current task becomes the one running it."""

    __slots__ = ("_context", "_coro", "_trap")

    def __init__(self, coro: Coroutine[Any, Any, None], trap: Any, context: contextvars.Context) -> None:
        self._coro = coro
        self._trap = trap
        self._context = context

    def __await__(self) -> Generator[Any, Any, None]:
        coro = self._coro
        trap = self._trap
        run = self._context.run
        del self._coro, self._trap, self._context
        while True:
            try:
                value = yield trap
            except BaseException as exc:
                try:
                    trap = run(coro.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    trap = run(coro.send, value)
                except StopIteration:
                    return


_NO_LOT = trio.lowlevel.ParkingLot()  # stands in until recv() mode makes a real one (nothing parks on it)


class H2ServerConnection(H2ConnectionBase, ServerConnection):
    """The server side of an HTTP/2 connection (see the module docstring).

    ``await conn.serve(app)`` runs until the connection ends (the peer closes, a protocol error,
    an idle timeout, a graceful shutdown), with ``app(request)`` running concurrently for each
    stream; an app that raises gets its stream reset (500 if it had not responded yet), an app
    that returns without responding gets 500, one that returns mid-body gets its body ended.
    When the connection is lost, apps still running are cancelled (after ``drain_timeout`` if
    the peer only closed its side). ``recv()`` / ``async for request in conn`` work inside
    ``async with conn:`` (or ``nursery.start(conn.run)``) instead. ``graceful_shutdown()``
    starts the two-step GOAWAY by hand. ``response_headers``: fields every final response
    carries after the app's (wire pairs, checked by the spec: :func:`layers._http_model.response_fields`).
    """

    is_server = True
    http_version = "2"
    _EVENTS: ClassVar[dict[type, str]] = {**H2ConnectionBase._EVENTS, h2.events.RequestReceived: "_on_request"}

    def __init__(
        self,
        lower: ByteStream,
        limits: Limits = DEFAULT_LIMITS,
        shutdown: trio.Event | None = None,
        *,
        enable_connect_protocol: bool = True,
        response_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        settings = {
            _SC.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            _SC.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            _SC.INITIAL_WINDOW_SIZE: limits.stream_window,
            _SC.MAX_FRAME_SIZE: limits.max_frame_size,
            _SC.ENABLE_CONNECT_PROTOCOL: int(enable_connect_protocol),
        }
        super().__init__(lower, limits, settings)
        self._shutdown = shutdown
        self._response_headers = response_headers  # fields every response carries (checked by the spec)
        self._app: App | None = None
        self._queue: deque[H2Request] | None = None  # recv() mode only
        self._queue_lot = _NO_LOT
        self._active = 0
        self._accepted = 0  # highest stream id handed to the application
        self._closing = False  # GOAWAY (final) sent or received: no new streams
        self._eof = False
        self._idle_since = trio.current_time()
        self._reset_rate = _Rate(limits.rapid_reset_limit, limits.flood_period)
        self._refused_rate = _Rate(limits.rapid_reset_limit, limits.flood_period)
        self._upgrade_request: H2Request | None = None
        self._batch: deque[H2Request] | None = None  # admitted, for a batch task not started yet
        self._heads: dict[tuple[Any, ...], _Head] = {}  # request heads seen, checked (_make_request)
        self._direct = 0  # requests still to start in a task of their own (an app suspended)
        # stream tasks waiting for a request, each with the context it started in (_worker)
        self._workers: list[tuple[trio.lowlevel.Task, contextvars.Context]] = []

    # ---- handshake -------------------------------------------------------------------------

    async def handshake(self, deadline: float, *, upgrade_settings: bytes | None = None, prefix: bytes = b"") -> None:
        """Send our SETTINGS (and connection window), then read until the client's SETTINGS."""
        core = self.core
        self._initiate(upgrade_settings)
        out = bytearray(prefix)
        core.take_output(out)
        await self.lower.send_from(out, deadline=deadline)
        events: list[h2.events.Event] = []
        while not events:
            if core.more_input:
                data = b""
            else:
                data = await self.lower.recv(RECV_SIZE, deadline=deadline)
                if not data:
                    raise Broken("HTTP/2: the client closed the connection before its preface")
            try:
                events = core.receive_step(data)  # the rest of a burst waits for the reader
            except ProtocolViolation as exc:
                await self._flush_direct(trio.current_time() + 1.0)
                raise ProtocolError(f"HTTP/2: bad client preface: {exc}") from None
        if not isinstance(events[0], h2.events.RemoteSettingsChanged):
            self._goaway(_PROTOCOL_ERROR, b"the preface must be followed by SETTINGS")
            await self._flush_direct(trio.current_time() + 1.0)
            raise ProtocolError("HTTP/2: the client preface was not followed by a SETTINGS frame")
        self._pending_events = events

    # ---- running ---------------------------------------------------------------------------

    async def serve(self, app: App) -> None:
        """Run ``app(request)`` for every stream, concurrently, until the connection ends
        (:meth:`run` with an app: without one, requests wait for :meth:`recv`)."""
        if self._nursery is None:
            self._app = app
        await self.run()

    def _started(self, nursery: trio.Nursery) -> None:
        if self._app is None:  # recv() mode
            self._queue = deque()
            self._queue_lot = trio.lowlevel.ParkingLot()
        if self._shutdown is not None:
            nursery.start_soon(self._watch_shutdown, self._shutdown)
        if self._upgrade_request is not None:
            self._admit(self._upgrade_request)
            self._upgrade_request = None
        self._update_idle()

    def _stopped(self) -> None:
        self._queue_lot.unpark_all()

    async def recv(self, *, deadline: float = FOREVER) -> Request:
        """The next request (inside ``async with conn:`` / ``run``); EndOfStream once the
        connection is over and every received request was taken. On deadline: Timeout."""
        if self._app is not None:
            raise Busy("serve(app) is handling this connection's requests")
        if self._nursery is None and not self._finished.is_set():
            self._check_running()
        with trio.move_on_at(deadline) as scope:
            while not self._queue:
                if self._finished.is_set() or self._closing or self._failure is not None:
                    raise EndOfStream("HTTP/2 connection: no more requests")
                await self._queue_lot.park()
            return self._queue.popleft()
        assert scope.cancelled_caught
        raise Timeout("HTTP/2 recv: no request before the deadline")

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """HTTP/1.1's ``detach`` (give the stream below back), which HTTP/2 never allows: the
        streams of a connection share the stream below, and no request can take it over (a
        tunnel is a stream of its own: CONNECT). Always raises :class:`~stack.StackError` and
        changes nothing; ``aclose`` ends the connection."""
        await trio.lowlevel.checkpoint()
        raise StackError("an HTTP/2 connection cannot be detached: its streams share the stream below")

    # ---- idle and shutdown -----------------------------------------------------------------

    def _recv_deadline(self) -> float:
        if self._active or self._streams:
            return FOREVER
        return self._idle_since + self.limits.idle_timeout

    def _update_idle(self) -> None:
        if not self._active and not self._streams:
            self._idle_since = trio.current_time()
            scope = self._recv_scope
            if scope is not None:
                scope.deadline = self._recv_deadline()

    def _on_idle(self) -> bool:
        if self._active or self._streams:  # pragma: no cover - the deadline is FOREVER then
            return False
        log.info("%s: HTTP/2 connection idle for %gs: closing", self.info.get("peer"), self.limits.idle_timeout)
        self._closing = True
        self._finish()
        return True

    async def _watch_shutdown(self, event: trio.Event) -> None:
        await event.wait()
        await self.graceful_shutdown()

    async def graceful_shutdown(self) -> None:
        """The two-step GOAWAY (RFC 9113 6.8): GOAWAY(2^31-1), a PING round trip, GOAWAY(last
        accepted stream); streams in flight get ``Limits.drain_timeout`` seconds, then the
        connection closes. Returns when it is over (or at once if it already is)."""
        if self._goaway_sent or self._failure is not None or self._nursery is None:
            return
        drain_end = trio.current_time() + self.limits.drain_timeout
        core = self.core
        core.close_connection(_NO_ERROR, last_stream_id=_MAX_STREAM_ID)
        self._goaway_sent = True
        self.wake_writer()
        try:
            await self.ping(deadline=min(drain_end, trio.current_time() + PING_WAIT))
        except StackError as exc:
            log.debug("graceful shutdown: PING: %s", exc)
        if self._failure is not None:
            return
        self._closing = True
        core.close_connection(_NO_ERROR, last_stream_id=self._accepted)
        self.wake_writer()
        self._queue_lot.unpark_all()
        log.debug(
            "%s: GOAWAY sent (last stream %d); draining %d stream(s)",
            self.info.get("peer"),
            self._accepted,
            self._active,
        )
        self._maybe_done()
        with trio.move_on_at(drain_end):
            await self._finished.wait()
        if not self._finished.is_set():
            log.info(
                "%s: drain_timeout passed with %d stream(s) in flight: closing", self.info.get("peer"), self._active
            )
        self._finish()

    def _maybe_done(self) -> None:
        if (self._closing or self._eof) and not self._active and not self._queue:
            self._finish()

    def _on_eof(self) -> None:
        self._eof = True
        for stream in list(self._streams.values()):
            if not stream._in_ended:
                stream._on_reset(Broken("HTTP/2 connection: the client closed its side mid-request"))
        if not self._active:
            self._finish()
        elif self._nursery is not None:
            self._nursery.start_soon(self._drain_timer)

    async def _drain_timer(self) -> None:
        await trio.sleep(self.limits.drain_timeout)
        self._finish()

    def _on_goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        if ev.error_code:
            log.info(
                "%s: client sent GOAWAY %s: %r", self.info.get("peer"), error_name(ev.error_code), ev.additional_data
            )
        self._closing = True
        self._queue_lot.unpark_all()
        self._maybe_done()

    def _last_stream_id(self) -> int:
        return self._accepted

    # ---- requests --------------------------------------------------------------------------

    def _on_stream_reset(self, ev: h2.events.StreamReset) -> None:
        if ev.remote_reset and self._reset_rate.hit():
            raise _Calm(
                f"rapid reset: more than {self.limits.rapid_reset_limit} streams reset by the "
                f"client in {self.limits.flood_period:g}s"
            )
        super()._on_stream_reset(ev)

    def _stream_released(self, stream: H2Stream) -> None:
        if self._app is None:
            self._active -= 1
            self._update_idle()
            self._maybe_done()

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        core = self.core
        if not core.stream_is_open(sid):
            return  # the client reset it in the same read: nothing to do (rapid reset counts it)
        if self._closing or self._failure is not None:
            core.reset_stream(sid, _REFUSED_STREAM)
            return
        if self._active >= self.limits.max_concurrent_streams:
            log.debug("%s: stream %d refused: %d streams active", self.info.get("peer"), sid, self._active)
            core.reset_stream(sid, _REFUSED_STREAM)
            self._refused("past max_concurrent_streams")
            return
        request = self._make_request(sid, ev.headers)
        if request is None:
            core.reset_stream(sid, _PROTOCOL_ERROR)
            self._refused("malformed")
            return
        self._admit(request)

    def _refused(self, why: str) -> None:
        """A stream was refused (over the limit, or malformed: each costs us its decoding and a
        RST_STREAM, CVE-2019-9514): more than ``rapid_reset_limit`` in ``flood_period`` is a
        flood, which ends the connection (GOAWAY ENHANCE_YOUR_CALM)."""
        if self._refused_rate.hit():
            raise _Calm(
                f"stream flood: more than {self.limits.rapid_reset_limit} streams refused in "
                f"{self.limits.flood_period:g}s (the last one {why})"
            )

    def _make_request(self, sid: int, raw: Any) -> H2Request | None:
        """The request of a HEADERS block, or None (after RST_STREAM PROTOCOL_ERROR) if it is
        malformed (RFC 9113 8.1.1). A head already seen on this connection (a client repeats
        its requests' fields) is not checked and decoded again: its parts are remembered (at
        most ``_HEAD_CACHE``, each of at most ``REMEMBERED_FIELDS_MAX`` bytes, never one with
        ``:protocol``, whose check reads the settings)."""
        key = tuple(raw)
        head = self._heads.get(key)
        if head is None:
            head = self._parse_head(sid, raw)
            if head is None:
                return None
            if head[5] is None and len(self._heads) < _HEAD_CACHE and small_fields(key):
                self._heads[key] = head
        method, target, regular, scheme, authority, protocol = head
        stream = H2Stream(self, sid, can_send=False)
        request = H2Request(
            stream,
            method,
            target,
            _headers(list(regular)),  # the application's own list
            scheme=scheme,
            authority=authority,
            limits=self.limits,
        )
        if protocol is not None:
            request.protocol = protocol
        if self._response_headers:
            request._extra_fields = self._response_headers
        return request

    def _parse_head(self, sid: int, raw: Any) -> _Head | None:
        """A request head checked and decoded: ``(method, target, regular fields, scheme,
        authority, protocol)``, or None (logged) if it is malformed."""
        try:
            pseudo, regular = check_fields(raw, _REQUEST_PSEUDO)
            check_request_pseudo(pseudo, regular)
            protocol = pseudo.get(b":protocol")
            if protocol is not None and not self.core.advertised.get(_SC.ENABLE_CONNECT_PROTOCOL):
                raise Malformed(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
        except Malformed as exc:
            log.info("%s: malformed request on stream %d: %s", self.info.get("peer"), sid, exc)
            return None
        method = pseudo[b":method"].decode("latin-1")
        authority = pseudo.get(b":authority", b"")
        if method == "CONNECT" and protocol is None:
            target = authority.decode("latin-1")
        else:
            target = pseudo[b":path"].decode("latin-1")
        return (
            method,
            target,
            tuple(regular),
            pseudo.get(b":scheme", b"http").decode("latin-1"),
            authority.decode("latin-1"),
            None if protocol is None else protocol.decode("latin-1"),
        )

    def _admit(self, request: H2Request) -> None:
        stream = request._stream
        sid = stream.stream_id
        self._streams[sid] = stream
        if sid > self._accepted:
            self._accepted = sid
        self._active += 1
        app = self._app
        nursery = self._nursery
        if app is not None and nursery is not None:
            if self._direct:  # an app suspended lately: a task of its own, run in the next round
                self._direct -= 1
                if self._workers:  # one that finished its request and waits for the next
                    self._hand_over(request)
                else:
                    nursery.start_soon(self._worker, app, request, name="h2 stream")
                self._kicked += 1
            else:
                batch = self._batch
                if batch is None:
                    batch = self._batch = deque()
                    nursery.start_soon(self._run_batch, app, batch, name=f"h2 streams from {sid}")
                    self._kicked += 1
                batch.append(request)
        else:
            assert self._queue is not None  # recv() mode: run() made it
            self._queue.append(request)
            self._queue_lot.unpark_all()
        if self.core.stream_is_open(sid) is False:  # pragma: no cover - reset in the same batch
            self.release_if_done(stream)

    async def _run_batch(self, app: App, batch: deque[H2Request]) -> None:
        """Run the app for the requests of ``batch``, each as if in a task of its own.

        A task per stream costs more than a small request itself (spawn, a scheduling round,
        exit), and most apps answer a small request without ever suspending. So the requests
        admitted in one read share a task: each app call is stepped by hand, and one that
        finishes without suspending costs no task at all. The first one that suspends (or
        raises through, e.g. Cancelled) keeps this task for itself, and every other request of
        the batch gets a task of its own at once (``_handle_request`` itself, no wrapper): an
        app that awaits (a proxy waiting for its backend) most likely awaits for the next
        request too, and started in the same scheduling round, their answers come back in the
        same round and leave in one write (handed on as one batch, each app would start a round
        after the previous one, and each answer cost a send of its own). Each app runs in a
        copy of the context, as in a task of its own (context variables it sets do not leak to
        the next request).
        """
        if self._batch is batch:
            self._batch = None  # requests admitted from now on start a new batch
        while batch:
            coro = self._handle_request(app, batch.popleft())
            context = contextvars.copy_context()  # as a task of its own would have
            try:
                trap = context.run(coro.send, None)
            except StopIteration:
                continue
            except BaseException:
                self._spawn_each(app, batch)
                raise
            self._spawn_each(app, batch)
            self._direct = _DIRECT_RUN
            await _Resume(coro, trap, context)
            return

    def _spawn_each(self, app: App, batch: deque[H2Request]) -> None:
        """A task for each request of ``batch`` (emptied), started in this scheduling round."""
        nursery = self._nursery
        if nursery is not None:
            start = nursery.start_soon
            worker = self._worker
            workers = self._workers
            while batch:
                if workers:
                    self._hand_over(batch.popleft())
                else:
                    start(worker, app, batch.popleft(), name="h2 stream")

    async def _worker(self, app: App, request: H2Request) -> None:
        """A stream task: run the app for ``request``, then, instead of exiting, wait (at most
        :data:`_IDLE_WORKERS` of them per connection) for ``_admit`` to hand it the next request
        that needs a task of its own (:meth:`_hand_over`: no new task and no task exit, which
        cost more than the hand-over). Each request runs in a fresh copy of the context the task
        started in, as in a task of its own: context variables an app sets never reach the next
        request. Cancelled while waiting (the connection ends), it leaves the list and exits."""
        entry = (trio.lowlevel.current_task(), contextvars.copy_context())  # (the context untouched)
        workers = self._workers

        def abort(_: Any) -> trio.lowlevel.Abort:
            for i, waiting in enumerate(workers):
                if waiting is entry:
                    del workers[i]
                    break
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await self._handle_request(app, request)
            del request  # (nothing of a finished request stays referenced by a waiting worker)
            if len(workers) >= _IDLE_WORKERS or self._closing or self._failure is not None or self._eof:
                return
            workers.append(entry)
            request = await trio.lowlevel.wait_task_rescheduled(abort)

    def _hand_over(self, request: H2Request) -> None:
        """Hand ``request`` to a waiting :meth:`_worker` (the last one to wait): it runs it in
        the next scheduling round, in a fresh copy of its starting context. trio steps a task
        in the context its ``context`` attribute holds at that step, so the copy takes effect
        at the worker's very next step, before the app runs."""
        task, context = self._workers.pop()
        task.context = context.copy()
        _reschedule(task, _Value(request))

    async def _handle_request(self, app: App, request: H2Request) -> None:
        failed: BaseException | None = None
        try:
            await app(request)
        except StackError as exc:
            failed = exc
            log.debug("%r: %s", request, exc)
        except Exception as exc:
            failed = exc
            log.exception("the app failed on %r", request)
        except BaseException as exc:  # Cancelled
            failed = exc
            raise
        finally:
            self._after_app(request, failed)

    def _after_app(self, request: H2Request, failed: BaseException | None) -> None:
        """Finish what the app left (synchronously: it may run during cancellation)."""
        stream = request._stream
        try:
            if not stream._released and stream._error() is None and self._failure is None:
                core = self.core
                sid = stream.stream_id
                if not request.responded or not stream._can_send:  # no head went out
                    if failed is None:
                        log.error("the app returned without responding to %r: 500", request)
                    request.responded = True
                    request.status = 500
                    fields = request._head(500, _EMPTY, 0)
                    core.send_headers(sid, fields, end_stream=True)
                    stream._local_ended = True
                elif not stream._local_ended and not stream._discard_body:
                    if failed is None:
                        core.end_stream(sid)
                        stream._local_ended = True
                    else:
                        self.reset_stream(stream, _INTERNAL_ERROR, None)
                if not stream._released and core.stream_is_open(sid):
                    # the response is complete; the client is still sending: stop the upload
                    self.reset_stream(stream, _NO_ERROR, None)
                self.wake_writer()
        except h2.exceptions.ProtocolError as exc:  # pragma: no cover - defensive
            log.debug("finishing %r: %s", request, exc)
        finally:
            if stream._closed is None:
                stream._closed = "closed"
            if stream._in or not stream._released:  # (release would do nothing else)
                self.release(stream)
            if stream._rd is not None or stream._wr is not None or stream._head is not None:
                stream._wake()  # a task still waits on the stream (nothing to wake otherwise)
            self._active -= 1
            if not self._active:  # (both do nothing while a stream is active)
                self._update_idle()
                self._maybe_done()
            log.debug("%s %s HTTP/2 stream %d -> %s", request.method, request.target, stream.stream_id, request.status)


# ---------------------------------------------------------------------------------------------
# h2c


_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


async def serve_h2c_upgrade(
    lower: ByteStream,
    request: Request,
    settings: bytes,
    body: bytes,
    app: App,
    *,
    limits: Limits = DEFAULT_LIMITS,
    shutdown: trio.Event | None = None,
    deadline: float = FOREVER,
    response_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer ``101 Switching Protocols`` on ``lower`` and serve ``app`` over HTTP/2 there until
    the connection ends, then close it: what an HTTP/1.1 server calls for a request whose
    headers :func:`h2c_settings` accepted (``settings`` is its result; RFC 7540 3.2).

    ``request``, with its whole ``body`` (read by the caller), becomes stream 1, the app's first
    request. Bytes the HTTP/1.1 parser read past the request must have been pushed back into
    ``lower`` (``lower.unread``). ``deadline`` covers the 101 and the client's preface; a failure
    there raises, and ``lower`` is the caller's to close. ``response_headers``: the HTTP/1.1
    server's (see :class:`H2ServerConnection`).
    """
    conn = H2ServerConnection(lower, limits, shutdown, response_headers=response_headers)
    await conn.handshake(deadline, upgrade_settings=base64.urlsafe_b64encode(settings), prefix=_SWITCHING)
    hop_by_hop = (b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"transfer-encoding")
    headers = _headers([(k, v) for k, v in request.headers.raw if k not in hop_by_hop])
    stream = H2Stream(conn, 1, can_send=False)
    stream._in += body
    stream._ack_exempt = len(body)  # never counted against a window
    stream._in_ended = True
    upgraded = H2Request(
        stream, request.method, request.target, headers, scheme="http", authority=request.authority, limits=limits
    )
    if response_headers:
        upgraded._extra_fields = response_headers
    conn._upgrade_request = upgraded  # admitted once the connection runs (the app needs the nursery)
    try:
        await conn.serve(app)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()
