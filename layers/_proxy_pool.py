"""The reverse proxy's backend side: where to connect (:class:`Upstream`) and the pool of kept-alive
HTTP/1.1 connections to it (:class:`BackendPool`).

Theory of operation: the pool holds at most ``size`` connections, idle and busy together; a
caller takes the most recently used idle one that has not expired, else a new one, else waits
for one to come back, and a connection given back goes straight to the caller waiting longest
(first come, first served). ``layers.reverse_proxy`` re-exports both names; this module knows no
header rule and no app.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import trio

from layers import http, tcp, unix
from stack.compose import Stack
from stack.deadlines import after
from stack.errors import Closed, Timeout

log = logging.getLogger("stack.proxy")


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Upstream:
    """Where the backend is: ``http://host:port`` (TCP) or ``unix:/path``."""

    url: str
    host: str | None = None
    port: int = 80
    path: str | None = None

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """Parse ``http://host[:port]`` or ``unix:/path`` (also ``unix:///path``); ValueError if not."""
        if url.startswith("unix:"):
            path = url[len("unix:") :]
            if path.startswith("//"):
                path = path[2:]
            if not path:
                raise ValueError(f"{url!r}: a Unix socket path is missing (unix:/path/to/socket)")
            return cls(url, path=path)
        import urllib.parse

        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: the upstream is http://host:port or unix:/path")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{url!r}: the upstream URL takes no path (requests keep theirs)")
        return cls(url, host=parts.hostname, port=parts.port or 80)

    def stack(self) -> Stack:
        """The client stack that reaches the backend: ``tcp`` or ``unix``, then ``http.client()``."""
        if self.path is not None:
            return Stack(unix.connect(self.path), http.client(authority="localhost"))
        assert self.host is not None
        return Stack(tcp.connect(self.host, self.port), http.client())


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (127.0.0.1) as ``(host, port)``; ValueError if not."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


# --------------------------------------------------------------------------------------------------
# the pool


class BackendPool:
    """Kept-alive HTTP/1.1 connections to the backend: at most ``size`` (idle and busy together).

    ``acquire`` returns the most recently used idle connection that has not expired, else opens a
    new one (under ``connect_timeout``), else waits for one to come back (under the caller's
    deadline: :class:`~stack.Timeout`). ``release(conn, reusable=True)`` only once the
    response body was read to its end; anything else closes the connection. Idle connections
    older than ``idle_timeout`` seconds are closed (by :meth:`run`, and when met).

    Waiting callers are served first come, first served: a connection given back (or the room
    left by one closed) goes straight to the caller waiting longest, so a newcomer cannot take
    it in between and the woken caller never has to wait again.
    """

    def __init__(
        self, stack: Stack, *, size: int = 64, idle_timeout: float = 10.0, connect_timeout: float = 5.0
    ) -> None:
        if size < 1:
            raise ValueError("the pool size must be at least 1")
        self.stack = stack
        self.size = size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: list[tuple[float, http.ClientConnection]] = []  # oldest first
        self._count = 0  # connections open or opening, idle or busy
        self._lot = trio.lowlevel.ParkingLot()  # callers waiting for a connection, longest first
        self._handed: dict[trio.lowlevel.Task, http.ClientConnection | None] = {}  # woken, not yet running
        self._closed = False

    @property
    def idle(self) -> int:
        """Idle connections kept."""
        return len(self._idle)

    @property
    def open(self) -> int:
        """Connections open (or being opened), idle and busy."""
        return self._count

    async def acquire(
        self, *, deadline: float, fresh: bool = False, stack: Stack | None = None
    ) -> tuple[http.ClientConnection, bool]:
        """A connection and whether it was reused. ``fresh=True`` skips the idle ones; ``stack``
        opens a new one with that stack instead of the pool's (``--send-proxy``: one per request).

        Raises what connecting raised (:class:`~stack.Broken`, :class:`~stack.Timeout`), or
        :class:`~stack.Timeout` when every connection stays busy until ``deadline``.
        """
        while True:
            if self._closed:
                raise Closed("the backend pool is closed")
            if not fresh:
                idle = self._idle
                if idle and trio.current_time() - idle[-1][0] < self.idle_timeout:
                    return idle.pop()[1], True  # the usual case, without a coroutine per call
                conn = await self._pop_idle()
                if conn is not None:
                    return conn, True
            elif self._idle and self._count >= self.size:  # make room for the fresh one: its slot is ours
                await self._close(self._idle.pop(0)[1])
                return await self._connect(stack, deadline), False
            if self._count < self.size:
                self._count += 1
                return await self._connect(stack, deadline), False
            handed: http.ClientConnection | Literal[False] | None = False
            if deadline >= trio.current_effective_deadline():
                # An enclosing scope ends the wait no later than ours would (on a tie trio gives the
                # cancellation to the outermost scope): a scope of our own would only cost.
                handed = await self._wait()
            else:
                with trio.move_on_at(deadline) as scope:
                    handed = await self._wait()
                if scope.cancelled_caught:
                    raise Timeout(f"all {self.size} backend connections stayed busy (--pool-size)")
            if handed is None:  # a connection closed and its room was kept (and counted) for us
                return await self._connect(stack, deadline), False
            if handed is not False:  # a connection given back
                if not fresh:
                    return handed, True
                await self._close(handed)  # its slot is ours
                return await self._connect(stack, deadline), False
            # woken with nothing: the pool closed

    async def _connect(self, stack: Stack | None, deadline: float) -> http.ClientConnection:
        """Open a connection in a slot already counted; if that fails, the slot goes to the
        caller waiting longest."""
        try:
            conn: http.ClientConnection = await (stack or self.stack).connect(
                deadline=min(deadline, after(self.connect_timeout))
            )
        except BaseException:
            self._count -= 1
            self._give_room()
            raise
        return conn

    async def _wait(self) -> http.ClientConnection | Literal[False] | None:
        """Wait for a caller to give back a connection (returned), for the room of one that closed
        (``None``: counted for us already), or for the pool to close (``False``). A park that was
        unparked returns whatever cancellation comes after, so nothing handed over is lost; a
        cancelled one was handed nothing."""
        await self._lot.park()
        return self._handed.pop(trio.lowlevel.current_task(), False)

    def _hand_over(self, conn: http.ClientConnection) -> bool:
        """Give ``conn`` to the caller waiting longest; False if nobody waits."""
        if not self._lot:
            return False
        self._handed[self._lot.unpark()[0]] = conn
        return True

    def _give_room(self) -> None:
        """A connection closed (or was never opened): its room goes to the caller waiting
        longest, counted for it at once so that a newcomer cannot take it."""
        if self._lot and not self._closed:
            self._count += 1
            self._handed[self._lot.unpark()[0]] = None

    async def _pop_idle(self) -> http.ClientConnection | None:
        now = trio.current_time()
        while self._idle:
            since, conn = self._idle.pop()
            if now - since < self.idle_timeout:
                return conn
            await self._close_one(conn)
        return None

    async def release(self, conn: http.ClientConnection, *, reusable: bool) -> None:
        """Give ``conn`` back: kept idle if ``reusable`` (its response was read to its end and
        the backend keeps it alive), else closed."""
        if not (reusable and self._keep(conn)):
            await self._close_one(conn)

    def _take(self) -> http.ClientConnection | None:
        """The most recently used idle connection if it has not expired (``acquire``'s usual
        case, without a coroutine), else None."""
        idle = self._idle
        if idle and not self._closed and trio.current_time() - idle[-1][0] < self.idle_timeout:
            return idle.pop()[1]
        return None

    def _keep(self, conn: http.ClientConnection) -> bool:
        """``release(conn, reusable=True)`` without a coroutine: False if the pool is closed
        (the caller then closes ``conn``)."""
        if self._closed:
            return False
        if not self._hand_over(conn):
            self._idle.append((trio.current_time(), conn))
        return True

    async def _close_one(self, conn: http.ClientConnection) -> None:
        self._count -= 1
        self._give_room()
        await self._close(conn)

    @staticmethod
    async def _close(conn: http.ClientConnection) -> None:
        with trio.CancelScope(shield=True):
            await conn.aclose(deadline=trio.current_time() + 1.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close expired idle connections, until cancelled (start it in the server's nursery)."""
        task_status.started()
        while True:
            await trio.sleep(max(self.idle_timeout / 2, 0.05))
            now = trio.current_time()
            while self._idle and now - self._idle[0][0] >= self.idle_timeout:
                await self._close_one(self._idle.pop(0)[1])

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        while self._idle:
            await self._close_one(self._idle.pop()[1])
        self._lot.unpark_all()  # handed nothing: they see the pool closed
