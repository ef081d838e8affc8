"""What the commands of ``python -m stack`` share: TLS set-up, argument checks, logging, signals.

Theory of operation: each command (``serve``, ``proxy``, ``get``, and the ``serve --workers``
supervisor) is a module of :mod:`stack.cli` that builds a :class:`~stack.Stack` from its
arguments and runs it. What more than one of them needs lives here, public, so that no command
reaches into another's privates and the modules import each other in one direction only::

    stack.cli (build_parser, main) -> serve, get, proxy, workers -> common -> layers, stack

* :func:`tls_args_problem` checks ``--cert``/``--key``/``--no-tls`` (``serve`` and ``proxy``);
  :func:`tls_layer` builds the server TLS layer from them (the cached ``localhost`` certificate
  when no ``--cert`` is given, announced on stderr).
* :func:`setup_logging` installs the stderr handler and the levels ``-v`` asks for;
  :func:`raise_nofile` lifts the file-descriptor limit for many connections.
* :func:`on_signals` turns SIGINT/SIGTERM into a graceful shutdown (a second signal stops at
  once) and SIGUSR1 into a log line with the number of live trio tasks (:func:`live_tasks`, which
  ``benchmarks/soak.py`` samples), SIGUSR2 into the growth of Python allocations when tracemalloc
  traces (:func:`allocation_growth`, a leak hunter's tool); :func:`url` writes the ``serving on
  URL`` address; :data:`DEFER_ACCEPT` is the listeners' accept filter delay.
* :func:`bind_advertising_http3` binds a listener before its server's layers are built, and
  returns the ``response_headers`` (``Alt-Svc``) that advertise HTTP/3 on its port (``serve``
  and ``proxy`` with TLS; the port is known then, also for port 0).
* :func:`failure_line` turns what stopped a server (a port in use, wrapped by trio's nurseries
  in exception groups) into the one line the command prints, instead of a traceback.

This module prints (it is the command line); the library code in ``layers`` only logs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
from typing import Any

import trio

from layers import certs, tls
from stack.errors import StackError
from stack.streams import Listener

__all__ = [
    "DEFER_ACCEPT", "SIGNALS", "Bound", "allocation_growth", "bind_advertising_http3", "failure_line", "live_tasks",
    "on_signals", "raise_nofile", "setup_logging", "tls_args_problem", "tls_layer", "url",
]  # fmt: skip

log = logging.getLogger("stack.cli")
access_log = logging.getLogger("stack.access")

DEFER_ACCEPT = 1.0
"""``tcp.listen(defer_accept=)`` of ``serve`` and ``proxy``: a silent connection reaches the server
(and its ``--header-timeout``) after about this many seconds."""


def tls_args_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--cert``, ``--key`` and ``--no-tls`` together (None: nothing)."""
    if bool(args.cert) != bool(args.key):
        return "--cert and --key go together"
    if args.no_tls and args.cert:
        return "--no-tls and --cert/--key contradict each other"
    return None


def tls_layer(args: argparse.Namespace) -> Any:
    """The server TLS layer ``args`` ask for (ALPN ``h2``, ``http/1.1``): ``--cert``/``--key``, or
    the ``localhost`` pair cached in :func:`layers.certs.default_cache_dir` (minted on first use;
    where it and its CA are is printed on stderr). OSError or ValueError if they cannot be used."""
    if args.cert:
        certfile, keyfile = args.cert, args.key
    else:
        certfile, keyfile, cafile = certs.localhost_pair(certs.default_cache_dir())
        print(f"certificate: {certfile}\nCA (trust it with: curl --cacert {cafile} ...): {cafile}", file=sys.stderr)
    return tls.server((certfile, keyfile), alpn=["h2", "http/1.1"], ragged_eofs=True)


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings (``-v``: info, ``-vv``: debug), the access log and ``stack.cli`` at info."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    access_log.setLevel(logging.INFO)
    log.setLevel(logging.INFO)


def raise_nofile() -> None:
    """Many connections need many file descriptors: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def url(scheme: str, address: Any) -> str:
    """``scheme://host:port/`` for a listening ``address`` (an IPv6 host in brackets)."""
    host, port = str(address[0]), int(address[1])
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""What a server's :func:`on_signals` takes: SIGINT and SIGTERM stop it, SIGUSR1 logs :func:`live_tasks`,
SIGUSR2 logs :func:`allocation_growth` (with ``PYTHONTRACEMALLOC`` set; otherwise it is ignored)."""


def allocation_growth(top: int = 15) -> list[str]:
    """Where Python memory grew since the previous call (the first call: since tracing started),
    by line, largest first: ``top`` lines of ``tracemalloc``'s snapshot diff. Empty when tracemalloc
    is not tracing (set ``PYTHONTRACEMALLOC=1`` in the server's environment to debug a leak)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    import gc

    unreachable = gc.collect()  # what only the cycle collector frees is not a leak: free it first
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"))
    )
    previous = _snapshots[-1] if _snapshots else None
    _snapshots[:] = [snapshot]
    traced, _ = tracemalloc.get_traced_memory()
    lines = [f"traced {traced / 1e6:.1f} MB after a collection that freed {unreachable} unreachable objects"]
    if previous is not None:
        lines += [str(stat) for stat in snapshot.compare_to(previous, "lineno")[:top]]
    return lines


_snapshots: list[Any] = []


def live_tasks() -> int:
    """How many trio tasks are alive in this run (the root task and every task under it)."""
    count, pending = 0, [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def on_signals(signals: Any, shutdown: trio.Event, scope: trio.CancelScope) -> None:
    """For each signal from ``signals``: SIGUSR1 logs one ``stats: N live trio tasks`` line (on
    ``stack.cli``, for a soak test watching for leaks); otherwise the first sets ``shutdown``
    (drain), a second cancels ``scope``."""
    async for signum in signals:
        if signum == signal.SIGUSR1:
            log.info("stats: %d live trio tasks", live_tasks())
            continue
        if signum == signal.SIGUSR2:
            for line in allocation_growth():
                log.info("allocations: %s", line)
            continue
        if shutdown.is_set():
            log.warning("second signal: stopping now")
            scope.cancel()
            return
        log.warning("%s: shutting down (a second signal stops at once)", signal.Signals(signum).name)
        shutdown.set()


class Bound:
    """A listening source whose listener is already open: ``Stack(Bound(listener), ...)`` serves
    on it (:meth:`stack.Stack.serve` closes it when it returns)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    async def listen(self) -> Listener:
        return self.listener


async def bind_advertising_http3(listen: Any) -> tuple[Bound, tuple[tuple[str, str], ...]]:
    """Open ``listen``'s listener now and return it as a :class:`Bound` source, with the
    ``response_headers`` of the HTTP server spec that advertise HTTP/3 on UDP on the same port
    (``Alt-Svc: h3=":PORT"; ma=86400``, RFC 7838): built once, with the port actually bound."""
    listener = await listen.listen()
    return Bound(listener), (("alt-svc", f'h3=":{listener.address[1]}"; ma=86400'),)


def failure_line(exc: BaseException, where: str) -> str | None:
    """The one line saying why a server stopped, for ``exc`` (a :class:`~stack.StackError` or an
    OSError, inside any number of one-exception groups); None for anything else (a bug: its
    traceback should show). The system's reason is lower-cased, as in ``cannot listen on
    127.0.0.1:8443: address already in use``; a bare OSError (the listening address could not be
    resolved) is said to be about listening on ``where`` (``HOST:PORT``)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError):
        return f"cannot listen on {where}: {_reason(exc)}"
    if not isinstance(exc, StackError):
        return None
    text, cause = str(exc), exc.__cause__
    if isinstance(cause, OSError) and cause.strerror and text.endswith(cause.strerror):
        text = text[: -len(cause.strerror)] + _reason(cause)
    return text


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


ENGINES = ("auto", "fast", "reference")
"""The ``--engine`` choices (see :data:`layers.http1.ENGINES`)."""


def add_engine_argument(p: argparse.ArgumentParser) -> None:
    """``--engine auto|fast|reference``: HTTP/1.1's parser (HTTP/2 has one)."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="HTTP/1.1 parser: fast (llhttp, compiled), reference (h11), auto: fast when installed",
    )


def engines_line(engine: str) -> str:
    """What runs HTTP/1.1 and HTTP/2 with ``--engine engine``, for the start-up log line; ValueError
    for an engine that is not available."""
    from importlib.metadata import PackageNotFoundError, version

    from layers import http1

    def of(package: str) -> str:
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:  # pragma: no cover - installed without metadata
            return package

    name = http1.engine_name(engine)
    parser = of("httptools" if name == "fast" else "h11")
    return f"HTTP/1.1 engine {name} ({parser}), HTTP/2 engine reference ({of('h2')})"
