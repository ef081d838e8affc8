"""What the measured processes share: how they report to the runner and how they stay bounded.

A receiver prints ``READY <port>`` once it listens and ``RESULT <json>`` (at least ``{"value": x}``)
when done; see :class:`benchmarks.harness.PairContender`.  Every worker runs under an overall
``trio.fail_after`` so it can never hang the runner.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def result(value: float, **extra: Any) -> None:
    print("RESULT " + json.dumps({"value": value, **extra}), flush=True)


def run(fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float) -> None:
    async def bounded() -> None:
        with trio.fail_after(timeout):
            await fn(*args)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # a server-side handler error shows
    try:
        trio.run(bounded)
    except trio.TooSlowError:
        sys.exit(f"{getattr(fn, '__name__', fn)}: timed out after {timeout:.0f}s")


async def raw_listener() -> tuple[trio.socket.SocketType, int]:
    """A listening trio socket on 127.0.0.1 and a free port."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


async def raw_connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock
