"""Absolute deadlines on trio's clock.

Every blocking call in trio-stack takes ``deadline=``: an absolute time on trio's clock
(:func:`trio.current_time`), default :data:`FOREVER`. A deadline is passed unchanged down
through every layer a call touches, so "five seconds for this request" means five seconds
however many layers the request crosses. Enclosing trio cancel scopes still apply as usual.

Where the deadline is ``FOREVER`` no cancel scope is made (the hot path stays cheap).

A deadline is an ``int`` or a ``float`` (not a ``bool``, not NaN); anything else is the caller's
bug, refused at once by :func:`check_deadline` with a message naming the argument, never left to
hang or to fail somewhere below. The stream base classes check on entry with one cheap test,
``type(deadline) is not float or deadline != deadline``, and call it only when that is true.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import trio

from .errors import Timeout

__all__ = ["FOREVER", "after", "cancel_scope_at", "check_deadline", "deadline_scope", "remaining"]

FOREVER: float = math.inf
"""The deadline that never passes (``math.inf``): the default everywhere."""


def check_deadline(deadline: object, what: str = "deadline") -> None:
    """Raise unless ``deadline`` is a usable deadline: a number (``int`` or ``float``, not a
    ``bool``) that is not NaN. :class:`TypeError` or :class:`ValueError` naming ``what``.

    The slow path of the base classes' entry check (see the module docstring); a layer's spec
    calls it in ``attach`` before it starts a handshake. Returns nothing for a valid deadline.
    """
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise TypeError(
            f"{what} must be an absolute time on trio's clock (a float such as stack.after(5.0), "
            f"or stack.FOREVER), not {type(deadline).__name__} {deadline!r:.40}"
        )
    if deadline != deadline:  # NaN
        raise ValueError(f"{what} must not be NaN (use stack.FOREVER for no deadline)")


def after(seconds: float) -> float:
    """The deadline ``seconds`` from now on trio's clock. ``after(math.inf)`` is ``FOREVER``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"after() needs a number of seconds, not {type(seconds).__name__} {seconds!r:.40}")
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
