"""The request body sender and the response body of the HTTP/1.1 client (the ``_h1client`` family).

Theory of operation. One exchange of :class:`layers._h1client.ClientConnection` has two bodies
in flight: the request body, sent by :class:`_BodySender` (inline, or from a task of its own
while the response is read: full duplex), and the response body, read by the caller through
:class:`_ResponseBody`. Neither knows the connection class: the sender sees it through
:class:`SenderOwner` (the outgoing buffer, the engine, the exchange number, flush and the end of
an exchange), the response body through :class:`ResponseOwner` (the stream below, ``info``,
reading the body, giving the connection up). ``layers._h1client`` re-exports what it uses; the
code here moved from there unchanged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from layers._h1client_engines import ClientEngine
from layers._h1conn import split_pending
from layers._h1core import CONTINUE_TIMEOUT, DRAIN_TIME, MAX_DRAIN
from layers._http_model import Response
from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, StackError, Timeout
from stack.streams import ByteStream, Info

log = logging.getLogger("stack.http1")


class ResponseOwner(Protocol):
    """What a response body (:class:`_ResponseBody`) uses of its connection.

    ``lower``: the stream below (the base of the body's stream); ``info``: the connection's.
    ``read_body(body, deadline)``: the next bytes of the response body (``b""`` at its end; the
    exchange ends then). ``give_up(exc)``: no more requests on the connection (``exc`` says why
    to later ones): stop a request body still going, close the stream below.
    """

    lower: ByteStream
    info: Info

    async def read_body(self, body: _ResponseBody, deadline: float) -> bytes: ...

    async def give_up(self, exc: StackError) -> None: ...


class SenderOwner(ResponseOwner, Protocol):
    """What a request body sender (:class:`_BodySender`) uses of its connection, besides
    :class:`ResponseOwner`: ``outbuf`` (committed bytes), ``flush(deadline)`` (push them down),
    ``_engine`` (frames the body), ``_exchange`` (the exchange holding the connection) and
    ``_finish_exchange()`` (end the exchange once the request and the response both ended)."""

    outbuf: bytearray
    _engine: ClientEngine
    _exchange: int

    async def flush(self, deadline: float) -> None: ...

    async def _finish_exchange(self) -> None: ...


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
        self, conn: SenderOwner, chunks: AsyncIterator[bytes] | None, expect_100: bool, deadline: float
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
        await conn.flush(self.deadline)
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
                if chunk and not self._commit(chunk):
                    return
                await conn.flush(self.deadline)
            if not self._commit(None):
                return
            await conn.flush(self.deadline)
        self.complete = True

    def _commit(self, chunk: bytes | None) -> bool:
        """Commit ``chunk`` of the body (None: its end) under the request's framing."""
        try:
            engine = self.conn._engine
            self.conn.outbuf += engine.send_end() if chunk is None else engine.send_data(chunk)
        except StackError as exc:  # the engine refused the caller's data (over or under its Content-Length)
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
                await conn.give_up(self.broken())
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
            self.conn.outbuf.clear()


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

    # The state every body starts in, as ByteStream's __init__ would set it (not called: this is
    # per response). A response body never sends (``_send_some`` refuses), so its outgoing buffer
    # is never written; ``info`` is the connection's (the property below), never ``_info``.
    _info: dict[str, Any] = {}  # noqa: RUF012 - never written
    _outbuf = bytearray()
    _sending = _receiving = _send_closed = _eof = False
    _closed: str | None = None
    _broken: BaseException | None = None
    _response: Response | None = None
    _pending = b""
    _buffered: deque[bytes] | None = None  # read while request() finished sending (no nursery); made then
    _complete = False
    _failed: StackError | None = None  # the engine's error after the bytes taken with the head

    def __init__(self, conn: ResponseOwner, sender: _BodySender | None) -> None:
        self._lower = conn.lower
        self._unread = bytearray()
        self._conn = conn
        self._sender = sender

    @property
    def info(self) -> Info:
        """The connection's ``info`` (asked of it each time, never copied per response)."""
        return self._conn.info

    @property
    def ended(self) -> bool:
        """True once the body ended and every byte of it was read: ``recv`` returns ``b""``
        without waiting (a small body that came with its head is whole once its bytes are taken)."""
        return self._complete and not self._pending and not self._unread and not self._buffered

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        if not self._pending:
            if self._buffered:
                self._pending = self._buffered.popleft()
            elif self._complete:
                return b""
            else:
                failed = self._failed
                if failed is not None:  # met when the bytes that came with the head were taken
                    self._failed = None
                    await self._conn.give_up(Broken(f"HTTP/1.1: an earlier response broke: {failed}"))
                    raise failed
                sender = self._sender
                if sender is not None and sender.failure is not None:
                    raise sender.broken() from sender.failure
                try:
                    self._pending = await self._conn.read_body(self, deadline)
                except StackError as exc:
                    if sender is not None:
                        if sender.failure is not None:
                            raise sender.broken() from sender.failure
                        if not isinstance(exc, Timeout):  # the response broke: no use sending on
                            await sender.stop()
                    if not isinstance(exc, Timeout):  # the connection is unusable: later requests raise at once
                        broke = f"HTTP/1.1: an earlier response broke: {exc}"
                        why = exc if isinstance(exc, (Broken, Closed)) else Broken(broke)
                        await self._conn.give_up(why)
                    raise
        out, self._pending = split_pending(self._pending, max_bytes)
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
                    total = len(self._unread) + len(self._pending) + sum(map(len, self._buffered or ()))
                    while not self._complete and total <= MAX_DRAIN:
                        total += len(await conn.read_body(self, drain_deadline))
            except StackError:
                pass
        self._pending = b""
        self._buffered = None
        self._unread.clear()
        if not self._complete:
            await conn.give_up(Closed("HTTP/1.1: a response was closed before its end, closing the connection"))
