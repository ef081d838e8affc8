"""Groups `h3` (HTTP/3 requests per second, ours against hypercorn) and `quic-bulk` (one QUIC
stream's throughput against our TLS over TCP).

`h3`: the server (pinned to CPU 0) serves the 13-byte hello world over HTTP/3; the load is
:mod:`benchmarks.h3load` (aioquic's client on asyncio, the same for both servers, pinned to CPU 1):
4 connections, 10 requests in flight on each, 2,000 requests (500 with --quick).

  hypercorn-trio   hypercorn --worker-class trio --quic-bind (its HTTP/3 is aioquic's H3Connection)
  ours             python -m stack serve --hello --cert ... (HTTP/3 on the TLS port's UDP twin)

`quic-bulk`: the sender (CPU 1) writes 64 KiB chunks on one stream, then its FIN; the receiver
(CPU 0) reports MiB / second of stream data from its first byte to the FIN. Baseline: the same
data over our TLS over TCP (:mod:`benchmarks.bench_tls`'s ``ours`` pair, 256 MiB); the QUIC rows
move 32 MiB (8 with --quick). The QUIC rows differ only in path MTU discovery (``QuicLimits.pmtu``):
on (the default: on loopback, whose MTU is 65536, one probe raises the datagrams to 65507 bytes;
the cost of QUIC in aioquic is per packet) and off (1350-byte datagrams, what any Internet path
carries).

    python -m benchmarks.bench_h3 recv quic --certdir DIR [--pmtu off]
    python -m benchmarks.bench_h3 send quic --certdir DIR --port P [--pmtu off]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
from pathlib import Path
from typing import Any

import trio

from benchmarks import bench_tls, worker
from benchmarks.harness import (
    PY,
    Failed,
    Group,
    Measurement,
    PairContender,
    Running,
    Server,
    ServerContender,
    Settings,
    register,
    run_load,
)

CHUNK = 64 * 1024
MIB = 1024 * 1024
TIMEOUT = 180.0
CERTS = bench_tls.certdir() if __name__ != "__main__" else ""  # the parent mints; a worker is told
LEAF, KEY, CA = (str(Path(CERTS) / name) for name in ("leaf.pem", "leaf.key", "ca.pem"))

HYPERCORN_H3 = Server(
    "hypercorn-trio (HTTP/3)",
    [
        *(PY, "-m", "hypercorn", "--worker-class", "trio", "--workers", "0"),
        *("--config", "python:benchmarks.peers.hypercorn_config"),
        *("--bind", "127.0.0.1:{port}", "--quic-bind", "127.0.0.1:{port}"),
        *("--certfile", LEAF, "--keyfile", KEY, "benchmarks.peers.hypercorn_app:app"),
    ],
    requires=["hypercorn.trio", "aioquic"],
    ready=r"\(QUIC\)",
)
OURS_H3 = Server(
    "ours (stack serve, HTTP/3)",
    [PY, "-m", "stack", "serve", "--port", "{port}", "--hello", "--quiet", "--cert", LEAF, "--key", KEY],
    requires=["stack.__main__", "stack.cli.serve", "layers.http3"],
    probe=[PY, "-m", "stack", "serve", "--help"],
    ready=r"serving on",
)


def h3load(server: Running, settings: Settings) -> Measurement:
    n = 500 if settings.quick else 2000
    url = f"https://127.0.0.1:{server.port}/"
    out = run_load([PY, "-m", "benchmarks.h3load", url, "-n", str(n), "-c4", "-m10", "--ca", CA], timeout=240)
    m = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if not m:
        raise Failed(f"h3load printed no RESULT: {out[-300:]!r}")
    result = json.loads(m.group(1))
    if not result["requests"]:
        raise Failed(f"h3load: no request succeeded ({result['errors']} errors)")
    errors = int(result["errors"])
    return Measurement(float(result["value"]), errors, "failed requests" if errors else "")


register(
    Group(
        name="h3",
        title="HTTP/3 hello world under h3load -c4 -m10 (an aioquic client; 2000 requests, 500 with --quick)",
        unit="req/s",
        baseline=HYPERCORN_H3.name,
        contenders=[
            ServerContender(HYPERCORN_H3.name, HYPERCORN_H3, h3load),
            ServerContender(OURS_H3.name, OURS_H3, h3load, target=4.0, ours=True),
        ],
        rounds=3,
        order=45,
        notes="The same load client (aioquic on asyncio) for both servers; both serve HTTP/3 through aioquic's "
        "QUIC engine. Target (issue 19): ours >= 4x hypercorn's HTTP/3.",
    )
)


def quic_params(settings: Settings) -> dict[str, Any]:
    return {"total": (8 if settings.quick else 32) * MIB, "certdir": CERTS}


def quic_pair(name: str, pmtu: str, **kw: Any) -> PairContender:
    me = [PY, "-m", "benchmarks.bench_h3"]
    common = ["--total", "{total}", "--certdir", "{certdir}", "--pmtu", pmtu]
    return PairContender(
        name,
        receiver=[*me, "recv", *common],
        sender=[*me, "send", "--port", "{port}", *common],
        params=quic_params,
        timeout=TIMEOUT,
        requires=["layers.quic:connect,listen,QuicLimits"],
        **kw,
    )


TLS_BASE = "ours, TLS over TCP (layers.tls)"
register(
    Group(
        name="quic-bulk",
        title="bulk throughput of one QUIC stream vs our TLS over TCP, 64 KiB writes, rate at the receiver",
        unit="MiB/s",
        baseline=TLS_BASE,
        contenders=[
            PairContender(
                TLS_BASE,
                receiver=bench_tls.pair("x", "ours").receiver,
                sender=bench_tls.pair("x", "ours").sender,
                params=lambda s: {"total": (64 if s.quick else 256) * MIB, "certdir": CERTS},
                timeout=TIMEOUT,
                requires=bench_tls.OURS_REQUIRES,
            ),
            quic_pair("ours, QUIC stream (path MTU discovery: 65507-byte datagrams)", "on", target=0.5),
            quic_pair("ours, QUIC stream (pmtu off: 1350-byte datagrams)", "off"),
        ],
        rounds=3,
        order=16,
        notes="Target (issue 19): QUIC bulk >= 0.5x TLS over TCP. aioquic builds, encrypts and parses every packet "
        "in Python around its AES-GCM; path MTU discovery (QuicLimits.pmtu, on by default) raises the datagrams to "
        "what loopback carries after one acknowledged probe; the pmtu-off row is the Internet-safe 1350 bytes.",
    )
)


# --------------------------------------------------------------------------- the measured code


async def recv_quic(total: int, certdir: str, pmtu: bool) -> None:
    from layers import quic

    limits = quic.QuicLimits(pmtu=pmtu)
    spec = quic.listen("127.0.0.1", 0, (str(Path(certdir) / "leaf.pem"), str(Path(certdir) / "leaf.key")),
                       alpn=["bulk"], limits=limits)  # fmt: skip
    meter = bench_tls.Meter()
    sizes: list[int] = []

    async with trio.open_nursery() as nursery:

        async def handler(conn: Any) -> None:
            try:
                stream = await conn.accept_stream()
                while data := await stream.recv(CHUNK):
                    meter.add(len(data))
                sizes.append(conn.engine.datagram_size)
                await conn.aclose()  # the sender learns the end now, not after its 30 s
            finally:
                nursery.cancel_scope.cancel()

        address = await nursery.start(functools.partial(spec.serve, handler))
        worker.ready(address[1])
    meter.report(total, pmtu=pmtu, datagram_size=sizes[0] if sizes else None)


async def send_quic(port: int, total: int, certdir: str, pmtu: bool) -> None:
    from layers import quic
    from stack import StackError, after

    limits = quic.QuicLimits(pmtu=pmtu)
    spec = quic.connect("127.0.0.1", port, alpn=["bulk"], server_hostname="localhost",
                        ca=str(Path(certdir) / "ca.pem"), limits=limits)  # fmt: skip
    chunk = b"x" * CHUNK
    async with spec.open(deadline=after(10)) as conn:
        stream = conn.open_stream()
        for _ in range(total // CHUNK):
            await stream.send(chunk)
        await stream.done()
        with trio.move_on_after(30), contextlib.suppress(StackError):
            await stream.recv(1)  # the receiver's end (its connection closing) once it has it all


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of a quic-bulk run")
    parser.add_argument("side", choices=["recv", "send"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--total", type=int, default=32 * MIB)
    parser.add_argument("--certdir", required=True)
    parser.add_argument("--pmtu", choices=["on", "off"], default="on")
    args = parser.parse_args()
    pmtu = args.pmtu == "on"
    if args.side == "recv":
        worker.run(recv_quic, args.total, args.certdir, pmtu, timeout=TIMEOUT)
    else:
        worker.run(send_quic, args.port, args.total, args.certdir, pmtu, timeout=TIMEOUT)


if __name__ == "__main__":
    main()
