"""Version-agnostic HTTP: the model every HTTP version shares, and the specs that pick a version.

Server side, an attached connection is a stream of :class:`Request`\\ s (``await conn.recv()``,
``async for request in conn``); :func:`server` runs an app, ``async def app(request) -> None``,
for each of them. Client side, :func:`client` attaches a connection whose
``await conn.request(method, target, ...)`` returns a :class:`Response`. Bodies are
:class:`~stack.ByteStream`\\ s, so any layer can sit on one (a CONNECT tunnel carries TLS).

Which version: over TLS, the ALPN protocol the handshake chose (``h2`` or ``http/1.1``); in
cleartext the server recognises the HTTP/2 connection preface (prior knowledge) and otherwise
speaks HTTP/1.1 (first bytes that are neither end the connection); the client speaks HTTP/1.1 in
cleartext unless ``client(prior_knowledge=True)``. ``request.http_version`` is ``"1.1"`` or ``"2"``
(``"1.0"`` for an HTTP/1.0 peer).

::

    server = Stack(tcp.listen("127.0.0.1", 8443), tls.server(certs, alpn=["h2", "http/1.1"]), http.server(app))
    await nursery.start(server.serve)

    async def app(request: http.Request) -> None:
        body = await request.read()
        await request.respond(200, [("content-type", "text/plain")], b"hello")
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import ProtocolError
from stack.streams import ByteStream

from ._http_model import (
    DEFAULT_LIMITS,
    H2_PREFACE,
    App,
    Body,
    ClientConnection,
    HeaderInput,
    Headers,
    Limits,
    Request,
    Response,
    ServerConnection,
    TunnelRefused,
    authority_of,
    date_header,
    response_fields,
)

__all__ = [
    "DEFAULT_LIMITS",
    "App",
    "Body",
    "ClientConnection",
    "HeaderInput",
    "Headers",
    "Limits",
    "Request",
    "Response",
    "ServerConnection",
    "TunnelRefused",
    "client",
    "date_header",
    "server",
]


async def _sniff(lower: ByteStream, deadline: float) -> str:
    """Decide the cleartext protocol from the first bytes, pushing them back afterwards.

    ``"2"`` for the HTTP/2 connection preface, ``"1.1"`` as soon as the bytes stop matching it and
    start like an HTTP/1.x request line (a method token, or its beginning: the HTTP/1.1 parser
    judges the rest, under its own header deadline). Anything else is refused with
    :class:`~stack.ProtocolError` (the connection then ends without an HTTP answer).
    """
    seen = b""
    try:
        while True:
            chunk = await lower.recv(65536, deadline=deadline)  # all of it goes back: one read suffices
            if not chunk:
                raise ProtocolError("connection closed before a request")
            seen += chunk
            if seen[: len(H2_PREFACE)] == H2_PREFACE:
                return "2"
            if H2_PREFACE.startswith(seen):
                continue  # could still be the preface
            method, sp, _ = seen.partition(b" ")
            if sp and method == b"PRI":  # reserved for the HTTP/2 preface (RFC 9113 3.4): a broken one
                raise ProtocolError("a damaged HTTP/2 connection preface")
            if method and len(method) <= 32 and all(c in _TCHAR for c in method):
                return "1.1"  # not waiting for the whole method: a slow client must not stall here
            raise ProtocolError("the first bytes are neither an HTTP/1.x request line nor the HTTP/2 preface")
    finally:
        lower.unread(seen)


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class server:
    """Spec: an HTTP server connection running ``app``, version by ALPN or by sniffing.

    ``limits`` configures both versions. ``shutdown``: an event that, once set, drains every
    connection attached with this spec (HTTP/1.1 finishes the request in flight and closes;
    HTTP/2 sends GOAWAY) with in-flight requests given ``limits.drain_timeout``; pass the same
    event to :meth:`stack.Stack.serve` so the listener stops too. ``engine``: HTTP/1.1's parser,
    ``"auto"`` (the compiled one when it is importable), ``"fast"`` or ``"reference"`` (see
    :data:`layers.http1.ENGINES`); HTTP/2 has one engine, h2 with our corrections.
    ``conn.info["http_engine"]`` says which one runs on a connection. ``response_headers``:
    fields every response of both versions carries after the app's (``Alt-Svc``, ``Server``...),
    checked and encoded once, when the spec is made (ValueError for an invalid field or one the
    response writers own: framing, ``Connection``, ``Date``); a 1xx, a 101 and the 2xx that opens
    a CONNECT tunnel do not carry them.
    """

    app: App
    limits: Limits = DEFAULT_LIMITS
    shutdown: trio.Event | None = field(default=None, compare=False)
    engine: str = "auto"
    response_headers: HeaderInput = ()

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ServerConnection:
        """Pick the version (ALPN, else sniff the first bytes under ``deadline``) and attach it."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http.server attaches to a ByteStream, not {type(lower).__name__}")
        alpn = lower.info.get("alpn")
        if alpn == "h2":
            version = "2"
        elif alpn in ("http/1.1", "http/1.0"):
            version = "1.1"
        else:  # the first bytes count against the first request's header_timeout too
            version = await _sniff(lower, min(deadline, trio.current_time() + self.limits.header_timeout))
        spec = self._http2 if version == "2" else self._http1
        conn: ServerConnection = await spec.attach(lower, deadline=deadline)
        return conn

    def __post_init__(self) -> None:
        object.__setattr__(self, "response_headers", response_fields(self.response_headers))  # hashable
        # Import both versions now, not on the first connection (h2 alone takes tens of ms).
        _ = self._http1, self._http2

    # The version specs, made once per server spec rather than once per connection (a frozen
    # dataclass has no slots, so cached_property can store them).
    @cached_property
    def _http1(self) -> Any:
        from . import http1

        return http1.server(self.app, self.limits, self.shutdown, self.engine, self.response_headers)

    @cached_property
    def _http2(self) -> Any:
        from . import http2

        return http2.server(self.app, self.limits, self.shutdown, response_headers=self.response_headers)

    def handle(self, conn: ServerConnection) -> Awaitable[None]:
        """Run the app on every request of ``conn`` (what :meth:`stack.Stack.serve` awaits): the
        connection's own ``serve`` coroutine, with no frame of this spec's around it."""
        return conn.serve(self.app)


@dataclass(frozen=True)
class client:
    """Spec: an HTTP client connection, HTTP/2 when ALPN chose ``h2`` (or with
    ``prior_knowledge=True`` in cleartext), else HTTP/1.1.

    ``authority`` is the Host / ``:authority`` sent (default: the TLS server name, else the
    peer address); ``scheme`` defaults to ``https`` over TLS, ``http`` otherwise. ``engine``:
    HTTP/1.1's ``"auto"``, ``"fast"`` or ``"reference"`` (see :data:`layers.http1.CLIENT_ENGINES`);
    HTTP/2 has one engine. ``conn.info["http_engine"]`` says which one runs.
    """

    limits: Limits = DEFAULT_LIMITS
    authority: str | None = None
    scheme: str | None = None
    prior_knowledge: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        from . import http1

        http1.client(self.limits, engine=self.engine)  # ValueError for an unknown engine, here

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ClientConnection:
        """Attach the version the connection negotiated (HTTP/2 sends its preface here)."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"http.client attaches to a ByteStream, not {type(lower).__name__}")
        info = lower.info
        scheme = self.scheme or ("https" if "tls_version" in info else "http")
        authority = self.authority or authority_of(info)
        if info.get("alpn") == "h2" or (self.prior_knowledge and "tls_version" not in info):
            from . import http2

            return await http2.client(self.limits, authority, scheme).attach(lower, deadline=deadline)
        from . import http1

        return await http1.client(self.limits, authority, scheme, self.engine).attach(lower, deadline=deadline)
