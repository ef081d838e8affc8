"""The UDP layer: connected and unconnected modes, the limits, ICMP errors, the kit with
``eof=False`` (and that option's own checks), and interop with socat."""

from __future__ import annotations

import logging
import pickle
import socket
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
from _peers import need
from hypothesis import HealthCheck, Phase
from hypothesis import settings as Settings

from layers import framing, udp
from stack import Broken, Closed, EndOfStream, MessageStream, MessageTooLarge, Stack, StackError, Timeout, after
from stack.testing import check_message_stream, memory_pair, messages

# Loopback drops datagrams when the receiver's buffer is full: the kit's busy property sends up
# to 64 datagrams before reading, so the pairs get a large buffer (the kernel caps it at
# net.core.rmem_max) and datagrams of at most about one Ethernet MTU.
RECV_BUFFER = 4 * 1024 * 1024
DATAGRAMS = messages(max_size=1400)


async def udp_pair() -> tuple[udp.UDPStream, udp.UDPStream]:
    return await udp.pair(recv_buffer=RECV_BUFFER)


# ---- connected mode ---------------------------------------------------------------------------


async def test_connected_pair_round_trip() -> None:
    with trio.fail_after(5):
        a, b = await udp_pair()
        async with a, b:
            assert a.info["transport"] == "udp"
            assert a.info["peer"] == b.info["local"] and b.info["peer"] == a.info["local"]
            for msg in (b"hello", b"", b"x" * 1400):
                await a.send(msg)
                got = await b.recv()
                assert got == msg and type(got) is bytes  # connected mode: plain bytes


async def test_connect_spec_and_bind_spec_through_stack() -> None:
    with trio.fail_after(5):
        server = await Stack(udp.bind("127.0.0.1", 0)).connect(deadline=after(5))
        async with server:
            host, port = server.info["local"]
            client = await Stack(udp.connect(host, port)).connect(deadline=after(5))
            async with client:
                assert client.info["host"] == host and client.info["peer"] == (host, port)
                await client.send(b"ping")
                dgram = await server.recv()
                assert isinstance(dgram, udp.Datagram) and dgram == b"ping"
                assert dgram.address == client.info["local"]
                await server.send(dgram)  # back to where it came from
                assert await client.recv() == b"ping"
                await server.send_to(b"pong", dgram.address)
                assert await client.recv() == b"pong"
                await client.send(udp.Datagram(b"ping", (host, port)))  # addressed to the peer: fine
                assert await server.recv() == b"ping"


async def test_send_needs_an_address_when_unconnected_and_the_peer_when_connected() -> None:
    with trio.fail_after(5):
        server = await udp.bind().connect()
        a, b = await udp_pair()
        async with server, a, b:
            with pytest.raises(ValueError, match="Datagram"):
                await server.send(b"where to?")
            with pytest.raises(ValueError, match="connected to"):
                await a.send(udp.Datagram(b"x", server.info["local"]))
            await a.send(b"still usable")
            assert await b.recv() == b"still usable"


async def test_datagram_type() -> None:
    d = udp.Datagram(b"abc", ("127.0.0.1", 5))
    assert d == b"abc" and hash(d) == hash(b"abc") and isinstance(d, bytes)
    assert d.address == ("127.0.0.1", 5)
    assert "address=('127.0.0.1', 5)" in repr(d)
    assert type(d[:2]) is bytes
    copy = pickle.loads(pickle.dumps(d))
    assert copy == d and copy.address == d.address and isinstance(copy, udp.Datagram)


# ---- limits -------------------------------------------------------------------------------------


async def test_oversize_send_is_refused_and_nothing_is_sent() -> None:
    with trio.fail_after(5):
        a, b = await udp.pair(max_datagram=100)
        async with a, b:
            assert a.max_datagram == 100
            with pytest.raises(MessageTooLarge) as info:
                await a.send(b"x" * 101)
            assert info.value.limit == 100 and info.value.size == 101
            await a.send(b"y" * 100)
            assert await b.recv() == b"y" * 100  # the oversize one never went out


async def test_kernel_size_refusal_is_message_too_large() -> None:
    with trio.fail_after(5):
        a, b = await udp.pair(max_datagram=65535)  # over what IPv4 can carry: the kernel says EMSGSIZE
        async with a, b:
            with pytest.raises(MessageTooLarge, match="kernel"):
                await a.send(b"z" * 65535)
            await a.send(b"fine")
            assert await b.recv() == b"fine"


async def test_truncated_datagram_is_dropped_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="stack.udp")
    with trio.fail_after(5):
        server = await udp.bind(max_datagram=100).connect()
        async with server:
            client = await udp.connect(*server.info["local"]).connect()
            async with client:
                await client.send(b"a" * 101)
                await client.send(b"b" * 101)
                await client.send(b"c" * 100)
                got = await server.recv()
                assert got == b"c" * 100
                assert server.dropped == 2
    levels = [r.levelno for r in caplog.records if "over max_datagram" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]  # warned once, then quieter


async def test_bad_knobs() -> None:
    with pytest.raises(ValueError):
        udp.connect("127.0.0.1", 1, max_datagram=70000)
    with pytest.raises(ValueError):
        udp.bind(recv_buffer=0)


# ---- errors and the end -------------------------------------------------------------------------


async def test_port_unreachable_is_broken_and_sticky() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers with ICMP port unreachable
    with trio.fail_after(5):
        stream = await udp.connect("127.0.0.1", port).connect()
        async with stream:
            with pytest.raises(Broken, match="refused"):
                for _ in range(50):  # the ICMP error shows up on the next call after it arrives
                    await stream.send(b"anyone?")
                    with trio.move_on_after(0.05):
                        await stream.recv()
            with pytest.raises(Broken):
                await stream.recv()
            with pytest.raises(Broken):
                await stream.send(b"again")


async def test_unresolvable_destination_is_not_sticky() -> None:
    with trio.fail_after(10):
        server = await udp.bind().connect()
        async with server:
            with pytest.raises(StackError, match="cannot send") as info:
                await server.send_to(b"x", ("no-such-host.invalid", 9))
            assert not isinstance(info.value, Broken)
            await server.send_to(b"self", server.info["local"])
            assert await server.recv() == b"self"


async def test_recv_timeout_consumes_nothing_and_there_is_no_eof() -> None:
    with trio.fail_after(5):
        a, b = await udp_pair()
        async with a, b:
            with pytest.raises(Timeout) as info:
                await b.recv(deadline=after(0.05))
            assert info.value.sent is None
            await a.done()
            await a.done()  # again: nothing
            with pytest.raises(Closed):
                await a.send(b"after done")
            with pytest.raises(Timeout):  # done() sent nothing: no end of stream for the peer
                await b.recv(deadline=after(0.05))
            await b.send(b"the other way goes on")
            assert await a.recv() == b"the other way goes on"


async def test_aclose_wakes_a_blocked_recv_and_detach_is_refused() -> None:
    with trio.fail_after(5):
        a, b = await udp_pair()
        async with b:
            with pytest.raises(StackError, match="bottom"):
                await a.detach()
            errors: list[BaseException] = []

            async def blocked() -> None:
                try:
                    await a.recv()
                except Closed as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked)
                await trio.testing.wait_all_tasks_blocked()
                await a.aclose()
            assert len(errors) == 1
            await a.aclose()  # idempotent
            with pytest.raises(Closed):
                await a.send(b"x")


# ---- the conformance kit ------------------------------------------------------------------------


async def test_conformance_udp_pair() -> None:
    await check_message_stream(udp_pair, messages=DATAGRAMS, eof=False)


class _Lossy(MessageStream):
    """A broken message layer for the kit's own test: it loses every second message."""

    _lower: MessageStream

    def __init__(self, lower: MessageStream) -> None:
        super().__init__(lower)
        self._n = 0

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        await self._lower.send(msg, deadline=deadline)
        self._message_committed = True

    async def _recv_message(self, deadline: float) -> bytes | None:
        while True:
            msg = await self._lower.recv(deadline=deadline)
            self._n += 1
            if self._n % 2:
                return msg


QUICK_FAIL = Settings(
    max_examples=10,
    phases=[Phase.generate],
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


async def prefix_pair() -> tuple[MessageStream, MessageStream]:
    a, b = memory_pair()
    spec = framing.prefix(4)
    return await spec.attach(a), await spec.attach(b)


async def lossy_pair() -> tuple[MessageStream, MessageStream]:
    a, b = await prefix_pair()
    return _Lossy(a), _Lossy(b)


async def test_kit_eof_false_still_passes_a_layer_with_an_end() -> None:
    await check_message_stream(prefix_pair, eof=False)


async def test_kit_eof_false_still_catches_a_lost_message() -> None:
    nonempty = messages(max_size=64).filter(lambda m: len(m) >= 2)
    with pytest.raises(BaseException) as info:
        await check_message_stream(lossy_pair, messages=nonempty, eof=False, settings=QUICK_FAIL, skip=["busy"])
    leaves = _leaves(info.value)  # a wrong list, or a receiver waiting for the lost message (both ways)
    assert leaves and all(isinstance(exc, (AssertionError, EndOfStream)) for exc in leaves), leaves


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def test_kit_without_eof_false_fails_on_udp() -> None:
    """The option is needed: UDP has no end of stream, so the default check hangs and says so."""
    with pytest.raises(AssertionError, match="did not finish"):
        await check_message_stream(
            udp_pair, messages=DATAGRAMS, settings=QUICK_FAIL, example_timeout=0.5, skip=["busy", "broken"]
        )


# ---- interop: socat -----------------------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _with_process(command: list[str], body: Callable[[], Awaitable[None]]) -> None:
    """Run ``command`` while ``body`` runs; kill it after."""
    async with trio.open_nursery() as nursery:
        run = partial(
            trio.run_process, command, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False
        )
        process: trio.Process = await nursery.start(run)
        try:
            await body()
        finally:
            process.kill()


@pytest.mark.interop
async def test_interop_socat_echo_server() -> None:
    """socat echoes our client's datagrams (socat is the server, we are a connected client)."""
    need("socat")
    port = _free_udp_port()

    async def body() -> None:
        for _ in range(300):  # until socat is up (before it binds, our datagrams are refused): 30 s
            async with await udp.connect("127.0.0.1", port).connect() as probe:
                try:
                    await probe.send(b"ready?")
                    if await probe.recv(deadline=after(0.1)) == b"ready?":
                        break
                except (Timeout, Broken):
                    continue
        else:
            raise AssertionError("socat never echoed")
        async with await udp.connect("127.0.0.1", port).connect() as client:
            for msg in (b"one", b"two datagrams", b"x" * 1200):
                await client.send(msg)
                assert await client.recv(deadline=after(5)) == msg

    with trio.fail_after(20):
        await _with_process(["socat", f"UDP4-RECVFROM:{port},bind=127.0.0.1,fork", "PIPE"], body)


@pytest.mark.interop
async def test_interop_socat_client_to_our_server() -> None:
    """socat sends a datagram to our unconnected server, which answers to the Datagram's address."""
    need("socat")
    with trio.fail_after(20):
        async with await udp.bind().connect() as server:
            host, port = server.info["local"]
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    dgram = await server.recv()
                    await server.send(udp.Datagram(dgram.upper(), dgram.address))

                nursery.start_soon(serve)
                result = await trio.run_process(
                    ["socat", "-t", "2", "-", f"UDP4-SENDTO:{host}:{port}"],
                    stdin=b"hello from socat",
                    capture_stdout=True,
                    capture_stderr=True,
                )
            assert result.stdout == b"HELLO FROM SOCAT"


async def test_recv_many_and_send_batch() -> None:
    server = await udp.bind("127.0.0.1", 0, recv_buffer=1 << 20).connect()
    client = await udp.bind("127.0.0.1", 0).connect()
    async with server, client:
        to = server.info["local"]
        assert await client.send_batch([(b"%d" % i, to) for i in range(50)]) == 50
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < 50:
                batch = await server.recv_many(max_count=16)
                assert 1 <= len(batch) <= 16
                assert all(d.address == client.info["local"] for d in batch)
                got += batch
        assert got == [b"%d" % i for i in range(50)]
        with trio.move_on_after(0.05) as scope:  # nothing waiting: cancelled, nothing consumed
            await server.recv_many()
        assert scope.cancelled_caught


async def test_recv_batch_gives_plain_bytes_and_drops_oversized() -> None:
    server = await udp.bind("127.0.0.1", 0, recv_buffer=1 << 20, max_datagram=1000).connect()
    client = await udp.bind("127.0.0.1", 0).connect()
    async with server, client:
        to = server.info["local"]
        sizes = [1, 1000, 1001, 5000, 0, 999]
        assert await client.send_batch([(b"x" * n, to) for n in sizes]) == len(sizes)
        got: list[tuple[bytes, object]] = []
        with trio.fail_after(5):
            while len(got) < 4:
                got += await server.recv_batch(max_count=3)
        assert [len(d) for d, _ in got] == [1, 1000, 0, 999]  # 1001 and 5000 bytes: over max_datagram
        assert all(type(d) is bytes and a == client.info["local"] for d, a in got)
        assert server.dropped == 2
        with trio.move_on_after(0.05) as scope:
            await server.recv_batch()
        assert scope.cancelled_caught
