"""The command line: ``python -m stack`` (or ``trio-stack``).

::

    python -m stack serve                    # HTTPS on 127.0.0.1:8443, a page showing the connection
    python -m stack serve DIR --no-tls       # serve the files under DIR over plain HTTP
    python -m stack serve --port 0           # any free port: the "serving on" line tells which

``serve`` speaks HTTP/1.1 and HTTP/2 (ALPN over TLS; cleartext HTTP/2 with prior knowledge). By
default it uses TLS with a ``localhost`` certificate minted on first run and kept in the user's
cache directory (:func:`layers.certs.default_cache_dir`); it says where the certificate and its CA
are, so that ``curl --cacert CA https://localhost:8443/`` works. ``--cert``/``--key`` use your own.

When ready it prints exactly one line on stdout, ``serving on URL``. It logs one access line per
request on stderr (peer, method, target, HTTP version, status, body bytes, duration) unless
``--quiet``. SIGINT or SIGTERM stops it gracefully: no new connections, idle ones close, requests
in flight get ``Limits.drain_timeout`` seconds to finish; a second signal stops at once.

This is the one module of ``stack`` that imports ``layers``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import functools
import html
import logging
import mimetypes
import os
import resource
import signal
import stat
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from layers import certs, http, tcp
from stack.compose import Stack

__all__ = ["main"]

log = logging.getLogger("stack.cli")
access_log = logging.getLogger("stack.access")

FILE_CHUNK = 65536
"""Bytes read from a file and sent per step when streaming a file body."""

SMALL_FILE = 65536
"""Files up to this size are read whole and sent with the head in one write."""

HELLO = b"Hello, world!"

Handler = Callable[[http.Request], Awaitable[int]]


# --------------------------------------------------------------------------------------------------
# The apps: each handler answers one request and returns the number of body bytes it sent.


async def discard_body(request: http.Request) -> None:
    """Read the request body to its end and forget it (so the connection can be reused)."""
    while await request.body.recv(65536):
        pass


def _peer(info: Any) -> str:
    peer = info.get("peer")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


async def hello_app(request: http.Request) -> int:
    """The benchmarks' body: 13 bytes of ``Hello, world!`` for any request."""
    await discard_body(request)  # returns at once for a request without a body
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
        ("Method", request.method),
        ("Target", request.target),
    ]
    cells = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    page = (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>trio-stack</title></head>\n"
        f"<body><h1>trio-stack</h1>\n<table>\n{cells}\n</table>\n</body></html>\n"
    ).encode()
    await request.respond(200, [("content-type", "text/html; charset=utf-8")], page)
    return len(page)


async def _text(request: http.Request, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> int:
    body = text.encode()
    await request.respond(status, [("content-type", "text/plain; charset=utf-8"), *headers], body)
    return len(body)


@dataclass(frozen=True)
class _Found:
    """What a request path maps to under the root (computed in a worker thread)."""

    kind: str  # "file", "dir", "missing", "redirect", "forbidden"
    path: Path | None = None
    size: int = 0
    mtime: float = 0.0
    listing: tuple[tuple[str, bool], ...] = ()


class FileApp:
    """Serve the files under ``root``.

    * The path is percent-decoded and resolved (symlinks too); anything that ends up outside the
      root, or holds a NUL, is 404. Hidden traversal through ``..`` or a symlink pointing out is
      therefore impossible; symlinks that stay inside the root are followed.
    * GET and HEAD; other methods get 405 (their body is read and discarded).
    * Content-Type from :mod:`mimetypes` (``application/octet-stream`` when unknown).
    * ``Last-Modified``, and ``If-Modified-Since`` answered with 304.
    * ``Range``: one byte range gives 206 with ``Content-Range``; a range past the end gives 416;
      several ranges or a malformed header are ignored (200, the whole file).
    * A directory: a redirect to add the trailing ``/``, then its ``index.html`` or a listing.
    * Files are streamed in chunks read with trio's async file I/O.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")

    async def __call__(self, request: http.Request) -> int:
        await discard_body(request)
        if request.method not in ("GET", "HEAD"):
            return await _text(request, 405, "method not allowed\n", [("allow", "GET, HEAD")])
        found = await trio.to_thread.run_sync(self._find, request.path)
        if found.kind == "redirect":
            location = request.path + "/" + (f"?{request.query}" if request.query else "")
            return await _text(request, 301, "moved\n", [("location", location)])
        if found.kind == "dir":
            return await self._listing(request, found)
        if found.kind != "file" or found.path is None:
            return await _text(request, 404, "not found\n")
        return await self._file(request, found)

    def _find(self, target_path: str) -> _Found:
        """Map a request path to a file or directory inside the root (blocking: run in a thread)."""
        rel = urllib.parse.unquote(target_path, errors="strict") if "%" in target_path else target_path
        if "\0" in rel or not rel.startswith("/"):
            return _Found("missing")
        try:
            path = (self.root / rel.lstrip("/")).resolve(strict=True)
            if not path.is_relative_to(self.root):
                return _Found("missing")
            st = path.stat()
        except (OSError, ValueError, RuntimeError):
            return _Found("missing")
        if stat.S_ISDIR(st.st_mode):
            if not target_path.endswith("/"):
                return _Found("redirect")
            index = path / "index.html"
            with contextlib.suppress(OSError):
                ist = index.stat()
                if stat.S_ISREG(ist.st_mode) and index.resolve().is_relative_to(self.root):
                    return _Found("file", index, ist.st_size, ist.st_mtime)
            try:
                entries = sorted((e.name, e.is_dir()) for e in os.scandir(path))
            except OSError:
                return _Found("missing")
            return _Found("dir", path, listing=tuple(entries))
        if not stat.S_ISREG(st.st_mode) or target_path.endswith("/"):
            return _Found("missing")
        return _Found("file", path, st.st_size, st.st_mtime)

    async def _listing(self, request: http.Request, found: _Found) -> int:
        title = html.escape(urllib.parse.unquote(request.path))
        items = "\n".join(
            f'<li><a href="{urllib.parse.quote(name)}{"/" if is_dir else ""}">'
            f'{html.escape(name)}{"/" if is_dir else ""}</a></li>'
            for name, is_dir in found.listing
        )
        page = (
            f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
            f"<body><h1>Index of {title}</h1>\n<ul>\n{items}\n</ul>\n</body></html>\n"
        ).encode()
        await request.respond(200, [("content-type", "text/html; charset=utf-8")], page)
        return len(page)

    async def _file(self, request: http.Request, found: _Found) -> int:
        assert found.path is not None
        size = found.size
        mtime = int(found.mtime)
        ctype = mimetypes.guess_type(found.path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        headers = [
            ("content-type", ctype),
            ("last-modified", email.utils.formatdate(mtime, usegmt=True)),
            ("accept-ranges", "bytes"),
        ]
        since = request.headers.get("if-modified-since")
        if since is not None and _not_modified(since, mtime):
            await request.respond(304, headers[1:])
            return 0
        start, end, status = 0, size, 200
        rng = request.headers.get("range")
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed == "unsatisfiable":
                return await _text(request, 416, "range not satisfiable\n", [("content-range", f"bytes */{size}")])
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                headers.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
        length = end - start
        headers.append(("content-length", str(length)))
        if request.method == "HEAD":
            await request.respond(status, headers)
            return 0
        async with await trio.open_file(found.path, "rb") as f:
            if start:
                await f.seek(start)
            if length <= SMALL_FILE:
                data = await f.read(length)
                if len(data) != length:  # the file changed under us: do not send a wrong length
                    raise OSError(f"{found.path} changed while being served")
                await request.respond(status, headers, data)
                return length
            stream = await request.start_response(status, headers)
            sent = 0
            while sent < length:
                chunk = await f.read(min(FILE_CHUNK, length - sent))
                if not chunk:
                    raise OSError(f"{found.path} shrank while being served")
                await stream.send(chunk)
                sent += len(chunk)
            await stream.done()
            return sent


def _not_modified(since: str, mtime: int) -> bool:
    try:
        when = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        return False
    return mtime <= int(when.timestamp())


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range of a ``size``-byte resource as ``(start, end)`` (end exclusive);
    ``"unsatisfiable"`` when it starts past the end; ``None`` to ignore the header (malformed,
    another unit, or several ranges)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())) or (last and not last.isdigit()):
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


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
    async def app(request: http.Request) -> None:
        await handler(request)

    return app


DEFER_ACCEPT = 1.0
"""``tcp.listen(defer_accept=)`` of ``serve`` and ``proxy``: a silent connection reaches the server
(and its ``--header-timeout``) after about this many seconds."""

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
    """Answer :data:`WS_ECHO_PATH` with :func:`websocket_echo`, everything else with ``handler``."""

    async def app(request: http.Request) -> int:
        if request.path == WS_ECHO_PATH:
            return await websocket_echo(request)
        return await handler(request)

    return app


# --------------------------------------------------------------------------------------------------
# serve


def _url(scheme: str, address: Any) -> str:
    host, port = str(address[0]), int(address[1])
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


async def serve(args: argparse.Namespace, tls_layer: Any) -> None:
    """Run the server until a signal (or cancellation); see the module docstring."""
    if args.hello:
        handler: Handler = hello_app
    elif args.root is not None:
        handler = FileApp(args.root)
    else:
        handler = info_app
    handler = with_websocket_echo(handler)
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
    stack = Stack(listen, *layers, http.server(app, limits, shutdown))
    scheme = "https" if tls_layer is not None else "http"
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_on_signals, signals, shutdown, outer.cancel_scope)
            async with trio.open_nursery() as nursery:  # ends once serve drained and returned
                addresses = await nursery.start(
                    functools.partial(stack.serve, shutdown=shutdown, drain_timeout=limits.drain_timeout)
                )
                print(f"serving on {_url(scheme, addresses[0])}", flush=True)
            outer.cancel_scope.cancel()
    log.info("stopped")


async def _on_signals(signals: Any, shutdown: trio.Event, scope: trio.CancelScope) -> None:
    async for signum in signals:
        if shutdown.is_set():
            log.warning("second signal: stopping now")
            scope.cancel()
            return
        log.warning("%s: shutting down (a second signal stops at once)", signal.Signals(signum).name)
        shutdown.set()


def _tls_layer(args: argparse.Namespace) -> Any:
    from layers import tls

    if args.cert:
        certfile, keyfile = args.cert, args.key
    else:
        directory = certs.default_cache_dir()
        certfile, keyfile, cafile = certs.localhost_pair(directory)
        print(f"certificate: {certfile}\nCA (trust it with: curl --cacert {cafile} ...): {cafile}", file=sys.stderr)
    return tls.server((certfile, keyfile), alpn=["h2", "http/1.1"], ragged_eofs=True)


def cmd_serve(args: argparse.Namespace) -> int:
    if bool(args.cert) != bool(args.key):
        print("serve: --cert and --key go together", file=sys.stderr)
        return 2
    if args.no_tls and args.cert:
        print("serve: --no-tls and --cert/--key contradict each other", file=sys.stderr)
        return 2
    if args.root is not None and not os.path.isdir(args.root):
        print(f"serve: {args.root} is not a directory", file=sys.stderr)
        return 2
    _raise_nofile()
    try:
        tls_layer = None if args.no_tls else _tls_layer(args)
    except (OSError, ValueError) as exc:
        print(f"serve: cannot set up TLS: {exc}", file=sys.stderr)
        return 1
    if args.workers != 1:  # N supervised processes sharing the port: stack/cli_workers.py
        from stack.cli_workers import supervise

        return supervise(args)
    try:
        trio.run(serve, args, tls_layer)
    except KeyboardInterrupt:  # pragma: no cover - the signal receiver normally takes it
        pass
    except OSError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from stack.errors import Broken

        if isinstance(exc, Broken):  # cannot listen (port in use...)
            print(f"serve: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


def _raise_nofile() -> None:
    """Many connections need many file descriptors: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack", description="trio-stack: composable protocol stacks on trio."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="serve HTTP/1.1 and HTTP/2 (TLS by default): files from DIR, or a page showing the connection",
        description="Serve HTTP/1.1 and HTTP/2 over TLS (default) or cleartext. With DIR, serve its files; "
        "without, a page that shows the connection (HTTP version, TLS version, ALPN, SNI, peer).",
    )
    p.add_argument("root", nargs="?", metavar="DIR", help="directory to serve (default: the connection page)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default: 8443; 0 picks a free one)")
    p.add_argument("--no-tls", action="store_true", help="serve cleartext HTTP")
    p.add_argument("--cert", metavar="FILE", help="certificate chain (PEM), instead of the localhost one")
    p.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="expect a PROXY protocol v1 or v2 header on every connection (behind HAProxy...)")
    p.add_argument("--header-timeout", type=float, metavar="SECONDS",
                   help="seconds a request head may take to arrive (default: 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("--hello", action="store_true", help=argparse.SUPPRESS)  # the benchmarks' 13-byte body
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N processes sharing the port (SO_REUSEPORT), supervised (default: 1)")
    p.set_defaults(func=cmd_serve)

    from stack import cli_get, cli_proxy  # the get and proxy commands live in their own modules

    cli_get.add_parser(sub)
    cli_proxy.add_parser(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    access_log.setLevel(logging.INFO)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m stack`` and ``trio-stack``; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    result: int = args.func(args)
    return result
