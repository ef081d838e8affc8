"""``check_message_stream``: the conformance properties of a MessageStream, run by :mod:`._runner`.

::

    await check_message_stream(make_msg_pair)     # two connected MessageStreams

The properties of ``check_bytestream`` (see :mod:`._check_bytes`) with messages (empty ones
included; ``messages=`` supplies a strategy of valid message lists): a message is committed
whole or not at all (``Timeout.committed``, ``sent`` 0 or ``len(msg)``), the receiver gets
exactly the committed messages in order, ``recv`` raises ``EndOfStream`` after the peer's
``done()`` (again and again) and ``async for`` ends cleanly; there is no ``end_of_stream``
property (it is part of ``round_trip``). ``eof=False`` is for layers with no end of stream
(datagrams: UDP): ``done()`` there only has to make later sends raise ``Closed``; the receivers
count the messages instead of waiting for ``EndOfStream`` (``send_deadlines`` ends with a marker
message), and the peer of an ``aclose()`` is not expected to see anything.

The helpers: :func:`_match_messages` says whether the received messages are the committed ones,
in order; :func:`_send_messages` and :func:`_receive_messages` (which ``check_detach`` shares)
send and check whole lists.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import trio
from hypothesis import settings as Settings
from hypothesis import strategies as st

from stack.errors import Busy, Closed, EndOfStream
from stack.streams import MessageStream

from ._chaos import ChaosSchedule
from ._runner import (
    EXAMPLE_TIMEOUT,
    MessagePairMaker,
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
from ._strategies import CancelPoint, chaos_schedules, deadline_schedules
from ._strategies import messages as message_lists

__all__ = ["check_message_stream"]


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
