"""TCP, the bottom of most stacks: ``tcp.connect(host, port)`` and ``tcp.listen(host, port)``.

Both are *source* specs: a :class:`~stack.Stack` opens them. Direct use::

    stream = await tcp.connect("127.0.0.1", 9000).connect(deadline=after(5))
    listener = await tcp.listen("127.0.0.1", 0).listen()

Streams are :class:`layers._socket.SocketStream`: ``TCP_NODELAY`` is on (layers above coalesce
their own writes), ``done()`` sends FIN, ``aclose()`` closes, a reset is :class:`~stack.Broken`.
``info``: ``transport="tcp"``, ``peer`` and ``local`` as ``(host, port)``, and on a connected
stream ``host``: the host name (or address) given to ``tcp.connect``.
"""

from __future__ import annotations

import math
import socket as _stdlib_socket
from dataclasses import dataclass
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Timeout

from ._socket import SocketListener, SocketStream

__all__ = ["TCPListener", "connect", "listen"]


def _stream(sock: trio.socket.SocketType, peer: Any, host: str | None = None) -> SocketStream:
    sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    info: dict[str, Any] = {"transport": "tcp", "peer": tuple(peer[:2])}  # "local": on first use
    if host is not None:
        info["host"] = host  # the name asked for (tls.client checks the certificate against it)
    return SocketStream(sock, "tcp", info)


@dataclass(frozen=True)
class connect:
    """Spec: connect to ``host:port``, trying every resolved address with happy eyeballs
    (RFC 8305, as :func:`trio.open_tcp_stream`: a new attempt every
    ``happy_eyeballs_delay`` seconds until one succeeds).

    Failure to connect (refused, unreachable, every address failed) raises
    :class:`~stack.Broken` naming the host and port; the deadline raises :class:`~stack.Timeout`.
    """

    host: str
    port: int
    happy_eyeballs_delay: float = 0.25
    local_address: str | None = None

    async def connect(self, *, deadline: float = FOREVER) -> SocketStream:
        with trio.move_on_at(deadline) as scope:
            try:
                trio_stream = await trio.open_tcp_stream(
                    self.host,
                    self.port,
                    happy_eyeballs_delay=self.happy_eyeballs_delay,
                    local_address=self.local_address,
                )
            except OSError as exc:
                raise Broken(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
            sock = trio_stream.socket
            return _stream(sock, sock.getpeername(), self.host)
        assert scope.cancelled_caught
        raise Timeout(f"connecting to {self.host}:{self.port} timed out")


class TCPListener(SocketListener):
    """A listening TCP socket; ``accept()`` returns TCP :class:`SocketStream`s."""

    def _wrap(self, sock: trio.socket.SocketType, peer: Any) -> SocketStream:
        return _stream(sock, peer)


@dataclass(frozen=True)
class listen:
    """Spec: listen on ``host:port`` (port 0 picks a free port; ``listener.address`` tells).

    ``host`` is resolved and the first address is bound (one socket per spec: to listen on
    both IPv4 and IPv6, run two stacks). ``SO_REUSEADDR`` is on; ``reuse_port=True`` sets
    ``SO_REUSEPORT`` so several processes can share the port.

    ``defer_accept=seconds`` (Linux ``TCP_DEFER_ACCEPT``, as nginx's ``deferred``; ignored where
    the system lacks it): the kernel hands a connection to ``accept()`` only once its first bytes
    have arrived, so the first receive finds them instead of waiting. A connection that stays
    silent is held by the kernel (no descriptor, no task) and handed over after about that many
    seconds anyway. Only for protocols where the client speaks first (HTTP, TLS, PROXY).
    """

    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = 1024
    reuse_port: bool = False
    defer_accept: float | None = None

    async def listen(self) -> TCPListener:
        infos = await trio.socket.getaddrinfo(
            self.host, self.port, type=_stdlib_socket.SOCK_STREAM, flags=_stdlib_socket.AI_PASSIVE
        )
        family, type_, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
            if family == _stdlib_socket.AF_INET6:
                sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
            defer = getattr(_stdlib_socket, "TCP_DEFER_ACCEPT", None)
            if self.defer_accept is not None and defer is not None:
                sock.setsockopt(_stdlib_socket.IPPROTO_TCP, defer, max(1, math.ceil(self.defer_accept)))
            await sock.bind(sockaddr)
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            raise Broken(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        address: Any = tuple(sock.getsockname()[:2])
        return TCPListener(sock, "tcp", address)
