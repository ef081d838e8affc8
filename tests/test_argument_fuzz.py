"""Argument fuzzing: every public method of every layer refuses a wrong argument at once.

Issue 17, item 2: ``recv(1.5)`` hung on the in-memory and TLS streams (it waited for data, then
failed inside a layer), while TCP raised ``TypeError``. The contract (docs/design.md, "Wrong
arguments fail at once") is that a wrong type or value raises :class:`TypeError` or
:class:`ValueError` whose message names the argument, before the call looks at the state or
waits, on every layer alike.

How: each layer is built over an in-memory pair (TLS, PROXY protocol and SOCKS5 with their
handshakes; TCP over loopback), and hypothesis draws a method, which argument to spoil, a wrong
value (floats, NaN, bools, negative and huge numbers, ``str``, ``None``, lists...) and whether
the stream has data waiting (so a missing check would *return* data instead of hanging). Each
call runs under ``trio.fail_after``: a hang fails the test. A huge ``max_bytes`` is a bound, not
an error: ``recv`` returns the waiting data at once. The spec constructors are fuzzed too.

Not covered here (their streams need an HTTP connection; owned elsewhere): HTTP/1.1 bodies,
HTTP/2 streams. The WebSocket layer is covered for the base methods it inherits or extends.

Time: about 10 s on a quiet 2-core host (``max_examples`` is set per test, whatever the profile).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layers import framing, proxy_protocol, socks5, tcp, throttle, tls, trace, websocket
from layers.certs import CA
from stack import ByteStream, MessageStream, Stream, Timeout, after
from stack.testing import chaos_pair, memory_pair

CALL_LIMIT = 2.0  # seconds a call may take before it counts as a hang
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _certs() -> tuple[CA, Any]:
    ca = CA.new("argument fuzz CA")
    return ca, ca.issue("localhost")


# --------------------------------------------------------------------------------------------------
# the layers, each over a fresh pair: (the stream under test, its peer)

Pair = tuple[Stream, Stream]


async def _both(a_coro: Awaitable[Any], b_coro: Awaitable[Any]) -> tuple[Any, Any]:
    out: list[Any] = [None, None]

    async def run(i: int, coro: Awaitable[Any]) -> None:
        out[i] = await coro

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, a_coro)
        nursery.start_soon(run, 1, b_coro)
    return out[0], out[1]


async def memory() -> Pair:
    return memory_pair()


async def chaos() -> Pair:
    return chaos_pair()


async def tcp_loopback() -> Pair:
    async with await tcp.listen("127.0.0.1", 0).listen() as listener:
        client = await tcp.connect(*listener.address).connect(deadline=after(5))
        server = await listener.accept(deadline=after(5))
    return client, server


async def tls_pair() -> Pair:
    ca, leaf = _certs()
    a, b = memory_pair()
    deadline = after(5)
    c, s = await _both(
        tls.client(server_hostname="localhost", ca=ca).attach(a, deadline=deadline),
        tls.server(leaf).attach(b, deadline=deadline),
    )
    return c, s


async def proxy_protocol_pair() -> Pair:
    a, b = memory_pair()
    deadline = after(5)
    spec = proxy_protocol.client(("192.0.2.1", 5000), ("192.0.2.2", 80))
    s, c = await _both(proxy_protocol.server().attach(b, deadline=deadline), spec.attach(a, deadline=deadline))
    return s, c


async def socks5_pair() -> Pair:
    a, b = memory_pair()

    async def proxy() -> ByteStream:
        assert await b.recv_exactly(3) == b"\x05\x01\x00"
        await b.send(b"\x05\x00")
        head = await b.recv_exactly(5)  # VER CMD RSV ATYP=domain LEN
        await b.recv_exactly(head[4] + 2)
        await b.send(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")
        return b

    s, peer = await _both(socks5.connect("example.test", 443).attach(a, deadline=after(5)), proxy())
    return s, peer


async def throttled() -> Pair:
    a, b = memory_pair()
    return await throttle.limit(send=1e9, recv=1e9).attach(a), b


async def traced() -> Pair:
    a, b = memory_pair()
    return await trace.log().attach(a), b


async def prefix() -> Pair:
    a, b = memory_pair()
    return await framing.prefix(4).attach(a), await framing.prefix(4).attach(b)


async def delimiter() -> Pair:
    a, b = memory_pair()
    return await framing.delimiter(b"\n").attach(a), await framing.delimiter(b"\n").attach(b)


async def traced_messages() -> Pair:
    a, b = await prefix()
    return await trace.log().attach(a), b


async def throttled_messages() -> Pair:
    a, b = await prefix()
    return await throttle.limit(send_messages=1e9).attach(a), b


async def websocket_raw() -> Pair:
    a, b = memory_pair()
    return await websocket.raw("client").attach(a), await websocket.raw("server").attach(b)


BYTE_LAYERS: dict[str, Callable[[], Awaitable[Pair]]] = {
    "memory": memory,
    "chaos": chaos,
    "tcp": tcp_loopback,
    "tls": tls_pair,
    "proxy_protocol": proxy_protocol_pair,
    "socks5": socks5_pair,
    "throttle": throttled,
    "trace": traced,
}
MESSAGE_LAYERS: dict[str, Callable[[], Awaitable[Pair]]] = {
    "prefix": prefix,
    "delimiter": delimiter,
    "trace": traced_messages,
    "throttle": throttled_messages,
    "websocket": websocket_raw,
}


@asynccontextmanager
async def built(make: Callable[[], Awaitable[Pair]], primed: bool) -> AsyncIterator[Pair]:
    """The pair, closed at the end; ``primed``: the peer has sent something that has arrived."""
    with trio.fail_after(10):
        s, peer = await make()
    try:
        if primed:
            with trio.fail_after(5):
                if isinstance(peer, ByteStream):
                    await peer.send(b"primed\n" * 4)
                    assert isinstance(s, ByteStream)
                    s.unread(await s.recv_exactly(1))  # it has arrived, and sits in s's buffer
                else:
                    assert isinstance(peer, MessageStream)
                    await peer.send(b"primed")
                    await trio.testing.wait_all_tasks_blocked(0.001)
        yield s, peer
    finally:
        with trio.CancelScope(shield=True):
            await s.aclose()
            await peer.aclose()


# --------------------------------------------------------------------------------------------------
# wrong values

NOT_NUMBERS = st.one_of(
    st.text(max_size=5), st.none(), st.binary(max_size=4), st.lists(st.integers(), max_size=2),
    st.complex_numbers(allow_nan=False, max_magnitude=10), st.just(object()),
)  # fmt: skip
BAD_SIZES = st.one_of(
    st.floats(allow_nan=True),  # 1.5, NaN, inf: never an int
    st.booleans(),
    NOT_NUMBERS,
)
NON_POSITIVE = st.integers(max_value=0) | st.just(-(2**100))
BAD_DEADLINES = st.one_of(st.just(math.nan), st.booleans(), NOT_NUMBERS)
NOT_BYTES = st.one_of(
    st.text(min_size=1, max_size=5),  # str: never bytes (WebSocket's send takes it: text)
    st.integers(min_value=-(2**70), max_value=2**70),  # bytes(5) would be five zero bytes
    st.floats(), st.none(), st.lists(st.integers(0, 255), min_size=1, max_size=3), st.just(object()),
)  # fmt: skip
BAD_BUFFERS = st.one_of(
    st.binary(min_size=1, max_size=4),  # read-only
    st.builds(lambda b: memoryview(b), st.binary(min_size=1, max_size=4)),  # read-only
    st.just(bytearray()),  # empty
    st.text(max_size=3), st.integers(), st.none(),
)  # fmt: skip


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    names: tuple[str, ...]  # one of these appears in the error's message

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.method}({', '.join(parts)})"


def _byte_calls() -> st.SearchStrategy[Call]:
    dl = ("deadline",)
    return st.one_of(
        BAD_SIZES.map(lambda v: Call("recv", (v,), {}, ("max_bytes",))),
        NON_POSITIVE.map(lambda v: Call("recv", (v,), {}, ("max_bytes",))),
        BAD_SIZES.map(lambda v: Call("recv_exactly", (v,), {}, ("n must",))),
        st.integers(max_value=-1).map(lambda v: Call("recv_exactly", (v,), {}, ("n must",))),
        st.integers(sys.maxsize + 1, 2**200).map(lambda v: Call("recv_exactly", (v,), {}, ("recv_exactly",))),
        NOT_BYTES.map(lambda v: Call("recv_until", (v,), {}, ("delim",))),
        st.just(Call("recv_until", (b"",), {}, ("delim",))),
        BAD_SIZES.map(lambda v: Call("recv_until", (b"\n",), {"max_bytes": v}, ("max_bytes",))),
        NON_POSITIVE.map(lambda v: Call("recv_until", (b"\n",), {"max_bytes": v}, ("max_bytes",))),
        BAD_BUFFERS.map(lambda v: Call("recv_into", (v,), {}, ("recv_into",))),
        NOT_BYTES.map(lambda v: Call("send", (v,), {}, ("data",))),
        NOT_BYTES.map(lambda v: Call("send_from", (v,), {}, ("send_from",))),
        st.sampled_from([b"x", bytes(3)]).map(lambda v: Call("send_from", (v,), {}, ("send_from",))),
        NOT_BYTES.map(lambda v: Call("unread", (v,), {}, ("data",))),
        BAD_DEADLINES.map(lambda v: Call("recv", (), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("recv_into", (bytearray(8),), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("recv_exactly", (1,), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("recv_until", (b"\n",), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("send", (b"x",), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("send_from", (bytearray(b"x"),), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("done", (), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("detach", (), {"deadline": v}, dl)),
        BAD_DEADLINES.filter(lambda v: v is not None).map(lambda v: Call("aclose", (), {"deadline": v}, dl)),
    )


def _message_calls(layer: str) -> st.SearchStrategy[Call]:
    dl = ("deadline",)
    not_messages = NOT_BYTES.filter(lambda v: not isinstance(v, str)) if layer == "websocket" else NOT_BYTES
    return st.one_of(
        not_messages.map(lambda v: Call("send", (v,), {}, ("message", "msg"))),
        BAD_DEADLINES.map(lambda v: Call("send", (b"x",), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("recv", (), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("done", (), {"deadline": v}, dl)),
        BAD_DEADLINES.map(lambda v: Call("detach", (), {"deadline": v}, dl)),
        BAD_DEADLINES.filter(lambda v: v is not None).map(lambda v: Call("aclose", (), {"deadline": v}, dl)),
    )


async def _refused_at_once(s: Stream, call: Call, layer: str = "") -> None:
    method = getattr(s, call.method)
    with trio.fail_after(CALL_LIMIT):  # a hang is a failure (trio.TooSlowError)
        try:
            result = method(*call.args, **call.kwargs)
            if isinstance(result, Awaitable):
                result = await result
        except (TypeError, ValueError) as exc:
            text = str(exc)
            assert any(name in text for name in call.names), f"{call!r}: {exc!r} does not name {call.names}"
            return
    raise AssertionError(f"{s!r}.{call!r} returned {result!r} instead of raising")


def _run(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    trio.run(functools.partial(fn, *args))


@pytest.mark.parametrize("layer", sorted(BYTE_LAYERS))
def test_byte_streams_refuse_wrong_arguments_at_once(layer: str) -> None:
    @FUZZ
    @given(call=_byte_calls(), primed=st.booleans())
    def fuzz(call: Call, primed: bool) -> None:
        async def body() -> None:
            async with built(BYTE_LAYERS[layer], primed) as (s, _peer):
                await _refused_at_once(s, call)

        _run(body)

    fuzz()


@pytest.mark.parametrize("layer", sorted(MESSAGE_LAYERS))
def test_message_streams_refuse_wrong_arguments_at_once(layer: str) -> None:
    @FUZZ
    @given(call=_message_calls(layer), primed=st.booleans())
    def fuzz(call: Call, primed: bool) -> None:
        async def body() -> None:
            async with built(MESSAGE_LAYERS[layer], primed) as (s, _peer):
                await _refused_at_once(s, call, layer)

        _run(body)

    fuzz()


# --------------------------------------------------------------------------------------------------
# valid extremes: a huge bound, a far or a past deadline, answer at once when data is there


@pytest.mark.parametrize("layer", sorted(BYTE_LAYERS))
def test_extreme_but_valid_arguments_answer_at_once(layer: str) -> None:
    async def body() -> None:
        async with built(BYTE_LAYERS[layer], primed=False) as (s, peer):
            assert isinstance(s, ByteStream) and isinstance(peer, ByteStream)
            data = b"0123456789\n"
            with trio.fail_after(CALL_LIMIT):
                await peer.send(data)
                s.unread(await s.recv_exactly(len(data)))
                assert await s.recv(2**100, deadline=1e308) == data  # a huge bound, a far deadline
                s.unread(data)
                assert await s.recv_exactly(3, deadline=-math.inf) == b"012"  # buffered: no wait
                assert await s.recv_until(b"\n", max_bytes=2**80) == b"3456789\n"
                with pytest.raises(Timeout):
                    await s.recv_exactly(10**6, deadline=-math.inf)  # a past deadline: Timeout, no hang
                await peer.send(b"abc")
                assert await s.recv_exactly(3) == b"abc"  # the Timeout consumed nothing

    _run(body)


# --------------------------------------------------------------------------------------------------
# the specs refuse wrong arguments when they are built

SPECS: dict[str, Callable[[Any], object]] = {
    "prefix.size": lambda v: framing.prefix(v),
    "prefix.max_message": lambda v: framing.prefix(4, max_message=v),
    "delimiter.delim": lambda v: framing.delimiter(v),
    "delimiter.max_message": lambda v: framing.delimiter(b"\n", max_message=v),
    "proxy_protocol.server.versions": lambda v: proxy_protocol.server(versions=v),
    "proxy_protocol.server.header_timeout": lambda v: proxy_protocol.server(header_timeout=v),
    "proxy_protocol.server.max_header": lambda v: proxy_protocol.server(max_header=v),
    "proxy_protocol.client.version": lambda v: proxy_protocol.client(version=v),
    "proxy_protocol.client.source": lambda v: proxy_protocol.client(v, ("192.0.2.2", 80)),
    "socks5.connect.host": lambda v: socks5.connect(v, 443),
    "socks5.connect.port": lambda v: socks5.connect("example.test", v),
    "socks5.connect.handshake_timeout": lambda v: socks5.connect("example.test", 443, handshake_timeout=v),
}
WRONG_FOR_SPECS = st.one_of(
    st.floats(allow_nan=True).filter(lambda v: v != 4.0),  # 4.0 == 4 was a valid prefix size
    st.booleans(), st.none(), st.just(object()), st.lists(st.integers(), max_size=1).map(tuple),
    st.integers(min_value=2**64), st.integers(max_value=-1),
)  # fmt: skip


def _valid(spec: str, value: Any) -> bool:
    """The few values WRONG_FOR_SPECS draws that are right for ``spec``."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if spec.endswith("timeout"):
        return number and value > 0  # seconds; inf: no timeout at all
    if spec == "delimiter.max_message":
        return type(value) is int and value >= 0  # a limit: a huge one is valid
    if spec in ("proxy_protocol.client.source", "prefix.max_message"):
        return value is None  # an unknown address; the default limit
    if spec == "proxy_protocol.server.versions":
        return value in ((1,), (2,), (1, 2))
    return False


@FUZZ
@given(spec=st.sampled_from(sorted(SPECS)), value=WRONG_FOR_SPECS)
def test_specs_refuse_wrong_arguments_when_built(spec: str, value: Any) -> None:
    if _valid(spec, value):
        SPECS[spec](value)
        return
    with pytest.raises((TypeError, ValueError)):
        SPECS[spec](value)


@pytest.mark.parametrize("attach", ["prefix", "delimiter", "proxy_protocol", "socks5", "tls"])
async def test_spec_attach_checks_its_deadline(attach: str) -> None:
    _ca, leaf = _certs()
    spec: Any = {
        "prefix": framing.prefix(4),
        "delimiter": framing.delimiter(),
        "proxy_protocol": proxy_protocol.server(),
        "socks5": socks5.connect("example.test", 443),
        "tls": tls.server(leaf),
    }[attach]
    for bad in ("soon", None, math.nan, True):
        a, _b = memory_pair()
        with trio.fail_after(CALL_LIMIT), pytest.raises((TypeError, ValueError), match="deadline"):
            await spec.attach(a, deadline=bad)
