"""HTTP/3 (RFC 9114) over :mod:`layers.quic`: the same :class:`~layers.http.Request` /
:class:`~layers.http.Response` API as HTTP/1.1 and HTTP/2, so one app serves all three.

::

    async def app(request: http.Request) -> None:          # the app of http.server, unchanged
        await request.respond(200, [("content-type", "text/plain")], b"hello over %s" % request.http_version.encode())

    listener = quic.listen("0.0.0.0", 8443, leaf, alpn=http3.ALPN)
    await nursery.start(listener.serve, http3.server(app).handle)

    async with quic.connect("localhost", 8443, alpn=http3.ALPN, ca=ca).open() as conn:
        h3 = http3.client().attach(conn)
        response = await h3.request("GET", "/")
        body = await response.read()                          # response.http_version == "3"

Or in one call each: :func:`serve` (a listener running an app) and :func:`open_client`.

**Framing and QPACK** are aioquic's ``H3Connection`` (QPACK by pylsqpack), driven on the QUIC
engine our :class:`~layers.quic.QuicConnection` runs. Every request is one QUIC stream, and its
body one :class:`~stack.ByteStream` (:class:`H3Stream`) keeping the whole stream contract:
server side ``request.body`` reads the request body and, once ``start_response`` sent the head,
writes the response body; ``done(trailers=...)`` ends it with trailers; client side
``response.body`` reads the response body. ``info["http_version"] == "3"`` everywhere, and
``request.http_version == "3"``. Abandoning a request or response (``aclose`` before the end)
resets its stream with H3_REQUEST_CANCELLED, never harming the connection.

**Server**: ``app(request)`` per request stream, concurrently (requests over ``max_streams`` are
held by QUIC flow control itself: the client cannot open them); an app that raises or does not
respond gets 500; header sections over ``Limits.max_header_list_size`` get 431. Shutdown (the
``shutdown`` event, or the QUIC listener's): GOAWAY, new requests refused with
H3_REQUEST_REJECTED, in-flight ones get ``Limits.drain_timeout``, then the connection closes with
H3_NO_ERROR. CONNECT and extended CONNECT (RFC 9220: the SETTINGS enable it) reach the app as
requests; ``start_response(2xx)`` returns the tunnel, a ByteStream both ways.

**Client**: ``request(method, target, headers=, body=)`` returns the response once its head
arrived; requests multiplex; the request body is sent before the response is awaited (no duplex
for request bodies over HTTP/3 yet: use ``start_request`` for that); ``open_tunnel(protocol,
path)`` is an extended CONNECT.

**Defences**: QPACK's dynamic table is limited to 4096 bytes and 16 blocked streams (our
SETTINGS; pylsqpack enforces them), a frame that is not complete is buffered only within the
stream's receive window (the window counts what aioquic's frame parser holds), stream-open
floods are bounded by QUIC's stream limit, idle connections by the QUIC idle timeout.

**Not supported**: server push (our server never pushes; push promises are ignored); the
client does not act on a received GOAWAY (new requests on a closing connection fail when the
server refuses them); a malformed request header section is a connection error (aioquic's
checks) rather than a stream error (RFC 9114 4.1.2); priorities (RFC 9218) are ignored; HTTP/3
DATAGRAM and WebTransport are off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from stack.deadlines import FOREVER

from . import quic
from ._h3conn import H3_NO_ERROR, H3_REQUEST_CANCELLED, H3ClientConnection, H3ServerConnection
from ._h3stream import H3Request, H3Response, H3Stream
from ._http_model import DEFAULT_LIMITS, App, Limits, authority_of

__all__ = [
    "ALPN",
    "H3_NO_ERROR",
    "H3_REQUEST_CANCELLED",
    "H3ClientConnection",
    "H3Request",
    "H3Response",
    "H3ServerConnection",
    "H3Stream",
    "client",
    "open_client",
    "serve",
    "server",
]

ALPN: Sequence[str] = ("h3",)
"""The ALPN protocol of HTTP/3 (RFC 9114 3.1)."""


@dataclass(frozen=True)
class server:
    """Spec: an HTTP/3 server on a QUIC connection. ``handle(conn)`` is a QUIC listener's
    handler; ``attach(conn)`` returns the :class:`H3ServerConnection` (then ``serve(app)``)."""

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)

    def attach(self, conn: quic.QuicConnection) -> H3ServerConnection:
        return H3ServerConnection(conn, self.limits, self.shutdown)

    async def handle(self, conn: quic.QuicConnection) -> None:
        await self.attach(conn).serve(self.app)


@dataclass(frozen=True)
class client:
    """Spec: an HTTP/3 client on a QUIC connection (``attach(conn)``); ``authority``: the
    default ``:authority`` (else the connection's host and port)."""

    limits: Limits = DEFAULT_LIMITS
    authority: str | None = None

    def attach(self, conn: quic.QuicConnection) -> H3ClientConnection:
        authority = self.authority or authority_of(conn.info)
        return H3ClientConnection(conn, self.limits, authority)


async def serve(
    app: App,
    host: str,
    port: int,
    cert: Any,
    *,
    limits: Limits = DEFAULT_LIMITS,
    quic_limits: quic.QuicLimits = quic.DEFAULT_QUIC_LIMITS,
    retry: bool = False,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/3 on UDP ``host:port`` (``task_status`` gets the bound address)."""
    listener = quic.listen(host, port, cert, alpn=ALPN, retry=retry, limits=quic_limits)
    spec = server(app, limits, shutdown)
    await listener.serve(spec.handle, shutdown=shutdown, task_status=task_status)


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    *,
    ca: Any = None,
    verify: bool = True,
    server_hostname: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    quic_limits: quic.QuicLimits = quic.DEFAULT_QUIC_LIMITS,
    deadline: float = FOREVER,
) -> AsyncIterator[H3ClientConnection]:
    """An HTTP/3 client connection to ``host:port`` for the block (QUIC handshake under
    ``deadline``)."""
    spec = quic.connect(
        host, port, alpn=ALPN, ca=ca, verify=verify, server_hostname=server_hostname, limits=quic_limits
    )
    async with spec.open(deadline=deadline) as conn:
        h3 = client(limits).attach(conn)
        try:
            yield h3
        finally:
            await h3.aclose()  # H3_NO_ERROR
