"""Group `client`: HTTP client requests per second, our client against httpx on trio, same server.

    h1: N sequential GETs over one keep-alive HTTP/1.1 connection      (N = 10,000; 2,000 --quick)
    h2: N GETs over one HTTP/2 connection (h2c prior knowledge), 100 in flight at all times:
        100 tasks, each sending its next GET as soon as its last answer's body has been read

The server runs pinned to CPU 0 and must not be the limit: for h1 the raw-trio server
(benchmarks/peers/raw_trio_server.py, a canned answer per request head, about 5x our HTTP/1.1
server's rate), for h2 granian (Rust; h2c on its ``--http auto`` port, one worker, one runtime
thread).  The client runs pinned to CPU 1, in this module::

    python -m benchmarks.bench_client --client ours|httpx --mode h1|h2 --port P --requests N

It opens the connection and sends one warm-up GET (not timed: httpx connects on it), then times
the N GETs (each answer's status checked and its body read in full) and prints
``RESULT {"value": req/s, "errors": n}``.
Ours is ``Stack(tcp.connect(...), http.client(...))`` and ``conn.request``; httpx is
``httpx.AsyncClient`` (``max_connections=1``; for h2 ``http1=False, http2=True``) run by
``trio.run``, which httpcore supports through anyio.  Each mode has its own baseline: httpx in that
mode; under the table, ours / httpx with issue 16's target (>= 2x).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

import trio

from benchmarks import servers
from benchmarks.harness import (
    PY,
    Failed,
    Group,
    Measurement,
    Running,
    Server,
    ServerContender,
    Settings,
    register,
    run_load,
)

BODY = b"Hello, world!"
CONCURRENCY = 100  # GETs in flight on the one HTTP/2 connection


def requests(settings: Settings) -> int:
    return 2000 if settings.quick else 10000


# --------------------------------------------------------------------------- the client process


class Counter:
    """Hands out request slots to the h2 tasks; counts wrong answers."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.errors = 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def run_ours(mode: str, port: int, n: int) -> tuple[float, int]:
    from layers import http, tcp
    from stack.compose import Stack

    stack = Stack(tcp.connect("127.0.0.1", port), http.client(scheme="http", prior_knowledge=mode == "h2"))
    conn = await stack.connect()
    async with conn:

        async def get(counter: Counter) -> None:
            while counter.take():
                response = await conn.request("GET", "/")
                async with response:
                    body = await response.read()
                if response.status != 200 or body != BODY:
                    counter.errors += 1

        return await _timed(mode, n, get)


async def run_httpx(mode: str, port: int, n: int) -> tuple[float, int]:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    h2 = mode == "h2"
    url = f"http://127.0.0.1:{port}/"
    async with httpx.AsyncClient(http1=not h2, http2=h2, limits=limits) as client:

        async def get(counter: Counter) -> None:
            while counter.take():
                response = await client.get(url)
                if response.status_code != 200 or response.content != BODY:
                    counter.errors += 1

        return await _timed(mode, n, get)


async def _timed(mode: str, n: int, get: Any) -> tuple[float, int]:
    warm = Counter(1)
    await get(warm)
    counter = Counter(n)
    t0 = time.perf_counter()
    if mode == "h1":
        await get(counter)
    else:
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(get, counter)
    elapsed = time.perf_counter() - t0
    return n / elapsed, counter.errors + warm.errors


def main() -> None:
    parser = argparse.ArgumentParser(description="one client run of the `client` benchmark group")
    parser.add_argument("--client", choices=["ours", "httpx"], required=True)
    parser.add_argument("--mode", choices=["h1", "h2"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=10000)
    args = parser.parse_args()
    run = run_ours if args.client == "ours" else run_httpx

    async def bounded() -> tuple[float, int]:
        with trio.fail_after(300):
            return await run(args.mode, args.port, args.requests)

    rate, errors = trio.run(bounded)
    print("RESULT " + json.dumps({"value": rate, "errors": errors}), flush=True)


# --------------------------------------------------------------------------- the group


def client_load(client: str, mode: str):  # type: ignore[no-untyped-def]
    def load(server: Running, settings: Settings) -> Measurement:
        cmd = [PY, "-m", "benchmarks.bench_client", "--client", client, "--mode", mode,
               "--port", str(server.port), "--requests", str(requests(settings))]  # fmt: skip
        out = run_load(cmd, timeout=330)
        m = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
        if not m:
            raise Failed(f"client printed no RESULT: {out[-300:]!r}")
        result = json.loads(m.group(1))
        errors = int(result.get("errors", 0))
        return Measurement(float(result["value"]), errors, "wrong answers" if errors else "")

    return load


SERVER_FOR: dict[str, Server] = {"h1": servers.RAW_TRIO, "h2": servers.GRANIAN}
CLIENTS = {
    "httpx": ["httpx", "h2", "anyio"],  # h2: httpx's HTTP/2 extra
    "ours": ["layers.http", "layers.tcp", "stack.compose"],
}
LABEL = {"h1": "HTTP/1.1 sequential", "h2": "h2 x100"}


def contenders() -> list[ServerContender]:
    out = []
    for mode, server in SERVER_FOR.items():
        base = f"httpx {LABEL[mode]}"
        for client, modules in CLIENTS.items():
            out.append(
                ServerContender(
                    f"{'ours' if client == 'ours' else 'httpx'} {LABEL[mode]}",
                    server,
                    client_load(client, mode),
                    requires=[*server.requires, *modules],
                    baseline=base,
                    ours=client == "ours",
                    versus=2.0 if client == "httpx" else None,
                )
            )
    return out


register(
    Group(
        name="client",
        title="HTTP client GETs: 10,000 sequential over one HTTP/1.1 keep-alive connection (raw-trio server), "
        "and over one h2c connection with 100 in flight (granian); 2,000 with --quick",
        unit="req/s",
        baseline=f"httpx {LABEL['h1']}",
        contenders=contenders(),
        rounds=3,
        order=70,
        notes="httpx runs on trio (AsyncClient through anyio); each mode's baseline is httpx in that mode.",
    )
)


if __name__ == "__main__":
    main()
