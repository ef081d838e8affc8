"""File descriptors over a Unix socket (``SCM_RIGHTS``), carried by messages.

::

    stream = await unix.connect(path).connect(deadline=after(5))
    fds = await fdpass.messages().attach(stream)
    await fds.send_fds(b"a pipe for you", [write_end])   # the peer gets its own copy of the fd
    data, received = await fds.recv_fds()                # `received` is yours: close or wrap it
    await fds.send(b"a plain message")                   # a MessageStream as any other
    stream = await fds.detach()                          # the Unix stream again

The layer is a :class:`~stack.MessageStream` on a Unix :class:`~layers._socket.SocketStream`
(it needs the socket itself: attach it right on ``unix.connect`` / ``unix.listen`` streams,
and before the peer sends any fd, since a plain read of a byte that carries fds makes the
kernel close them). Wire format, the same both ways: a 5-byte header (4-byte big-endian body
length, 1-byte fd count), then the body; a message's fds travel as ``SCM_RIGHTS`` ancillary
data on the same ``sendmsg`` as the first byte of its header. The receiver checks that the fds
it gets arrive with the header that announces them (stray fds, missing fds, more than announced:
:class:`~stack.ProtocolError`).

Ownership, so that no fd ever leaks:

* ``send_fds(msg, fds)``: the fds stay yours. The kernel gives the peer duplicates when the
  message is committed; close yours whenever you like after the call returns (or raises).
* ``recv_fds()`` returns ``(data, fds)``: the fds are new ones in this process
  (close-on-exec), and they are yours: close them (``os.close``) or wrap them
  (``socket.socket(fileno=fd)``, ``os.fdopen(fd)``).
* ``recv()`` of a message that came with fds returns the bytes and closes the fds (the
  bytes were taken without them).
* fds that arrived with messages not received yet are closed by ``aclose()``, and when the
  stream fails (a protocol error, over a limit, a reset). ``detach()`` refuses (a
  :class:`~stack.StackError`, nothing changed) while any are held.

Limits: ``max_fds`` per message (default 16; at most 253, the kernel's ``SCM_MAX_FD``) and
``max_message`` bytes per body (default 16 MiB). Sending over either raises
:class:`~stack.MessageTooLarge` and sends nothing. Receiving over either (announced in a
header, or more fds than fit the ancillary buffer, which is sized for ``max_fds``) raises
``MessageTooLarge``, closes every fd held and breaks the stream (the rest cannot be parsed).

Deadlines and cancellation follow every message layer: a receive that times out consumes
nothing (bytes and fds stay for the next call); a send commits the message (its bytes and its
fds) whole or not at all. ``done()`` half-closes the socket (the peer's ``recv`` then raises
:class:`~stack.EndOfStream`). ``info``: the Unix stream's, plus ``framing="fdpass"``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket as _stdlib_socket
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Busy, Closed, MessageTooLarge, ProtocolError, StackError
from stack.streams import ByteStream, MessageStream

from ._socket import SocketStream

__all__ = ["MAX_FDS", "FdStream", "messages"]

log = logging.getLogger("stack.fdpass")

MAX_FDS = 16
"""Default ``max_fds``: fds per message."""
MAX_MESSAGE = 16 * 1024 * 1024
"""Default ``max_message``: 16 MiB."""
SCM_MAX_FD = 253
"""The most fds Linux passes in one message."""

_HEADER = 5
_RECV_CHUNK = 65536
_INT_SIZE = array.array("i").itemsize
_CMSG_CLOEXEC: int = getattr(_stdlib_socket, "MSG_CMSG_CLOEXEC", 0)
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # already closed by someone else
            os.close(fd)


class _Batch:
    """Fds from one ``recvmsg``, with the stream offsets of the bytes they came with."""

    __slots__ = ("end", "fds", "start")

    def __init__(self, start: int, end: int, fds: list[int]) -> None:
        self.start = start
        self.end = end
        self.fds = fds


class FdStream(MessageStream):
    """Messages with optional fds over a Unix socket (see the module docstring)."""

    kind = "fdpass"
    _lower: SocketStream

    def __init__(self, lower: SocketStream, max_fds: int, max_message: int) -> None:
        super().__init__(lower, {"framing": "fdpass"})
        self._sock = lower.socket
        self._max_fds = max_fds
        self._max = max_message
        self._cmsg_space = _stdlib_socket.CMSG_SPACE(max_fds * _INT_SIZE) if max_fds else 0
        self._rbuf = bytearray()
        self._rbuf_at = 0  # stream offset of self._rbuf[0]
        self._received = 0  # stream offset of the end of what was read from the socket
        self._eof = False
        self._batches: deque[_Batch] = deque()
        self._send_with: list[int] = []
        self._claim = False
        self._claimed: list[int] = []
        # Bytes the Unix stream already read (a layer detached before us): no fds came with them.
        self._take_unread(lower)

    def _take_unread(self, lower: ByteStream) -> None:
        pending = lower.readahead()
        if pending:
            self._rbuf += pending
            self._received += len(pending)
            pending.clear()

    # ---- fds in and out ------------------------------------------------------------------

    @property
    def held_fds(self) -> int:
        """How many received fds wait here for their messages to be received."""
        return sum(len(b.fds) for b in self._batches)

    async def send_fds(
        self, msg: bytes | bytearray | memoryview, fds: list[int | _HasFileno], *, deadline: float = FOREVER
    ) -> None:
        """Send ``msg`` with ``fds`` (ints, or objects with ``fileno()``); see :meth:`send`.

        The fds stay yours (the peer gets duplicates). More than ``max_fds``:
        :class:`~stack.MessageTooLarge`, nothing sent. A fd that is not open: ``ValueError``.
        """
        if self._sending:
            raise Busy(f"another task is already sending on this {self.kind} stream")
        self._send_with = [fd if isinstance(fd, int) else fd.fileno() for fd in fds]
        try:
            await self.send(msg, deadline=deadline)
        finally:
            self._send_with = []

    async def recv_fds(self, *, deadline: float = FOREVER) -> tuple[bytes, list[int]]:
        """Receive the next message and the fds that came with it (often none); see :meth:`recv`.

        The fds are yours from here on: close or wrap them. On deadline or cancellation nothing
        is consumed, fds included.
        """
        if self._receiving:
            raise Busy(f"another task is already receiving on this {self.kind} stream")
        self._claim = True
        try:
            data = await self.recv(deadline=deadline)
            fds, self._claimed = self._claimed, []
            return data, fds
        finally:
            self._claim = False

    # ---- sending -------------------------------------------------------------------------

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        fds = self._send_with
        if len(msg) > self._max:
            raise MessageTooLarge(
                f"message of {len(msg)} bytes is over max_message={self._max}", limit=self._max, size=len(msg)
            )
        if len(fds) > self._max_fds:
            raise MessageTooLarge(
                f"{len(fds)} fds in one message is over max_fds={self._max_fds}", limit=self._max_fds, size=len(fds)
            )
        out = self._outbuf  # empty here: the base flushed it before calling us
        out += len(msg).to_bytes(4, "big")
        out.append(len(fds))
        out += msg
        if fds:
            ancillary = [(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SCM_RIGHTS, array.array("i", fds))]
            try:
                n = await self._sock.sendmsg([out], ancillary)
            except BaseException as exc:  # cancelled, timed out or failed: nothing was sent
                out.clear()
                if isinstance(exc, (OSError, trio.ClosedResourceError)):
                    raise self._send_error(exc) from exc
                raise
            del out[:n]  # the fds went with the first byte: the message is committed
            self._message_committed = True
        total = len(out)
        try:
            await self._lower.send_from(out, deadline=deadline)
        finally:
            if len(out) < total:
                self._message_committed = True
            elif not self._message_committed:
                out.clear()  # nothing went down: not committed, forget it

    def _send_error(self, exc: BaseException, /) -> StackError | ValueError:
        if isinstance(exc, trio.ClosedResourceError) or self._sock.fileno() == -1:
            return Closed("fdpass: the unix socket is closed")
        assert isinstance(exc, OSError)
        if exc.errno == errno.EBADF:
            return ValueError("fdpass: one of the fds to send is not an open file descriptor")
        if exc.errno in _CLOSED_ERRNOS:
            return Closed("fdpass: the unix socket is closed")
        return Broken(f"fdpass send failed: {exc.strerror or exc}")

    # ---- receiving -----------------------------------------------------------------------

    async def _recv_message(self, deadline: float) -> bytes | None:
        frame = await self._recv_frame(deadline)
        if frame is None:
            return None
        data, fds = frame
        if self._claim:
            self._claimed = fds
        elif fds:
            log.debug("fdpass: closing %d fds that came with a message received without recv_fds()", len(fds))
            _close_all(fds)
        return data

    async def _recv_frame(self, deadline: float) -> tuple[bytes, list[int]] | None:
        buf = self._rbuf
        while True:
            if len(buf) >= _HEADER:
                size = int.from_bytes(buf[:4], "big")
                count = buf[4]
                if size > self._max:
                    self._give_up(
                        MessageTooLarge(
                            f"peer announced a message of {size} bytes, over max_message={self._max}",
                            limit=self._max,
                            size=size,
                        )
                    )
                if count > self._max_fds:
                    self._give_up(
                        MessageTooLarge(
                            f"peer announced {count} fds in one message, over max_fds={self._max_fds}",
                            limit=self._max_fds,
                            size=count,
                        )
                    )
                if len(buf) >= _HEADER + size:
                    fds = self._fds_for(self._rbuf_at, count)
                    data = bytes(buf[_HEADER : _HEADER + size])
                    del buf[: _HEADER + size]
                    self._rbuf_at += _HEADER + size
                    return data, fds
            if self._eof:
                if buf:
                    self._give_up(ProtocolError(f"stream ended inside a message ({len(buf)} bytes left over)"))
                if self._batches:
                    self._give_up(ProtocolError("stream ended with fds that no message announced"))
                return None
            await self._fill()

    def _fds_for(self, at: int, count: int) -> list[int]:
        """The fds of the message whose header starts at stream offset ``at``."""
        batches = self._batches
        if batches and batches[0].end <= at:
            self._give_up(ProtocolError("fds arrived with bytes of a message that announced none"))
        if not count:
            return []
        head = batches[0] if batches else None
        if head is None or not head.start <= at < head.end or len(head.fds) != count:
            got = len(head.fds) if head is not None and head.start <= at < head.end else 0
            self._give_up(ProtocolError(f"a message announced {count} fds but {got} came with it"))
        assert head is not None
        batches.popleft()
        return head.fds

    async def _fill(self) -> None:
        try:
            data, ancillary, flags, _ = await self._sock.recvmsg(_RECV_CHUNK, self._cmsg_space, _CMSG_CLOEXEC)
        except (OSError, trio.ClosedResourceError) as exc:
            if isinstance(exc, trio.ClosedResourceError) or exc.errno in _CLOSED_ERRNOS:
                raise Closed("fdpass: the unix socket was closed while a recv was in progress") from exc
            raise Broken(f"fdpass recv failed: {exc.strerror or exc}") from exc
        # From here on no await: what arrived is in this stream's state before anything can cancel.
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _stdlib_socket.SOL_SOCKET and kind == _stdlib_socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % _INT_SIZE])
                fds.extend(got)
        start = self._received
        self._received += len(data)
        if fds:
            self._batches.append(_Batch(start, self._received, fds))
        if flags & _stdlib_socket.MSG_CTRUNC:
            self._give_up(
                MessageTooLarge(
                    f"the peer sent more fds with one message than max_fds={self._max_fds} "
                    "(the kernel closed the rest)",
                    limit=self._max_fds,
                )
            )
        if not data:
            self._eof = True
        self._rbuf += data

    def _give_up(self, exc: StackError) -> NoReturn:
        """Fail for good: close every fd held, mark the stream broken, raise ``exc``."""
        self._close_held()
        self._fail(exc)
        raise exc

    def _close_held(self) -> None:
        while self._batches:
            _close_all(self._batches.popleft().fds)

    # ---- the end -------------------------------------------------------------------------

    def _abort(self) -> None:
        self._close_held()

    async def _detach(self, deadline: float) -> ByteStream:
        held = self.held_fds
        if held:
            raise StackError(
                f"cannot detach the fdpass layer: it holds {held} fds of messages not received yet (recv them first)"
            )
        await trio.lowlevel.checkpoint()
        self._lower.unread(self._rbuf)
        self._rbuf.clear()
        return self._lower


@dataclass(frozen=True)
class messages:
    """Spec: messages with optional fds over a Unix socket stream (see the module docstring)."""

    max_fds: int = MAX_FDS
    max_message: int = MAX_MESSAGE

    def __post_init__(self) -> None:
        if not 0 <= self.max_fds <= SCM_MAX_FD:
            raise ValueError(f"max_fds must be 0..{SCM_MAX_FD} (the kernel's limit per message)")
        if not 0 <= self.max_message < 2**32:
            raise ValueError("max_message must fit in the 4-byte length")

    async def attach(self, lower: Any, *, deadline: float = FOREVER) -> FdStream:
        """Wrap the Unix socket stream ``lower``. No handshake: returns at once."""
        if not isinstance(lower, SocketStream) or lower.socket.family != _stdlib_socket.AF_UNIX:
            raise TypeError(
                f"fdpass attaches right on a Unix socket stream (unix.connect / unix.listen), not {lower!r}"
            )
        return FdStream(lower, self.max_fds, self.max_message)
