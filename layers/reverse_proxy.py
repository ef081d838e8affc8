"""A reverse proxy: an HTTP/2 and HTTP/1.1 front-end app forwarding to an HTTP/1.1 backend.

Mount it in any server built from the layers (a trio program, a few lines)::

    from layers import http, reverse_proxy, tcp, tls
    from stack import Stack

    upstream = reverse_proxy.Upstream.parse("http://127.0.0.1:8080")   # or "unix:/run/app.sock"
    pool = reverse_proxy.BackendPool(upstream.stack(), size=64)
    app = reverse_proxy.ProxyApp(pool, timeout=60)
    front = Stack(tcp.listen("0.0.0.0", 8443), tls.server(cert, alpn=["h2", "http/1.1"]), http.server(app))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)       # closes idle backend connections once expired
        await front.serve()                # finally: await pool.aclose()

``python -m stack proxy`` (:mod:`stack.cli.proxy`) is exactly this, with arguments, signals and
an access log; the option it maps each parameter to is named below in parentheses.

Theory of operation. The front-end (any :func:`layers.http.server`) hands every request, HTTP/2
or HTTP/1.1, to :class:`ProxyApp`. It rewrites the head (:func:`request_headers`), takes a
backend connection from :class:`BackendPool`, sends the request as HTTP/1.1 with its body
streamed, and answers the client with the backend's response (:func:`response_headers`).
Both sides are stacks built from the layers::

    front = Stack(tcp.listen(host, port), tls.server(cert, alpn=["h2", "http/1.1"]), http.server(ProxyApp(...)))
    back  = Stack(tcp.connect(host, port) | unix.connect(path), http.client())

Forwarding rules (RFC 9110 section 7.6):

* **Hop-by-hop fields are removed** both ways: Connection, Keep-Alive, Proxy-Connection,
  Proxy-Authenticate, Proxy-Authorization (every ``Proxy-*``), TE, Trailer, Transfer-Encoding,
  Upgrade, and every field the Connection header names (:data:`HOP_BY_HOP`). ``Expect`` is
  answered by the front-end itself (``100 Continue`` when the body is first read), so it is not
  forwarded either.
* **Via** (``1.1 trio-stack`` or ``2 trio-stack``, added to what is there) both ways, and
  **Forwarded** (RFC 7239: ``for``, ``host``, ``proto``) on requests. ``Host`` is kept (from the
  client's Host or ``:authority``); HTTP/2's split Cookie fields are joined into one.
* **Bodies stream both ways with backpressure**: the request body goes from the client's stream to
  the backend chunk by chunk (chunked when its length is unknown), the response body back the same
  way; each chunk waits for the other side to take it, under a deadline (``timeout`` without
  progress, ``--timeout``). Small responses of known length (up to :data:`SMALL_BODY`) are read
  whole and sent with the head in one write.
* **Backend connections are pooled** (:class:`BackendPool`): at most ``size`` (``--pool-size``),
  kept alive and reused only once their response body was read to its end (and the backend did
  not say ``Connection: close``), closed after ``idle_timeout`` (``--pool-idle``) seconds unused;
  when all are busy, requests wait for one first come, first served. A request that fails on a
  reused connection before any response arrived (the backend had closed it) is sent again on a
  new connection when that is safe (no body, or a body not yet read).
* **Failures**: a backend that cannot be reached or breaks HTTP gives ``502 Bad Gateway``; one
  that does not answer in time (``connect_timeout``, ``timeout``) gives ``504 Gateway Timeout``;
  a client whose request body stalls for ``timeout`` gets ``408 Request Timeout``. A failure
  after the response head was forwarded aborts the response to the client (HTTP/1.1: the
  connection closes; HTTP/2: the stream is reset), never a silent truncation.
* **PROXY protocol** toward the backend with ``send_proxy=1`` or ``2`` (``--send-proxy``,
  ``--send-proxy-v2``): each backend connection starts with a header naming the client
  (:mod:`layers.proxy_protocol`), so it belongs to that client: one new backend connection per
  request, never pooled.
* **CONNECT** tunnels (HTTP/1.1 and HTTP/2, RFC 9113 8.5) to the ``HOST:PORT`` authorities given
  in ``allow_connect`` (``--allow-connect``; none by default: 403), piped both ways with
  backpressure.

Cost: a request without a body (HTTP/1.x without Content-Length and Transfer-Encoding, HTTP/2
whose HEADERS ended the stream) takes no cancel scope: the run's watchdog keeps its deadlines
and resets the backend connection when one passes (``ProxyApp._forward_bodiless``); any other
request takes one cancel scope (``ProxyApp._forward_body``), and no deadline per call
below it; CONTRIBUTING ("The proxy") records why. One access line per request
goes to the ``stack.access`` logger (``access=True``, and only when that logger is enabled for
INFO); the proxy's own events go to ``stack.proxy``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any

import trio

from layers import http, tcp
from stack.compose import Stack
from stack.deadlines import after
from stack.errors import Broken, Closed, EndOfStream, StackError, Timeout
from stack.watchdog import watchdog

from ._http_model import remember, small_fields
from ._proxy_fields import HOP_BY_HOP, PSEUDONYM, field_value, forwarded_value, request_headers, response_headers
from ._proxy_pool import BackendPool, Upstream, parse_listen

__all__ = [
    "CHUNK", "FORWARDED_KEPT", "HEADS_KEPT", "HOP_BY_HOP", "PSEUDONYM", "SMALL_BODY", "BackendPool", "ProxyApp",
    "Upstream", "parse_listen", "request_headers", "response_headers",
]  # fmt: skip

log = logging.getLogger("stack.proxy")
access_log = logging.getLogger("stack.access")

CHUNK = 65536
"""Most body bytes forwarded per step."""

SMALL_BODY = 65536
"""Responses of a known length up to this are read whole and sent with their head in one write."""

FORWARDED_KEPT = 256
"""Client connections whose Forwarded value is kept (see ProxyApp._forwarded)."""

HEADS_KEPT = 256
"""Request and response heads whose forwarded fields are kept, each way (see ProxyApp._request_fields)."""

_HTTP1 = ("1.1", "1.0")
"""The versions whose requests say in their fields whether a body follows."""

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
"""Methods sent without Content-Length when the request has no body."""


# --------------------------------------------------------------------------------------------------
# the app


_Kept = tuple[http.Headers, bool, int]
"""What is kept per response head (:meth:`ProxyApp._response_fields`): the fields to forward, whether
the backend keeps the connection, the body size announced if it is read whole (else -1)."""


class _ClientFailed(Exception):
    """The client (not the backend) failed while its request body was being forwarded;
    ``status`` is the answer it gets (408 when it was too slow, else 400)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Upload:
    """The request body as an async iterable for the backend client: chunk by chunk from the
    client's stream; every chunk taken pushes ``scope``'s deadline (the exchange's) ``timeout``
    seconds further, so a long upload that progresses is not cut. That scope bounds each read
    too: a deadline of its own would be a cancel scope per chunk in the layer below, for the
    same instant. ``reading`` stays true when a read is cancelled: the scope's deadline then
    passed while the client was not sending (408), not while the backend was not answering."""

    def __init__(self, body: Any, first: bytes, timeout: float, scope: trio.CancelScope) -> None:
        self.body = body
        self.first = first
        self.timeout = timeout
        self.scope = scope
        self.started = False
        self.reading = False

    def __aiter__(self) -> _Upload:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        self.scope.deadline = trio.current_time() + self.timeout
        if self.first:
            chunk, self.first = self.first, b""
            return chunk
        self.reading = True
        try:
            chunk = await self.body.recv(CHUNK)
        except StackError as exc:
            self.reading = False
            status = 408 if isinstance(exc, Timeout) else 400
            raise _ClientFailed(f"the client's request body failed: {exc}", status) from exc
        self.reading = False
        if not chunk:
            raise StopAsyncIteration
        return bytes(chunk)


class _Expiry:
    """What the watchdog ends when a request without a cancel scope passes its deadline
    (:meth:`ProxyApp._forward_bodiless`): the backend connection it waits on, reset at the
    bottom (``reset()``: the socket closes, so the wait on it raises). ``fired`` says it came
    from us; a connection taken after it fired is reset at once."""

    __slots__ = ("bottom", "fired")

    def __init__(self) -> None:
        self.bottom: Any = None
        self.fired = False

    def watch(self, conn: http.ClientConnection) -> None:
        """Watch ``conn``: its bottom stream (the first below it that can ``reset()``)."""
        stream = getattr(conn, "lower", None)
        while stream is not None and not hasattr(stream, "reset"):
            stream = stream.lower
        self.bottom = stream
        if self.fired:
            self.cancel()

    def cancel(self) -> None:
        """Called by the watchdog's sweeper (a system task): never raises."""
        self.fired = True
        if self.bottom is not None:
            try:
                self.bottom.reset()
            except Exception as exc:  # pragma: no cover - a socket closed already
                log.debug("resetting a late backend connection: %r", exc)


class ProxyApp:
    """The app the front-end runs: forwards each request to the backend through ``pool``.

    ``timeout``: seconds the backend has to answer (and, after that, between two body chunks in
    either direction). ``allow_connect``: ``HOST:PORT`` authorities CONNECT may tunnel to.
    """

    def __init__(
        self,
        pool: BackendPool,
        *,
        timeout: float = 60.0,
        allow_connect: Iterable[str] = (),
        access: bool = True,
        send_proxy: int | None = None,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.allow_connect = frozenset(allow_connect)
        self.access = access
        self.send_proxy = send_proxy  # PROXY protocol version toward the backend (None: no header)
        self._forwarded_kept: dict[int, tuple[Any, str, bytes]] = {}  # id(info): (info, host, Forwarded)
        self._requests_kept: dict[tuple[Any, ...], list[tuple[bytes, bytes]]] = {}
        self._responses_kept: dict[tuple[Any, ...], _Kept] = {}

    def __call__(self, request: http.Request) -> Awaitable[None]:
        """Forward ``request`` (the app's call: ``await app(request)``). This returns the
        coroutine that does it, :meth:`_forward`'s (or :meth:`_tunnel`'s), wrapped in one that
        writes the access line only when that line is written: one coroutine frame less on every
        resume of a request otherwise."""
        if self.access and access_log.isEnabledFor(logging.INFO):
            return self._logged(request)
        if request.method == "CONNECT":
            return self._tunnel(request)  # type: ignore[return-value]  # (its result is not looked at)
        return self._forward(request)  # type: ignore[return-value]

    async def _logged(self, request: http.Request) -> None:
        """:meth:`__call__`, and the access line."""
        t0 = time.perf_counter()
        sent = 0
        try:
            if request.method == "CONNECT":
                sent = await self._tunnel(request)
            else:
                sent = await self._forward(request)
        finally:
            access_log.info(
                '%s "%s %s HTTP/%s" %s %s %.1fms',
                _peer(request.info), request.method, request.target, request.http_version,
                request.status if request.status is not None else "-", sent,
                (time.perf_counter() - t0) * 1000,
            )  # fmt: skip

    # ---- forwarding ------------------------------------------------------------------------

    def _forwarded(self, request: http.Request) -> bytes:
        """The Forwarded value of ``request``. It depends on the connection's ``info`` (the
        client's address, TLS), one object per connection, and the Host only: it is kept per
        info object, for at most :data:`FORWARDED_KEPT` connections (then all are dropped). The
        entry holds the info object itself, so its ``id`` cannot be reused while kept."""
        info, host = request.info, request.authority
        kept = self._forwarded_kept.get(id(info))
        if kept is not None and kept[0] is info and kept[1] == host:
            return kept[2]
        value = forwarded_value(info, host)
        remember(self._forwarded_kept, id(info), (info, host, value), FORWARDED_KEPT)
        return value

    def _request_fields(self, request: http.Request) -> list[tuple[bytes, bytes]]:
        """:func:`request_headers` of ``request``, kept by what they depend on (the fields as
        received, the authority, the version, the Forwarded value): clients repeat their heads.
        At most :data:`HEADS_KEPT` (then all are dropped); the list is shared, so it is only read
        (the backend client and both engines copy what they keep)."""
        forwarded = self._forwarded(request)
        key = (tuple(request.headers.raw), request.authority, request.http_version, forwarded)
        kept = self._requests_kept.get(key)
        if kept is None:
            kept = request_headers(request, forwarded)
            if small_fields(key[0]):  # (what clients send: up to 64 KiB a head)
                remember(self._requests_kept, key, kept, HEADS_KEPT)
        return kept

    def _response_fields(self, response: http.Response) -> _Kept:
        """:func:`response_headers` of ``response`` (as ``Headers`` over the list) and the body
        size it announces if it is read whole (:func:`_announced`), kept by its fields and version
        as for requests (a backend answers with few heads; Date changes once a second). The
        fields are shared: ``respond`` and ``start_response`` copy them."""
        key = (tuple(response.headers.raw), response.http_version)
        kept = self._responses_kept.get(key)
        if kept is None:
            fields, keep = response_headers(response)
            kept = (http.Headers._wire(fields), keep, _announced(response))
            if small_fields(key[0]):
                remember(self._responses_kept, key, kept, HEADS_KEPT)
        return kept

    def _stack(self, request: http.Request) -> Stack | None:
        """With ``send_proxy``: the pool's stack with a PROXY header for this request's client
        (so the connection is this client's only: it is never kept for another)."""
        if self.send_proxy is None:
            return None
        from layers import proxy_protocol

        header = proxy_protocol.client.from_info(request.info, self.send_proxy)
        return Stack(self.pool.stack.source, header, *self.pool.stack.layers)

    def _forward(self, request: http.Request) -> Coroutine[Any, Any, int]:
        """Forward one request: the backend's answer, or 400, 408, 502 or 504 of our own. This
        returns the coroutine that does it (:meth:`_forward_bodiless` for a request without a
        body, else :meth:`_forward_body`): one coroutine frame less on every resume."""
        headers = http.Headers._wire(self._request_fields(request))  # not normalised again
        raw = request.headers.raw
        length = field_value(raw, b"content-length")
        if (
            (length == b"0" or (length is None and field_value(raw, b"transfer-encoding") is None))
            if request.http_version in _HTTP1  # else HTTP/2 or 3: the stream ended with the HEADERS
            else (length is None or length == b"0") and getattr(request.body, "ended", False)
        ):  # a request without a body: only the backend is waited on
            return self._forward_bodiless(request, headers, length)
        return self._forward_body(request, headers, length)

    async def _forward_body(self, request: http.Request, headers: http.Headers, length: bytes | None) -> int:
        """:meth:`_forward` for a request that has a body (or may have one).

        One cancel scope bounds reading the start of the request body and the backend exchange
        up to the response head (``timeout`` seconds, pushed on by every upload chunk), then,
        pushed on once more, reading a small response body whole. What runs inside it takes no
        deadline of its own: it is the only cancel scope of a request on this path.
        """
        raw = request.headers.raw
        conn: http.ClientConnection | None = None
        response: http.Response | None = None
        data: bytes | None = None  # a small (or bodiless) response body, read whole
        kept: _Kept | None = None
        upload: _Upload | None = None
        failure: tuple[int, str] | None = None
        phase = "client"
        with trio.CancelScope(deadline=trio.current_time() + self.timeout) as scope:
            first = b""
            if length is None and (request.http_version == "2" or field_value(raw, b"transfer-encoding") is not None):
                try:  # a body of unknown length (chunked, or HTTP/2), maybe empty: look at its start
                    first = await request.body.recv(CHUNK)
                except StackError as exc:
                    log.info("%s: the request body failed: %s", _peer(request.info), exc)
                    return await _error(request, 400, "the request body could not be read")
            phase = "backend"
            if first or (length is not None and length != b"0"):
                upload = _Upload(request.body, first, self.timeout, scope)
            conn, response, failure = await self._exchange(request, headers, upload, length, scope.deadline)
            if response is not None:
                kept = self._response_fields(response)
                whole = _read_whole(request, response, kept[2])
            if response is not None and whole >= 0:
                phase = "body"
                if response.body.buffered < whole:  # (usually it came with the head: no wait, no push)
                    scope.deadline = trio.current_time() + self.timeout
                try:
                    data = await _read_small(response)
                except (StackError, OSError) as exc:
                    log.warning("backend failed while sending a response body: %s", exc)
                    failure = (504 if isinstance(exc, Timeout) else 502, "the backend failed")
                except BaseException:  # our deadline (or a cancellation from outside)
                    if conn is not None:
                        await self.pool.release(conn, reusable=False)
                        conn = None
                    raise
        if scope.cancelled_caught:
            if phase == "client":
                failure = (408, "the request body did not arrive in time")
            elif upload is not None and upload.reading:
                log.info("%s: the request body stalled for %gs", _peer(request.info), self.timeout)
                failure = (408, "the request body did not arrive in time")
            elif phase == "body":
                log.warning("backend failed while sending a response body: the backend did not send its "
                            "response body within %gs", self.timeout)  # fmt: skip
                failure = (504, "the backend failed")
            else:
                log.warning("backend did not answer within %gs", self.timeout)
                failure = (504, "the backend did not answer in time")
        return await self._reply(request, conn, response, kept, data, failure, True)

    async def _forward_bodiless(self, request: http.Request, headers: http.Headers, length: bytes | None) -> int:
        """:meth:`_forward` for a request without a body, where only the backend is waited on:
        with no cancel scope. The same deadlines (``timeout`` for the answer, then once more for
        a small body still coming) are kept by the run's watchdog, which resets the backend
        connection (so the wait on it ends) when one passes (:class:`_Expiry`). The answers and
        log lines are the scope's: 504 when the backend was too slow."""
        timeout = self.timeout
        dog = watchdog()
        expiry = _Expiry()
        deadline = dog.now() + timeout
        dog.arm(expiry, deadline, expiry, timeout / 8)
        conn: http.ClientConnection | None = None
        response: http.Response | None
        data: bytes | None = None
        kept: _Kept | None = None
        try:
            # _exchange's usual case inline (a kept connection answers): one coroutine frame less
            conn = None if self.send_proxy is not None else self.pool._take()
            if conn is None:
                conn, response, failure = await self._exchange(request, headers, None, length, deadline, expiry)
            else:
                expiry.watch(conn)
                try:
                    response = await conn.request(
                        request.method, request.target, headers=headers, body=_request_body(request, None, length)
                    )
                    failure = None
                except BaseException as exc:  # (a cancellation: re-raised by _failed once conn is closed)
                    taken, conn, response = conn, None, None  # _failed closes it
                    failure = await self._failed(request, taken, exc, True, None, expiry)
                    if failure is None:  # a kept connection the backend had closed: a new one
                        conn, response, failure = await self._exchange(
                            request, headers, None, length, deadline, expiry, fresh=True
                        )
            if response is not None:
                kept = self._response_fields(response)
                whole = _read_whole(request, response, kept[2])
            if response is not None and whole >= 0:
                if response.body.buffered < whole:  # (usually it came with the head: no wait, no push)
                    dog.arm(expiry, dog.now() + timeout, expiry, timeout / 8)
                try:
                    data = await _read_small(response)
                except (StackError, OSError) as exc:
                    if expiry.fired:
                        log.warning("backend failed while sending a response body: the backend did not send its "
                                    "response body within %gs", timeout)  # fmt: skip
                        failure = (504, "the backend failed")
                    else:
                        log.warning("backend failed while sending a response body: %s", exc)
                        failure = (504 if isinstance(exc, Timeout) else 502, "the backend failed")
        except BaseException:  # a cancellation from outside
            dog.disarm(expiry)
            if conn is not None:
                await self.pool.release(conn, reusable=False)
            raise
        dog.disarm(expiry)
        if expiry.fired and failure is None and conn is not None:  # fired as the answer came: as a scope would
            if data is None:  # the connection was reset under a response still to stream
                log.warning("backend did not answer within %gs", timeout)
                failure = (504, "the backend did not answer in time")
            else:  # the whole answer is here; only the connection is lost
                await self.pool.release(conn, reusable=False)
                conn = None
                assert response is not None and kept is not None
                await request.respond(response.status, kept[0], data, deadline=after(timeout))
                return len(data)
        return await self._reply(request, conn, response, kept, data, failure, True)

    async def _reply(
        self,
        request: http.Request,
        conn: http.ClientConnection | None,
        response: http.Response | None,
        kept: _Kept | None,
        data: bytes | None,
        failure: tuple[int, str] | None,
        reusable: bool,
    ) -> int:
        """Answer the client: ``failure`` (the connection closed), else the backend's response,
        with ``data`` as its whole body or streamed (None); the connection goes back to the pool
        (reused if ``reusable``, the backend keeps it and the response was read to its end);
        ``kept``: the response's :meth:`_response_fields`."""
        if conn is None or response is None or kept is None:
            assert failure is not None
            return await _error(request, *failure)
        if failure is not None:  # the small body failed
            await self.pool.release(conn, reusable=False)
            return await _error(request, *failure)
        fields, keep, _ = kept
        reusable = reusable and keep and self.send_proxy is None
        if data is None:
            ended = [False]
            try:
                return await self._stream(request, response, fields, ended)
            finally:
                await self.pool.release(conn, reusable=reusable and ended[0])
        if not (reusable and self.pool._keep(conn)):  # the whole body is here: the connection is free already
            await self.pool.release(conn, reusable=False)
        await request.respond(response.status, fields, data, deadline=after(self.timeout))
        return len(data)

    async def _exchange(
        self,
        request: http.Request,
        headers: http.Headers,
        upload: _Upload | None,
        length: bytes | None,
        deadline: float,
        expiry: _Expiry | None = None,
        *,
        fresh: bool = False,
    ) -> tuple[http.ClientConnection | None, http.Response | None, tuple[int, str] | None]:
        """Send the request (with ``upload`` as its body, if any) to the backend and return the
        connection and the response head, or the failure to answer with. A request that fails on
        a reused connection before anything arrived (the backend had closed it) goes again on a
        new one when that is safe (no body, or none of it read yet). Cancelled (the caller's
        scope's deadline, say): the connection is closed, never reused. ``deadline`` bounds the
        wait for a pooled connection; ``expiry`` (without a scope) watches the connection taken,
        and once it fired the answer is 504, never a retry. ``fresh``: a new connection (a
        pooled one just failed)."""
        pool = self.pool
        fresh = fresh or self.send_proxy is not None
        body = _request_body(request, upload, length)
        while True:
            conn = None if fresh else pool._take()  # the usual case, without acquire's coroutine
            reused = True
            if conn is None:
                try:
                    conn, reused = await pool.acquire(deadline=deadline, fresh=fresh, stack=self._stack(request))
                except Timeout as exc:
                    log.warning("backend: %s", exc)
                    return None, None, (504, "the backend did not answer in time")
                except (StackError, OSError) as exc:
                    log.warning("backend unreachable: %s", exc)
                    return None, None, (502, "the backend cannot be reached")
            if expiry is not None:
                expiry.watch(conn)
            try:
                return conn, await conn.request(request.method, request.target, headers=headers, body=body), None
            except BaseException as exc:  # (a cancellation: re-raised by _failed once conn is closed)
                failure = await self._failed(request, conn, exc, reused, upload, expiry)
            if failure is not None:
                return None, None, failure
            fresh = True

    async def _failed(
        self,
        request: http.Request,
        conn: http.ClientConnection,
        exc: BaseException,
        reused: bool,
        upload: _Upload | None,
        expiry: _Expiry | None,
    ) -> tuple[int, str] | None:
        """The exchange on ``conn`` raised ``exc``: close ``conn``, and return the failure to
        answer with, or None when the request goes again on a new connection (see
        :meth:`_exchange`); ``exc`` is raised again when it is not the backend's or the
        client's (a cancellation)."""
        failure: tuple[int, str] | None = None
        if isinstance(exc, _ClientFailed):
            log.info("%s: %s", _peer(request.info), exc)
            failure = (exc.status, "the request body could not be read")
        elif isinstance(exc, StackError | OSError):
            if expiry is not None and expiry.fired:  # our deadline reset the connection
                log.warning("backend did not answer within %gs", self.timeout)
                failure = (504, "the backend did not answer in time")
            else:
                replayable = upload is None or not upload.started
                stale = isinstance(exc, EndOfStream | Broken | Closed | OSError) and not isinstance(exc, Timeout)
                if reused and replayable and stale:
                    log.debug("a kept-alive backend connection had closed (%s): retrying on a new one", exc)
                elif isinstance(exc, Timeout):
                    failure = (504, "the backend did not answer in time")
                else:
                    log.warning("backend failed: %s", exc)
                    failure = (502, "the backend failed")
        else:
            await self.pool.release(conn, reusable=False)
            raise exc
        await self.pool.release(conn, reusable=False)
        return failure

    async def _stream(
        self, request: http.Request, response: http.Response, headers: http.Headers, ended: list[bool]
    ) -> int:
        """Stream the response body chunk by chunk; a backend failure aborts the client's response.

        Each read from the backend and each write to the client gets ``timeout`` seconds, as a
        deadline per call would give, but from one cancel scope whose deadline is pushed on
        before each of them: a deadline per call is a cancel scope per call in the layers below
        (two per chunk), a push costs about a third of one.
        """
        out = await request.start_response(response.status, headers, deadline=after(self.timeout))
        sent = 0
        body = response.body
        timeout = self.timeout
        async with out:  # closing it before done() aborts the response: never a silent truncation
            reading = True
            with trio.CancelScope() as scope:
                while True:
                    reading = True
                    scope.deadline = trio.current_time() + timeout
                    try:
                        chunk = await body.recv(CHUNK)
                    except (StackError, OSError) as exc:
                        log.warning("backend failed in a response body after %d bytes: %s; aborting it", sent, exc)
                        return sent
                    if not chunk:
                        ended[0] = True
                        break
                    reading = False
                    scope.deadline = trio.current_time() + timeout
                    await out.send(chunk)
                    sent += len(chunk)
            if scope.cancelled_caught:
                if reading:
                    log.warning("backend failed in a response body after %d bytes: %s; aborting it", sent,
                                f"no data within {timeout:g}s")  # fmt: skip
                    return sent
                raise Timeout(f"the client did not take the response body within {timeout:g}s ({sent} bytes sent)")
            trailers = response.trailers
            if len(trailers):
                await out.done(trailers=list(trailers), deadline=after(timeout))  # type: ignore[call-arg]
            else:
                await out.done(deadline=after(timeout))
        return sent

    # ---- CONNECT -----------------------------------------------------------------------------

    async def _tunnel(self, request: http.Request) -> int:
        authority = request.target
        if authority not in self.allow_connect:
            return await _error(request, 403, f"CONNECT to {authority} is not allowed (--allow-connect)")
        host, port = parse_listen(authority)
        try:
            upstream = await Stack(tcp.connect(host, port)).connect(deadline=after(self.pool.connect_timeout))
        except Timeout:
            return await _error(request, 504, f"{authority} did not answer in time")
        except (StackError, OSError) as exc:
            log.info("CONNECT %s: %s", authority, exc)
            return await _error(request, 502, f"{authority} cannot be reached")
        moved = [0]
        async with upstream:
            tunnel = await request.start_response(200, [], deadline=after(self.timeout))
            async with tunnel, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, tunnel, upstream, moved, nursery.cancel_scope)
                nursery.start_soon(self._pipe, upstream, tunnel, moved, nursery.cancel_scope)
        return moved[0]

    async def _pipe(self, src: Any, dst: Any, moved: list[int], scope: trio.CancelScope) -> None:
        """Copy ``src`` to ``dst`` until its end (then ``dst.done()``); on failure end both ways."""
        try:
            while chunk := await src.recv(CHUNK):
                await dst.send(chunk, deadline=after(self.timeout))
                moved[0] += len(chunk)
            await dst.done(deadline=after(self.timeout))
        except StackError as exc:
            log.debug("tunnel ended: %s", exc)
            scope.cancel()


def _peer(info: Any) -> str:
    peer = info.get("peer")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "-")


def _request_body(request: http.Request, upload: _Upload | None, length: bytes | None) -> Any:
    """The body the backend client sends: ``upload``; without one, none (None), except an empty
    one (``b""``: Content-Length: 0) for a method that is not usually bodiless and said nothing."""
    if upload is None and length is None and request.method not in _NO_BODY_METHODS:
        return b""
    return upload


def _read_whole(request: http.Request, response: http.Response, announced: int) -> int:
    """The size of a response body read whole and sent with the head in one write: 0 when
    bodiless (HEAD, 204, 304), else ``announced`` (:func:`_announced`); -1 for a body that streams."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    return announced


def _announced(response: http.Response) -> int:
    """The length ``response`` announces if it is at most :data:`SMALL_BODY` bytes, else -1."""
    length = field_value(response.headers.raw, b"content-length")
    if length is not None and length.isdigit():
        size = int(length)
        if size <= SMALL_BODY:
            return size
    return -1


async def _read_small(response: http.Response) -> bytes:
    """The whole body of a response announced as small (or bodiless); :class:`~stack.Broken` if
    it is longer than that. No deadline of its own: the caller's cancel scope (or the watchdog)
    bounds it. Bytes the body has read ahead are taken from its buffer (``readahead``: what a
    receive would return first, without the call), and a body that says it ``ended`` (the
    HTTP/1.1 client's, once its last bytes were taken) is not asked once more for its end."""
    body = response.body
    ahead = body.readahead()  # the usual case: the body came with the head; taken without a receive
    if ahead and len(ahead) <= CHUNK:
        first = bytes(ahead)
        ahead.clear()
    else:
        first = await body.recv(CHUNK)
    if not first:
        return b""
    if len(first) > SMALL_BODY:
        raise Broken(f"the backend sent more than the {SMALL_BODY} bytes it announced")
    if getattr(body, "ended", False):  # the usual case: the whole body came with the head
        return first
    chunk = await body.recv(CHUNK)
    if not chunk:  # the usual case: the whole body in one piece
        return first
    parts = [first]
    size = len(first)
    while chunk:
        size += len(chunk)
        if size > SMALL_BODY:
            raise Broken(f"the backend sent more than the {SMALL_BODY} bytes it announced")
        parts.append(chunk)
        chunk = await body.recv(CHUNK)
    return b"".join(parts)


async def _error(request: http.Request, status: int, text: str) -> int:
    """Answer ``status`` with a short text body (if no response started); return its size."""
    if request.responded:
        return 0
    body = f"{status} {text}\n".encode()
    headers = [("content-type", "text/plain; charset=utf-8"), ("via", f"{request.http_version} {PSEUDONYM}")]
    try:
        await request.respond(status, headers, body, deadline=after(5))
    except StackError as exc:
        log.debug("could not send the %d: %s", status, exc)
    return len(body)
