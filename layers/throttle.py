"""Rate limits at any level of a stack: a token bucket per direction.

::

    slow = await throttle.limit(send=64_000, recv=Rate(1_000_000, burst=256_000)).attach(stream)
    paced = await throttle.limit(send_messages=10, send=Rate(1e6)).attach(messages)

The throttled stream has the kind of the stream below: over a :class:`~stack.ByteStream` it is
a ByteStream limited in bytes per second (``send``, ``recv``); over a
:class:`~stack.MessageStream` it is a MessageStream limited in messages per second
(``send_messages``, ``recv_messages``) and/or bytes per second (``send``, ``recv``, counting
message bodies). A rate is a :class:`Rate` (or a number: ``Rate(number)``); a bucket starts
full, holds at most ``burst`` tokens, and refills at the rate on trio's clock (so
:class:`trio.testing.MockClock` makes it deterministic). Each bucket is a small sans-io
:class:`TokenBucket`.

Sending:

* Bytes: a send commits what the budget allows, in steps of at most 64 KiB; it waits for
  budget in slices of about 10 ms worth (at most about 100 wake-ups a second). If the next
  slice cannot arrive before the call's deadline, the send does not wait for nothing: it
  commits what the budget allows at once and raises :class:`~stack.Timeout` with ``sent`` =
  the bytes of this call committed (they are delivered: they go first on the next call, as
  always). The stream stays usable.
* Messages: a message waits until each bucket holds its cost (1 message; ``len(msg)`` bytes,
  or the whole ``burst`` for a message larger than it), then takes it; a bucket may go into
  debt for a large message, which later messages pay back. If that wait would end past the
  deadline: ``Timeout`` at once, the message not committed (``committed=False``, ``sent=0``),
  its budget untouched.

Receiving waits for budget (bytes: a slice; messages: one message, and a byte bucket out of
debt) within the call's deadline, then receives at most what the budget allows (bytes) or one
message (which is charged after it arrives). A receive that times out or is cancelled while
waiting consumes nothing and the stream stays usable. Not reading is the backpressure: the
stream below fills and its peer slows down.

``done``, ``aclose`` and ``detach`` pass through: the layer holds no data of its own beyond
committed bytes (flushed first) and, over a ByteStream, bytes ``recv_exactly`` /
``recv_until`` read ahead, which ``detach()`` hands back to the stream below. ``waited`` on a
throttled stream is the total seconds its calls spent waiting for budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import EndOfStream, Timeout
from stack.passthrough import CHUNK, PassThrough
from stack.streams import ByteStream, MessageStream

__all__ = ["Rate", "ThrottledBytes", "ThrottledMessages", "TokenBucket", "limit"]

SLICE = 0.01
"""Seconds of budget a waiting call lets accumulate before it goes on (bounds the wake-ups)."""


@dataclass(frozen=True)
class Rate:
    """``per_second`` tokens (bytes or messages) a second; ``burst``: the bucket's size
    (default: a tenth of a second's worth, at least 1)."""

    per_second: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.per_second < math.inf:
            raise ValueError(f"a rate must be a positive number per second, not {self.per_second!r}")
        if self.burst is not None and not 1 <= self.burst < math.inf:
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")

    @property
    def capacity(self) -> float:
        """The effective burst."""
        return self.burst if self.burst is not None else max(1.0, self.per_second / 10)


class TokenBucket:
    """A token bucket (sans-io: every method takes the current time).

    Starts full. ``take`` may leave it in debt (negative); ``wait(n, now)`` is how long until
    it holds ``min(n, capacity)`` tokens.
    """

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate.per_second
        self.capacity = rate.capacity
        self.tokens = self.capacity
        self.last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``."""
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
        return self.tokens

    def wait(self, n: float, now: float) -> float:
        """Seconds from ``now`` until the bucket holds ``min(n, capacity)`` tokens (0: it does)."""
        missing = min(n, self.capacity) - self.available(now)
        return missing / self.rate if missing > 0 else 0.0

    def take(self, n: float, now: float) -> None:
        """Remove ``n`` tokens (the bucket may go into debt)."""
        self.available(now)
        self.tokens -= n

    def give(self, n: float) -> None:
        """Put back ``n`` tokens taken for something that did not happen."""
        self.tokens = min(self.capacity, self.tokens + n)


def _rate(value: Rate | float | None) -> Rate | None:
    if value is None or isinstance(value, Rate):
        return value
    return Rate(float(value))


def _bucket(rate: Rate | None) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, trio.current_time())


def _longest(costs: list[tuple[TokenBucket, int]], now: float) -> float:
    """Seconds until every bucket holds its cost."""
    return max((bucket.wait(cost, now) for bucket, cost in costs), default=0.0)


def _slice(bucket: TokenBucket) -> float:
    return max(1.0, min(bucket.capacity, bucket.rate * SLICE))


class _Waiting:
    """What both throttled kinds share: waiting for budget, and the ``waited`` total."""

    waited: float

    async def _sleep(self, seconds: float) -> None:
        start = trio.current_time()
        try:
            await trio.sleep(seconds + 1e-9)  # past the exact refill time: rounding never leaves it short
        finally:
            self.waited += trio.current_time() - start


class ThrottledBytes(_Waiting, PassThrough):
    """A ByteStream whose bytes per second are limited (see the module docstring)."""

    kind = "throttle"
    _lower: ByteStream

    def __init__(self, lower: ByteStream, send: Rate | None, recv: Rate | None) -> None:
        super().__init__(lower, {})
        self._tx = _bucket(send)
        self._rx = _bucket(recv)
        self.waited = 0.0

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        bucket = self._rx
        if bucket is None:
            return await self._lower.recv(max_bytes, deadline=deadline)
        want = min(max_bytes, _slice(bucket))
        while (wait := bucket.wait(want, trio.current_time())) > 0:
            await self._sleep(wait)
        n = min(max_bytes, int(bucket.available(trio.current_time())))
        data = await self._lower.recv(n, deadline=deadline)
        bucket.take(len(data), trio.current_time())
        return data

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        if self._outbuf:  # what the previous step committed goes down first
            await self._flush(deadline)
        bucket = self._tx
        if bucket is None:
            n = min(len(data), CHUNK)
        else:
            want = min(len(data), _slice(bucket))
            while (wait := bucket.wait(want, now := trio.current_time())) > 0:
                if now + wait > deadline:
                    if bucket.available(now) >= 1:
                        break  # commit what the budget allows now; the next step raises
                    raise Timeout("throttle: no send budget before the deadline")
                await self._sleep(wait)
            now = trio.current_time()
            n = min(len(data), int(bucket.available(now)), CHUNK)
            bucket.take(n, now)
        self._outbuf += data[:n]
        return n


class ThrottledMessages(_Waiting, MessageStream):
    """A MessageStream whose messages and/or bytes per second are limited (see the module docstring)."""

    kind = "throttle"
    _lower: MessageStream

    def __init__(
        self,
        lower: MessageStream,
        send: Rate | None,
        recv: Rate | None,
        send_messages: Rate | None,
        recv_messages: Rate | None,
    ) -> None:
        super().__init__(lower, {})
        self._tx = [(b, False) for b in (_bucket(send_messages),) if b] + [(b, True) for b in (_bucket(send),) if b]
        self._rx = [(b, False) for b in (_bucket(recv_messages),) if b] + [(b, True) for b in (_bucket(recv),) if b]
        self.waited = 0.0

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        costs = [(bucket, len(msg) if in_bytes else 1) for bucket, in_bytes in self._tx]
        while (wait := _longest(costs, now := trio.current_time())) > 0:
            if now + wait > deadline:
                raise Timeout("throttle: no send budget for this message before the deadline")
            await self._sleep(wait)
        now = trio.current_time()
        for bucket, cost in costs:
            bucket.take(cost, now)
        try:
            await self._lower.send(msg, deadline=deadline)
        except BaseException:
            # Timed out or cancelled (our own scope for the same deadline may fire first, so the
            # lower send sees a cancellation): the lower stream's own record says if it committed.
            if self._lower.committed:
                self._message_committed = True
            else:
                self._refund(costs)
            raise
        self._message_committed = True

    @staticmethod
    def _refund(costs: list[tuple[TokenBucket, int]]) -> None:
        for bucket, cost in costs:
            bucket.give(cost)

    async def _recv_message(self, deadline: float) -> bytes | None:
        rx = self._rx
        while (wait := _longest([(bucket, 1) for bucket, _ in rx], trio.current_time())) > 0:
            await self._sleep(wait)
        try:
            msg = await self._lower.recv(deadline=deadline)
        except EndOfStream:
            return None
        now = trio.current_time()
        for bucket, in_bytes in rx:
            bucket.take(len(msg) if in_bytes else 1, now)
        return msg

    async def _detach(self, deadline: float) -> MessageStream:
        return self._lower


@dataclass(frozen=True)
class limit:
    """Spec: limit the rates of the stream below (see the module docstring).

    ``send`` / ``recv``: bytes per second each way. ``send_messages`` / ``recv_messages``:
    messages per second (only over a MessageStream). A number means ``Rate(number)``; ``None``
    (the default) leaves that direction unlimited.
    """

    send: Rate | float | None = None
    recv: Rate | float | None = None
    send_messages: Rate | float | None = None
    recv_messages: Rate | float | None = None

    def __post_init__(self) -> None:
        for name in ("send", "recv", "send_messages", "recv_messages"):
            object.__setattr__(self, name, _rate(getattr(self, name)))

    async def attach(self, lower: Any, *, deadline: float = FOREVER) -> ThrottledBytes | ThrottledMessages:
        """Wrap ``lower`` (a ByteStream or a MessageStream). No handshake: returns at once."""
        send, recv = _rate(self.send), _rate(self.recv)
        if isinstance(lower, ByteStream):
            if self.send_messages is not None or self.recv_messages is not None:
                raise TypeError("throttle: message rates need a MessageStream below, not a ByteStream")
            return ThrottledBytes(lower, send, recv)
        if isinstance(lower, MessageStream):
            return ThrottledMessages(lower, send, recv, _rate(self.send_messages), _rate(self.recv_messages))
        raise TypeError(f"throttle attaches to a ByteStream or a MessageStream, not {type(lower).__name__}")
