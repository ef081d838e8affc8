"""The conformance kit (``stack.testing``) on the TLS layer: over memory pairs fragmented by chaos,
over loopback TCP, and TLS inside TLS; and ``check_detach`` for STARTTLS-style unwrapping.

These are the proofs docs/design.md asks for ("deadlines lose nothing"): a receive that times out in
the middle of a record keeps it, a send that times out reports an exact ``sent`` and its committed
ciphertext goes first next time (what trio's SSLStream cannot do, trio issue 198), and detach
hands back every byte that came after the peer's close_notify.
"""

from __future__ import annotations

import pytest
import trio
from test_tls_support import certs, client, server

from layers import tcp, tls
from stack import ByteStream, after
from stack.testing import chaos_pair, check_bytestream, check_detach, check_settings

CAPACITY = 4096  # small pipes: send deadlines meet backpressure with small payloads

# A TLS handshake is about 2.5 KB each way. Under the harshest chaos schedules (1-byte fragments
# with a 2 ms pause before every I/O call) that is some 5 s for one handshake and 10 s for TLS
# inside TLS, by construction: the examples over chaos get more time than the kit's default.
CHAOS_TIMEOUT = 30.0
NESTED_CHAOS_TIMEOUT = 60.0
# TLS inside TLS over chaos is the slowest check (two handshakes per example): a quarter of the
# profile's examples (50 in CI). TLS over chaos and everything over TCP run the full count.
NESTED_SCALE = 0.25


async def secure(a: ByteStream, b: ByteStream) -> tuple[tls.TLSStream, tls.TLSStream]:
    """TLS client on ``a``, server on ``b``, both handshakes at once."""
    ends: dict[str, tls.TLSStream] = {}

    async def side(name: str, spec: tls.client | tls.server, lower: ByteStream) -> None:
        ends[name] = await spec.attach(lower, deadline=after(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "c", client(alpn=["test"]), a)
        nursery.start_soon(side, "s", server(alpn=["test"]), b)
    return ends["c"], ends["s"]


async def secure_inner(a: ByteStream, b: ByteStream) -> tuple[tls.TLSStream, tls.TLSStream]:
    """A second TLS session (other names, other certificate) inside the first."""
    outer_c, outer_s = await secure(a, b)
    ends: dict[str, tls.TLSStream] = {}

    async def side(name: str, spec: tls.client | tls.server, lower: ByteStream) -> None:
        ends[name] = await spec.attach(lower, deadline=after(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "c", tls.client(server_hostname="a.test", ca=certs().ca), outer_c)
        nursery.start_soon(side, "s", tls.server(certs().a), outer_s)
    return ends["c"], ends["s"]


async def tcp_pair() -> tuple[ByteStream, ByteStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    async with listener:
        c = await tcp.connect(*listener.address).connect(deadline=after(5))
        s = await listener.accept(deadline=after(5))
    return c, s


async def chaos_lower() -> tuple[ByteStream, ByteStream]:
    return chaos_pair(capacity=CAPACITY)


async def tls_over_chaos() -> tuple[ByteStream, ByteStream]:
    return await secure(*chaos_pair(capacity=CAPACITY))


async def tls_over_tcp() -> tuple[ByteStream, ByteStream]:
    return await secure(*await tcp_pair())


async def tls_in_tls_over_chaos() -> tuple[ByteStream, ByteStream]:
    return await secure_inner(*chaos_pair(capacity=CAPACITY))


async def tls_in_tls_over_tcp() -> tuple[ByteStream, ByteStream]:
    return await secure_inner(*await tcp_pair())


async def test_tls_over_memory_with_chaos() -> None:
    await check_bytestream(tls_over_chaos, example_timeout=CHAOS_TIMEOUT)


async def test_tls_over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kit's recv_into ops must reach the TLS layer's own primitive, not the base class's
    # fallback through _recv_some: count the calls that do.
    calls = 0
    primitive = tls.TLSStream._recv_into

    async def counted(self: tls.TLSStream, buffer: bytearray | memoryview, deadline: float) -> int:
        nonlocal calls
        calls += 1
        return await primitive(self, buffer, deadline)

    monkeypatch.setattr(tls.TLSStream, "_recv_into", counted)
    await check_bytestream(tls_over_tcp)
    assert calls > 0


async def test_tls_inside_tls_over_memory_with_chaos() -> None:
    settings = check_settings(scale=NESTED_SCALE)
    await check_bytestream(tls_in_tls_over_chaos, settings=settings, example_timeout=NESTED_CHAOS_TIMEOUT)


async def test_tls_inside_tls_over_tcp() -> None:
    await check_bytestream(tls_in_tls_over_tcp)


async def test_tls_detach_over_memory_with_chaos() -> None:
    # TLS says goodbye on detach (close_notify), so each side's raw bytes follow its detach.
    await check_detach(chaos_lower, secure, raw_after_detach=True, example_timeout=CHAOS_TIMEOUT)


async def test_tls_detach_over_tcp() -> None:
    await check_detach(tcp_pair, secure, raw_after_detach=True)


async def test_inner_tls_detach_leaves_the_outer_tls_working() -> None:
    async def outer_pair() -> tuple[ByteStream, ByteStream]:
        return await secure(*chaos_pair(capacity=CAPACITY))

    async def inner(a: ByteStream, b: ByteStream) -> tuple[tls.TLSStream, tls.TLSStream]:
        ends: dict[str, tls.TLSStream] = {}

        async def side(name: str, spec: tls.client | tls.server, lower: ByteStream) -> None:
            ends[name] = await spec.attach(lower, deadline=after(10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "c", tls.client(server_hostname="a.test", ca=certs().ca), a)
            nursery.start_soon(side, "s", tls.server(certs().a), b)
        return ends["c"], ends["s"]

    await check_detach(outer_pair, inner, raw_after_detach=True, example_timeout=NESTED_CHAOS_TIMEOUT)
