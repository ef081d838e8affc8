"""What an app holds of one HTTP/1.1 request on a server: the request, its body, its response stream.

Theory of operation. These objects do no I/O and keep no state of the connection: each reaches
its connection through :class:`RequestOwner`, the small named interface the server connection
(``_h1server.py``) implements, as an HTTP/2 stream reaches its connection through
``_h2stream.StreamOwner``. The request body reads through ``read_body`` (the connection's engine
decodes), the response stream commits framed bytes through ``write_body`` / ``end_body`` into the
connection's one output buffer, so bytes stay in order whatever the app does.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

import trio

from layers import _http_model as http
from layers._h1conn import BODY_INFO, split_pending
from layers._h1core import SEND_CHUNK, ParsedHead
from layers._http_model import HeaderInput, Headers, Limits
from stack.deadlines import FOREVER
from stack.errors import Closed, StackError
from stack.streams import DEFAULT_RECV, ByteStream, Info

__all__ = ["Request", "RequestBody", "RequestOwner", "ResponseStream"]


class RequestOwner(Protocol):
    """What a :class:`Request`, its body and its response stream use of their connection.

    ``info``, ``scheme``, ``limits``: given to the request. ``lower``: the stream below (the base
    of the bodies' streams). ``outbuf``: the connection's committed output (a response stream
    commits into it, so bytes stay in order). The methods act on the request in progress and
    refuse (:class:`~stack.StackError`) one that is not:

    * ``send_response(request, status, headers, body, deadline)``: a whole response (``headers``
      as the app gave them).
    * ``start_streamed_response(request, status, headers, deadline)``: the head of a streamed
      response; returns its body stream (or the tunnel, for 101 and a 2xx to CONNECT).
    * ``read_body(body, deadline)``: the next bytes of the request body (``b""`` at its end).
    * ``write_body(request, data)``: commit bytes of a streamed response, framed.
    * ``end_body(request, trailers)``: commit the end of a streamed response, if it is still going.
    * ``flush(deadline)``: push the committed bytes down.
    * ``send_informational(request, status, headers, deadline)``: a 1xx before the response.
    * ``wait_disconnect(request)``: return once the client has gone (the body has been read).
    * ``close_after(why, linger=)``: the connection closes once the request is over.
    """

    info: Info
    scheme: str
    limits: Limits
    lower: ByteStream
    outbuf: bytearray

    async def send_response(
        self, request: Request, status: int, headers: HeaderInput, body: bytes, deadline: float
    ) -> None: ...

    async def start_streamed_response(
        self, request: Request, status: int, headers: Headers, deadline: float
    ) -> ByteStream: ...

    async def read_body(self, body: RequestBody, deadline: float) -> bytes: ...

    def write_body(self, request: Request, data: bytes | bytearray | memoryview) -> None: ...

    def end_body(self, request: Request, trailers: Headers | None) -> None: ...

    async def flush(self, deadline: float) -> None: ...

    async def send_informational(self, request: Request, status: int, headers: Headers, deadline: float) -> None: ...

    async def wait_disconnect(self, request: Request) -> None: ...

    def close_after(self, why: str, *, linger: bool = True) -> None: ...


class _WireHeaders:
    """``Request.headers``, made on first use from the parsed head's field list (names already
    lower-case bytes) and then kept in the instance: a request whose app never asks for its
    headers builds no :class:`Headers`. A non-data descriptor, so assigning ``headers`` works."""

    def __get__(self, request: Request | None, owner: type | None = None) -> Headers:
        if request is None:  # on the class (introspection)
            return self  # type: ignore[return-value]
        headers = request.headers = Headers._wire(request._head.fields)  # into the instance (not via
        return headers  # __dict__, which would turn its inline attribute values into a dict)


class Request(http.Request):
    """A request on an HTTP/1.1 server connection (see :class:`layers.http.Request`).

    ``trailers`` holds the request's trailer fields once its body has ended.
    """

    # What every request starts with (the model's __init__ is not called: this is per request)
    responded = False
    status: int | None = None
    _response: ResponseStream | None = None  # a streamed response's, until the cycle ends
    trailers = http.BodyTrailers()  # the body's, once it ended
    headers = _WireHeaders()  # a Headers once read
    # the parsed head's fields, set per request (no Headers built); here, in place of the model's property
    raw_headers: list[tuple[bytes, bytes]] = None  # type: ignore[assignment]

    # No __init__: the server connection makes each request (ServerCycle._start_request sets
    # method, target, http_version, body, info, scheme, authority, limits and these three).
    _owner: RequestOwner
    _head: ParsedHead
    _body: RequestBody

    def respond(  # returns the connection's coroutine: the same awaitable
        self, status: int, headers: HeaderInput = (), body: bytes = b"", *, deadline: float = FOREVER
    ) -> Coroutine[Any, Any, None]:
        """See :meth:`layers.http.Request.respond`. The fields go to the connection as given: a
        response of a shape sent before is framed from the head cache, with no ``Headers`` built;
        and the connection's own coroutine is returned, so a response costs no coroutine of its own
        (the checks run on the call, before the await)."""
        if self.responded or not 200 <= status <= 599:  # _claim, inline for a final status
            self._claim(status)  # raises, or claims a 101
        else:
            self.responded = True
            self.status = status
        return self._owner.send_response(self, status, headers, body if type(body) is bytes else bytes(body), deadline)

    async def _respond(self, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        await self._owner.send_response(self, status, headers, body, deadline)

    async def _start_response(self, status: int, headers: Headers, deadline: float) -> ByteStream:
        return await self._owner.start_streamed_response(self, status, headers, deadline)

    async def _informational(self, status: int, headers: Headers, deadline: float) -> None:
        await self._owner.send_informational(self, status, headers, deadline)

    async def wait_disconnect(self) -> None:
        """See :meth:`layers.http.Request.wait_disconnect`."""
        await self._owner.wait_disconnect(self)


class RequestBody(ByteStream):
    """The body of a request, as the server app reads it. ``b""`` at its end.

    The first receive that has to wait for the network sends ``100 Continue`` if the client asked
    for it. A malformed body raises :class:`~stack.ProtocolError` (the connection then closes). On
    deadline or cancellation nothing is consumed. ``aclose()`` only stops this stream (the server
    drains or closes when the request is over); ``detach()`` is not possible.
    """

    kind = "http1-request-body"

    # The state every body starts in, as ByteStream's __init__ would set it (not called: this is
    # per request). A request body never sends, so its outgoing buffer is never written; its info
    # is the same constant for all.
    _info = BODY_INFO
    _outbuf = bytearray()
    _sending = _receiving = _send_closed = _eof = False
    _closed: str | None = None
    _broken: BaseException | None = None
    _pending = b""
    trailers = Headers()  # the request's trailer fields, once the body ended: replaced, never changed in place

    # No __init__: the server connection makes each body (ServerCycle._start_request sets these).
    _lower: ByteStream
    _unread: bytearray
    _owner: RequestOwner
    _complete: bool

    async def recv(self, max_bytes: int = DEFAULT_RECV, *, deadline: float = FOREVER) -> bytes:
        """See :meth:`ByteStream.recv`; at the end of the body (at once for a request without
        one) ``b""`` without the base class's path."""
        if self._complete and not self._pending and not self._unread and max_bytes >= 1:
            if self._receiving or self._broken is not None or self._closed is not None:
                self._enter_recv()  # raises Busy, Broken or Closed
            self._eof = True
            return b""
        return await super().recv(max_bytes, deadline=deadline)

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        if not self._pending:
            if self._complete:
                return b""
            self._pending = await self._owner.read_body(self, deadline)
        out, self._pending = split_pending(self._pending, max_bytes)
        return out

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        raise Closed("a request body cannot be sent on; use the response stream")

    async def _done(self, deadline: float) -> None:
        pass

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Stop using this body (the rest is drained or the connection closed after the response)."""
        self._closed = self._closed or "closed"
        await trio.lowlevel.checkpoint()

    async def _detach(self, deadline: float) -> ByteStream:
        raise StackError("an HTTP/1.1 request body cannot be detached")


class ResponseStream(ByteStream):
    """The body of a streamed response (:meth:`Request.start_response`).

    ``send`` writes body bytes: chunked, unless the response has a Content-Length (then more bytes
    than announced raise :class:`~stack.StackError` and the connection closes) or the client
    speaks HTTP/1.0 (then the body ends when the connection closes). Each send step commits at
    most :data:`SEND_CHUNK` bytes. For HEAD, 204 and 304 the bytes are discarded.
    ``done(trailers=...)`` ends the response (trailers only in chunked encoding; fewer bytes than
    a Content-Length announced raise :class:`~stack.StackError` and close the connection).
    ``recv`` reads what is left of the request body. ``aclose()`` before ``done()`` abandons the
    response: the connection closes once the app returns. If the app returns without either, the
    server calls ``done()`` for it.
    """

    kind = "http1-response-body"

    def __init__(self, owner: RequestOwner, request: Request) -> None:
        super().__init__(owner.lower, BODY_INFO)
        self._owner = owner
        self._request = request
        self._trailers: Headers | None = None
        self._outbuf = owner.outbuf  # one buffer for the connection: bytes stay in order

    async def _flush(self, deadline: float) -> None:
        await self._owner.flush(deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        n = min(len(data), SEND_CHUNK)
        self._owner.write_body(self._request, data[:n] if n < len(data) else data)
        return n

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        return await self._request.body.recv(max_bytes, deadline=deadline)

    async def done(self, *, trailers: HeaderInput | None = None, deadline: float = FOREVER) -> None:
        """End the response, with ``trailers`` (chunked encoding only). See :meth:`ByteStream.done`."""
        if trailers is not None:
            self._trailers = Headers(trailers)
        await super().done(deadline=deadline)

    async def _done(self, deadline: float) -> None:
        self._owner.end_body(self._request, self._trailers)
        await self._owner.flush(deadline)

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Abandon the response if it was not ended (the connection closes); never raises."""
        if self._closed is None:
            self._closed = "closed"
            if not self._send_closed:
                self._owner.close_after("the app abandoned a streamed response", linger=False)
        await trio.lowlevel.checkpoint()

    async def _detach(self, deadline: float) -> ByteStream:
        raise StackError("an HTTP/1.1 response body cannot be detached (only an Upgrade/CONNECT tunnel can)")
