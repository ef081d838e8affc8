"""A ByteStream layer that carries the lower stream's bytes unchanged: the base for layers whose
work is beside the bytes (a handshake, ``info``, pacing, logging, fault injection).

:class:`PassThrough` is that stream; PROXY protocol, SOCKS5, throttle, trace and the testing
kit's chaos layer subclass it and override only what they add:

* ``recv`` returns the lower stream's bytes as they are (bytes a handshake read ahead were
  pushed back into the lower stream with ``unread``, so they come first). Cancel-safe because the
  lower ``recv`` is.
* ``send`` commits at most :data:`CHUNK` bytes per step into the outgoing buffer, which goes
  down with ``send_from``: a timed-out send reports exactly what it committed, and committed
  bytes go first on the next call.
* ``done`` passes ``done`` down; ``aclose`` closes the lower stream too.
* ``detach`` hands back every byte this layer holds (bytes a ``recv_exactly`` or ``recv_until``
  pulled and the caller has not received are raw bytes of the lower stream, so they go back to
  it, first in line) and returns the lower stream. A detach that fails keeps them here.
"""

from __future__ import annotations

from .deadlines import FOREVER
from .streams import ByteStream

__all__ = ["CHUNK", "PassThrough"]

CHUNK = 65536
"""Most bytes one send step commits beyond what the lower stream accepted."""


class PassThrough(ByteStream):
    """The lower stream's bytes, unchanged, with this layer's ``info`` on top of the lower's."""

    kind = "passthrough"
    _lower: ByteStream

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        return await self._lower.recv(max_bytes, deadline=deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        # At most one chunk waits here: push the previous one down before committing the next.
        if self._outbuf:
            await self._flush(deadline)
        n = min(len(data), CHUNK)
        self._outbuf += data[:n]
        return n

    async def _detach(self, deadline: float) -> ByteStream:
        return self._lower

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Undo this layer: bytes it holds go back to the lower stream, which is returned."""
        if self._sending or self._receiving or self._closed is not None or self._broken is not None:
            return await super().detach(deadline=deadline)  # raises the right error
        pending = bytes(self._unread)
        self._unread.clear()
        try:
            lower = await super().detach(deadline=deadline)
        except BaseException:
            self._unread[:0] = pending
            raise
        lower.unread(pending)
        return lower
