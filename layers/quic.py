"""QUIC (RFC 9000, TLS 1.3 by RFC 9001) over UDP: connections whose every stream is a ByteStream.

::

    async with quic.connect("127.0.0.1", 4433, alpn=["echo"], ca=ca).open(deadline=after(5)) as conn:
        stream = conn.open_stream()                     # a ByteStream
        await stream.send(b"hello")
        await stream.done()                             # FIN
        answer = await stream.recv(100)

    async def handler(conn: quic.QuicConnection) -> None:   # one task per connection
        async with await conn.accept_stream() as stream:
            await stream.send(await stream.recv(100))

    await nursery.start(quic.listen("127.0.0.1", 4433, leaf, alpn=["echo"]).serve, handler)

**Why aioquic.** The protocol work (packets, TLS 1.3 handshake and keys, loss recovery and
congestion control, flow control, connection IDs) is aioquic's ``QuicConnection``, a sans-io
engine: it is maintained, has wheels for Linux, macOS and Windows (its one compiled part, and
pylsqpack for HTTP/3's QPACK), and is what hypercorn serves HTTP/3 with. This layer adds the I/O
on trio, the stream contract, and a server endpoint; ``_quic_engine.py`` holds our two
corrections to aioquic (receive windows that follow consumption, and the stream-limit knobs).

**Connections.** :class:`connect` (a client; ``open()`` is an async context manager that owns
the connection's tasks: its socket reader and its driver) and :class:`listen` (a server;
``serve(handler)`` runs ``handler(conn)`` for every connection, in a task of its own, then
closes the connection). TLS 1.3 always (QUIC has no other); ``alpn`` is required (RFC 9001 8.1);
the client verifies the server's certificate and name by default (``ca=`` as for
:func:`layers.tls.client`: a PEM file or directory, PEM text, or :class:`layers.certs.CA`;
``verify=False`` for tests), sends ``server_hostname`` (default: ``host``) as SNI unless it is an
IP address. A server has one certificate: a ``(certfile, keyfile)`` pair or a
:class:`layers.certs.Leaf`. Handshake failures raise :class:`layers.tls.HandshakeError` with the
same ``reason`` codes as TLS over TCP where QUIC tells (``unknown_ca``, ``hostname_mismatch``,
``no_alpn``, ``bad_certificate``...). ``conn.info``: ``transport="quic"``, ``peer``, ``local``,
``alpn``, ``tls_version``, ``server_name`` (client).

**Streams** (:class:`QuicStream`): ``conn.open_stream()`` (``unidirectional=True`` for a one-way
stream) and ``await conn.accept_stream()``. Every stream keeps the stream contract: a receive that
times out consumes nothing; a send commits at most 64 KiB per step and only while less than
256 KiB of the stream wait to leave, so ``Timeout.sent`` is exact and memory bounded; ``done()`` is
a FIN; ``aclose()`` before both directions ended abandons the stream (RESET_STREAM and
STOP_SENDING, the connection unharmed); a peer's reset makes the stream :class:`~stack.Broken`.
Receive windows follow what the application reads (``QuicLimits.stream_window`` per stream,
``connection_window`` for the connection), so a slow reader stalls only its own stream and buffers
at most one window; a window a reader takes faster than the peer can be told (an update due within
two round trips of the previous one) doubles, up to ``max_stream_window`` / ``max_connection_window``.

**Server endpoint.** One UDP socket; connections demultiplexed by connection ID; new
connections only from a client Initial of at least 1200 bytes; ``retry=True`` validates client
addresses with Retry packets first (RFC 9000 8.1.2); the anti-amplification limit is the
engine's; ``QuicLimits`` bounds connections (``max_connections``), streams per connection
(``max_streams``, ``max_uni_streams``: a peer cannot open more, by QUIC's own flow control),
handshake time and idle time; ``shutdown`` (an event) stops accepting, sets every connection's
``closing`` event and gives handlers ``drain_timeout`` seconds before closing them.

**Datagram size.** Connections start at ``QuicLimits.datagram_size`` (1350 bytes, which any
Internet path carries) and, with ``QuicLimits.pmtu`` (on by default), run path MTU discovery
(DPLPMTUD, RFC 8899 / RFC 9000 14.3; :mod:`layers._quic_pmtu`): where the system tells the local
route's MTU (Linux ``IP_MTU``), a PING+PADDING probe of the larger size is sent once the handshake
is confirmed, and the size is raised only once the peer acknowledged it, never above the peer's
``max_udp_payload_size`` (ours is announced: 65507) nor ``QuicLimits.max_datagram_size``. On
loopback that is 65507-byte datagrams after one probe: aioquic's cost is per packet, so bulk moves
about ten times the data per CPU second. Datagrams leave with Don't Fragment set (RFC 9000 14).
Elsewhere (macOS, Windows) the size stays at the safe one.

**What is not supported.** 0-RTT and session resumption (no session tickets are issued or
used); active migration by our client (the client keeps its socket; a server's peer that migrates
or changes connection ID is followed, path validation being the engine's); several certificates
by SNI on one listener; stateless resets and the closing/draining period after our own close
(we send CONNECTION_CLOSE once and forget the connection); DATAGRAM frames (RFC 9221); ECN;
preferred addresses; ICMP Packet Too Big and PMTU black-hole detection (a path whose MTU shrinks
mid-connection loses the larger packets until loss recovery gives up).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from stack.deadlines import FOREVER
from stack.errors import Timeout

from . import udp
from ._quic_conn import DEFAULT_QUIC_LIMITS, QuicConnection, QuicLimits
from ._quic_endpoint import Endpoint
from ._quic_engine import Engine, client_configuration, server_configuration
from ._quic_pmtu import set_dont_fragment
from ._quic_stream import HIGH_WATER, SEND_CHUNK, QuicStream

__all__ = [
    "DEFAULT_QUIC_LIMITS",
    "HIGH_WATER",
    "SEND_CHUNK",
    "QuicConnection",
    "QuicLimits",
    "QuicStream",
    "connect",
    "listen",
]

log = logging.getLogger("stack.quic")

Handler = Callable[[QuicConnection], Awaitable[None]]

SOCKET_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF and SO_SNDBUF of QUIC's UDP sockets (the kernel caps them at rmem_max / wmem_max):
a burst of a congestion window must fit, or loopback drops what the reader did not take yet."""


def _send_buffer(sock: udp.UDPStream) -> None:
    """SO_SNDBUF, and Don't Fragment (RFC 9000 14; :mod:`layers._quic_pmtu`)."""
    try:
        sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    except OSError as exc:  # the kernel's default then
        log.debug("quic: cannot set SO_SNDBUF: %s", exc)
    set_dont_fragment(sock.socket)


@dataclass(frozen=True)
class connect:
    """Spec: a QUIC client connection to ``host:port`` (see the module docstring).

    ``alpn`` (required), ``server_hostname`` (the name the certificate must be valid for;
    default ``host``), ``verify``, ``ca``, ``limits`` (:class:`QuicLimits`).
    ``async with spec.open(deadline=...) as conn``: the handshake runs under ``deadline``; the
    block owns the connection's tasks and closes it at its end.
    """

    host: str
    port: int
    alpn: Sequence[str] = ()
    server_hostname: str | None = None
    verify: bool = True
    ca: Any = None
    limits: QuicLimits = DEFAULT_QUIC_LIMITS

    def __post_init__(self) -> None:
        if not self.alpn:
            raise ValueError("QUIC needs ALPN (RFC 9001 8.1): give alpn=[...], e.g. ['h3']")
        object.__setattr__(self, "alpn", tuple(self.alpn))

    @asynccontextmanager
    async def open(self, *, deadline: float = FOREVER) -> AsyncIterator[QuicConnection]:
        """Connect, run the handshake under ``deadline``, yield the connection, close it."""
        limits = self.limits
        try:
            with trio.fail_at(deadline):
                infos = await trio.socket.getaddrinfo(self.host, self.port, type=trio.socket.SOCK_DGRAM)
        except trio.TooSlowError:
            raise Timeout(f"QUIC: resolving {self.host} timed out") from None
        family, _, _, _, sockaddr = infos[0]
        address = tuple(sockaddr[:2])
        local = "::" if family == trio.socket.AF_INET6 else "0.0.0.0"
        name = self.server_hostname or self.host
        config = client_configuration(
            alpn=self.alpn,
            server_name=name,
            verify=self.verify,
            ca=self.ca,
            idle_timeout=limits.idle_timeout,
            stream_window=limits.stream_window,
            max_data=limits.connection_window,
            datagram_size=limits.datagram_size,
        )
        sock = await udp.bind(local, 0, recv_buffer=SOCKET_BUFFER).connect()
        _send_buffer(sock)
        async with sock:
            engine = Engine(configuration=config)
            engine.set_max_streams(limits.max_streams, limits.max_uni_streams)
            info = {
                "transport": "quic",
                "peer": address,
                "local": sock.info["local"],
                "host": self.host,
                "server_name": name,
                "tls_version": "TLSv1.3",
            }
            conn = QuicConnection(engine, sock, is_client=True, limits=limits, info=info)
            # The caller's errors (and the handshake's) are raised outside the nursery, as they
            # are, not inside an exception group.
            error: Exception | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_client_reader, sock, conn)
                engine.connect(sockaddr, now=trio.current_time())
                nursery.start_soon(conn.drive)
                try:
                    await conn.wait_handshake(min(deadline, trio.current_time() + limits.handshake_timeout))
                    yield conn
                except Exception as exc:
                    error = exc
                finally:
                    await conn.aclose()
                    nursery.cancel_scope.cancel()
            if error is not None:
                raise error


async def _client_reader(sock: udp.UDPStream, conn: QuicConnection) -> None:
    while True:
        conn.datagrams_received(await sock.recv_batch())


@dataclass(frozen=True, eq=False)
class listen:
    """Spec: a QUIC server on ``host:port`` (UDP; port 0 picks one: ``serve`` reports it).

    ``cert``: the certificate (a ``(certfile, keyfile)`` pair or a :class:`layers.certs.Leaf`).
    ``alpn`` (required), ``retry`` (validate addresses with Retry first), ``limits``
    (:class:`QuicLimits`), ``reuse_port`` (``SO_REUSEPORT``, for several workers).
    """

    host: str
    port: int
    cert: Any
    alpn: Sequence[str] = ()
    retry: bool = False
    limits: QuicLimits = DEFAULT_QUIC_LIMITS
    reuse_port: bool = False
    _config: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        limits = self.limits
        config = server_configuration(
            self.cert,
            alpn=self.alpn,
            idle_timeout=limits.idle_timeout,
            stream_window=limits.stream_window,
            max_data=limits.connection_window,
            datagram_size=limits.datagram_size,
        )
        object.__setattr__(self, "_config", config)

    async def serve(
        self,
        handler: Handler,
        *,
        shutdown: trio.Event | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler(conn)`` per connection until cancelled or ``shutdown`` is set (then
        gracefully: see the module docstring). ``task_status`` gets the bound address."""
        sock = await udp.bind(self.host, self.port, recv_buffer=SOCKET_BUFFER, reuse_port=self.reuse_port).connect()
        _send_buffer(sock)
        async with sock, trio.open_nursery() as nursery:
            endpoint = Endpoint(sock, self._config, self.limits, handler, nursery, retry=self.retry)
            nursery.start_soon(endpoint.read_loop)
            task_status.started(sock.info["local"])
            if shutdown is None:
                await trio.sleep_forever()
            await shutdown.wait()
            await endpoint.shutdown()
            nursery.cancel_scope.cancel()
