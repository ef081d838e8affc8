"""Absolute deadlines on trio's clock.

Every blocking call in trio-stack takes ``deadline=``: an absolute time on trio's clock
(:func:`trio.current_time`), default :data:`FOREVER`. A deadline is passed unchanged down
through every layer a call touches, so "five seconds for this request" means five seconds
however many layers the request crosses. Enclosing trio cancel scopes still apply as usual.

Where the deadline is ``FOREVER`` no cancel scope is made (the hot path stays cheap).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import trio

from .errors import Timeout

__all__ = ["FOREVER", "after", "cancel_scope_at", "deadline_scope", "remaining"]

FOREVER: float = math.inf
"""The deadline that never passes (``math.inf``): the default everywhere."""


def after(seconds: float) -> float:
    """The deadline ``seconds`` from now on trio's clock. ``after(math.inf)`` is ``FOREVER``."""
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"after() needs a number of seconds >= 0, not {seconds!r}")
    return trio.current_time() + seconds


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (negative once it has passed; ``inf`` for FOREVER)."""
    return deadline - trio.current_time()


@contextmanager
def deadline_scope(deadline: float, what: str = "operation") -> Iterator[None]:
    """Run the block under ``deadline``; raise :class:`Timeout` if it passes.

    The block is cancelled at the deadline (trio semantics) and the cancellation is turned
    into ``Timeout(f"{what} timed out")``. With ``FOREVER`` no cancel scope is made.
    Use it where nothing needs undoing on timeout; layers that must report ``.sent``
    catch :class:`Timeout` themselves.
    """
    if deadline == FOREVER:
        yield
        return
    with trio.move_on_at(deadline) as scope:
        yield
    if scope.cancelled_caught:
        raise Timeout(f"{what} timed out")


class cancel_scope_at:
    """``with cancel_scope_at(deadline) as scope``: ``trio.move_on_at(deadline)``, or no scope at
    all for FOREVER (then ``scope`` is ``None``).

    For layers that turn the deadline into their own error: after the block, check
    ``scope is not None and scope.cancelled_caught``. A plain class rather than a generator
    context manager: the stream base classes use it on every call with a deadline.
    """

    __slots__ = ("_scope",)

    def __init__(self, deadline: float) -> None:
        self._scope = None if deadline == math.inf else trio.move_on_at(deadline)

    def __enter__(self) -> trio.CancelScope | None:
        if self._scope is not None:
            self._scope.__enter__()
        return self._scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is None:
            return False
        return bool(self._scope.__exit__(exc_type, exc, tb))
