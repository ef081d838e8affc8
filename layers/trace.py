"""A trace layer: see what crosses one boundary of a stack, with sizes, timings and errors.

::

    stack = Stack(tcp.connect(host, port), trace.log("tcp"), tls.client(), trace.log("tls"))
    recorder = trace.Recorder()
    messages = await trace.log("app", recorder=recorder, preview=16).attach(framed)
    ...
    assert recorder.ops() == ["attach", "send", "recv", "close"]

The traced stream has the kind of the stream below (a ByteStream over a ByteStream, a
MessageStream over a MessageStream) and changes nothing about it: every call goes straight to
the stream below, with the same deadline, and its result or exception comes back unchanged.
Each call down produces one :class:`Event`: ``attach`` (when the layer is attached), ``send``,
``recv``, ``done``, ``close`` and ``detach``. Over a ByteStream, events are the traffic between
the two layers: a ``recv`` event for each receive from below (``recv_exactly`` on the traced
stream may make several), a ``send`` event for each send down (the layer commits at most
:data:`stack.passthrough.CHUNK` bytes a step, as every layer does, so a larger send makes several; a send that
times out reports its ``Timeout.sent`` as usual, and its event the bytes that went down).

An event goes to the logger (name :data:`LOGGER`, ``"stack.trace"``, or the spec's ``logger``)
and to the spec's ``recorder`` (any callable taking an :class:`Event`; :class:`Recorder` keeps
a list, for tests). Levels: ``send`` and ``recv`` at DEBUG (they are the bulk); ``attach``,
``done``, ``close``, ``detach`` at INFO; any call that fails with something other than a
timeout, a cancellation or the end of the stream at WARNING. When the logger is not enabled
for a level and there is no recorder, nothing is formatted (the layer costs a time lookup).

Payloads are not in events unless ``preview`` > 0 (default 0: payloads may be secrets): then
the first ``preview`` bytes are, and logged with ``repr``.

Attaching and detaching lose nothing: the layer keeps no data of its own, except bytes that
``recv_exactly`` / ``recv_until`` on a traced ByteStream read ahead, which ``detach()`` hands
back to the stream below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import EndOfStream, StackError, Timeout
from stack.passthrough import PassThrough
from stack.streams import ByteStream, MessageStream, Stream

__all__ = ["LOGGER", "Event", "Recorder", "TracedBytes", "TracedMessages", "log"]

LOGGER = "stack.trace"
"""Default logger name."""

_DATA_OPS = ("send", "recv")
_LEVELS = {"data": logging.DEBUG, "lifecycle": logging.INFO, "error": logging.WARNING}


@dataclass(frozen=True)
class Event:
    """One call across the traced boundary.

    ``outcome``: ``"ok"``, ``"end"`` (the end of the stream: ``b""`` or ``EndOfStream``),
    ``"timeout"``, ``"cancelled"`` or ``"error"`` (``error`` holds the exception). ``size``:
    bytes sent or received (a message's length), ``None`` where there is none; on a send that
    timed out, the bytes committed (``Timeout.sent``). ``started`` is on trio's clock,
    ``duration`` in seconds. ``preview``: the first bytes of the payload, if the spec asked.
    """

    label: str
    op: str
    outcome: str = "ok"
    size: int | None = None
    started: float = 0.0
    duration: float = 0.0
    error: BaseException | None = None
    preview: bytes = b""

    def describe(self) -> str:
        """One line for a log: ``tcp recv 5 bytes in 0.012 ms b'hello'``."""
        parts = [self.label, self.op]
        if self.outcome != "ok":
            parts.append(self.outcome)
        if self.size is not None:
            parts.append(f"{self.size} bytes")
        parts.append(f"in {self.duration * 1000:.3f} ms")
        if self.error is not None and self.outcome == "error":
            parts.append(f"{type(self.error).__name__}: {self.error}")
        if self.preview:
            parts.append(repr(self.preview))
        return " ".join(parts)


@dataclass
class Recorder:
    """Keeps every event in ``events`` (pass it as ``recorder=``): for tests and tools."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def ops(self) -> list[str]:
        """The events' ``op`` names, in order."""
        return [e.op for e in self.events]

    def total(self, op: str) -> int:
        """Bytes in the ``op`` events (``"send"`` or ``"recv"``)."""
        return sum(e.size or 0 for e in self.events if e.op == op)

    def clear(self) -> None:
        self.events.clear()


def _outcome(exc: BaseException, deadline: float) -> str:
    if isinstance(exc, Timeout):
        return "timeout"
    if isinstance(exc, trio.Cancelled):
        # The call's own deadline shows up here as a cancellation: the traced stream's scope for
        # that deadline is outside the call down, and trio lets the outermost one catch it.
        return "timeout" if trio.current_time() >= deadline else "cancelled"
    if isinstance(exc, EndOfStream):
        return "end"
    return "error"


class _Tracer:
    """Builds events and sends them to the logger and the recorder."""

    __slots__ = ("label", "logger", "preview", "recorder")

    def __init__(self, label: str, logger: str, preview: int, recorder: Callable[[Event], None] | None) -> None:
        self.label = label
        self.logger = logging.getLogger(logger)
        self.preview = preview
        self.recorder = recorder

    def emit(
        self,
        op: str,
        started: float,
        *,
        size: int | None = None,
        exc: BaseException | None = None,
        data: bytes | bytearray | memoryview | None = None,
        outcome: str | None = None,
        deadline: float = FOREVER,
    ) -> None:
        if outcome is None:
            outcome = "ok" if exc is None else _outcome(exc, deadline)
        level = _LEVELS["error"] if outcome == "error" else _LEVELS["data" if op in _DATA_OPS else "lifecycle"]
        logging_on = self.logger.isEnabledFor(level)
        if not logging_on and self.recorder is None:
            return
        event = Event(
            self.label,
            op,
            outcome,
            size,
            started,
            trio.current_time() - started,
            exc,
            bytes(data[: self.preview]) if data is not None and self.preview else b"",
        )
        if logging_on:
            self.logger.log(level, "%s", event.describe())
        if self.recorder is not None:
            self.recorder(event)


class _Traced:
    """What both traced kinds share: done, close and the tracer."""

    _tracer: _Tracer
    _lower: Any

    async def _done(self, deadline: float) -> None:
        started = trio.current_time()
        try:
            await self._lower.done(deadline=deadline)
        except BaseException as exc:
            self._tracer.emit("done", started, exc=exc)
            raise
        self._tracer.emit("done", started)


class TracedBytes(_Traced, PassThrough):
    """A traced ByteStream (see the module docstring)."""

    kind = "trace"
    _lower: ByteStream

    def __init__(self, lower: ByteStream, tracer: _Tracer) -> None:
        super().__init__(lower, {})
        self._tracer = tracer

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        started = trio.current_time()
        try:
            data = await self._lower.recv(max_bytes, deadline=deadline)
        except BaseException as exc:
            self._tracer.emit("recv", started, exc=exc, deadline=deadline)
            raise
        self._tracer.emit("recv", started, size=len(data), data=data, outcome="ok" if data else "end")
        return data

    async def _flush(self, deadline: float) -> None:
        out = self._outbuf
        if not out:
            return
        before = len(out)
        head = bytes(out[: self._tracer.preview])
        started = trio.current_time()
        try:
            await self._lower.send_from(out, deadline=deadline)
        except BaseException as exc:
            sent = before - len(out)
            self._tracer.emit("send", started, size=sent, exc=exc, data=head[:sent], deadline=deadline)
            raise
        self._tracer.emit("send", started, size=before, data=head)

    async def aclose(self, *, deadline: float | None = None) -> None:
        if self._closed is not None:
            return
        started = trio.current_time()
        try:
            await super().aclose(deadline=deadline)
        finally:
            self._tracer.emit("close", started)

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Undo the layer; bytes it read ahead go back to the stream below, which is returned."""
        started = trio.current_time()
        pending = len(self._unread)
        try:
            lower = await super().detach(deadline=deadline)
        except BaseException as exc:
            self._tracer.emit("detach", started, exc=exc)
            raise
        self._tracer.emit("detach", started, size=pending)
        return lower


class TracedMessages(_Traced, MessageStream):
    """A traced MessageStream (see the module docstring)."""

    kind = "trace"
    _lower: MessageStream

    def __init__(self, lower: MessageStream, tracer: _Tracer) -> None:
        super().__init__(lower, {})
        self._tracer = tracer

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        started = trio.current_time()
        try:
            await self._lower.send(msg, deadline=deadline)
        except BaseException as exc:
            # Timed out or cancelled (our own scope for the same deadline may fire first, so the
            # lower send sees a cancellation): the lower stream's own record says if it committed.
            committed = self._message_committed = self._lower.committed
            size = len(msg) if committed else 0
            self._tracer.emit("send", started, size=size, exc=exc, data=msg if committed else None, deadline=deadline)
            raise
        self._message_committed = True
        self._tracer.emit("send", started, size=len(msg), data=msg)

    async def _recv_message(self, deadline: float) -> bytes | None:
        started = trio.current_time()
        try:
            msg = await self._lower.recv(deadline=deadline)
        except EndOfStream:
            self._tracer.emit("recv", started, outcome="end")
            return None
        except BaseException as exc:
            self._tracer.emit("recv", started, exc=exc, deadline=deadline)
            raise
        self._tracer.emit("recv", started, size=len(msg), data=msg)
        return msg

    async def aclose(self, *, deadline: float | None = None) -> None:
        if self._closed is not None:
            return
        started = trio.current_time()
        try:
            await super().aclose(deadline=deadline)
        finally:
            self._tracer.emit("close", started)

    async def _detach(self, deadline: float) -> MessageStream:
        return self._lower

    async def detach(self, *, deadline: float = FOREVER) -> MessageStream:
        """Undo the layer and return the stream below (the layer holds no data)."""
        started = trio.current_time()
        try:
            lower: MessageStream = await super().detach(deadline=deadline)
        except StackError as exc:
            self._tracer.emit("detach", started, exc=exc)
            raise
        self._tracer.emit("detach", started)
        return lower


@dataclass(frozen=True)
class log:
    """Spec: trace the stream below (see the module docstring).

    ``label``: the name in every event (default: the kind of the stream below, ``"tcp"``,
    ``"prefix"``...). ``logger``: the logger's name. ``preview``: payload bytes put in events
    (default 0: none). ``recorder``: a callable that gets every :class:`Event`.
    """

    label: str = ""
    logger: str = LOGGER
    preview: int = 0
    recorder: Callable[[Event], None] | None = None

    def __post_init__(self) -> None:
        if self.preview < 0:
            raise ValueError("preview must be >= 0 bytes")

    async def attach(self, lower: Any, *, deadline: float = FOREVER) -> TracedBytes | TracedMessages:
        """Wrap ``lower`` (a ByteStream or a MessageStream). No handshake: returns at once."""
        if not isinstance(lower, Stream):
            raise TypeError(f"trace attaches to a ByteStream or a MessageStream, not {type(lower).__name__}")
        tracer = _Tracer(self.label or lower.kind, self.logger, self.preview, self.recorder)
        stream: TracedBytes | TracedMessages
        if isinstance(lower, ByteStream):
            stream = TracedBytes(lower, tracer)
        elif isinstance(lower, MessageStream):
            stream = TracedMessages(lower, tracer)
        else:
            raise TypeError(f"trace attaches to a ByteStream or a MessageStream, not {type(lower).__name__}")
        tracer.emit("attach", trio.current_time())
        return stream
