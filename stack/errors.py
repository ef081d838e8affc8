"""The exception family: everything trio-stack raises on purpose is a :class:`StackError`.

Bad input from the network never escapes as a bare ``KeyError``, ``ssl.SSLError`` or an
h11/h2 exception: layers translate it into one of these, with a message a person can act on.

::

    StackError
      Timeout(StackError, TimeoutError)    a deadline passed; .sent on sends
      EndOfStream(StackError)              the peer finished; .partial holds leftover bytes
      Closed(StackError)                   this side closed, detached or called done(), then used it
      Busy(StackError)                     two tasks in the same direction of one stream at once
      Broken(StackError)                   the stream failed; sticky: every later call raises it too
        ProtocolError(Broken)              the peer broke the protocol; .detail says how
      MessageTooLarge(StackError)          over a configured limit
"""

from __future__ import annotations

__all__ = [
    "Broken",
    "Busy",
    "Closed",
    "EndOfStream",
    "MessageTooLarge",
    "ProtocolError",
    "StackError",
    "Timeout",
]


class StackError(Exception):
    """Root of every exception trio-stack raises on purpose."""


class Timeout(StackError, TimeoutError):
    """A deadline passed before the call finished.

    ``sent`` is set on sends: how many bytes of *this call's* data were committed. Committed
    bytes are delivered: whatever of them has not reached the wire yet waits in the layer's
    outgoing buffer and goes first on the next ``send``, ``done`` or ``aclose``. On a message
    stream a message is committed whole or not at all, so ``sent`` is ``0`` or ``len(msg)``
    and ``committed`` says which (it also disambiguates an empty message).

    On receives ``sent`` is ``None``: a receive that times out consumed nothing.
    """

    def __init__(self, message: str, *, sent: int | None = None, committed: bool | None = None) -> None:
        super().__init__(message)
        self.sent = sent
        self.committed = committed if committed is not None else bool(sent)


class EndOfStream(StackError):
    """The peer finished sending before the call could complete.

    ``partial`` holds the bytes that had arrived and were not enough (``recv_exactly`` asked for
    more than the peer sent before its end; ``recv_until`` found no delimiter). They are consumed:
    they are in the exception, not in the stream.
    """

    def __init__(self, message: str = "the peer finished sending", *, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class Closed(StackError):
    """This side already closed or detached the stream (or called ``done()`` and then sent)."""


class Busy(StackError):
    """Another task is already sending (or receiving) on this stream.

    Each direction of a stream admits one task at a time; a second one gets this at once
    instead of interleaving bytes. Use a lock, or one task per direction.
    """


class Broken(StackError):
    """The stream failed (reset, a lower layer failed, a protocol error). Sticky: every later
    call on the stream raises ``Broken`` again, never hangs and never truncates silently."""


class ProtocolError(Broken):
    """The peer broke the protocol. ``detail`` names the rule that was broken."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MessageTooLarge(StackError):
    """Something from the peer (a message, a line, a header block) is over a configured limit.

    Raised before the oversized thing is buffered or allocated, so memory stays bounded.
    ``limit`` is the limit in bytes; ``size`` the announced size where it is known.
    """

    def __init__(self, message: str, *, limit: int, size: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.size = size
