"""An httpx transport over our HTTP client: ``httpx.AsyncClient(transport=StackTransport())``.

::

    async with httpx.AsyncClient(transport=StackTransport(http2=True)) as client:
        r = await client.get("https://localhost:8443/", timeout=5)

Theory of operation
-------------------

httpx builds the request (URL, headers, cookies, redirects, auth) and hands each one to
:meth:`StackTransport.handle_async_request`; this module only moves it over our stacks and maps
the answer and the errors back to httpx's classes.

**Connections.** One pool per transport, keyed by origin (scheme, host, port). A connection is a
:class:`~stack.Stack` built per origin: ``tcp.connect`` (or a Unix socket with ``uds=``), then the
proxy's layer when there is one (``socks5.connect`` for ``socks5://``, an HTTP/1.1 CONNECT tunnel
for ``http://``), then for ``https`` ``tls.client`` with ALPN ``h2`` and ``http/1.1`` (``h2`` only
with ``http2=True``), then ``http.client``. An HTTP/2 connection is shared by every request to its
origin (multiplexed; its reader and writer run in the transport's nursery, so HTTP/2 needs the
transport entered: ``async with httpx.AsyncClient(transport=...)`` does it; outside such a block
only HTTP/1.1 is offered). An HTTP/1.1 connection carries one exchange at a time and goes back to
the idle list when its response body was read to its end (closed early, it is closed: never a
half-read connection reused); idle ones expire after ``limits.keepalive_expiry`` seconds and at
most ``limits.max_keepalive_connections`` are kept. ``limits.max_connections`` bounds the
connections open at once; a request waiting for room gets ``httpx.PoolTimeout`` after the
``pool`` timeout. A request that fails on a reused HTTP/1.1 connection before any byte of the
answer (the server closed it while idle) is retried once on a new one when its body can be sent
again (bytes, not a stream).

**Timeouts** (httpx's four, per request; ``None`` is no deadline): ``connect`` bounds building a
connection (``httpx.ConnectTimeout``); ``write`` plus ``read`` bound sending the request and
receiving the response head (``httpx.ReadTimeout``: our client does both in one call and cannot
say which side was slow); ``read`` bounds each receive of the body (``httpx.ReadTimeout``);
``pool`` bounds waiting for room in the pool (``httpx.PoolTimeout``).

**Errors**: a connection that cannot be made is ``httpx.ConnectError`` (refused, unreachable,
TLS and certificate failures, a SOCKS5 or CONNECT proxy refusing: ``httpx.ProxyError``); a peer
breaking the protocol is ``httpx.RemoteProtocolError`` (a server closing without answering too); a
connection failing mid-exchange is ``httpx.ReadError``; a header our client refuses is
``httpx.LocalProtocolError``. The original :class:`~stack.StackError` is the ``__cause__``.

**Bodies** stream both ways: a streamed request body goes out as it is produced (chunked on
HTTP/1.1 without a Content-Length), a response body comes in chunk by chunk as httpx reads it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import trio

from stack.bytestream import ByteStream
from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, EndOfStream, ProtocolError, StackError, Timeout

from . import http, socks5, tcp, tls, unix
from ._http_model import ClientConnection, Response

__all__ = ["StackTransport"]

log = logging.getLogger("stack.httpx")

Origin = tuple[str, str, int]

DEFAULT_POOL = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
"""httpx's own default pool limits."""

# Request headers our client writes itself (framing and the authority) or that are hop-by-hop.
_DROP = frozenset({b"host", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"upgrade"})


def _deadline(seconds: float | None) -> float:
    return FOREVER if seconds is None else trio.current_time() + seconds


@dataclass
class _Idle:
    conn: ClientConnection
    since: float


@dataclass
class _OriginPool:
    h2: ClientConnection | None = None
    idle: list[_Idle] = field(default_factory=list)
    connecting: trio.Lock = field(default_factory=trio.Lock)  # one handshake at a time may find h2


class StackTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` on trio-stack's HTTP/1.1 and HTTP/2 clients (see the module
    docstring).

    ``http2``: offer HTTP/2 by ALPN over TLS (default True); ``http1``: offer HTTP/1.1 (default
    True; with ``http1=False`` a cleartext origin speaks HTTP/2 with prior knowledge). ``verify``:
    True (the system's CAs), False, or a CA file path; ``cert``: ``(certfile, keyfile)`` for
    mutual TLS. ``limits``: httpx's pool limits. ``proxy``: ``"socks5://[user:pass@]host:port"`` or
    ``"http://host:port"`` (a CONNECT tunnel for every origin). ``uds``: connect to this Unix
    socket instead of the URL's host. ``engine``: our HTTP/1.1 client engine. ``http_limits``:
    our :class:`layers.http.Limits` (header sizes, windows ...).
    """

    def __init__(
        self,
        *,
        http1: bool = True,
        http2: bool = True,
        verify: bool | str = True,
        cert: tuple[str, str] | None = None,
        limits: httpx.Limits = DEFAULT_POOL,
        proxy: str | None = None,
        uds: str | None = None,
        engine: str = "auto",
        http_limits: http.Limits = http.DEFAULT_LIMITS,
    ) -> None:
        if not (http1 or http2):
            raise ValueError("StackTransport needs http1 or http2 (or both)")
        self._http1, self._http2 = http1, http2
        self._verify, self._cert = verify, cert
        self._limits = limits
        self._proxy = httpx.URL(proxy) if proxy is not None else None
        if self._proxy is not None and self._proxy.scheme not in ("socks5", "socks5h", "http"):
            raise ValueError(f"unsupported proxy scheme {self._proxy.scheme!r} (socks5:// or http://)")
        self._uds = uds
        self._engine = engine
        self._http_limits = http_limits
        self._client_spec = http.client(http_limits, engine=engine)  # ValueError for a bad engine, now
        room = limits.max_connections
        self._room = trio.CapacityLimiter(room if room is not None else math.inf)
        self._origins: dict[Origin, _OriginPool] = {}
        self._tokens: dict[ClientConnection, object] = {}  # a connection's room in the pool
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._closed = False

    # ---- the transport's life --------------------------------------------------------------

    async def __aenter__(self) -> StackTransport:
        """Open the nursery HTTP/2 connections run in (httpx.AsyncClient's ``async with`` calls this)."""
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            cm, self._nursery_cm, self._nursery = self._nursery_cm, None, None
            if cm is not None:
                await cm.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        """Close every connection (HTTP/2 ones send GOAWAY). Idempotent."""
        if self._closed:
            return
        self._closed = True
        origins, self._origins = self._origins, {}
        for pool in origins.values():
            conns = [idle.conn for idle in pool.idle] + ([pool.h2] if pool.h2 is not None else [])
            for conn in conns:
                await conn.aclose()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---- one request -----------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response once its head arrived (the body streams)."""
        if self._closed:
            raise RuntimeError("this StackTransport is closed")
        timeout: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the URL scheme {scheme!r} is not http or https", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        origin: Origin = (scheme, url.host, port)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _DROP]
        target = url.raw_path.decode("ascii")
        body, replayable = self._body(request)
        for attempt in (1, 2):
            conn, reused = await self._acquire(origin, url, request, timeout)
            try:
                response = await conn.request(
                    request.method,
                    target,
                    headers=headers,
                    body=body,
                    deadline=_deadline(_sum(timeout.get("write"), timeout.get("read"))),
                )
            except (EndOfStream, Broken, Closed) as exc:
                await self._discard(origin, conn)
                if attempt == 1 and reused and replayable and not isinstance(exc, ProtocolError):
                    log.debug("%s: reused connection failed before the answer (%s): retrying once", origin, exc)
                    continue
                raise _mapped(exc, request, "sending the request") from exc
            except StackError as exc:
                await self._discard(origin, conn)
                raise _mapped(exc, request, "sending the request") from exc
            except ValueError as exc:
                await self._give_back(origin, conn)
                raise httpx.LocalProtocolError(str(exc), request=request) from exc
            except BaseException:
                await self._discard(origin, conn)
                raise
            return httpx.Response(
                response.status,
                headers=response.headers.raw,
                stream=_ResponseStream(self, origin, conn, response, request, timeout.get("read")),
                extensions={
                    "http_version": b"HTTP/2" if response.http_version == "2" else b"HTTP/1.1",
                    "reason_phrase": response.reason.encode("ascii", "replace"),
                },
            )
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _body(request: httpx.Request) -> tuple[Any, bool]:
        """The body as our client takes it, and whether it can be sent again (for the retry)."""
        try:
            content = request.content
        except httpx.RequestNotRead:
            stream = request.stream
            if not hasattr(stream, "__aiter__"):
                raise TypeError("StackTransport needs an async request body (httpx.AsyncClient)") from None
            return stream, False
        return (content if content or request.method not in ("GET", "HEAD") else None), True

    # ---- the pool ---------------------------------------------------------------------------

    async def _acquire(
        self, origin: Origin, url: httpx.URL, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> tuple[ClientConnection, bool]:
        """A connection for ``origin``: its HTTP/2 one, an idle HTTP/1.1 one, or a new one."""
        pool = self._origins.setdefault(origin, _OriginPool())
        while True:
            if pool.h2 is not None:
                return pool.h2, True
            now = trio.current_time()
            expiry = self._limits.keepalive_expiry
            while pool.idle:
                idle = pool.idle.pop()
                if expiry is None or now - idle.since < expiry:
                    return idle.conn, True
                await self._close(idle.conn)
            if not (self._may_h2(url) and pool.connecting.locked()):
                break
            async with pool.connecting:  # another request is connecting: it may bring HTTP/2
                pass
        with trio.move_on_at(_deadline(timeouts.get("pool"))) as scope:
            await self._room.acquire_on_behalf_of(object_token := object())
        if scope.cancelled_caught:
            raise httpx.PoolTimeout("no room in the connection pool (limits.max_connections)", request=request)
        registered = False
        try:
            async with pool.connecting:
                if pool.h2 is not None:  # it came while we waited for the lock
                    self._room.release_on_behalf_of(object_token)
                    return pool.h2, True
                conn = await self._connect(origin, url, request, _deadline(timeouts.get("connect")))
                self._tokens[conn] = object_token  # from here on, closing conn gives the room back
                registered = True
                if conn.http_version == "2":  # shared only once it runs (and still under the lock)
                    assert self._nursery is not None  # _may_h2 offered h2 only with a nursery
                    await self._nursery.start(self._run_h2, origin, conn)
                    pool.h2 = conn
        except BaseException:
            if not registered:  # else the connection's end gives it back (_run_h2, _close)
                self._room.release_on_behalf_of(object_token)
            raise
        return conn, False

    def _may_h2(self, url: httpx.URL) -> bool:
        return self._http2 and self._nursery is not None and (url.scheme == "https" or not self._http1)

    async def _run_h2(
        self, origin: Origin, conn: ClientConnection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await conn.run(task_status=task_status)  # type: ignore[attr-defined]  # its reader and writer
        except StackError as exc:
            log.debug("%s: HTTP/2 connection ended: %s", origin, exc)
        finally:
            pool = self._origins.get(origin)
            if pool is not None and pool.h2 is conn:
                pool.h2 = None
            self._release_room(conn)

    async def _connect(
        self, origin: Origin, url: httpx.URL, request: httpx.Request, deadline: float
    ) -> ClientConnection:
        scheme, host, port = origin
        authority = url.netloc.decode("ascii")
        try:
            with trio.move_on_at(deadline) as scope:
                lower = await self._bottom(host, port, authority, deadline)
                if scheme == "https":
                    alpn = (["h2"] if self._may_h2(url) else []) + (["http/1.1"] if self._http1 else [])
                    ca = self._verify if isinstance(self._verify, str) else None
                    spec_tls = tls.client(
                        server_hostname=host, alpn=alpn, verify=bool(self._verify), ca=ca, cert=self._cert
                    )
                    lower = await spec_tls.attach(lower, deadline=deadline)
                spec = http.client(
                    self._http_limits,
                    authority=authority,
                    scheme=scheme,
                    prior_knowledge=scheme == "http" and not self._http1 and self._nursery is not None,
                    engine=self._engine,
                )
                conn = await spec.attach(lower, deadline=deadline)
            if scope.cancelled_caught:
                raise Timeout(f"connecting to {authority} timed out")
        except _ProxyRefused as exc:
            raise httpx.ProxyError(str(exc), request=request) from exc
        except Timeout as exc:
            raise httpx.ConnectTimeout(f"connecting to {authority} timed out", request=request) from exc
        except (StackError, ssl.SSLError, OSError) as exc:
            raise httpx.ConnectError(f"cannot connect to {authority}: {exc}", request=request) from exc
        return conn

    async def _bottom(self, host: str, port: int, authority: str, deadline: float) -> ByteStream:
        """The byte stream to the origin: straight, over a Unix socket, or through the proxy."""
        if self._uds is not None:
            return await unix.connect(self._uds).connect(deadline=deadline)
        proxy = self._proxy
        if proxy is None:
            return await tcp.connect(host, port).connect(deadline=deadline)
        lower = await tcp.connect(proxy.host, proxy.port or 1080).connect(deadline=deadline)
        if proxy.scheme.startswith("socks5"):
            user = proxy.username or None
            try:
                return await socks5.connect(host, port, user, proxy.password or None if user else None).attach(
                    lower, deadline=deadline
                )
            except socks5.SOCKSError as exc:
                raise _ProxyRefused(f"the SOCKS5 proxy refused {host}:{port}: {exc}") from exc
        tunnel_client = await http.client(self._http_limits, authority=f"{host}:{port}", engine=self._engine).attach(
            lower, deadline=deadline
        )
        answer = await tunnel_client.request("CONNECT", f"{host}:{port}", deadline=deadline)
        if not 200 <= answer.status < 300:
            await tunnel_client.aclose()
            raise _ProxyRefused(f"the proxy answered {answer.status} to CONNECT {host}:{port}")
        return answer.body

    async def _give_back(self, origin: Origin, conn: ClientConnection) -> None:
        """The exchange on ``conn`` ended cleanly: keep an HTTP/1.1 connection for the next one."""
        if conn.http_version == "2":
            return
        pool = self._origins.get(origin)
        keep = self._limits.max_keepalive_connections
        if pool is None or self._closed or (keep is not None and len(pool.idle) >= keep):
            await self._close(conn)
            return
        pool.idle.append(_Idle(conn, trio.current_time()))

    async def _discard(self, origin: Origin, conn: ClientConnection) -> None:
        """``conn`` failed or was abandoned mid-exchange: close it (HTTP/2: only if it is broken)."""
        if conn.http_version == "2":
            return  # a failed stream does not end the connection; its run task notices if it ended
        await self._close(conn)

    async def _close(self, conn: ClientConnection) -> None:
        with contextlib.suppress(StackError):
            await conn.aclose()
        self._release_room(conn)

    def _release_room(self, conn: ClientConnection) -> None:
        token = self._tokens.pop(conn, None)
        if token is not None:
            self._room.release_on_behalf_of(token)


class _ProxyRefused(StackError):
    """The proxy (SOCKS5 or CONNECT) would not open the tunnel."""


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _mapped(exc: StackError, request: httpx.Request, doing: str) -> httpx.TransportError:
    """The httpx exception for ``exc`` (the caller chains it)."""
    if isinstance(exc, Timeout):
        return httpx.ReadTimeout(f"{doing} timed out: {exc}", request=request)
    if isinstance(exc, ProtocolError):
        return httpx.RemoteProtocolError(str(exc), request=request)
    if isinstance(exc, EndOfStream):
        return httpx.RemoteProtocolError(f"the server closed the connection without an answer: {exc}", request=request)
    return httpx.ReadError(str(exc), request=request)


class _ResponseStream(httpx.AsyncByteStream):
    """The response body for httpx: chunks as they come; the connection goes back to the pool at
    the end of the body, or is closed when httpx closes the response early."""

    def __init__(
        self,
        transport: StackTransport,
        origin: Origin,
        conn: ClientConnection,
        response: Response,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: ClientConnection | None = conn
        self._response = response
        self._request = request
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self._response.body
        while True:
            try:
                chunk = await body.recv(65536, deadline=_deadline(self._read_timeout))
            except StackError as exc:
                await self.aclose()
                raise _mapped(exc, self._request, "reading the response body") from exc
            if not chunk:
                await self._finish()
                return
            yield chunk

    async def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._response.aclose()  # at the end of the body: releases the exchange
            await self._transport._give_back(self._origin, conn)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # closed before the end: never reuse a half-read HTTP/1.1 connection
            await self._response.aclose()
            await self._transport._discard(self._origin, conn)
