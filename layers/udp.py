"""UDP as a bottom :class:`~stack.MessageStream`: one datagram is one message.

Two source specs, both opened by a :class:`~stack.Stack` (or directly) with ``connect()``::

    peer = await udp.connect("127.0.0.1", 5353).connect(deadline=after(5))   # one peer
    await peer.send(b"query")
    answer = await peer.recv(deadline=after(1))                                # bytes

    server = await udp.bind("127.0.0.1", 0).connect()                          # any peer
    dgram = await server.recv()                  # a Datagram: bytes, with .address
    await server.send(dgram)                     # a Datagram goes back to its .address
    await server.send_to(b"hello", ("127.0.0.1", 9999))

**Connected mode** (``udp.connect``): the socket is connected to one peer (the kernel drops
datagrams from anyone else); ``send`` takes bytes, ``recv`` returns bytes. **Unconnected mode**
(``udp.bind``): ``recv`` returns a :class:`Datagram`, a ``bytes`` subclass whose ``address``
is the sender's; ``send`` takes a ``Datagram`` (its address says where it goes), or use
``send_to(data, address)``. A ``Datagram`` compares and hashes as its bytes, so the layers above
(trace, throttle) carry it through unchanged.

UDP has no connection, no end of stream and (almost) no backpressure, so some rules of a
stream mean something narrower here:

* ``send``: the datagram is handed to the kernel whole, or not at all (``Timeout.committed``).
  Handed over is not delivered: UDP may lose, duplicate or reorder datagrams on a real network
  (on loopback it loses them when the receiver's buffer is full: ``recv_buffer`` sizes it).
  Over ``max_datagram`` bytes: :class:`~stack.MessageTooLarge`, nothing sent (also when the
  kernel refuses the size, ``EMSGSIZE``).
* ``recv``: the next datagram. A receive that times out or is cancelled consumes nothing. A
  datagram larger than ``max_datagram`` is *dropped and logged* (logger ``stack.udp``, warning
  for the first one, debug after) and counted in :attr:`UDPStream.dropped`; the receive goes on
  waiting for the next one. Rationale: in unconnected mode anyone can send; one oversized
  datagram must not end a server's loop, and UDP applications already cope with loss.
* ``done()`` has no wire meaning: nothing is sent, the peer learns nothing. It only makes later
  sends on this side raise :class:`~stack.Closed` (receiving goes on). ``recv`` never raises
  ``EndOfStream``: a UDP peer never "finishes"; end your protocol with a message of its own.
* ICMP port unreachable: on a connected socket, the kernel reports it as ``ECONNREFUSED`` on a
  later ``send`` or ``recv``: that is :class:`~stack.Broken` (sticky, like a TCP reset: open a
  new stream to try again). An unconnected socket gets no such reports. A send in unconnected
  mode to an address that cannot be resolved or reached raises a plain :class:`~stack.StackError`
  naming it, and the socket stays usable for other peers.
* ``aclose()`` closes the socket; a task blocked in ``recv`` gets :class:`~stack.Closed`.
  ``detach()``: not possible (this is the bottom).

``info``: ``transport="udp"``, ``local`` (the bound address), and in connected mode ``peer``
(and ``host``, the name given to ``udp.connect``).

Conformance: ``check_message_stream(make_pair, eof=False)`` (``udp.pair()`` makes the pairs)
holds with every property: round trip, receive and send deadlines (nothing lost, a message
committed whole or not at all), ``done()`` refusing later sends, ``Closed`` after ``aclose()``,
``Busy``. What ``eof=False`` leaves out is what UDP does not have: the peer's end of stream
after ``done()`` or ``aclose()``. ``broken`` finds no reset to simulate and checks nothing.
``check_detach`` does not apply (a bottom layer). On loopback the checks need a receive buffer
big enough for the datagrams they send before reading (``recv_buffer``).
"""

from __future__ import annotations

import errno
import logging
import socket as _stdlib_socket
from dataclasses import dataclass
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, Closed, MessageTooLarge, StackError, Timeout
from stack.streams import MessageStream

__all__ = ["MAX_DATAGRAM", "Datagram", "UDPStream", "bind", "connect", "pair"]

log = logging.getLogger("stack.udp")

MAX_DATAGRAM = 65507
"""Default ``max_datagram``: the largest UDP payload over IPv4 (65535 - 8 - 20)."""

_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
_MSG_TRUNC: int = getattr(_stdlib_socket, "MSG_TRUNC", 0)


class Datagram(bytes):
    """A datagram's payload (it *is* the ``bytes``) with the peer's ``address``.

    ``recv`` on an unconnected socket returns one, ``address`` being the sender's address as
    the kernel gives it (``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for
    IPv6). ``send`` on an unconnected socket takes one and sends it to ``address`` (a host
    name is resolved). Equality and hashing are those of the bytes: the address is not part of
    the value.
    """

    address: Any

    def __new__(cls, data: bytes | bytearray | memoryview, address: Any) -> Datagram:
        self = super().__new__(cls, data)
        self.address = address
        return self

    def __repr__(self) -> str:
        return f"Datagram({bytes(self)!r}, address={self.address!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Datagram, (bytes(self), self.address))


def _closed_error(exc: BaseException) -> bool:
    return isinstance(exc, trio.ClosedResourceError) or (isinstance(exc, OSError) and exc.errno in _CLOSED_ERRNOS)


class UDPStream(MessageStream):
    """A UDP socket as a bottom :class:`~stack.MessageStream` (see the module docstring)."""

    kind = "udp"

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        connected: bool,
        max_datagram: int,
        info: dict[str, Any],
        raw: _stdlib_socket.socket | None = None,
    ) -> None:
        super().__init__(None, info)
        self.socket = sock
        self._raw = raw
        self._writable: trio.Event | None = None
        self._connected = connected
        self._max = max_datagram
        self._buf = bytearray(max_datagram)
        self._view = memoryview(self._buf)
        self.dropped = 0
        """Datagrams dropped because they were over ``max_datagram`` bytes."""

    @property
    def max_datagram(self) -> int:
        """The largest datagram this stream sends or receives."""
        return self._max

    # ---- sending -------------------------------------------------------------------------

    async def send_to(self, data: bytes | bytearray | memoryview, address: Any, *, deadline: float = FOREVER) -> None:
        """Send ``data`` to ``address``: ``send(Datagram(data, address))``."""
        await self.send(Datagram(data, address), deadline=deadline)

    async def _send_message(self, msg: bytes, deadline: float) -> None:
        if len(msg) > self._max:
            raise MessageTooLarge(
                f"datagram of {len(msg)} bytes is over max_datagram={self._max}", limit=self._max, size=len(msg)
            )
        address = getattr(msg, "address", None)
        sock = self.socket
        try:
            if self._connected:
                if address is not None and not self._is_peer(address):
                    raise ValueError(f"this udp stream is connected to {self._info['peer']}, not {address!r}")
                await sock.send(msg)
            else:
                if address is None:
                    raise ValueError("an unconnected udp stream sends a Datagram(data, address) (or use send_to)")
                await sock.sendto(msg, address)
        except (OSError, trio.ClosedResourceError) as exc:
            raise self._send_error(exc, len(msg), address) from exc
        self._message_committed = True

    def _is_peer(self, address: Any) -> bool:
        peer = self._info["peer"]
        return isinstance(address, tuple) and tuple(address[:2]) == tuple(peer[:2])

    def _send_error(self, exc: BaseException, size: int, address: Any) -> StackError:
        if _closed_error(exc):
            return Closed("udp socket is closed")
        assert isinstance(exc, OSError)
        if exc.errno == errno.EMSGSIZE:
            return MessageTooLarge(f"the kernel refused a datagram of {size} bytes: {exc.strerror}", limit=self._max)
        if self._connected:
            return self._connected_error(exc, "send")
        return StackError(f"udp: cannot send to {address!r}: {exc.strerror or exc}")

    def _connected_error(self, exc: OSError, what: str) -> Broken:
        if exc.errno == errno.ECONNREFUSED:
            return Broken(
                f"udp: {self._info.get('peer')} refused a datagram (ICMP port unreachable: nothing listens there)"
            )
        return Broken(f"udp {what} failed: {exc.strerror or exc}")

    # ---- receiving -----------------------------------------------------------------------

    async def _recv_message(self, deadline: float) -> bytes | None:
        view = self._view
        while True:
            try:
                n, _, flags, address = await self.socket.recvmsg_into([view])
            except (OSError, trio.ClosedResourceError) as exc:
                if _closed_error(exc):
                    raise Closed("udp socket was closed while a recv was in progress") from exc
                assert isinstance(exc, OSError)
                if self._connected:
                    raise self._connected_error(exc, "recv") from exc
                raise Broken(f"udp recv failed: {exc.strerror or exc}") from exc
            if flags & _MSG_TRUNC:
                self.dropped += 1
                log.log(
                    logging.WARNING if self.dropped == 1 else logging.DEBUG,
                    "udp %s: dropped a datagram from %s over max_datagram=%d bytes (%d dropped so far)",
                    self._info.get("local"),
                    address,
                    self._max,
                    self.dropped,
                )
                continue
            data = bytes(view[:n])
            return data if self._connected else Datagram(data, address)

    # ---- batches (for protocols that handle many datagrams per wakeup: QUIC) -------------------

    async def recv_many(self, max_count: int = 64) -> list[Datagram]:
        """Wait for a datagram, then take the ones already waiting too (at most ``max_count``):
        one wakeup per batch instead of one per datagram. Unconnected mode (each a
        :class:`Datagram` with its ``address``). No deadline (cancel it): a cancelled call
        consumed nothing; oversized datagrams are dropped as by ``recv``; after ``aclose``:
        :class:`~stack.Closed`."""
        if self._raw is None or self._connected:
            msg = await self.recv()
            assert isinstance(msg, bytes)
            return [msg if isinstance(msg, Datagram) else Datagram(msg, self._info.get("peer"))]
        return [Datagram(data, address) for data, address in await self.recv_batch(max_count)]

    async def recv_batch(self, max_count: int = 64) -> list[tuple[bytes, Any]]:
        """``recv_many`` as ``(data, address)`` pairs, ``data`` plain ``bytes`` received into its
        own object (no copy after the kernel's; a :class:`Datagram` is a second copy, and slicing
        one, a ``bytes`` subclass, copies where slicing ``bytes`` whole does not)."""
        raw = self._raw
        if raw is None or self._connected:
            return [(bytes(d), d.address) for d in await self.recv_many(max_count)]
        await trio.lowlevel.checkpoint_if_cancelled()
        size = self._max + 1  # one more: a datagram over max_datagram comes back with MSG_TRUNC
        out: list[tuple[bytes, Any]] = []
        waited = False
        while len(out) < max_count:
            if self._closed is not None:
                raise Closed("udp socket is closed")
            try:
                data, _, flags, address = raw.recvmsg(size)
            except BlockingIOError:
                if out:
                    break
                try:
                    await trio.lowlevel.wait_readable(raw)
                except trio.ClosedResourceError as exc:
                    raise Closed("udp socket was closed while a recv was in progress") from exc
                waited = True
                continue
            except OSError as exc:
                if out:
                    break
                if _closed_error(exc):
                    raise Closed("udp socket was closed while a recv was in progress") from exc
                raise Broken(f"udp recv failed: {exc.strerror or exc}") from exc
            if flags & _MSG_TRUNC or len(data) > self._max:
                self.dropped += 1
                log.debug("udp %s: dropped a datagram from %s over max_datagram", self._info.get("local"), address)
                continue
            out.append((data, address))
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()  # a busy socket never starves the others
        return out

    async def send_batch(self, datagrams: list[tuple[bytes, Any]]) -> int:
        """Send ``(data, address)`` pairs in order, best effort: a datagram the kernel refuses
        (an unreachable address, a size it will not take) is skipped and logged at debug level,
        as a network would lose it; a full send buffer is waited for. Returns how many the kernel
        took. For protocols with their own loss recovery (QUIC); several tasks may share the
        socket. Cancellation: the datagrams not yet handed over are not sent."""
        raw = self._raw
        sent = 0
        if raw is None:
            for data, address in datagrams:
                try:
                    await self.socket.sendto(data, address)
                    sent += 1
                except (OSError, trio.BusyResourceError) as exc:
                    log.debug("udp: sending to %s failed: %s", address, exc)
            return sent
        await trio.lowlevel.checkpoint_if_cancelled()
        i = 0
        while i < len(datagrams):
            data, address = datagrams[i]
            try:
                raw.sendto(data, address)
            except BlockingIOError:
                await self._wait_writable(raw)
                continue
            except OSError as exc:
                if _closed_error(exc):
                    raise Closed("udp socket is closed") from exc
                log.debug("udp: sending to %s failed: %s", address, exc)
            else:
                sent += 1
            i += 1
        await trio.lowlevel.cancel_shielded_checkpoint()
        return sent

    async def _wait_writable(self, raw: _stdlib_socket.socket) -> None:
        ev = self._writable
        if ev is not None:  # another task waits for the same socket: wait for its wakeup
            await ev.wait()
            return
        ev = self._writable = trio.Event()
        try:
            await trio.lowlevel.wait_writable(raw)
        except trio.ClosedResourceError as exc:
            raise Closed("udp socket is closed") from exc
        finally:
            self._writable = None
            ev.set()

    # ---- the end -------------------------------------------------------------------------

    async def _done(self, deadline: float) -> None:
        await trio.lowlevel.checkpoint()  # no wire meaning: sends are refused from now on

    def _abort(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
        self.socket.close()

    async def aclose(self, *, deadline: float | None = None) -> None:
        """Close the socket (a task blocked in ``recv`` gets :class:`~stack.Closed`). Idempotent."""
        if self._closed is None:
            self._closed = "closed"
            self._abort()
        await trio.lowlevel.checkpoint()

    async def detach(self, *, deadline: float = FOREVER) -> Any:
        raise StackError("udp is the bottom layer: there is nothing below it to detach to")


def _address(sockaddr: Any) -> Any:
    return tuple(sockaddr[:2])


async def _resolve(host: str, port: int, passive: bool) -> tuple[int, Any]:
    flags = _stdlib_socket.AI_PASSIVE if passive else 0
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=_stdlib_socket.SOCK_DGRAM, flags=flags)
    except OSError as exc:
        raise Broken(f"udp: cannot resolve {host}:{port}: {exc.strerror or exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _socket(family: int, recv_buffer: int | None) -> tuple[trio.socket.SocketType, _stdlib_socket.socket]:
    """A new UDP socket: the trio socket and the stdlib socket it wraps (one descriptor)."""
    raw = _stdlib_socket.socket(family, _stdlib_socket.SOCK_DGRAM)
    sock = trio.socket.from_stdlib_socket(raw)
    if recv_buffer is not None:
        try:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, recv_buffer)
        except OSError as exc:
            sock.close()
            raise Broken(f"udp: cannot set SO_RCVBUF={recv_buffer}: {exc.strerror or exc}") from exc
    return sock, raw


def _check(max_datagram: int, recv_buffer: int | None) -> None:
    if not 0 <= max_datagram <= 65535:
        raise ValueError("max_datagram must be 0..65535 bytes")
    if recv_buffer is not None and recv_buffer < 1:
        raise ValueError("recv_buffer must be at least 1 byte")


@dataclass(frozen=True)
class connect:
    """Spec: a UDP socket connected to ``host:port`` (the first address ``host`` resolves to).

    ``max_datagram``: largest datagram sent or received (default 65507; a receive buffer of
    this size is allocated once per stream). ``recv_buffer``: ``SO_RCVBUF`` in bytes (default:
    the kernel's; the kernel caps it at ``net.core.rmem_max``). ``local_address``: bind to this
    ``(host, port)`` first. Resolution failure: :class:`~stack.Broken`; deadline:
    :class:`~stack.Timeout`. No datagram is exchanged: a peer that is not there shows up later
    as ``Broken`` (ICMP port unreachable) or as silence.
    """

    host: str
    port: int
    max_datagram: int = MAX_DATAGRAM
    recv_buffer: int | None = None
    local_address: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        _check(self.max_datagram, self.recv_buffer)

    async def connect(self, *, deadline: float = FOREVER) -> UDPStream:
        with trio.move_on_at(deadline):
            family, sockaddr = await _resolve(self.host, self.port, passive=False)
            sock, raw = _socket(family, self.recv_buffer)
            try:
                if self.local_address is not None:
                    await sock.bind(self.local_address)
                await sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                raise Broken(f"udp: cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
            info = {
                "transport": "udp",
                "peer": _address(sock.getpeername()),
                "local": _address(sock.getsockname()),
                "host": self.host,
            }
            return UDPStream(sock, connected=True, max_datagram=self.max_datagram, info=info, raw=raw)
        raise Timeout(f"udp: connecting to {self.host}:{self.port} timed out")


@dataclass(frozen=True)
class bind:
    """Spec: an unconnected UDP socket bound to ``host:port`` (port 0 picks a free port;
    ``stream.info["local"]`` tells). Opened with ``connect()``, as every source a Stack opens.

    Knobs as for :class:`connect`; ``reuse_port=True`` sets ``SO_REUSEPORT`` (several sockets,
    and processes, share the port; the kernel spreads peers over them). Failure to bind:
    :class:`~stack.Broken` naming the address.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_datagram: int = MAX_DATAGRAM
    recv_buffer: int | None = None
    reuse_port: bool = False

    def __post_init__(self) -> None:
        _check(self.max_datagram, self.recv_buffer)

    async def connect(self, *, deadline: float = FOREVER) -> UDPStream:
        with trio.move_on_at(deadline):
            family, sockaddr = await _resolve(self.host, self.port, passive=True)
            sock, raw = _socket(family, self.recv_buffer)
            try:
                if self.reuse_port:
                    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
                await sock.bind(sockaddr)
            except OSError as exc:
                sock.close()
                raise Broken(f"udp: cannot bind {self.host}:{self.port}: {exc.strerror or exc}") from exc
            info = {"transport": "udp", "local": _address(sock.getsockname())}
            return UDPStream(sock, connected=False, max_datagram=self.max_datagram, info=info, raw=raw)
        raise Timeout(f"udp: binding {self.host}:{self.port} timed out")


async def pair(
    host: str = "127.0.0.1", *, max_datagram: int = MAX_DATAGRAM, recv_buffer: int | None = None
) -> tuple[UDPStream, UDPStream]:
    """Two UDP streams on ``host`` (a free port each), connected to each other.

    For tests and examples: the conformance kit's ``make_pair``, or two ends of a protocol in
    one process. Knobs as for :class:`connect`.
    """
    _check(max_datagram, recv_buffer)
    family, sockaddr = await _resolve(host, 0, passive=True)
    made = [_socket(family, recv_buffer), _socket(family, recv_buffer)]
    socks = [sock for sock, _ in made]
    try:
        for sock in socks:
            await sock.bind(sockaddr)
        await socks[0].connect(socks[1].getsockname())
        await socks[1].connect(socks[0].getsockname())
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise Broken(f"udp: cannot make a pair on {host}: {exc.strerror or exc}") from exc
    ends = []
    for sock, raw in made:
        info = {"transport": "udp", "peer": _address(sock.getpeername()), "local": _address(sock.getsockname())}
        ends.append(UDPStream(sock, connected=True, max_datagram=max_datagram, info=info, raw=raw))
    return ends[0], ends[1]
