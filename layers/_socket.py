"""The bottom ByteStream and Listener shared by ``tcp`` and ``unix``, built on ``trio.socket``.

Sends go straight to ``sock.send`` (so a timed-out send knows exactly what the kernel took) and
receives to ``sock.recv``; trio's socket methods are cancel-safe (an operation either completes
or is cancelled having done nothing), which is what makes every deadline here lossless.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as _stdlib_socket
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, StackError, Timeout
from stack.streams import ByteStream, Listener

log = logging.getLogger("stack.socket")

_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH}
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
_IGNORABLE_ACCEPT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
_MAX_RECV = 256 * 1024  # one recv never allocates more than this, whatever the caller asks for


def _translate(exc: BaseException, kind: str, what: str) -> StackError:
    if isinstance(exc, trio.ClosedResourceError):
        return Closed(f"{kind} socket was closed while a {what} was in progress")
    if isinstance(exc, OSError) and exc.errno in _CLOSED_ERRNOS:
        return Closed(f"{kind} socket is closed")
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return Broken(f"{kind} connection reset during {what}: {exc.strerror}")
    return Broken(f"{kind} {what} failed: {exc}")


class SocketStream(ByteStream):
    """A connected stream socket as a bottom :class:`~stack.ByteStream`.

    * ``recv``: what the kernel has, up to ``max_bytes``; ``b""`` once the peer sent FIN.
    * ``send``: returns when the kernel accepted every byte; on deadline ``Timeout.sent`` is
      exactly what the kernel took.
    * ``done()``: ``shutdown(SHUT_WR)`` (FIN); receiving goes on.
    * ``aclose()``: closes the socket; a task blocked on it gets :class:`~stack.Closed`.
    * A reset or any socket error: :class:`~stack.Broken`, sticky.
    * ``detach()``: not possible (this is the bottom).

    ``info``: ``transport``, ``peer``, ``local`` (and ``peer_pid``/``peer_uid`` on Unix).
    """

    def __init__(self, sock: trio.socket.SocketType, kind: str, info: dict[str, Any]) -> None:
        super().__init__(None, info)
        self.kind = kind
        self.socket = sock

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        try:
            return await self.socket.recv(max_bytes if max_bytes <= _MAX_RECV else _MAX_RECV)
        except (OSError, trio.ClosedResourceError) as exc:
            raise _translate(exc, self.kind, "recv") from exc

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        try:
            return await self.socket.send(data)
        except (OSError, trio.ClosedResourceError) as exc:
            raise _translate(exc, self.kind, "send") from exc

    async def _done(self, deadline: float) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise _translate(exc, self.kind, "shutdown") from exc

    def _abort(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
        self.socket.close()

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close the socket (see the class docstring). Idempotent; a checkpoint."""
        if self._closed is None:
            self._closed = "closed"
            self._abort()
        await trio.lowlevel.checkpoint()

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        raise StackError(f"{self.kind} is the bottom layer: there is nothing below it to detach to")

    def reset(self) -> None:
        """Close at once with a TCP RST (SO_LINGER 0) instead of a FIN. For tests and for
        refusing abusive peers; a no-op on Unix sockets beyond closing."""
        if self.socket.fileno() != -1 and self.socket.family in (
            _stdlib_socket.AF_INET,
            _stdlib_socket.AF_INET6,
        ):
            self.socket.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self._closed = "closed"
        self._abort()


class SocketListener(Listener):
    """A listening socket. ``accept()`` returns :class:`SocketStream`s.

    Routine accept errors (a connection aborted before accept) are skipped; running out of
    file descriptors or memory is logged and retried after a short pause rather than ending
    the server. On deadline: :class:`~stack.Timeout`. After ``aclose()``: :class:`~stack.Closed`.
    """

    def __init__(self, sock: trio.socket.SocketType, kind: str, address: Any, cleanup: str | None = None) -> None:
        self.socket = sock
        self.kind = kind
        self.address = address
        self._cleanup = cleanup

    def _wrap(self, sock: trio.socket.SocketType) -> SocketStream:
        raise NotImplementedError

    async def accept(self, *, deadline: float = FOREVER) -> SocketStream:
        with trio.move_on_at(deadline) as scope:
            while True:
                try:
                    sock, _ = await self.socket.accept()
                except trio.ClosedResourceError:
                    raise Closed(f"{self.kind} listener was closed") from None
                except OSError as exc:
                    if exc.errno in _CLOSED_ERRNOS:
                        raise Closed(f"{self.kind} listener was closed") from None
                    if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                        continue
                    if exc.errno in _RESOURCE_ERRNOS:
                        log.error("accept on %s: %s; retrying in %.1fs", self.address, exc, _ACCEPT_BACKOFF)
                        await trio.sleep(_ACCEPT_BACKOFF)
                        continue
                    raise Broken(f"{self.kind} accept failed: {exc}") from exc
                return self._wrap(sock)
        assert scope.cancelled_caught
        raise Timeout(f"{self.kind} accept timed out")

    async def aclose(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
            if self._cleanup:
                with contextlib.suppress(OSError):
                    os.unlink(self._cleanup)
        await trio.lowlevel.checkpoint()
