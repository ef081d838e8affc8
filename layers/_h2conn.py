"""The part of an HTTP/2 connection both sides share (:class:`H2ConnectionBase`).

One connection is one h2 state machine (:class:`~layers._h2core.H2Core`, attribute ``core``),
a table of streams, and two tasks in a nursery the side opens (:meth:`H2ConnectionBase.run`):

* **the reader** reads the stream below, feeds h2 in bounded steps (at most
  :data:`~layers._h2core.STEP_FRAMES` frames each, :meth:`~layers._h2core.H2Core.receive_step`,
  with a checkpoint before the next step of the same read), and dispatches h2's events to handler
  methods (``_EVENTS`` maps an event type to a method name; each subclass adds its own and
  ``__init_subclass__`` resolves them to functions once). Handlers fill the streams' buffers
  and wake their readers; DATA is acknowledged (WINDOW_UPDATE) only when the application
  consumes it (:meth:`~H2ConnectionBase.consumed`), which makes flow control backpressure.
  After a read that woke or started tasks, the reader lets a few scheduling rounds pass so
  their answers leave before the next read. Without a stream for ``idle_timeout`` (server), its
  cancel scope's deadline fires (``_recv_deadline`` / ``_on_idle``).
* **the writer** is the one place bytes go down: streams queue frames in h2 and call
  :meth:`~H2ConnectionBase.wake_writer`; the writer takes everything queued and sends it in one
  ``send_from``, so frames of many streams written in one scheduling round leave together. One
  cancel scope covers many sends (``send_timeout``: a peer that reads nothing is dropped).

Closing: :meth:`~H2ConnectionBase._fail` tells every stream and waiter that the connection is
over and asks the run loop to wind up (GOAWAY, a flush of at most :data:`FLUSH_GRACE`
seconds, then a lingering close of the stream below after a GOAWAY, :data:`LINGER`).

Streams reach their connection only through the :class:`~layers._h2stream.StreamOwner`
methods, grouped in one section below. The server (``_h2server.py``) and the client
(``_h2client.py``) subclass this, with the hooks marked "Hook".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, ClassVar, Self

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, Closed, ProtocolError, StackError, Timeout
from stack.streams import ByteStream, Info

from ._h2core import H2Core, Malformed, ProtocolViolation, check_fields, error_name
from ._h2stream import H2Stream, _headers
from ._http_model import Limits

__all__ = [
    "FLUSH_GRACE",
    "LINGER",
    "READER_HIGH_WATER",
    "RECV_SIZE",
    "YIELD_ROUNDS",
    "H2ConnectionBase",
    "StreamRefused",
]

log = logging.getLogger("stack.http2")

READER_HIGH_WATER = 1024 * 1024
"""Outgoing bytes queued before the reader stops reading (a peer that sends but never reads)."""

RECV_SIZE = 65536
"""Bytes asked of the lower stream per read."""

YIELD_ROUNDS = 4
"""Scheduling rounds the reader lets pass after a read that started or woke tasks, waiting for
the writer to send their answers before it reads again."""

FLUSH_GRACE = 2.0
"""Seconds a closing connection spends flushing what it queued (GOAWAY, last frames)."""

LINGER = 1.0
"""Seconds a connection that sent GOAWAY keeps reading (and dropping) before it closes."""

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
_ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
_SC = h2.settings.SettingCodes
_NO_PSEUDO: frozenset[bytes] = frozenset()


class StreamRefused(Broken):
    """The peer did not process this stream (REFUSED_STREAM, or beyond a GOAWAY's last stream
    id): nothing of the request was acted on, so it is safe to retry on another connection."""


class _Rate:
    """Counts events in fixed windows of ``period`` seconds; ``hit()`` is True past ``limit``."""

    __slots__ = ("count", "limit", "period", "start")

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.start = -math.inf
        self.count = 0

    def hit(self) -> bool:
        now = trio.current_time()
        if now - self.start > self.period:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class _Calm(Exception):
    """Internal: the peer abused the connection; end it with GOAWAY ENHANCE_YOUR_CALM."""


class H2ConnectionBase:
    """What both sides share: h2, the reader and writer loops, flow control, PING, closing.

    It implements :class:`~layers._h2stream.StreamOwner` (the public methods of the "streams"
    section below), what its streams may ask of it. The sides fill in the hooks (``_started``,
    ``_stopped``, ``_stream_released``, ``_settings_changed``, ``_on_goaway``, ...) and add
    their own event handlers to ``_EVENTS``.
    """

    is_server = False

    def __init__(self, lower: ByteStream, limits: Limits, settings: dict[_SC, int]) -> None:
        self.lower = lower
        self.limits = limits
        self.core = H2Core(
            client_side=not self.is_server,
            settings=settings,
            max_continuation_frames=limits.max_continuation_frames,
            max_header_list_size=limits.max_header_list_size,
            no_progress_limit=limits.no_progress_limit,
            no_progress_period=limits.flood_period,
        )
        self.info = Info({"http_version": "2", "http_engine": "reference"}, lower.info)  # HTTP/2 has one
        self._streams: dict[int, H2Stream] = {}
        self._out = bytearray()  # taken from h2, being sent by the writer
        self._writer_ev: trio.Event | None = None
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._window_waiters: set[H2Stream] = set()
        self._failure: Broken | None = None
        self._finished = trio.Event()
        self._writer_stop = False
        self._writer_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._closed = False
        self._goaway_sent = False
        self._peer_closed = False  # EOF or an error from the stream below: nothing to linger for
        self._pings: dict[bytes, list[Any]] = {}
        self._ping_rate = _Rate(limits.ping_flood_limit, limits.flood_period)
        self._settings_rate = _Rate(limits.settings_flood_limit, limits.flood_period)
        self._remote_settings = trio.Event()
        self._pending_events: list[h2.events.Event] = []
        self._recv_scope: trio.CancelScope | None = None
        self._kicked = 0  # tasks started or woken by the current read
        self._sends = 0  # sends the writer completed

    # event type -> handler method name; resolved to functions once per subclass (__init_subclass__)
    _EVENTS: ClassVar[dict[type, str]] = {
        h2.events.DataReceived: "_on_data",
        h2.events.StreamEnded: "_on_stream_ended",
        h2.events.StreamReset: "_on_stream_reset",
        h2.events.WindowUpdated: "_on_window",
        h2.events.RemoteSettingsChanged: "_on_settings",
        h2.events.PingReceived: "_on_ping",
        h2.events.PingAckReceived: "_on_ping_ack",
        h2.events.ConnectionTerminated: "_on_goaway",
        h2.events.TrailersReceived: "_on_trailers",
    }
    _dispatch: ClassVar[dict[type, Callable[[Any, Any], None]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._dispatch = {event: getattr(cls, name) for event, name in cls._EVENTS.items()}

    # ---- what streams ask (StreamOwner) -----------------------------------------------------

    def failure(self) -> Broken | None:
        """Why the connection ended, or ``None`` while it is healthy."""
        return self._failure

    def queued(self) -> int:
        """Bytes queued for the writer (in h2 and taken from it) and not yet sent."""
        return self.core.pending_output + len(self._out)

    async def wait_drained(self) -> None:
        """Wait until the writer completed a send, or stopped."""
        await self._drain_lot.park()

    def wake_writer(self) -> None:
        """Let the writer send what is queued in h2."""
        ev = self._writer_ev
        if ev is not None:
            self._writer_ev = None
            ev.set()

    def task_woken(self) -> None:
        """A stream woke a task (counted: the reader then yields before reading on)."""
        self._kicked += 1

    def watch_window(self, stream: H2Stream) -> None:
        """``stream`` waits for window: a connection-level WINDOW_UPDATE wakes it."""
        self._window_waiters.add(stream)

    def unwatch_window(self, stream: H2Stream) -> None:
        """``stream`` no longer waits for window."""
        self._window_waiters.discard(stream)

    def consumed(self, stream: H2Stream, n: int) -> None:
        """The application took ``n`` bytes from ``stream``: give the window back."""
        if stream._ack_exempt:
            exempt = min(n, stream._ack_exempt)
            stream._ack_exempt -= exempt
            n -= exempt
        if n and self._failure is None:
            self.core.acknowledge_received_data(n, stream.stream_id)
            if self.core.pending_output:
                self.wake_writer()

    def reset_stream(self, stream: H2Stream, code: int, exc: Broken | None) -> None:
        """Reset ``stream`` (RST_STREAM ``code``) and release it; ``exc`` is what its users get."""
        if self._failure is None and self.core.stream_is_open(stream.stream_id):
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
                self.core.reset_stream(stream.stream_id, code)
            self.wake_writer()
        stream._on_reset(exc or Broken(f"HTTP/2 stream {stream.stream_id} was reset on this side"))
        self.release(stream)

    def release(self, stream: H2Stream, *, drop: bool = True) -> None:
        """Forget ``stream``. With ``drop``, also discard the bytes nobody read and hand their
        connection window back; without it (the stream ended normally), they stay readable and
        are acknowledged as they are read."""
        if drop and stream._in:
            unread = len(stream._in) - stream._ack_exempt
            stream._in.clear()
            stream._ack_exempt = 0
            if unread > 0 and self._failure is None:
                self.core.acknowledge_received_data(unread, stream.stream_id)
                self.wake_writer()
        if stream._released:
            return
        stream._released = True
        self._streams.pop(stream.stream_id, None)
        self._window_waiters.discard(stream)
        self._stream_released(stream)

    def _stream_released(self, stream: H2Stream) -> None:
        """Hook: a stream left the table."""

    def release_if_done(self, stream: H2Stream) -> None:
        """Release the stream once both directions ended cleanly (its unread bytes stay)."""
        if stream._in_ended and stream._local_ended and not stream._released:
            self.release(stream, drop=False)

    def _fail(self, exc: Broken) -> None:
        """The connection is over (gone, or given up after queueing a GOAWAY, which the writer
        still sends): every stream and waiter learns it now, the run loop winds up."""
        if self._failure is None:
            self._failure = exc
            log.debug("HTTP/2 connection %s: %s", self.info.get("peer"), exc)
        for stream in list(self._streams.values()):
            stream._on_reset(exc)
        self._drain_lot.unpark_all()
        self.wake_writer()
        for waiter in self._pings.values():
            waiter[0].set()
        self._remote_settings.set()
        self._finish()

    def _finish(self) -> None:
        """Ask the run loop to wind the connection up (flush, then stop the tasks)."""
        self._finished.set()

    def _goaway(self, code: int = _NO_ERROR, additional_data: bytes = b"") -> None:
        """Queue GOAWAY ``code`` naming the last stream we process, unless one was sent or the
        connection already failed."""
        if self._failure is None and not self._goaway_sent:
            self.core.close_connection(code, additional_data=additional_data, last_stream_id=self._last_stream_id())
            self._goaway_sent = True
            self.wake_writer()

    # ---- the writer ----------------------------------------------------------------------

    async def _writer(self) -> None:
        core = self.core
        out = self._out
        lower = self.lower
        send_timeout = self.limits.send_timeout
        try:
            # A deadline per send costs a cancel scope per send at every layer below. Instead one
            # scope covers many sends; its deadline is pushed forward only when less than 90% of
            # send_timeout is left (so a stuck send fails after 0.9-1x send_timeout), and when
            # it fires while the writer was only waiting for work, a new scope is made.
            sending = False
            while True:
                with trio.CancelScope(deadline=trio.current_time() + send_timeout) as scope:
                    while True:
                        core.take_output(out)
                        if not out:
                            if self._writer_stop or self._failure is not None:
                                return
                            ev = self._writer_ev = trio.Event()
                            await ev.wait()
                            continue
                        now = trio.current_time()
                        if scope.deadline - now < 0.9 * send_timeout:
                            scope.deadline = now + send_timeout
                        sending = True
                        try:
                            await lower.send_from(out)
                        except StackError as exc:
                            self._fail(Broken(f"HTTP/2 connection: sending failed: {exc}"))
                            return
                        sending = False
                        self._sends += 1
                        self._drain_lot.unpark_all()
                if sending:
                    self._fail(Broken(f"HTTP/2 connection: the peer read nothing for {send_timeout:g}s"))
                    return
        finally:
            self._writer_done.set()
            self._drain_lot.unpark_all()

    async def _stop_writer(self, deadline: float) -> None:
        """Let the writer send what is queued (until ``deadline``), then stop it."""
        self._writer_stop = True
        self.wake_writer()
        with trio.move_on_at(deadline):
            await self._writer_done.wait()

    async def _flush_direct(self, deadline: float) -> None:
        """Send what is queued without the writer (it is not running)."""
        self.core.take_output(self._out)
        if self._out and self._failure is None:
            try:
                await self.lower.send_from(self._out, deadline=deadline)
            except StackError as exc:
                log.debug("HTTP/2: final flush failed: %s", exc)

    # ---- the reader ----------------------------------------------------------------------

    def _recv_deadline(self) -> float:
        return FOREVER

    def _on_idle(self) -> bool:  # pragma: no cover - servers override
        """The reader's deadline passed: True ends the connection, False reads on."""
        return True

    async def _reader(self) -> None:
        """Read, feed h2, dispatch the events, until the connection ends.

        The loop runs inside one cancel scope whose deadline is the idle deadline while no
        stream is active (``_update_idle`` moves it while we wait) and FOREVER otherwise; it
        is replaced only when it fired. Both awaits in it (``recv`` and the wait for the
        writer to drain) are cancel-safe.
        """
        try:
            if self._pending_events:
                events, self._pending_events = self._pending_events, []
                self._handle(events, self._dispatch)
                del events
                self.wake_writer()
            while self._failure is None:
                with trio.CancelScope(deadline=self._recv_deadline()) as scope:
                    self._recv_scope = scope
                    await self._read_loop(scope)
                self._recv_scope = None
                if not scope.cancelled_caught or self._on_idle():
                    return
        except _Calm as exc:
            self._calm(str(exc))

    async def _read_loop(self, scope: trio.CancelScope) -> None:
        core = self.core
        lower = self.lower
        dispatch = self._dispatch
        while self._failure is None:
            if core.more_input:
                # The last step stopped at its budget: let the other tasks run (other
                # connections, this one's writer and apps), then take the next frames.
                await trio.lowlevel.checkpoint()
                data = b""
            else:
                try:
                    data = await lower.recv(RECV_SIZE)
                except StackError as exc:
                    self._peer_closed = True
                    self._fail(Broken(f"HTTP/2 connection lost: {exc}"))
                    return
                if not data:
                    self._peer_closed = True
                    self._on_eof()
                    return
            try:
                events = core.receive_step(data)
            except ProtocolViolation as exc:
                self._protocol_error(exc)
                return
            try:
                self._handle(events, dispatch)
            except h2.exceptions.H2Error:  # a bug of ours: say so, end this connection only
                log.exception("HTTP/2 connection %s: internal error", self.info.get("peer"))
                self._goaway(_INTERNAL_ERROR)
                self._fail(Broken("HTTP/2 connection ended: internal error"))
                return
            del data, events  # an idle connection keeps nothing of its last read
            if core.pending_output:
                self.wake_writer()
                while self.queued() > READER_HIGH_WATER and self._failure is None:
                    await self._drain_lot.park()
            if self._kicked:
                # Tasks were started or woken by this read: let them answer and the writer send
                # before reading again, so that the next read finds the peer's next frames
                # there instead of waiting in epoll (a read that would block costs a failed
                # recv, an epoll registration and a wake-up). A few scheduling rounds at most.
                self._kicked = 0
                sends = self._sends
                for _ in range(YIELD_ROUNDS):
                    await trio.lowlevel.checkpoint()
                    if self._sends != sends:
                        break
            deadline = self._recv_deadline()
            if deadline != scope.deadline:
                scope.deadline = deadline

    def _handle(self, events: list[h2.events.Event], dispatch: dict[type, Callable[[Any, Any], None]]) -> None:
        for ev in events:
            handler = dispatch.get(type(ev))
            if handler is not None:
                handler(self, ev)

    def _protocol_error(self, exc: Exception) -> None:
        code = getattr(exc, "error_code", _PROTOCOL_ERROR)
        detail = f"HTTP/2 protocol error from the peer ({error_name(code)}): {exc}"
        # A flood (ENHANCE_YOUR_CALM) is logged as the other flood cuts are (_calm): a warning.
        level = logging.WARNING if code == _ENHANCE_YOUR_CALM else logging.INFO
        log.log(level, "%s: %s", self.info.get("peer"), detail)
        self._goaway_sent = True  # h2 queued the GOAWAY
        self._fail(ProtocolError(detail))

    def _calm(self, reason: str) -> None:
        log.warning("%s: %s; GOAWAY ENHANCE_YOUR_CALM", self.info.get("peer"), reason)
        self._goaway(_ENHANCE_YOUR_CALM, reason.encode()[:256])
        self._fail(ProtocolError(f"HTTP/2 connection ended: {reason}"))

    def _last_stream_id(self) -> int:
        return self.core.highest_inbound_stream_id

    def _on_eof(self) -> None:
        self._fail(Broken("HTTP/2 connection closed by the peer"))

    # ---- events both sides handle ---------------------------------------------------------

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        sid = ev.stream_id
        data = ev.data
        n = ev.flow_controlled_length
        stream = self._streams.get(sid)
        if stream is None or stream._released:
            if n:
                self.core.acknowledge_received_data(n, sid)
            return
        if n > len(data):
            self.core.acknowledge_received_data(n - len(data), sid)  # padding
        if data:
            stream._in += data
            stream._wake_reader()

    def _on_stream_ended(self, ev: h2.events.StreamEnded) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is not None:
            stream._in_ended = True
            stream._wake_reader()
            self.release_if_done(stream)

    def _on_stream_reset(self, ev: h2.events.StreamReset) -> None:
        stream = self._streams.get(ev.stream_id)
        code = ev.error_code
        if stream is not None:
            cls = StreamRefused if code == _REFUSED_STREAM else Broken
            who = "the peer" if ev.remote_reset else "this side (the peer broke the stream's rules)"
            stream._on_reset(cls(f"HTTP/2 stream {ev.stream_id} was reset by {who} ({error_name(code)})"))
            # A body that had ended stays readable: a server may reset (NO_ERROR) after a
            # complete response only to stop the upload (RFC 9113 8.1).
            self.release(stream, drop=not stream._in_ended)

    def _on_trailers(self, ev: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is not None:
            try:
                _, regular = check_fields(ev.headers, _NO_PSEUDO)
            except Malformed as exc:
                self._malformed(stream, f"malformed trailers: {exc}")
                return
            stream.trailers = _headers(regular)  # the request's or response's (their trailers property)

    def _malformed(self, stream: H2Stream, detail: str) -> None:
        """A malformed message on ``stream``: RST_STREAM PROTOCOL_ERROR (RFC 9113 8.1.1)."""
        log.info("%s: stream %d: %s", self.info.get("peer"), stream.stream_id, detail)
        self.reset_stream(stream, _PROTOCOL_ERROR, ProtocolError(f"HTTP/2 stream {stream.stream_id}: {detail}"))

    def _on_window(self, ev: h2.events.WindowUpdated) -> None:
        if ev.stream_id == 0:
            for waiting in list(self._window_waiters):
                waiting._wake_sender()
        else:
            stream = self._streams.get(ev.stream_id)
            if stream is not None:
                stream._wake_sender()

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged) -> None:
        if self._settings_rate.hit():
            raise _Calm(
                f"SETTINGS flood: more than {self.limits.settings_flood_limit} in {self.limits.flood_period:g}s"
            )
        if _SC.INITIAL_WINDOW_SIZE in ev.changed_settings:
            for stream in list(self._window_waiters):
                stream._wake_sender()
        self._remote_settings.set()
        self._settings_changed(ev)

    def _settings_changed(self, ev: h2.events.RemoteSettingsChanged) -> None:
        """Hook for the client (stream slots)."""

    def _on_ping(self, ev: h2.events.PingReceived) -> None:
        if self._ping_rate.hit():
            raise _Calm(f"PING flood: more than {self.limits.ping_flood_limit} in {self.limits.flood_period:g}s")

    def _on_ping_ack(self, ev: h2.events.PingAckReceived) -> None:
        waiter = self._pings.get(bytes(ev.ping_data))
        if waiter is not None:
            waiter[2] = trio.current_time()
            waiter[0].set()

    def _on_goaway(self, ev: h2.events.ConnectionTerminated) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---- running and closing --------------------------------------------------------------

    def _initiate(self, upgrade_settings: bytes | None = None) -> None:
        """Queue our preface (SETTINGS, and the connection window beyond the default)."""
        core = self.core
        if upgrade_settings is None:
            core.initiate_connection()
        else:
            core.initiate_upgrade_connection(upgrade_settings)
        extra = self.limits.connection_window - 65535
        if extra > 0:
            core.increment_flow_control_window(extra)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the connection's tasks (reader, writer, and the server's streams) until the
        connection ends or is closed: ``await nursery.start(conn.run)``. At the end, a healthy
        connection sends GOAWAY (NO_ERROR) and gets :data:`FLUSH_GRACE` seconds to flush."""
        if self._nursery is not None or self._finished.is_set():
            raise Busy("this HTTP/2 connection is already running (or has ended)")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                self._started(nursery)
                task_status.started()
                await self._finished.wait()
                self._goaway()
                await self._stop_writer(trio.current_time() + FLUSH_GRACE)
                nursery.cancel_scope.cancel()
        finally:
            if self._failure is None:
                self._fail(Broken("HTTP/2 connection closed"))
            self._stopped()

    def _started(self, nursery: trio.Nursery) -> None:
        """Hook: the reader and writer run; start what else the side needs."""

    def _stopped(self) -> None:
        """Hook: the connection's tasks are over; wake whoever waits on the side's own lots."""

    async def __aenter__(self) -> Self:
        """Run the connection (:meth:`run`) in a nursery this block owns."""
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(self.run)
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._exit_stack = self._exit_stack, None
        try:
            await self.aclose()
        finally:
            if stack is not None:
                await stack.aclose()

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close: GOAWAY (NO_ERROR) if the connection is healthy, flush (until ``deadline``,
        default :data:`FLUSH_GRACE` seconds), close the stream below. Streams still open get
        :class:`~stack.Broken`. Idempotent; never raises a StackError."""
        if self._closed:
            return
        self._closed = True
        if deadline is None:
            deadline = trio.current_time() + FLUSH_GRACE
        if self._nursery is not None:
            self._finish()
            with trio.move_on_at(deadline):
                await self._writer_done.wait()
        else:
            self._goaway()
            with trio.move_on_at(deadline):
                await self._flush_direct(deadline)
            if self._failure is None:
                self._fail(Broken("HTTP/2 connection closed"))
        await self._close_lower(deadline)

    # ---- public --------------------------------------------------------------------------

    async def ping(self, *, deadline: float = FOREVER) -> float:
        """Send a PING and return the round-trip time in seconds (liveness and RTT).

        On deadline: :class:`~stack.Timeout`. If the connection fails first: :class:`~stack.Broken`.
        """
        self._check_running()
        payload = os.urandom(8)
        waiter: list[Any] = [trio.Event(), trio.current_time(), None]
        self._pings[payload] = waiter
        try:
            self.core.ping(payload)
            self.wake_writer()
            with trio.move_on_at(deadline) as scope:
                await waiter[0].wait()
            if scope.cancelled_caught:
                raise Timeout("HTTP/2 PING: no answer before the deadline")
            if waiter[2] is None:
                raise self._failure or Broken("HTTP/2 connection closed before the PING answer")
            return float(waiter[2] - waiter[1])
        finally:
            self._pings.pop(payload, None)

    def _check_running(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise Closed("HTTP/2 connection was closed on this side")
        if self._nursery is None:
            raise StackError(
                "this HTTP/2 connection is not running: use `async with conn:` (client), "
                "`await conn.serve(app)` or `async with conn:` (server), or `await nursery.start(conn.run)`"
            )

    async def _close_lower(self, deadline: float) -> None:
        """Close the stream below. After a GOAWAY, first a lingering close: FIN, then read and
        drop what the peer still sends for up to :data:`LINGER` seconds, so that closing with
        unread bytes (a TCP reset) does not destroy the GOAWAY before the peer read it."""
        lower = self.lower
        if self._goaway_sent and not self._peer_closed:
            with trio.move_on_at(min(deadline, trio.current_time() + LINGER)):
                try:
                    await lower.done(deadline=deadline)
                    while await lower.recv(65536, deadline=deadline):
                        pass
                except StackError:
                    pass
        await lower.aclose(deadline=deadline)
