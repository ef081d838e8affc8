"""The HTTP/1.1 client connection: requests out, responses in, over a lower ByteStream.

Theory of operation. A :class:`~layers._h1client_engines.ClientEngine` (h11 for ``"reference"``,
our own for ``"fast"``) writes every request and parses every response (head and body) and keeps
the state of both sides; :class:`ClientConnection` does the I/O and the policy: one exchange at a
time on the connection (a semaphore), a request body sent inline or from a task of its own while
the response is read (:class:`_BodySender`, full duplex), the end of an exchange (keep the
connection only when both the request and the response ended), and protocol switches (the body of
a 101, or of a 2xx to CONNECT, is the raw tunnel). :meth:`ClientConnection.open_tunnel` is the
version-agnostic Upgrade. A response body reaches its connection only through
:class:`ResponseOwner`; the request body sender and the response body live in
:mod:`layers._h1client_body` (re-exported here).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Self

import trio

from layers import _http_model as http
from layers._h1client_body import ResponseOwner as ResponseOwner
from layers._h1client_body import SenderOwner as SenderOwner
from layers._h1client_body import _BodySender, _ResponseBody
from layers._h1client_engines import ClientEngine, ReferenceClientEngine, ResponseHead
from layers._h1conn import H1Connection, _Tunnel
from layers._h1core import BODYLESS_STATUS, DUPLEX_BUFFER, INLINE_SEND, RECV
from layers._http_model import Body, HeaderInput, Headers, Limits, Response, TunnelRefused, remember, small_fields
from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, Closed, EndOfStream, ProtocolError, StackError, Timeout
from stack.streams import ByteStream

log = logging.getLogger("stack.http1")

_BODYLESS_STATUS = BODYLESS_STATUS

_BUILT_KEPT = 32
"""Bodiless request heads a connection keeps built (see ``ClientConnection._build``)."""


class ClientConnection(H1Connection, http.ClientConnection):
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

    http_version = "1.1"

    def __init__(
        self,
        lower: ByteStream,
        limits: Limits,
        authority: str,
        scheme: str,
        engine_class: Callable[[int], ClientEngine] = ReferenceClientEngine,
    ) -> None:
        engine = self._engine = engine_class(limits.max_header_bytes)
        super().__init__(lower, limits, engine.name)
        self.authority = authority
        self.scheme = scheme
        self._host = authority.encode("ascii") if authority.isascii() else authority.encode("idna")
        # The one exchange at a time: a semaphore of one, without trio.Semaphore's cost per call.
        # ``_held`` while an exchange has the connection; a request waiting for it parks in
        # ``_slot_lot`` (made when first needed) and is handed it directly, first come first served.
        self._held = False
        self._slot_lot: trio.lowlevel.ParkingLot | None = None
        self._error: StackError | None = None
        self._closed = False
        self._exchange = 0  # the exchange holding the slot (0: none)
        self._exchanges = 0
        self._sender: _BodySender | None = None  # the current exchange's, when it has one
        self._method = b""
        self._status = 0  # the current exchange's response status
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        # _build's results for bodiless requests, by (method, target, fields): a client (a proxy)
        # repeats its request heads. Made on first use; at most _BUILT_KEPT, then all dropped.
        self._built: dict[tuple[Any, ...], tuple[Any, bool, bool]] | None = None
        # the stream below's send-then-receive, when it has one (a socket: SocketStream.send_and_recv)
        self._send_and_recv: Callable[..., Awaitable[bytes]] | None = getattr(lower, "send_and_recv", None)
        # the engine's whole-body take, when it has one (FastClientEngine.take_whole)
        self._take_whole: Callable[[], bytes | None] | None = getattr(engine, "take_whole", None)

    def __repr__(self) -> str:
        return f"<http1.ClientConnection {self.authority}>"

    async def _receive(self, deadline: float) -> bytes:
        """Receive once from below and give it to the engine; return what arrived (``b""`` at EOF)."""
        data = await self.lower.recv(RECV, deadline=deadline)
        self._engine.receive_data(data)
        return data

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
        raw = headers.raw if type(headers) is Headers else Headers(headers).raw  # only read: no copy
        event, streaming, expect_100 = self._build(method, target, raw, body)  # bad arguments first
        self._check()
        if self._held:  # wait for the slot: the exchange giving it back hands it to us
            lot = self._slot_lot
            if lot is None:
                lot = self._slot_lot = trio.lowlevel.ParkingLot()
            with trio.move_on_at(deadline) as scope:
                await lot.park()
            if scope.cancelled_caught:
                raise Timeout(
                    "HTTP/1.1: waiting for the connection timed out (is a previous response unread?)"
                ) from None
        else:
            self._held = True
        self._exchanges += 1
        self._exchange = exchange = self._exchanges
        self._sender = None
        self._method = self._engine.request_method(event)
        ok = False
        try:
            self._check()
            response = await self._exchange_request(event, body, streaming, expect_100, deadline)
            ok = True
            return response
        except Timeout:
            await self.give_up(Broken("HTTP/1.1: an earlier request timed out in the middle of its exchange"))
            raise
        except StackError as exc:
            await self.give_up(exc if isinstance(exc, (EndOfStream, Broken, Closed)) else Broken(str(exc)))
            raise
        except BaseException:
            await self.give_up(Broken("HTTP/1.1: an earlier request failed in the middle of its exchange"))
            raise
        finally:
            if not ok:
                self._release(exchange)

    async def open_tunnel(
        self, protocol: str, path: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> Response:
        """Open a tunnel for ``protocol`` at ``path`` (see :meth:`layers.http.ClientConnection.open_tunnel`):
        ``GET path`` with ``Upgrade: protocol`` and ``Connection: Upgrade`` (``headers`` added as
        given). A 101 returns the response, whose ``body`` is the tunnel (the connection takes no
        more requests); any other answer raises :class:`~layers.http.TunnelRefused` carrying the
        response (read its body for the reason, then close it). On deadline:
        :class:`~stack.Timeout`, and the connection is closed."""
        fields = [(b"upgrade", protocol.encode("ascii")), (b"connection", b"Upgrade"), *Headers(headers).raw]
        response = await self.request("GET", path, headers=fields, deadline=deadline)
        if response.status != 101:
            raise TunnelRefused(
                f"HTTP/1.1: the server answered {response.status} to an Upgrade to {protocol!r}", response
            )
        return response

    def _build(self, method: str, target: str, raw: list[tuple[bytes, bytes]], body: Body) -> tuple[Any, bool, bool]:
        """The engine's checked request head (framing headers and Host added) from the request's
        fields ``raw`` (read, never kept); whether the body streams; whether it waits for 100 Continue.
        Without a body (None), the result is kept by method, target and fields: the engine's
        head is sent as it is again (both engines' are immutable), the fields are not looked
        through again."""
        if body is None:
            built = self._built
            if built is None:
                built = self._built = {}
            key = (method, target, *raw)
            try:
                result = built.get(key)
            except TypeError:  # an unhashable field (a list pair): not kept
                return self._build_new(method, target, raw, body)
            if result is None:
                result = self._build_new(method, target, raw, body)
                if small_fields(raw, len(target)):  # (a proxy's backend connection forwards what clients send)
                    remember(built, key, result, _BUILT_KEPT)
            return result
        return self._build_new(method, target, raw, body)

    def _build_new(
        self, method: str, target: str, raw: list[tuple[bytes, bytes]], body: Body
    ) -> tuple[Any, bool, bool]:
        """:meth:`_build`, without the kept results."""
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
        return self._engine.build_request(method, target, extra + raw if extra else raw), streaming, expect_100

    async def _exchange_request(
        self, event: Any, body: Body, streaming: bool, expect_100: bool, deadline: float
    ) -> Response:
        """Send the request and return the response once its head came (see the class docstring)."""
        engine = self._engine
        out = self.outbuf
        out += engine.send_request(event)
        if not streaming:
            if body:
                out += engine.send_data(body)  # type: ignore[arg-type]
            out += engine.send_end()
        chunks: AsyncIterator[bytes] | None = None
        if streaming:
            assert isinstance(body, AsyncIterable)
            chunks = aiter(body)
        else:
            if len(out) <= INLINE_SEND:  # head and body in one write, then the response
                send_error: StackError | None = None
                exchange = self._send_and_recv
                if exchange is not None and not self._flushing and not engine.buffered:
                    # the socket's send-then-wait-for-the-answer (see SocketStream.send_and_recv)
                    try:
                        data = await exchange(out, RECV, deadline=deadline)
                    except Broken as exc:
                        if not out:  # the receive failed
                            raise
                        send_error = exc
                    else:
                        if not data and not engine.buffered:
                            raise EndOfStream("HTTP/1.1: the server closed the connection without responding")
                        engine.receive_data(data)
                        return await self._response(await self._read_head(deadline))
                else:
                    try:
                        await self.flush(deadline)
                    except Broken as exc:  # the server may have answered early (413...) and closed: read it
                        send_error = exc
                try:
                    head = await self._read_head(deadline)
                except StackError:
                    if send_error is not None:
                        raise send_error from None
                    raise
                return await self._response(head)
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
        status = head.status
        if not sender.exited.is_set():
            producing = self._engine.sending_body  # else only flushing what is committed
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
                    data = await self.read_body(body, deadline)
                    if data:
                        if body._buffered is None:
                            body._buffered = deque()
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

    async def _read_head(self, deadline: float, sender: _BodySender | None = None) -> ResponseHead:
        """The response head (a 101 counts as one); other 1xx responses are skipped (a 100 lets
        ``sender`` send its body). A head over ``max_header_bytes`` raises MessageTooLarge.
        Cancel-safe: what arrived stays in the engine."""
        engine = self._engine
        while True:
            event = engine.next_event()
            if event is None:
                data = await self.lower.recv(RECV, deadline=deadline)
                if not data and not engine.buffered:
                    raise EndOfStream("HTTP/1.1: the server closed the connection without responding")
                engine.receive_data(data)
                continue
            if type(event) is ResponseHead:
                status = event.status
                if status >= 200 or status == 101:
                    return event
                if status == 100 and sender is not None:
                    sender.continued.set()
                continue
            raise ProtocolError(f"HTTP/1.1: unexpected {event!r} instead of a response")

    async def _response(self, event: ResponseHead) -> Response:
        status = event.status
        headers = Headers._wire(event.fields)
        reason = event.reason.decode("latin-1")
        version = event.http_version.decode("ascii")
        self._status = status
        engine = self._engine
        if engine.switched:
            self.lower.unread(engine.trailing)
            self._error = StackError("HTTP/1.1: the connection switched protocols; it takes no more requests")
            self._release(self._exchange)
            return Response(status, headers, version, _Tunnel(self.lower), reason)
        body = _ResponseBody(self, self._sender)
        response = Response(status, headers, version, body, reason)
        if self._method == b"HEAD" or status in _BODYLESS_STATUS or (b"content-length", b"0") in event.fields:
            nxt = engine.next_event()  # a bodiless response ends at once: the next request need not wait
            if type(nxt) is list:
                body._complete = True
                if not self._ended_now():
                    await self._end_exchange()
        elif self._sender is None and engine.buffered and self._take_buffered(body, response):
            await self._end_exchange()
        if not body._complete:  # for the trailers read_body may meet; until then the two hold each
            body._response = response  # other (a complete body keeps no cycle for the collector)
        return response

    def _take_buffered(self, body: _ResponseBody, response: Response) -> bool:
        """The body's bytes that came with the head (no request body going): taken now into the
        body's read-ahead (its ``buffered`` says how many), so a small response is whole without
        another call into the engine, and its exchange ends at once. A malformed body's error is
        kept for the ``recv`` that reaches it (after the bytes before it). True if the body ended
        and the exchange is still to be ended (with an await)."""
        engine = self._engine
        take = self._take_whole
        if take is not None:  # the fast engine: a body framed by its length, whole, in one call
            data = take()
            if data is not None:
                if data:
                    body._unread += data
                body._complete = True
                return not self._ended_now()
        try:
            while True:
                event = engine.next_event()
                if type(event) is bytes:
                    if event:  # read ahead: ``buffered`` counts it, the next receive returns it
                        body._unread += event
                    continue
                if type(event) is list:
                    body._complete = True
                    if event:
                        response.trailers = Headers(event)
                    return not self._ended_now()
                return False
        except StackError as exc:
            body._failed = exc
        return False

    async def read_body(self, body: _ResponseBody, deadline: float) -> bytes:
        engine = self._engine
        while True:
            event = engine.next_event()
            if type(event) is bytes:
                return event
            if type(event) is list:
                body._complete = True
                if body._response is not None:
                    if event:
                        body._response.trailers = Headers(event)
                    body._response = None  # no cycle left for the collector
                if not self._ended_now():
                    await self._end_exchange()
                return b""
            if event is None:
                await self._receive(deadline)
                continue
            raise ProtocolError(f"HTTP/1.1: unexpected {event!r} in a response body")

    def _ended_now(self) -> bool:
        """The response ended: end the exchange at once if that is the usual case (no request
        body task, every request byte sent, the connection kept alive), as :meth:`_end_exchange`
        would, without a coroutine. False if :meth:`_end_exchange` must run."""
        engine = self._engine
        if self._sender is None and not self.outbuf and engine.cycle_done:
            engine.start_next_cycle()
            self._release(self._exchange)
            return True
        return False

    async def _end_exchange(self) -> None:
        """The response ended. If the request body is still going after a 2xx on a kept-alive
        connection, the body goes on and its task ends the exchange when it exits; after a status
        of 300 or more, or if the server will close, the body is given up. Else the exchange ends
        here."""
        sender = self._sender
        if sender is not None and not sender.exited.is_set():
            if self._status < 300 and not self._engine.peer_closing:
                sender.response_ended = True  # no await since exited was looked at: one of us ends it
                return
            with trio.CancelScope(shield=True):
                await sender.stop()
        await self._finish_exchange()

    async def _finish_exchange(self) -> None:
        """Request and response ended (or gave up): keep the connection if both ended, else close
        it. Shielded and bounded, so the decision is never cut in half by a cancellation."""
        engine = self._engine
        sender = self._sender
        sent = not self.outbuf and (sender is None or sender.complete)
        if sent and engine.cycle_done:  # the usual case: no await, nothing to shield
            engine.start_next_cycle()
            self._release(self._exchange)
            return
        with trio.CancelScope(shield=True):
            if not sent:
                await self.give_up(
                    Closed(
                        "HTTP/1.1: the server answered before the request body was sent whole, "
                        "so the connection was closed"
                    )
                )
            else:
                await self.give_up(EndOfStream("HTTP/1.1: the server closed the connection"))

    def _release(self, exchange: int) -> None:
        if exchange and self._exchange == exchange:
            self._exchange = 0
            lot = self._slot_lot
            if lot:  # handed to the request waiting longest: still held
                lot.unpark()
            else:
                self._held = False

    async def give_up(self, exc: StackError) -> None:
        """No more requests on this connection: record why, stop a request body still going,
        close the stream below, let the next waiting request go (it raises)."""
        if self._error is None:
            self._error = exc
        if self._sender is not None:
            await self._sender.stop()
        self._release(self._exchange)
        with trio.CancelScope(shield=True):
            await self.lower.aclose(deadline=trio.current_time() + 1.0)

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
            if self.outbuf and not self._flushing and (sender is None or sender.complete):
                d = trio.current_time() + 1.0 if deadline is None else deadline
                with trio.move_on_at(d):
                    await self.lower.send_from(self.outbuf, deadline=d)
        except StackError:
            pass
        finally:
            self._release(self._exchange)
            await self.lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Give the stream below back (read-ahead pushed back into it): between requests, or after
        a protocol switch (the tunnel's own ``detach()`` does the same). Else a StackError."""
        engine = self._engine
        if self._closed:
            raise Closed("HTTP/1.1 client connection was closed")
        if not engine.switched:
            if self._exchange or self._error is not None or not engine.idle:
                raise StackError("cannot detach HTTP/1.1 in the middle of a request")
            self.lower.unread(engine.trailing)
        await self.flush(deadline)
        self._closed = True
        return self.lower
