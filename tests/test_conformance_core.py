"""The conformance kit run on the core's own streams: memory, chaos, TCP, Unix, and framing.

Each test is one ``stack.testing`` check; a failure names the property and hypothesis' smallest
falsifying example. ``HYPOTHESIS_PROFILE=ci`` runs 120 examples per property (stack.testing.CI_EXAMPLES), ``dev`` 30.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis.strategies import SearchStrategy

from layers import framing, tcp, unix
from stack import ByteStream, MessageStream, Stream
from stack.testing import chaos, chaos_pair, check_bytestream, check_detach, check_message_stream, memory_pair, messages

PairMaker = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]

# Small buffers so that send deadlines meet backpressure with small payloads.
CAPACITY = 4096


async def memory_maker() -> tuple[ByteStream, ByteStream]:
    return memory_pair(capacity=CAPACITY)


async def chaos_maker() -> tuple[ByteStream, ByteStream]:
    return chaos_pair(capacity=CAPACITY)


async def tcp_maker() -> tuple[ByteStream, ByteStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    try:
        host, port = listener.address
        client = await tcp.connect(host, port).connect()  # the backlog completes the handshake
        server = await listener.accept()
    finally:
        await listener.aclose()
    return client, server


def unix_maker(directory: Path) -> PairMaker:
    counter = itertools.count()

    async def make() -> tuple[ByteStream, ByteStream]:
        path = str(directory / f"s{next(counter)}.sock")
        listener = await unix.listen(path).listen()
        try:
            client = await unix.connect(path).connect()
            server = await listener.accept()
        finally:
            await listener.aclose()
        return client, server

    return make


@pytest.fixture
def bottom(request: pytest.FixtureRequest, tmp_path: Path) -> PairMaker:
    """The pair maker named by the test's parameter."""
    name = request.param
    if name == "unix":
        return unix_maker(tmp_path)
    return {"memory": memory_maker, "chaos": chaos_maker, "tcp": tcp_maker}[name]


async def attach_chaos(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
    return chaos(a), chaos(b)


FRAMINGS: dict[str, tuple[framing.prefix | framing.delimiter, SearchStrategy[list[bytes]]]] = {
    "prefix": (framing.prefix(4), messages()),
    "delimiter": (framing.delimiter(b"\r\n"), messages(avoid=b"\r\n")),
}


def framed(make: PairMaker, name: str) -> Callable[[], Awaitable[tuple[MessageStream, MessageStream]]]:
    spec = FRAMINGS[name][0]

    async def make_framed() -> tuple[MessageStream, MessageStream]:
        a, b = await make()
        return await spec.attach(a), await spec.attach(b)

    return make_framed


def framing_attach(name: str) -> Callable[[ByteStream, ByteStream], Awaitable[tuple[Stream, Stream]]]:
    spec = FRAMINGS[name][0]

    async def attach(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
        return await spec.attach(a), await spec.attach(b)

    return attach


@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp", "unix"], indirect=True)
async def test_bytestream(bottom: PairMaker) -> None:
    await check_bytestream(bottom)


@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp", "unix"], indirect=True)
async def test_detach_chaos_layer(bottom: PairMaker) -> None:
    await check_detach(bottom, attach_chaos)


async def test_detach_chaos_layer_raw_after_detach() -> None:
    await check_detach(chaos_maker, attach_chaos, raw_after_detach=True)


@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp"], indirect=True)
@pytest.mark.parametrize("name", ["prefix", "delimiter"])
async def test_framing_messages(bottom: PairMaker, name: str) -> None:
    await check_message_stream(framed(bottom, name), messages=FRAMINGS[name][1])


@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp"], indirect=True)
@pytest.mark.parametrize("name", ["prefix", "delimiter"])
async def test_framing_detach(bottom: PairMaker, name: str) -> None:
    await check_detach(bottom, framing_attach(name), messages=FRAMINGS[name][1])
