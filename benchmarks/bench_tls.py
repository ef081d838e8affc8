"""Group `tls`: bulk TLS throughput over one loopback TCP connection, ours against trio.SSLStream.

The sender (pinned to CPU 1) writes 512 MiB (128 MiB with --quick) of application data in 64 KiB
writes, then closes the TLS session; the receiver (pinned to CPU 0) reads up to 64 KiB per call
and reports MiB / second of plaintext from its first byte to the end of the stream. Both ends of a
run use the same implementation, the same certificate (a P-256 leaf from a throwaway CA, minted
once per run by the parent process) and the same protocol: TLS 1.3 with
TLS_AES_256_GCM_SHA384 (OpenSSL's first choice on both).

  trio.SSLStream     trio.open_tcp_stream + trio.SSLStream(send_all / receive_some)   (baseline)
  ours (layers.tls)  Stack(tcp.connect(...), tls.client(...)) + send / Stack(tcp.listen, tls.server).serve + recv
  ours, recv_into    the same, the receiver reading with recv_into a reused 64 KiB bytearray

Run one side by hand:  python -m benchmarks.bench_tls recv ours --certdir DIR      (or ours-into)
                       python -m benchmarks.bench_tls send ours --certdir DIR --port P
(``python -m benchmarks.bench_tls certs --certdir DIR`` mints the certificates into DIR.)
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks import worker
from benchmarks.harness import PY, Group, PairContender, Settings, register

CHUNK = 64 * 1024
MIB = 1024 * 1024
TIMEOUT = 180.0

_CERTDIR: list[str] = []


def certdir() -> str:
    """A directory with ``ca.pem``, ``leaf.pem`` and ``leaf.key``, minted once per parent process."""
    if not _CERTDIR:
        path = tempfile.mkdtemp(prefix="bench-tls-")
        atexit.register(shutil.rmtree, path, True)
        mint(path)
        _CERTDIR.append(path)
    return _CERTDIR[0]


def mint(path: str) -> None:
    from layers.certs import CA

    ca = CA.new("bench_tls CA")
    ca.write(str(Path(path) / "ca.pem"))
    ca.issue("localhost", "127.0.0.1").write(path, "leaf")


def params(settings: Settings) -> dict[str, Any]:
    return {"total": (128 if settings.quick else 512) * MIB, "certdir": certdir()}


def pair(name: str, impl: str, **kw: Any) -> PairContender:
    me = [PY, "-m", "benchmarks.bench_tls"]
    return PairContender(
        name,
        receiver=[*me, "recv", impl, "--total", "{total}", "--certdir", "{certdir}"],
        sender=[*me, "send", impl, "--port", "{port}", "--total", "{total}", "--certdir", "{certdir}"],
        params=params,
        timeout=TIMEOUT,
        **kw,
    )


OURS_REQUIRES = ["stack:Stack,after", "layers.tcp:connect,listen", "layers.tls:client,server", "layers.certs:CA"]

register(
    Group(
        name="tls",
        title="bulk TLS 1.3 throughput, 512 MiB in 64 KiB writes (128 MiB with --quick), plaintext rate at receiver",
        unit="MiB/s",
        baseline="trio.SSLStream",
        contenders=[
            pair("trio.SSLStream", "trio", requires=["layers.certs:CA"]),
            pair("ours (layers.tls)", "ours", requires=OURS_REQUIRES, target=1.0),
            pair("ours, recv_into", "ours-into", requires=OURS_REQUIRES),
        ],
        rounds=5,
        order=15,
        notes="Same certificate, TLS version and cipher on both rows; the sender ends with close_notify.",
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

    def report(self, expected: int, **extra: Any) -> None:
        seconds = time.perf_counter() - self.t0
        if self.n != expected:
            raise SystemExit(f"received {self.n} bytes, expected {expected}")
        worker.result(self.n / MIB / seconds, bytes=self.n, seconds=seconds, **extra)


def trio_contexts(certdir: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(Path(certdir) / "leaf.pem"), str(Path(certdir) / "leaf.key"))
    server.num_tickets = 0
    client = ssl.create_default_context(cafile=str(Path(certdir) / "ca.pem"))
    return server, client


async def recv_trio(total: int, certdir: str) -> None:
    server_ctx, _ = trio_contexts(certdir)
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    worker.ready(listener.socket.getsockname()[1])
    tcp_stream = await listener.accept()
    await listener.aclose()
    stream = trio.SSLStream(tcp_stream, server_ctx, server_side=True)
    await stream.do_handshake()
    meter = Meter()
    async with stream:
        while data := await stream.receive_some(CHUNK):
            meter.add(len(data))
    meter.report(total, cipher=stream.cipher()[0])


async def send_trio(port: int, total: int, certdir: str) -> None:
    _, client_ctx = trio_contexts(certdir)
    tcp_stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp_stream, client_ctx, server_hostname="localhost")
    chunk = b"x" * CHUNK
    async with stream:
        await stream.do_handshake()
        for _ in range(total // CHUNK):
            await stream.send_all(chunk)
        await stream.unwrap()  # close_notify, and wait for the receiver's


async def recv_ours(total: int, certdir: str, into: bool = False) -> None:
    from layers import tcp, tls
    from stack import Stack

    spec = tls.server((str(Path(certdir) / "leaf.pem"), str(Path(certdir) / "leaf.key")))
    meter = Meter()
    cipher: list[str] = []

    async with trio.open_nursery() as nursery:

        async def handler(stream: Any) -> None:
            cipher.append(stream.info["cipher"])
            try:
                if into:  # what a reader that consumes the bytes in place does: no bytes object per call
                    buffer = bytearray(CHUNK)
                    while n := await stream.recv_into(buffer):
                        meter.add(n)
                else:
                    while data := await stream.recv(CHUNK):
                        meter.add(len(data))
            finally:
                nursery.cancel_scope.cancel()  # one connection: done (report() checks the count)

        addresses = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), spec).serve, handler)
        worker.ready(addresses[0][1])
    meter.report(total, cipher=cipher[0] if cipher else None)


async def recv_ours_into(total: int, certdir: str) -> None:
    await recv_ours(total, certdir, into=True)


async def send_ours(port: int, total: int, certdir: str) -> None:
    from layers import tcp, tls
    from stack import Stack, after

    spec = tls.client(server_hostname="localhost", ca=str(Path(certdir) / "ca.pem"))
    chunk = b"x" * CHUNK
    s = await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10))
    async with s:
        for _ in range(total // CHUNK):
            await s.send(chunk)
        await s.done()  # close_notify
        await s.recv()  # the receiver's close_notify as it closes


IMPLS = {
    "trio": (recv_trio, send_trio),
    "ours": (recv_ours, send_ours),
    "ours-into": (recv_ours_into, send_ours),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of a tls benchmark run")
    parser.add_argument("side", choices=["recv", "send", "certs"])
    parser.add_argument("impl", nargs="?", choices=sorted(IMPLS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--total", type=int, default=512 * MIB)
    parser.add_argument("--certdir", required=True)
    args = parser.parse_args()
    if args.side == "certs":
        mint(args.certdir)
        return
    recv, send = IMPLS[args.impl]
    if args.side == "recv":
        worker.run(recv, args.total, args.certdir, timeout=TIMEOUT)
    else:
        worker.run(send, args.port, args.total, args.certdir, timeout=TIMEOUT)


if __name__ == "__main__":
    main()
