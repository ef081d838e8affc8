"""Unit tests of the core's fast paths: ``ByteStream.recv_into``, the socket layer's direct I/O and
time-sliced schedule points, lazy ``info["local"]``, and ``framing.prefix`` taking buffered messages.

The conformance kit covers ``recv_into`` under chaos, deadlines and cancellation for every layer
(``check_bytestream``'s receive plans include it); these pin down the rules one by one.
"""

from __future__ import annotations

import array
import functools
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import layers._socket as socket_layer
from layers import framing, tcp
from layers._socket import SocketStream
from stack import Broken, Busy, ByteStream, Closed, EndOfStream, MessageTooLarge, Timeout, after
from stack.testing import ChaosSchedule, chaos, memory_pair


async def tcp_pair() -> tuple[SocketStream, SocketStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    try:
        host, port = listener.address
        client = await tcp.connect(host, port).connect(deadline=after(5))
        server = await listener.accept(deadline=after(5))
    finally:
        await listener.aclose()
    return client, server


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    a, b = await tcp_pair()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


# ---- recv_into ----------------------------------------------------------------------------------


async def test_recv_into_bytearray_and_memoryview_over_tcp(pair: tuple[SocketStream, SocketStream]) -> None:
    a, b = pair
    payload = bytes(range(256)) * 1024
    got = bytearray()
    buffer = bytearray(10_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, payload)
        while len(got) < len(payload):
            n = await b.recv_into(buffer if len(got) % 2 else memoryview(buffer)[:4096])
            assert n > 0
            got += buffer[:n]
    assert got == payload


async def test_recv_into_takes_buffered_bytes_first_without_a_checkpoint() -> None:
    a, b = memory_pair()
    b.unread(b"hello")
    buffer = bytearray(3)
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await b.recv_into(buffer) == 3  # buffered: no checkpoint, so no Cancelled
    assert buffer == b"hel"
    await a.send(b" world")
    buffer = bytearray(100)
    assert await b.recv_into(buffer) == 2  # what was buffered, not more
    assert buffer[:2] == b"lo"
    n = await b.recv_into(buffer)
    assert buffer[:n] == b" world"[:n]


async def test_recv_into_end_of_stream_is_zero_for_ever() -> None:
    a, b = memory_pair()
    await a.send(b"xy")
    await a.done()
    buffer = bytearray(8)
    assert await b.recv_into(buffer) == 2
    assert await b.recv_into(buffer) == 0
    assert await b.recv_into(buffer) == 0
    b.unread(b"z")
    assert await b.recv_into(buffer) == 1
    assert buffer[:1] == b"z"


async def test_recv_into_timeout_and_cancel_consume_nothing(pair: tuple[SocketStream, SocketStream]) -> None:
    a, b = pair
    buffer = bytearray(16)
    with pytest.raises(Timeout) as info:
        await b.recv_into(buffer, deadline=after(0.01))
    assert info.value.sent is None
    with trio.move_on_after(0.01) as scope:
        await b.recv_into(buffer)
    assert scope.cancelled_caught
    await a.send(b"after the timeout")
    got = bytearray()
    while len(got) < len(b"after the timeout"):
        n = await b.recv_into(buffer)
        got += buffer[:n]
    assert got == b"after the timeout"


async def test_recv_into_multibyte_format_is_filled_byte_by_byte() -> None:
    a, b = memory_pair()
    await a.send(b"\x01\x00\x02\x00")
    words = array.array("H", [0, 0])
    assert await b.recv_into(memoryview(words)) == 4
    assert words.tobytes() == b"\x01\x00\x02\x00"


async def test_recv_into_argument_checks() -> None:
    _a, b = memory_pair()
    with pytest.raises(ValueError):
        await b.recv_into(bytearray())
    with pytest.raises(TypeError):
        await b.recv_into(memoryview(b"read-only"))
    with pytest.raises(TypeError):  # every layer refuses it up front, as a socket would
        await b.recv_into(memoryview(bytearray(8))[::2])
    b.unread(b"still here")  # nothing was consumed by the refused calls
    assert await b.recv() == b"still here"


async def test_recv_into_default_primitive_through_a_layer() -> None:
    """A layer with only ``_recv_some`` (chaos) gets recv_into from the base class."""
    a, b = memory_pair()
    upper = chaos(b, ChaosSchedule((3,), (0.0,)))
    buffer = bytearray(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b"abcdefgh")
        assert await upper.recv_into(buffer) == 3  # the chaos layer hands out 3 bytes at a time
        assert buffer[:3] == b"abc"
        assert await upper.recv_exactly(5) == b"defgh"


async def test_recv_into_busy_closed_broken() -> None:
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.recv)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            await b.recv_into(bytearray(4))
        await a.send(b"x")
    a.reset()
    for _ in range(2):
        with pytest.raises(Broken):
            await b.recv_into(bytearray(4))
    c, _d = memory_pair()
    await c.aclose()
    with pytest.raises(Closed):
        await c.recv_into(bytearray(4))


# ---- the socket layer ------------------------------------------------------------------------


async def test_socket_send_is_a_cancel_point_even_when_it_would_not_block(
    pair: tuple[SocketStream, SocketStream],
) -> None:
    a, b = pair
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await a.send(b"never")
    await a.send(b"sent")
    await a.done()
    assert await b.recv_exactly(4) == b"sent"  # the cancelled send committed nothing
    assert await b.recv() == b""


async def test_a_task_whose_io_never_blocks_still_lets_others_run() -> None:
    """A sender whose every send completes at once still yields to the scheduler at least every
    SCHEDULE_SLICE seconds (5,000 system calls take far longer than that): another task runs
    while it loops."""
    ours, theirs = socket.socketpair()
    stream = SocketStream(trio.socket.from_stdlib_socket(ours), "unix", {"transport": "unix"})

    def read_all() -> None:
        while theirs.recv(65536):
            pass

    drain = threading.Thread(target=read_all)
    drain.start()
    ran: list[int] = []
    sends = 0

    async def other() -> None:
        ran.append(sends)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(5000):
                await stream.send(b"x")
                sends += 1
    assert ran and ran[0] < 5000
    await stream.aclose()
    await trio.to_thread.run_sync(drain.join)
    theirs.close()


async def test_schedule_points_are_skipped_within_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a long slice, sends that complete at once do not yield (another task does not run
    meanwhile); a send that has to wait does."""
    monkeypatch.setattr(socket_layer, "SCHEDULE_SLICE", 3600.0)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = SocketStream(trio.socket.from_stdlib_socket(ours), "unix", {"transport": "unix"})
    ran: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(ran))
        await trio.testing.wait_all_tasks_blocked()
        socket_layer._last_yield.at = time.perf_counter()
        nursery.start_soon(lambda: _append(ran))
        for _ in range(10):
            await stream.send(b"x")
        assert ran == [True]  # the second task has not run: no yield within the slice
        theirs.setblocking(False)
        with trio.move_on_after(0.5):
            await stream.send(bytes(1 << 20))  # fills the socket buffer: waits, so it yields
        assert ran == [True, True]
    theirs.close()
    await stream.aclose()


async def _append(into: list[bool]) -> None:
    into.append(True)


async def test_accepted_tcp_stream_info_local_on_first_use(pair: tuple[SocketStream, SocketStream]) -> None:
    a, b = pair
    assert b.info["peer"] == a.info["local"]
    assert a.info["peer"] == b.info["local"]
    assert b.info["transport"] == "tcp"
    assert set(b.info) == {"transport", "peer", "local"}
    assert dict(b.info)["local"] == b.socket.getsockname()[:2]


async def test_local_is_none_if_asked_first_after_close() -> None:
    a, b = await tcp_pair()
    await b.aclose()
    assert b.info["local"] is None
    assert a.info["local"] is not None
    await a.aclose()


def test_info_get_and_in_do_not_raise_per_miss() -> None:
    from stack.streams import Info

    class Strict(dict[str, int]):
        def __getitem__(self, key: str) -> int:  # Mapping.get would land here and raise per miss
            raise AssertionError("get / in must not index a map that lacks the key")

    info = Info(Strict(), {"a": 1})
    assert info.get("a") == 1
    assert info.get("b", 2) == 2
    assert "a" in info
    assert "b" not in info


# ---- finite deadlines on the socket layer: a cancel scope only around a wait ---------------------


async def test_socket_finite_deadline_needs_no_scope_when_the_kernel_completes_at_once(
    pair: tuple[SocketStream, SocketStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    scopes = 0
    real = trio.move_on_at

    def counting(deadline: float) -> trio.CancelScope:
        nonlocal scopes
        scopes += 1
        return real(deadline)

    monkeypatch.setattr(trio, "move_on_at", counting)
    await a.send(b"ping", deadline=after(5))
    assert await b.recv(deadline=after(5)) == b"ping"
    await a.send_from(bytearray(b"pong"), deadline=after(5))
    buffer = bytearray(16)
    n = await b.recv_into(buffer, deadline=after(5))
    assert buffer[:n] == b"pong"
    assert scopes == 0
    async with trio.open_nursery() as nursery:  # one that has to wait makes its scope
        nursery.start_soon(functools.partial(b.recv, 100, deadline=after(5)))
        await trio.testing.wait_all_tasks_blocked()
        await a.send(b"late")
    assert scopes == 1


async def test_socket_deadline_already_passed_is_a_timeout_and_consumes_nothing(
    pair: tuple[SocketStream, SocketStream],
) -> None:
    a, b = pair
    await a.send(b"kept")
    await trio.sleep(0.05)  # the bytes are in b's kernel buffer
    past = trio.current_time() - 1
    with pytest.raises(Timeout):
        await b.recv(deadline=past)
    with pytest.raises(Timeout):
        await b.recv_into(bytearray(8), deadline=past)
    with pytest.raises(Timeout) as sent:
        await a.send(b"never", deadline=past)
    assert sent.value.sent == 0
    assert await b.recv(deadline=after(5)) == b"kept"
    await a.send(b"next")
    assert await b.recv(deadline=after(5)) == b"next"  # nothing of "never" went out


async def test_socket_deadline_while_waiting_is_a_timeout_and_the_stream_goes_on(
    pair: tuple[SocketStream, SocketStream],
) -> None:
    a, b = pair
    with pytest.raises(Timeout):
        await b.recv(deadline=after(0.05))
    with pytest.raises(Timeout):
        await b.recv_into(bytearray(8), deadline=after(0.05))
    await a.send(b"after")
    assert await b.recv(deadline=after(5)) == b"after"


async def test_socket_close_wakes_a_waiter_and_a_never_waited_socket_closes_directly() -> None:
    a, b = await tcp_pair()
    assert not b._trio_knows  # nothing waited on it yet: closing skips trio's notify_closing
    await b.aclose()
    assert b._sock.fileno() == -1
    c, d = await tcp_pair()
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            with pytest.raises(Closed):
                await d.recv()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert d._trio_knows
        await d.aclose()  # wakes the blocked recv with Closed
    for s in (a, c):
        await s.aclose()


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="TCP_DEFER_ACCEPT is Linux-only")
async def test_defer_accept_hands_over_connections_with_their_first_bytes() -> None:
    listener = await tcp.listen("127.0.0.1", 0, defer_accept=1).listen()
    try:
        assert listener.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 1
        host, port = listener.address
        with socket.create_connection((host, port)) as talker, socket.create_connection((host, port)) as silent:
            with trio.move_on_after(0.3):
                await listener.accept()
                pytest.fail("a connection was accepted before any byte arrived")
            talker.sendall(b"GET / HTTP/1.1\r\n")
            first = await listener.accept(deadline=after(5))
            assert await first.recv(deadline=after(5)) == b"GET / HTTP/1.1\r\n"
            assert not first._trio_knows  # the first recv found its bytes: no wait, no epoll
            started = trio.current_time()
            quiet = await listener.accept(deadline=after(10))  # the silent one still comes, later
            assert trio.current_time() - started < 9
            silent.sendall(b"x")
            assert await quiet.recv(deadline=after(5)) == b"x"
            for s in (first, quiet):
                await s.aclose()
    finally:
        await listener.aclose()


# ---- framing.prefix fast path -----------------------------------------------------------------


def frames(*msgs: bytes) -> bytes:
    return b"".join(len(m).to_bytes(4, "big") + m for m in msgs)


async def test_prefix_takes_buffered_messages_without_a_checkpoint() -> None:
    a, b = memory_pair()
    m = await framing.prefix(4).attach(b)
    b.unread(frames(b"one", b"", b"three") + b"\x00\x00")  # two whole messages, a partial header
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await m.recv() == b"one"
        assert await m.recv() == b""
        assert await m.recv() == b"three"
        with pytest.raises(trio.Cancelled):
            await m.recv()  # the next one is not whole: this one waits, so it checkpoints
    await a.send(b"\x00\x02hi")
    assert await m.recv() == b"hi"
    await a.done()
    with pytest.raises(EndOfStream):
        await m.recv()


async def test_prefix_fast_path_keeps_the_limit_and_the_lower_rules() -> None:
    a, b = memory_pair()
    m = await framing.prefix(4, max_message=4).attach(b)
    b.unread(frames(b"12345"))
    with pytest.raises(MessageTooLarge):
        await m.recv()
    with pytest.raises(Broken):
        await m.recv()
    c, d = memory_pair()
    m2 = await framing.prefix(4).attach(d)
    d.unread(frames(b"queued"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.recv_exactly, 1000)  # someone else is receiving on the lower stream
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            await m2.recv()
        await c.send(bytes(1000 - len(frames(b"queued"))))
    await c.aclose()
    await a.aclose()


async def test_prefix_detach_after_fast_path_hands_back_the_rest() -> None:
    _a, b = memory_pair()
    m = await framing.prefix(4).attach(b)
    b.unread(frames(b"first") + b"raw bytes")
    assert await m.recv() == b"first"
    lower: ByteStream = await m.detach()
    assert lower is b
    assert await lower.recv() == b"raw bytes"
