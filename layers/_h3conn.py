"""HTTP/3 connections, server and client, on a :class:`layers.quic.QuicConnection`
(:mod:`layers.http3` states the semantics; the streams are in ``_h3stream.py``).

Theory of operation: aioquic's ``H3Connection`` does the framing and QPACK (pylsqpack) on the
QUIC engine itself: it writes its control and QPACK streams and frames what we send, and turns
the QUIC events of request streams into HEADERS and DATA events. :class:`H3Base` installs itself
as the QUIC connection's ``event_hook``: stream data goes through ``H3Connection`` and the HTTP/3
events land in the request streams (:class:`~layers._h3stream.H3Stream`) without an ``await``;
resets and the connection's end are routed by the QUIC connection as for any stream (the request
streams are registered with it). The QUIC connection's driver sends what either queued.

The server runs ``app(request)`` for each request stream in a task of the nursery
:meth:`H3ServerConnection.serve` owns, answering 500 for an app that raises or does not respond.
On shutdown it sends GOAWAY, refuses new requests (H3_REQUEST_REJECTED), lets those in flight
finish within ``Limits.drain_timeout`` and closes with H3_NO_ERROR.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable
from typing import Any

import trio
from aioquic.buffer import encode_uint_var
from aioquic.h3 import events as h3e
from aioquic.h3.connection import FrameType, H3Connection, encode_frame
from aioquic.quic import events as qe

from stack.deadlines import FOREVER
from stack.errors import Broken, StackError
from stack.streams import Info

from ._h3stream import H3Request, H3Response, H3Stream, fields, headers_of
from ._http_model import (
    App,
    Body,
    ClientConnection,
    HeaderInput,
    Limits,
    ServerConnection,
    TunnelRefused,
    request_fields,
)
from ._quic_conn import QuicConnection
from ._quic_stream import QuicStream

__all__ = ["H3_NO_ERROR", "H3_REQUEST_CANCELLED", "H3ClientConnection", "H3ServerConnection"]

log = logging.getLogger("stack.http3")

H3_NO_ERROR = 0x100
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C


class _H3(H3Connection):
    """aioquic's H3Connection, except that a response to HEAD may announce a content-length its
    (absent) body does not have (RFC 9110 9.3.2; aioquic checks it on every response)."""

    def __init__(self, quic: Any) -> None:
        self.head_requests: set[int] = set()
        super().__init__(quic)

    def _check_content_length(self, stream: Any) -> None:
        if stream.stream_id in self.head_requests:
            return
        super()._check_content_length(stream)


class H3Base:
    """What both sides share: the H3Connection on the QUIC connection, the event routing, and
    what a stream asks of its connection (delegated to the QUIC connection)."""

    is_client = False

    def __init__(self, quic: QuicConnection, limits: Limits) -> None:
        self.quic = quic
        self.limits = limits
        self.h3 = _H3(quic.engine)  # queues SETTINGS and the QPACK streams
        quic.cancel_code = H3_REQUEST_CANCELLED
        self.cancel_code = H3_REQUEST_CANCELLED
        self.h3_info = Info({"http_version": "3"}, quic.info)
        self.info = self.h3_info
        # subclasses install the hook (set_event_hook) once their own state exists

    # ---- what a stream asks (delegated) ----------------------------------------------------

    def failure(self) -> StackError | None:
        return self.quic.failure()

    def unsent(self, stream_id: int) -> int:
        return self.quic.unsent(stream_id)

    async def wait_progress(self) -> None:
        await self.quic.wait_progress()

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        raise AssertionError("an HTTP/3 stream sends through H3Connection")  # pragma: no cover

    def consumed(self, stream: QuicStream) -> None:
        self.quic.consumed(stream)

    def abandon(self, stream: QuicStream, reset: bool, stop: bool) -> None:
        self.quic.abandon(stream, reset, stop)

    def release_if_done(self, stream: QuicStream) -> None:
        self.quic.release_if_done(stream)

    def wake(self) -> None:
        self.quic.wake()

    # ---- events ----------------------------------------------------------------------------

    def _hook(self, event: qe.QuicEvent) -> bool:
        kind = type(event)
        if kind is qe.StreamDataReceived or kind is qe.DatagramFrameReceived:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
            return True
        if kind is qe.StreamReset or kind is qe.StopSendingReceived:
            self.h3.handle_event(event)
        return False  # the QUIC connection routes it to the stream as well

    def _h3_event(self, event: h3e.H3Event) -> None:
        if getattr(event, "stream_ended", False) and self.h3.head_requests:
            self.h3.head_requests.discard(event.stream_id)  # type: ignore[attr-defined]
        if isinstance(event, h3e.DataReceived):
            stream = self.quic.stream(event.stream_id)
            if isinstance(stream, H3Stream):
                stream._on_data(event.data, event.stream_ended)
        elif isinstance(event, h3e.HeadersReceived):
            stream = self.quic.stream(event.stream_id)
            if isinstance(stream, H3Stream) and (stream._response is not None or not self.is_client):
                stream._on_trailers(headers_of(event.headers))  # a second HEADERS: trailers
                if event.stream_ended:
                    stream._on_data(b"", True)
            else:
                self._on_head(event, stream if isinstance(stream, H3Stream) else None)

    def _on_head(self, event: h3e.HeadersReceived, stream: H3Stream | None) -> None:
        raise NotImplementedError


def _pseudo(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    return {k: v.decode("latin-1") for k, v in raw if k.startswith(b":")}


class H3ServerConnection(H3Base, ServerConnection):
    """An HTTP/3 server connection: :meth:`serve` runs the app per request stream."""

    http_version = "3"

    def __init__(self, quic: QuicConnection, limits: Limits, shutdown: trio.Event | None) -> None:
        super().__init__(quic, limits)
        self._shutdown = shutdown
        self._nursery: trio.Nursery | None = None
        self._app: App | None = None
        self._pending: list[H3Request] = []
        self._in_flight = 0
        self._idle = trio.Event()
        self._closing = False
        self._last_stream = -4
        quic.set_event_hook(self._hook)
        quic.wake()

    def _on_head(self, event: h3e.HeadersReceived, stream: H3Stream | None) -> None:
        sid = event.stream_id
        if stream is not None or sid & 3:  # not a new client-initiated bidirectional stream
            return
        stream = H3Stream(self, sid, can_send=False)
        self.quic.register(stream)
        if self._closing:
            stream._head_sent = True
            stream._in_ended = True
            self.quic.abandon(stream, reset=True, stop=True)  # refused after GOAWAY, unprocessed
            return
        size = sum(len(k) + len(v) + 32 for k, v in event.headers)
        pseudo = _pseudo(event.headers)
        method = pseudo.get(b":method", "")
        target = pseudo.get(b":path", "") if method != "CONNECT" or b":protocol" in pseudo else ""
        request = H3Request(
            stream,
            method,
            target or pseudo.get(b":authority", ""),
            headers_of(event.headers),
            scheme=pseudo.get(b":scheme", "https"),
            authority=pseudo.get(b":authority", ""),
            protocol=pseudo.get(b":protocol"),
            limits=self.limits,
        )
        self._last_stream = max(self._last_stream, sid)
        if event.stream_ended:
            stream._on_data(b"", True)
        if size > self.limits.max_header_list_size:
            request._oversized = True  # type: ignore[attr-defined]
        if self._nursery is None:
            self._pending.append(request)
        else:
            self._start(request)

    def _start(self, request: H3Request) -> None:
        assert self._nursery is not None
        self._in_flight += 1
        self._nursery.start_soon(self._run_app, request)

    async def _run_app(self, request: H3Request) -> None:
        stream = request._stream
        app = self._app
        assert app is not None
        try:
            if getattr(request, "_oversized", False):
                await request.respond(431, [("content-type", "text/plain")], b"request header fields too large\n")
            else:
                await app(request)
            if not request.responded:
                log.error("http3: the app returned without responding to %r: 500", request)
                await request.respond(500, [("content-type", "text/plain")], b"internal server error\n")
        except Exception as exc:
            if isinstance(exc, Broken):
                log.debug("http3: %r ended: %s", request, exc)
            else:
                log.exception("http3: the app raised for %r", request)
            if not request.responded and stream._error() is None:
                with contextlib.suppress(StackError):
                    await request.respond(500, [("content-type", "text/plain")], b"internal server error\n")
        finally:
            if not (stream._local_ended and stream._in_ended and not stream._in):
                await stream.aclose()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
                self._idle = trio.Event()

    async def serve(self, app: App) -> None:
        """Run ``app`` for every request until the connection ends (or, on shutdown, drains)."""
        self._app = app
        quic = self.quic
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for request in self._pending:
                self._start(request)
            self._pending.clear()
            nursery.start_soon(self._watch_shutdown, nursery)
            await quic.ended.wait()
            nursery.cancel_scope.cancel()

    async def _watch_shutdown(self, nursery: trio.Nursery) -> None:
        quic = self.quic
        async with trio.open_nursery() as inner:
            done = trio.Event()

            async def wait_for(event: trio.Event) -> None:
                await event.wait()
                done.set()

            inner.start_soon(wait_for, quic.closing)
            if self._shutdown is not None:
                inner.start_soon(wait_for, self._shutdown)
            await done.wait()
            inner.cancel_scope.cancel()
        await self.goaway()
        with trio.move_on_after(self.limits.drain_timeout):
            while self._in_flight:
                await self._idle.wait()
        await quic.aclose(error_code=H3_NO_ERROR, reason="shutting down")
        nursery.cancel_scope.cancel()

    async def goaway(self) -> None:
        """Send GOAWAY: requests after the last one accepted are refused from now on."""
        if self._closing:
            return
        self._closing = True
        control = self.h3._local_control_stream_id
        if control is not None and self.quic.failure() is None:
            frame = encode_frame(FrameType.GOAWAY, encode_uint_var(self._last_stream + 4))
            self.quic.engine.send_stream_data(control, frame)
            self.quic.wake()
        await trio.lowlevel.checkpoint()

    async def recv(self, *, deadline: float = FOREVER) -> Any:
        raise StackError("an HTTP/3 server connection runs its app with serve(app)")

    async def aclose(self, *, deadline: float | None = None) -> None:
        await self.quic.aclose(error_code=H3_NO_ERROR, deadline=deadline)


class H3ClientConnection(H3Base, ClientConnection):
    """An HTTP/3 client connection: ``request`` (requests multiplex), ``open_tunnel``."""

    http_version = "3"
    is_client = True

    def __init__(self, quic: QuicConnection, limits: Limits, authority: str, scheme: str = "https") -> None:
        super().__init__(quic, limits)
        self.authority = authority
        self.scheme = scheme
        quic.set_event_hook(self._hook)
        quic.wake()

    def _on_head(self, event: h3e.HeadersReceived, stream: H3Stream | None) -> None:
        if stream is None or stream._head is None:
            return
        pseudo = _pseudo(event.headers)
        status = int(pseudo.get(b":status", "0"))
        if 100 <= status < 200:
            return  # interim
        stream._response = H3Response(status, headers_of(event.headers), stream)
        if event.stream_ended:
            stream._on_data(b"", True)
        stream._head.set()

    def start_request(self, head: list[tuple[bytes, bytes]], *, end_stream: bool) -> H3Stream:
        """Send a request head on a new stream; returns the stream (``send``/``done`` for the
        body, :meth:`H3Stream.response` for the answer)."""
        failure = self.quic.failure()
        if failure is not None:
            raise failure
        engine = self.quic.engine
        sid = engine.get_next_available_stream_id()
        stream = H3Stream(self, sid, can_send=True)
        stream._head = trio.Event()
        self.quic.register(stream)
        self.h3.send_headers(sid, head, end_stream=end_stream)
        if head[0][1] == b"HEAD":
            self.h3.head_requests.add(sid)
        if end_stream:
            stream._local_ended = True
        self.quic.wake()
        return stream

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeaderInput = (),
        body: Body = None,
        deadline: float = FOREVER,
    ) -> H3Response:
        """Send a request and return the response once its head arrived (see
        :class:`layers.http.ClientConnection`). The body is sent before the response is awaited."""
        empty = body is None or (isinstance(body, (bytes, bytearray, memoryview)) and not body)
        head = request_fields(method, target, headers, self.scheme, self.authority, fields)
        stream = self.start_request(head, end_stream=empty)
        try:
            if not empty:
                if isinstance(body, (bytes, bytearray, memoryview)):
                    await stream.send(body, deadline=deadline)
                else:
                    assert isinstance(body, AsyncIterable)
                    async for chunk in body:
                        await stream.send(chunk, deadline=deadline)
                await stream.done(deadline=deadline)
            return await stream.response(deadline=deadline)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise

    async def open_tunnel(
        self, protocol: str, path: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> H3Response:
        """An extended CONNECT (RFC 9220) for ``protocol`` at ``path``; the response's body is the
        tunnel (see :meth:`layers.http.ClientConnection.open_tunnel`)."""
        head = request_fields("CONNECT", path, headers, self.scheme, self.authority, fields)
        head.insert(1, (b":protocol", protocol.encode("ascii")))
        stream = self.start_request(head, end_stream=False)
        try:
            response = await stream.response(deadline=deadline)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        if not 200 <= response.status < 300:
            raise TunnelRefused(f"extended CONNECT for {protocol} at {path}: {response.status}", response)
        return response

    async def aclose(self, *, deadline: float | None = None) -> None:
        await self.quic.aclose(error_code=H3_NO_ERROR, deadline=deadline)
