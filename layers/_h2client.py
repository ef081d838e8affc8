"""The client side of an HTTP/2 connection.

:class:`H2ClientConnection` adds to the shared base (``_h2conn.py``) what only a client does:

* **opening streams** (``_open``): the first request goes out with the preface; more wait for the
  server's SETTINGS (its stream limit), then for a free slot at its SETTINGS_MAX_CONCURRENT_STREAMS
  (``_slot_lot``) or for the writer to drain. After the server's GOAWAY no stream opens
  (:class:`~layers._h2conn.StreamRefused`) and streams past its last stream id fail with it.
* **request** (:meth:`H2ClientConnection.request`): full duplex. A body within the peer's windows
  is handed to h2 inline; a streamed or larger one is sent by the duplex body sender, a task
  in the connection's nursery (``_upload``, one cancel scope per upload in ``_uploads``) while
  the response head is awaited. A final answer of 300 or more that ends before the body stops
  the upload (``_stop_upload``). A request refused unprocessed is retried (bytes bodies only,
  :data:`RETRIES`).
* **tunnels**: :meth:`H2ClientConnection.open_tunnel` (extended CONNECT, RFC 8441, the call
  HTTP/1.1's ``open_tunnel`` mirrors) and :meth:`H2ClientConnection.connect_tunnel` (CONNECT to
  an authority, RFC 9113 8.5, or extended) share ``_connect``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable
from typing import ClassVar

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, StackError, Timeout
from stack.streams import ByteStream

from ._h2conn import FLUSH_GRACE, H2ConnectionBase, StreamRefused
from ._h2core import Malformed, check_fields, check_response_pseudo, error_name
from ._h2stream import HIGH_WATER, H2Response, H2Stream, _fields, _h2_fail, _headers
from ._http_model import (
    Body,
    ClientConnection,
    HeaderInput,
    Headers,
    Limits,
    TunnelRefused,
    request_fields,
    request_pseudo,
)

__all__ = ["RETRIES", "H2ClientConnection"]

log = logging.getLogger("stack.http2")

RETRIES = 3
"""Times a client request refused unprocessed (REFUSED_STREAM, GOAWAY) is sent again."""

_CANCEL = h2.errors.ErrorCodes.CANCEL
_SC = h2.settings.SettingCodes
_RESPONSE_PSEUDO = frozenset([b":status"])


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


class H2ClientConnection(H2ConnectionBase, ClientConnection):
    """The client side of an HTTP/2 connection (see the module docstring).

    Its reader and writer run inside ``async with conn:`` (or ``await nursery.start(conn.run)``);
    requests made outside raise :class:`~stack.StackError`. Requests multiplex: run many at once
    from several tasks. At the peer's SETTINGS_MAX_CONCURRENT_STREAMS, new requests wait (under
    their deadline) for a stream to end. After the server's GOAWAY, new requests raise
    :class:`StreamRefused` and streams beyond its last stream id fail with it.
    """

    http_version = "2"
    _EVENTS: ClassVar[dict[type, str]] = {
        **H2ConnectionBase._EVENTS,
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

    async def handshake(self, deadline: float) -> None:
        """Send the preface and our SETTINGS (what the spec's ``attach`` does); returns at once."""
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
                self.release(stream)
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
            self.core.reset_stream(stream.stream_id, _CANCEL)
        self.wake_writer()
        stream._local_ended = True
        self._uploads[stream].cancel()
        self.release_if_done(stream)

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
        if stream._head is not None:
            stream._head.set()
            self._kicked += 1

    def _check_can_open(self) -> None:
        self._check_running()
        if self._goaway_received is not None:
            raise StreamRefused("HTTP/2 connection is closing (the server sent GOAWAY): open a new one")

    async def _open(self, fields: list[tuple[bytes, bytes]], end_stream: bool, deadline: float) -> H2Stream:
        self._check_can_open()
        core = self.core
        if self._streams and not self._remote_settings.is_set():
            # the first request goes at once; more wait for the server's SETTINGS (its stream limit)
            with trio.move_on_at(deadline) as scope:
                await self._remote_settings.wait()
            if scope.cancelled_caught:
                raise Timeout("HTTP/2: no SETTINGS from the server before the deadline")
            self._check_can_open()
        if len(self._streams) >= core.peer_max_concurrent_streams() or self.queued() >= HIGH_WATER:
            with trio.move_on_at(deadline) as scope:
                while len(self._streams) >= core.peer_max_concurrent_streams() or self.queued() >= HIGH_WATER:
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
        self.wake_writer()
        return stream

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
        fields = request_fields(method, target, headers, self.scheme, self.authority, _fields)
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
            elif data is not None and len(data) <= self.core.local_flow_control_window(stream.stream_id):
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
            self.reset_stream(stream, _CANCEL, failure)

    async def start_request(
        self, method: str, target: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> H2Stream:
        """Open a request whose body the caller streams: returns the stream at once.

        ``send``/``done(trailers=)`` write the request body; ``await stream.response()`` waits
        for the head; ``recv`` reads the response body (the two directions are independent,
        so this is also the full-duplex, gRPC-style exchange).
        """
        fields = request_fields(method, target, headers, self.scheme, self.authority, _fields)
        return await self._open(fields, False, deadline)

    async def _extended_connect_fields(
        self, protocol: str, authority: str, path: str, deadline: float
    ) -> list[tuple[bytes, bytes]]:
        """The pseudo-headers of an extended CONNECT (RFC 8441), once the server's SETTINGS
        said it takes one (this waits for them, under ``deadline``)."""
        self._check_running()
        if not self._remote_settings.is_set():
            with trio.move_on_at(deadline) as scope:
                await self._remote_settings.wait()
            if scope.cancelled_caught:
                raise Timeout("HTTP/2 extended CONNECT: no SETTINGS from the server before the deadline")
        self._check_running()
        if not self.core.remote_settings.enable_connect_protocol:
            raise StackError("the server does not support extended CONNECT (RFC 8441)")
        return request_pseudo("CONNECT", self.scheme, authority, path, protocol)

    async def _connect(self, fields: list[tuple[bytes, bytes]], deadline: float) -> tuple[H2Stream, H2Response]:
        """Open a CONNECT stream with ``fields`` and wait for its answer (under ``deadline``);
        on any failure (deadline, cancellation, the stream broke) nothing is left open."""
        stream = await self._open(fields, end_stream=False, deadline=deadline)
        ok = False
        try:
            response = await stream.response(deadline=deadline)
            ok = True
            return stream, response
        finally:
            if not ok:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def open_tunnel(
        self, protocol: str, path: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> H2Response:
        """Open a tunnel for ``protocol`` (``"websocket"``, ...) at ``path`` with an extended
        CONNECT (RFC 8441: ``:protocol``), what :meth:`layers.http.ClientConnection.open_tunnel`
        does over HTTP/2. The server must have sent SETTINGS_ENABLE_CONNECT_PROTOCOL=1 (this
        waits for its SETTINGS; without it: :class:`~stack.StackError`). ``:authority`` is the
        ``host`` header if given, else this connection's ``authority``; ``headers`` are added as
        given. Returns the 2xx response; its ``body`` is the tunnel, a
        :class:`~stack.ByteStream` both ways. Any other answer raises :class:`TunnelRefused`
        carrying the response (its body readable: read it for the reason, then close it). On
        deadline (it covers the whole exchange): :class:`~stack.Timeout`, the stream is reset.
        """
        hdrs = Headers(headers)
        authority = hdrs.get("host") or self.authority
        fields = await self._extended_connect_fields(protocol, authority, path, deadline)
        fields += _fields(hdrs)
        _, response = await self._connect(fields, deadline)
        if not 200 <= response.status < 300:
            raise TunnelRefused(f"extended CONNECT {path} ({protocol}) refused: {response.status}", response)
        return response

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
        raises :class:`TunnelRefused` (the stream is reset first). The deadline covers the whole
        exchange. (:meth:`open_tunnel` is the version-agnostic call for a ``protocol``.)
        """
        if protocol is not None:
            fields = await self._extended_connect_fields(protocol, authority, path, deadline)
        else:
            fields = [(b":method", b"CONNECT"), (b":authority", authority.encode("latin-1"))]
        fields += _fields(Headers(headers))
        stream, response = await self._connect(fields, deadline)
        if not 200 <= response.status < 300:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise TunnelRefused(f"CONNECT {authority} refused: {response.status}", response)
        return stream
