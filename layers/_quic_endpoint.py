"""The QUIC server's endpoint: one UDP socket, many connections (see :mod:`layers.quic`).

Theory of operation: one reader task takes datagrams from the socket and hands each to the
connection its destination connection ID names (a dict from every connection ID a connection
issued to the connection; the engine's ConnectionIdIssued / Retired events keep it current, so a
client that changes its ID or its address, RFC 9000 9, stays with its connection). A datagram
for no connection that is a client Initial of at least 1200 bytes (RFC 9000 14.1) starts a new
connection, unless the listener is full (``max_connections``), shutting down, or (with
``retry=True``) the Initial carries no valid Retry token: then it gets a Retry packet instead
and the connection starts only once the client proved its address (RFC 9000 8.1.2). An unknown
QUIC version gets a Version Negotiation packet. Everything else for no connection is dropped.

Each connection runs in its own task under the endpoint's nursery: its driver, its handshake
under ``handshake_timeout``, then the handler; when the handler returns the connection is
closed and its IDs forgotten. The anti-amplification limit (three times what an unvalidated
client sent, RFC 9000 8.1) is the engine's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from stack.errors import Closed

from ._quic_conn import QuicConnection, QuicLimits
from ._quic_engine import Engine

__all__ = ["Endpoint"]

log = logging.getLogger("stack.quic")

Handler = Callable[[QuicConnection], Awaitable[None]]


class Endpoint:
    """The server side of one UDP socket (see the module docstring)."""

    def __init__(
        self,
        udp: Any,
        config: QuicConfiguration,
        limits: QuicLimits,
        handler: Handler,
        nursery: trio.Nursery,
        *,
        retry: bool,
    ) -> None:
        self._udp = udp
        self._config = config
        self._limits = limits
        self._handler = handler
        self._nursery = nursery
        self._retry = QuicRetryTokenHandler() if retry else None
        self._by_cid: dict[bytes, QuicConnection] = {}
        self.connections: set[QuicConnection] = set()
        self.accepting = True
        self.retries_sent = 0
        self.dropped = 0
        self._all_gone: trio.Event | None = None

    async def read_loop(self) -> None:
        """Take datagrams from the socket until it is closed."""
        udp = self._udp
        while True:
            batch: dict[QuicConnection, list[tuple[bytes, Any]]] = {}
            for dgram in await udp.recv_batch():
                try:
                    conn = self._datagram(*dgram)
                except Exception:  # a datagram must never end the listener
                    log.exception("quic: a datagram from %s could not be handled", dgram[1])
                    continue
                if conn is not None:
                    batch.setdefault(conn, []).append(dgram)
            for conn, dgrams in batch.items():
                try:
                    conn.datagrams_received(dgrams)
                except Exception:
                    log.exception("quic: datagrams from %s could not be handled", conn.info.get("peer"))

    def _datagram(self, data: bytes, address: Any) -> QuicConnection | None:
        """The connection ``data`` is for (the caller hands it over), or ``None`` once handled
        here (a new connection, a Retry, a Version Negotiation, a drop)."""
        config = self._config
        if data and data[0] & 0xC0 == 0x40:
            # a short header with its fixed bit (RFC 9000 17.3), almost every datagram: its
            # connection ID is the bytes after the first, as pull_quic_header would read them
            cid_length = config.connection_id_length
            conn = self._by_cid.get(data[1 : 1 + cid_length]) if len(data) > cid_length else None
            if conn is None:
                self.dropped += 1
            return conn
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=config.connection_id_length)
        except ValueError:
            self.dropped += 1
            return None
        conn = self._by_cid.get(header.destination_cid)
        if conn is not None:
            return conn
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in config.supported_versions
        ):
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=config.supported_versions,
                ),
                address,
            )
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            self.dropped += 1
            return None
        if not self.accepting or len(self.connections) >= self._limits.max_connections:
            self.dropped += 1
            log.debug("quic: refused a new connection from %s (full or shutting down)", address)
            return None
        original_dcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not header.token and header.version is not None:
                scid = os.urandom(8)
                self._send(
                    encode_quic_retry(
                        version=header.version,
                        source_cid=scid,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=self._retry.create_token(
                            address=address,
                            original_destination_connection_id=header.destination_cid,
                            retry_source_connection_id=scid,
                            now=trio.current_time(),
                        ),
                    ),
                    address,
                )
                self.retries_sent += 1
                return None
            try:
                original_dcid = self._retry.validate_token(
                    address=address, destination_cid=header.destination_cid, token=header.token, now=trio.current_time()
                )
            except ValueError:
                self.dropped += 1
                return None
            retry_scid = header.destination_cid
        engine = Engine(
            configuration=config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        limits = self._limits
        engine.set_max_streams(limits.max_streams, limits.max_uni_streams)
        local = self._udp.info.get("local")
        conn = QuicConnection(
            engine,
            self._udp,
            is_client=False,
            limits=limits,
            info={"transport": "quic", "peer": tuple(address[:2]), "local": local, "tls_version": "TLSv1.3"},
        )
        conn.on_cid_issued = lambda cid: self._by_cid.__setitem__(cid, conn)
        conn.on_cid_retired = self._by_cid_pop
        self._by_cid[header.destination_cid] = conn
        self._by_cid[engine.host_cid] = conn
        self.connections.add(conn)
        conn.datagram_received(data, address)
        self._nursery.start_soon(self._run, conn, name=f"quic connection {address}")
        return None

    def _by_cid_pop(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def _send(self, data: bytes, address: Any) -> None:
        self._nursery.start_soon(self._send_one, data, address)

    async def _send_one(self, data: bytes, address: Any) -> None:
        with contextlib.suppress(Closed):  # the listener is closing
            await self._udp.send_batch([(data, address)])

    async def _run(self, conn: QuicConnection) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.drive)
                try:
                    await conn.wait_handshake(trio.current_time() + self._limits.handshake_timeout)
                except Exception as exc:
                    log.debug("quic: handshake with %s failed: %s", conn.info.get("peer"), exc)
                else:
                    try:
                        await self._handler(conn)
                    except Exception:
                        log.exception("quic: the handler of %s raised", conn.info.get("peer"))
                await conn.aclose()
        finally:
            self.connections.discard(conn)
            if not self.connections and self._all_gone is not None:
                self._all_gone.set()
            for cid in [cid for cid, c in self._by_cid.items() if c is conn]:
                del self._by_cid[cid]

    async def shutdown(self) -> None:
        """Stop accepting; tell every connection (``conn.closing``) and give them
        ``drain_timeout`` seconds to end."""
        self.accepting = False
        for conn in list(self.connections):
            conn.closing.set()
        self._all_gone = trio.Event()
        if self.connections:
            with trio.move_on_after(self._limits.drain_timeout):
                await self._all_gone.wait()
        for conn in list(self.connections):
            await conn.aclose(reason="server shutting down", deadline=trio.current_time() + 0.2)
