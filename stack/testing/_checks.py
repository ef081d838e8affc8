"""Conformance checks: prove that a layer keeps the contract of docs/design.md, with hypothesis.

::

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
does not claim. The properties, for ByteStreams (``check_bytestream``):

``round_trip``
    Random payloads both ways at once, sent in random chunks and received with a random mix of
    ``recv``, ``recv_into``, ``recv_exactly`` and ``recv_until`` (each result checked against what must come
    next), under the chaos schedule hypothesis drew; then ``done()`` and the peer's ``recv``
    returns ``b""``, and ``b""`` again.
``recv_deadlines``
    The same while the receiver's calls get random short deadlines and are cancelled from
    another task at random points: every byte arrives exactly once, in order; a ``Timeout`` is
    a :class:`stack.Timeout` with ``sent`` None; the stream goes on working.
``send_deadlines``
    Sends with random deadlines and cancellations while the peer reads late and slowly
    (backpressure): each send succeeds or raises ``Timeout`` with ``0 <= sent <= len``, and the
    peer receives exactly the committed prefixes, in order, once (a cancelled send, which has
    no count, may have committed any prefix); a final ``done()`` delivers what was buffered.
``end_of_stream``
    ``recv_until`` past ``max_bytes`` raises ``MessageTooLarge`` and leaves the bytes;
    ``recv_exactly`` at the end raises ``EndOfStream`` whose ``partial`` is what was left;
    then ``b""`` for ever.
``closed``
    ``done()`` twice is fine, then ``send`` raises ``Closed`` while receiving goes on (a
    half-close); ``aclose()`` twice is fine, then every call raises ``Closed``; the peer of an
    ``aclose()`` reads the end of the stream.
``busy``
    A second concurrent receive raises ``Busy`` at once, and the first call is unaffected;
    the same for a second send (and ``done()``) while a large send is still in progress once
    the other tasks have blocked (if the first send already finished, there is nothing to probe).
``broken``
    If the bottom of the stack (following ``.lower``) is a memory or TCP stream, resetting it
    makes the peer's next receive and send raise ``Broken``, and every later call too.

For MessageStreams (``check_message_stream``) the same properties with messages (empty ones
included; ``messages=`` supplies a strategy of valid message lists): a message is committed
whole or not at all (``Timeout.committed``, ``sent`` 0 or ``len(msg)``), the receiver gets
exactly the committed messages in order, ``recv`` raises ``EndOfStream`` after the peer's
``done()`` (again and again) and ``async for`` ends cleanly; there is no ``end_of_stream``
property (it is part of ``round_trip``). ``eof=False`` is for layers with no end of stream
(datagrams: UDP): ``done()`` there only has to make later sends raise ``Closed``; the receivers
count the messages instead of waiting for ``EndOfStream`` (``send_deadlines`` ends with a marker
message), and the peer of an ``aclose()`` is not expected to see anything.

``check_detach`` has one property, ``detach``: data is exchanged at the upper level both ways,
each side also sends random raw bytes on its lower stream right behind its upper data (so the
peer's layer reads them ahead; with ``raw_after_detach=True`` right after its detach, for
layers that say goodbye on detach, such as TLS), both sides detach concurrently, each
``detach()`` returns the stream below, the upper stream raises ``Closed`` afterwards, each lower
stream returns the peer's raw bytes exactly, and the lower streams still work both ways.

How it runs: hypothesis runs in a worker thread (``trio.to_thread.run_sync``) and runs each
example back in the caller's trio loop (``trio.from_thread.run``), with
:data:`~stack.testing.current_schedule` set to the drawn chaos schedule (fragment sizes raised
for large transfers, to bound the number of I/O calls). Every example runs under a timeout
(``example_timeout`` seconds): a hang is a failure that says so (once one example hung, the
examples hypothesis then tries while shrinking get a timeout of three times the slowest passing
example, at least a second). A failure inside the example's nurseries is raised bare when it is
the only one. Settings: see :func:`stack.testing.check_settings`; ``end_of_stream`` and
``closed`` run a fifth of ``max_examples``, ``busy`` and ``broken`` a tenth (at least 5).
"""

from __future__ import annotations

import random
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
from stack.errors import Broken, Busy, Closed, EndOfStream, MessageTooLarge, Timeout
from stack.streams import ByteStream, MessageStream, Stream

from ._chaos import ChaosSchedule, current_schedule
from ._settings import check_settings
from ._strategies import CancelPoint, cancel_points, chaos_schedules, chunk_sizes, deadline_schedules, payloads
from ._strategies import messages as message_lists

__all__ = ["EXAMPLE_TIMEOUT", "check_bytestream", "check_detach", "check_message_stream"]

EXAMPLE_TIMEOUT = 10.0
"""Default seconds one example may take before the check calls it a hang."""

BytePairMaker = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]
MessagePairMaker = Callable[[], Awaitable[tuple[MessageStream, MessageStream]]]
Attach = Callable[[ByteStream, ByteStream], Awaitable[tuple[Stream, Stream]]]

_SETTLE = 0.2  # seconds to wait for a task to block before a Busy probe
_BUSY_BYTES = 256 * 1024  # a send this large blocks on most stacks (memory capacity 64 KiB)


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


def _common_prefix(a: bytes | memoryview, b: bytes | memoryview) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------------------
# ByteStream helpers


@dataclass(frozen=True)
class _RecvOp:
    """One receive call: ``recv(size)``, ``recv_into`` a ``size``-byte view, ``recv_exactly(size)`` or
    ``recv_until(delim, max_bytes=size)`` (an empty ``delim`` means one byte taken from the data
    still to come, so it is found)."""

    kind: Literal["recv", "into", "exactly", "until"]
    size: int
    delim: bytes = b""


def _recv_plans() -> st.SearchStrategy[list[_RecvOp]]:
    op = st.one_of(
        st.builds(_RecvOp, st.just("recv"), chunk_sizes()),
        st.builds(_RecvOp, st.just("into"), chunk_sizes()),
        st.builds(_RecvOp, st.just("exactly"), st.one_of(st.just(0), chunk_sizes())),
        st.builds(_RecvOp, st.just("until"), chunk_sizes(), st.one_of(st.just(b""), st.binary(min_size=1, max_size=2))),
    )
    return st.lists(op, min_size=1, max_size=8)


async def _recv_op(stream: ByteStream, op: _RecvOp, rest: bytes, floor: int, deadline: float, who: str) -> bytes:
    """Run ``op``; check the result against ``rest`` (every byte still to come, then the end).
    Return the bytes it consumed."""
    if op.kind in ("recv", "into"):
        m = max(op.size, floor)
        if op.kind == "recv":
            data = await stream.recv(m, deadline=deadline)
        else:  # into a view in the middle of a larger buffer: nothing outside it may change
            buffer = bytearray(b"\xa5" * (m + 2))
            n = await stream.recv_into(memoryview(buffer)[1 : m + 1], deadline=deadline)
            assert 0 <= n <= m, f"{who}: recv_into a {m}-byte view returned {n}"
            assert buffer[0] == buffer[m + 1] == 0xA5, f"{who}: recv_into wrote outside its buffer"
            data = bytes(buffer[1 : n + 1])
        if not rest:
            assert data == b"", f"{who}: recv({m}) after every byte arrived returned {_short(data)}, not b''"
        else:
            assert data, f"{who}: recv({m}) returned b'' (end of stream) with {len(rest)} bytes still to come"
            assert len(data) <= m, f"{who}: recv({m}) returned {len(data)} bytes"
            assert rest.startswith(data), (
                f"{who}: recv({m}) returned {_short(data)}, expected a prefix of {_short(rest)}"
            )
        return data
    if op.kind == "exactly":
        n = max(op.size, floor) if op.size else 0
        try:
            data = await stream.recv_exactly(n, deadline=deadline)
        except EndOfStream as exc:
            assert n > len(rest), f"{who}: recv_exactly({n}) raised EndOfStream with {len(rest)} bytes to come"
            assert exc.partial == rest, (
                f"{who}: recv_exactly({n}) at the end: partial={_short(exc.partial)}, expected {_short(rest)}"
            )
            return exc.partial
        assert n <= len(rest), f"{who}: recv_exactly({n}) returned with only {len(rest)} bytes sent"
        assert data == rest[:n], f"{who}: recv_exactly({n}) returned {_short(data)}, expected {_short(rest[:n])}"
        return data
    mx = max(op.size, floor)
    delim = op.delim or (rest[op.size % len(rest) : op.size % len(rest) + 1] if rest else b"\n")
    at = rest.find(delim)
    expected: bytes | Literal["too large", "end"]
    if at >= 0 and at + len(delim) <= mx:
        expected = rest[: at + len(delim)]
    elif len(rest) >= mx:
        expected = "too large"
    else:
        expected = "end"
    what = f"{who}: recv_until({delim!r}, max_bytes={mx}) with {_short(rest)} to come"
    try:
        data = await stream.recv_until(delim, max_bytes=mx, deadline=deadline)
    except MessageTooLarge:
        assert expected == "too large", f"{what} raised MessageTooLarge, expected {expected!r}"
        return b""
    except EndOfStream as exc:
        assert expected == "end", f"{what} raised EndOfStream, expected {expected!r}"
        assert exc.partial == rest, f"{what}: EndOfStream.partial={_short(exc.partial)}"
        return exc.partial
    assert data == expected, f"{what} returned {_short(data)}, expected {expected!r}"
    return data


async def _receive_checked(
    stream: ByteStream,
    expected: bytes,
    plan: Sequence[_RecvOp],
    floor: int,
    who: str,
    deadlines: Sequence[float | None] = (None,),
    cancels: Sequence[CancelPoint | None] = (None,),
) -> None:
    """Receive all of ``expected`` then the end (twice), following ``plan`` with ``deadlines``
    and ``cancels`` in turn. A call that makes no progress for a whole turn of the plan is
    followed by a plain ``recv`` with no deadline, so the loop always ends."""
    pos = 0
    i = 0
    stalled = 0
    while pos < len(expected):
        if stalled > max(len(plan), len(deadlines), len(cancels)):
            op, relative, cancel = _RecvOp("recv", floor), None, None
        else:
            op, relative, cancel = plan[i % len(plan)], deadlines[i % len(deadlines)], cancels[i % len(cancels)]
        i += 1
        rest = expected[pos:]

        async def call(op: _RecvOp = op, rest: bytes = rest, relative: float | None = relative) -> bytes:
            return await _recv_op(stream, op, rest, floor, _at(relative), who)

        kind, value = await _attempt(call, cancel)
        if kind == "ok":
            pos += len(value)
            stalled = 0 if value else stalled + 1
            continue
        if kind == "timeout":
            assert isinstance(value, Timeout) and value.sent is None, (
                f"{who}: a receive's Timeout must have sent=None, not {value.sent!r}"
            )
        stalled += 1
    for _ in range(2):
        tail = await stream.recv()
        assert tail == b"", f"{who}: after all {len(expected)} bytes, recv() returned {_short(tail)}, not b''"


async def _send_chunked(stream: ByteStream, data: bytes, sizes: Sequence[int], floor: int, finish: bool = True) -> None:
    """Send ``data`` in chunks of ``sizes`` (in turn, at least ``floor``), alternating bytes and
    memoryview arguments; then ``done()`` if ``finish``."""
    view = memoryview(data)
    pos = 0
    i = 0
    if not data:
        await stream.send(b"")
    while pos < len(data):
        n = max(sizes[i % len(sizes)], floor)
        await stream.send(view[pos : pos + n] if i % 2 else bytes(view[pos : pos + n]))
        pos += n
        i += 1
    if finish:
        await stream.done()


async def _drain(
    stream: ByteStream, into: bytearray, sizes: Sequence[int] = (65536,), pauses: Sequence[float] = (0.0,)
) -> None:
    """Receive into ``into`` until the end of the stream, with ``sizes`` and ``pauses`` in turn."""
    i = 0
    while True:
        data = await stream.recv(sizes[i % len(sizes)])
        if not data:
            return
        into += data
        pause = pauses[i % len(pauses)]
        if pause:
            await trio.sleep(pause)
        i += 1


def _match_bytes(received: bytes, segments: Sequence[tuple[bytes, int | None]]) -> bool:
    """Is ``received`` the concatenation of ``payload[:sent]`` for each segment, where a ``sent``
    of None (a cancelled send) allows any prefix?"""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    view = memoryview(received)
    while todo:
        i, pos = todo.pop()
        if (i, pos) in seen:
            continue
        seen.add((i, pos))
        if i == len(segments):
            if pos == len(received):
                return True
            continue
        payload, sent = segments[i]
        if sent is not None:
            if view[pos : pos + sent] == payload[:sent]:
                todo.append((i + 1, pos + sent))
        else:
            longest = _common_prefix(view[pos:], payload)
            todo.extend((i + 1, pos + k) for k in range(longest + 1))
    return False


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _absent_delimiter(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    while True:
        delim = rng.randbytes(rng.randint(1, 4))
        if delim not in data:
            return delim


# ---------------------------------------------------------------------------------------------
# check_bytestream


async def check_bytestream(
    make_pair: BytePairMaker,
    *,
    settings: Settings | None = None,
    skip: Collection[str] = (),
    example_timeout: float = EXAMPLE_TIMEOUT,
) -> None:
    """Check that the ByteStreams ``make_pair`` returns keep the contract (see the module
    docstring for the properties). Raises on the first property that fails."""

    async def round_trip(
        payload_ab: bytes,
        payload_ba: bytes,
        send_sizes: list[int],
        plan_a: list[_RecvOp],
        plan_b: list[_RecvOp],
        chaos: ChaosSchedule,
    ) -> None:
        with _using(chaos, max(len(payload_ab), len(payload_ba))) as floor:
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b), trio.open_nursery() as nursery:
                nursery.start_soon(_send_chunked, a, payload_ab, send_sizes, floor)
                nursery.start_soon(_send_chunked, b, payload_ba, send_sizes, floor)
                nursery.start_soon(_receive_checked, b, payload_ab, plan_b, floor, "b")
                nursery.start_soon(_receive_checked, a, payload_ba, plan_a, floor, "a")

    async def recv_deadlines(
        payload: bytes,
        send_sizes: list[int],
        plan: list[_RecvOp],
        deadlines: list[float | None],
        cancels: list[CancelPoint | None],
        chaos: ChaosSchedule,
    ) -> None:
        with _using(chaos, len(payload)) as floor:
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, a, payload, send_sizes, floor)
                    nursery.start_soon(_receive_checked, b, payload, plan, floor, "b", deadlines, cancels)
                # still usable the other way after all those timeouts and cancellations
                reply = payload[:100] or b"ok"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, b, reply, [len(reply)], 1)
                    nursery.start_soon(_receive_checked, a, reply, [_RecvOp("exactly", len(reply))], 1, "a")

    async def send_deadlines(
        chunks: list[bytes],
        deadlines: list[float | None],
        cancels: list[CancelPoint | None],
        reader_delay: float,
        read_sizes: list[int],
        read_pauses: list[float],
        chaos: ChaosSchedule,
    ) -> None:
        total = sum(map(len, chunks))
        with _using(chaos, total) as floor:
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                received = bytearray()
                segments: list[tuple[bytes, int | None]] = []

                async def reader() -> None:
                    await trio.sleep(reader_delay)
                    await _drain(b, received, [max(s, floor) for s in read_sizes], read_pauses)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    for i, chunk in enumerate(chunks):
                        relative = deadlines[i % len(deadlines)]

                        async def call(chunk: bytes = chunk, relative: float | None = relative) -> None:
                            await a.send(chunk, deadline=_at(relative))

                        kind, value = await _attempt(call, cancels[i % len(cancels)])
                        if kind == "ok":
                            segments.append((chunk, len(chunk)))
                        elif kind == "timeout":
                            sent = value.sent
                            assert isinstance(sent, int) and 0 <= sent <= len(chunk), (
                                f"a send of {len(chunk)} bytes timed out with Timeout.sent={sent!r}"
                            )
                            segments.append((chunk, sent))
                        else:
                            segments.append((chunk, None))
                    await a.done()  # delivers whatever committed bytes are still buffered
                if not _match_bytes(bytes(received), segments):
                    raise AssertionError(
                        f"the receiver got {_short(received)}, which is not the committed prefixes of the sends "
                        f"in order, once; sends as (length, committed; None = cancelled): "
                        f"{[(len(p), s) for p, s in segments]}"
                    )

    async def end_of_stream(payload: bytes, extra: int, seed: int, chaos: ChaosSchedule) -> None:
        with _using(chaos, len(payload)):
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, a, payload, [len(payload) or 1], 1)
                    if payload:
                        delim = _absent_delimiter(payload, seed)
                        limit = 1 + seed % len(payload)
                        await _expect(
                            MessageTooLarge,
                            lambda: b.recv_until(delim, max_bytes=limit),
                            f"recv_until(max_bytes={limit}) with {len(payload)} bytes and no delimiter",
                        )
                    n = len(payload) + extra
                    try:
                        data = await b.recv_exactly(n)
                    except EndOfStream as exc:
                        assert exc.partial == payload, (
                            f"recv_exactly({n}) at the end: partial={_short(exc.partial)}, expected {_short(payload)}"
                            " (recv_until must leave the bytes it did not return)"
                        )
                    else:
                        raise AssertionError(
                            f"recv_exactly({n}) with {len(payload)} bytes sent returned {_short(data)}"
                        )
                for _ in range(2):
                    assert await b.recv() == b"", "recv() after the end must return b''"
                    assert await b.recv_exactly(0) == b"", "recv_exactly(0) after the end must return b''"
                    calls: list[tuple[Callable[[], Awaitable[bytes]], str]] = [
                        (lambda: b.recv_exactly(1), "recv_exactly(1)"),
                        (lambda: b.recv_until(b"\n"), "recv_until"),
                    ]
                    for call, what in calls:
                        try:
                            got = await call()
                        except EndOfStream as exc:
                            assert exc.partial == b"", f"{what} after the end: partial={exc.partial!r}"
                        else:
                            raise AssertionError(f"{what} after the end returned {got!r}, expected EndOfStream")

    async def closed(payload_ab: bytes, payload_ba: bytes, chaos: ChaosSchedule) -> None:
        with _using(chaos, max(len(payload_ab), len(payload_ba))) as floor:
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, a, payload_ab, [len(payload_ab) or 1], floor)
                    nursery.start_soon(_receive_checked, b, payload_ab, [_RecvOp("recv", 65536)], floor, "b")
                await a.done()  # again: nothing happens
                await _expect(Closed, lambda: a.send(b"x"), "send after done()")
                await _expect(Closed, lambda: a.send(b""), "send(b'') after done()")
                # half-close: the other direction goes on
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, b, payload_ba, [len(payload_ba) or 1], floor)
                    nursery.start_soon(_receive_checked, a, payload_ba, [_RecvOp("recv", 65536)], floor, "a")
                await _check_closed_after_aclose(a, "a")
            c, d = await _byte_pair(make_pair)
            async with _closing(c, d):
                await c.aclose()
                assert await d.recv() == b"", "the peer of a closed stream must read the end (b'')"
                await _check_closed_after_aclose(c, "c")

    async def busy(payload: bytes, seed: int, chaos: ChaosSchedule) -> None:
        with _using(chaos, _BUSY_BYTES):
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                data = payload or b"x"
                first: list[bytes] = []

                async def first_recv() -> None:
                    first.append(await b.recv())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first_recv)
                    await _settle()
                    await _expect(Busy, lambda: b.recv(), "a second concurrent recv")
                    await _expect(Busy, lambda: b.recv_exactly(1), "a concurrent recv_exactly")
                    await _expect(Busy, lambda: b.recv_until(b"\n"), "a concurrent recv_until")
                    await a.send(data)
                assert first and data.startswith(first[0]) and first[0], f"the first recv got {first!r}"
                rest = await b.recv_exactly(len(data) - len(first[0]))
                assert first[0] + rest == data, "the first recv's data was disturbed by the Busy ones"

                big = _random(_BUSY_BYTES, seed)
                sending = True

                async def first_send() -> None:
                    nonlocal sending
                    await a.send(big)
                    sending = False

                received = bytearray()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first_send)
                    await _settle()
                    if sending:  # blocked by backpressure (or a slow layer): a second send is Busy
                        await _expect(Busy, lambda: a.send(b"y"), "a second concurrent send")
                        await _expect(Busy, lambda: a.done(), "done() during a send")
                    while len(received) < len(big):
                        chunk = await b.recv()
                        assert chunk, "the end of the stream came before the first send's bytes"
                        received += chunk
                assert received == big, "a Busy send disturbed the bytes of the send in progress"

    async def broken(payload: bytes, chaos: ChaosSchedule) -> None:
        with _using(chaos, len(payload)) as floor:
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_chunked, a, payload, [len(payload) or 1], floor, False)
                    nursery.start_soon(_receive_exact, b, payload)
                if not _reset_bottom(a):
                    return
                await _check_broken(
                    b,
                    [
                        ("recv", lambda: b.recv()),
                        ("send", lambda: b.send(b"after the reset")),
                        ("recv_exactly", lambda: b.recv_exactly(1)),
                        ("done", lambda: b.done()),
                    ],
                )

    small = payloads(max_size=4096)
    props = [
        _Property(
            "round_trip",
            {
                "payload_ab": payloads(),
                "payload_ba": payloads(),
                "send_sizes": st.lists(chunk_sizes(), min_size=1, max_size=6),
                "plan_a": _recv_plans(),
                "plan_b": _recv_plans(),
                "chaos": chaos_schedules(),
            },
            round_trip,
        ),
        _Property(
            "recv_deadlines",
            {
                "payload": payloads(),
                "send_sizes": st.lists(chunk_sizes(), min_size=1, max_size=6),
                "plan": _recv_plans(),
                "deadlines": deadline_schedules(),
                "cancels": _cancel_lists(),
                "chaos": chaos_schedules(),
            },
            recv_deadlines,
        ),
        _Property(
            "send_deadlines",
            {
                "chunks": st.lists(payloads(max_size=32768), min_size=1, max_size=8),
                "deadlines": deadline_schedules(),
                "cancels": _cancel_lists(),
                "reader_delay": _reader_delays(),
                "read_sizes": st.lists(chunk_sizes(), min_size=1, max_size=4),
                "read_pauses": _read_pauses(),
                "chaos": chaos_schedules(),
            },
            send_deadlines,
        ),
        _Property(
            "end_of_stream",
            {"payload": small, "extra": st.integers(1, 100), "seed": st.integers(0, 2**32), "chaos": chaos_schedules()},
            end_of_stream,
            0.2,
        ),
        _Property("closed", {"payload_ab": small, "payload_ba": small, "chaos": chaos_schedules()}, closed, 0.2),
        _Property("busy", {"payload": small, "seed": st.integers(0, 2**32), "chaos": chaos_schedules()}, busy, 0.1),
        _Property("broken", {"payload": small, "chaos": chaos_schedules()}, broken, 0.1),
    ]
    await _run_properties("check_bytestream", props, settings, skip, example_timeout)


async def _byte_pair(make_pair: BytePairMaker) -> tuple[ByteStream, ByteStream]:
    a, b = await make_pair()
    assert isinstance(a, ByteStream) and isinstance(b, ByteStream), (
        f"make_pair must return ByteStreams, not {a!r}, {b!r}"
    )
    return a, b


async def _receive_exact(stream: ByteStream, expected: bytes) -> None:
    data = await stream.recv_exactly(len(expected))
    assert data == expected, f"received {_short(data)}, expected {_short(expected)}"


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


def _cancel_lists() -> st.SearchStrategy[list[CancelPoint | None]]:
    return st.lists(st.one_of(st.none(), cancel_points()), min_size=1, max_size=8)


def _reader_delays() -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.floats(0.0, 0.005, allow_nan=False))


def _read_pauses() -> st.SearchStrategy[list[float]]:
    pause = st.one_of(st.just(0.0), st.just(0.0), st.floats(0.0, 0.001, allow_nan=False))
    return st.lists(pause, min_size=1, max_size=4)


# ---------------------------------------------------------------------------------------------
# check_message_stream


def _match_messages(received: Sequence[bytes], segments: Sequence[tuple[bytes, bool | None]]) -> bool:
    """Is ``received`` the committed messages in order (a None segment may or may not be there)?"""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(segments):
            if j == len(received):
                return True
            continue
        msg, committed = segments[i]
        if committed is not False and j < len(received) and received[j] == msg:
            todo.append((i + 1, j + 1))
        if committed is not True:
            todo.append((i + 1, j))
    return False


async def _send_messages(stream: MessageStream, msgs: Sequence[bytes], finish: bool = True) -> None:
    for i, msg in enumerate(msgs):
        await stream.send(memoryview(msg) if i % 3 == 2 else msg)
    if finish:
        await stream.done()


async def _receive_messages(
    stream: MessageStream, expected: Sequence[bytes], who: str, iterate: bool = False, end: bool = True
) -> None:
    """Receive exactly ``expected`` then the end (``EndOfStream``, twice; not if ``end`` is false)."""
    got: list[bytes] = []
    if iterate and (end or expected):
        async for msg in stream:
            got.append(msg)
            assert len(got) <= len(expected), f"{who}: more messages than were sent: {got!r}"
            if not end and len(got) == len(expected):
                break
    else:
        for _ in expected:
            got.append(await stream.recv())
    assert got == list(expected), f"{who}: received {_messages(got)}, sent {_messages(expected)}"
    for _ in range(2 if end else 0):
        await _expect_end(stream, who)


async def _expect_end(stream: MessageStream, who: str) -> None:
    try:
        msg = await stream.recv()
    except EndOfStream:
        return
    raise AssertionError(f"{who}: recv() after the peer's done() returned {_short(msg)}, expected EndOfStream")


def _end_marker(msgs: Sequence[bytes]) -> bytes:
    """A message none of ``msgs`` equals (it ends a check when the layer has no end of stream)."""
    marker = b"stack.testing: end of the messages"
    while marker in msgs:
        marker += b"."
    return marker


def _messages(msgs: Sequence[bytes]) -> str:
    return "[" + ", ".join(_short(m, 16) for m in msgs[:20]) + (", ...]" if len(msgs) > 20 else "]") + f" ({len(msgs)})"


async def check_message_stream(
    make_pair: MessagePairMaker,
    *,
    messages: st.SearchStrategy[list[bytes]] | None = None,
    settings: Settings | None = None,
    skip: Collection[str] = (),
    example_timeout: float = EXAMPLE_TIMEOUT,
    eof: bool = True,
) -> None:
    """Check that the MessageStreams ``make_pair`` returns keep the contract (see the module
    docstring). ``messages``: a strategy of lists of messages the layer can carry (default
    :func:`~stack.testing.messages`; a delimiter layer passes ``messages(avoid=delim)``).
    ``eof=False``: the layer has no end of stream (datagrams); see the module docstring."""
    msgs_strategy = messages if messages is not None else message_lists()

    async def pair() -> tuple[MessageStream, MessageStream]:
        a, b = await make_pair()
        assert isinstance(a, MessageStream) and isinstance(b, MessageStream), "make_pair must return MessageStreams"
        return a, b

    async def round_trip(
        msgs_ab: list[bytes], msgs_ba: list[bytes], iterate_a: bool, iterate_b: bool, chaos: ChaosSchedule
    ) -> None:
        with _using(chaos, max(sum(map(len, msgs_ab)), sum(map(len, msgs_ba)))):
            a, b = await pair()
            async with _closing(a, b), trio.open_nursery() as nursery:
                nursery.start_soon(_send_messages, a, msgs_ab)
                nursery.start_soon(_send_messages, b, msgs_ba)
                nursery.start_soon(_receive_messages, b, msgs_ab, "b", iterate_b, eof)
                nursery.start_soon(_receive_messages, a, msgs_ba, "a", iterate_a, eof)

    async def recv_deadlines(
        msgs: list[bytes], deadlines: list[float | None], cancels: list[CancelPoint | None], chaos: ChaosSchedule
    ) -> None:
        with _using(chaos, sum(map(len, msgs))):
            a, b = await pair()
            async with _closing(a, b):
                got: list[bytes] = []

                async def receiver() -> None:
                    i = stalled = 0
                    while len(got) < len(msgs):
                        if stalled > max(len(deadlines), len(cancels)):
                            relative, cancel = None, None
                        else:
                            relative, cancel = deadlines[i % len(deadlines)], cancels[i % len(cancels)]
                        i += 1

                        async def call(relative: float | None = relative) -> bytes:
                            return await b.recv(deadline=_at(relative))

                        kind, value = await _attempt(call, cancel)
                        if kind == "ok":
                            got.append(value)
                            assert got == msgs[: len(got)], f"b: received {_messages(got)}, sent {_messages(msgs)}"
                            stalled = 0
                            continue
                        if kind == "timeout":
                            assert value.sent is None, f"a receive's Timeout must have sent=None, not {value.sent!r}"
                        stalled += 1
                    for _ in range(2 if eof else 0):
                        await _expect_end(b, "b")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_messages, a, msgs)
                    nursery.start_soon(receiver)
                async with trio.open_nursery() as nursery:  # still usable the other way
                    nursery.start_soon(_send_messages, b, msgs[:3])
                    nursery.start_soon(_receive_messages, a, msgs[:3], "a", False, eof)

    async def send_deadlines(
        msgs: list[bytes],
        deadlines: list[float | None],
        cancels: list[CancelPoint | None],
        reader_delay: float,
        read_pauses: list[float],
        chaos: ChaosSchedule,
    ) -> None:
        with _using(chaos, sum(map(len, msgs))):
            a, b = await pair()
            async with _closing(a, b):
                received: list[bytes] = []
                segments: list[tuple[bytes, bool | None]] = []
                marker = _end_marker(msgs)  # eof=False: the last message, in place of done()

                async def reader() -> None:
                    await trio.sleep(reader_delay)
                    i = 0
                    while True:
                        try:
                            msg = await b.recv()
                        except EndOfStream:
                            return
                        if not eof and msg == marker:
                            return
                        received.append(msg)
                        pause = read_pauses[i % len(read_pauses)]
                        i += 1
                        if pause:
                            await trio.sleep(pause)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    for i, msg in enumerate(msgs):
                        relative = deadlines[i % len(deadlines)]

                        async def call(msg: bytes = msg, relative: float | None = relative) -> None:
                            await a.send(msg, deadline=_at(relative))

                        kind, value = await _attempt(call, cancels[i % len(cancels)])
                        if kind == "ok":
                            segments.append((msg, True))
                        elif kind == "timeout":
                            c = value.committed
                            assert isinstance(c, bool), f"Timeout.committed must be a bool, not {c!r}"
                            assert value.sent == (len(msg) if c else 0), (
                                f"a message send timed out with committed={c} and sent={value.sent!r} "
                                f"(message of {len(msg)} bytes): a message is committed whole or not at all"
                            )
                            segments.append((msg, c))
                        else:
                            segments.append((msg, None))
                    if not eof:
                        await a.send(marker)
                    await a.done()
                if not _match_messages(received, segments):
                    raise AssertionError(
                        f"the receiver got {_messages(received)}, which is not the committed messages in order; "
                        f"sends as (length, committed; None = cancelled): {[(len(m), c) for m, c in segments]}"
                    )

    async def closed(msgs_ab: list[bytes], msgs_ba: list[bytes], chaos: ChaosSchedule) -> None:
        with _using(chaos, max(sum(map(len, msgs_ab)), sum(map(len, msgs_ba)))):
            a, b = await pair()
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_messages, a, msgs_ab)
                    nursery.start_soon(_receive_messages, b, msgs_ab, "b", False, eof)
                await a.done()  # again: nothing happens
                await _expect(Closed, lambda: a.send(b"x"), "send after done()")
                async with trio.open_nursery() as nursery:  # half-close: the other way goes on
                    nursery.start_soon(_send_messages, b, msgs_ba)
                    nursery.start_soon(_receive_messages, a, msgs_ba, "a", True, eof)
                await _check_closed_after_aclose(a, "a")
            c, d = await pair()
            async with _closing(c, d):
                await c.aclose()
                if eof:
                    await _expect_end(d, "the peer of a closed stream")
                await _check_closed_after_aclose(c, "c")

    async def busy(msgs: list[bytes], chaos: ChaosSchedule) -> None:
        batch = list(msgs) or [b""]
        while len(batch) < 64 and sum(map(len, batch)) < 128 * 1024:
            batch += batch
        batch = batch[:64]
        with _using(chaos, sum(map(len, batch))):
            a, b = await pair()
            async with _closing(a, b):
                first: list[bytes] = []

                async def first_recv() -> None:
                    first.append(await b.recv())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first_recv)
                    await _settle()
                    await _expect(Busy, lambda: b.recv(), "a second concurrent recv")
                    await a.send(batch[0])
                assert first == [batch[0]], f"the first recv got {first!r}, expected {_short(batch[0])}"

                in_send = False

                async def first_sender() -> None:
                    nonlocal in_send
                    for msg in batch:
                        in_send = True
                        await a.send(msg)
                        in_send = False

                got: list[bytes] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first_sender)
                    await _settle()
                    if in_send:
                        await _expect(Busy, lambda: a.send(b""), "a second concurrent send")
                        await _expect(Busy, lambda: a.done(), "done() during a send")
                    for _ in batch:
                        got.append(await b.recv())
                assert got == batch, "a Busy send disturbed the messages of the sends in progress"

    async def broken(msgs: list[bytes], chaos: ChaosSchedule) -> None:
        with _using(chaos, sum(map(len, msgs))):
            a, b = await pair()
            async with _closing(a, b):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_messages, a, msgs, False)
                    for msg in msgs:
                        assert await b.recv() == msg
                if not _reset_bottom(a):
                    return
                await _check_broken(
                    b,
                    [
                        ("recv", lambda: b.recv()),
                        ("send", lambda: b.send(b"after the reset")),
                        ("done", lambda: b.done()),
                    ],
                )

    props = [
        _Property(
            "round_trip",
            {
                "msgs_ab": msgs_strategy,
                "msgs_ba": msgs_strategy,
                "iterate_a": st.booleans(),
                "iterate_b": st.booleans(),
                "chaos": chaos_schedules(),
            },
            round_trip,
        ),
        _Property(
            "recv_deadlines",
            {
                "msgs": msgs_strategy,
                "deadlines": deadline_schedules(),
                "cancels": _cancel_lists(),
                "chaos": chaos_schedules(),
            },
            recv_deadlines,
        ),
        _Property(
            "send_deadlines",
            {
                "msgs": msgs_strategy,
                "deadlines": deadline_schedules(),
                "cancels": _cancel_lists(),
                "reader_delay": _reader_delays(),
                "read_pauses": _read_pauses(),
                "chaos": chaos_schedules(),
            },
            send_deadlines,
        ),
        _Property(
            "closed", {"msgs_ab": msgs_strategy, "msgs_ba": msgs_strategy, "chaos": chaos_schedules()}, closed, 0.2
        ),
        _Property("busy", {"msgs": msgs_strategy, "chaos": chaos_schedules()}, busy, 0.1),
        _Property("broken", {"msgs": msgs_strategy, "chaos": chaos_schedules()}, broken, 0.1),
    ]
    await _run_properties("check_message_stream", props, settings, skip, example_timeout)


# ---------------------------------------------------------------------------------------------
# check_detach


async def _send_upper(upper: Stream, data: bytes, msgs: Sequence[bytes]) -> None:
    if isinstance(upper, MessageStream):
        await _send_messages(upper, msgs, finish=False)
    elif isinstance(upper, ByteStream):
        await upper.send(data)
    else:  # pragma: no cover - misuse
        raise TypeError(f"attach returned {upper!r}, neither a ByteStream nor a MessageStream")


async def _recv_upper(upper: Stream, data: bytes, msgs: Sequence[bytes], who: str) -> None:
    if isinstance(upper, MessageStream):
        got = [await upper.recv() for _ in msgs]
        assert got == list(msgs), f"{who}: received {_messages(got)}, sent {_messages(msgs)}"
    elif isinstance(upper, ByteStream):
        await _receive_exact(upper, data)


async def _receive_lower(lower: ByteStream, raw: bytes, then: bytes, who: str) -> None:
    got = bytearray()
    await _drain(lower, got)
    if got != raw + then:
        raise AssertionError(
            f"{who}'s lower stream returned {_short(got)} after detach; expected the peer's raw bytes "
            f"{_short(raw)} then {then!r} (the layer must hand back every byte it read ahead)"
        )


async def check_detach(
    make_pair: BytePairMaker,
    attach: Attach,
    *,
    messages: st.SearchStrategy[list[bytes]] | None = None,
    raw_after_detach: bool = False,
    settings: Settings | None = None,
    example_timeout: float = EXAMPLE_TIMEOUT,
) -> None:
    """Check that the layer ``attach`` builds on the lower streams from ``make_pair`` detaches
    cleanly: ``detach()`` returns the lower stream with every read-ahead byte intact (see the
    module docstring). ``messages``: as for :func:`check_message_stream`, when the layer is a
    message layer. ``raw_after_detach``: each side sends its raw bytes right after its own
    ``detach()`` instead of before it (for layers whose detach says goodbye to the peer)."""
    msgs_strategy = messages if messages is not None else message_lists(max_count=8)

    async def detach(
        data_ab: bytes,
        data_ba: bytes,
        msgs_ab: list[bytes],
        msgs_ba: list[bytes],
        raw_ab: bytes,
        raw_ba: bytes,
        late_reader: bool,
        chaos: ChaosSchedule,
    ) -> None:
        total = max(len(data_ab), len(data_ba), sum(map(len, msgs_ab)), sum(map(len, msgs_ba)))
        with _using(chaos, total):
            a, b = await _byte_pair(make_pair)
            async with _closing(a, b) as opened:
                ua, ub = await attach(a, b)
                opened += [ua, ub]
                sent = {"a": trio.Event(), "b": trio.Event()}
                last = {"a": b"ping from a", "b": b"pong from b"}

                async def side(
                    who: str,
                    peer: str,
                    upper: Stream,
                    out: tuple[bytes, list[bytes], bytes],
                    expect: tuple[bytes, list[bytes], bytes],
                    outer: trio.Nursery,
                ) -> None:
                    data, msgs, raw = out
                    below = upper.lower
                    assert isinstance(below, ByteStream), f"{who}: the upper stream's lower is {below!r}"

                    async def sender() -> None:
                        await _send_upper(upper, data, msgs)
                        if not raw_after_detach:
                            await below.send(raw)
                        sent[who].set()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sender)
                        if late_reader:  # let the peer's raw bytes arrive with its upper data: read ahead
                            with trio.move_on_after(0.02):
                                await sent[peer].wait()
                        await _recv_upper(upper, expect[0], expect[1], who)
                    lower = await upper.detach()
                    assert lower is below, f"{who}: detach() returned {lower!r}, not the stream below {below!r}"
                    opened.append(lower)
                    # The lower stream returns the peer's raw bytes, then works both ways: a last
                    # message and the end of the stream (nothing lost, nothing stray, no hang).
                    # Sending and receiving run concurrently: neither side waits for the other.
                    tail = (raw if raw_after_detach else b"") + last[who]
                    outer.start_soon(_send_chunked, lower, tail, [7, 1000], 1)
                    outer.start_soon(_receive_lower, lower, expect[2], last[peer], who)
                    if isinstance(upper, ByteStream):
                        await _expect(Closed, lambda: upper.recv(), f"{who}: recv on a detached stream")
                    elif isinstance(upper, MessageStream):
                        await _expect(Closed, lambda: upper.send(b""), f"{who}: send on a detached stream")

                async with trio.open_nursery() as outer:
                    outer.start_soon(side, "a", "b", ua, (data_ab, msgs_ab, raw_ab), (data_ba, msgs_ba, raw_ba), outer)
                    outer.start_soon(side, "b", "a", ub, (data_ba, msgs_ba, raw_ba), (data_ab, msgs_ab, raw_ab), outer)

    small = payloads(max_size=8192)
    raw = payloads(max_size=4096)
    prop = _Property(
        "detach",
        {
            "data_ab": small,
            "data_ba": small,
            "msgs_ab": msgs_strategy,
            "msgs_ba": msgs_strategy,
            "raw_ab": raw,
            "raw_ba": raw,
            "late_reader": st.booleans(),
            "chaos": chaos_schedules(),
        },
        detach,
    )
    await _run_properties("check_detach", [prop], settings, (), example_timeout)
