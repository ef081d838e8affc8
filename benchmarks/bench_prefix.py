"""Group `prefix`: small length-prefixed messages per second over one TCP connection.

Each message is 32 bytes behind a 4-byte big-endian length; the sender (pinned to CPU 1) makes one
send call per message, 200,000 messages (50,000 with --quick), then finishes; the receiver (pinned
to CPU 0) counts whole messages and reports messages / seconds from its first byte to end of stream.
Contenders:

  hand-written trio.socket      header + body in one sock.send per message; the receiver reads 64 KiB
                                with recv_into, appends to a bytearray, parses headers with
                                int.from_bytes and slices each message out as bytes (baseline)
  hand-written SocketStream     the same over trio.SocketStream (send_all / receive_some)
  ours (framing over layers.tcp) framing.prefix(4).attach(stream); m.send(msg) / m.recv() until EndOfStream

Run one side by hand:  python -m benchmarks.bench_prefix recv socket
                       python -m benchmarks.bench_prefix send socket --port P
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from benchmarks import worker
from benchmarks.harness import PY, Group, PairContender, Settings, register

SIZE = 32
PAYLOAD = bytes(range(SIZE))
RECV = 65536
TIMEOUT = 120.0


def params(settings: Settings) -> dict[str, Any]:
    return {"count": 50_000 if settings.quick else 200_000}


def pair(name: str, impl: str, **kw: Any) -> PairContender:
    me = [PY, "-m", "benchmarks.bench_prefix"]
    return PairContender(
        name,
        receiver=[*me, "recv", impl, "--count", "{count}"],
        sender=[*me, "send", impl, "--port", "{port}", "--count", "{count}"],
        params=params,
        timeout=TIMEOUT,
        **kw,
    )


OURS_REQUIRES = ["stack:Stack,after,EndOfStream", "layers.tcp:connect,listen", "layers.framing:prefix"]

register(
    Group(
        name="prefix",
        title="32-byte messages behind a 4-byte length, one send per message (200k; 50k with --quick)",
        unit="msg/s",
        baseline="hand-written trio.socket",
        contenders=[
            pair("hand-written trio.socket", "socket"),
            pair("hand-written SocketStream", "socketstream"),
            pair("ours (framing over layers.tcp)", "ours", requires=OURS_REQUIRES, target=0.9),
        ],
        rounds=5,
        order=20,
    )
)


# --------------------------------------------------------------------------- the measured code


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.payload = 0
        self.t0 = 0.0

    def start(self) -> None:
        if not self.t0:
            self.t0 = time.perf_counter()

    def report(self, expected: int) -> None:
        seconds = time.perf_counter() - self.t0
        if self.messages != expected or self.payload != expected * SIZE:
            raise SystemExit(f"received {self.messages} messages / {self.payload} bytes, expected {expected}")
        worker.result(self.messages / seconds, messages=self.messages, seconds=seconds)


def parse(buf: bytearray, counter: Counter) -> None:
    """Take every whole message off the front of `buf` (the hand-written receivers share this)."""
    pos = 0
    end = len(buf)
    with memoryview(buf) as mv:
        while end - pos >= 4:
            stop = pos + 4 + int.from_bytes(mv[pos : pos + 4], "big")
            if stop > end:
                break
            msg = bytes(mv[pos + 4 : stop])
            counter.messages += 1
            counter.payload += len(msg)
            pos = stop
    if pos:
        del buf[:pos]


async def recv_socket(count: int) -> None:
    listener, port = await worker.raw_listener()
    worker.ready(port)
    sock, _ = await listener.accept()
    listener.close()
    chunk = bytearray(RECV)
    buf = bytearray()
    counter = Counter()
    with sock, memoryview(chunk) as view:
        while n := await sock.recv_into(chunk, RECV):
            counter.start()
            buf += view[:n]
            parse(buf, counter)
    counter.report(count)


async def send_socket(port: int, count: int) -> None:
    msg = PAYLOAD
    with await worker.raw_connect(port) as sock:
        for _ in range(count):
            data = len(msg).to_bytes(4, "big") + msg
            sent = await sock.send(data)
            while sent < len(data):
                sent += await sock.send(data[sent:])
        sock.shutdown(trio.socket.SHUT_WR)


async def recv_socketstream(count: int) -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    worker.ready(listener.socket.getsockname()[1])
    stream = await listener.accept()
    await listener.aclose()
    buf = bytearray()
    counter = Counter()
    async with stream:
        while data := await stream.receive_some(RECV):
            counter.start()
            buf += data
            parse(buf, counter)
    counter.report(count)


async def send_socketstream(port: int, count: int) -> None:
    msg = PAYLOAD
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for _ in range(count):
            await stream.send_all(len(msg).to_bytes(4, "big") + msg)
        await stream.send_eof()


async def recv_ours(count: int) -> None:
    from layers import framing, tcp
    from stack import EndOfStream, Stack

    counter = Counter()

    async with trio.open_nursery() as nursery:

        async def handler(stream: Any) -> None:
            try:
                m = await framing.prefix(4).attach(stream)
                while True:
                    msg = await m.recv()
                    counter.start()
                    counter.messages += 1
                    counter.payload += len(msg)
            except EndOfStream:
                pass
            finally:
                nursery.cancel_scope.cancel()  # one connection: done (report() checks the count)

        addresses = await nursery.start(Stack(tcp.listen("127.0.0.1", 0)).serve, handler)
        worker.ready(addresses[0][1])
    counter.report(count)


async def send_ours(port: int, count: int) -> None:
    from layers import framing, tcp
    from stack import Stack, after

    msg = PAYLOAD
    s = await Stack(tcp.connect("127.0.0.1", port)).connect(deadline=after(5))
    async with s:
        m = await framing.prefix(4).attach(s)
        for _ in range(count):
            await m.send(msg)
        await m.done()


IMPLS = {
    "socket": (recv_socket, send_socket),
    "socketstream": (recv_socketstream, send_socketstream),
    "ours": (recv_ours, send_ours),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of a prefix benchmark run")
    parser.add_argument("side", choices=["recv", "send"])
    parser.add_argument("impl", choices=sorted(IMPLS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int, default=200_000)
    args = parser.parse_args()
    recv, send = IMPLS[args.impl]
    if args.side == "recv":
        worker.run(recv, args.count, timeout=TIMEOUT)
    else:
        worker.run(send, args.port, args.count, timeout=TIMEOUT)


if __name__ == "__main__":
    main()
