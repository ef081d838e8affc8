"""The HTTP server programs the http1, http1-mem and h2 groups start (one fresh process per run).

Each is a :class:`harness.Server`: a command with ``{port}``, run from the repository root pinned to
CPU 0.  Its pid must be the serving process where a group reads its RSS (http1-mem), so the
servers there fork no workers; granian, which spawns its worker, is only in the req/s groups.  A
server whose ``requires`` does not import, whose ``probe`` fails or whose ``tools`` are missing
shows up as "not available" in the tables instead of failing the run.

To add a contender to every HTTP group: add a Server below and name it in HTTP1 / H2.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.harness import PY, Server

H11 = Server(
    "h11 (hand-written)",
    [PY, "-m", "benchmarks.peers.h11_server", "--port", "{port}"],
    ready=r"serving on",
)

H2 = Server(
    "h2 (hand-written)",
    [PY, "-m", "benchmarks.peers.h2_server", "--port", "{port}"],
    ready=r"serving on",
)

# Serve in the hypercorn process itself (--workers 0: no fork, so the pid's RSS is the server's).  The
# config module lifts the limits the hand-written peers do not have (1,000 requests per connection,
# 5 s idle timeout); see its docstring.
HYPERCORN_ARGS = ["--worker-class", "trio", "--workers", "0", "--config", "python:benchmarks.peers.hypercorn_config"]
HYPERCORN = Server(
    "hypercorn-trio",
    [PY, "-m", "hypercorn", *HYPERCORN_ARGS, "--bind", "127.0.0.1:{port}", "benchmarks.peers.hypercorn_app:app"],
    requires=["hypercorn.trio"],
    ready=r"Running on",
)

# ---------------------------------------------------------------------------------------------------
# OUR servers.  `python -m stack serve --no-tls --port P --hello --quiet` serves the same 13-byte
# "Hello, world!" (the hidden --hello flag) over HTTP/1.1 and HTTP/2 prior knowledge, with no access
# log (as the peers), and prints "serving on URL" when ready (stack/cli/serve.py).  OURS runs the
# default engine (`auto`: the fast one, on httptools); OURS_REFERENCE the pure-Python reference
# engine (h11), for the record.  If the command cannot run (`requires` not importable, or
# `serve --help` does not exit 0) the contender is reported as "not available".
OURS = Server(
    "ours (stack serve)",
    [PY, "-m", "stack", "serve", "--no-tls", "--port", "{port}", "--hello", "--quiet"],
    requires=["stack.__main__", "stack.cli.serve"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)
OURS_REFERENCE = Server(
    "ours, reference engine",
    [PY, "-m", "stack", "serve", "--no-tls", "--port", "{port}", "--hello", "--quiet", "--engine", "reference"],
    requires=["stack.__main__", "stack.cli.serve"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)
# The raw ASGI hello app (benchmarks/peers/asgi_app.py, the one the ASGI peers load) on layers.asgi:
# the `asgi` group's "ours", and `instructions.py --asgi`.
OURS_ASGI = Server(
    "ours (layers.asgi)",
    [PY, "-m", "stack", "serve", "benchmarks.peers.asgi_app:app", "--no-tls", "--port", "{port}", "--quiet"],
    requires=["stack.__main__", "layers.asgi"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# What users would pick instead (issue 16, item 5).  One process each, pinned to CPU 0 like the rest;
# the ASGI servers all load the same raw app, benchmarks/peers/asgi_app.py.

# uvicorn as `pip install 'uvicorn[standard]'` runs it: httptools (llhttp) parser, uvloop event loop.
UVICORN_ARGS = ["--host", "127.0.0.1", "--port", "{port}", "--no-access-log", "--log-level", "info"]
UVICORN_HTTPTOOLS = Server(
    "uvicorn httptools+uvloop",
    [PY, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop", *UVICORN_ARGS, "benchmarks.peers.asgi_app:app"],
    requires=["uvicorn", "httptools", "uvloop"],
    ready=r"Uvicorn running on",
)
# uvicorn as plain `pip install uvicorn` runs it: h11 parser, the standard asyncio loop.
UVICORN_H11 = Server(
    "uvicorn h11+asyncio",
    [PY, "-m", "uvicorn", "--http", "h11", "--loop", "asyncio", *UVICORN_ARGS, "benchmarks.peers.asgi_app:app"],
    requires=["uvicorn", "h11"],
    ready=r"Uvicorn running on",
)
# granian (Rust, hyper): ASGI, one worker process, one single-threaded runtime.  `--http auto` (its
# default) answers HTTP/1.1 and h2c prior knowledge on the same port, so the h2 group runs it too.
# Its main process spawns the worker (so no http1-mem row: the pid's RSS is not the server's); ready
# once the worker's runtime has started, not when the main process has bound the port.
GRANIAN_ARGS = ["--interface", "asgi", "--workers", "1", "--runtime-threads", "1", "--runtime-mode", "st",
                "--no-access-log", "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
GRANIAN = Server(
    "granian",
    [PY, "-m", "granian", *GRANIAN_ARGS, "--http", "auto", "benchmarks.peers.asgi_app:app"],
    requires=["granian"],
    ready=r"Started worker-1 runtime",
)
# trio's ceiling: a SocketStream answering a canned response per request head, no parsing.
RAW_TRIO = Server(
    "raw trio (no parsing)",
    [PY, "-m", "benchmarks.peers.raw_trio_server", "--port", "{port}"],
    ready=r"serving on",
)
# Go's net/http, GOMAXPROCS=1: built by the probe from peers/go_server.go into a directory of this
# run's own (removed at exit); "not available: go not installed" without a Go toolchain.
GO_BIN = str(Path(tempfile.gettempdir()) / f"trio-stack-bench-go-{os.getpid()}" / "hello")
atexit.register(shutil.rmtree, str(Path(GO_BIN).parent), True)
GO = Server(
    "Go net/http (GOMAXPROCS=1)",
    [GO_BIN, "--port", "{port}"],
    probe=[PY, "-m", "benchmarks.peers.go_build", GO_BIN],
    tools=["go"],
    ready=r"serving on",
)

# Which servers each group runs, baseline first.  (server, target ratio vs the baseline or None)
HTTP1: list[tuple[Server, float | None]] = [
    (H11, None),
    (UVICORN_HTTPTOOLS, None),
    (UVICORN_H11, None),
    (GRANIAN, None),
    (RAW_TRIO, None),
    (GO, None),
    (HYPERCORN, None),
    (OURS_REFERENCE, None),
    (OURS, None),
]
H2_SERVERS: list[tuple[Server, float | None]] = [(H2, None), (GRANIAN, None), (HYPERCORN, None), (OURS, None)]
HTTP1_MEM: list[tuple[Server, float | None]] = [(H11, None), (HYPERCORN, None), (OURS_REFERENCE, None), (OURS, None)]
