"""HTTP/1.1 on h11: server and client connections whose bodies are ByteStreams.

::

    conn = await http1.server(app).attach(stream)        # a ServerConnection
    await conn.serve(app)                                # or: async for request in conn: ...

    conn = await http1.client(authority="example.org").attach(stream)
    response = await conn.request("GET", "/")            # a Response; response.body is a ByteStream
    body = await response.read()

Most code uses the version-agnostic :mod:`layers.http` specs, which pick this module for HTTP/1.x.

Layout: this module holds the specs and re-exports the names; the code lives in private modules
of the same family. ``_h1core.py`` is the sans-io core (no I/O, no trio): head framing, the strict
request checks, the chunked validator, the response writer, the state table of the request /
connection cycle, and the engine seam (a head parser and a body decoder; ``engine="reference"`` is
h11 with our checks). ``_h1conn.py`` holds what both sides share (the output buffer and its flush,
the tunnel), ``_h1server.py`` the server connection, its requests and response streams,
``_h1client.py`` the client connection. The server writes its responses itself (the core's
writer), by the same rules as h11, because h11's writer was the most expensive step of a request
(see :class:`ServerConnection`); the client writes and parses through h11. On top of h11 this
module adds what a server facing the Internet needs and h11 leaves out:

* **Limits** (:class:`layers.http.Limits`). A request head over ``max_header_bytes`` gets 431. A
  request head must be complete ``header_timeout`` seconds after its first byte arrived (for the first
  request: after the connection was attached), else 408 and the connection closes (slowloris). An idle
  keep-alive connection is closed after ``keepalive_timeout`` seconds. ``request.read()`` stops at
  ``max_body`` (:class:`~stack.MessageTooLarge`; an app that lets it escape gets 413).
* **Request smuggling shapes are refused** with 400 and the connection closed, where h11 is lenient:
  Content-Length together with Transfer-Encoding, more than one Content-Length (h11 merges equal
  ones) or a list value (``5, 5``), obs-fold (h11 unfolds it), bare LF line endings (h11 accepts
  them), Transfer-Encoding in an HTTP/1.0 request, a major version other than 1 (505), and chunk-size
  lines that are not strict ``1*16HEXDIG [chunk-ext] CRLF`` (h11 takes 20 digits and trailing
  whitespace; it also takes bare LF in trailers). What h11 already refuses (bad Content-Length, an
  unknown transfer coding: 501, a missing Host, malformed lines) is refused the same way.
* **An app that raises** gets a 500 and a log line (``stack.http1`` logger). The connection goes on
  when that is safe (the response had not started and the request body was read, or a small rest of
  it could be drained); otherwise it closes.
* **Expect: 100-continue**: the ``100 Continue`` goes out when the app first reads the body; an app
  that answers without reading never gets the body sent (the connection then closes).
* **Pipelining**: requests are answered one at a time, in order; bytes read ahead wait in this
  layer's buffer for the next request.
* **A full-duplex client**: a large or streamed request body goes out from a task while the
  response is read, so an early answer (413, 401, a streaming echo's 200) is returned at once; see
  :class:`ClientConnection` for who owns that task and when the connection is kept.
* **Upgrade and CONNECT**: ``request.start_response(101, ...)`` (or a 2xx to CONNECT) returns the
  raw connection as a ByteStream: every byte h11 had read ahead is pushed back into the stream below
  (``lower.unread``) first, so TLS, WebSocket or anything else attaches on top with nothing lost.
  ``detach()`` on that stream returns the stream below. The client does the same: the response body
  of a 101, or of a 2xx to CONNECT, is the tunnel.

Bodies are :class:`~stack.ByteStream`\\ s with the usual guarantees: a ``recv`` that times out or is
cancelled consumes nothing (h11 and this layer keep every byte that arrived); ``b""`` marks the end
of the body. A response body's ``send`` commits at most 64 KiB per step (one chunk), so a timed-out
send's ``Timeout.sent`` is exact. h11 exceptions never escape: bad input from the peer is a
:class:`~stack.ProtocolError` (client) or a 4xx (server); bad input from the caller (an invalid
header, a body longer than its Content-Length) is a :class:`ValueError` or :class:`~stack.StackError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from layers import _http_model as http
from layers._h1client import ClientConnection, ResponseOwner
from layers._h1client_engines import CLIENT_ENGINES
from layers._h1core import (
    CONTINUE_TIMEOUT,
    DRAIN_TIME,
    DUPLEX_BUFFER,
    INLINE_SEND,
    LINGER,
    MAX_DRAIN,
    RECV,
    SEND_CHUNK,
    ReferenceEngine,
    ServerEngine,
)
from layers._h1request import Request, RequestOwner
from layers._h1server import ServerConnection, log
from layers._http_model import (
    DEFAULT_LIMITS,
    App,
    Body,
    HeaderInput,
    Headers,
    Limits,
    Response,
    TunnelRefused,
    date_header,
)
from stack.deadlines import FOREVER
from stack.streams import ByteStream

__all__ = [
    "CONTINUE_TIMEOUT",
    "DEFAULT_LIMITS",
    "DRAIN_TIME",
    "DUPLEX_BUFFER",
    "ENGINES",
    "INLINE_SEND",
    "LINGER",
    "MAX_DRAIN",
    "RECV",
    "SEND_CHUNK",
    "CLIENT_ENGINES",
    "App",
    "Body",
    "ClientConnection",
    "HeaderInput",
    "Headers",
    "Limits",
    "Request",
    "RequestOwner",
    "Response",
    "ResponseOwner",
    "ServerConnection",
    "TunnelRefused",
    "client",
    "date_header",
    "engine_name",
    "log",
    "server",
]

ENGINES: dict[str, Callable[[int], ServerEngine]] = {"reference": ReferenceEngine}
"""The server's parsing engines by name (``server(engine=...)``): ``"reference"`` is h11 with our
strict checks; ``"fast"`` (when httptools imports) parses heads with llhttp, in C, and keeps every
decision of the reference (``layers._h1fast``). An engine is a class of
``layers._h1core.ServerEngine`` taking ``max_header_bytes``."""

try:
    from layers._h1fast import FastEngine
except ImportError:  # pragma: no cover - httptools is a dependency; the reference path stays whole
    log.debug("httptools is not importable: the fast HTTP/1.1 engine is not available")
else:
    ENGINES["fast"] = FastEngine


def engine_name(engine: str) -> str:
    """The engine ``engine`` names: ``"auto"`` is ``"fast"`` where available, else ``"reference"``.
    ValueError for a name that is not an engine, or ``"fast"`` where httptools is missing."""
    if engine == "auto":
        return "fast" if "fast" in ENGINES else "reference"
    if engine not in ENGINES:
        hint = " (the fast engine needs httptools: pip install httptools)" if engine == "fast" else ""
        raise ValueError(f"http1: unknown engine {engine!r}{hint}; known: auto, {', '.join(ENGINES)}")
    return engine


@dataclass(frozen=True)
class server:
    """Spec: an HTTP/1.1 server connection running ``app`` (see :class:`ServerConnection`).

    ``limits``: :class:`layers.http.Limits`. ``shutdown``: once set, idle connections close at
    once and a request in flight finishes with ``Connection: close``; pass the same event to
    :meth:`stack.Stack.serve`. ``engine``: the parser, ``"auto"`` (the fast one when it is
    importable), ``"fast"`` or ``"reference"`` (see :data:`ENGINES`); an unknown or unavailable
    name raises ValueError here. ``conn.info["http_engine"]`` says which one runs.
    ``response_headers``: fields every response carries after the app's (``Alt-Svc``...),
    checked and encoded once here (ValueError for an invalid one, or one the writer owns, such
    as ``Content-Length`` or ``Date``); kept as wire pairs.
    """

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)
    engine: str = "auto"
    response_headers: HeaderInput = ()
    _extra: tuple[tuple[bytes, bytes], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        engine_name(self.engine)
        extra = http.response_fields(self.response_headers)
        object.__setattr__(self, "response_headers", extra)  # hashable, compared as sent
        object.__setattr__(self, "_extra", extra)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ServerConnection:
        """Wrap ``lower``. No handshake: returns at once; ``header_timeout`` starts now."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http1.server attaches to a ByteStream, not {type(lower).__name__}")
        return ServerConnection(lower, self.limits, self.shutdown, ENGINES[engine_name(self.engine)], self._extra)

    def handle(self, conn: ServerConnection) -> Awaitable[None]:
        """Run the app on every request of ``conn`` (what :meth:`stack.Stack.serve` awaits): the
        connection's own ``serve`` coroutine, with no frame of this spec's around it."""
        return conn.serve(self.app)


@dataclass(frozen=True)
class client:
    """Spec: an HTTP/1.1 client connection (see :class:`ClientConnection`).

    ``authority`` is the Host header sent (default: ``localhost``); ``scheme`` is informational.
    ``engine``: what writes requests and parses responses, by name in :data:`CLIENT_ENGINES`:
    ``"reference"`` (h11), ``"fast"`` (our own, with h11's grammar and decisions), or ``"auto"``
    (the fast one); ``conn.info["http_engine"]`` says which runs.
    """

    limits: Limits = DEFAULT_LIMITS
    authority: str | None = None
    scheme: str | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in CLIENT_ENGINES:
            known = ", ".join(CLIENT_ENGINES)
            raise ValueError(f"http1.client: unknown engine {self.engine!r} (known: {known})")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ClientConnection:
        """Wrap ``lower``. No handshake: returns at once."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http1.client attaches to a ByteStream, not {type(lower).__name__}")
        scheme = self.scheme or ("https" if "tls_version" in lower.info else "http")
        authority = self.authority or http.authority_of(lower.info)
        return ClientConnection(lower, self.limits, authority, scheme, CLIENT_ENGINES[self.engine])
