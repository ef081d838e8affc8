"""``check_bytestream``: the conformance properties of a ByteStream, run by :mod:`._runner`.

::

    await check_bytestream(make_pair)             # two connected ByteStreams

The properties (``skip=`` names those a layer does not claim):

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
    makes the peer's next receive and send raise ``Broken``, and every later call too, until the
    peer closes its end: then every call raises ``Closed`` (a local close wins, as in trio).

The helpers: :class:`_RecvOp`, :func:`_recv_op` and :func:`_receive_checked` receive with a drawn
mix of calls, each result checked against what must come next; :func:`_match_bytes` says whether
the received bytes are the committed prefixes of the sends, in order, once. ``check_detach`` also
sends and receives with :func:`_send_chunked`, :func:`_drain`, :func:`_byte_pair` and
:func:`_receive_exact`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import trio
from hypothesis import settings as Settings
from hypothesis import strategies as st

from stack.errors import Busy, Closed, EndOfStream, MessageTooLarge, Timeout
from stack.streams import ByteStream

from ._chaos import ChaosSchedule
from ._runner import (
    EXAMPLE_TIMEOUT,
    BytePairMaker,
    _at,
    _attempt,
    _cancel_lists,
    _check_broken,
    _check_closed_after_aclose,
    _closing,
    _expect,
    _Property,
    _read_pauses,
    _reader_delays,
    _reset_bottom,
    _run_properties,
    _settle,
    _short,
    _using,
)
from ._strategies import CancelPoint, chaos_schedules, chunk_sizes, deadline_schedules, payloads

__all__ = ["check_bytestream"]

_BUSY_BYTES = 256 * 1024  # a send this large blocks on most stacks (memory capacity 64 KiB)


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
            assert data == b"", f"{who}: recv({m}) after every byte arrived returned {_short(data)}, expected b''"
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
        assert n <= len(rest), (
            f"{who}: recv_exactly({n}) returned with only {len(rest)} bytes sent, expected EndOfStream"
        )
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
        assert exc.partial == rest, f"{what}: EndOfStream.partial={_short(exc.partial)}, expected {_short(rest)}"
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
        assert tail == b"", f"{who}: after all {len(expected)} bytes, recv() returned {_short(tail)}, expected b''"


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
