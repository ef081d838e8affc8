"""One HTTP/3 request stream as a :class:`~stack.ByteStream`, and the request and response objects
around it (the connection is in ``_h3conn.py``; :mod:`layers.http3` states the semantics).

Theory of operation: an HTTP/3 request is one bidirectional QUIC stream carrying HEADERS and DATA
frames. :class:`H3Stream` is a :class:`~layers.quic.QuicStream` whose received bytes are the
*body* (the DATA frames' payloads, put in its buffer by the connection as aioquic's
``H3Connection`` decodes them) and whose sent bytes are framed by ``H3Connection.send_data``;
``done(trailers=...)`` ends it with a trailing HEADERS frame. Everything else (deadlines that lose
nothing, backpressure, abandoning by RESET_STREAM and STOP_SENDING with H3_REQUEST_CANCELLED) is
the QUIC stream's. Its receive window counts the bytes aioquic's frame parser holds too, so a peer
cannot make us buffer more than one window per stream, framed or not.
"""

from __future__ import annotations

import re
from typing import Protocol

import trio
from aioquic.h3.connection import H3Connection

from stack.deadlines import FOREVER
from stack.errors import StackError
from stack.streams import ByteStream, Info

from ._http_model import BodyTrailers, HeaderInput, Headers, Limits, Request, Response, date_header
from ._muxed_stream import ResponseHead
from ._quic_stream import QuicStream, StreamOwner

__all__ = ["H3Request", "H3Response", "H3Stream", "fields", "headers_of"]

_CONNECTION_FIELDS = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"])
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]|^[ \t]|[ \t]$")
_NO_BODY_STATUS = frozenset([204, 304])


def fields(headers: Headers, *, trailers: bool = False) -> list[tuple[bytes, bytes]]:
    """The field list to send: checked, connection-specific fields (and ``host``) dropped."""
    out = []
    for name, value in headers.raw:
        if name in _CONNECTION_FIELDS or name == b"host":
            continue
        if name == b"te" and value.strip().lower() != b"trailers":
            continue
        if not name or _BAD_NAME.search(name):
            raise ValueError(f"invalid header name {name!r} for HTTP/3")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name.decode('latin-1')!r}: {value!r}")
        if trailers and name == b"content-length":
            raise ValueError("content-length is not allowed in trailers")
        out.append((name, value))
    return out


def headers_of(raw: list[tuple[bytes, bytes]]) -> Headers:
    """Regular fields (pseudo-fields dropped) as :class:`Headers` (aioquic checked them)."""
    return Headers._wire([(k, v) for k, v in raw if not k.startswith(b":")])


class H3Owner(StreamOwner, Protocol):
    """What an HTTP/3 stream asks of its connection beyond a QUIC stream's needs."""

    @property
    def h3(self) -> H3Connection: ...

    @property
    def h3_info(self) -> Info: ...

    @property
    def limits(self) -> Limits: ...

    def wake(self) -> None: ...


class H3Stream(ResponseHead, QuicStream):
    """One HTTP/3 request stream (see the module docstring). ``trailers``: the peer's trailers
    once its side ended. ``info``: ``stream_id``, ``http_version="3"``, the connection's keys."""

    kind = "h3-stream"
    _version = "HTTP/3"
    _conn: H3Owner

    def __init__(self, conn: H3Owner, stream_id: int, *, can_send: bool) -> None:
        super().__init__(conn, stream_id, can_send=True, can_recv=True)
        self._head_sent = can_send
        self._discard_body = False
        self._trailers_out: Headers | None = None
        self.trailers = Headers()
        self._head: trio.Event | None = None  # client: the response head arrived
        self._response: H3Response | None = None

    def _on_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers  # the request's or response's (their trailers property)

    @property
    def info(self) -> Info:
        return Info({"stream_id": self.stream_id}, self._conn.h3_info)

    def _buffered_in(self) -> int:
        h3s = self._conn.h3._stream.get(self.stream_id)
        return len(self._in) + (len(h3s.buffer) if h3s is not None else 0)

    def _wake(self) -> None:
        super()._wake()
        if self._head is not None:
            self._head.set()

    def _check_send(self) -> None:
        if not self._head_sent:
            raise StackError("start the response (start_response) before sending its body")
        super()._check_send()

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        if self._discard_body:
            self._check_send()
            await trio.lowlevel.checkpoint()
            return len(data)
        return await super()._send_some(data, deadline)

    def _commit(self, data: bytes) -> None:
        self._conn.h3.send_data(self.stream_id, data, False)
        self._conn.wake()

    def _commit_end(self) -> None:
        conn = self._conn
        if self._trailers_out is not None:
            conn.h3.send_headers(self.stream_id, fields(self._trailers_out, trailers=True), end_stream=True)
        elif not self._discard_body:
            conn.h3.send_data(self.stream_id, b"", True)
        conn.wake()

    async def done(self, *, trailers: HeaderInput | None = None, deadline: float = FOREVER) -> None:
        """End our side (a FIN), sending ``trailers`` first if given."""
        if trailers is not None:
            self._trailers_out = Headers(trailers)
        await super().done(deadline=deadline)


class H3Request(Request):
    """A request received over HTTP/3 (see :class:`layers.http.Request`); ``stream_id``;
    ``protocol`` (the ``:protocol`` of an extended CONNECT, else ``None``)."""

    http_version = "3"
    trailers = BodyTrailers()  # the stream's, once its body ended

    def __init__(
        self,
        stream: H3Stream,
        method: str,
        target: str,
        headers: Headers,
        *,
        scheme: str,
        authority: str,
        protocol: str | None,
        limits: Limits,
    ) -> None:
        super().__init__(
            method, target, headers, "3", stream, stream.info, scheme=scheme, authority=authority, limits=limits
        )
        self.info = stream._conn.h3_info
        self._stream = stream
        self.stream_id = stream.stream_id
        self.protocol = protocol

    def _send_head(self, status: int, headers: Headers, body_length: int | None, end_stream: bool) -> None:
        stream = self._stream
        err = stream._error()
        if err is not None:
            raise err
        given = fields(headers)
        out = [(b":status", b"%d" % status), *given]
        names = {name for name, _ in given}
        if b"date" not in names:
            out.append((b"date", date_header()))
        if body_length is not None and b"content-length" not in names and status not in _NO_BODY_STATUS:
            out.append((b"content-length", b"%d" % body_length))
        conn = stream._conn
        conn.h3.send_headers(stream.stream_id, out, end_stream=end_stream)
        stream._head_sent = True
        if end_stream:
            stream._local_ended = True
            conn.release_if_done(stream)
        conn.wake()

    async def _respond(self, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        if no_body or not body:
            self._send_head(status, headers, len(body), end_stream=True)
            await trio.lowlevel.checkpoint()
            return
        self._send_head(status, headers, len(body), end_stream=False)
        await self._stream.send(body, deadline=deadline)
        await self._stream.done(deadline=deadline)

    async def _start_response(self, status: int, headers: Headers, deadline: float) -> ByteStream:
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        if self.method == "CONNECT" and 200 <= status < 300:
            self._send_head(status, headers, None, end_stream=False)
        else:
            self._send_head(status, headers, None, end_stream=no_body)
        self._stream._discard_body = no_body
        await trio.lowlevel.checkpoint()
        return self._stream


class H3Response(Response):
    """A response received over HTTP/3 (see :class:`layers.http.Response`); ``stream_id``."""

    body: H3Stream
    trailers = BodyTrailers()  # the stream's, once its body ended

    def __init__(self, status: int, headers: Headers, body: H3Stream) -> None:
        super().__init__(status, headers, "3", body)
        self.stream_id = body.stream_id
