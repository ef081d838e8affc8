"""The run's watchdog (:mod:`stack.watchdog`): a wait armed with a short resolution fires on time
even when the sweeper was already asleep for a longer period (a proxy arming ``timeout / 8``
before a backend in the same run arms its keep-alive limit). Trio's autojump clock keeps it fast.
"""

from __future__ import annotations

import trio
import trio.testing

from stack.watchdog import MIN_PERIOD, watchdog


def test_a_shorter_resolution_wakes_a_sweeper_asleep_for_a_longer_one() -> None:
    async def main() -> None:
        dog = watchdog()
        long_wait, short_wait = trio.CancelScope(), trio.CancelScope()
        dog.arm("long", trio.current_time() + 100.0, long_wait, 10.0)  # the sweeper sleeps 10 s
        await trio.sleep(1.0)
        start = trio.current_time()
        dog.arm("short", start + 0.3, short_wait, 0.05)
        with short_wait:  # what a connection's wait does: the watchdog cancels it
            await trio.sleep_forever()
        assert trio.current_time() - start <= 0.3 + 0.05 + MIN_PERIOD  # not ~9 s later
        assert not long_wait.cancel_called and dog.period == 0.05
        assert dog.disarm("long") and not dog.disarm("short")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
