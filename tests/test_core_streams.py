"""Unit tests of the base rules (stack/streams.py) and of Stack (stack/compose.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from layers import framing, tcp
from stack import (
    FOREVER,
    Broken,
    Busy,
    ByteStream,
    Closed,
    EndOfStream,
    Info,
    MessageTooLarge,
    ProtocolError,
    Stack,
    StackError,
    Timeout,
    after,
)
from stack.testing import ChaosSchedule, chaos, memory_pair

# ---- one task per direction: Busy ----------------------------------------------------------


async def test_second_recv_is_busy_and_the_first_is_unaffected() -> None:
    a, b = memory_pair()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, b.recv()))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            await b.recv()
        with pytest.raises(Busy):
            await b.recv_exactly(1)
        with pytest.raises(Busy):
            await b.recv_until(b"\n")
        await a.send(b"hello")
    assert got == [b"hello"]


async def test_second_send_is_busy_while_the_first_is_blocked() -> None:
    a, b = memory_pair(capacity=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b"0123456789")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            await a.send(b"x")
        with pytest.raises(Busy):
            await a.done()
        assert await b.recv_exactly(10) == b"0123456789"
    await a.send(b"x")  # free again
    assert await b.recv() == b"x"


async def _append(into: list[bytes], call: Any) -> None:
    into.append(await call)


# ---- done / aclose / Closed ----------------------------------------------------------------


async def test_done_is_idempotent_and_send_after_it_is_closed() -> None:
    a, b = memory_pair()
    await a.send(b"last")
    await a.done()
    await a.done()
    with pytest.raises(Closed):
        await a.send(b"more")
    assert await b.recv() == b"last"
    assert await b.recv() == b""
    assert await b.recv() == b""
    await b.send(b"half-close: the other way still works")
    assert await a.recv() == b"half-close: the other way still works"


async def test_aclose_is_idempotent_and_every_call_after_it_is_closed() -> None:
    a, b = memory_pair()
    upper = chaos(a, ChaosSchedule((3,), (0.0,)))
    await upper.aclose()
    await upper.aclose()
    calls: list[Callable[[], Awaitable[bytes]]] = [
        upper.recv,
        lambda: upper.recv_exactly(1),
        lambda: upper.recv_until(b"\n"),
    ]
    for call in calls:
        with pytest.raises(Closed):
            await call()
    with pytest.raises(Closed):
        await upper.send(b"x")
    with pytest.raises(Closed):
        await upper.done()
    with pytest.raises(Closed):
        await upper.detach()
    with pytest.raises(Closed):
        await a.recv()  # aclose closes the layers below too
    assert await b.recv() == b""


async def test_aclose_wakes_a_blocked_recv_with_closed() -> None:
    a, _b = memory_pair()
    async with trio.open_nursery() as nursery:

        async def blocked() -> None:
            with pytest.raises(Closed):
                await a.recv()

        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        await a.aclose()


async def test_aclose_flushes_committed_bytes() -> None:
    a, b = memory_pair(capacity=2)
    upper = chaos(a, ChaosSchedule((4,), (0.0,)))
    with pytest.raises(Timeout) as info:
        await upper.send(b"abcdefgh", deadline=after(0.01))
    sent = info.value.sent
    assert sent is not None and 2 <= sent <= 6  # 2 in the pipe, up to 4 waiting in the layer
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upper.aclose)
        got = bytearray()
        while chunk := await b.recv():
            got += chunk
    assert bytes(got) == b"abcdefgh"[:sent]


async def test_detached_layer_is_closed() -> None:
    a, _b = memory_pair()
    upper = chaos(a)
    assert await upper.detach() is a
    with pytest.raises(Closed):
        await upper.recv()
    with pytest.raises(Closed):
        await upper.send(b"x")


# ---- Broken is sticky ------------------------------------------------------------------------


async def test_reset_is_broken_and_sticky() -> None:
    a, b = memory_pair()
    upper = chaos(b)
    a.reset()
    for _ in range(2):
        with pytest.raises(Broken):
            await upper.recv()
        with pytest.raises(Broken):
            await upper.send(b"x")
        with pytest.raises(Broken):
            await upper.done()


# ---- unread ----------------------------------------------------------------------------------


async def test_unread_goes_first_and_stacks_at_the_front() -> None:
    a, b = memory_pair()
    await a.send(b"world")
    assert await b.recv(1) == b"w"
    b.unread(b"w")
    b.unread(b"hello ")
    b.unread(b"")
    assert await b.recv_exactly(11) == b"hello world"


async def test_unread_after_the_end() -> None:
    a, b = memory_pair()
    await a.done()
    assert await b.recv() == b""
    b.unread(b"back")
    assert await b.recv() == b"back"
    assert await b.recv() == b""


async def test_recv_returns_buffered_bytes_without_a_checkpoint() -> None:
    a, b = memory_pair()
    b.unread(b"abc")
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await b.recv(2) == b"ab"  # already buffered: no checkpoint, so no Cancelled
        assert await b.recv_exactly(1) == b"c"
    await a.aclose()


async def test_argument_checks() -> None:
    _a, b = memory_pair()
    with pytest.raises(ValueError):
        await b.recv(0)
    with pytest.raises(ValueError):
        await b.recv_exactly(-1)
    with pytest.raises(ValueError):
        await b.recv_until(b"")
    with pytest.raises(ValueError):
        memory_pair(capacity=0)


# ---- recv_until and recv_exactly limits ------------------------------------------------------


async def test_recv_until_over_max_bytes_leaves_the_bytes() -> None:
    a, b = memory_pair()
    await a.send(b"abcdefgh\n")
    with pytest.raises(MessageTooLarge) as info:
        await b.recv_until(b"\n", max_bytes=8)  # the delimiter would be byte 9
    assert info.value.limit == 8
    assert await b.recv_until(b"\n", max_bytes=9) == b"abcdefgh\n"


async def test_recv_until_delimiter_straddling_fragments() -> None:
    a, b = memory_pair()
    upper = chaos(b, ChaosSchedule((1,), (0.0,)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b"one\r\ntwo\r\n")
        assert await upper.recv_until(b"\r\n", max_bytes=5) == b"one\r\n"
        assert await upper.recv_until(b"\r\n", max_bytes=5) == b"two\r\n"


async def test_recv_until_at_the_end() -> None:
    a, b = memory_pair()
    await a.send(b"no newline")
    await a.done()
    with pytest.raises(EndOfStream) as info:
        await b.recv_until(b"\n")
    assert info.value.partial == b"no newline"
    with pytest.raises(EndOfStream) as info:
        await b.recv_until(b"\n")
    assert info.value.partial == b""


async def test_recv_exactly_at_the_end_gives_the_partial() -> None:
    a, b = memory_pair()
    await a.send(b"abc")
    await a.done()
    with pytest.raises(EndOfStream) as info:
        await b.recv_exactly(5)
    assert info.value.partial == b"abc"
    assert await b.recv_exactly(0) == b""
    assert await b.recv() == b""


# ---- deadlines lose nothing ------------------------------------------------------------------


async def test_recv_timeout_consumes_nothing() -> None:
    a, b = memory_pair()
    await a.send(b"abc")
    with pytest.raises(Timeout) as info:
        await b.recv_exactly(5, deadline=after(0.01))
    assert info.value.sent is None
    with pytest.raises(Timeout):
        await b.recv_until(b"\n", deadline=after(0.01))
    await a.send(b"de\n")
    assert await b.recv_until(b"\n") == b"abcde\n"


async def test_recv_cancelled_consumes_nothing() -> None:
    a, b = memory_pair()
    await a.send(b"ab")
    with trio.move_on_after(0.01):
        await b.recv_exactly(3)
    await a.send(b"c")
    assert await b.recv_exactly(3) == b"abc"


async def test_timeout_sent_is_exact_on_a_bottom_stream() -> None:
    a, b = memory_pair(capacity=10)
    with pytest.raises(Timeout) as info:
        await a.send(b"x" * 25, deadline=after(0.01))
    assert info.value.sent == 10
    with pytest.raises(Timeout) as info:
        await a.send(b"y", deadline=trio.current_time())
    assert info.value.sent == 0
    assert await b.recv_exactly(10) == b"x" * 10
    await a.send(b"z" * 10, deadline=after(1))
    assert await b.recv_exactly(10) == b"z" * 10


async def test_timeout_sent_counts_bytes_waiting_in_the_layer() -> None:
    a, b = memory_pair(capacity=10)
    upper = chaos(a, ChaosSchedule((3,), (0.0,)))
    payload = bytes(range(25))
    with pytest.raises(Timeout) as info:
        await upper.send(payload, deadline=after(0.01))
    sent = info.value.sent
    assert sent is not None and 10 <= sent <= 13
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upper.done)  # the committed bytes still waiting go first
        got = bytearray()
        while chunk := await b.recv():
            got += chunk
    assert bytes(got) == payload[:sent]


async def test_timeout_is_a_stack_error_and_a_timeout_error() -> None:
    exc = Timeout("x", sent=3)
    assert isinstance(exc, StackError) and isinstance(exc, TimeoutError)
    assert exc.committed is True
    assert Timeout("x", sent=0, committed=True).committed is True
    assert Timeout("y").sent is None


# ---- info ------------------------------------------------------------------------------------


async def test_info_chains_down_the_stack() -> None:
    a, _b = memory_pair()
    upper = chaos(a, ChaosSchedule((1,), (0.0,)))
    messages = await framing.prefix(2, max_message=65535).attach(upper)
    info = messages.info
    assert info["transport"] == "memory"
    assert info["framing"] == "prefix2"
    assert isinstance(info["chaos"], ChaosSchedule)
    assert set(info) == {"transport", "local", "peer", "chaos", "framing"}
    assert len(info) == 5
    assert info.get("alpn") is None
    with pytest.raises(KeyError):
        info["alpn"]
    assert not hasattr(info, "__setitem__")


def test_info_own_keys_shadow_lower_keys() -> None:
    info = Info({"peer": "upper"}, {"peer": "lower", "transport": "memory"})
    assert info["peer"] == "upper"
    assert list(info) == ["peer", "transport"]
    assert dict(info) == {"peer": "upper", "transport": "memory"}


# ---- Stack: connect, serve, listen -----------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A test layer with a handshake: the client sends b"hi\\n", the server checks it."""

    client: bool = False

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ByteStream:
        if self.client:
            await lower.send(b"hi\n", deadline=deadline)
            return lower
        line = await lower.recv_until(b"\n", max_bytes=16, deadline=deadline)
        if line != b"hi\n":
            raise ProtocolError(f"bad greeting {line!r}")
        return lower


async def echo(stream: Any) -> None:
    async for msg in stream:
        await stream.send(msg)


def server_stack() -> Stack:
    return Stack(tcp.listen("127.0.0.1", 0), Hello(), framing.prefix())


def client_stack(address: tuple[str, int]) -> Stack:
    return Stack(tcp.connect(*address), Hello(client=True), framing.prefix())


async def test_stack_connect_and_serve_on_port_0() -> None:
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(functools.partial(server_stack().serve, echo))
        assert address[0] == "127.0.0.1" and address[1] > 0
        async with await client_stack(address).connect(deadline=after(5)) as conn:
            assert conn.info["transport"] == "tcp"
            for msg in (b"one", b"", b"three" * 1000):
                await conn.send(msg)
                assert await conn.recv() == msg
        nursery.cancel_scope.cancel()


async def test_handshake_timeout_drops_a_silent_peer_while_others_are_served() -> None:
    timeout = 0.5
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(functools.partial(server_stack().serve, echo, handshake_timeout=timeout))
        silent = await tcp.connect(*address).connect()
        start = trio.current_time()
        async with await client_stack(address).connect(deadline=after(5)) as conn:
            await conn.send(b"ping")
            assert await conn.recv() == b"ping"
        assert trio.current_time() - start < timeout  # not held up by the silent peer
        with trio.fail_after(timeout + 5):
            assert await silent.recv() == b""  # dropped by the server
        assert trio.current_time() - start >= timeout * 0.9
        await silent.aclose()
        nursery.cancel_scope.cancel()


async def test_cancelling_serve_closes_the_connections() -> None:
    handlers_done = 0

    async def handler(stream: Any) -> None:
        nonlocal handlers_done
        try:
            await echo(stream)
        finally:
            handlers_done += 1

    async with trio.open_nursery() as serve_nursery:
        [address] = await serve_nursery.start(functools.partial(server_stack().serve, handler))
        conn = await client_stack(address).connect(deadline=after(5))
        await conn.send(b"x")
        assert await conn.recv() == b"x"
        serve_nursery.cancel_scope.cancel()
    assert handlers_done == 1  # serve returned only after its connection task ended
    with trio.fail_after(5), pytest.raises((EndOfStream, Broken)):
        await conn.recv()  # the server closed the connection
    await conn.aclose()


async def test_stack_listener_skips_failed_handshakes() -> None:
    async with await server_stack().listen(handshake_timeout=5) as listener:
        address = listener.address
        bad = await tcp.connect(*address).connect()
        await bad.send(b"nope\n")
        good = await client_stack(address).connect(deadline=after(5))
        await good.send(b"hello")
        with trio.fail_after(5):
            conn = await listener.accept()
        assert await conn.recv() == b"hello"
        assert await bad.recv() == b""  # the failed one was closed
        for s in (bad, good, conn):
            await s.aclose()


async def test_stack_listener_accept_deadline() -> None:
    async with await server_stack().listen() as listener:
        with pytest.raises(Timeout):
            await listener.accept(deadline=after(0.05))


async def test_stack_rejects_a_non_spec() -> None:
    with pytest.raises(TypeError):
        Stack(tcp.connect("127.0.0.1", 1), object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await Stack(tcp.listen("127.0.0.1", 0)).connect()


async def test_connect_failure_is_broken() -> None:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    address = listener.address
    await listener.aclose()  # nobody listens there now
    with pytest.raises(Broken):
        await Stack(tcp.connect(*address)).connect(deadline=after(5))


async def test_tcp_reset_is_broken_for_the_peer() -> None:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    client = await tcp.connect(*listener.address).connect()
    server = await listener.accept()
    await listener.aclose()
    client.reset()
    with trio.fail_after(5):
        for _ in range(2):
            with pytest.raises(Broken):
                await server.recv()
            with pytest.raises(Broken):
                await server.send(b"x")
    await server.aclose()
