"""Servers the tests start in their own process: one helper, :func:`running`, for all of them.

Theory of operation. Every server of this library starts the same way: ``await
nursery.start(serve)`` returns once it listens, with where it listens (``Stack.serve`` and
``asgi.serve_asgi``: a list of addresses; ``http3.serve``: one address). :func:`running` runs such
a ``serve`` in a nursery of its own, yields the port (127.0.0.1, port 0: any free one) and, when
the block ends, stops it: at once (the nursery cancelled), or gracefully when a ``shutdown``
event was given to the server (the event set, and the block waits for the server to drain).
:func:`serve_http` and :func:`serve_h3` build the two common ``serve`` calls: our HTTP server
(HTTP/1.1 and HTTP/2) on TCP with optional layers below it (TLS), and HTTP/3 on UDP.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from layers import http, http3, tcp
from stack import Stack

HOST = "127.0.0.1"


def port_of(started: Any) -> int:
    """The port in what a server's ``task_status.started`` gave: a list of addresses or one."""
    address = started[0] if isinstance(started, list) else started
    return int(address[1])


@asynccontextmanager
async def running(serve: Callable[..., Awaitable[Any]], *, shutdown: trio.Event | None = None) -> AsyncIterator[int]:
    """Run ``serve`` (called with ``task_status=``) until the block ends; yield its port. With
    ``shutdown`` (the event the server was given) the end is graceful: the event is set and the
    block waits for the server to return; without, the server is cancelled."""
    async with trio.open_nursery() as nursery:
        port = port_of(await nursery.start(serve))
        yield port
        if shutdown is not None:
            shutdown.set()
        else:
            nursery.cancel_scope.cancel()


def serve_http(app: http.App, *layers: Any, port: int = 0) -> Callable[..., Awaitable[Any]]:
    """``serve`` of our HTTP server (``http.server(app)``) on TCP, with ``layers`` (TLS...) below."""
    return Stack(tcp.listen(HOST, port), *layers, http.server(app)).serve


def serve_h3(app: http.App, leaf: Any, port: int = 0, **kw: Any) -> Callable[..., Awaitable[Any]]:
    """``serve`` of ``http3.serve(app)`` on UDP with the certificate ``leaf`` (``kw``: its options)."""
    return functools.partial(http3.serve, app, HOST, port, leaf, **kw)
