"""The HTTP server programs the http1, http1-mem and h2 groups start (one fresh process per run).

Each is a :class:`harness.Server`: a command with ``{port}``, run from the repository root pinned to
CPU 0.  Its pid must be the serving process (the http1-mem group reads its RSS), so nothing here
forks workers.  A server whose ``requires`` does not import, or whose ``probe`` fails, shows up as
"not available" in the tables instead of failing the run.

To add a contender to every HTTP group: add a Server below and name it in HTTP1 / H2.
"""

from __future__ import annotations

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
# log (as the peers), and prints "serving on URL" when ready.  Until stack/cli.py exists (and
# `serve --help` exits 0) the contender is reported as "not available".
OURS = Server(
    "ours (stack serve)",
    [PY, "-m", "stack", "serve", "--no-tls", "--port", "{port}", "--hello", "--quiet"],
    requires=["stack.__main__", "stack.cli.serve"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)
# ---------------------------------------------------------------------------------------------------

# Which servers each group runs, baseline first.  (server, target ratio vs the baseline or None)
HTTP1: list[tuple[Server, float | None]] = [(H11, None), (HYPERCORN, None), (OURS, None)]
H2_SERVERS: list[tuple[Server, float | None]] = [(H2, None), (HYPERCORN, None), (OURS, None)]
HTTP1_MEM: list[tuple[Server, float | None]] = [(H11, None), (HYPERCORN, None), (OURS, None)]
