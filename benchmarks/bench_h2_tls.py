"""Group `h2-tls`: HTTP/2 requests per second under h2load over TLS (ALPN h2).

    h2load -c10 -m10 -n N https://127.0.0.1:P/     (N = 20000; 5000 with --quick)

The same servers and body as the `h2` group, each given a certificate minted at import time (an EC
P-256 leaf from a throwaway CA, :mod:`layers.certs`; h2load does not verify it).  The TLS handshakes
(10 per run) are a small part; the figure is mostly HTTP/2 over TLS records.  Server pinned to CPU
0, h2load to CPU 1.  Baseline: the hand-written h2-on-trio server (trio's SSLStream).  Peers:
granian over TLS and Go's net/http (built-in HTTP/2 over TLS, GOMAXPROCS=1) when ``go`` is installed,
and hypercorn; ours / each peer under the table, with issue 16's targets.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

from benchmarks import servers
from benchmarks.bench_h2 import parse_h2load
from benchmarks.harness import (
    PY,
    Group,
    Measurement,
    Running,
    Server,
    ServerContender,
    Settings,
    register,
    run_load,
)


def _mint() -> tuple[str, str]:
    """A certificate and key for 127.0.0.1 / localhost in a temporary directory (removed at exit)."""
    from layers.certs import CA

    directory = tempfile.mkdtemp(prefix="trio-stack-bench-tls-")
    atexit.register(shutil.rmtree, directory, True)
    return CA.new("benchmark CA").issue("localhost", "127.0.0.1").write(directory, "leaf")


CERT, KEY = _mint()

HAND = Server(
    "h2 (hand-written) TLS",
    [PY, "-m", "benchmarks.peers.h2_server", "--port", "{port}", "--cert", CERT, "--key", KEY],
    ready=r"serving on",
)
HYPERCORN = Server(
    "hypercorn-trio TLS",
    [
        PY,
        "-m",
        "hypercorn",
        *servers.HYPERCORN_ARGS,
        "--certfile",
        CERT,
        "--keyfile",
        KEY,
        "--bind",
        "127.0.0.1:{port}",
        "benchmarks.peers.hypercorn_app:app",
    ],
    requires=["hypercorn.trio"],
    ready=r"Running on",
)
OURS = Server(
    "ours (stack serve) TLS",
    [PY, "-m", "stack", "serve", "--port", "{port}", "--cert", CERT, "--key", KEY, "--hello", "--quiet"],
    requires=["stack.__main__", "stack.cli.serve", "layers.tls", "layers.http2"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)
# What users would pick instead: granian (one worker, one runtime thread; ALPN h2 and http/1.1 with
# --http auto) and Go's net/http on one core (its built-in HTTP/2 over TLS, ALPN h2).
GRANIAN = Server(
    "granian TLS",
    [
        *[PY, "-m", "granian", *servers.GRANIAN_ARGS, "--http", "auto"],
        *["--ssl-certificate", CERT, "--ssl-keyfile", KEY, "benchmarks.peers.asgi_app:app"],
    ],
    requires=servers.GRANIAN.requires,
    ready=servers.GRANIAN.ready,
)
GO = Server(
    "Go net/http (GOMAXPROCS=1) TLS",
    [servers.GO_BIN, "--port", "{port}", "--cert", CERT, "--key", KEY],
    probe=servers.GO.probe,
    tools=servers.GO.tools,
    ready=r"serving on",
)

TLS_SERVERS: list[tuple[Server, float | None]] = [
    (HAND, None),
    (GRANIAN, None),
    (GO, None),
    (HYPERCORN, None),
    (OURS, 0.95),
]
# Targets for ours / peer: >= 0.5x granian, >= 2x the hand-written server (issue 16), >= 4x hypercorn (issue 5).
VERSUS = {GRANIAN.name: 0.5, HAND.name: 2.0, HYPERCORN.name: 4.0}


def h2load_tls(server: Running, settings: Settings) -> Measurement:
    n = 5000 if settings.quick else 20000
    url = f"https://127.0.0.1:{server.port}/"
    return parse_h2load(run_load(["h2load", "-c10", "-m10", f"-n{n}", url], timeout=180))


register(
    Group(
        name="h2-tls",
        title="HTTP/2 hello world over TLS under h2load -c10 -m10 (ALPN h2; 20000 requests, 5000 with --quick)",
        unit="req/s",
        baseline=HAND.name,
        contenders=[
            ServerContender(
                server.name,
                server,
                h2load_tls,
                target=target,
                tools=["h2load"],
                ours=server is OURS,
                versus=VERSUS.get(server.name),
            )
            for server, target in TLS_SERVERS
        ],
        rounds=3,
        order=41,
        notes="Targets for ours: >= 0.95 of the hand-written server (table, issue 5); >= 2x the hand-written server, "
        ">= 0.5x granian (issue 16) and >= 4x hypercorn-trio (ours / peer lines).",
    )
)
