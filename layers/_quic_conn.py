"""One QUIC connection: the engine, its driver task, its streams (see :mod:`layers.quic`).

Theory of operation: :class:`QuicConnection` owns an :class:`~layers._quic_engine.Engine`
(aioquic, sans-io) and the UDP socket it sends on (a client's own, or the listener's shared one).
Datagrams come in through :meth:`QuicConnection.datagram_received`, called by whoever reads the
socket (the client's reader task, or the listener's demultiplexer); it feeds the engine and
turns the engine's events into stream state at once, without an ``await``. One *driver* task per
connection (:meth:`QuicConnection.drive`) is the only place datagrams leave: it sends what the
engine has to send, runs the engine's timer (retransmission, ACK delay, idle timeout), and sleeps
until something is queued (:meth:`wake`) or the timer fires. Streams commit bytes into the engine
and wake the driver; the driver's :meth:`wait_progress` lets senders wait for the bytes to leave.
When the engine held back a stream's few-byte tail (``Engine.cork``: a writer of 64 KiB chunks
in 64 KiB datagrams would otherwise send a full datagram and a tiny one per write), the driver
gives the writer :data:`HOLD_ROUNDS` scheduling rounds to commit more before the tail leaves alone.

An application protocol that needs the raw stream events (HTTP/3, whose framing aioquic's
``H3Connection`` does on the engine itself) installs ``event_hook``: it sees every event first
and returns ``True`` for those it handled.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from aioquic.quic import events as qe

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, StackError, Timeout
from stack.streams import Info

from ._quic_engine import Engine
from ._quic_pmtu import route_payload
from ._quic_stream import QuicStream
from .tls import HandshakeError

__all__ = ["DEFAULT_QUIC_LIMITS", "QuicConnection", "QuicLimits"]

log = logging.getLogger("stack.quic")

HOLD_ROUNDS = 2
"""Scheduling rounds the driver waits for a writer to add to a held-back tail (``_send_held``)."""

MAX_HOLDS = 8
"""Passes in a row that may hold a tail back before it is sent whatever comes."""

_ALERT_REASONS = {
    48: "unknown_ca",
    42: "bad_certificate",
    45: "bad_certificate",
    44: "bad_certificate",
    46: "bad_certificate",
    116: "certificate_required",
    120: "no_alpn",
    112: "unrecognized_name",
    70: "protocol_version",
    40: "failed",
}


@dataclass(frozen=True)
class QuicLimits:
    """Every QUIC knob, with a safe default.

    ``idle_timeout``: seconds without a packet before the connection ends (both ends announce
    theirs; the smaller wins). ``handshake_timeout``: seconds a new connection has to finish its
    handshake. ``max_streams``: bidirectional streams the peer may have open at once (more are
    refused by QUIC flow control itself: the peer cannot open them); ``max_uni_streams`` the same
    for unidirectional ones (HTTP/3 needs 3). ``stream_window``: bytes a stream buffers unread
    (its initial receive window; credit is granted as the application reads); ``connection_window``:
    the initial connection-wide window (credit granted as the application reads any stream).
    Receive-window auto-tuning: a window whose previous update went out less than two round trips
    before is doubled (the reader is faster than the window lets the peer send), up to
    ``max_stream_window`` (16 MiB) and ``max_connection_window`` (32 MiB); what is buffered unread
    stays bounded by the caps, since credit only follows what was read. Listener only:
    ``max_connections`` at once (further Initial packets are dropped), ``drain_timeout``: seconds
    connections get to finish on shutdown.
    ``datagram_size``: the datagram size a connection starts with (1200..16000; default 1350,
    which every Internet path carries). ``pmtu``: path MTU discovery (RFC 8899 / RFC 9000 14.3,
    :mod:`layers._quic_pmtu`): once the handshake is confirmed, where the system tells the local
    route's MTU (Linux), a PING+PADDING probe of a larger size is sent and the datagram size is
    raised only once the peer acknowledged it, never above the peer's ``max_udp_payload_size``
    nor ``max_datagram_size`` (up to 65507, the largest IPv4 UDP payload); elsewhere, or with
    ``pmtu=False``, the connection stays at ``datagram_size``. On loopback (MTU 65536) that is
    one probe to about 64 KiB datagrams, the cost of QUIC in aioquic being per packet.
    """

    idle_timeout: float = 30.0
    handshake_timeout: float = 10.0
    max_streams: int = 100
    max_uni_streams: int = 8
    stream_window: int = 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    max_stream_window: int = 16 * 1024 * 1024
    max_connection_window: int = 32 * 1024 * 1024
    max_connections: int = 10_000
    drain_timeout: float = 10.0
    datagram_size: int = 1350
    pmtu: bool = True
    max_datagram_size: int = 65507

    def __post_init__(self) -> None:
        if not 1200 <= self.datagram_size <= 16000:
            raise ValueError("QuicLimits.datagram_size must be 1200..16000 bytes")
        if not self.datagram_size <= self.max_datagram_size <= 65507:
            raise ValueError("QuicLimits.max_datagram_size must be datagram_size..65507 bytes")
        if self.max_stream_window < self.stream_window or self.max_connection_window < self.connection_window:
            raise ValueError("QuicLimits: max_stream_window / max_connection_window are at least the initial windows")


DEFAULT_QUIC_LIMITS = QuicLimits()


def _terminated_error(event: qe.ConnectionTerminated, handshaken: bool, who: str) -> StackError:
    code, reason = event.error_code, event.reason_phrase
    if not handshaken and 0x100 <= code <= 0x1FF:
        alert = code - 0x100
        kind = _ALERT_REASONS.get(alert, "failed")
        if "doesn't match" in reason:
            kind = "hostname_mismatch"
        elif alert == 42 and ("self-signed" in reason or "issuer" in reason):  # aioquic's X509 store
            kind = "unknown_ca"
        return HandshakeError(f"QUIC handshake with {who} failed: TLS alert {alert} ({reason or kind})", reason=kind)
    if not handshaken:
        return HandshakeError(
            f"QUIC handshake with {who} failed: connection closed (error {code:#x}: {reason or 'no reason given'})",
            reason="eof" if code == 0 else "failed",
        )
    if code == 0:
        return Broken(f"QUIC connection with {who} closed ({reason or 'no error'})")
    return Broken(f"QUIC connection with {who} closed with error {code:#x} ({reason or 'no reason given'})")


class QuicConnection:
    """A QUIC connection (see :mod:`layers.quic`): ``open_stream``, ``accept_stream``, ``ping``,
    ``aclose``; ``info``; ``closing`` (an event set when the listener is shutting down)."""

    cancel_code = 0
    """The application error code of RESET_STREAM / STOP_SENDING when a stream is abandoned."""

    def __init__(
        self,
        engine: Engine,
        sock: Any,
        *,
        is_client: bool,
        limits: QuicLimits,
        info: dict[str, Any],
    ) -> None:
        self._engine = engine
        self._sock = sock
        self.is_client = is_client
        self.limits = limits
        self._info = info
        self.info = Info(info)
        self._streams: dict[int, QuicStream] = {}
        self._accepted: deque[QuicStream] = deque()
        self._peer_highest: dict[int, int] = {}
        self._peer_gaps: set[int] = set()
        self._accept_ev: trio.Event | None = None
        self._failure: StackError | None = None
        self._wake_ev = trio.Event()
        self._progress = trio.Event()
        self._handshake = trio.Event()
        self._handshaken = False
        self._terminated = trio.Event()
        self._stop_driving = False
        self._wakes = 0
        self._holds = 0
        self._pings: dict[int, trio.Event] = {}
        self._ping_ids = itertools.count(1)
        self.closing = trio.Event()
        self.ended = trio.Event()
        """Set once the connection ended (either side closed it, idle timeout, failure)."""
        self.event_hook: Callable[[qe.QuicEvent], bool] | None = None
        self.on_cid_issued: Callable[[bytes], None] | None = None
        self.on_cid_retired: Callable[[bytes], None] | None = None
        engine.buffered = self._buffered
        engine.buffered_total = self._buffered_total
        engine.sends_buffers = True  # _transmit hands datagrams to sendto, which takes a bytearray
        engine.stream_window = limits.stream_window
        engine.max_stream_window = limits.max_stream_window
        engine.max_connection_window = limits.max_connection_window

    def __repr__(self) -> str:
        state = "failed" if self._failure else "open"
        return f"<QuicConnection {self._info.get('peer')} {state}>"

    @property
    def engine(self) -> Engine:
        """The aioquic connection (for an application protocol layered on it)."""
        return self._engine

    # ---- what streams ask (StreamOwner) ----------------------------------------------------

    def failure(self) -> StackError | None:
        return self._failure

    def unsent(self, stream_id: int) -> int:
        return self._engine.unsent(stream_id)

    async def wait_progress(self) -> None:
        if self._failure is None:
            await self._progress.wait()

    def send_stream_data(self, stream_id: int, data: bytes | memoryview | bytearray, end_stream: bool) -> None:
        self._engine.send_stream_data(stream_id, data, end_stream)  # type: ignore[arg-type]  # copied in
        self.wake()

    def consumed(self, stream: QuicStream) -> None:
        if self._engine.credit_due(stream.stream_id):
            self.wake()

    def abandon(self, stream: QuicStream, reset: bool, stop: bool) -> None:
        sid = stream.stream_id
        engine = self._engine
        try:
            if reset:
                engine.reset_stream(sid, self.cancel_code)
            if stop:
                engine.stop_stream(sid, self.cancel_code)
        except ValueError:  # the engine already forgot the stream
            pass
        self._streams.pop(sid, None)
        engine.credit_due(sid)  # what it buffered is free: the connection's credit may be due
        self.wake()

    def release_if_done(self, stream: QuicStream) -> None:
        if stream._local_ended and stream._in_ended and not stream._in and not stream._first:
            self._streams.pop(stream.stream_id, None)

    def register(self, stream: QuicStream) -> None:
        """Track ``stream`` (its receive window follows what its ``_in`` holds)."""
        self._streams[stream.stream_id] = stream

    def set_event_hook(self, hook: Callable[[qe.QuicEvent], bool]) -> None:
        """Install ``hook`` (see the module docstring). Streams the peer opened that nobody
        accepted yet are handed to it as the events that made them, their bytes in order (the
        peer may have sent on them before the application protocol was attached)."""
        self.event_hook = hook
        held, self._accepted = self._accepted, deque()
        for stream in held:
            self._streams.pop(stream.stream_id, None)
            data = stream._take_queued() + bytes(stream._in)
            stream._in = bytearray()
            if data or stream._in_ended:
                hook(qe.StreamDataReceived(data=data, end_stream=stream._in_ended, stream_id=stream.stream_id))

    def stream(self, stream_id: int) -> QuicStream | None:
        """The stream with this id, while it is tracked."""
        return self._streams.get(stream_id)

    def _buffered(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream._buffered_in() if stream is not None else 0

    def _buffered_total(self) -> int:
        return sum(stream._buffered_in() for stream in self._streams.values())

    # ---- the public API ------------------------------------------------------------------

    def open_stream(self, *, unidirectional: bool = False) -> QuicStream:
        """A new stream of ours (the peer learns of it with its first byte or FIN)."""
        if self._failure is not None:
            raise self._failure
        engine = self._engine
        sid = engine.get_next_available_stream_id(is_unidirectional=unidirectional)
        engine.send_stream_data(sid, b"", False)  # makes the engine create it: the next id moves on
        stream = QuicStream(self, sid, can_send=True, can_recv=not unidirectional)
        self._streams[sid] = stream
        return stream

    async def accept_stream(self, *, deadline: float = FOREVER) -> QuicStream:
        """The next stream the peer opened. When the connection ended: its error
        (:class:`~stack.Broken`, or :class:`~stack.Closed` after our ``aclose``). On deadline:
        :class:`~stack.Timeout`."""
        with trio.move_on_at(deadline):
            while not self._accepted:
                if self._failure is not None:
                    raise self._failure
                ev = self._accept_ev
                if ev is None:
                    ev = self._accept_ev = trio.Event()
                await ev.wait()
            return self._accepted.popleft()
        raise Timeout("QUIC: no stream was opened by the peer before the deadline")

    async def ping(self, *, deadline: float = FOREVER) -> float:
        """Send a PING and wait for its acknowledgement; returns the round trip in seconds."""
        if self._failure is not None:
            raise self._failure
        uid = next(self._ping_ids)
        ev = self._pings[uid] = trio.Event()
        start = trio.current_time()
        self._engine.send_ping(uid)
        self.wake()
        with trio.move_on_at(deadline):
            await ev.wait()
            if self._failure is not None:
                raise self._failure
            return trio.current_time() - start
        self._pings.pop(uid, None)
        raise Timeout("QUIC ping: no acknowledgement before the deadline")

    async def aclose(self, *, error_code: int = 0, reason: str = "", deadline: float | None = None) -> None:
        """Close the connection (CONNECTION_CLOSE with ``error_code``), after the driver sent
        what was committed. Idempotent; never raises a :class:`~stack.StackError`."""
        if self._failure is None:
            self._failure = Closed("the QUIC connection was closed on this side")
            self._engine.close(error_code=error_code, reason_phrase=reason)
            self._fail_all()
        self._stop_driving = True
        self.wake()
        if deadline is None:
            deadline = trio.current_time() + 1.0
        with trio.move_on_at(deadline), trio.CancelScope(shield=True):
            await self._terminated.wait()

    # ---- I/O -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was queued in the engine: let the driver send it."""
        self._wakes += 1
        self._wake_ev.set()

    def datagram_received(self, data: bytes, address: Any) -> None:
        """A datagram for this connection (no ``await``: state changes at once)."""
        self._engine.receive_datagram(data, address, now=trio.current_time())
        self._process()
        self.wake()

    async def drive(self) -> None:
        """The driver task: send, run the timer, sleep; returns once the connection ended and its
        last datagrams left. Run it in the nursery that owns the connection."""
        engine = self._engine
        try:
            while True:
                self._wake_ev = trio.Event()
                now = trio.current_time()
                timer = engine.get_timer()
                if timer is not None and timer <= now:
                    engine.handle_timer(now=now)
                    self._process()
                await self._transmit()
                if self._stop_driving or self._terminated.is_set():
                    engine.cork = False
                    await self._transmit()  # what was queued while the last one waited (a CONNECTION_CLOSE)
                    return
                if engine.held:
                    if await self._send_held():
                        continue  # the writer committed more: sent now (the hold yielded already)
                else:
                    self._holds = 0
                timer = engine.get_timer()
                with trio.move_on_at(math.inf if timer is None else timer):
                    await self._wake_ev.wait()
        finally:
            if self._failure is None:
                self._failure = Closed("the QUIC connection's driver stopped")
                self._fail_all()
            self._terminated.set()

    async def _send_held(self) -> bool:
        """The engine held back a stream's small tail (``Engine.cork``): let the writer run for
        :data:`HOLD_ROUNDS` scheduling rounds; if anything woke the driver meanwhile (the writer
        committed more), the next pass sends it all (a full datagram, not a full one and a few
        bytes) and may hold a tail again, at most :data:`MAX_HOLDS` times in a row; otherwise the
        tail leaves now. True when woken: the driver then goes round at once (these rounds were
        its yield; a sleep on its set event would cost a cancel scope and one more round per
        datagram of a bulk writer)."""
        engine = self._engine
        engine.held = False
        wakes = self._wakes
        self._holds += 1
        if self._holds <= MAX_HOLDS:
            for _ in range(HOLD_ROUNDS):
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self._wakes != wakes:
                    return True  # woken: the driver's loop comes round at once, without sleeping
        self._holds = 0
        engine.cork = False
        try:
            await self._transmit()
        finally:
            engine.cork = True
        return False

    async def _transmit(self) -> None:
        datagrams = self._engine.datagrams_to_send(now=trio.current_time())
        if not datagrams:
            return
        # One pass hands every datagram to the kernel (a datagram it refuses is a lost datagram:
        # QUIC's loss recovery sends its frames again); only a full send buffer waits.
        await self._sock.send_batch(datagrams)
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    def datagrams_received(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """A batch of ``(datagram, address)`` pairs for this connection."""
        self._engine.receive_batch(datagrams, trio.current_time())
        self._process()
        self.wake()

    # ---- events --------------------------------------------------------------------------

    def _process(self) -> None:
        engine = self._engine
        event = engine.next_event()
        while event is not None:
            hook = self.event_hook
            if hook is None or not hook(event):
                self._event(event)
            event = engine.next_event()

    def _event(self, event: qe.QuicEvent) -> None:
        kind = type(event)
        if kind is qe.StreamDataReceived:
            assert isinstance(event, qe.StreamDataReceived)
            stream = self._streams.get(event.stream_id)
            if stream is None:
                stream = self._incoming(event.stream_id)
                if stream is None:
                    return
            stream._on_data(event.data, event.end_stream)
        elif kind is qe.StreamReset:
            assert isinstance(event, qe.StreamReset)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_reset(
                    Broken(f"QUIC stream {event.stream_id} was reset by the peer (error code {event.error_code:#x})")
                )
        elif kind is qe.StopSendingReceived:
            assert isinstance(event, qe.StopSendingReceived)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                stream._on_stop(
                    Broken(f"QUIC stream {event.stream_id}: the peer stopped reading (error code {code:#x})")
                )
        elif kind is qe.HandshakeCompleted:
            assert isinstance(event, qe.HandshakeCompleted)
            self._handshaken = True
            self._info["alpn"] = event.alpn_protocol
            self._info["session_resumed"] = event.session_resumed
            self._handshake.set()
            self._engine.lighten_crypto()
            limits = self.limits
            if limits.pmtu:
                self._engine.start_pmtud(route_payload(self._info.get("peer")), limits.max_datagram_size)
        elif kind is qe.ConnectionTerminated:
            assert isinstance(event, qe.ConnectionTerminated)
            if self._failure is None:
                self._failure = _terminated_error(event, self._handshaken, str(self._info.get("peer")))
                log.debug("quic %s: %s", self._info.get("peer"), self._failure)
            self._fail_all()
            self._stop_driving = True
            self._handshake.set()
        elif kind is qe.ConnectionIdIssued:
            assert isinstance(event, qe.ConnectionIdIssued)
            if self.on_cid_issued is not None:
                self.on_cid_issued(event.connection_id)
        elif kind is qe.ConnectionIdRetired:
            assert isinstance(event, qe.ConnectionIdRetired)
            if self.on_cid_retired is not None:
                self.on_cid_retired(event.connection_id)
        elif kind is qe.PingAcknowledged:
            assert isinstance(event, qe.PingAcknowledged)
            ev = self._pings.pop(event.uid, None)
            if ev is not None:
                ev.set()

    def _incoming(self, stream_id: int) -> QuicStream | None:
        """A stream the peer opened (``None`` for one of ours that we already forgot)."""
        if bool(stream_id & 1) != self.is_client:  # initiated by us: abandoned, late data
            return None
        # A stream of the peer's we already had and forgot (late data after it ended or was
        # abandoned) is not a new stream. Peer streams are numbered in order but their first
        # bytes may arrive out of order: the ids skipped so far wait in _peer_gaps (at most the
        # stream limit of them, since the peer cannot open more at once).
        kind = stream_id & 3
        highest = self._peer_highest.get(kind, kind - 4)
        if stream_id <= highest:
            if stream_id not in self._peer_gaps:
                return None
            self._peer_gaps.discard(stream_id)
        else:
            self._peer_gaps.update(range(highest + 4, stream_id, 4))
            self._peer_highest[kind] = stream_id
        uni = bool(stream_id & 2)
        stream = QuicStream(self, stream_id, can_send=not uni, can_recv=True)
        self._streams[stream_id] = stream
        self._accepted.append(stream)
        ev = self._accept_ev
        if ev is not None:
            self._accept_ev = None
            ev.set()
        return stream

    def _fail_all(self) -> None:
        assert self._failure is not None
        self.ended.set()
        for stream in list(self._streams.values()):
            stream._wake()
        ev = self._accept_ev
        if ev is not None:
            self._accept_ev = None
            ev.set()
        for ping in self._pings.values():
            ping.set()
        self._progress.set()

    async def wait_handshake(self, deadline: float) -> None:
        """Wait for the handshake: raises :class:`~layers.tls.HandshakeError` if it failed,
        :class:`~stack.Timeout` past ``deadline``."""
        with trio.move_on_at(deadline):
            await self._handshake.wait()
        if not self._handshaken:
            if self._failure is not None:
                raise self._failure
            raise Timeout(f"QUIC handshake with {self._info.get('peer')} timed out")
