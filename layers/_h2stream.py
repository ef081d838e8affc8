"""One HTTP/2 stream as a :class:`~stack.ByteStream`, and the request and response objects
around it (the connections that own them are in ``_h2conn.py``, ``_h2server.py`` and
``_h2client.py``; :mod:`layers.http2`'s docstring states the semantics: flow control as
backpressure, abandoning a stream, trailers).

A stream holds no I/O of its own: ``recv`` waits for what the connection's reader put in its
buffer, ``send`` hands DATA to h2 within the peer's windows and wakes the connection's writer.

A stream reaches its connection only through :class:`StreamOwner`, the short list of what it
may ask of it (the connection base class implements it). The other way round, the connection
fills the stream's buffers and wakes it (``_in``, ``_in_ended``, ``_on_reset``, ``_wake_*``):
the two are one machine split for reading, not independent parts.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import h2.errors
import h2.exceptions
import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, StackError, Timeout
from stack.streams import ByteStream, Info

from ._h2core import H2Core
from ._http_model import (
    BodyTrailers,
    HeaderInput,
    Headers,
    Limits,
    Request,
    Response,
    date_header,
    remember,
    small_fields,
)
from ._muxed_stream import ResponseHead, StreamErrors

__all__ = ["HIGH_WATER", "SEND_CHUNK", "H2Request", "H2Response", "H2Stream", "StreamOwner"]

HIGH_WATER = 256 * 1024
"""Outgoing bytes queued for the writer before stream senders wait for it to drain."""

SEND_CHUNK = 64 * 1024
"""Most bytes one stream commits to h2 per step of a ``send`` (then others get a turn)."""

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_CANCEL = h2.errors.ErrorCodes.CANCEL

# Connection-specific fields may not appear in HTTP/2 (RFC 9113 8.2.2): dropped from what we send.
_CONNECTION_FIELDS = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"]
)
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")  # controls but HTAB (RFC 9110 5.5)
_STATUS = {code: str(code).encode() for code in range(100, 600)}
_NO_BODY_STATUS = frozenset([204, 304])


def _headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    """A Headers around pairs already lower-cased and checked (no copy, no conversion)."""
    h = Headers.__new__(Headers)
    h.raw = raw
    return h


_EMPTY = _headers([])
_GOOD_NAMES: set[bytes] = set()


def _fields(headers: Headers, *, trailers: bool = False) -> list[tuple[bytes, bytes]]:
    """The header list to send: checked, connection-specific fields dropped."""
    out = []
    for name, value in headers.raw:
        if name not in _GOOD_NAMES:
            if name in _CONNECTION_FIELDS:
                continue
            if name == b"te":
                if value.strip().lower() != b"trailers":
                    continue
            elif not name or _BAD_NAME.search(name):
                raise ValueError(f"invalid header name {name!r} for HTTP/2")
            elif len(_GOOD_NAMES) < 1024:
                _GOOD_NAMES.add(name)
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name.decode('latin-1')!r}: {value!r}")
        if trailers and name in (b"content-length",):
            raise ValueError("content-length is not allowed in trailers")
        out.append((name, value))
    return out


def _h2_fail(exc: Exception, what: str) -> Broken:
    """An h2 refusal to send, as the error the stream's user gets."""
    if isinstance(exc, h2.exceptions.StreamClosedError):
        return Broken(f"HTTP/2 {what}: the stream is closed")
    return Broken(f"HTTP/2 {what}: {exc}")


class StreamOwner(Protocol):
    """What a stream (and its request or response) may ask of the connection that owns it.

    Read-only attributes are plain attributes on the connection (no property on the hot path);
    the rest are methods. Nothing here does I/O: bytes go down only through the connection's
    writer task, which :meth:`wake_writer` wakes.
    """

    @property
    def info(self) -> Info:
        """The connection's info (``http_version`` and the keys of the stream below)."""

    @property
    def lower(self) -> ByteStream:
        """The stream below the connection, shared by all its streams."""

    @property
    def core(self) -> H2Core:
        """The h2 state machine: a stream queues its HEADERS / DATA / END_STREAM there and reads
        its windows from it (the writer sends what is queued once woken)."""

    @property
    def limits(self) -> Limits:
        """The connection's limits (a stream reads ``send_timeout``)."""

    @property
    def is_server(self) -> bool:
        """True on the server side (a finished response only stops the upload, RFC 9113 8.1)."""

    def failure(self) -> Broken | None:
        """Why the connection ended, or ``None`` while it is healthy."""

    def queued(self) -> int:
        """Bytes queued for the writer and not yet sent (senders wait past :data:`HIGH_WATER`)."""

    async def wait_drained(self) -> None:
        """Wait until the writer sent something (or the connection ended): check :meth:`queued`
        again after it."""

    def wake_writer(self) -> None:
        """Something was queued in :attr:`core`: let the writer send it."""

    def task_woken(self) -> None:
        """A stream woke a task waiting on it (the reader lets such tasks run before reading on)."""

    def consumed(self, stream: H2Stream, n: int) -> None:
        """The application took ``n`` bytes from ``stream``: give the peer its window back."""

    def watch_window(self, stream: H2Stream) -> None:
        """``stream`` waits for the connection window to open: wake it on WINDOW_UPDATE."""

    def unwatch_window(self, stream: H2Stream) -> None:
        """``stream`` no longer waits for a window."""

    def reset_stream(self, stream: H2Stream, code: int, exc: Broken | None) -> None:
        """RST_STREAM ``code`` and release ``stream``; ``exc`` is what its users then get."""

    def release(self, stream: H2Stream) -> None:
        """Forget ``stream`` (it ends on this side), dropping its unread bytes."""

    def release_if_done(self, stream: H2Stream) -> None:
        """Release ``stream`` once both of its directions ended cleanly (its unread bytes stay
        readable)."""


class H2Stream(StreamErrors, ResponseHead, ByteStream):
    """One HTTP/2 stream as a :class:`~stack.ByteStream`.

    ``recv``: the peer's DATA (request body on the server, response body on the client),
    ``b""`` at its END_STREAM; received bytes are acknowledged to the peer's flow control as
    they are returned here. ``send``: our DATA, split into frames within the peer's windows
    (waits for window under the deadline; see the module docstring). ``done(trailers=...)``:
    END_STREAM, with trailers if given. ``aclose``: abandons what is not finished (RST_STREAM),
    never the connection. ``trailers``: the peer's trailers once its side ended. ``detach``:
    not possible (a stream has nothing below it of its own). ``info``: ``stream_id``,
    ``http_version`` and the connection's keys.
    """

    kind = "h2-stream"
    _version = "HTTP/2"

    # What a new stream starts with, as class attributes: a stream is made per request, and
    # only what differs (or is mutable) is set on the instance (``__init__`` does not call
    # ``ByteStream.__init__``; it sets the same attributes).
    _lower = None
    _info: dict[str, Any] = {}  # noqa: RUF012 - never written: ``info`` is the property below
    _outbuf = bytearray()  # never written: ``_send_some`` hands DATA to h2, not to this buffer
    _sending = False
    _receiving = False
    _send_closed = False
    _closed: str | None = None
    _broken: BaseException | None = None
    _eof = False
    _ack_exempt = 0  # bytes in _in that never counted against a window (h2c upgrade)
    _in_ended = False
    _reset: Broken | None = None  # why the stream ended abnormally
    _released = False
    _rd: trio.Event | None = None  # set when bytes, the end or an error arrive
    _wr: trio.Event | None = None  # set when the window opens or an error arrives
    _local_ended = False
    _discard_body = False  # HEAD / 204 / 304: body bytes are dropped
    _trailers_out: Headers | None = None
    trailers = _EMPTY
    # client side only
    _head: trio.Event | None = None
    _response: H2Response | None = None

    def __init__(self, conn: StreamOwner, stream_id: int, *, can_send: bool) -> None:
        # ByteStream.__init__'s mutable attribute (the rest are the class's defaults above)
        self._unread = bytearray()
        self._conn = conn
        self.stream_id = stream_id
        self._in = bytearray()
        self._can_send = can_send

    @property
    def info(self) -> Info:
        return Info({"stream_id": self.stream_id}, self._conn.info)

    @property
    def lower(self) -> ByteStream:
        """The stream below the HTTP/2 connection, shared by all its streams (``aclose`` of
        this stream does not touch it)."""
        return self._conn.lower

    @property
    def ended(self) -> bool:
        """True once the peer ended its side and every byte of it was read: ``recv`` returns
        ``b""`` without waiting. A request whose HEADERS carried END_STREAM has no body: its
        stream is ``ended`` when the app gets it."""
        return self._in_ended and not self._in and not self._unread

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} {self._closed or ('broken' if self._broken else 'open')}>"

    # ---- state ---------------------------------------------------------------------------

    def _check_send(self) -> None:
        err = self._error()
        if err is not None:
            raise err
        if not self._can_send:
            raise StackError("start the response (start_response) before sending its body")
        if self._local_ended:
            raise Closed(f"{self.kind} {self.stream_id}: this side already ended the stream")

    def _wake(self) -> None:
        self._wake_reader()
        self._wake_sender()
        if self._head is not None:
            self._head.set()

    def _wake_reader(self) -> None:
        ev = self._rd
        if ev is not None:
            self._rd = None
            ev.set()
            self._conn.task_woken()

    def _wake_sender(self) -> None:
        ev = self._wr
        if ev is not None:
            self._wr = None
            ev.set()
            self._conn.task_woken()

    def _on_reset(self, exc: Broken) -> None:
        """The stream ended abnormally (peer reset, our reset, connection gone)."""
        if self._reset is None:
            self._reset = exc
        self._wake()

    # ---- receiving -----------------------------------------------------------------------

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            buf = self._in
            if buf:
                if len(buf) <= max_bytes:
                    out = bytes(buf)
                    buf.clear()
                else:
                    out = bytes(buf[:max_bytes])
                    del buf[:max_bytes]
                self._conn.consumed(self, len(out))
                return out
            if self._in_ended:
                return b""
            err = self._error()
            if err is not None:
                raise err
            ev = self._rd
            if ev is None:
                ev = self._rd = trio.Event()
            await ev.wait()

    # ---- sending -------------------------------------------------------------------------

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._conn
        core = conn.core
        sid = self.stream_id
        while True:
            self._check_send()
            if self._discard_body:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return len(data)
            if conn.queued() >= HIGH_WATER:
                await conn.wait_drained()
                continue
            try:
                window = core.local_flow_control_window(sid)
            except h2.exceptions.ProtocolError:
                raise Broken(f"HTTP/2 stream {sid} was closed by the peer") from None
            if window <= 0:
                await self._wait_window()
                continue
            n = min(len(data), window, SEND_CHUNK)
            frame = core.max_outbound_frame_size
            try:
                if n <= frame:
                    core.send_data(sid, bytes(data[:n]))
                else:
                    for i in range(0, n, frame):
                        core.send_data(sid, bytes(data[i : min(n, i + frame)]))
            except h2.exceptions.ProtocolError as exc:  # pragma: no cover - checked above
                raise _h2_fail(exc, "send") from None
            conn.wake_writer()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return n

    async def _wait_window(self) -> None:
        """Wait for the peer to open a window; reset the stream after ``send_timeout``."""
        conn = self._conn
        conn.watch_window(self)
        try:
            with trio.move_on_after(conn.limits.send_timeout) as scope:
                ev = self._wr
                if ev is None:
                    ev = self._wr = trio.Event()
                await ev.wait()
        finally:
            conn.unwatch_window(self)
        if scope.cancelled_caught:
            exc = Broken(
                f"HTTP/2 stream {self.stream_id}: the peer kept its flow-control window closed for "
                f"{conn.limits.send_timeout:g}s (send_timeout); the stream was reset"
            )
            conn.reset_stream(self, _CANCEL, exc)
            raise exc

    async def send(self, data: bytes | bytearray | memoryview, *, deadline: float = FOREVER) -> None:
        """Send ``data`` as DATA frames (see the class docstring and :meth:`ByteStream.send`)."""
        try:
            await super().send(data, deadline=deadline)
        except Broken:
            self._keep_reading()
            raise

    async def done(self, *, trailers: HeaderInput | None = None, deadline: float = FOREVER) -> None:
        """End our side of the stream (END_STREAM), sending ``trailers`` first if given.

        Committed body bytes go first; calling it again does nothing. On deadline:
        :class:`~stack.Timeout`, and it may be repeated.
        """
        if trailers is not None:
            self._trailers_out = Headers(trailers)
        try:
            await super().done(deadline=deadline)
        except Broken:
            self._keep_reading()
            raise

    def _keep_reading(self) -> None:
        """A send failed because the peer reset the stream after ending its own side: sends
        stay Broken, but the complete body it sent stays readable (RFC 9113 8.1: a client must
        not discard a response because the server then reset the upload)."""
        if self._in_ended and self._reset is not None and self._conn.failure() is None:
            self._broken = None

    async def _done(self, deadline: float) -> None:
        if self._local_ended or self._discard_body:
            await trio.lowlevel.checkpoint()
            return
        self._check_send()
        conn = self._conn
        while conn.queued() >= HIGH_WATER:
            await conn.wait_drained()
            self._check_send()
        core = conn.core
        try:
            if self._trailers_out is not None:
                core.send_headers(self.stream_id, _fields(self._trailers_out, trailers=True), end_stream=True)
            else:
                core.end_stream(self.stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise _h2_fail(exc, "done") from None
        self._local_ended = True
        conn.wake_writer()
        conn.release_if_done(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _abort(self) -> None:
        """aclose(): reset what is unfinished, release the stream, wake blocked tasks."""
        conn = self._conn
        if not self._released:
            core = conn.core
            if conn.failure() is None and self._reset is None and core.stream_is_open(self.stream_id):
                # A server that finished its response only stops the upload (RFC 9113 8.1).
                finished = self._local_ended and conn.is_server
                conn.reset_stream(self, _NO_ERROR if finished else _CANCEL, None)
            conn.release(self)
        self._wake()


def _pairs(headers: HeaderInput) -> Headers:
    """``headers`` as :class:`Headers`, quickly for the common list of ``str`` pairs."""
    if headers.__class__ is Headers:
        return headers
    if isinstance(headers, (list, tuple)):
        return _headers(
            [
                (
                    (k if k.__class__ is bytes else k.encode("latin-1")).lower(),
                    v if v.__class__ is bytes else v.encode("latin-1"),
                )
                for k, v in headers
            ]
        )
    return Headers(headers)


_Checked = tuple[tuple[tuple[bytes, bytes], ...], bool, bool]
_NOTHING: _Checked = ((), False, False)
_KNOWN_HEADS: dict[tuple[Any, ...], _Checked] = {}
_KNOWN_HEADS_MAX = 256


def _checked(headers: Headers) -> _Checked:
    """The fields to send for ``headers`` (:func:`_fields`), and whether they hold a date and a
    content-length."""
    if not headers.raw:
        return _NOTHING
    fields = _fields(headers)
    has_date = has_length = False
    for name, _ in fields:
        if name == b"date":
            has_date = True
        elif name == b"content-length":
            has_length = True
    return tuple(fields), has_date, has_length


def _checked_input(headers: HeaderInput) -> _Checked:
    """``_checked(_pairs(headers))``, remembered for a list or tuple of pairs given again (an
    application answers with the same few header lists: at most ``_KNOWN_HEADS_MAX``, the
    first seen; one that does not pass the checks is never remembered)."""
    cls = headers.__class__
    if cls is Headers:
        return _checked_wire(headers)  # type: ignore[arg-type]  # (its class is Headers)
    if cls is not list and cls is not tuple:
        return _checked(_pairs(headers))
    try:
        key = tuple(headers)
        known = _KNOWN_HEADS.get(key)
    except TypeError:  # a pair that cannot be hashed (a list)
        return _checked(_pairs(headers))
    if known is None:
        known = _checked(_pairs(headers))
        if len(_KNOWN_HEADS) < _KNOWN_HEADS_MAX and small_fields(key):
            _KNOWN_HEADS[key] = known
    return known


_KNOWN_WIRE: dict[tuple[Any, ...], _Checked] = {}
_KNOWN_WIRE_MAX = 256


def _checked_wire(headers: Headers) -> _Checked:
    """``_checked(headers)``, remembered by the fields for a :class:`Headers` given again (a proxy
    forwards the same few response heads, one object each, but they change with the backend's
    Date: at most ``_KNOWN_WIRE_MAX`` of at most ``REMEMBERED_FIELDS_MAX`` bytes, then all are dropped; one
    that does not pass the checks is never remembered)."""
    try:
        key = tuple(headers.raw)
        known = _KNOWN_WIRE.get(key)
    except TypeError:  # a pair that cannot be hashed (a list)
        return _checked(headers)
    if known is None:
        known = _checked(headers)
        if small_fields(key):
            remember(_KNOWN_WIRE, key, known, _KNOWN_WIRE_MAX)
    return known


class H2Request(Request):
    """A request received over HTTP/2 (see :class:`layers.http.Request`).

    Extra: ``stream_id``; ``protocol`` (the ``:protocol`` of an extended CONNECT, RFC 8441,
    else ``None``); ``trailers`` (the request's trailers, filled once its body ended).
    For CONNECT, ``start_response(2xx)`` returns the tunnel: a ByteStream in both directions.
    """

    protocol: str | None = None
    responded = False
    status: int | None = None
    http_version = "2"
    trailers = BodyTrailers()  # the stream's, once its body ended
    _extra_fields: tuple[tuple[bytes, bytes], ...] = ()  # the server's response_headers

    def __init__(
        self,
        stream: H2Stream,
        method: str,
        target: str,
        headers: Headers,
        *,
        scheme: str = "http",
        authority: str = "",
        limits: Limits,
    ) -> None:
        # Request.__init__'s attributes, set here (a request per stream); the constant ones are
        # the class's defaults above
        self.method = method
        self.target = target
        self.headers = headers
        self.body = stream
        self.info = stream._conn.info
        self.scheme = scheme
        self.authority = authority or (headers.get("host") or "")
        self.limits = limits
        self._stream = stream
        self.stream_id = stream.stream_id

    async def respond(
        self, status: int, headers: HeaderInput = (), body: bytes = b"", *, deadline: float = FOREVER
    ) -> None:
        """Send a whole response (see :meth:`layers.http.Request.respond`): one HEADERS and,
        when it fits the windows, one DATA frame, queued together."""
        self._claim(status)
        await self._respond_checked(
            status, _checked_input(headers), body if body.__class__ is bytes else bytes(body), deadline
        )

    def _head(self, status: int, headers: Headers, body_length: int | None) -> list[tuple[bytes, bytes]]:
        return self._head_of(status, _checked(headers), body_length)

    def _head_of(self, status: int, checked: _Checked, body_length: int | None) -> list[tuple[bytes, bytes]]:
        given, has_date, has_length = checked
        fields = [(b":status", _STATUS[status]), *given]
        if self._extra_fields:
            fields += self._extra_fields
        if not has_date:
            fields.append((b"date", date_header()))
        if body_length is not None and not has_length and status not in _NO_BODY_STATUS:
            fields.append((b"content-length", b"%d" % body_length))
        return fields

    def _send_head(self, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        stream = self._stream
        err = stream._error()
        if err is not None:
            raise err
        try:
            core = stream._conn.core
            if not (end_stream and core.send_response(stream.stream_id, fields, b"")):
                core.send_headers(stream.stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise _h2_fail(exc, "response head") from None
        stream._can_send = True
        if end_stream:
            stream._local_ended = True
            stream._conn.release_if_done(stream)
        stream._conn.wake_writer()

    async def _respond(self, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        await self._respond_checked(status, _checked(headers), body, deadline)

    async def _respond_checked(self, status: int, checked: _Checked, body: bytes, deadline: float) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        conn = stream._conn
        core = conn.core
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        fields = self._head_of(status, checked, len(body))
        n = len(body)
        if no_body or not n:
            self._send_head(fields, end_stream=True)
            stream._discard_body = no_body
            return
        # one HEADERS and one DATA frame, queued together (send_response is False when the body
        # is over one frame or the windows, or the stream not plainly open: the general path)
        sid = stream.stream_id
        if conn.queued() < HIGH_WATER and stream._error() is None and core.send_response(sid, fields, body):
            stream._can_send = True
            stream._local_ended = True
            conn.release_if_done(stream)
            conn.wake_writer()
            return
        self._send_head(fields, end_stream=False)
        await stream.send(body, deadline=deadline)
        await stream.done(deadline=deadline)

    async def _informational(self, status: int, headers: Headers, deadline: float) -> None:
        self._send_head([(b":status", _STATUS[status]), *_fields(headers)], end_stream=False)
        self._stream._can_send = False  # the final head is still to come
        await trio.lowlevel.checkpoint()

    async def wait_disconnect(self) -> None:
        """See :meth:`layers.http.Request.wait_disconnect`: returns once the stream was reset or
        the connection ended."""
        stream = self._stream
        while stream._error() is None:
            ev = stream._rd
            if ev is None:
                ev = stream._rd = trio.Event()
            await ev.wait()

    async def _start_response(self, status: int, headers: Headers, deadline: float) -> ByteStream:
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        conn = stream._conn
        if conn.queued() >= HIGH_WATER:
            with trio.move_on_at(deadline) as scope:
                while conn.queued() >= HIGH_WATER and stream._error() is None:
                    await conn.wait_drained()
            if scope.cancelled_caught:
                self.responded = False
                raise Timeout("HTTP/2 start_response timed out waiting for the connection to drain")
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        if self.method == "CONNECT" and 200 <= status < 300:
            fields = [(b":status", _STATUS[status]), *_fields(headers)]
        else:
            fields = self._head(status, headers, None)
        self._send_head(fields, end_stream=no_body)
        stream._discard_body = no_body
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream


class H2Response(Response):
    """A response received over HTTP/2 (see :class:`layers.http.Response`); ``stream_id``."""

    body: H2Stream
    trailers = BodyTrailers()  # the stream's, once its body ended

    def __init__(self, status: int, headers: Headers, body: H2Stream) -> None:
        super().__init__(status, headers, "2", body)
        self.stream_id = body.stream_id
