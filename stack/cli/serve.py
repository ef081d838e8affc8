"""``python -m stack serve``: the HTTP/1.1 and HTTP/2 server of the command line.

::

    python -m stack serve                    # HTTPS on 127.0.0.1:8443, a page showing the connection
    python -m stack serve DIR --no-tls       # serve the files under DIR over plain HTTP
    python -m stack serve --port 0           # any free port: the "serving on" line tells which

``serve`` speaks HTTP/1.1 and HTTP/2 (ALPN over TLS; cleartext HTTP/2 with prior knowledge). By
default it uses TLS with a ``localhost`` certificate minted on first run and kept in the user's
cache directory (:func:`layers.certs.default_cache_dir`); it says where the certificate and its CA
are, so that ``curl --cacert CA https://localhost:8443/`` works. ``--cert``/``--key`` use your own.

With DIR it runs :class:`layers.static.FileApp` (the library's static-file app); without, a page
showing the connection. Every variant answers a WebSocket echo at :data:`WS_ECHO_PATH`. With
``package.module:app`` instead of DIR it runs that ASGI application (:mod:`layers.asgi`; the app
answers every path, ``--root-path`` says where it is mounted), its lifespan around the serving:
a startup failure ends the command with one line on stderr and exit status 1.

When ready it prints exactly one line on stdout, ``serving on URL``. It logs one access line per
request on stderr (peer, method, target, HTTP version, status, body bytes, duration) unless
``--quiet``. SIGINT or SIGTERM stops it gracefully: no new connections, idle ones close, requests
in flight get ``Limits.drain_timeout`` seconds to finish; a second signal stops at once. SIGUSR1
logs one line, ``stats: N live trio tasks`` (what ``benchmarks/soak.py`` watches for leaks).
Failing to listen (a port in use) prints one line and exits 1.
``--workers N`` runs N such processes (:mod:`stack.cli.workers`); :func:`stack.cli.cmd_serve`
chooses.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import trio

from layers import http, tcp
from layers.static import FileApp, discard_body
from stack.cli.common import (
    DEFER_ACCEPT,
    SIGNALS,
    add_engine_argument,
    bind_advertising_http3,
    engines_line,
    failure_line,
    on_signals,
    tls_args_problem,
    url,
)
from stack.compose import Stack

__all__ = [
    "HELLO", "WS_ECHO_PATH", "add_parser", "check_args", "hello_app", "info_app", "is_asgi_target",
    "load_asgi_app", "run", "serve", "websocket_echo", "with_access_log", "with_websocket_echo",
    "without_log",
]  # fmt: skip

log = logging.getLogger("stack.cli")
access_log = logging.getLogger("stack.access")

HELLO = b"Hello, world!"

Handler = Callable[[http.Request], Awaitable[int | str]]
"""An app that returns the number of body bytes it sent, or ``"-"``, for the access log."""


# --------------------------------------------------------------------------------------------------
# The apps: each handler answers one request and returns the number of body bytes it sent.


def _peer(info: Any) -> str:
    peer = info.get("peer")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


async def hello_app(request: http.Request) -> int:
    """The benchmarks' body: 13 bytes of ``Hello, world!`` for any request."""
    while await request.body.recv(65536):  # discard_body(), without a coroutine of its own
        pass
    await request.respond(200, [("content-type", "text/plain")], HELLO)
    return len(HELLO)


async def info_app(request: http.Request) -> int:
    """``/``: a small HTML page showing the connection; any other path: 404."""
    await discard_body(request)
    if request.path != "/":
        return await _text(request, 404, "not found\n")
    info = request.info
    rows = [
        ("HTTP version", request.http_version),
        ("TLS version", info.get("tls_version") or "none (cleartext)"),
        ("Cipher", info.get("cipher") or "-"),
        ("ALPN", info.get("alpn") or "-"),
        ("SNI", info.get("server_name") or "-"),
        ("Peer", _peer(info)),
        # HEAD gets the head GET would (RFC 9110 9.3.2): the same page, so the same length
        ("Method", "GET" if request.method == "HEAD" else request.method),
        ("Target", request.target),
    ]
    cells = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    page = (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>trio-stack</title></head>\n'
        f"<body><h1>trio-stack</h1>\n<table>\n{cells}\n</table>\n</body></html>\n"
    ).encode()
    await request.respond(200, [("content-type", "text/html; charset=utf-8")], page)
    return len(page)


async def _text(request: http.Request, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> int:
    body = text.encode()
    await request.respond(status, [("content-type", "text/plain; charset=utf-8"), *headers], body)
    return len(body)


def with_access_log(handler: Handler) -> http.App:
    """Wrap ``handler`` to log one access line per request on ``stack.access``."""

    async def app(request: http.Request) -> None:
        t0 = time.perf_counter()
        sent: int | str = "-"
        try:
            sent = await handler(request)
        finally:
            access_log.info(
                '%s "%s %s HTTP/%s" %s %s %.1fms',
                _peer(request.info),
                request.method,
                request.target,
                request.http_version,
                request.status if request.status is not None else 500,
                sent,
                (time.perf_counter() - t0) * 1000,
            )

    return app


def without_log(handler: Handler) -> http.App:
    """``handler`` as an :data:`layers.http.App`, without an access log (``--quiet``): the handler
    itself (a server ignores what an app returns), so a request costs no wrapper coroutine."""
    return cast(http.App, handler)


WS_ECHO_PATH = "/ws/echo"
"""Where ``serve`` answers a WebSocket (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT) that echoes."""


async def websocket_echo(request: http.Request) -> int:
    """Accept the WebSocket (permessage-deflate if offered) and send every message back, text
    as text and binary as binary, until the client closes. Returns the bytes echoed."""
    from layers import websocket
    from stack.errors import StackError

    echoed = 0
    try:
        async with await websocket.accept(request, deflate=True, deadline=trio.current_time() + 10) as ws:
            async for msg in ws:
                await ws.send(msg)
                echoed += len(msg)
    except StackError as exc:  # a bad handshake (already answered 400) or a peer that vanished
        log.info("websocket %s from %s: %s", request.path, _peer(request.info), exc)
    return echoed


def with_websocket_echo(handler: Handler) -> Handler:
    """Answer :data:`WS_ECHO_PATH` with :func:`websocket_echo`, everything else with ``handler``
    (the handler's own coroutine is returned: no frame of this wrapper's per request)."""

    def app(request: http.Request) -> Awaitable[int | str]:
        if request.path == WS_ECHO_PATH:
            return websocket_echo(request)
        return handler(request)

    return app


# --------------------------------------------------------------------------------------------------
# serve


def is_asgi_target(root: str | None) -> bool:
    """Does the DIR argument name an ASGI app (``package.module:attribute``) rather than a directory?"""
    return root is not None and ":" in root and not os.path.isdir(root)


def load_asgi_app(target: str) -> Any:
    """The object ``package.module:attribute`` names, imported with the current directory on the
    path (as uvicorn does); ValueError saying what is wrong."""
    import importlib

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not package.module:app")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj


def _asgi_handler(args: argparse.Namespace, tls_layer: Any) -> tuple[Handler, Any]:
    """The handler serving the ASGI app of ``args.root``, and the ASGIApp (for its lifespan)."""
    from layers.asgi import ASGIApp

    server_cert = None
    if tls_layer is not None:
        from layers import certs

        certfile = args.cert or certs.localhost_pair(certs.default_cache_dir())[0]
        with open(certfile) as f:
            pem = f.read()
        end = pem.find("-----END CERTIFICATE-----")
        server_cert = pem[pem.find("-----BEGIN CERTIFICATE-----") : end + 25] + "\n" if end >= 0 else None
    asgi_app = ASGIApp(load_asgi_app(args.root), root_path=args.root_path or "", server_cert=server_cert)

    async def handler(request: http.Request) -> str:
        await asgi_app(request)
        return "-"

    return handler, asgi_app


async def serve(args: argparse.Namespace, tls_layer: Any) -> None:
    """Run the server until a signal (or cancellation); see the module docstring."""
    asgi_app: Any = None
    if args.hello:
        handler: Handler = hello_app
    elif is_asgi_target(args.root):
        handler, asgi_app = _asgi_handler(args, tls_layer)
    elif args.root is not None:
        handler = FileApp(args.root, dotfiles=getattr(args, "dotfiles", False)).handle
    else:
        handler = info_app
    if asgi_app is None:
        handler = with_websocket_echo(handler)
    if asgi_app is not None and args.quiet:
        app: http.App = asgi_app  # an http.App itself: no wrapper per request
    else:
        app = without_log(handler) if args.quiet else with_access_log(handler)
    limits = http.DEFAULT_LIMITS
    if args.header_timeout is not None:
        limits = replace(limits, header_timeout=args.header_timeout)
    shutdown = trio.Event()
    layers: list[Any] = [tls_layer] if tls_layer is not None else []
    if getattr(args, "proxy_protocol", False):  # the PROXY header comes first, before TLS
        from layers import proxy_protocol

        layers.insert(0, proxy_protocol.server())
    # HTTP clients speak first: the kernel hands over a connection once its request has arrived
    listen = tcp.listen(
        args.host, args.port, backlog=4096, reuse_port=getattr(args, "workers", 1) > 1, defer_accept=DEFER_ACCEPT
    )
    h3 = None
    if tls_layer is not None and not getattr(args, "no_http3", True) and isinstance(tls_layer.certs, tuple):
        h3 = functools.partial(_serve_http3, app, args.host, cert=tls_layer.certs, limits=limits, shutdown=shutdown)
    scheme = "https" if tls_layer is not None else "http"
    # an ASGI app's lifespan: startup before listening, shutdown once the connections drained
    lifespan = asgi_app.lifespan() if asgi_app is not None else contextlib.nullcontext()
    with trio.open_signal_receiver(*SIGNALS) as signals:
        try:
            await lifespan.__aenter__()
        except Exception as exc:
            from layers.asgi import LifespanFailure
            from stack.errors import Broken

            if isinstance(exc, LifespanFailure):  # one line from serve and from each worker, exit status 1
                raise Broken(str(exc)) from None
            raise
        try:
            source: Any = listen
            extra: tuple[tuple[str, str], ...] = ()
            if h3 is not None:  # HTTP/3 advertised on HTTP/1.1 and HTTP/2: bound first, for the port
                source, extra = await bind_advertising_http3(listen)
            server = http.server(app, limits, shutdown, engine=args.engine, response_headers=extra)
            stack = Stack(source, *layers, server)
            async with trio.open_nursery() as outer:
                outer.start_soon(on_signals, signals, shutdown, outer.cancel_scope)
                async with trio.open_nursery() as nursery:  # ends once serve drained and returned
                    addresses = await nursery.start(
                        functools.partial(stack.serve, shutdown=shutdown, drain_timeout=limits.drain_timeout)
                    )
                    if h3 is not None:  # HTTP/3 on UDP, the same port as the TCP listener
                        await nursery.start(functools.partial(h3, addresses[0][1]))
                    log.info("%s", engines_line(args.engine))
                    print(f"serving on {url(scheme, addresses[0])}", flush=True)
                outer.cancel_scope.cancel()
        finally:  # (the lifespan shields its own shutdown; a scope here would cross its nursery)
            await lifespan.__aexit__(None, None, None)
    log.info("stopped")


async def _serve_http3(
    app: http.App, host: str, port: int, *, cert: Any, limits: Any, shutdown: trio.Event, task_status: Any
) -> None:
    from layers import http3

    await http3.serve(app, host, port, cert, limits=limits, shutdown=shutdown, task_status=task_status)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the ``serve`` arguments (None: nothing)."""
    problem = tls_args_problem(args)
    if problem is None and is_asgi_target(args.root):
        try:
            load_asgi_app(args.root)
        except ValueError as exc:
            problem = str(exc)
    elif problem is None and args.root is not None and not os.path.isdir(args.root):
        problem = f"{args.root} is not a directory"
    return problem


def run(args: argparse.Namespace, tls_layer: Any) -> int:
    """Run :func:`serve` in this process; return the exit status (1 when it cannot listen)."""
    try:
        trio.run(serve, args, tls_layer)
    except KeyboardInterrupt:  # pragma: no cover - the signal receiver normally takes it
        pass
    except BaseException as exc:  # cannot listen (port in use...): one line, not a traceback
        line = failure_line(exc, f"{args.host}:{args.port}")
        if line is None:
            raise
        print(f"serve: {line}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``sub`` (the subparsers of ``python -m stack``); the caller
    sets its ``func`` (:func:`stack.cli.cmd_serve`, which also knows ``--workers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve HTTP/1.1 and HTTP/2 (TLS by default): files from DIR, or a page showing the connection",
        description="Serve HTTP/1.1 and HTTP/2 over TLS (default) or cleartext. With DIR, serve its files; "
        "without, a page that shows the connection (HTTP version, TLS version, ALPN, SNI, peer).",
    )
    p.add_argument(
        "root",
        nargs="?",
        metavar="DIR|MODULE:APP",
        help="directory to serve, or an ASGI app as package.module:app (default: the connection page)",
    )
    p.add_argument(
        "--dotfiles",
        action="store_true",
        help="with DIR, serve and list dotfiles (.git, .env...) too (default: hidden, 404)",
    )
    p.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="with an ASGI app: the path it is mounted at, behind a proxy (its scopes' root_path)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default: 8443; 0 picks a free one)")
    p.add_argument("--no-tls", action="store_true", help="serve cleartext HTTP")
    p.add_argument(
        "--no-http3",
        action="store_true",
        help="no HTTP/3 (by default, with TLS, it is served over UDP on the same port and advertised with Alt-Svc)",
    )
    p.add_argument("--cert", metavar="FILE", help="certificate chain (PEM), instead of the localhost one")
    p.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    p.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1 or v2 header on every connection (behind HAProxy...)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds a request head may take to arrive (default: 10)",
    )
    add_engine_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("--hello", action="store_true", help=argparse.SUPPRESS)  # the benchmarks' 13-byte body
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes sharing the port (SO_REUSEPORT), supervised (default: 1)",
    )
    return p
