"""HTTP/2 on h2: multiplexed streams, each one a :class:`~stack.ByteStream`.

Usually reached through :mod:`layers.http` (``http.server(app)`` picks HTTP/2 by ALPN ``h2`` or
by the cleartext preface; ``http.client()`` by ALPN or ``prior_knowledge=True``). Direct use::

    conn = await http2.server(app, limits, shutdown).attach(lower, deadline=after(10))
    await conn.serve(app)                      # app(request) per stream, concurrently, in a nursery serve() owns

    async with await http2.client(limits, "example.org", "https").attach(lower) as conn:
        response = await conn.request("GET", "/")         # many at once: they multiplex
        tunnel = await conn.connect_tunnel("db.internal:5432")      # a ByteStream (RFC 9113 8.5)
        ws = (await conn.open_tunnel("websocket", "/chat")).body    # RFC 8441, as HTTP/1.1's Upgrade
        ws = await conn.connect_tunnel("example.org", protocol="websocket", path="/chat")  # RFC 8441
        rtt = await conn.ping()

**Tasks.** A connection has one reader task (it feeds h2 and wakes the streams) and one writer
task (the one place bytes go down: every stream's frames are queued in h2 and the writer sends
everything queued in one ``send``, so frames of many streams written in the same scheduling
round leave in one write). They live in a nursery the caller owns: the server's is opened by
:meth:`H2ServerConnection.serve` (which also runs ``app(request)`` per stream, concurrently),
the client's by ``async with conn:`` (or ``await nursery.start(conn.run)``). No task outlives
the block that started it; a client connection used outside its block raises
:class:`~stack.StackError` saying so. The apps of the streams opened by one read share a task
as long as they do not suspend: an app that answers at once costs no task of its own, and the
first one that suspends keeps the task while the others move on to a new one (each app runs in
its own copy of the context, as in a task of its own).

**Streams.** On the server, ``request.body`` is the stream: ``recv`` reads the request body
(``b""`` at END_STREAM), ``send`` writes the response body once :meth:`~layers.http.Request.start_response`
sent the head (it returns the same stream), ``done(trailers=...)`` ends the response. On the
client, ``response.body`` is the stream: ``recv`` reads the response body and, for a CONNECT
tunnel or :meth:`H2ClientConnection.start_request`, ``send``/``done`` write the request body.

**Flow control is backpressure.** Received DATA is acknowledged (WINDOW_UPDATE) only as the
application consumes it from the stream, so a slow reader stalls only its own stream and the
bytes buffered per stream never exceed its receive window (``Limits.stream_window``; the
connection's ``Limits.connection_window``). A ``send`` waits for the peer's window under its
deadline; on deadline it raises :class:`~stack.Timeout` whose ``sent`` counts the bytes handed
to h2 (committed: they will be delivered). A peer that keeps a window shut for
``Limits.send_timeout`` seconds loses the stream (RST_STREAM CANCEL, the sender gets
:class:`~stack.Broken`). Outgoing bytes queued for the writer are bounded (about
:data:`HIGH_WATER` plus one chunk per sending stream); senders wait while it is full.

**Abandoning a stream** (``aclose`` before the end, cancellation, a deadline inside
:meth:`H2ClientConnection.request`) resets it with RST_STREAM (CANCEL; NO_ERROR when a server
already finished its response and only stops the upload, RFC 9113 8.1) and never harms the
connection. A peer's RST_STREAM makes the stream :class:`~stack.Broken` (sticky);
REFUSED_STREAM and streams a GOAWAY left unprocessed raise :class:`StreamRefused`, which is safe
to retry.

**Shutdown.** Given an event (``http.server(app, shutdown=event)``), the server sends GOAWAY
with the largest stream id, waits one PING round trip, sends GOAWAY with the last stream it
accepted, lets the streams in flight finish within ``Limits.drain_timeout`` and closes.

**Defences** (each a :class:`~layers.http.Limits` knob with a safe default): streams over
``max_concurrent_streams`` (counting streams whose handler still runs) get REFUSED_STREAM;
header lists over ``max_header_list_size`` and CONTINUATION floods over
``max_continuation_frames``, more than ``rapid_reset_limit`` client resets (or as many streams
refused, over the limit or malformed), ``ping_flood_limit`` PINGs or ``settings_flood_limit``
SETTINGS per ``flood_period`` seconds, and more than ``no_progress_limit`` frames that give the
application nothing (PRIORITY, PING, SETTINGS, empty DATA, frames on closed streams, WINDOW_UPDATEs
not paid for by DATA we sent, ...; the count leaks ``no_progress_limit`` per ``flood_period`` and
loses 16 per frame that brings a head, data, trailers or an end) end the connection with GOAWAY
ENHANCE_YOUR_CALM, on both sides; a read
is processed a bounded number of frames at a time, other connections running in between; a
connection with no stream for ``idle_timeout`` seconds is closed with
GOAWAY NO_ERROR; a peer that does not read what we send for ``send_timeout`` seconds is dropped.
A protocol error gets GOAWAY with the RFC 9113 error code and ends the connection; the streams
then raise :class:`~stack.ProtocolError`. A malformed message (bad header list, RFC 9113 8.1.1)
is a stream error: RST_STREAM PROTOCOL_ERROR, the connection goes on. After a GOAWAY the
connection closes lingering (FIN, then reading and dropping for up to :data:`LINGER` seconds),
so the peer reads the GOAWAY before the close.

**Client details.** The first request goes out with the preface; more wait for the server's
SETTINGS (its stream limit), then for a free stream when at the limit. A request refused
unprocessed is retried (bytes bodies only). Read or close every response: its unread body
holds part of the connection window.

**h2c upgrade.** :func:`h2c_settings` tells an HTTP/1.1 server whether a request asks for
``Upgrade: h2c`` properly; :func:`serve_h2c_upgrade` answers 101 and serves HTTP/2 on the same
connection, the upgrading request being stream 1 (``layers/http1.py`` does this in cleartext).

All HTTP/2 work is done by h2. The layer is split in private modules, this one holding the
specs and the names users import:

* ``_h2core.py``: the sans-io part: our corrections to h2 (:class:`~layers._h2core.H2Core`),
  with ``_h2fields.py``: the checks of received header lists, the parsing of an
  ``Upgrade: h2c`` request;
* ``_h2stream.py``: the stream (a ByteStream), the request and response objects, and
  ``StreamOwner``, the short interface through which a stream reaches its connection;
* ``_h2conn.py``: what both sides' connections share (reader, writer, flow control, settings,
  PING, closing), one base class implementing ``StreamOwner``;
* ``_h2server.py``: the server connection (dispatch, the batching of apps, defences, shutdown)
  and :func:`serve_h2c_upgrade`;
* ``_h2client.py``: the client connection (``request`` and its duplex body sender,
  ``open_tunnel``, ``connect_tunnel``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken as Broken  # (these were importable from here before the split)
from stack.errors import Busy as Busy
from stack.errors import Closed as Closed
from stack.errors import EndOfStream as EndOfStream
from stack.errors import ProtocolError as ProtocolError
from stack.errors import StackError as StackError
from stack.errors import Timeout as Timeout
from stack.streams import ByteStream
from stack.streams import Info as Info

from ._h2client import RETRIES, H2ClientConnection
from ._h2conn import FLUSH_GRACE, LINGER, READER_HIGH_WATER, RECV_SIZE, YIELD_ROUNDS, StreamRefused
from ._h2conn import log as log
from ._h2core import (
    H2Core,
    Malformed,
    ProtocolViolation,
    check_fields,
    check_request_pseudo,
    check_response_pseudo,
    error_name,
    h2c_settings,
)
from ._h2server import PING_WAIT, H2ServerConnection, serve_h2c_upgrade
from ._h2stream import HIGH_WATER, SEND_CHUNK, H2Request, H2Response, H2Stream, StreamOwner
from ._http_model import (
    DEFAULT_LIMITS,
    App,
    Body,
    ClientConnection,
    HeaderInput,
    Headers,
    Limits,
    Request,
    ServerConnection,
    TunnelRefused,
    response_fields,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FLUSH_GRACE",
    "HIGH_WATER",
    "LINGER",
    "PING_WAIT",
    "READER_HIGH_WATER",
    "RECV_SIZE",
    "RETRIES",
    "SEND_CHUNK",
    "YIELD_ROUNDS",
    "App",
    "Body",
    "ClientConnection",
    "H2ClientConnection",
    "H2Core",
    "H2Request",
    "H2Response",
    "H2ServerConnection",
    "H2Stream",
    "HeaderInput",
    "Headers",
    "Limits",
    "Malformed",
    "ProtocolViolation",
    "Request",
    "ServerConnection",
    "StreamOwner",
    "StreamRefused",
    "TunnelRefused",
    "check_fields",
    "check_request_pseudo",
    "check_response_pseudo",
    "client",
    "error_name",
    "h2c_settings",
    "serve_h2c_upgrade",
    "server",
]


@dataclass(frozen=True)
class server:
    """Spec: the server side of HTTP/2 on ``lower`` (after ALPN ``h2`` or the sniffed preface).

    ``attach`` sends our SETTINGS and reads the client's preface and SETTINGS under the
    deadline (a silent or non-HTTP/2 peer fails the attach). ``handle(conn)`` (what
    :meth:`stack.Stack.serve` calls) runs ``conn.serve(app)``. ``shutdown``: see the module
    docstring. ``enable_connect_protocol``: advertise extended CONNECT (RFC 8441).
    ``response_headers``: fields every final response carries after the app's (``Alt-Svc``...),
    checked once here (ValueError for an invalid one, or one the writer owns, such as
    ``Content-Length`` or ``Date``); kept as wire pairs.
    """

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)
    enable_connect_protocol: bool = True
    response_headers: HeaderInput = ()
    _extra: tuple[tuple[bytes, bytes], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        extra = response_fields(self.response_headers)
        object.__setattr__(self, "response_headers", extra)  # hashable, compared as sent
        object.__setattr__(self, "_extra", extra)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> H2ServerConnection:
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http2.server attaches to a ByteStream, not {type(lower).__name__}")
        conn = H2ServerConnection(
            lower,
            self.limits,
            self.shutdown,
            enable_connect_protocol=self.enable_connect_protocol,
            response_headers=self._extra,
        )
        await conn.handshake(deadline)
        return conn

    def handle(self, conn: H2ServerConnection) -> Awaitable[None]:
        """Run the app on every request of ``conn`` (what :meth:`stack.Stack.serve` awaits): the
        connection's own ``serve`` coroutine, with no frame of this spec's around it."""
        return conn.serve(self.app)


@dataclass(frozen=True)
class client:
    """Spec: the client side of HTTP/2 on ``lower`` (after ALPN ``h2``, or prior knowledge).

    ``attach`` sends the preface and our SETTINGS (under the deadline) and returns at once; the
    connection runs inside ``async with conn:``. ``authority`` is the default ``:authority``
    (a request's ``host`` header overrides it); ``scheme`` the ``:scheme``.
    """

    limits: Limits = DEFAULT_LIMITS
    authority: str = "localhost"
    scheme: str = "http"

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> H2ClientConnection:
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http2.client attaches to a ByteStream, not {type(lower).__name__}")
        conn = H2ClientConnection(lower, self.limits, self.authority, self.scheme)
        await conn.handshake(deadline)
        return conn
