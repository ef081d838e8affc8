"""ASGI 3: run any ASGI application (Starlette, FastAPI, Quart, a raw ``async def app(scope,
receive, send)``) on our HTTP/1.1 and HTTP/2 servers, inside a trio program or from the command
line (``python -m stack serve package.module:app``).

::

    from layers import asgi, http, tcp, tls
    from stack import Stack

    app = asgi.ASGIApp(my_asgi_app)                      # an http.App: goes wherever a handler goes
    server = Stack(tcp.listen("127.0.0.1", 8443), tls.server(certs, alpn=["h2", "http/1.1"]), http.server(app))
    async with app.lifespan():                           # startup ... shutdown around the serving
        await server.serve()

    await asgi.serve_asgi(my_asgi_app, "127.0.0.1", 8000)   # the same, with shutdown on an event

**Scopes.** ``http``: ASGI ``{"version": "3.0", "spec_version": "2.4"}``, ``http_version``
``"1.1"`` (``"1.0"``) or ``"2"``, ``scheme`` ``http``/``https``, ``method``, ``path``
percent-decoded (with ``root_path`` in front, as uvicorn does), ``raw_path`` as sent,
``query_string``, ``root_path``, the header fields as lower-cased byte pairs (over HTTP/2 the
``:authority`` as ``host``), ``client`` and ``server`` ``[host, port]`` (``None`` on a Unix
socket), ``state`` (a shallow copy of the lifespan state; absent if the app has no lifespan)
and ``extensions``: ``http.response.trailers``, ``http.response.pathsend``,
``http.response.early_hint`` and, over TLS, ``tls``. ``websocket``: the same keys (scheme
``ws``/``wss``), ``subprotocols`` offered, and the ``websocket.http.response`` extension.
``lifespan``: with ``state``.

**Streaming both ways.** ``receive`` reads one chunk of the request body per call (at most
64 KiB): the client is held back by the app's pace, nothing is buffered beyond one read. After
the body, ``receive`` waits for the client to go away and gives ``http.disconnect`` (HTTP/1.1:
the connection closed; HTTP/2: the stream reset or the connection gone), at once if the
response is complete. ``send`` waits for the layers below (backpressure); a response given in
one body message goes out with its head in one write. A ``send`` after the client left raises
:class:`ClientDisconnected` (an :class:`OSError`, as ASGI 2.4 asks). Trailers go out on HTTP/2,
and on HTTP/1.1 (chunked) when the client sent ``TE: trailers``; ``http.response.pathsend``
reads the file in 256 KiB steps and sends it through the layers (no ``sendfile``: our HTTP
layers frame and may encrypt the body); ``http.response.early_hint`` sends ``103 Early Hints``
with the ``Link`` fields.

**WebSocket** over HTTP/1.1 Upgrade and HTTP/2 extended CONNECT (RFC 8441), on
:mod:`layers.websocket`: close codes and reasons both ways, the subprotocol the app chose (if
the client offered it), permessage-deflate when offered, a denial response
(``websocket.http.response.*``), 403 for a close before accepting.

**Errors.** An app that raises before its response started: 500 and the traceback logged (by
the server); after it started: the HTTP/2 stream is reset, the HTTP/1.1 connection closed (the
client sees a truncated response, never a hang). An app that returns without answering: 500;
one that returns in the middle of a streamed body: as if it raised. The server goes on for
everyone else.

**Lifespan.** :meth:`ASGIApp.lifespan` runs startup and shutdown around a block (see
:mod:`layers._asgi_lifespan`): a startup failure raises :class:`LifespanFailure`; an app that
raises on the lifespan scope without receiving is served without lifespan.

Theory of operation: :class:`ASGIApp` is an :data:`layers.http.App`. Per request it builds the
scope (one dict; what the connection's requests share is computed once per connection,
:mod:`layers._asgi_scope`) and a small object whose bound methods are ``receive`` and ``send``
(:mod:`layers._asgi_http`, :mod:`layers._asgi_ws`), and awaits the app in the server's own task:
no task per request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import trio

from layers import http, tcp
from layers._asgi_http import DONE, NEW, STREAMING, TRAILERS, HTTPCycle, http_scope, new_cycle
from layers._asgi_lifespan import ASGIApplication, LifespanFailure, run_lifespan
from layers._asgi_scope import ASGI_VERSION, ClientDisconnected, ConnectionFacts, facts_of
from layers._asgi_ws import CONNECTING, WebSocketCycle, websocket_scope
from layers.websocket import MAX_MESSAGE, is_websocket
from stack.compose import Stack

__all__ = ["ASGI_VERSION", "ASGIApp", "ASGIApplication", "ClientDisconnected", "LifespanFailure", "serve_asgi"]

log = logging.getLogger("stack.asgi")


class ASGIApp:
    """An ASGI 3 application as an :data:`layers.http.App` (see the module docstring).

    ``root_path``: where the app is mounted (the scopes' ``root_path``, and in front of
    ``path``). ``server_cert``: the server's certificate as PEM, for the ``tls`` extension
    (``None``: not known). ``max_message``: the WebSocket message size limit.
    ``state``: the lifespan state given to every scope (set by :meth:`lifespan`).
    """

    def __init__(
        self,
        app: ASGIApplication,
        *,
        root_path: str = "",
        server_cert: str | None = None,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")
        self.server_cert = server_cert
        self.max_message = max_message
        self.state: dict[str, Any] | None = None
        self._facts: dict[int, ConnectionFacts] = {}

    def __repr__(self) -> str:
        return f"ASGIApp({self.app!r})"

    @asynccontextmanager
    async def lifespan(self, *, grace: float = 60.0) -> AsyncIterator[dict[str, Any] | None]:
        """Run the app's lifespan startup, the block, then its shutdown; yields the state (None if
        the app has no lifespan). :class:`LifespanFailure` if startup fails."""
        async with run_lifespan(self.app, grace=grace) as state:
            self.state = state
            try:
                yield state
            finally:
                self.state = None

    async def __call__(self, request: http.Request) -> None:
        info = request.info
        facts = self._facts.get(id(info))  # (facts_of, inline: this runs per request)
        if facts is None or facts.info is not info:
            facts = facts_of(self._facts, info, self.server_cert)
        method = request.method
        if method == "GET" or method == "CONNECT":
            upgrade = method == "CONNECT"
            if not upgrade:
                for name, _ in request.raw_headers:  # a loop, not any(): no generator per request
                    if name == b"upgrade":
                        upgrade = True
                        break
            if upgrade and is_websocket(request):
                await self._websocket(request, facts)
                return
        scope = http_scope(request, facts, self.root_path, self.state)
        cycle = new_cycle(HTTPCycle)  # HTTPCycle(request) without an __init__ frame: this is per request
        cycle.request = request
        cycle.phase = NEW
        cycle.body_done = cycle.gone = False
        cycle.stream = None
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception as exc:
            if cycle.gone:
                log.debug("ASGI app on %r: the client went away: %r", request, exc)
            elif cycle.phase not in (STREAMING, TRAILERS):
                raise  # nothing sent yet: the server answers 500 and logs the traceback
            else:
                log.error("ASGI app failed on %r after its response started", request, exc_info=exc)
            await cycle.abandon()
            return
        phase = cycle.phase
        if phase != DONE and STREAMING <= phase <= TRAILERS and not cycle.gone:  # (no tuple built)
            log.error("ASGI app returned in the middle of its response to %r: abandoned", request)
            await cycle.abandon()

    async def _websocket(self, request: http.Request, facts: ConnectionFacts) -> None:
        cycle = WebSocketCycle(request, self.max_message)
        try:
            await self.app(websocket_scope(request, facts, self.root_path, self.state), cycle.receive, cycle.send)
        except Exception as exc:
            if cycle.phase == CONNECTING and not cycle.gone:  # nothing answered yet: the server's 500
                raise
            log.error("ASGI app failed on the WebSocket %r", request, exc_info=exc)
        finally:
            with trio.CancelScope(shield=True):
                await cycle.finish()


async def serve_asgi(
    app: ASGIApplication | ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    tls: Any = None,
    limits: http.Limits = http.DEFAULT_LIMITS,
    shutdown: trio.Event | None = None,
    lifespan_grace: float = 60.0,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` over HTTP/1.1 and HTTP/2 (``tls``: a :func:`layers.tls.server`
    spec with ALPN ``h2``/``http/1.1``; without, cleartext with HTTP/2 by prior knowledge), with
    its lifespan around the serving. ``task_status`` gets the bound addresses once startup
    completed. Setting ``shutdown`` stops gracefully: no new connections, requests in flight get
    ``limits.drain_timeout``, then the lifespan shutdown runs. Raises :class:`LifespanFailure` if
    startup fails (nothing is served)."""
    asgi_app = app if isinstance(app, ASGIApp) else ASGIApp(app)
    shutdown = shutdown if shutdown is not None else trio.Event()
    limits = replace(limits)
    layers: list[Any] = [tls] if tls is not None else []
    stack = Stack(tcp.listen(host, port, backlog=4096), *layers, http.server(asgi_app, limits, shutdown))
    async with asgi_app.lifespan(grace=lifespan_grace), trio.open_nursery() as nursery:
        addresses = await nursery.start(
            functools.partial(stack.serve, shutdown=shutdown, drain_timeout=limits.drain_timeout)
        )
        task_status.started(addresses)
