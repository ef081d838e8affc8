"""QUIC bulk: both ends of ours over loopback, CPU time per MiB and wall MiB/s, in one process or
two (each end's own figures: where a side's time went).

Theory of operation: a :func:`layers.quic.listen` server and a :func:`layers.quic.connect` client
on 127.0.0.1; the client writes ``--mib`` MiB (32 by default) on one stream in 64 KiB sends, then
its FIN; the server reads it all. In one process (the default) two figures: the wall rate (MiB
per second from the first byte to the FIN, which a shared host slows) and the CPU time of the
process per MiB (``time.process_time``: both ends run here, so it is the whole cost of a MiB,
sender and receiver, and moves less with the host's load). What the run learned about the path
is printed too (the datagram size the client ended at). For comparing one change to another on
a busy host; ``python benchmarks/run.py quic-bulk`` is the two-process figure against TLS.

``--two`` runs each end in its own process, pinned as the harness pins them (receiver on CPU 0,
sender on CPU 1), and prints for each side from its first byte to the end: CPU per MiB, the wall
time split into CPU, time waiting for a CPU (``/proc/self/schedstat``: the host's other load)
and time idle in trio's I/O wait (waiting for the peer: ACKs, windows, pacing), page faults,
datagrams sent and received, ACK frames written, packets declared lost, and the host's UDP
receive-buffer drops over the run (``RcvbufErrors`` in ``/proc/net/snmp``). The three parts of
the wall time overlap a little (a wakeup from the I/O wait that then waits for a CPU counts in
both)::

    python -m benchmarks.bench_quic_bulk [--mib 32] [--datagram 1350] [--pmtu on|off] [--runs 3] [--two]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
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


# ---------------------------------------------------------------- --two: one process per side


class _Side(trio.abc.Instrument):
    """One side's counters (``--two``): trio's I/O waits, and what the QUIC layer sends, receives,
    acknowledges and loses (counted by wrapping a few of its methods in this process only)."""

    def __init__(self) -> None:
        self.counts = {"datagrams_sent": 0, "datagrams_received": 0, "acks_written": 0, "packets_lost": 0}
        self.idle = 0.0
        self._since = 0.0
        self.start: tuple[float, float, float, int, dict[str, int]] | None = None

    def before_io_wait(self, timeout: float) -> None:
        self._since = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            self.idle += time.perf_counter() - self._since

    def wrap(self) -> None:
        from aioquic.quic.connection import QuicConnection as Aioquic

        from layers import _quic_engine, udp

        counts = self.counts
        send_batch, recv_batch = udp.UDPStream.send_batch, udp.UDPStream.recv_batch
        lost, ack = _quic_engine.Recovery._on_packets_lost, Aioquic._write_ack_frame

        async def counted_send(stream: Any, datagrams: list[Any]) -> int:
            counts["datagrams_sent"] += len(datagrams)
            return int(await send_batch(stream, datagrams))

        async def counted_recv(stream: Any, max_count: int = 64) -> list[Any]:
            out = await recv_batch(stream, max_count)
            counts["datagrams_received"] += len(out)
            return out

        def counted_lost(recovery: Any, *, packets: Any, **kw: Any) -> None:
            packets = list(packets)
            counts["packets_lost"] += len(packets)
            lost(recovery, packets=packets, **kw)

        def counted_ack(conn: Any, *args: Any, **kw: Any) -> None:
            counts["acks_written"] += 1
            ack(conn, *args, **kw)

        udp.UDPStream.send_batch = counted_send  # type: ignore[method-assign,assignment]
        udp.UDPStream.recv_batch = counted_recv  # type: ignore[method-assign,assignment]
        _quic_engine.Recovery._on_packets_lost = counted_lost  # type: ignore[method-assign,assignment]
        Aioquic._write_ack_frame = counted_ack  # type: ignore[method-assign,assignment]

    def mark(self) -> None:
        """The measured span starts now (the first byte)."""
        self.idle = 0.0
        self.counts.update(dict.fromkeys(self.counts, 0))
        self.start = (time.perf_counter(), time.process_time(), _runq(), _faults(), _snmp())

    def report(self, side: str, mib: int, **extra: Any) -> None:
        assert self.start is not None
        wall0, cpu0, runq0, faults0, snmp0 = self.start
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        snmp = _snmp()
        out = {
            "side": side, "cpu_ms_per_mib": cpu * 1000 / mib, "wall_s": wall, "cpu_s": cpu,
            "runq_s": _runq() - runq0, "idle_s": self.idle, "page_faults": _faults() - faults0,
            **self.counts, "udp_rcvbuf_errors": snmp.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0), **extra,
        }  # fmt: skip
        print("SIDE " + json.dumps(out), flush=True)


def _runq() -> float:
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _snmp() -> dict[str, int]:
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split()[1:] for line in f if line.startswith("Udp:")]
        return dict(zip(rows[0], map(int, rows[1]), strict=False))
    except (OSError, IndexError):
        return {}


async def _receiver(mib: int, limits: quic.QuicLimits, certdir: str, side: _Side) -> None:
    spec = quic.listen("127.0.0.1", 0, (f"{certdir}/leaf.pem", f"{certdir}/leaf.key"), alpn=["bulk"], limits=limits)
    async with trio.open_nursery() as nursery:

        async def handler(conn: Any) -> None:
            got = 0
            stream = await conn.accept_stream()
            while data := await stream.recv(CHUNK):
                if not got:
                    side.mark()
                got += len(data)
            assert got == mib * MIB, got
            side.report("receiver", mib, mib_s=mib / (time.perf_counter() - side.start[0]))  # type: ignore[index]
            await conn.aclose()
            nursery.cancel_scope.cancel()

        address = await nursery.start(functools.partial(spec.serve, handler))
        print(f"READY {address[1]}", flush=True)


async def _sender(port: int, mib: int, limits: quic.QuicLimits, certdir: str, side: _Side) -> None:
    from stack import StackError

    spec = quic.connect(
        "127.0.0.1", port, alpn=["bulk"], server_hostname="localhost", ca=f"{certdir}/ca.pem", limits=limits
    )
    chunk = b"x" * CHUNK
    async with spec.open(deadline=after(10)) as conn:
        stream = conn.open_stream()
        side.mark()
        for _ in range(mib * MIB // CHUNK):
            await stream.send(chunk)
        await stream.done()
        with trio.move_on_after(30), contextlib.suppress(StackError):
            await stream.recv(1)  # the receiver's end: it has it all
        side.report("sender", mib, datagram=conn.engine.datagram_size)


def _one_side(args: argparse.Namespace, limits: quic.QuicLimits) -> None:
    side = _Side()
    side.wrap()
    if args.side == "receiver":
        trio.run(_receiver, args.mib, limits, args.certdir, side, instruments=[side])
    else:
        trio.run(_sender, args.port, args.mib, limits, args.certdir, side, instruments=[side])


def _two_processes(args: argparse.Namespace, ca: Any, leaf: Any) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as certdir:
        for name, pem in (("leaf.pem", leaf.cert_pem), ("leaf.key", leaf.key_pem), ("ca.pem", ca.cert_pem)):
            with open(os.path.join(certdir, name), "wb") as f:
                f.write(pem)
        common = [sys.executable, "-m", "benchmarks.bench_quic_bulk", "--mib", str(args.mib), "--certdir", certdir]
        common += ["--datagram", str(args.datagram)] + (["--pmtu", args.pmtu] if args.pmtu else [])
        for _ in range(args.runs):
            receiver = subprocess.Popen(
                ["taskset", "-c", "0", *common, "--side", "receiver"], stdout=subprocess.PIPE, text=True
            )
            assert receiver.stdout is not None
            line = receiver.stdout.readline()
            if not line.startswith("READY"):
                raise SystemExit(f"the receiver did not start: {line!r}")
            sender = subprocess.run(
                ["taskset", "-c", "1", *common, "--side", "sender", "--port", line.split()[1]],
                stdout=subprocess.PIPE, text=True, timeout=300, check=True,
            )  # fmt: skip
            rest, _ = receiver.communicate(timeout=60)
            sides = [json.loads(x[5:]) for x in (rest + sender.stdout).splitlines() if x.startswith("SIDE ")]
            for r in sides:
                print(
                    f"{r['side']:8}: {r['cpu_ms_per_mib']:.2f} ms CPU/MiB; wall {r['wall_s']:.3f} s"
                    f" = CPU {r['cpu_s']:.3f} + waiting for a CPU {r['runq_s']:.3f} + idle {r['idle_s']:.3f};"
                    f" faults {r['page_faults']}; datagrams sent {r['datagrams_sent']}"
                    f" received {r['datagrams_received']}; ACKs {r['acks_written']}; lost {r['packets_lost']};"
                    f" UDP rcvbuf drops {r['udp_rcvbuf_errors']}"
                    + (f"; {r['mib_s']:.1f} MiB/s" if "mib_s" in r else f"; datagram {r.get('datagram')}")
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--datagram", type=int, default=1350)
    parser.add_argument("--pmtu", choices=["on", "off"], default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--two", action="store_true", help="one process per side, pinned: each side's figures")
    parser.add_argument("--side", choices=["receiver", "sender"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--certdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kw: dict[str, Any] = {"datagram_size": args.datagram}
    if args.pmtu is not None:
        kw["pmtu"] = args.pmtu == "on"
    limits = quic.QuicLimits(**kw)
    if args.side:
        _one_side(args, limits)
        return
    ca = certs.CA.new()
    leaf = ca.issue("localhost", "127.0.0.1")
    if args.two:
        _two_processes(args, ca, leaf)
        return
    for _ in range(args.runs):
        r = trio.run(one_run, args.mib, limits, leaf, ca)
        print(
            f"{args.mib} MiB: {r['mib_s']:.1f} MiB/s wall, {r['cpu_ms_per_mib']:.1f} ms CPU per MiB, "
            f"datagram {r['datagram']}"
        )


if __name__ == "__main__":
    main()
