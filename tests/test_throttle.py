"""The throttle layer: token buckets, byte and message rates, deadlines (Timeout.sent, nothing
lost), and the conformance kit at every level.

Rate tests run on trio's MockClock with autojump (the ``autojump_clock`` fixture of pytest-trio):
virtual time jumps whenever every task waits, so the figures are exact and no test waits on the
wall clock.
"""

from __future__ import annotations

import pytest
import trio
from test_udp import DATAGRAMS, udp_pair

from layers import framing, tcp, udp
from layers.throttle import Rate, ThrottledBytes, ThrottledMessages, TokenBucket, limit
from stack import ByteStream, MessageStream, Stream, Timeout, after
from stack.testing import chaos_pair, check_bytestream, check_detach, check_message_stream, memory_pair

BIG = 1 << 20  # memory pipes that never push back: what is measured is the throttle alone


async def drain(stream: ByteStream, into: bytearray) -> None:
    while data := await stream.recv():
        into += data


# ---- the bucket -----------------------------------------------------------------------------


def test_token_bucket() -> None:
    bucket = TokenBucket(Rate(100, burst=50), now=0.0)
    assert bucket.available(0.0) == 50  # starts full
    bucket.take(80, 0.0)  # into debt
    assert bucket.available(0.0) == -30
    assert bucket.wait(10, 0.0) == pytest.approx(0.4)
    assert bucket.wait(1000, 0.0) == pytest.approx(0.8)  # capped at the burst
    assert bucket.available(10.0) == 50  # never more than the burst
    bucket.take(5, 10.0)
    bucket.give(100)
    assert bucket.available(10.0) == 50


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError):
        Rate(0)
    with pytest.raises(ValueError):
        Rate(10, burst=0.5)
    assert Rate(1000).capacity == 100 and Rate(5).capacity == 1
    assert limit(send=10).send == Rate(10)


async def test_attach_checks_the_kind_below() -> None:
    a, _ = memory_pair()
    with pytest.raises(TypeError, match="MessageStream"):
        await limit(send_messages=5).attach(a)
    with pytest.raises(TypeError, match="ByteStream or a MessageStream"):
        await limit(send=5).attach(object())
    assert isinstance(await limit(send=5).attach(a), ThrottledBytes)
    assert isinstance(await limit(send_messages=5).attach(await framing.prefix().attach(a)), ThrottledMessages)


# ---- bytes ------------------------------------------------------------------------------------------


async def test_send_rate(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_pair(capacity=BIG)
    slow = await limit(send=Rate(1000, burst=100)).attach(a)
    got = bytearray()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, b, got)
        await slow.send(bytes(range(256)) * 40)  # 10240 bytes: 100 at once, the rest at 1000/s
        await slow.done()
    elapsed = trio.current_time() - start
    assert got == bytes(range(256)) * 40
    assert 10.14 <= elapsed <= 10.15
    assert slow.waited == pytest.approx(elapsed, abs=0.01)


async def test_send_deadline_commits_what_the_budget_allows(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_pair(capacity=BIG)
    slow = await limit(send=Rate(1000, burst=100)).attach(a)
    data = bytes(range(256)) * 12  # 3072 bytes
    with pytest.raises(Timeout) as info:
        await slow.send(data, deadline=after(1.0))
    sent = info.value.sent
    assert sent is not None and 1090 <= sent <= 1100  # the burst, plus one second's worth (to a 10 ms slice)
    await slow.send(data[sent:])  # the stream goes on; the rest follows the committed part
    await slow.done()
    got = bytearray()
    await drain(b, got)
    assert got == data  # every committed byte delivered, once, in order


async def test_send_deadline_with_no_budget_at_all(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_pair(capacity=BIG)
    slow = await limit(send=Rate(10, burst=1)).attach(a)
    await slow.send(b"x")  # empties the bucket
    start = trio.current_time()
    with pytest.raises(Timeout) as info:
        await slow.send(b"yz", deadline=after(0.05))  # the next byte comes in 0.1 s
    assert info.value.sent == 0
    assert trio.current_time() == start  # it did not wait for nothing
    await slow.send(b"yz")
    await slow.done()
    assert await b.recv_exactly(3) == b"xyz"


async def test_recv_waits_for_budget_and_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_pair(capacity=BIG)
    data = bytes(range(256)) * 4  # 1024 bytes
    await a.send(data)
    await a.done()
    slow = await limit(recv=Rate(100, burst=10)).attach(b)
    first = await slow.recv(1000)
    assert first == data[:10]  # what the burst allows
    with pytest.raises(Timeout):
        await slow.recv_exactly(500, deadline=after(1.0))  # needs about 5 s of budget
    rest = await slow.recv_exactly(len(data) - 10)  # nothing was lost by the timeout
    assert first + rest == data
    assert await slow.recv() == b""


async def test_recv_rate_is_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_pair(capacity=100)
    slow = await limit(recv=Rate(1000, burst=100)).attach(b)
    got = bytearray()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, slow, got)
        await a.send(b"z" * 5100)  # the sender is held back by the reader's rate
        await a.done()
    assert got == b"z" * 5100
    assert 4.99 <= trio.current_time() - start <= 5.02


# ---- messages -----------------------------------------------------------------------------------------


async def prefix_pair(capacity: int = BIG) -> tuple[MessageStream, MessageStream]:
    a, b = memory_pair(capacity=capacity)
    return await framing.prefix().attach(a), await framing.prefix().attach(b)


async def test_message_rate(autojump_clock: trio.testing.MockClock) -> None:
    a, b = await prefix_pair()
    paced = await limit(send_messages=Rate(10, burst=1)).attach(a)
    start = trio.current_time()
    for i in range(21):
        await paced.send(b"%d" % i)
    assert 1.99 <= trio.current_time() - start <= 2.01  # one at once, then 20 at 10/s
    assert [await b.recv() for _ in range(21)] == [b"%d" % i for i in range(21)]


async def test_message_bytes_rate_goes_into_debt(autojump_clock: trio.testing.MockClock) -> None:
    a, b = await prefix_pair()
    paced = await limit(send=Rate(100, burst=10)).attach(a)
    start = trio.current_time()
    await paced.send(b"m" * 1000)  # larger than the burst: goes when the bucket is full, into debt
    assert trio.current_time() == start
    await paced.send(b"!")  # waits until the debt is paid back: 991 tokens at 100/s
    assert 9.9 <= trio.current_time() - start <= 9.92
    assert await b.recv() == b"m" * 1000 and await b.recv() == b"!"


async def test_message_send_deadline_commits_nothing(autojump_clock: trio.testing.MockClock) -> None:
    a, b = await prefix_pair()
    paced = await limit(send_messages=Rate(1, burst=1)).attach(a)
    await paced.send(b"first")
    with pytest.raises(Timeout) as info:
        await paced.send(b"second", deadline=after(0.5))
    assert info.value.committed is False and info.value.sent == 0
    await paced.send(b"third")  # the budget was not spent on the refused one
    await paced.done()
    assert [m async for m in b] == [b"first", b"third"]


async def test_message_recv_rate_and_deadline(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    a, b = await prefix_pair()
    for i in range(5):
        await a.send(b"%d" % i)
    await a.done()
    paced = await limit(recv_messages=Rate(2, burst=1), recv=Rate(1000)).attach(b)
    assert await paced.recv() == b"0"
    with pytest.raises(Timeout):
        await paced.recv(deadline=after(0.2))  # the next message is allowed in 0.5 s
    assert [m async for m in paced] == [b"1", b"2", b"3", b"4"]  # nothing lost by the timeout
    # at 0.5, 1.0, 1.5 and 2.0 s; the end of the stream is read with the budget of 2.5 s
    assert 2.49 <= trio.current_time() - t0 <= 2.51


async def test_datagrams_pass_through_with_their_address() -> None:
    with trio.fail_after(5):
        server = await udp.bind().connect()
        paced = await limit(send_messages=1000, recv_messages=1000).attach(server)
        async with paced:
            client = await udp.connect(*server.info["local"]).connect()
            async with client:
                await client.send(b"hi")
                dgram = await paced.recv()
                assert isinstance(dgram, udp.Datagram)
                await paced.send(dgram)  # the address survives the layer
                assert await client.recv(deadline=after(5)) == b"hi"


# ---- the conformance kit ------------------------------------------------------------------------------

FAST = limit(send=Rate(20e6, burst=65536), recv=Rate(20e6, burst=65536))
FAST_MESSAGES = limit(send=Rate(20e6, burst=65536), send_messages=Rate(50_000, burst=100), recv_messages=50_000)


async def throttle_both(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
    return await FAST.attach(a), await FAST.attach(b)


async def throttled_chaos() -> tuple[ByteStream, ByteStream]:
    a, b = chaos_pair(capacity=4096)
    return await FAST.attach(a), await FAST.attach(b)  # type: ignore[return-value]


async def throttled_tcp() -> tuple[ByteStream, ByteStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    async with listener:
        c = await tcp.connect(*listener.address).connect(deadline=after(5))
        s = await listener.accept(deadline=after(5))
    return await FAST.attach(c), await FAST.attach(s)  # type: ignore[return-value]


async def test_conformance_bytes_over_chaos() -> None:
    await check_bytestream(throttled_chaos)


async def test_conformance_bytes_over_tcp() -> None:
    await check_bytestream(throttled_tcp)


async def test_detach_over_memory_and_chaos() -> None:
    async def memory() -> tuple[ByteStream, ByteStream]:
        return memory_pair(capacity=4096)

    async def chaos() -> tuple[ByteStream, ByteStream]:
        return chaos_pair(capacity=4096)

    await check_detach(memory, throttle_both)
    await check_detach(chaos, throttle_both)


async def test_conformance_messages_over_prefix_over_chaos() -> None:
    async def make() -> tuple[MessageStream, MessageStream]:
        a, b = chaos_pair(capacity=4096)
        spec = framing.prefix()
        return await FAST_MESSAGES.attach(await spec.attach(a)), await FAST_MESSAGES.attach(await spec.attach(b))  # type: ignore[return-value]

    await check_message_stream(make)


async def test_conformance_messages_over_udp() -> None:
    async def make() -> tuple[MessageStream, MessageStream]:
        a, b = await udp_pair()
        return await FAST_MESSAGES.attach(a), await FAST_MESSAGES.attach(b)  # type: ignore[return-value]

    await check_message_stream(make, messages=DATAGRAMS, eof=False)
