"""Tests of the test kit itself: chaos, strategies, matchers, and checks that catch broken layers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from stack import ByteStream, Timeout
from stack.testing import (
    ChaosSchedule,
    ChaosStream,
    chaos,
    chaos_pair,
    check_bytestream,
    check_detach,
    check_settings,
    chunkings,
    current_schedule,
    memory_pair,
    messages,
    payloads,
)
from stack.testing._check_bytes import _match_bytes
from stack.testing._check_messages import _match_messages

# ---- ChaosSchedule and chaos() ---------------------------------------------------------------


def test_schedule_validation() -> None:
    with pytest.raises(ValueError):
        ChaosSchedule((), (0.0,))
    with pytest.raises(ValueError):
        ChaosSchedule((0,), (0.0,))
    with pytest.raises(ValueError):
        ChaosSchedule((1,), (-1.0,))
    with pytest.raises(ValueError):
        ChaosSchedule((1,), (math.nan,))
    assert ChaosSchedule([1, 2], [0]).sizes == (1, 2)  # type: ignore[arg-type]


def test_schedule_from_seed_is_deterministic_and_at_least_raises_sizes() -> None:
    assert ChaosSchedule.from_seed(7) == ChaosSchedule.from_seed(7)
    s = ChaosSchedule((1, 50, 3), (0.0, 0.001))
    assert s.at_least(10) == ChaosSchedule((10, 50, 10), (0.0, 0.001))
    assert s.at_least(1) is s


async def test_chaos_uses_the_current_schedule() -> None:
    a, _b = memory_pair()
    schedule = ChaosSchedule((2,), (0.0,))
    token = current_schedule.set(schedule)
    try:
        assert chaos(a).schedule is schedule
    finally:
        current_schedule.reset(token)
    assert chaos(a, schedule).schedule is schedule
    assert isinstance(chaos(a).schedule, ChaosSchedule)  # the seeded default


async def test_chaos_fragments_both_ways() -> None:
    a, b = memory_pair()
    upper = chaos(a, ChaosSchedule((3,), (0.0,)))
    await b.send(b"abcdefgh")
    assert await upper.recv() == b"abc"
    assert await upper.recv(2) == b"de"
    sizes: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upper.send, b"0123456789")

        async def reader() -> None:
            got = b""
            while len(got) < 10:
                chunk = await b.recv()
                sizes.append(len(chunk))
                got += chunk
            assert got == b"0123456789"

        nursery.start_soon(reader)
    assert max(sizes) <= 3


async def test_chaos_detach_hands_back_read_ahead() -> None:
    a, b = memory_pair()
    upper = chaos(a, ChaosSchedule((100,), (0.0,)))
    await b.send(b"header:rest of the bytes")
    assert await upper.recv_until(b":") == b"header:"  # read ahead "rest of the bytes"
    lower = await upper.detach()
    assert lower is a
    assert await lower.recv() == b"rest of the bytes"


async def test_chaos_pair_is_connected() -> None:
    a, b = chaos_pair(capacity=16, schedule=ChaosSchedule((1, 5), (0.0, 0.0005)))
    assert isinstance(a, ChaosStream) and a.info["transport"] == "memory"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b"x" * 100)
        assert await b.recv_exactly(100) == b"x" * 100


def test_chaos_needs_a_bytestream() -> None:
    with pytest.raises(TypeError):
        ChaosStream(object(), ChaosSchedule())  # type: ignore[arg-type]


# ---- strategies ------------------------------------------------------------------------------


@given(st.integers(0, 5000).flatmap(lambda n: st.tuples(st.just(n), chunkings(n))))
def test_chunkings_sum_to_the_length(case: tuple[int, list[int]]) -> None:
    n, sizes = case
    assert sum(sizes) == n and all(s >= 1 for s in sizes)


@given(messages(avoid=b"\r\n"))
def test_messages_avoid_the_delimiter(msgs: list[bytes]) -> None:
    assert all(b"\r\n" not in m for m in msgs)


@settings(max_examples=200)
@given(payloads())
def test_payloads_stay_within_the_size(data: bytes) -> None:
    assert len(data) <= 100 * 1024


def test_check_settings_scale_and_minimum() -> None:
    base = settings(max_examples=100)
    assert check_settings(base).max_examples == 100
    assert check_settings(base, scale=0.1).max_examples == 10
    assert check_settings(base, scale=0.01).max_examples == 5
    assert check_settings(base).deadline is None
    assert Phase.explain not in check_settings(base).phases


# ---- matchers --------------------------------------------------------------------------------


def test_match_bytes() -> None:
    segments: list[tuple[bytes, int | None]] = [(b"abc", 3), (b"def", None), (b"ghi", 1)]
    assert _match_bytes(b"abcg", segments)
    assert _match_bytes(b"abcdeg", segments)
    assert _match_bytes(b"abcdefg", segments)
    assert not _match_bytes(b"abcdefgh", segments)
    assert not _match_bytes(b"abdg", segments)
    assert not _match_bytes(b"abcfg", segments)  # a gap inside a cancelled send
    assert _match_bytes(b"", [])


def test_match_messages() -> None:
    segments: list[tuple[bytes, bool | None]] = [(b"a", True), (b"b", None), (b"c", False), (b"d", True)]
    assert _match_messages([b"a", b"b", b"d"], segments)
    assert _match_messages([b"a", b"d"], segments)
    assert not _match_messages([b"a", b"c", b"d"], segments)
    assert not _match_messages([b"a", b"b", b"b", b"d"], segments)
    assert not _match_messages([b"d", b"a"], segments)


# ---- the checks catch broken layers ----------------------------------------------------------

# A mutant's falsifying example is not shrunk here, so its repr can be large: hypothesis warns.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
QUICK = settings(max_examples=60, phases=[Phase.generate], report_multiple_bugs=False)  # just the failure
BYTE_PROPERTIES = ["round_trip", "recv_deadlines", "send_deadlines", "end_of_stream", "closed", "busy", "broken"]


def only(*names: str) -> list[str]:
    return [p for p in BYTE_PROPERTIES if p not in names]


class LosesBytesOnCancel(ChaosStream):
    """Receives, then sleeps: a cancellation during the sleep drops what it received."""

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        data = await self._lower.recv(max_bytes, deadline=deadline)
        await trio.sleep(0.003)
        return data


class MiscountsSent(ChaosStream):
    """Commits one byte more than it reports."""

    async def _send_some(self, data: Any, deadline: float) -> int:
        n = await super()._send_some(data, deadline)
        if len(data) > n:
            self._outbuf += data[n : n + 1]
        return n


class DropsReadAhead(ChaosStream):
    async def detach(self, *, deadline: float = math.inf) -> ByteStream:
        self._unread.clear()
        return await ByteStream.detach(self, deadline=deadline)


def describe(exc: BaseException) -> str:
    """The messages of ``exc`` and, for a group, of every exception in it."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(describe(e) for e in exc.exceptions)
    return str(exc)


def pair_of(cls: type[ChaosStream]) -> Any:
    async def make() -> tuple[ByteStream, ByteStream]:
        a, b = memory_pair(capacity=512)
        schedule = ChaosSchedule((3, 100), (0.0, 0.0005))
        return cls(a, schedule), cls(b, schedule)

    return make


async def test_check_catches_bytes_lost_on_cancel() -> None:
    with pytest.raises(AssertionError) as info:
        await check_bytestream(
            pair_of(LosesBytesOnCancel), settings=settings(QUICK, max_examples=200), skip=only("recv_deadlines")
        )
    assert any("recv_deadlines" in note for note in getattr(info.value, "__notes__", []))


async def test_check_catches_a_wrong_sent_count() -> None:
    with pytest.raises(BaseException) as info:  # one or both sides' AssertionError
        await check_bytestream(pair_of(MiscountsSent), settings=QUICK, skip=only("round_trip"))
    leaves = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else (info.value,)
    assert all(isinstance(e, (AssertionError, BaseExceptionGroup)) for e in leaves), describe(info.value)
    # Which check sees the duplicated byte first depends on the drawn plan (recv, recv_exactly,
    # recv_until, the end): every data check names what it expected.
    assert "expected" in describe(info.value)


async def test_check_catches_dropped_read_ahead() -> None:
    async def lower() -> tuple[ByteStream, ByteStream]:
        return memory_pair()

    async def attach(a: ByteStream, b: ByteStream) -> tuple[ByteStream, ByteStream]:
        schedule = ChaosSchedule((3, 100), (0.0,))
        return DropsReadAhead(a, schedule), DropsReadAhead(b, schedule)

    with pytest.raises(BaseException) as info:  # one or both sides' AssertionError
        await check_detach(lower, attach, settings=QUICK)
    assert "hand back every byte" in describe(info.value)


async def test_check_reports_a_hang() -> None:
    class NeverSends(ChaosStream):
        async def _send_some(self, data: Any, deadline: float) -> int:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    with pytest.raises(AssertionError, match="did not finish within"):
        await check_bytestream(
            pair_of(NeverSends),
            settings=settings(max_examples=1, phases=[Phase.generate]),
            skip=only("round_trip"),
            example_timeout=0.5,
        )


async def test_unknown_property_in_skip_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown properties"):
        await check_bytestream(pair_of(ChaosStream), skip=["no_such_property"])


async def test_timeout_of_a_recv_has_no_sent() -> None:
    a, _b = chaos_pair()
    with pytest.raises(Timeout) as info:
        await a.recv(deadline=trio.current_time() + 0.01)
    assert info.value.sent is None


async def test_chaos_delay_budget_bounds_the_sleeping() -> None:
    a, b = memory_pair()
    upper = chaos(a, ChaosSchedule((1,), (0.01,), delay_budget=0.05))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upper.send, b"x" * 100)  # 100 pieces, but only 5 delays of 10 ms
        assert await b.recv_exactly(100) == b"x" * 100
    assert trio.current_time() - start < 0.5
    with pytest.raises(ValueError):
        ChaosSchedule((1,), (0.0,), delay_budget=-1)
