"""Group `tcp`: bulk TCP throughput, one connection over 127.0.0.1.

The sender (pinned to CPU 1) writes 1 GiB (256 MiB with --quick) in 64 KiB writes, then half-closes;
the receiver (pinned to CPU 0) reads up to 64 KiB per call and reports bytes / seconds from its first
byte to end of stream.  Contenders, sender and receiver written the same way each time:

  raw trio.socket   sock.send on a memoryview / sock.recv_into a reusable bytearray (baseline)
  trio.SocketStream open_tcp_stream + send_all / open_tcp_listeners + receive_some
  ours (layers.tcp) Stack(tcp.connect(...)).connect() + send / Stack(tcp.listen(...)).serve() + recv

Run one side by hand:  python -m benchmarks.bench_tcp recv raw
                       python -m benchmarks.bench_tcp send raw --port P
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from benchmarks import worker
from benchmarks.harness import PY, Group, PairContender, Settings, register

CHUNK = 64 * 1024
MIB = 1024 * 1024
TIMEOUT = 120.0


def params(settings: Settings) -> dict[str, Any]:
    return {"total": (256 if settings.quick else 1024) * MIB}


def pair(name: str, impl: str, **kw: Any) -> PairContender:
    me = [PY, "-m", "benchmarks.bench_tcp"]
    return PairContender(
        name,
        receiver=[*me, "recv", impl, "--total", "{total}"],
        sender=[*me, "send", impl, "--port", "{port}", "--total", "{total}"],
        params=params,
        timeout=TIMEOUT,
        **kw,
    )


OURS_REQUIRES = ["stack:Stack,after", "layers.tcp:connect,listen"]

register(
    Group(
        name="tcp",
        title="bulk TCP throughput, 1 GiB in 64 KiB writes (256 MiB with --quick), rate at the receiver",
        unit="MiB/s",
        baseline="raw trio.socket",
        contenders=[
            pair("raw trio.socket", "raw"),
            pair("trio.SocketStream", "socketstream"),
            pair("ours (layers.tcp)", "ours", requires=OURS_REQUIRES, target=0.95),
        ],
        rounds=7,
        order=10,
    )
)


# --------------------------------------------------------------------------- the measured code


class Meter:
    def __init__(self) -> None:
        self.n = 0
        self.t0 = 0.0

    def add(self, n: int) -> None:
        if not self.n:
            self.t0 = time.perf_counter()
        self.n += n

    def report(self, expected: int) -> None:
        seconds = time.perf_counter() - self.t0
        if self.n != expected:
            raise SystemExit(f"received {self.n} bytes, expected {expected}")
        worker.result(self.n / MIB / seconds, bytes=self.n, seconds=seconds)


async def recv_raw(total: int) -> None:
    listener, port = await worker.raw_listener()
    worker.ready(port)
    sock, _ = await listener.accept()
    listener.close()
    buf = bytearray(CHUNK)
    meter = Meter()
    with sock:
        while n := await sock.recv_into(buf, CHUNK):
            meter.add(n)
    meter.report(total)


async def send_raw(port: int, total: int) -> None:
    view = memoryview(b"x" * CHUNK)
    with await worker.raw_connect(port) as sock:
        for _ in range(total // CHUNK):
            sent = await sock.send(view)
            while sent < CHUNK:
                sent += await sock.send(view[sent:])
        sock.shutdown(trio.socket.SHUT_WR)


async def recv_socketstream(total: int) -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    worker.ready(listener.socket.getsockname()[1])
    stream = await listener.accept()
    await listener.aclose()
    meter = Meter()
    async with stream:
        while data := await stream.receive_some(CHUNK):
            meter.add(len(data))
    meter.report(total)


async def send_socketstream(port: int, total: int) -> None:
    chunk = b"x" * CHUNK
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for _ in range(total // CHUNK):
            await stream.send_all(chunk)
        await stream.send_eof()


async def recv_ours(total: int) -> None:
    from layers import tcp
    from stack import Stack

    meter = Meter()

    async with trio.open_nursery() as nursery:

        async def handler(stream: Any) -> None:
            try:
                while data := await stream.recv(CHUNK):
                    meter.add(len(data))
            finally:
                nursery.cancel_scope.cancel()  # one connection: done (report() checks the count)

        addresses = await nursery.start(Stack(tcp.listen("127.0.0.1", 0)).serve, handler)
        worker.ready(addresses[0][1])
    meter.report(total)


async def send_ours(port: int, total: int) -> None:
    from layers import tcp
    from stack import Stack, after

    chunk = b"x" * CHUNK
    s = await Stack(tcp.connect("127.0.0.1", port)).connect(deadline=after(5))
    async with s:
        for _ in range(total // CHUNK):
            await s.send(chunk)
        await s.done()


IMPLS = {
    "raw": (recv_raw, send_raw),
    "socketstream": (recv_socketstream, send_socketstream),
    "ours": (recv_ours, send_ours),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of a tcp benchmark run")
    parser.add_argument("side", choices=["recv", "send"])
    parser.add_argument("impl", choices=sorted(IMPLS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--total", type=int, default=1024 * MIB)
    args = parser.parse_args()
    recv, send = IMPLS[args.impl]
    if args.side == "recv":
        worker.run(recv, args.total, timeout=TIMEOUT)
    else:
        worker.run(send, args.port, args.total, timeout=TIMEOUT)


if __name__ == "__main__":
    main()
