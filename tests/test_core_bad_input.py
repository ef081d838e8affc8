"""Bad input from the network: bounded memory, a stack error, and the server keeps serving."""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from layers import framing, tcp
from stack import Broken, MessageTooLarge, Stack, StackError, after
from stack.streams import Stream

MiB = 1024 * 1024


class Server:
    """An echo server for a framing spec that records the error each connection ended with."""

    def __init__(self, spec: Any) -> None:
        self.stack = Stack(tcp.listen("127.0.0.1", 0), spec)
        self.spec = spec
        self.errors: list[StackError] = []
        self.failed = trio.Event()
        self.address: tuple[str, int] = ("", 0)

    async def handler(self, stream: Any) -> None:
        try:
            async for msg in stream:
                await stream.send(msg)
        except StackError as exc:
            self.errors.append(exc)
            self.failed.set()
            raise

    async def wait_for_error(self) -> StackError:
        with trio.fail_after(10):
            await self.failed.wait()
        return self.errors[0]

    async def check_still_serving(self) -> None:
        async with await Stack(tcp.connect(*self.address), self.spec).connect(deadline=after(5)) as conn:
            for msg in (b"still", b"serving"):
                await conn.send(msg)
                with trio.fail_after(5):
                    assert await conn.recv() == msg


@asynccontextmanager
async def serving(spec: Any) -> AsyncIterator[Server]:
    server = Server(spec)
    async with trio.open_nursery() as nursery:
        [server.address] = await nursery.start(functools.partial(server.stack.serve, server.handler))
        yield server
        nursery.cancel_scope.cancel()


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Yields a list that holds, after the block, the peak traced memory above the start."""
    result: list[int] = []
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        yield result
        result.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


async def drain_until_closed(stream: Stream) -> None:
    """Read until the server closes the connection (end of stream or a reset)."""
    assert hasattr(stream, "recv")
    with trio.fail_after(10):
        try:
            while await stream.recv():
                pass
        except Broken:
            pass


async def test_huge_length_header_is_refused_before_allocation() -> None:
    async with serving(framing.prefix(8, max_message=MiB)) as server:
        client = await tcp.connect(*server.address).connect()
        with peak_memory() as peak:
            await client.send((1 << 62).to_bytes(8, "big") + b"the start of an enormous message")
            error = await server.wait_for_error()
        assert isinstance(error, MessageTooLarge)
        assert error.size == 1 << 62 and error.limit == MiB
        assert peak[0] < MiB, f"peak memory {peak[0]} bytes for a refused 2**62-byte message"
        await drain_until_closed(client)
        await client.aclose()
        await server.check_still_serving()


async def test_endless_line_is_refused_within_bounded_memory() -> None:
    limit = 64 * 1024
    async with serving(framing.delimiter(b"\n", max_message=limit)) as server:
        client = await tcp.connect(*server.address).connect()
        chunk = b"a" * 65536
        sent = 0
        with peak_memory() as peak:
            try:
                with trio.move_on_after(10):
                    while sent < 8 * MiB and not server.errors:
                        await client.send(chunk)
                        sent += len(chunk)
            except Broken:
                pass  # the server closed (reset) the connection under us
            error = await server.wait_for_error()
        assert isinstance(error, MessageTooLarge)
        assert error.limit == limit
        assert peak[0] < 4 * limit + MiB // 2, f"peak memory {peak[0]} bytes for an endless line"
        await client.aclose()
        await server.check_still_serving()


async def test_garbage_then_reset_is_broken_and_the_server_goes_on() -> None:
    async with serving(framing.prefix(4)) as server:
        client = await tcp.connect(*server.address).connect()
        await client.send(b"\x00\x00\x01")  # three bytes of a four-byte header
        await trio.sleep(0.05)
        client.reset()  # RST
        error = await server.wait_for_error()
        assert isinstance(error, Broken), f"expected Broken, got {error!r}"
        await server.check_still_serving()


async def test_garbage_frames_then_reset_mid_message() -> None:
    async with serving(framing.prefix(4)) as server:
        client = await tcp.connect(*server.address).connect()
        await client.send((1000).to_bytes(4, "big") + b"x" * 10)  # a message cut short
        await trio.sleep(0.05)
        client.reset()
        error = await server.wait_for_error()
        assert isinstance(error, Broken), f"expected Broken, got {error!r}"
        await server.check_still_serving()
