"""The machinery the conformance checks share: a property runner on hypothesis, and small helpers.

The checks prove that a layer keeps the contract of docs/design.md, with hypothesis; each has its
module (:mod:`._check_bytes`, :mod:`._check_messages`, :mod:`._check_detach`) and they all run here::

    async def test_my_layer():
        await check_bytestream(make_pair)             # two connected ByteStreams
        await check_message_stream(make_msg_pair)     # two connected MessageStreams
        await check_detach(make_lower_pair, attach)   # lower pair, then attach both ends

``make_pair`` is an async callable returning two connected streams ``(a, b)``, new ones on every
call (as trio's stream checkers take them). ``attach`` takes the two lower streams and returns
the two upper ones, doing any handshake concurrently. Streams are closed by the check.

Each check runs several *properties*, each a separate hypothesis test whose name is in the
failure (``check_bytestream.recv_deadlines``), in order; the first that fails raises (with
hypothesis' falsifying example in the exception's notes). ``skip=`` names properties a layer
does not claim.

How it runs: hypothesis runs in a worker thread (``trio.to_thread.run_sync``) and runs each
example back in the caller's trio loop (``trio.from_thread.run``), with
:data:`~stack.testing.current_schedule` set to the drawn chaos schedule (fragment sizes raised
for large transfers, to bound the number of I/O calls). Every example runs under a timeout
(``example_timeout`` seconds): a hang is a failure that says so (once one example hung, the
examples hypothesis then tries while shrinking get a timeout of three times the slowest passing
example, at least a second). A failure inside the example's nurseries is raised bare when it is
the only one. Settings: see :func:`stack.testing.check_settings`; ``end_of_stream`` and
``closed`` run a fifth of ``max_examples``, ``busy`` and ``broken`` a tenth (at least 5).

The shared helpers: :func:`_attempt` runs a call that another task may cancel at a drawn
:class:`~stack.testing.CancelPoint` (a ``Timeout`` is an outcome, not an error); :func:`_expect`,
:func:`_check_closed_after_aclose` and :func:`_check_broken` probe the error contract (a broken
stream that this side then closes raises ``Closed``, not ``Broken``: a local close wins);
:func:`_using` sets the chaos schedule scaled for a transfer; :func:`_closing` closes whatever an
example opened, even when cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio
import trio.testing
from hypothesis import given
from hypothesis import settings as Settings
from hypothesis import strategies as st

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, Timeout
from stack.streams import ByteStream, MessageStream, Stream

from ._chaos import ChaosSchedule, current_schedule
from ._settings import check_settings
from ._strategies import CancelPoint, cancel_points

__all__ = ["EXAMPLE_TIMEOUT"]

EXAMPLE_TIMEOUT = 10.0
"""Default seconds one example may take before the check calls it a hang."""

BytePairMaker = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]
MessagePairMaker = Callable[[], Awaitable[tuple[MessageStream, MessageStream]]]
Attach = Callable[[ByteStream, ByteStream], Awaitable[tuple[Stream, Stream]]]

_SETTLE = 0.2  # seconds to wait for a task to block before a Busy probe


# ---------------------------------------------------------------------------------------------
# running properties


@dataclass(frozen=True)
class _Property:
    name: str
    strategies: dict[str, st.SearchStrategy[Any]]
    body: Callable[..., Awaitable[None]]
    scale: float = 1.0


async def _run_properties(
    check: str,
    props: Sequence[_Property],
    settings: Settings | None,
    skip: Collection[str],
    example_timeout: float,
) -> None:
    names = {p.name for p in props}
    unknown = set(skip) - names
    if unknown:
        raise ValueError(f"{check}: unknown properties in skip: {sorted(unknown)} (known: {sorted(names)})")
    for prop in props:
        if prop.name not in skip:
            await _run_property(check, prop, settings, example_timeout)


async def _run_property(check: str, prop: _Property, settings: Settings | None, example_timeout: float) -> None:
    label = f"{check}.{prop.name}"

    slowest = 0.0  # of the passing examples
    hung = False

    async def example(kwargs: dict[str, Any]) -> None:
        nonlocal slowest, hung
        # Once an example hung, hypothesis shrinks it: later examples get a timeout near the
        # time passing ones took, so a hang costs seconds, not minutes.
        timeout = min(example_timeout, max(1.0, 3 * slowest)) if hung else example_timeout
        start = trio.current_time()
        with trio.move_on_after(timeout) as scope:
            try:
                await prop.body(**kwargs)
            except BaseExceptionGroup as group:
                # One failure wrapped by nurseries: raise it bare, so hypothesis tells distinct
                # failures apart and the report shows the assertion.
                leaves = _leaves(group)
                if len(leaves) == 1:
                    raise leaves[0] from None
                raise
        if scope.cancelled_caught:
            hung = True
            raise AssertionError(
                f"{label}: the example did not finish within {timeout:.3g} s: a call that should have "
                "returned or raised hung (see the falsifying example)"
            )
        slowest = max(slowest, trio.current_time() - start)

    def test(**kwargs: Any) -> None:
        trio.from_thread.run(example, kwargs)

    test.__name__ = prop.name
    test.__qualname__ = label
    test.__module__ = __name__
    runner = check_settings(settings, scale=prop.scale)(given(**prop.strategies)(test))
    try:
        await trio.to_thread.run_sync(runner)
    except BaseException as exc:
        exc.add_note(f"stack.testing: property {label} failed")
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _floor(total: int) -> int:
    """Smallest fragment / chunk size for a transfer of ``total`` bytes (bounds the I/O calls)."""
    return max(1, total // 64)


@contextmanager
def _using(schedule: ChaosSchedule, total: int) -> Iterator[int]:
    """Make ``schedule`` (scaled for ``total`` bytes) the chaos schedule; yield the size floor."""
    floor = _floor(total)
    token = current_schedule.set(schedule.at_least(floor))
    try:
        yield floor
    finally:
        current_schedule.reset(token)


@asynccontextmanager
async def _closing(*opened: Stream) -> AsyncIterator[list[Stream]]:
    """Close every stream of ``opened``, and of the list it yields (which may grow), at the end,
    even when cancelled."""
    streams = list(opened)
    try:
        yield streams
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
            for s in reversed(streams):
                await s.aclose()


def _at(relative: float | None) -> float:
    return FOREVER if relative is None else trio.current_time() + relative


async def _cancel_later(scope: trio.CancelScope, point: CancelPoint) -> None:
    await point.wait()
    scope.cancel()


Outcome = tuple[Literal["ok", "timeout", "cancelled"], Any]


async def _attempt(call: Callable[[], Awaitable[Any]], cancel: CancelPoint | None) -> Outcome:
    """Run ``call``; another task cancels it at ``cancel``. Timeout is an outcome, not an error."""
    if cancel is None:
        try:
            return ("ok", await call())
        except Timeout as exc:
            return ("timeout", exc)
    outcome: Outcome = ("cancelled", None)
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_later, scope, cancel)
        with scope:
            try:
                outcome = ("ok", await call())
            except Timeout as exc:
                outcome = ("timeout", exc)
        nursery.cancel_scope.cancel()
    return outcome


async def _settle() -> None:
    """Let the other tasks run until they block (bounded)."""
    with trio.move_on_after(_SETTLE):
        await trio.testing.wait_all_tasks_blocked(0.002)


async def _expect(exc_type: type[BaseException], call: Callable[[], Awaitable[Any]], what: str) -> None:
    """``call`` must raise ``exc_type`` without blocking."""
    with trio.move_on_after(_SETTLE * 5) as scope:
        try:
            result = await call()
        except exc_type:
            return
        except Exception as exc:
            raise AssertionError(f"{what}: expected {exc_type.__name__}, got {exc!r}") from exc
        raise AssertionError(f"{what}: expected {exc_type.__name__}, but it returned {result!r}")
    assert not scope.cancelled_caught
    raise AssertionError(f"{what}: expected {exc_type.__name__} at once, but the call blocked")


def _bottom(stream: Stream) -> Stream:
    while stream.lower is not None:
        stream = stream.lower
    return stream


def _reset_bottom(stream: Stream) -> bool:
    """Reset the bottom of ``stream``'s stack if it can be reset (memory, TCP). Did it?"""
    bottom = _bottom(stream)
    reset = getattr(bottom, "reset", None)
    if not callable(reset) or bottom.info.get("transport") not in ("memory", "tcp"):
        return False
    reset()
    return True


def _short(data: bytes | bytearray, limit: int = 48) -> str:
    if len(data) <= limit:
        return repr(bytes(data))
    return f"{bytes(data[:limit])!r}... ({len(data)} bytes)"


# ---------------------------------------------------------------------------------------------
# what the ByteStream and MessageStream checks share: the error probes, deadline strategies


async def _check_closed_after_aclose(s: Stream, who: str) -> None:
    await s.aclose()
    await s.aclose()  # idempotent
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("done", lambda: s.done())]
    if isinstance(s, ByteStream):
        calls += [
            ("recv", lambda: s.recv()),
            ("recv_exactly", lambda: s.recv_exactly(1)),
            ("recv_until", lambda: s.recv_until(b"\n")),
            ("send", lambda: s.send(b"x")),
        ]
    elif isinstance(s, MessageStream):
        calls += [("recv", lambda: s.recv()), ("send", lambda: s.send(b"x"))]
    if s.lower is not None:
        calls.append(("detach", lambda: s.detach()))
    for name, call in calls:
        await _expect(Closed, call, f"{who}.{name}() after aclose()")


async def _check_broken(s: Stream, calls: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
    for round_ in ("first", "later"):
        for name, call in calls:
            what = f"{name}() on the peer of a reset connection ({round_} call)"
            with trio.move_on_after(_SETTLE * 10) as scope:
                try:
                    result = await call()
                except Broken:
                    continue
                except Exception as exc:
                    raise AssertionError(f"{what}: expected Broken, got {exc!r}") from exc
                raise AssertionError(f"{what}: expected Broken, but it returned {result!r}")
            assert scope.cancelled_caught
            raise AssertionError(f"{what}: expected Broken, but the call hung")
    # A local close wins over the earlier failure (trio's rule): after aclose(), Closed.
    await _check_closed_after_aclose(s, "the broken peer, closed")


def _cancel_lists() -> st.SearchStrategy[list[CancelPoint | None]]:
    return st.lists(st.one_of(st.none(), cancel_points()), min_size=1, max_size=8)


def _reader_delays() -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.floats(0.0, 0.005, allow_nan=False))


def _read_pauses() -> st.SearchStrategy[list[float]]:
    pause = st.one_of(st.just(0.0), st.just(0.0), st.floats(0.0, 0.001, allow_nan=False))
    return st.lists(pause, min_size=1, max_size=4)
