"""The bottom ByteStream and Listener shared by ``tcp`` and ``unix``, built on ``trio.socket``.

Sends go straight to ``send(2)`` (so a timed-out send knows exactly what the kernel took) and
receives to ``recv(2)`` / ``recv_into``, on the stdlib socket inside the trio socket, with trio's
own recipe (:meth:`trio.socket.SocketType.send` does the same through four more Python calls):
check for cancellation, try the call, and only if the kernel says "would block" wait for the
socket with :func:`trio.lowlevel.wait_readable` / ``wait_writable``. Every operation either
completes or is cancelled having done nothing, which is what makes every deadline here lossless.
A finite deadline costs a cancel scope only around an actual wait: a call the kernel completes at
once makes none (a deadline already passed on entry is still a :class:`~stack.Timeout`).

**Schedule points.** An operation that had to wait is a full checkpoint, as in trio. One that
the kernel completed at once is always a cancel point but yields to the scheduler only if this
thread last yielded here more than :data:`SCHEDULE_SLICE` seconds ago (trio issue #1757 proposes
the same for trio itself; trio documents that the scheduler "has the option of ignoring" a
schedule point "for increased efficiency"). A yield costs about as much as the system call it
follows, so this halves the cost of small sends; a task looping on I/O that never blocks still
lets the others run at least every :data:`SCHEDULE_SLICE` seconds, and a deadline that passes
meanwhile is seen at the next yield.

**A request and its answer.** :meth:`SocketStream.send_and_recv` is ``send_from`` then ``recv``
for a caller that waits for the answer to what it sent (the HTTP/1.1 client): it waits for
readability before its first receive, since an answer cannot be there the moment its request
left (a receive tried then is "would block": a system call and an exception for nothing), and
makes no schedule point in between (that wait is the checkpoint), unless one is due anyway: then
it yields first and tries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket as _stdlib_socket
import threading
from collections.abc import Callable, Iterator, Mapping
from time import perf_counter
from typing import Any, TypeVar

import trio

from stack.deadlines import FOREVER, check_deadline
from stack.errors import Broken, Closed, StackError, Timeout
from stack.streams import DEFAULT_RECV, ByteStream, Info, Listener

log = logging.getLogger("stack.socket")
_A = TypeVar("_A")
_R = TypeVar("_R")

_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH}
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
_IGNORABLE_ACCEPT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
_MAX_RECV = 256 * 1024  # one recv never allocates more than this, whatever the caller asks for


SCHEDULE_SLICE = 0.0005
"""Seconds of I/O that completes at once a thread may run before it yields to trio's scheduler."""


class _LastYield(threading.local):
    at = 0.0


_last_yield = _LastYield()
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_current_time = trio.current_time


async def schedule_point() -> None:
    """The second half of a checkpoint after an operation that did not wait (see the module
    docstring): yield to the scheduler, cancel-shielded, unless this thread did so less than
    :data:`SCHEDULE_SLICE` seconds ago."""
    if perf_counter() - _last_yield.at >= SCHEDULE_SLICE:
        await _cancel_shielded_checkpoint()
        _last_yield.at = perf_counter()


async def _wait_until(wait: Any, sock: _stdlib_socket.socket, deadline: float, kind: str, what: str) -> None:
    """``wait(sock)`` (``wait_readable`` or ``wait_writable``), but :class:`Timeout` at ``deadline``.
    Only this waiting path pays for a cancel scope."""
    with trio.move_on_at(deadline):
        await wait(sock)
        return
    raise Timeout(f"{kind} {what} timed out")


def _unwrap(sock: trio.socket.SocketType) -> tuple[trio.socket.SocketType, _stdlib_socket.socket]:
    """The trio socket and the stdlib socket it wraps.

    trio keeps the stdlib socket as ``_sock`` (private but unchanged since trio's first release);
    should that ever change, the descriptor moves into a new stdlib socket through public API.
    """
    inner = getattr(sock, "_sock", None)
    if isinstance(inner, _stdlib_socket.socket):
        return sock, inner
    family, type_, proto = sock.family, sock.type, sock.proto  # pragma: no cover - other trio
    std = _stdlib_socket.socket(family, type_, proto, fileno=sock.detach())  # pragma: no cover
    return trio.socket.from_stdlib_socket(std), std  # pragma: no cover


def _address(raw: Any) -> Any:
    """An address as ``info`` shows it: ``(host, port)`` for IP, a ``str`` path for Unix."""
    if isinstance(raw, tuple):
        return tuple(raw[:2])
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    return str(raw)


class _LocalAddress(Mapping[str, Any]):
    """The ``local`` key of a socket's ``info``, asked from the kernel when first read."""

    __slots__ = ("_stream",)

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream

    def __getitem__(self, key: str) -> Any:
        if key != "local":
            raise KeyError(key)
        return self._stream._local()

    def __contains__(self, key: object) -> bool:
        return key == "local"

    def __iter__(self) -> Iterator[str]:
        return iter(("local",))

    def __len__(self) -> int:
        return 1


def _translate(exc: BaseException, kind: str, what: str) -> StackError:
    if isinstance(exc, trio.ClosedResourceError):
        return Closed(f"{kind} socket was closed while a {what} was in progress")
    if isinstance(exc, OSError) and exc.errno in _CLOSED_ERRNOS:
        return Closed(f"{kind} socket is closed")
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return Broken(f"{kind} connection reset during {what}: {exc.strerror}")
    return Broken(f"{kind} {what} failed: {exc}")


def _attempt(call: Callable[[_A], _R], arg: _A) -> _R | None:
    """``call(arg)``, or None if the kernel said "would block". The exception stays in this short
    frame: one raised in a coroutine's frame gives that frame a frame object for as long as the
    coroutine lives (0.2 KiB held by every connection idling in a receive)."""
    try:
        return call(arg)
    except BlockingIOError:
        return None


class SocketStream(ByteStream):
    """A connected stream socket as a bottom :class:`~stack.ByteStream`.

    * ``recv``: what the kernel has, up to ``max_bytes``; ``b""`` once the peer sent FIN.
    * ``send``: returns when the kernel accepted every byte; on deadline ``Timeout.sent`` is
      exactly what the kernel took.
    * ``done()``: ``shutdown(SHUT_WR)`` (FIN); receiving goes on.
    * ``aclose()``: closes the socket; a task blocked on it gets :class:`~stack.Closed`.
    * A reset or any socket error: :class:`~stack.Broken`, sticky.
    * ``detach()``: not possible (this is the bottom).

    ``info``: ``transport``, ``peer``, ``local`` (and ``peer_pid``/``peer_uid`` on Unix). Where
    ``local`` is not given, it is asked from the kernel (``getsockname``) the first time someone
    reads it, not for every accepted connection; ``None`` if the socket was closed before that.
    """

    _primitives_take_deadline = True  # a cancel scope only around an actual wait
    # The bottom commits nothing it has not sent (send() goes straight to the kernel), so its
    # outgoing buffer stays empty: one shared, never written, instead of one per connection.
    _outbuf = bytearray()

    def __init__(self, sock: trio.socket.SocketType, kind: str, info: dict[str, Any]) -> None:
        super().__init__(None, info)
        del self._outbuf  # the class's (above)
        self.kind = kind
        self._trio_sock, self._sock = _unwrap(sock)
        self._lazy = None if "local" in self._info else _LocalAddress(self)
        # Whether trio may know this descriptor (something waited on it): closing then goes
        # through trio's notify_closing. A connection that never waited closes without it.
        self._trio_knows = False

    @property
    def socket(self) -> trio.socket.SocketType:
        """The trio socket, for layers that do their own I/O on it (``fdpass``)."""
        self._trio_knows = True  # whoever takes it may wait on it through trio
        return self._trio_sock

    @property
    def info(self) -> Info:
        """See the class docstring (``local`` is looked up on first use)."""
        if self._lazy is None or "local" in self._info:
            return Info(self._info)
        return Info(self._info, self._lazy)

    def _local(self) -> Any:
        try:
            local = _address(self._sock.getsockname())
        except OSError:
            return None
        self._info["local"] = local
        return local

    async def _retry(self, call: Callable[[_A], _R], arg: _A, wait: Any, deadline: float, what: str) -> _R:
        """The waiting path of the three primitives below, once the kernel said "would block":
        wait until the socket is ready (a full checkpoint), then ``call(arg)`` again. Only here
        does a finite deadline cost a cancel scope; at the deadline, :class:`~stack.Timeout`
        with nothing done."""
        self._trio_knows = True
        sock = self._sock
        while True:
            if deadline == math.inf:  # no extra frame held by an idle connection
                await wait(sock)
            else:
                await _wait_until(wait, sock, deadline, self.kind, what)
            try:
                return call(arg)
            except BlockingIOError:
                pass

    # ``recv`` and ``send_from`` are the base class's, with the primitive inlined on the usual path
    # (nothing buffered, usable, no outgoing buffer): one coroutine frame less per call, and one
    # less held by a connection idling in a receive. Anything else takes the base class's path.

    async def recv(self, max_bytes: int = DEFAULT_RECV, *, deadline: float = FOREVER) -> bytes:
        """See :meth:`ByteStream.recv`."""
        if (
            self._unread
            or self._eof
            or self._receiving
            or self._broken is not None
            or self._closed is not None
            or type(max_bytes) is not int
            or max_bytes < 1
            or type(deadline) is not float
            or deadline != deadline
        ):  # the base's path, and its argument checks
            return await super().recv(max_bytes, deadline=deadline)
        sock = self._sock
        self._receiving = True
        try:
            await _checkpoint_if_cancelled()
            if deadline != math.inf and deadline <= _current_time():
                raise Timeout(f"{self.kind} recv timed out")
            if max_bytes > _MAX_RECV:
                max_bytes = _MAX_RECV
            try:
                data = _attempt(sock.recv, max_bytes)
                if data is None:  # wait here, not in _retry: an idle connection holds one frame less
                    self._trio_knows = True
                    while data is None:
                        if deadline == math.inf:
                            await _wait_readable(sock)
                        else:
                            await _wait_until(_wait_readable, sock, deadline, self.kind, "recv")
                        data = _attempt(sock.recv, max_bytes)
                elif perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # schedule_point(), inlined
                    await _cancel_shielded_checkpoint()
                    _last_yield.at = perf_counter()
            except Timeout:  # an OSError too (TimeoutError), but ours: nothing was done
                raise
            except (OSError, trio.ClosedResourceError) as exc:
                raise self._failed(exc, "recv") from exc
            if not data:
                self._eof = True
            return data
        finally:
            self._receiving = False

    async def send_from(self, buf: bytearray, *, deadline: float = FOREVER) -> None:
        """See :meth:`ByteStream.send_from`."""
        if (
            self._sending
            or self._send_closed
            or self._broken is not None
            or self._closed is not None
            or self._outbuf
            or type(buf) is not bytearray
            or type(deadline) is not float
            or deadline != deadline
        ):  # the base's path, and its argument checks
            return await super().send_from(buf, deadline=deadline)
        sock = self._sock
        self._sending = True
        before = len(buf)
        try:
            while buf:
                await _checkpoint_if_cancelled()
                try:
                    if deadline != math.inf and deadline <= _current_time():
                        raise Timeout(f"{self.kind} send timed out")
                    n = _attempt(sock.send, buf)
                    if n is None:
                        n = await self._retry(sock.send, buf, _wait_writable, deadline, "send")
                    elif perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # schedule_point(), inlined
                        await _cancel_shielded_checkpoint()
                        _last_yield.at = perf_counter()
                except Timeout:
                    sent = before - len(buf)
                    raise Timeout(f"{self.kind} send timed out after {sent} of {before} bytes", sent=sent) from None
                except (OSError, trio.ClosedResourceError) as exc:
                    raise self._failed(exc, "send") from exc
                del buf[:n]
        finally:
            self._sending = False

    async def send_and_recv(self, buf: bytearray, max_bytes: int = DEFAULT_RECV, *, deadline: float = FOREVER) -> bytes:
        """``send_from(buf)``, then ``recv(max_bytes)``: for a caller that sends a request and
        then waits for its answer (an HTTP/1.1 client), with the same results, errors and
        deadline. One thing differs, a cost only: an answer cannot have come the moment its
        request left (a receive tried then is "would block", a system call and an exception for
        nothing), so the receive waits for readability before its first attempt, and that wait is
        the checkpoint: no schedule point between the two. Only when the send's schedule point
        is due anyway (:data:`SCHEDULE_SLICE`) does it yield first and then try (the answer may
        have come meanwhile). Anything unusual (buffered bytes, a stream not plainly usable, a
        bytes ``buf``) takes the two calls."""
        if (
            self._unread or self._eof or self._receiving or self._sending or self._send_closed
            or self._broken is not None or self._closed is not None or self._outbuf
            or type(buf) is not bytearray or type(max_bytes) is not int or max_bytes < 1
            or type(deadline) is not float or deadline != deadline
        ):  # fmt: skip
            await self.send_from(buf, deadline=deadline)
            return await self.recv(max_bytes, deadline=deadline)
        sock = self._sock
        self._sending = True
        before = len(buf)
        try:
            await _checkpoint_if_cancelled()
            while buf:
                try:
                    if deadline != math.inf and deadline <= _current_time():
                        raise Timeout(f"{self.kind} send timed out")
                    n = _attempt(sock.send, buf)
                    if n is None:
                        n = await self._retry(sock.send, buf, _wait_writable, deadline, "send")
                except Timeout:
                    sent = before - len(buf)
                    raise Timeout(f"{self.kind} send timed out after {sent} of {before} bytes", sent=sent) from None
                except (OSError, trio.ClosedResourceError) as exc:
                    raise self._failed(exc, "send") from exc
                del buf[:n]
        finally:
            self._sending = False
        if max_bytes > _MAX_RECV:
            max_bytes = _MAX_RECV
        self._receiving = True
        try:
            try:
                data = None
                if perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # the send's schedule point is due:
                    await _cancel_shielded_checkpoint()  # time passes there, so the answer may come
                    _last_yield.at = perf_counter()
                    if deadline != math.inf and deadline <= _current_time():
                        raise Timeout(f"{self.kind} recv timed out")
                    data = _attempt(sock.recv, max_bytes)
                if data is None:
                    self._trio_knows = True
                while data is None:
                    if deadline == math.inf:
                        await _wait_readable(sock)
                    else:
                        await _wait_until(_wait_readable, sock, deadline, self.kind, "recv")
                    data = _attempt(sock.recv, max_bytes)
            except Timeout:  # an OSError too (TimeoutError), but ours: nothing was done
                raise
            except (OSError, trio.ClosedResourceError) as exc:
                raise self._failed(exc, "recv") from exc
            if not data:
                self._eof = True
            return data
        finally:
            self._receiving = False

    def _failed(self, exc: BaseException, what: str) -> StackError:
        """The error for a failed socket call; a Broken one marks the stream broken (as the base does)."""
        err = _translate(exc, self.kind, what)
        if isinstance(err, Broken):
            self._fail(err)
        return err

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        sock = self._sock
        await _checkpoint_if_cancelled()
        if deadline != math.inf and deadline <= _current_time():
            raise Timeout(f"{self.kind} recv timed out")
        if max_bytes > _MAX_RECV:
            max_bytes = _MAX_RECV
        try:
            data = _attempt(sock.recv, max_bytes)
            if data is None:
                return await self._retry(sock.recv, max_bytes, _wait_readable, deadline, "recv")
        except Timeout:  # an OSError too (TimeoutError), but ours: nothing was done
            raise
        except (OSError, trio.ClosedResourceError) as exc:
            raise _translate(exc, self.kind, "recv") from exc
        if perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # schedule_point(), inlined
            await _cancel_shielded_checkpoint()
            _last_yield.at = perf_counter()
        return data

    async def _recv_into(self, buffer: bytearray | memoryview, deadline: float) -> int:
        sock = self._sock
        await _checkpoint_if_cancelled()
        if deadline != math.inf and deadline <= _current_time():
            raise Timeout(f"{self.kind} recv timed out")
        try:
            n = _attempt(sock.recv_into, buffer)
            if n is None:
                return await self._retry(sock.recv_into, buffer, _wait_readable, deadline, "recv")
        except Timeout:  # an OSError too (TimeoutError), but ours: nothing was done
            raise
        except (OSError, trio.ClosedResourceError) as exc:
            raise _translate(exc, self.kind, "recv") from exc
        if perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # schedule_point(), inlined
            await _cancel_shielded_checkpoint()
            _last_yield.at = perf_counter()
        return n

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        sock = self._sock
        await _checkpoint_if_cancelled()
        if deadline != math.inf and deadline <= _current_time():
            raise Timeout(f"{self.kind} send timed out")
        try:
            n = _attempt(sock.send, data)
            if n is None:
                return await self._retry(sock.send, data, _wait_writable, deadline, "send")
        except Timeout:  # an OSError too (TimeoutError), but ours: nothing was done
            raise
        except (OSError, trio.ClosedResourceError) as exc:
            raise _translate(exc, self.kind, "send") from exc
        if perf_counter() - _last_yield.at >= SCHEDULE_SLICE:  # schedule_point(), inlined
            await _cancel_shielded_checkpoint()
            _last_yield.at = perf_counter()
        return n

    async def _done(self, deadline: float) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self._sock.shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise _translate(exc, self.kind, "shutdown") from exc

    def _abort(self) -> None:
        if self._trio_knows:
            self._trio_sock.close()  # notify_closing wakes a task waiting on it, then closes
        else:
            self._sock.close()  # never registered with trio: nothing to wake or unregister

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close the socket (see the class docstring). Idempotent; a checkpoint."""
        if self._closed is None:
            self._closed = "closed"
            self._abort()
        if deadline is not None:
            check_deadline(deadline)  # closed all the same: a wrong deadline is the caller's bug
        await trio.lowlevel.checkpoint()

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        check_deadline(deadline)
        raise StackError(f"{self.kind} is the bottom layer: there is nothing below it to detach to")

    def reset(self) -> None:
        """Close at once with a TCP RST (SO_LINGER 0) instead of a FIN. For tests and for
        refusing abusive peers; a no-op on Unix sockets beyond closing."""
        if self._sock.fileno() != -1 and self._sock.family in (
            _stdlib_socket.AF_INET,
            _stdlib_socket.AF_INET6,
        ):
            self._sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self._closed = "closed"
        self._abort()


class SocketListener(Listener):
    """A listening socket. ``accept()`` returns :class:`SocketStream`s.

    Routine accept errors (a connection aborted before accept) are skipped; running out of
    file descriptors or memory is logged and retried after a short pause rather than ending
    the server. On deadline: :class:`~stack.Timeout`. After ``aclose()``: :class:`~stack.Closed`.
    """

    def __init__(self, sock: trio.socket.SocketType, kind: str, address: Any, cleanup: str | None = None) -> None:
        self.socket, self._sock = _unwrap(sock)
        self.kind = kind
        self.address = address
        self._cleanup = cleanup

    def _wrap(self, sock: trio.socket.SocketType, peer: Any) -> SocketStream:
        """Make the stream for an accepted socket; ``peer`` is the address ``accept`` returned."""
        raise NotImplementedError

    async def accept(self, *, deadline: float = FOREVER) -> SocketStream:
        if deadline == math.inf:
            return await self._accept()
        with trio.move_on_at(deadline):
            return await self._accept()
        raise Timeout(f"{self.kind} accept timed out")

    async def _accept(self) -> SocketStream:
        listening = self._sock
        await _checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                sock, peer = listening.accept()
            except BlockingIOError:
                try:
                    await _wait_readable(listening)
                except trio.ClosedResourceError:
                    raise Closed(f"{self.kind} listener was closed") from None
                waited = True
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise Closed(f"{self.kind} listener was closed") from None
                if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                    continue
                if exc.errno in _RESOURCE_ERRNOS:
                    log.error("accept on %s: %s; retrying in %.1fs", self.address, exc, _ACCEPT_BACKOFF)
                    await trio.sleep(_ACCEPT_BACKOFF)
                    waited = True
                    continue
                raise Broken(f"{self.kind} accept failed: {exc}") from exc
            try:
                stream = self._wrap(trio.socket.from_stdlib_socket(sock), peer)
            except OSError as exc:  # the peer is gone already (a setsockopt failed): skip it
                sock.close()
                log.debug("accept on %s: dropped a connection that failed at once: %s", self.address, exc)
                continue
            if not waited:
                await schedule_point()
            return stream

    async def aclose(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
            if self._cleanup:
                with contextlib.suppress(OSError):
                    os.unlink(self._cleanup)
        await trio.lowlevel.checkpoint()
