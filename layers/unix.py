"""Unix domain stream sockets: ``unix.connect(path)`` and ``unix.listen(path)``.

Same shape and semantics as :mod:`layers.tcp`. A path starting with ``"\\0"`` is in Linux's
abstract namespace (no file). ``listen`` removes a stale socket file left by a dead server
(but refuses to steal a path where a server still answers, or that is not a socket), and
removes its file again on ``aclose()``.

``info``: ``transport="unix"``, ``peer`` and ``local`` (paths), and where the OS tells
(``SO_PEERCRED``), ``peer_pid``, ``peer_uid``, ``peer_gid``.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
import stat
import struct
from dataclasses import dataclass
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Timeout

from ._socket import SocketListener, SocketStream

__all__ = ["UnixListener", "connect", "listen"]


def _name(addr: Any) -> str:
    if isinstance(addr, bytes):
        return addr.decode("utf-8", "backslashreplace")
    return str(addr)


def _stream(sock: trio.socket.SocketType) -> SocketStream:
    info: dict[str, Any] = {"transport": "unix", "peer": _name(sock.getpeername()), "local": _name(sock.getsockname())}
    peercred = getattr(_stdlib_socket, "SO_PEERCRED", None)
    if peercred is not None:
        try:
            creds = sock.getsockopt(_stdlib_socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
            info["peer_pid"], info["peer_uid"], info["peer_gid"] = struct.unpack("3i", creds)
        except OSError:
            pass
    return SocketStream(sock, "unix", info)


@dataclass(frozen=True)
class connect:
    """Spec: connect to the Unix socket at ``path``. Failure: :class:`~stack.Broken` naming it."""

    path: str

    async def connect(self, *, deadline: float = FOREVER) -> SocketStream:
        sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
        with trio.move_on_at(deadline) as scope:
            try:
                await sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise Broken(f"cannot connect to unix:{self.path}: {exc.strerror or exc}") from exc
            return _stream(sock)
        sock.close()
        assert scope.cancelled_caught
        raise Timeout(f"connecting to unix:{self.path} timed out")


class UnixListener(SocketListener):
    """A listening Unix socket; ``accept()`` returns Unix :class:`SocketStream`s."""

    def _wrap(self, sock: trio.socket.SocketType, peer: Any) -> SocketStream:
        return _stream(sock)


def _remove_stale(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Broken(f"cannot listen on unix:{path}: the path exists and is not a socket")
    probe = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: a stale file from a dead server
        return
    finally:
        probe.close()
    raise Broken(f"cannot listen on unix:{path}: another server is listening there")


@dataclass(frozen=True)
class listen:
    """Spec: listen on the Unix socket ``path`` (``mode`` sets its file permissions)."""

    path: str
    backlog: int = 1024
    mode: int | None = None

    async def listen(self) -> UnixListener:
        abstract = self.path.startswith("\0")
        if not abstract:
            _remove_stale(self.path)
        sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
        try:
            await sock.bind(self.path)
            if self.mode is not None and not abstract:
                os.chmod(self.path, self.mode)
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            raise Broken(f"cannot listen on unix:{self.path}: {exc.strerror or exc}") from exc
        return UnixListener(sock, "unix", self.path, cleanup=None if abstract else self.path)
