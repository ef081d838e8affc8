"""What the streams of a multiplexed connection share: HTTP/2 (``_h2stream.H2Stream``), QUIC
(``_quic_stream.QuicStream``) and HTTP/3 on it (``_h3stream.H3Stream``).

Theory of operation. Such a stream does no I/O of its own: the connection puts what arrives in
the stream and wakes it. Two pieces are the same for all of them, and are written here once as
mixins (no state, no ``__init__``: the stream classes keep their attributes and their own hot
paths; a method found on a base class costs what one found on the class itself does):

* :class:`StreamErrors` ``_error()``: why the stream can no longer be used, in this order: the
  peer reset it, the connection failed, this side closed it (None: it is usable).
* :class:`ResponseHead` ``response()``: a client stream's wait for the response head under a
  deadline (:class:`~stack.Timeout`; the stream stays as it was), then the response or why there
  is none (``_error()``, else :class:`~stack.Broken`). ``_version`` names the protocol in the
  messages.

The receive loops are alike too, but each calls its own connection at each step (flow control
is counted per byte on HTTP/2, per stream on QUIC, and the end of a QUIC stream releases it):
one loop for both would call a hook per ``recv``, so they stay apart.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, StackError, Timeout

__all__ = ["ResponseHead", "StreamErrors"]

R = TypeVar("R", covariant=True)


class _Failing(Protocol):
    def failure(self) -> StackError | None: ...


class _Stream(Protocol):
    """What :meth:`StreamErrors._error` reads of a stream."""

    @property
    def kind(self) -> str: ...

    @property
    def stream_id(self) -> int: ...

    @property
    def _reset(self) -> Broken | None: ...

    @property
    def _closed(self) -> str | None: ...

    @property
    def _conn(self) -> _Failing: ...


class _ClientStream(Protocol[R]):
    """What :meth:`ResponseHead.response` reads of a client stream."""

    @property
    def stream_id(self) -> int: ...

    @property
    def _version(self) -> str: ...

    @property
    def _head(self) -> trio.Event | None: ...

    @property
    def _response(self) -> R | None: ...

    def _error(self) -> StackError | None: ...


class StreamErrors:
    """Mixin: ``_error()`` (see the module docstring)."""

    __slots__ = ()

    def _error(self: _Stream) -> StackError | None:
        if self._reset is not None:
            return self._reset
        failure = self._conn.failure()
        if failure is not None:
            return failure
        if self._closed is not None:
            return Closed(f"{self.kind} {self.stream_id} was closed on this side")
        return None


class ResponseHead:
    """Mixin: ``response()`` of a client stream (see the module docstring)."""

    __slots__ = ()

    async def response(self: _ClientStream[R], *, deadline: float = FOREVER) -> R:
        """Client streams: wait for the response head (after any 1xx) and return it.

        On deadline: :class:`~stack.Timeout` (the stream stays as it was). If the stream was
        reset or the connection failed first: :class:`~stack.Broken` (or the connection's
        error, such as HTTP/2's ``StreamRefused``).
        """
        head = self._head
        if head is None:
            raise StackError("response() is for client streams")
        if not head.is_set():
            with trio.move_on_at(deadline) as scope:
                await head.wait()
            if scope.cancelled_caught:
                raise Timeout(f"{self._version} stream {self.stream_id}: no response head before the deadline")
        if self._response is None:
            err = self._error()
            raise err if err is not None else Broken(f"{self._version} stream ended without a response")
        return self._response
