"""What HTTP/1.1 server and client connections share: the lower stream, the buffer of committed
output and its flush, and the tunnel a protocol switch leaves.

Theory of operation: every byte a connection writes (a head, body framing, ``100 Continue``) is
appended to ``outbuf`` at once (committed) and pushed down by :meth:`H1Connection.flush`, which
consumes the buffer exactly as the stream below commits it, so a flush that times out or is
cancelled leaves the rest for the next one. After a 101 (or a 2xx to CONNECT) both sides hand the
raw stream over as a :class:`_Tunnel`, with the parser's read-ahead pushed back into it first.
"""

from __future__ import annotations

import trio

from layers._h1core import SEND_CHUNK
from layers._http_model import Limits
from stack.deadlines import FOREVER
from stack.errors import Timeout
from stack.streams import ByteStream, Info

BODY_INFO = {"http_version": "1.1"}
_INFO: dict[str, dict[str, str]] = {}
"""A connection's own ``info`` keys by engine name (read-only through :class:`~stack.Info`)."""


def split_pending(pending: bytes, max_bytes: int) -> tuple[bytes, bytes]:
    """A body's decoded bytes cut for one receive of ``max_bytes``: (returned now, kept pending)."""
    if len(pending) > max_bytes:
        return pending[:max_bytes], pending[max_bytes:]
    return pending, b""


class H1Connection:
    """An HTTP/1.1 connection over ``lower``, with one outgoing buffer of committed bytes.

    ``lower`` (the stream below), ``limits`` and ``outbuf`` are read by the bodies and streams of
    the connection (see ``RequestOwner`` and ``ResponseOwner``). Two tasks may flush (the server's
    ``100 Continue`` from a body reader while another task starts the response; the client's body
    task and its reader): the second waits for the first, whose ``send_from`` takes the bytes it
    appended too.
    """

    def __init__(self, lower: ByteStream, limits: Limits, engine: str) -> None:
        self.lower = lower
        self.limits = limits
        self.outbuf = bytearray()
        self._flushing = False
        self._flush_lot: trio.lowlevel.ParkingLot | None = None
        own = _INFO.get(engine)
        if own is None:
            own = _INFO[engine] = {"http_version": "1.1", "http_engine": engine}
        self.info = Info(own, lower.info)  # the keys of this layer: one dict per engine, shared

    async def flush(self, deadline: float) -> None:
        """Push everything committed to ``outbuf`` down, by ``deadline`` (else :class:`~stack.Timeout`;
        what did not go stays for the next flush)."""
        out = self.outbuf
        while out:
            if self._flushing:
                if self._flush_lot is None:
                    self._flush_lot = trio.lowlevel.ParkingLot()
                with trio.move_on_at(deadline) as scope:
                    await self._flush_lot.park()
                if scope.cancelled_caught:
                    raise Timeout("HTTP/1.1: waiting to send timed out")
                continue
            self._flushing = True
            try:
                await self.lower.send_from(out, deadline=deadline)
            finally:
                self._flushing = False
                if self._flush_lot is not None:
                    self._flush_lot.unpark_all()


class _Tunnel(ByteStream):
    """The raw connection after a protocol switch (101 Switching Protocols, or a 2xx to CONNECT).

    Bytes go straight to and from the stream below (the parser's read-ahead was pushed back into it
    first). ``done()`` is the lower stream's ``done()`` (a TCP FIN), ``aclose()`` closes it, and
    ``detach()`` returns it. Sends commit at most :data:`SEND_CHUNK` bytes per step.
    """

    kind = "http1-tunnel"

    def __init__(self, lower: ByteStream) -> None:
        super().__init__(lower, BODY_INFO)
        self._raw = lower

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        return await self._raw.recv(max_bytes, deadline=deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        n = min(len(data), SEND_CHUNK)
        self._outbuf += data[:n]
        return n

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Return the stream below; bytes received here and not read yet go back into it."""
        if self._unread and self._closed is None and self._broken is None:
            self._raw.unread(self._unread)  # the same bytes at both levels: nothing to undo
            self._unread.clear()
        return await super().detach(deadline=deadline)

    async def _detach(self, deadline: float) -> ByteStream:
        return self._raw
