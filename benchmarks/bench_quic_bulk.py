"""QUIC bulk in one process: both ends of ours over loopback, CPU time per MiB and wall MiB/s.

Theory of operation: a :func:`layers.quic.listen` server and a :func:`layers.quic.connect` client
run in one trio process on 127.0.0.1; the client writes ``--mib`` MiB (32 by default) on one
stream in 64 KiB sends, then its FIN; the server reads it all. Two figures: the wall rate (MiB
per second from the first byte to the FIN, which a shared host slows) and the CPU time of the
process per MiB (``time.process_time``: both ends run here, so it is the whole cost of a MiB,
sender and receiver, and moves less with the host's load). What the run learned about the path
is printed too (the datagram size the client ended at). For comparing one change to another on
a busy host; ``python benchmarks/run.py quic-bulk`` is the two-process figure against TLS::

    python -m benchmarks.bench_quic_bulk [--mib 32] [--datagram 1350] [--pmtu on|off] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import trio

from layers import certs, quic
from stack import after

# (imported by benchmarks/run.py's discovery too: registers no group)

CHUNK = 64 * 1024
MIB = 1024 * 1024


async def one_run(mib: int, limits: quic.QuicLimits, leaf: Any, ca: Any) -> dict[str, Any]:
    total = mib * MIB
    got = 0
    first = last = 0.0
    spec = quic.listen("127.0.0.1", 0, leaf, alpn=["bulk"], limits=limits)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def handler(conn: Any) -> None:
            nonlocal got, first, last
            stream = await conn.accept_stream()
            while data := await stream.recv(CHUNK):
                if not got:
                    first = time.perf_counter()
                got += len(data)
            last = time.perf_counter()
            done.set()

        address = await nursery.start(functools.partial(spec.serve, handler))
        client = quic.connect("127.0.0.1", address[1], alpn=["bulk"], server_hostname="localhost", ca=ca, limits=limits)
        chunk = b"x" * CHUNK
        cpu0 = time.process_time()
        async with client.open(deadline=after(10)) as conn:
            stream = conn.open_stream()
            for _ in range(total // CHUNK):
                await stream.send(chunk)
            await stream.done()
            await done.wait()
            out["datagram"] = conn.engine.datagram_size
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    assert got == total, (got, total)
    out["mib_s"] = mib / (last - first)
    out["cpu_ms_per_mib"] = cpu * 1000 / mib
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--datagram", type=int, default=1350)
    parser.add_argument("--pmtu", choices=["on", "off"], default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kw: dict[str, Any] = {"datagram_size": args.datagram}
    if args.pmtu is not None:
        kw["pmtu"] = args.pmtu == "on"
    limits = quic.QuicLimits(**kw)
    ca = certs.CA.new()
    leaf = ca.issue("localhost", "127.0.0.1")
    for _ in range(args.runs):
        r = trio.run(one_run, args.mib, limits, leaf, ca)
        print(
            f"{args.mib} MiB: {r['mib_s']:.1f} MiB/s wall, {r['cpu_ms_per_mib']:.1f} ms CPU per MiB, "
            f"datagram {r['datagram']}"
        )


if __name__ == "__main__":
    main()
