"""``python -m stack proxy``: the reverse proxy of :mod:`layers.reverse_proxy` as a command.

::

    python -m stack proxy --listen 127.0.0.1:8443 --upstream http://127.0.0.1:8080
    python -m stack proxy --listen 127.0.0.1:8080 --upstream unix:/run/app.sock --no-tls
    python -m stack proxy --listen :8443 --upstream http://10.0.0.5:8000 --cert site.pem --key site.key

The proxy terminates TLS (ALPN ``h2``, ``http/1.1``; or cleartext with HTTP/2 prior-knowledge
sniffing with ``--no-tls``) and HTTP/2 or HTTP/1.1 from clients (with TLS also HTTP/3, over UDP on
the same port, advertised with ``Alt-Svc`` as ``serve`` does; ``--no-http3`` turns it off), and forwards each request as
HTTP/1.1 to one backend, over TCP (``http://host:port``) or a Unix socket (``unix:/path``). The
forwarding rules, the backend pool and the failures (502, 504, 408) are the library's:
:mod:`layers.reverse_proxy` documents them; this module turns the arguments into its
:class:`~layers.reverse_proxy.BackendPool` and :class:`~layers.reverse_proxy.ProxyApp` and runs
them behind ``tcp.listen`` (and ``tls.server``).

When ready it prints ``serving on URL``; one access line per request goes to the ``stack.access``
logger (stderr) unless ``--quiet``. SIGINT or SIGTERM stops it gracefully, as ``serve``.

The command (not the library) tunes Python's cycle collector for a process that holds many
requests in flight: what start-up made (modules, classes) is frozen out of the collections, and
the youngest generation is collected every :data:`GC_THRESHOLD` allocations instead of 700 (a
collection walks every young object still alive, and a proxy keeps each request's objects alive
while it waits for its backend: about 5% of a proxied request's instructions went there).
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import sys
from typing import Any

import trio

from layers import http, tcp
from layers.reverse_proxy import BackendPool, ProxyApp, Upstream, parse_listen
from stack.cli.common import (
    DEFER_ACCEPT,
    SIGNALS,
    add_engine_argument,
    bind_advertising_http3,
    engines_line,
    failure_line,
    on_signals,
    raise_nofile,
    tls_args_problem,
    tls_layer,
    url,
)
from stack.compose import Stack

__all__ = ["GC_THRESHOLD", "add_parser", "cmd_proxy", "run_proxy"]

log = logging.getLogger("stack.proxy")

GC_THRESHOLD = (20_000, 50, 50)
"""The cycle collector's thresholds in the proxy process (``gc.set_threshold``; see the module docstring)."""


async def run_proxy(args: argparse.Namespace, layer: Any) -> None:
    """Run the proxy until a signal (or cancellation); see the module docstring."""
    host, port = parse_listen(args.listen)
    upstream = Upstream.parse(args.upstream)
    pool = BackendPool(
        upstream.stack(), size=args.pool_size, idle_timeout=args.pool_idle, connect_timeout=args.connect_timeout
    )
    app = ProxyApp(
        pool,
        timeout=args.timeout,
        allow_connect=args.allow_connect,
        access=not args.quiet,
        send_proxy=getattr(args, "send_proxy", None),
    )
    shutdown = trio.Event()
    limits = http.DEFAULT_LIMITS
    layers: list[Any] = [layer] if layer is not None else []
    listen = tcp.listen(host, port, backlog=4096, defer_accept=DEFER_ACCEPT)  # clients speak first
    h3_app: http.App | None = None
    source: Any = listen
    extra: tuple[tuple[str, str], ...] = ()
    if layer is not None and not getattr(args, "no_http3", True) and isinstance(layer.certs, tuple):
        h3_app = app  # HTTP/3 on UDP, advertised on HTTP/1.1 and HTTP/2: bound first, for the port
        source, extra = await bind_advertising_http3(listen)
    front = Stack(source, *layers, http.server(app, limits, shutdown, engine=args.engine, response_headers=extra))
    scheme = "https" if layer is not None else "http"
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(on_signals, signals, shutdown, outer.cancel_scope)
            await outer.start(pool.run)
            try:
                async with trio.open_nursery() as nursery:
                    addresses = await nursery.start(
                        functools.partial(front.serve, shutdown=shutdown, drain_timeout=limits.drain_timeout)
                    )
                    if h3_app is not None and layer is not None:  # the same port as the TCP listener
                        from layers import http3

                        h3 = functools.partial(http3.serve, h3_app, host, addresses[0][1], layer.certs)
                        await nursery.start(functools.partial(h3, limits=limits, shutdown=shutdown))
                    print(f"serving on {url(scheme, addresses[0])}", flush=True)
                    log.info("forwarding to %s; %s", upstream.url, engines_line(args.engine))
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
            outer.cancel_scope.cancel()
    log.info("stopped")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``proxy`` subcommand to ``sub`` (the subparsers of ``python -m stack``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy",
        help="HTTP/2 and HTTP/1.1 front-end (TLS by default) forwarding to an HTTP/1.1 backend",
        description="Terminate TLS and HTTP/2 or HTTP/1.1 from clients and forward each request as HTTP/1.1 "
        "to a backend over TCP or a Unix socket, with a pool of kept-alive backend connections. "
        "502 when the backend fails, 504 when it is too slow.",
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen (port 0: any free port)")
    p.add_argument("--upstream", required=True, metavar="URL", help="the backend: http://host:port or unix:/path")
    p.add_argument("--no-tls", action="store_true", help="cleartext front-end (HTTP/1.1, or HTTP/2 prior knowledge)")
    p.add_argument(
        "--no-http3",
        action="store_true",
        help="no HTTP/3 (by default, with TLS, it is accepted over UDP on the same port and advertised with Alt-Svc)",
    )
    p.add_argument("--cert", metavar="FILE", help="certificate chain (PEM), instead of the localhost one")
    p.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds the backend has to answer, and between body chunks (default: 60): else 504",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to connect to the backend (default: 5): else 504",
    )
    p.add_argument(
        "--pool-size", type=int, default=64, metavar="N", help="most backend connections open at once (default: 64)"
    )
    p.add_argument(
        "--pool-idle",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds an unused backend connection is kept (default: 10)",
    )
    p.add_argument(
        "--send-proxy",
        dest="send_proxy",
        action="store_const",
        const=1,
        help="send a PROXY protocol v1 header with the client's address to the backend "
        "(one backend connection per request)",
    )
    p.add_argument(
        "--send-proxy-v2",
        dest="send_proxy",
        action="store_const",
        const=2,
        help="the same with a PROXY protocol v2 header",
    )
    p.add_argument(
        "--allow-connect",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="let CONNECT tunnel to HOST:PORT (repeatable; none by default)",
    )
    add_engine_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.set_defaults(func=cmd_proxy)
    return p


def cmd_proxy(args: argparse.Namespace) -> int:
    """``python -m stack proxy``: check the arguments, set up TLS, run :func:`run_proxy`."""
    try:
        parse_listen(args.listen)
        Upstream.parse(args.upstream)
        for authority in args.allow_connect:
            parse_listen(authority)
    except ValueError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    problem = tls_args_problem(args)
    if problem is not None:
        print(f"proxy: {problem}", file=sys.stderr)
        return 2
    if args.pool_size < 1:
        print("proxy: --pool-size must be at least 1", file=sys.stderr)
        return 2
    logging.getLogger("stack.proxy").setLevel(logging.INFO)
    raise_nofile()
    try:
        layer = None if args.no_tls else tls_layer(args)
    except (OSError, ValueError) as exc:
        print(f"proxy: cannot set up TLS: {exc}", file=sys.stderr)
        return 1
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        trio.run(run_proxy, args, layer)
    except KeyboardInterrupt:  # pragma: no cover - the signal receiver normally takes it
        pass
    except BaseException as exc:  # cannot listen (port in use...): one line, not a traceback
        line = failure_line(exc, args.listen)
        if line is None:
            raise
        print(f"proxy: {line}", file=sys.stderr)
        return 1
    finally:  # (for a caller in the same process)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return 0
