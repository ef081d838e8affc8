"""``check_detach``: a layer detaches cleanly, handing back the stream below, run by :mod:`._runner`.

::

    await check_detach(make_lower_pair, attach)   # lower pair, then attach both ends

``check_detach`` has one property, ``detach``: data is exchanged at the upper level both ways,
each side also sends random raw bytes on its lower stream right behind its upper data (so the
peer's layer reads them ahead; with ``raw_after_detach=True`` right after its detach, for
layers that say goodbye on detach, such as TLS), both sides detach concurrently, each
``detach()`` returns the stream below, the upper stream raises ``Closed`` afterwards, each lower
stream returns the peer's raw bytes exactly, and the lower streams still work both ways.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from hypothesis import settings as Settings
from hypothesis import strategies as st

from stack.errors import Closed
from stack.streams import ByteStream, MessageStream, Stream

from ._chaos import ChaosSchedule
from ._check_bytes import _byte_pair, _drain, _receive_exact, _send_chunked
from ._check_messages import _messages, _send_messages
from ._runner import (
    EXAMPLE_TIMEOUT,
    Attach,
    BytePairMaker,
    _closing,
    _expect,
    _Property,
    _run_properties,
    _short,
    _using,
)
from ._strategies import chaos_schedules, payloads
from ._strategies import messages as message_lists

__all__ = ["check_detach"]


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
