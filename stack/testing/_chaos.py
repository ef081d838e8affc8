"""Chaos: a ByteStream layer that fragments and delays I/O, to shake out buffering bugs.

``chaos(stream)`` wraps any :class:`~stack.ByteStream`. The result is a ByteStream with exactly
the same bytes in both directions, delivered in pieces:

* each receive asks the stream below for at most the schedule's next fragment size (so a layer
  above sees its data arrive in awkward pieces: a length header split in two, a TLS record in
  ten);
* each send commits at most the next fragment size into this layer's outgoing buffer, and the
  buffer goes down in pieces of the following sizes (so the stream below sees many small sends);
* before each I/O call it sleeps the schedule's next delay (``0`` is just a checkpoint; small
  real delays such as 0.0005-0.002 s let the peer's task run in between, and let deadlines and
  cancellations land in the middle of a transfer), until the schedule's ``delay_budget`` is
  spent (then it only checkpoints).

It keeps every rule of a layer (``stack/streams.py``): receives and sends are cancel-safe,
``Timeout.sent`` is exact, committed bytes are delivered, and ``detach()`` hands back any byte it
read ahead (the lower stream's next ``recv`` returns it) and returns the stream below.

The schedule is a :class:`ChaosSchedule`: finite lists of fragment sizes and delays, cycled,
each direction of each chaos stream walking them from the start, so a run is reproducible as far
as the scheduler allows. When no schedule is passed, :data:`current_schedule` (a ContextVar)
supplies one: the conformance checks set it for every hypothesis example, so any ``make_pair``
that calls :func:`chaos` or :func:`chaos_pair` is fragmented by the schedule hypothesis drew (and
shrinks with it). Outside a check a seeded pseudo-random schedule is used: the seed is taken from
the environment variable ``STACK_CHAOS_SEED`` (default 0) plus a counter of the chaos streams made
so far in the process.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import trio

from stack.passthrough import PassThrough
from stack.streams import ByteStream

from ._memory import memory_pair

__all__ = ["ChaosSchedule", "ChaosStream", "chaos", "chaos_pair", "current_schedule"]


@dataclass(frozen=True)
class ChaosSchedule:
    """Fragment sizes (each >= 1) and delays in seconds (each >= 0), both cycled.

    A schedule is immutable; each direction of each :class:`ChaosStream` keeps its own position
    in it. ``ChaosSchedule((1,), (0.0,))`` is the harshest fragmentation with no real delays.
    """

    sizes: tuple[int, ...] = (1, 7, 512, 65536)
    delays: tuple[float, ...] = (0.0,)
    delay_budget: float = 0.05
    """Seconds of real delay each direction of a stream may sleep in all; past it, delays
    become plain checkpoints (so a transfer cut into thousands of pieces stays fast)."""

    def __post_init__(self) -> None:
        sizes = tuple(int(s) for s in self.sizes)
        delays = tuple(float(d) for d in self.delays)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"ChaosSchedule sizes must be a non-empty list of sizes >= 1, not {self.sizes!r}")
        if not delays or any(not (0 <= d < math.inf) for d in delays):
            raise ValueError(f"ChaosSchedule delays must be a non-empty list of seconds >= 0, not {self.delays!r}")
        if not 0 <= self.delay_budget < math.inf:
            raise ValueError(f"ChaosSchedule delay_budget must be seconds >= 0, not {self.delay_budget!r}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "delays", delays)

    @classmethod
    def from_seed(cls, seed: int) -> ChaosSchedule:
        """A pseudo-random schedule determined by ``seed``: mixed tiny and large fragments,
        mostly zero delays with an occasional real one of a millisecond or two."""
        rng = random.Random(seed)
        sizes = tuple(rng.choice((1, 2, 3, 5, 16, 100, 1000, 4096, 65536)) for _ in range(rng.randint(1, 6)))
        delays = tuple(rng.choice((0.0, 0.0, 0.0, 0.0005, 0.001)) for _ in range(rng.randint(1, 4)))
        return cls(sizes, delays)

    def at_least(self, size: int) -> ChaosSchedule:
        """The same schedule with every fragment size raised to at least ``size``.

        The checks use it to bound the number of I/O calls (and so the time) of large transfers.
        """
        if size <= 1:
            return self
        return ChaosSchedule(tuple(max(s, size) for s in self.sizes), self.delays, self.delay_budget)


current_schedule: ContextVar[ChaosSchedule | None] = ContextVar("stack_testing_chaos_schedule", default=None)
"""The schedule :func:`chaos` uses when none is passed (``None``: a seeded default)."""

_made = itertools.count()


def _default_schedule() -> ChaosSchedule:
    schedule = current_schedule.get()
    if schedule is not None:
        return schedule
    try:
        base = int(os.environ.get("STACK_CHAOS_SEED", "0"))
    except ValueError:
        base = 0
    return ChaosSchedule.from_seed(base + next(_made))


class _Cursor:
    """One direction's position in a schedule."""

    __slots__ = ("_budget", "_delays", "_sizes")

    def __init__(self, schedule: ChaosSchedule) -> None:
        self._sizes: Iterator[int] = itertools.cycle(schedule.sizes)
        self._delays: Iterator[float] = itertools.cycle(schedule.delays)
        self._budget = schedule.delay_budget

    def size(self) -> int:
        return next(self._sizes)

    async def pause(self) -> None:
        delay = next(self._delays)
        if 0 < delay <= self._budget:
            self._budget -= delay
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()


class ChaosStream(PassThrough):
    """A ByteStream over ``lower`` that fragments and delays I/O per a :class:`ChaosSchedule`.

    The outgoing buffer holds at most one fragment of committed bytes beyond what the stream
    below accepted. ``info`` is the lower stream's, plus ``chaos``: the schedule in use.
    """

    kind = "chaos"
    _lower: ByteStream

    def __init__(self, lower: ByteStream, schedule: ChaosSchedule) -> None:
        if not isinstance(lower, ByteStream):
            raise TypeError(f"chaos wraps a ByteStream, not {type(lower).__name__}")
        super().__init__(lower, {"chaos": schedule})
        self.schedule = schedule
        self._rx = _Cursor(schedule)
        self._tx = _Cursor(schedule)

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        # Cancel-safe: the pause consumes nothing, and the lower recv consumes nothing if it
        # is cancelled or times out.
        size = self._rx.size()
        await self._rx.pause()
        return await self._lower.recv(min(max_bytes, size), deadline=deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        # Push the previous fragment down first (so at most one fragment waits here), then
        # commit the next one. Everything that can be cancelled happens before the commit.
        if self._outbuf:
            await self._flush(deadline)
        else:
            await self._tx.pause()
        n = min(len(data), self._tx.size())
        self._outbuf += data[:n]
        return n

    async def _flush(self, deadline: float) -> None:
        outbuf = self._outbuf
        lower = self._lower
        while outbuf:
            await self._tx.pause()
            n = min(self._tx.size(), len(outbuf))
            chunk = bytearray(outbuf[:n])
            try:
                await lower.send_from(chunk, deadline=deadline)
            finally:
                del outbuf[: n - len(chunk)]


def chaos(stream: ByteStream, schedule: ChaosSchedule | None = None) -> ChaosStream:
    """Wrap ``stream`` in a :class:`ChaosStream` (no handshake: returns at once).

    ``schedule`` defaults to :data:`current_schedule`, else a seeded pseudo-random schedule.
    """
    return ChaosStream(stream, schedule if schedule is not None else _default_schedule())


def chaos_pair(*, capacity: int = 65536, schedule: ChaosSchedule | None = None) -> tuple[ChaosStream, ChaosStream]:
    """A :func:`~stack.testing.memory_pair` with :func:`chaos` on both ends."""
    a, b = memory_pair(capacity=capacity)
    return chaos(a, schedule), chaos(b, schedule)
