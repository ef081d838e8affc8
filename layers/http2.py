"""HTTP/2 on h2: multiplexed streams, each one a :class:`~stack.ByteStream`.

Usually reached through :mod:`layers.http` (``http.server(app)`` picks HTTP/2 by ALPN ``h2`` or
by the cleartext preface; ``http.client()`` by ALPN or ``prior_knowledge=True``). Direct use::

    conn = await http2.server(app, limits, shutdown).attach(lower, deadline=after(10))
    await conn.serve(app)                      # app(request) per stream, concurrently, in a nursery serve() owns

    async with await http2.client(limits, "example.org", "https").attach(lower) as conn:
        response = await conn.request("GET", "/")         # many at once: they multiplex
        tunnel = await conn.connect_tunnel("db.internal:5432")      # a ByteStream (RFC 9113 8.5)
        ws = await conn.connect_tunnel("example.org", protocol="websocket", path="/chat")  # RFC 8441
        rtt = await conn.ping()

**Tasks.** A connection has one reader task (it feeds h2 and wakes the streams) and one writer
task (the one place bytes go down: every stream's frames are queued in h2 and the writer sends
everything queued in one ``send``, so frames of many streams written in the same scheduling
round leave in one write). They live in a nursery the caller owns: the server's is opened by
:meth:`H2ServerConnection.serve` (which also runs ``app(request)`` per stream, concurrently),
the client's by ``async with conn:`` (or ``await nursery.start(conn.run)``). No task outlives
the block that started it; a client connection used outside its block raises
:class:`~stack.StackError` saying so. The apps of the streams opened by one read share a task
as long as they do not suspend: an app that answers at once costs no task of its own, and the
first one that suspends keeps the task while the others move on to a new one (each app runs in
its own copy of the context, as in a task of its own).

**Streams.** On the server, ``request.body`` is the stream: ``recv`` reads the request body
(``b""`` at END_STREAM), ``send`` writes the response body once :meth:`~layers.http.Request.start_response`
sent the head (it returns the same stream), ``done(trailers=...)`` ends the response. On the
client, ``response.body`` is the stream: ``recv`` reads the response body and, for a CONNECT
tunnel or :meth:`H2ClientConnection.start_request`, ``send``/``done`` write the request body.

**Flow control is backpressure.** Received DATA is acknowledged (WINDOW_UPDATE) only as the
application consumes it from the stream, so a slow reader stalls only its own stream and the
bytes buffered per stream never exceed its receive window (``Limits.stream_window``; the
connection's ``Limits.connection_window``). A ``send`` waits for the peer's window under its
deadline; on deadline it raises :class:`~stack.Timeout` whose ``sent`` counts the bytes handed
to h2 (committed: they will be delivered). A peer that keeps a window shut for
``Limits.send_timeout`` seconds loses the stream (RST_STREAM CANCEL, the sender gets
:class:`~stack.Broken`). Outgoing bytes queued for the writer are bounded (about
:data:`HIGH_WATER` plus one chunk per sending stream); senders wait while it is full.

**Abandoning a stream** (``aclose`` before the end, cancellation, a deadline inside
:meth:`H2ClientConnection.request`) resets it with RST_STREAM (CANCEL; NO_ERROR when a server
already finished its response and only stops the upload, RFC 9113 8.1) and never harms the
connection. A peer's RST_STREAM makes the stream :class:`~stack.Broken` (sticky);
REFUSED_STREAM and streams a GOAWAY left unprocessed raise :class:`StreamRefused`, which is safe
to retry.

**Shutdown.** Given an event (``http.server(app, shutdown=event)``), the server sends GOAWAY
with the largest stream id, waits one PING round trip, sends GOAWAY with the last stream it
accepted, lets the streams in flight finish within ``Limits.drain_timeout`` and closes.

**Defences** (each a :class:`~layers.http.Limits` knob with a safe default): streams over
``max_concurrent_streams`` (counting streams whose handler still runs) get REFUSED_STREAM;
header lists over ``max_header_list_size`` and CONTINUATION floods over
``max_continuation_frames``, more than ``rapid_reset_limit`` client resets, ``ping_flood_limit``
PINGs or ``settings_flood_limit`` SETTINGS per ``flood_period`` seconds end the connection with
GOAWAY ENHANCE_YOUR_CALM; a connection with no stream for ``idle_timeout`` seconds is closed with
GOAWAY NO_ERROR; a peer that does not read what we send for ``send_timeout`` seconds is dropped.
A protocol error gets GOAWAY with the RFC 9113 error code and ends the connection; the streams
then raise :class:`~stack.ProtocolError`. A malformed message (bad header list, RFC 9113 8.1.1)
is a stream error: RST_STREAM PROTOCOL_ERROR, the connection goes on. After a GOAWAY the
connection closes lingering (FIN, then reading and dropping for up to :data:`LINGER` seconds),
so the peer reads the GOAWAY before the close.

**Client details.** The first request goes out with the preface; more wait for the server's
SETTINGS (its stream limit), then for a free stream when at the limit. A request refused
unprocessed is retried (bytes bodies only). Read or close every response: its unread body
holds part of the connection window.

**h2c upgrade.** :func:`h2c_settings` tells an HTTP/1.1 server whether a request asks for
``Upgrade: h2c`` properly; :func:`serve_h2c_upgrade` answers 101 and serves HTTP/2 on the same
connection, the upgrading request being stream 1 (``layers/http1.py`` does this in cleartext).

All HTTP/2 work is done by h2 (``layers/_h2core.py`` holds the few corrections RFC 9113 needs).
The stream class and the request and response objects are in ``layers/_h2stream.py``; this
module holds the connections (the shared base, server, client), the specs and the h2c hand-off.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import logging
import math
import os
import re
from collections import deque
from collections.abc import AsyncIterable, Callable, Coroutine, Generator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, Closed, EndOfStream, ProtocolError, StackError, Timeout
from stack.streams import ByteStream, Info

from ._h2core import (
    H2Core,
    Malformed,
    ProtocolViolation,
    check_fields,
    check_request_pseudo,
    check_response_pseudo,
    error_name,
)
from ._h2stream import (
    _EMPTY,
    HIGH_WATER,
    H2Request,
    H2Response,
    H2Stream,
    _fields,
    _h2_fail,
    _headers,
)
from ._http_model import (
    DEFAULT_LIMITS,
    App,
    Body,
    ClientConnection,
    HeaderInput,
    Headers,
    Limits,
    Request,
    ServerConnection,
    TunnelRefused,
)

__all__ = [
    "H2ClientConnection",
    "H2Request",
    "H2Response",
    "H2ServerConnection",
    "H2Stream",
    "StreamRefused",
    "TunnelRefused",
    "client",
    "h2c_settings",
    "serve_h2c_upgrade",
    "server",
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

RETRIES = 3
"""Times a client request refused unprocessed (REFUSED_STREAM, GOAWAY) is sent again."""

PING_WAIT = 5.0
"""Longest wait for the PING round trip between the two GOAWAYs of a graceful shutdown."""

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
_CANCEL = h2.errors.ErrorCodes.CANCEL
_ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
_MAX_STREAM_ID = 2**31 - 1
_SC = h2.settings.SettingCodes

_REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path", b":protocol"])
_RESPONSE_PSEUDO = frozenset([b":status"])
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


class _Calm(Exception):
    """Internal: the peer abused the connection; end it with GOAWAY ENHANCE_YOUR_CALM."""


# =============================================================================================
# connections


class _Connection:
    """What both sides share: h2, the reader and writer loops, flow control, PING, closing."""

    _server = False

    def __init__(self, lower: ByteStream, limits: Limits, settings: dict[_SC, int]) -> None:
        self._lower = lower
        self._limits = limits
        self._core = H2Core(
            client_side=not self._server,
            settings=settings,
            max_continuation_frames=limits.max_continuation_frames,
            max_header_list_size=limits.max_header_list_size,
        )
        self.info = Info({"http_version": "2"}, lower.info)
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

    # ---- small helpers -------------------------------------------------------------------

    def _queued(self) -> int:
        return self._core.pending_output + len(self._out)

    def _wake_writer(self) -> None:
        ev = self._writer_ev
        if ev is not None:
            self._writer_ev = None
            ev.set()

    def _consumed(self, stream: H2Stream, n: int) -> None:
        """The application took ``n`` bytes from ``stream``: give the window back."""
        if stream._ack_exempt:
            exempt = min(n, stream._ack_exempt)
            stream._ack_exempt -= exempt
            n -= exempt
        if n and self._failure is None:
            self._core.acknowledge_received_data(n, stream.stream_id)
            if self._core.pending_output:
                self._wake_writer()

    def _reset_stream(self, stream: H2Stream, code: int, exc: Broken | None) -> None:
        """Reset ``stream`` (RST_STREAM ``code``) and release it; ``exc`` is what its users get."""
        if self._failure is None and self._core.stream_is_open(stream.stream_id):
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
                self._core.reset_stream(stream.stream_id, code)
            self._wake_writer()
        stream._on_reset(exc or Broken(f"HTTP/2 stream {stream.stream_id} was reset on this side"))
        self._release(stream)

    def _release(self, stream: H2Stream, *, drop: bool = True) -> None:
        """Forget ``stream``. With ``drop``, also discard the bytes nobody read and hand their
        connection window back; without it (the stream ended normally), they stay readable and
        are acknowledged as they are read."""
        if drop and stream._in:
            unread = len(stream._in) - stream._ack_exempt
            stream._in.clear()
            stream._ack_exempt = 0
            if unread > 0 and self._failure is None:
                self._core.acknowledge_received_data(unread, stream.stream_id)
                self._wake_writer()
        if stream._released:
            return
        stream._released = True
        self._streams.pop(stream.stream_id, None)
        self._window_waiters.discard(stream)
        self._stream_released(stream)

    def _stream_released(self, stream: H2Stream) -> None:
        """Hook: a stream left the table."""

    def _stream_maybe_finished(self, stream: H2Stream) -> None:
        """Release the stream once both directions ended cleanly (its unread bytes stay)."""
        if stream._in_ended and stream._local_ended and not stream._released:
            self._release(stream, drop=False)

    def _fail(self, exc: Broken) -> None:
        """The connection is over (gone, or given up after queueing a GOAWAY, which the writer
        still sends): every stream and waiter learns it now, the run loop winds up."""
        if self._failure is None:
            self._failure = exc
            log.debug("HTTP/2 connection %s: %s", self.info.get("peer"), exc)
        for stream in list(self._streams.values()):
            stream._on_reset(exc)
        self._drain_lot.unpark_all()
        self._wake_writer()
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
            self._core.close_connection(code, additional_data=additional_data, last_stream_id=self._last_stream_id())
            self._goaway_sent = True
            self._wake_writer()

    # ---- the writer ----------------------------------------------------------------------

    async def _writer(self) -> None:
        core = self._core
        out = self._out
        lower = self._lower
        send_timeout = self._limits.send_timeout
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
        self._wake_writer()
        with trio.move_on_at(deadline):
            await self._writer_done.wait()

    async def _flush_direct(self, deadline: float) -> None:
        """Send what is queued without the writer (it is not running)."""
        self._core.take_output(self._out)
        if self._out and self._failure is None:
            try:
                await self._lower.send_from(self._out, deadline=deadline)
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
                self._wake_writer()
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
        core = self._core
        lower = self._lower
        dispatch = self._dispatch
        while self._failure is None:
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
                events = core.receive_data(data)
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
                self._wake_writer()
                while self._queued() > READER_HIGH_WATER and self._failure is None:
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
        log.info("%s: %s", self.info.get("peer"), detail)
        self._goaway_sent = True  # h2 queued the GOAWAY
        self._fail(ProtocolError(detail))

    def _calm(self, reason: str) -> None:
        log.warning("%s: %s; GOAWAY ENHANCE_YOUR_CALM", self.info.get("peer"), reason)
        self._goaway(_ENHANCE_YOUR_CALM, reason.encode()[:256])
        self._fail(ProtocolError(f"HTTP/2 connection ended: {reason}"))

    def _last_stream_id(self) -> int:
        return self._core.highest_inbound_stream_id

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
                self._core.acknowledge_received_data(n, sid)
            return
        if n > len(data):
            self._core.acknowledge_received_data(n - len(data), sid)  # padding
        if data:
            stream._in += data
            stream._wake_reader()

    def _on_stream_ended(self, ev: h2.events.StreamEnded) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is not None:
            stream._in_ended = True
            stream._wake_reader()
            self._stream_maybe_finished(stream)

    def _on_stream_reset(self, ev: h2.events.StreamReset) -> None:
        stream = self._streams.get(ev.stream_id)
        code = ev.error_code
        if stream is not None:
            cls = StreamRefused if code == _REFUSED_STREAM else Broken
            who = "the peer" if ev.remote_reset else "this side (the peer broke the stream's rules)"
            stream._on_reset(cls(f"HTTP/2 stream {ev.stream_id} was reset by {who} ({error_name(code)})"))
            # A body that had ended stays readable: a server may reset (NO_ERROR) after a
            # complete response only to stop the upload (RFC 9113 8.1).
            self._release(stream, drop=not stream._in_ended)

    def _on_trailers(self, ev: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is not None:
            try:
                _, regular = check_fields(ev.headers, _NO_PSEUDO)
            except Malformed as exc:
                self._malformed(stream, f"malformed trailers: {exc}")
                return
            trailers = _headers(regular)
            stream.trailers = trailers
            if stream._owner is not None:
                stream._owner.trailers = trailers

    def _malformed(self, stream: H2Stream, detail: str) -> None:
        """A malformed message on ``stream``: RST_STREAM PROTOCOL_ERROR (RFC 9113 8.1.1)."""
        log.info("%s: stream %d: %s", self.info.get("peer"), stream.stream_id, detail)
        self._reset_stream(stream, _PROTOCOL_ERROR, ProtocolError(f"HTTP/2 stream {stream.stream_id}: {detail}"))

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
                f"SETTINGS flood: more than {self._limits.settings_flood_limit} in {self._limits.flood_period:g}s"
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
            raise _Calm(f"PING flood: more than {self._limits.ping_flood_limit} in {self._limits.flood_period:g}s")

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
        core = self._core
        if upgrade_settings is None:
            core.initiate_connection()
        else:
            core.initiate_upgrade_connection(upgrade_settings)
        extra = self._limits.connection_window - 65535
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
            self._core.ping(payload)
            self._wake_writer()
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
        lower = self._lower
        if self._goaway_sent and not self._peer_closed:
            with trio.move_on_at(min(deadline, trio.current_time() + LINGER)):
                try:
                    await lower.done(deadline=deadline)
                    while await lower.recv(65536, deadline=deadline):
                        pass
                except StackError:
                    pass
        await lower.aclose(deadline=deadline)


# ---------------------------------------------------------------------------------------------
# server


_NO_LOT = trio.lowlevel.ParkingLot()  # stands in until recv() mode makes a real one (nothing parks on it)


class H2ServerConnection(_Connection, ServerConnection):
    """The server side of an HTTP/2 connection (see the module docstring).

    ``await conn.serve(app)`` runs until the connection ends (the peer closes, a protocol error,
    an idle timeout, a graceful shutdown), with ``app(request)`` running concurrently for each
    stream; an app that raises gets its stream reset (500 if it had not responded yet), an app
    that returns without responding gets 500, one that returns mid-body gets its body ended.
    When the connection is lost, apps still running are cancelled (after ``drain_timeout`` if
    the peer only closed its side). ``recv()`` / ``async for request in conn`` work inside
    ``async with conn:`` (or ``nursery.start(conn.run)``) instead. ``graceful_shutdown()``
    starts the two-step GOAWAY by hand.
    """

    _server = True
    http_version = "2"
    _EVENTS: ClassVar[dict[type, str]] = {**_Connection._EVENTS, h2.events.RequestReceived: "_on_request"}

    def __init__(
        self,
        lower: ByteStream,
        limits: Limits = DEFAULT_LIMITS,
        shutdown: trio.Event | None = None,
        *,
        enable_connect_protocol: bool = True,
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
        self._app: App | None = None
        self._queue: deque[H2Request] | None = None  # recv() mode only
        self._queue_lot = _NO_LOT
        self._active = 0
        self._accepted = 0  # highest stream id handed to the application
        self._closing = False  # GOAWAY (final) sent or received: no new streams
        self._eof = False
        self._idle_since = trio.current_time()
        self._reset_rate = _Rate(limits.rapid_reset_limit, limits.flood_period)
        self._upgrade_request: H2Request | None = None
        self._batch: deque[H2Request] | None = None  # admitted, for a batch task not started yet

    # ---- handshake -------------------------------------------------------------------------

    async def _handshake(self, deadline: float, *, upgrade_settings: bytes | None = None, prefix: bytes = b"") -> None:
        """Send our SETTINGS (and connection window), then read until the client's SETTINGS."""
        core = self._core
        self._initiate(upgrade_settings)
        out = bytearray(prefix)
        core.take_output(out)
        await self._lower.send_from(out, deadline=deadline)
        events: list[h2.events.Event] = []
        while not events:
            data = await self._lower.recv(RECV_SIZE, deadline=deadline)
            if not data:
                raise Broken("HTTP/2: the client closed the connection before its preface")
            try:
                events = core.receive_data(data)
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

    # ---- idle and shutdown -----------------------------------------------------------------

    def _recv_deadline(self) -> float:
        if self._active or self._streams:
            return FOREVER
        return self._idle_since + self._limits.idle_timeout

    def _update_idle(self) -> None:
        if not self._active and not self._streams:
            self._idle_since = trio.current_time()
            scope = self._recv_scope
            if scope is not None:
                scope.deadline = self._recv_deadline()

    def _on_idle(self) -> bool:
        if self._active or self._streams:  # pragma: no cover - the deadline is FOREVER then
            return False
        log.info("%s: HTTP/2 connection idle for %gs: closing", self.info.get("peer"), self._limits.idle_timeout)
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
        drain_end = trio.current_time() + self._limits.drain_timeout
        core = self._core
        core.close_connection(_NO_ERROR, last_stream_id=_MAX_STREAM_ID)
        self._goaway_sent = True
        self._wake_writer()
        try:
            await self.ping(deadline=min(drain_end, trio.current_time() + PING_WAIT))
        except StackError as exc:
            log.debug("graceful shutdown: PING: %s", exc)
        if self._failure is not None:
            return
        self._closing = True
        core.close_connection(_NO_ERROR, last_stream_id=self._accepted)
        self._wake_writer()
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
        await trio.sleep(self._limits.drain_timeout)
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
                f"rapid reset: more than {self._limits.rapid_reset_limit} streams reset by the "
                f"client in {self._limits.flood_period:g}s"
            )
        super()._on_stream_reset(ev)

    def _stream_released(self, stream: H2Stream) -> None:
        if self._app is None:
            self._active -= 1
            self._update_idle()
            self._maybe_done()

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        core = self._core
        if not core.stream_is_open(sid):
            return  # the client reset it in the same read: nothing to do (rapid reset counts it)
        if self._closing or self._failure is not None:
            core.reset_stream(sid, _REFUSED_STREAM)
            return
        if self._active >= self._limits.max_concurrent_streams:
            log.debug("%s: stream %d refused: %d streams active", self.info.get("peer"), sid, self._active)
            core.reset_stream(sid, _REFUSED_STREAM)
            return
        request = self._make_request(sid, ev.headers)
        if request is None:
            core.reset_stream(sid, _PROTOCOL_ERROR)
            return
        self._admit(request)

    def _make_request(self, sid: int, raw: Any) -> H2Request | None:
        """The request of a HEADERS block, or None (after RST_STREAM PROTOCOL_ERROR) if it is
        malformed (RFC 9113 8.1.1)."""
        try:
            pseudo, regular = check_fields(raw, _REQUEST_PSEUDO)
            check_request_pseudo(pseudo, regular)
            protocol = pseudo.get(b":protocol")
            if protocol is not None and not self._core.advertised.get(_SC.ENABLE_CONNECT_PROTOCOL):
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
        stream = H2Stream(self, sid, can_send=False)
        request = H2Request(
            stream,
            method,
            target,
            _headers(regular),
            scheme=pseudo.get(b":scheme", b"http").decode("latin-1"),
            authority=authority.decode("latin-1"),
            limits=self._limits,
        )
        if protocol is not None:
            request.protocol = protocol.decode("latin-1")
        stream._owner = request
        return request

    def _admit(self, request: H2Request) -> None:
        stream = request._stream
        sid = stream.stream_id
        self._streams[sid] = stream
        self._accepted = max(self._accepted, sid)
        self._active += 1
        app = self._app
        nursery = self._nursery
        if app is not None and nursery is not None:
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
        if self._core.stream_is_open(sid) is False:  # pragma: no cover - reset in the same batch
            self._stream_maybe_finished(stream)

    async def _run_batch(self, app: App, batch: deque[H2Request]) -> None:
        """Run the app for the requests of ``batch``, each as if in a task of its own.

        A task per stream costs more than a small request itself (spawn, a scheduling round,
        exit), and most apps answer a small request without ever suspending. So the requests
        admitted in one read share a task: each app call is stepped by hand, and one that
        finishes without suspending costs no task at all. The first one that suspends (or
        raises through, e.g. Cancelled) keeps this task for itself and the rest of the batch
        moves on to a new task at once, so every stream still runs concurrently with the others
        and is never held up by another one's app. Each app runs in a copy of the context, as
        in a task of its own (context variables it sets do not leak to the next request).
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
                if batch and self._nursery is not None:
                    self._nursery.start_soon(self._run_batch, app, batch, name="h2 streams")
                raise
            if batch and self._nursery is not None:
                self._nursery.start_soon(self._run_batch, app, batch, name="h2 streams")
            await _Resume(coro, trap, context)
            return

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
                core = self._core
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
                        self._reset_stream(stream, _INTERNAL_ERROR, None)
                if not stream._released and core.stream_is_open(sid):
                    # the response is complete; the client is still sending: stop the upload
                    self._reset_stream(stream, _NO_ERROR, None)
                self._wake_writer()
        except h2.exceptions.ProtocolError as exc:  # pragma: no cover - defensive
            log.debug("finishing %r: %s", request, exc)
        finally:
            stream._closed = stream._closed or "closed"
            self._release(stream)
            stream._wake()
            self._active -= 1
            self._update_idle()
            self._maybe_done()
            log.debug("%s %s HTTP/2 stream %d -> %s", request.method, request.target, stream.stream_id, request.status)


# ---------------------------------------------------------------------------------------------
# client


class _UploadFailed(Broken):
    """Why :meth:`H2ClientConnection._upload` reset a stream: the request's deadline passed
    (``timed_out``), or the body's iterator raised (``__cause__``)."""

    timed_out = False


async def _send_body(stream: H2Stream, body: Body, data: bytes | None, deadline: float) -> None:
    """Send a request body (``data``, else ``body`` as an async iterable) and END_STREAM."""
    if data is not None:
        await stream.send(data, deadline=deadline)
    else:
        assert isinstance(body, AsyncIterable)
        async for chunk in body:
            await stream.send(chunk, deadline=deadline)
    await stream.done(deadline=deadline)


class H2ClientConnection(_Connection, ClientConnection):
    """The client side of an HTTP/2 connection (see the module docstring).

    Its reader and writer run inside ``async with conn:`` (or ``await nursery.start(conn.run)``);
    requests made outside raise :class:`~stack.StackError`. Requests multiplex: run many at once
    from several tasks. At the peer's SETTINGS_MAX_CONCURRENT_STREAMS, new requests wait (under
    their deadline) for a stream to end. After the server's GOAWAY, new requests raise
    :class:`StreamRefused` and streams beyond its last stream id fail with it.
    """

    http_version = "2"
    _EVENTS: ClassVar[dict[type, str]] = {
        **_Connection._EVENTS,
        h2.events.ResponseReceived: "_on_response",
        h2.events.InformationalResponseReceived: "_on_informational",
    }

    def __init__(self, lower: ByteStream, limits: Limits, authority: str, scheme: str) -> None:
        settings = {
            _SC.ENABLE_PUSH: 0,
            _SC.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            _SC.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            _SC.INITIAL_WINDOW_SIZE: limits.stream_window,
            _SC.MAX_FRAME_SIZE: limits.max_frame_size,
        }
        super().__init__(lower, limits, settings)
        self.authority = authority
        self.scheme = scheme
        self._slot_lot = trio.lowlevel.ParkingLot()
        self._goaway_received: int | None = None  # the server's last stream id, once it sent GOAWAY
        self._uploads: dict[H2Stream, trio.CancelScope] = {}  # request() bodies sent by a task

    async def _handshake(self, deadline: float) -> None:
        self._initiate()
        await self._flush_direct(deadline)

    def _stopped(self) -> None:
        self._slot_lot.unpark_all()

    # ---- streams ---------------------------------------------------------------------------

    def _stream_released(self, stream: H2Stream) -> None:
        self._slot_lot.unpark_all()
        if self._goaway_received is not None and not self._streams:
            self._finish()

    def _settings_changed(self, ev: h2.events.RemoteSettingsChanged) -> None:
        if _SC.MAX_CONCURRENT_STREAMS in ev.changed_settings:
            self._slot_lot.unpark_all()

    def _on_goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        last = ev.last_stream_id or 0
        self._goaway_received = last
        if ev.error_code:
            log.info("server sent GOAWAY %s: %r", error_name(ev.error_code), ev.additional_data)
        for sid, stream in list(self._streams.items()):
            if sid > last:
                stream._on_reset(
                    StreamRefused(
                        f"HTTP/2 stream {sid} was not processed by the server (GOAWAY, last stream {last}); "
                        "safe to retry"
                    )
                )
                self._release(stream)
        self._slot_lot.unpark_all()
        if not self._streams:
            self._finish()

    def _on_stream_ended(self, ev: h2.events.StreamEnded) -> None:
        super()._on_stream_ended(ev)
        stream = self._streams.get(ev.stream_id)
        if stream is not None and stream in self._uploads and not stream._local_ended:
            response = stream._response
            if response is not None and response.status >= 300:
                self._stop_upload(stream)

    def _stop_upload(self, stream: H2Stream) -> None:
        """A final answer of 300 or more ended while :meth:`request`'s body was still going: the
        rest of the body is useless (curl stops it too). RST_STREAM CANCEL ends our side and the
        task is cancelled; the response stays readable (the stream ended both ways)."""
        log.debug("HTTP/2 stream %d: answered %d before its request body ended: stopping the upload",
                  stream.stream_id, stream._response.status if stream._response else 0)  # fmt: skip
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
            self._core.reset_stream(stream.stream_id, _CANCEL)
        self._wake_writer()
        stream._local_ended = True
        self._uploads[stream].cancel()
        self._stream_maybe_finished(stream)

    def _on_informational(self, ev: h2.events.InformationalResponseReceived) -> None:
        """1xx heads (100 Continue, 103 Early Hints) are not passed on."""

    def _on_response(self, ev: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is None:
            return
        try:
            pseudo, regular = check_fields(ev.headers, _RESPONSE_PSEUDO)
            status = check_response_pseudo(pseudo)
        except Malformed as exc:
            self._malformed(stream, f"malformed response head: {exc}")
            return
        response = H2Response(status, _headers(regular), stream)
        stream._response = response
        stream._owner = response
        if stream._head is not None:
            stream._head.set()
            self._kicked += 1

    def _check_can_open(self) -> None:
        self._check_running()
        if self._goaway_received is not None:
            raise StreamRefused("HTTP/2 connection is closing (the server sent GOAWAY): open a new one")

    async def _open(self, fields: list[tuple[bytes, bytes]], end_stream: bool, deadline: float) -> H2Stream:
        self._check_can_open()
        core = self._core
        if self._streams and not self._remote_settings.is_set():
            # the first request goes at once; more wait for the server's SETTINGS (its stream limit)
            with trio.move_on_at(deadline) as scope:
                await self._remote_settings.wait()
            if scope.cancelled_caught:
                raise Timeout("HTTP/2: no SETTINGS from the server before the deadline")
            self._check_can_open()
        if len(self._streams) >= core.peer_max_concurrent_streams() or self._queued() >= HIGH_WATER:
            with trio.move_on_at(deadline) as scope:
                while len(self._streams) >= core.peer_max_concurrent_streams() or self._queued() >= HIGH_WATER:
                    if len(self._streams) >= core.peer_max_concurrent_streams():
                        await self._slot_lot.park()
                    else:
                        await self._drain_lot.park()
                    self._check_can_open()
            if scope.cancelled_caught:
                raise Timeout("HTTP/2: no stream slot before the deadline (the server's concurrency limit)")
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        sid = core.get_next_available_stream_id()
        stream = H2Stream(self, sid, can_send=not end_stream)
        stream._head = trio.Event()
        self._streams[sid] = stream
        try:
            core.send_headers(sid, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            self._streams.pop(sid, None)
            raise _h2_fail(exc, "request") from None
        if end_stream:
            stream._local_ended = True
        self._wake_writer()
        return stream

    def _request_fields(self, method: str, target: str, headers: HeaderInput) -> list[tuple[bytes, bytes]]:
        hdrs = Headers(headers)
        authority = hdrs.get("host") or self.authority
        fields = [
            (b":method", method.encode("ascii")),
            (b":scheme", self.scheme.encode("ascii")),
            (b":authority", authority.encode("latin-1")),
            (b":path", target.encode("latin-1")),
        ]
        fields += _fields(hdrs)
        return fields

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeaderInput = (),
        body: Body = None,
        deadline: float = FOREVER,
    ) -> H2Response:
        """Send a request and return the response once its head arrived (the body streams).

        ``body``: bytes (sent with a content-length) or an async iterable of bytes.

        **Full duplex.** A body that fits the peer's open windows is handed to h2 before the
        response is awaited; a streamed body, or a larger one, is sent by a task in the
        connection's nursery while the response is read, so a server that answers as the body
        arrives (a streaming echo, an early 413) is never deadlocked against its own flow
        control. That task goes on after ``request()`` returned and ends with the body, or
        when the stream ends (the server reset it, the response was closed, the connection
        went): the body's iterator is then closed (``aclose()``) without being drained. A final
        answer of 300 or more that ends before the body stops it (RST_STREAM CANCEL, as curl
        does; the answer stays readable); a 2xx lets it go on (a server that does not want the
        rest resets the stream, RFC 9113 8.1).

        **Deadline** (and cancellation): it covers the request body and the response head.
        Passing before the head: the stream is reset and :class:`~stack.Timeout` raised.
        Passing while the body is still being sent after the head came: the stream is reset
        and the response body's ``recv`` raises :class:`~stack.Broken`. A body iterator that
        raises resets the stream likewise; the error is the :class:`~stack.Broken`'s
        ``__cause__``. A request the server refused unprocessed (REFUSED_STREAM, e.g. opened
        before its SETTINGS arrived) is sent again, up to :data:`RETRIES` times, when its body
        is bytes (replayable). Read or close every response: unread body bytes hold part of
        the connection window.
        """
        fields = self._request_fields(method, target, headers)
        data: bytes | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            if data and not any(name == b"content-length" for name, _ in fields):
                fields.append((b"content-length", b"%d" % len(data)))
        elif body is not None and not isinstance(body, AsyncIterable):
            raise TypeError(f"body must be bytes or an async iterable of bytes, not {type(body).__name__}")
        attempt = 0
        while True:
            try:
                return await self._request_once(fields, body, data, deadline)
            except StreamRefused:
                attempt += 1
                if attempt > RETRIES or (body is not None and data is None) or self._goaway_received is not None:
                    raise

    async def _request_once(
        self, fields: list[tuple[bytes, bytes]], body: Body, data: bytes | None, deadline: float
    ) -> H2Response:
        empty = body is None or (data is not None and not data)
        stream = await self._open(fields, end_stream=empty, deadline=deadline)
        ok = False
        try:
            if empty:
                pass
            elif data is not None and len(data) <= self._core.local_flow_control_window(stream.stream_id):
                try:  # within the peer's windows: handed to h2 at once, no task needed
                    await _send_body(stream, body, data, deadline)
                except Broken:
                    # a server may answer before the upload ended and then reset it (NO_ERROR)
                    if stream._response is None:
                        raise
            else:
                nursery = self._nursery
                if nursery is None:
                    self._check_running()  # raises: the connection stopped meanwhile
                assert nursery is not None
                nursery.start_soon(self._upload, stream, body, data, deadline, name=f"h2 upload {stream.stream_id}")
            try:
                response = await stream.response(deadline=deadline)
            except _UploadFailed as exc:  # before the head: as if request() had sent the body itself
                if exc.timed_out:
                    sid = stream.stream_id
                    raise Timeout(f"HTTP/2 stream {sid}: the request body was not sent by the deadline") from None
                cause = exc.__cause__
                if cause is not None and not isinstance(cause, StackError):
                    raise cause from None  # the iterator's own exception, as from a body sent inline
                raise
            ok = True
            return response
        finally:
            if not ok:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _upload(self, stream: H2Stream, body: Body, data: bytes | None, deadline: float) -> None:
        """The task that sends a request body for :meth:`request` (see there). Never raises but
        ``Cancelled``: a failure of its own (deadline, the iterator raised) resets the stream,
        whose users then get it; a stream that ended first (reset, closed, the connection
        failed) already tells its users why."""
        sid = stream.stream_id
        failure: _UploadFailed | None = None
        complete = False
        scope = self._uploads[stream] = trio.CancelScope(deadline=deadline)  # _stop_upload cancels it
        try:
            with scope:
                await _send_body(stream, body, data, deadline)
                complete = True
            if scope.cancelled_caught and not stream._local_ended:
                raise Timeout("the request's deadline passed")
        except Timeout:
            failure = _UploadFailed(f"HTTP/2 stream {sid}: the request body was not sent by the request's deadline")
            failure.timed_out = True
        except Exception as exc:  # the caller's iterator raised, or h2 refused the data
            if stream._error() is None and not stream._local_ended:  # (else the stream says why)
                failure = _UploadFailed(f"HTTP/2 stream {sid}: the request body failed: {exc!r}")
                failure.__cause__ = exc
        finally:
            del self._uploads[stream]
            aclose = None if complete else getattr(body, "aclose", None)
            if aclose is not None:  # an async generator's finally runs now, not when collected
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_GRACE):
                    try:
                        await aclose()
                    except Exception as exc:
                        log.debug("HTTP/2 stream %d: closing the request body's iterator failed: %r", sid, exc)
        if failure is not None and stream._error() is None:
            log.debug("%s; resetting the stream", failure)
            self._reset_stream(stream, _CANCEL, failure)

    async def start_request(
        self, method: str, target: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> H2Stream:
        """Open a request whose body the caller streams: returns the stream at once.

        ``send``/``done(trailers=)`` write the request body; ``await stream.response()`` waits
        for the head; ``recv`` reads the response body (the two directions are independent,
        so this is also the full-duplex, gRPC-style exchange).
        """
        return await self._open(self._request_fields(method, target, headers), False, deadline)

    async def connect_tunnel(
        self,
        authority: str,
        *,
        protocol: str | None = None,
        path: str = "/",
        headers: HeaderInput = (),
        deadline: float = FOREVER,
    ) -> H2Stream:
        """Open a CONNECT tunnel (RFC 9113 8.5) to ``authority`` and return it as a ByteStream.

        With ``protocol`` it is an extended CONNECT (RFC 8441, e.g. ``"websocket"``) to ``path``
        on this connection's authority; the server must have sent
        SETTINGS_ENABLE_CONNECT_PROTOCOL=1 (this waits for its SETTINGS). A non-2xx answer
        raises :class:`TunnelRefused`. The deadline covers the whole exchange.
        """
        if protocol is not None:
            self._check_running()
            if not self._remote_settings.is_set():
                with trio.move_on_at(deadline) as scope:
                    await self._remote_settings.wait()
                if scope.cancelled_caught:
                    raise Timeout("HTTP/2 extended CONNECT: no SETTINGS from the server before the deadline")
            self._check_running()
            if not self._core.remote_settings.enable_connect_protocol:
                raise StackError("the server does not support extended CONNECT (RFC 8441)")
            fields = [
                (b":method", b"CONNECT"),
                (b":protocol", protocol.encode("ascii")),
                (b":scheme", self.scheme.encode("ascii")),
                (b":authority", authority.encode("latin-1")),
                (b":path", path.encode("latin-1")),
            ]
        else:
            fields = [(b":method", b"CONNECT"), (b":authority", authority.encode("latin-1"))]
        fields += _fields(Headers(headers))
        stream = await self._open(fields, end_stream=False, deadline=deadline)
        ok = False
        try:
            response = await stream.response(deadline=deadline)
            if not 200 <= response.status < 300:
                raise TunnelRefused(f"CONNECT {authority} refused: {response.status}", response)
            ok = True
            return stream
        finally:
            if not ok:
                with trio.CancelScope(shield=True):
                    await stream.aclose()


# =============================================================================================
# specs and h2c


@dataclass(frozen=True)
class server:
    """Spec: the server side of HTTP/2 on ``lower`` (after ALPN ``h2`` or the sniffed preface).

    ``attach`` sends our SETTINGS and reads the client's preface and SETTINGS under the
    deadline (a silent or non-HTTP/2 peer fails the attach). ``handle(conn)`` (what
    :meth:`stack.Stack.serve` calls) runs ``conn.serve(app)``. ``shutdown``: see the module
    docstring. ``enable_connect_protocol``: advertise extended CONNECT (RFC 8441).
    """

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)
    enable_connect_protocol: bool = True

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> H2ServerConnection:
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http2.server attaches to a ByteStream, not {type(lower).__name__}")
        conn = H2ServerConnection(
            lower, self.limits, self.shutdown, enable_connect_protocol=self.enable_connect_protocol
        )
        await conn._handshake(deadline)
        return conn

    async def handle(self, conn: H2ServerConnection) -> None:
        await conn.serve(self.app)


@dataclass(frozen=True)
class client:
    """Spec: the client side of HTTP/2 on ``lower`` (after ALPN ``h2``, or prior knowledge).

    ``attach`` sends the preface and our SETTINGS (under the deadline) and returns at once; the
    connection runs inside ``async with conn:``. ``authority`` is the default ``:authority``
    (a request's ``host`` header overrides it); ``scheme`` the ``:scheme``.
    """

    limits: Limits = DEFAULT_LIMITS
    authority: str = "localhost"
    scheme: str = "http"

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> H2ClientConnection:
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http2.client attaches to a ByteStream, not {type(lower).__name__}")
        conn = H2ClientConnection(lower, self.limits, self.authority, self.scheme)
        await conn._handshake(deadline)
        return conn


def h2c_settings(headers: Headers) -> bytes | None:
    """For an HTTP/1.1 server: the decoded HTTP2-Settings payload if ``headers`` ask for a valid
    ``Upgrade: h2c`` (RFC 7540 3.2: an ``h2c`` token in Upgrade, ``Connection`` naming
    ``Upgrade`` and ``HTTP2-Settings``, exactly one well-formed HTTP2-Settings), else ``None``
    (then serve the request over HTTP/1.1 and ignore the Upgrade)."""
    upgrade = [t.strip().lower() for v in headers.get_all("upgrade") for t in v.split(",")]
    if "h2c" not in upgrade:
        return None
    connection = {t.strip().lower() for v in headers.get_all("connection") for t in v.split(",")}
    if not {"upgrade", "http2-settings"} <= connection:
        return None
    values = headers.get_all("http2-settings")
    if len(values) != 1:
        return None
    value = values[0].strip().rstrip("=")
    if not _BASE64URL.fullmatch(value):
        return None
    try:
        payload = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(payload) % 6:
        return None
    return payload


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
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
) -> None:
    """Answer ``101 Switching Protocols`` on ``lower`` and serve ``app`` over HTTP/2 there until
    the connection ends, then close it: what an HTTP/1.1 server calls for a request whose
    headers :func:`h2c_settings` accepted (``settings`` is its result; RFC 7540 3.2).

    ``request``, with its whole ``body`` (read by the caller), becomes stream 1, the app's first
    request. Bytes the HTTP/1.1 parser read past the request must have been pushed back into
    ``lower`` (``lower.unread``). ``deadline`` covers the 101 and the client's preface; a failure
    there raises, and ``lower`` is the caller's to close.
    """
    conn = H2ServerConnection(lower, limits, shutdown)
    await conn._handshake(deadline, upgrade_settings=base64.urlsafe_b64encode(settings), prefix=_SWITCHING)
    hop_by_hop = (b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"transfer-encoding")
    headers = _headers([(k, v) for k, v in request.headers.raw if k not in hop_by_hop])
    stream = H2Stream(conn, 1, can_send=False)
    stream._in += body
    stream._ack_exempt = len(body)  # never counted against a window
    stream._in_ended = True
    upgraded = H2Request(
        stream, request.method, request.target, headers, scheme="http", authority=request.authority, limits=limits
    )
    stream._owner = upgraded
    conn._upgrade_request = upgraded  # admitted once the connection runs (the app needs the nursery)
    try:
        await conn.serve(app)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()
