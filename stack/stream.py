"""What every stream shares: :class:`Stream` (state, direction guards, ``info``, ``done``,
``aclose``, ``detach``), :class:`Info` (the read-only view of what a stream knows) and
:func:`require` (a layer's check of the stream it is attached to).

The two kinds of stream are subclasses in their own files: :class:`~stack.ByteStream`
(``stack/bytestream.py``) and :class:`~stack.MessageStream` (``stack/messagestream.py``).
``stack.streams`` re-exports all of them; import from there or from ``stack``.

The base class owns the public methods and the rules every layer keeps (deadlines, one task per
direction, the sticky closed / broken states, flushing committed bytes first). A layer overrides
only the underscore hooks, which the public methods call at the right moment:

=====================  ==================================================================
hook                   a layer overrides it to ...
=====================  ==================================================================
``_done(deadline)``    tell the peer this side sends no more (default: ``done`` below)
``_close(deadline)``   say goodbye for this layer only: close_notify, GOAWAY (default: none)
``_detach(deadline)``  undo this layer, give read-ahead bytes back below, return the lower stream
``_abort()``           release this layer's own resources at once (default: none)
``_flush(deadline)``   push ``self._outbuf`` below (default: ``lower.send_from``); rarely
=====================  ==================================================================

and the primitives of its kind (``_recv_some``, ``_send_some``, ``_recv_into`` on a ByteStream;
``_send_message``, ``_recv_message`` on a MessageStream). The public methods (``send``, ``recv``,
``done``, ``aclose``, ``detach`` ...) are the contract: a layer may extend one to add work around
``super()`` (trace does, to time them), never replace its rules. See docs/design.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import trio

from .deadlines import FOREVER, cancel_scope_at, check_deadline
from .errors import Broken, Busy, Closed, StackError, Timeout

__all__ = ["CLOSE_GRACE", "Info", "Stream", "require"]

log = logging.getLogger("stack")

CLOSE_GRACE = 5.0
"""Seconds :meth:`Stream.aclose` spends on graceful work (flush, close_notify) by default."""

S = TypeVar("S", bound="Stream")
T = TypeVar("T", bound="Stream")


def require(lower: object, kind: type[T], layer: str) -> T:
    """``lower`` if it is a ``kind`` (typed as one), else ``TypeError`` naming ``layer`` and what it got.

    What a spec's ``attach`` calls first: ``lower = require(lower, ByteStream, "framing.prefix")``.
    """
    if not isinstance(lower, kind):
        raise TypeError(f"{layer} attaches to a {kind.__name__}, not {type(lower).__name__}")
    return lower


class Info(Mapping[str, Any]):
    """A read-only view of what a stream knows: its own keys first, then its lower stream's.

    A layer passes its own keys to ``Stream.__init__``; a key it sets shadows the same key
    below it (the PROXY layer's ``peer`` is the real client). docs/design.md has the table of
    the keys the bundled layers set, who sets each and what it means.
    """

    __slots__ = ("_maps",)

    def __init__(self, *maps: Mapping[str, Any]) -> None:
        self._maps = maps

    def __getitem__(self, key: str) -> Any:
        for m in self._maps:
            if key in m:
                return m[key]
        raise KeyError(key)

    # Mapping's own get() and __contains__ go through __getitem__ and a KeyError per miss: these
    # ask each map directly (layers read info on every new connection).
    def get(self, key: str, default: Any = None) -> Any:
        for m in self._maps:
            if key in m:
                return m[key]
        return default

    def __contains__(self, key: object) -> bool:
        return any(key in m for m in self._maps)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for m in self._maps:
            for k in m:
                if k not in seen:
                    seen.add(k)
                    yield k

    def __len__(self) -> int:
        return len(set().union(*self._maps))

    def __repr__(self) -> str:
        return f"Info({dict(self)!r})"


class Stream:
    """What both kinds of stream share: state, direction guards, ``info``, ``aclose``.

    States: open; *done* (this side called ``done()``: sends raise :class:`Closed`, receives
    go on); *broken* (a failure: every call raises :class:`Broken`); *closed* (``aclose()`` or
    ``detach()`` was called: every call raises :class:`Closed`, even if the stream had broken
    before: a local close wins, as in trio).

    Every public method refuses a wrong argument at once (:class:`TypeError` or
    :class:`ValueError` naming it), before it looks at the state or waits.
    """

    #: Name used in error messages and logs ("tcp", "tls", "prefix", ...).
    kind = "stream"

    def __init__(self, lower: Stream | None = None, info: Mapping[str, Any] | None = None) -> None:
        self._lower = lower
        self._info: dict[str, Any] = dict(info or {})
        self._outbuf = bytearray()
        self._sending = False
        self._receiving = False
        self._send_closed = False
        self._closed: str | None = None  # "closed" or "detached"
        self._broken: BaseException | None = None

    # ---- what the stream knows ----------------------------------------------------------

    @property
    def info(self) -> Info:
        """Read-only mapping of facts about the connection, this layer's and those below."""
        if self._lower is None:
            return Info(self._info)
        return Info(self._info, self._lower.info)

    @property
    def lower(self) -> Stream | None:
        """The stream this layer sits on (``None`` for a bottom stream)."""
        return self._lower

    @property
    def broken(self) -> BaseException | None:
        """Why the stream is broken (the failure every call now raises as :class:`Broken`), or None."""
        return self._broken

    def __repr__(self) -> str:
        state = self._closed or ("broken" if self._broken else "open")
        return f"<{type(self).__name__} {self.kind} {state}>"

    # ---- guards ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        # A local close wins over an earlier failure (trio's rule): once this side closed or
        # detached the stream, every call says "closed"; ``broken`` still tells why it broke.
        if self._closed is not None:
            raise Closed(f"{self.kind} stream was {self._closed} on this side")
        if self._broken is not None:
            raise Broken(f"{self.kind} stream is broken: {self._broken}") from self._broken

    def _enter_send(self) -> None:
        self._check_usable()
        if self._send_closed:
            raise Closed(f"{self.kind} stream: done() was called, no more sends")
        if self._sending:
            raise Busy(f"another task is already sending on this {self.kind} stream")
        self._sending = True

    def _enter_recv(self) -> None:
        self._check_usable()
        if self._receiving:
            raise Busy(f"another task is already receiving on this {self.kind} stream")
        self._receiving = True

    def _fail(self, exc: BaseException) -> None:
        """Mark the stream broken (sticky). Layers call it when they give up."""
        if self._broken is None:
            self._broken = exc
            log.debug("%s stream broken: %s", self.kind, exc)

    # ---- outgoing buffer ---------------------------------------------------------------

    async def _flush(self, deadline: float) -> None:
        """Push the committed bytes waiting in ``self._outbuf`` to the stream below.

        ``self._outbuf`` holds bytes this layer committed (a send already counted them) that have
        not gone below yet. The base calls ``_flush`` before every ``send`` and ``done``, before
        ``_close`` and ``_detach``, so committed bytes always go first; a layer's ``_send_some``
        calls it before committing more (that bounds the buffer to one step). The default hands
        the buffer to the lower ByteStream's ``send_from``, which removes bytes from its front as
        they are committed below: a timeout or a cancellation leaves exactly the bytes that still
        have to go, and the next call sends them. Override it only to watch or shape that
        traffic (trace times each flush) and keep that rule: call ``super()._flush`` or
        ``send_from`` on the same buffer.
        """
        if self._outbuf:
            send_from = getattr(self._lower, "send_from", None)
            if send_from is None:  # pragma: no cover - layer bug
                raise TypeError(f"{type(self).__name__} buffered output but has no lower ByteStream")
            await send_from(self._outbuf, deadline=deadline)

    # ---- the end of a direction / of the stream ----------------------------------------

    async def _done(self, deadline: float) -> None:
        """Layer hook: tell the peer this side sends no more. Default: pass ``done`` down."""
        if self._lower is not None:
            await self._lower.done(deadline=deadline)

    async def _close(self, deadline: float) -> None:
        """Layer hook: graceful close of this layer only (close_notify, GOAWAY...). Default: nothing."""

    def _abort(self) -> None:
        """Layer hook: release this layer's own resources at once (sockets, tasks). Default: nothing."""

    async def _detach(self, deadline: float) -> Stream:
        """Layer hook: undo this layer, hand read-ahead bytes back to the lower stream, return it."""
        raise StackError(f"the {self.kind} layer cannot be detached")

    async def done(self, *, deadline: float = FOREVER) -> None:
        """No more sends from this side (TCP FIN, TLS close_notify, HTTP/2 END_STREAM).

        Flushes committed bytes first. Receiving goes on. Calling it again does nothing;
        ``send`` after it raises :class:`Closed`. On deadline: :class:`Timeout`, and the call
        may be repeated.
        """
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        if self._send_closed and self._closed is None and self._broken is None:
            return
        self._enter_send()
        try:
            with cancel_scope_at(deadline) as scope:
                await self._flush(deadline)
                await self._done(deadline)
                self._send_closed = True
            if scope is not None and scope.cancelled_caught:
                raise Timeout(f"{self.kind} done() timed out")
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = False

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close this stream and every stream below it. Idempotent; never raises a StackError.

        Graceful first: committed bytes are flushed and the layer says goodbye (close_notify,
        GOAWAY) until ``deadline`` (default: :data:`CLOSE_GRACE` seconds from now); what is not
        done by then is abandoned and the resources are released anyway. A task blocked in
        ``recv`` on this stream gets :class:`Closed`. If the caller is cancelled, the stream is
        still closed (forcefully) before ``Cancelled`` propagates, as in trio. A ``deadline``
        that is not a number (or NaN) closes the stream forcefully, then raises ``TypeError``
        (``ValueError``).
        """
        if deadline is not None and (type(deadline) is not float or deadline != deadline):
            try:
                check_deadline(deadline)
            except (TypeError, ValueError):
                await self.aclose(deadline=-math.inf)  # the caller's bug: release at once, then say so
                raise
        if self._closed is not None:
            return
        graceful = self._broken is None and not self._sending
        self._closed = "closed"
        if deadline is None:
            deadline = trio.current_time() + CLOSE_GRACE
        try:
            if graceful:
                with trio.move_on_at(deadline):
                    try:
                        await self._flush(deadline)
                        await self._close(deadline)
                    except StackError as exc:
                        log.debug("%s: graceful close failed: %s", self.kind, exc)
        finally:
            self._abort()
            if self._lower is not None:
                await self._lower.aclose(deadline=deadline)

    async def detach(self, *, deadline: float = FOREVER) -> Any:
        """Undo this layer and return the stream below it, read-ahead bytes intact.

        Every byte this layer read from below and did not use is pushed back into the lower
        stream (its next ``recv`` returns them). Committed outgoing bytes are flushed first.
        A layer that cannot be undone cleanly raises a :class:`~stack.StackError` saying why and
        stays as it was. After a successful detach this stream raises :class:`Closed`.
        """
        if type(deadline) is not float or deadline != deadline:
            check_deadline(deadline)
        self._check_usable()
        if self._sending or self._receiving:
            raise Busy(f"cannot detach the {self.kind} layer while another task uses it")
        self._sending = self._receiving = True
        try:
            with cancel_scope_at(deadline):
                await self._flush(deadline)
                lower = await self._detach(deadline)
                self._closed = "detached"
                self._abort()
                return lower
            raise Timeout(f"detaching the {self.kind} layer timed out")  # only reached on deadline
        except Broken as exc:
            self._fail(exc)
            raise
        finally:
            self._sending = self._receiving = False

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
