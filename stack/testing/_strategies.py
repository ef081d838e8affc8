"""Hypothesis strategies for stream tests: payloads, chunkings, messages, deadlines, cancellations.

Every strategy favours small values (fast examples, readable failures) and reaches the edges
sometimes: empty payloads and messages, sizes of 1, a deadline that has already passed, a
payload of up to about 100 KiB. They all shrink toward the small and simple.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import trio
from hypothesis import strategies as st

from ._chaos import ChaosSchedule

__all__ = [
    "CancelPoint",
    "cancel_points",
    "chaos_schedules",
    "chunk_sizes",
    "chunkings",
    "deadline_schedules",
    "messages",
    "payloads",
]

MAX_PAYLOAD = 100 * 1024
"""Default largest payload: about 100 KiB."""


def _random_bytes(size_and_seed: tuple[int, int]) -> bytes:
    size, seed = size_and_seed
    return random.Random(seed).randbytes(size)


def payloads(*, max_size: int = MAX_PAYLOAD) -> st.SearchStrategy[bytes]:
    """Byte strings: mostly up to 64 bytes, often up to 2 KiB, about one in ten up to
    ``max_size`` (pseudo-random bytes, so a misplaced or repeated fragment never matches
    by chance). Includes ``b""``."""
    if max_size < 0:
        raise ValueError("max_size must be >= 0")
    small = st.binary(max_size=min(64, max_size))
    medium = st.binary(max_size=min(2048, max_size))
    if max_size <= 2048:
        return st.one_of(small, small, medium)
    large = st.tuples(st.integers(2049, max_size), st.integers(0, 2**32 - 1)).map(_random_bytes)
    return st.one_of(small, small, small, medium, medium, small, medium, small, medium, large)


def chunk_sizes(*, max_size: int = 65536) -> st.SearchStrategy[int]:
    """Sizes for one send, one receive or one fragment: 1..``max_size``, mostly small."""
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    return st.one_of(
        st.integers(1, min(16, max_size)),
        st.integers(1, min(1500, max_size)),
        st.integers(1, max_size),
    )


def chunkings(data_len: int, *, max_chunks: int = 32) -> st.SearchStrategy[list[int]]:
    """Ways to cut ``data_len`` bytes into sends: lists of sizes >= 1 summing to ``data_len``
    (``[]`` for 0), at most ``max_chunks`` of them. Shrinks toward a single send."""
    if data_len < 0 or max_chunks < 1:
        raise ValueError("data_len must be >= 0 and max_chunks >= 1")
    if data_len == 0:
        return st.just([])
    if data_len == 1:
        return st.just([1])
    cuts = st.lists(st.integers(1, data_len - 1), unique=True, max_size=min(max_chunks, data_len) - 1)

    def sizes(points: list[int]) -> list[int]:
        edges = [0, *sorted(points), data_len]
        return [hi - lo for lo, hi in itertools.pairwise(edges)]

    return cuts.map(sizes)


def messages(*, max_count: int = 16, max_size: int = 4096, avoid: bytes = b"") -> st.SearchStrategy[list[bytes]]:
    """Lists of messages (empty messages included), each up to ``max_size`` bytes.

    ``avoid``: a byte string no message may contain (a delimiter framing's delimiter); it is
    removed from the generated messages.
    """
    one = payloads(max_size=max_size)
    if avoid:

        def strip(msg: bytes) -> bytes:
            while avoid in msg:
                msg = msg.replace(avoid, b"")
            return msg

        one = one.map(strip)
    return st.lists(one, max_size=max_count)


def deadline_schedules(*, max_seconds: float = 0.005, max_size: int = 8) -> st.SearchStrategy[list[float | None]]:
    """Non-empty lists of relative deadlines in seconds, used in turn by successive calls:
    ``None`` (no deadline), ``0.0`` (already passed when the call starts) or a short time."""
    one: st.SearchStrategy[float | None] = st.one_of(
        st.none(), st.just(0.0), st.floats(0.0, max_seconds, allow_nan=False)
    )
    return st.lists(one, min_size=1, max_size=max_size)


@dataclass(frozen=True)
class CancelPoint:
    """When another task cancels a call: after ``delay`` seconds, then ``checkpoints`` more
    trips through the scheduler (``CancelPoint(0, 0)``: as soon as the call blocks)."""

    delay: float = 0.0
    checkpoints: int = 0

    async def wait(self) -> None:
        """Sleep until this point (from when it is called)."""
        if self.delay > 0:
            await trio.sleep(self.delay)
        for _ in range(self.checkpoints):
            await trio.lowlevel.checkpoint()


def cancel_points(*, max_delay: float = 0.003, max_checkpoints: int = 20) -> st.SearchStrategy[CancelPoint]:
    """Points at which a concurrent task cancels a call (see :class:`CancelPoint`)."""
    return st.builds(
        CancelPoint,
        delay=st.one_of(st.just(0.0), st.floats(0.0, max_delay, allow_nan=False)),
        checkpoints=st.integers(0, max_checkpoints),
    )


def chaos_schedules(*, max_size: int = 65536) -> st.SearchStrategy[ChaosSchedule]:
    """:class:`ChaosSchedule`\\ s: up to six fragment sizes (mostly small) and up to four delays
    (mostly 0, sometimes 0.5-2 ms). Shrinks toward ``ChaosSchedule((1,), (0.0,))``."""
    delay = st.one_of(st.just(0.0), st.just(0.0), st.sampled_from((0.0005, 0.001, 0.002)))
    return st.builds(
        ChaosSchedule,
        st.lists(chunk_sizes(max_size=max_size), min_size=1, max_size=6).map(tuple),
        st.lists(delay, min_size=1, max_size=4).map(tuple),
    )
