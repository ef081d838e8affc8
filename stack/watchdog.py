"""Coarse deadlines for the waits many connections repeat: one sweeper instead of a scope per wait.

Theory of operation. A server connection waits for every next request under a limit (a header
or keep-alive timeout). With a cancel scope per wait, that costs a scope's setup, its deadline
registration and its teardown per request, a large share of a small request. Here a connection
that already runs inside a long-lived cancel scope of its own (one per connection) *arms* the
watchdog before the wait and *disarms* it after: a dictionary store and a delete. One system task
per trio run sweeps the armed waits every :attr:`Watchdog.period` seconds and cancels the scope of
each whose deadline has passed; the cancelled connection sees the cancellation in its wait and
ends its scope, so it can only be used where a timeout ends what the scope covers (a connection
whose limit passed closes, or sends 408 and closes).

Precision: a deadline fires between 0 and one period late. The period is the smallest
``resolution`` any arm asked for (a connection asks for a fraction of its limit), never below
:data:`MIN_PERIOD`; an arm that lowers it also brings the sweeper's current sleep forward (a
sleep begun with a longer period would otherwise make a shorter limit fire that much late).
The sweeper sleeps on an event while nothing is armed.

A wait that completes in the same tick as its deadline may find its scope cancelled after the wait
returned: :meth:`Watchdog.disarm` then returns False, and the caller treats that as a timeout.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

__all__ = ["MIN_PERIOD", "Cancellable", "Watchdog", "watchdog"]

MIN_PERIOD = 0.005
"""Seconds: the sweeper never wakes more often than this."""


class Cancellable(Protocol):
    """What an armed wait ends: a :class:`trio.CancelScope`, or anything with ``cancel()`` (the
    reverse proxy resets a backend connection instead of cancelling a scope)."""

    def cancel(self) -> None: ...


class Watchdog:
    """Cancels the scopes of armed waits whose deadline passed (see the module docstring)."""

    __slots__ = ("_armed", "_nap", "_wake", "now", "period")

    def __init__(self) -> None:
        self._armed: dict[object, tuple[float, Cancellable]] = {}
        #: The run's clock, read in one call (``trio.current_time()`` takes three): for callers
        #: that compute the deadlines they arm.
        self.now = trio.lowlevel.current_clock().current_time
        self._wake: trio.Event | None = None
        self._nap: trio.CancelScope | None = None  # the sweeper's sleep between two sweeps
        self.period = math.inf

    def arm(self, key: object, deadline: float, scope: Cancellable, resolution: float) -> None:
        """Cancel ``scope`` once ``deadline`` passed, unless :meth:`disarm` (same ``key``) comes first.
        ``resolution``: how late the cancellation may come, at most."""
        if resolution < self.period:
            self.period = period = max(resolution, MIN_PERIOD)
            nap = self._nap
            if nap is not None:  # sleeping the longer period: wake up by the new one
                nap.deadline = min(nap.deadline, self.now() + period)
        self._armed[key] = (deadline, scope)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def disarm(self, key: object) -> bool:
        """Forget the wait armed under ``key``; False if there was none (the sweeper fired it: its
        scope was cancelled, which the caller need not ask the scope)."""
        return self._armed.pop(key, None) is not None

    async def run(self) -> None:
        """The sweeper (a system task): every period, cancel what is due; sleep while nothing is armed."""
        armed = self._armed
        while True:
            if not armed:
                self._wake = trio.Event()
                await self._wake.wait()
            with trio.CancelScope(deadline=self.now() + self.period) as self._nap:  # as trio.sleep does
                await trio.sleep_forever()
            self._nap = None
            now = trio.current_time()
            due = [key for key, (deadline, _) in armed.items() if deadline <= now]
            for key in due:
                _, scope = armed.pop(key)
                scope.cancel()


_WATCHDOG: trio.lowlevel.RunVar[Watchdog] = trio.lowlevel.RunVar("stack.watchdog")


def watchdog() -> Watchdog:
    """The watchdog of the current trio run (its sweeper starts on first use)."""
    try:
        return _WATCHDOG.get()
    except LookupError:
        dog = Watchdog()
        _WATCHDOG.set(dog)
        trio.lowlevel.spawn_system_task(dog.run, name="stack.watchdog")
        return dog
