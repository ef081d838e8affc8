"""The sans-io QUIC engine under :mod:`layers.quic`: aioquic's ``QuicConnection`` with this layer's
corrections, and the building of its configuration from our certificate helpers.

Theory of operation: aioquic does all of QUIC (packets, TLS 1.3, loss recovery, congestion
control, flow control, connection IDs) and does no I/O; :mod:`layers._quic_conn` feeds it
datagrams and timer expiries and sends what it produces. Two things aioquic decides differently
from our stream contract are corrected here, in one subclass, so the rest of the layer never
touches aioquic's private state:

* **Receive windows follow consumption.** aioquic doubles a stream's receive window whenever the
  peer has sent half of it, whatever the application read, so a peer could make us buffer without
  bound. :class:`Engine` grants a stream ``consumed + window`` instead (``consumed`` being what
  the application took from our :class:`~layers._quic_stream.QuicStream`), so an unread stream
  holds at most one window, as an HTTP/2 stream does. (The connection-wide limit keeps aioquic's
  doubling; the stream limit times the stream windows bounds what is buffered.)
* **Knobs aioquic has no setting for**: the number of streams a peer may open at once
  (``max_streams``; aioquic grants one more per finished stream, RFC 9000 4.6) and a view of how
  much of a stream's committed data has not yet left (``unsent``), which bounds what a sender
  commits beyond what the network took.

All of this reads attributes of aioquic 1.x (``_streams``, ``_local_max_streams_bidi`` ...): the
dependency is pinned to ``aioquic>=1.2,<2`` and ``tests/test_quic.py`` exercises each of them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates

__all__ = ["Engine", "client_configuration", "server_configuration"]


class Engine(QuicConnection):
    """aioquic's connection with receive windows that follow consumption (module docstring).

    ``buffered(stream_id)`` is a callback giving how many bytes of that stream were delivered
    by aioquic and not yet taken by the application (set by the connection that owns this).
    """

    buffered: Callable[[int], int] = staticmethod(lambda stream_id: 0)
    stream_window: int = 1024 * 1024

    def set_max_streams(self, bidi: int, uni: int) -> None:
        """How many streams of each kind the peer may have open at once (before the handshake)."""
        self._local_max_streams_bidi.value = bidi
        self._local_max_streams_bidi.sent = bidi
        self._local_max_streams_uni.value = uni
        self._local_max_streams_uni.sent = uni

    def unsent(self, stream_id: int) -> int:
        """Bytes committed on ``stream_id`` that have not been sent once yet (0 for a stream that
        is gone or was reset)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    def credit_due(self, stream_id: int) -> bool:
        """Whether the application consumed enough of ``stream_id`` for a window update to be
        worth sending (half a window)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        consumed = stream.receiver.starting_offset() - self.buffered(stream_id)
        return consumed + self.stream_window - stream.max_stream_data_local_sent >= self.stream_window // 2

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream in every packet it builds: the common case (nothing
        # due) costs two comparisons, without asking the connection what the stream buffers
        local = stream.max_stream_data_local
        if not local:
            return
        receiver = stream.receiver
        window = self.stream_window
        delivered = receiver.starting_offset()
        if delivered + window - local >= window // 2 and not receiver.is_finished:
            # the most the target can be (nothing buffered) would be due: count what is
            target = delivered - self.buffered(stream.stream_id) + window
            if target - local >= window // 2:
                stream.max_stream_data_local = local = target
        if stream.max_stream_data_local_sent != local and not receiver.is_finished:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def _pem_of(obj: Any, attr: str) -> bytes | None:
    value = getattr(obj, attr, None)
    return value if isinstance(value, bytes) else None


def _load_cert(config: QuicConfiguration, cert: Any) -> None:
    """``cert``: a ``(certfile, keyfile)`` pair of PEM files, or an object with ``cert_pem`` and
    ``key_pem`` (:class:`layers.certs.Leaf`)."""
    chain_pem, key_pem = _pem_of(cert, "cert_pem"), _pem_of(cert, "key_pem")
    if chain_pem is not None and key_pem is not None:
        chain = load_pem_x509_certificates(chain_pem)
        config.certificate = chain[0]
        config.certificate_chain = chain[1:]
        config.private_key = load_pem_private_key(key_pem)
        return
    if isinstance(cert, tuple) and len(cert) == 2:
        config.load_cert_chain(os.fspath(cert[0]), os.fspath(cert[1]))
        return
    raise TypeError(
        "a QUIC certificate is a (certfile, keyfile) pair of PEM files or an object with cert_pem and "
        f"key_pem (layers.certs.Leaf), not {type(cert).__name__}"
    )


def _load_trust(config: QuicConfiguration, ca: Any) -> None:
    """``ca``: a PEM file or directory, PEM text or bytes, or an object with ``cert_pem``
    (:class:`layers.certs.CA`)."""
    pem = _pem_of(ca, "cert_pem")
    if pem is not None:
        config.load_verify_locations(cadata=pem)
    elif isinstance(ca, bytes):
        config.load_verify_locations(cadata=ca)
    elif isinstance(ca, str) and ca.lstrip().startswith("-----BEGIN"):
        config.load_verify_locations(cadata=ca.encode("ascii"))
    elif isinstance(ca, (str, os.PathLike)):
        path = os.fspath(ca)
        if os.path.isdir(path):
            config.load_verify_locations(capath=path)
        else:
            config.load_verify_locations(cafile=path)
    else:
        raise TypeError(f"ca is a PEM file or directory, PEM text, or an object with cert_pem, not {type(ca).__name__}")


def _base(
    alpn: Sequence[str],
    *,
    is_client: bool,
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    if not alpn:
        raise ValueError("QUIC needs ALPN (RFC 9001 8.1): give alpn=[...], e.g. ['h3']")
    return QuicConfiguration(
        alpn_protocols=list(alpn),
        is_client=is_client,
        idle_timeout=idle_timeout,
        max_stream_data=stream_window,
        max_data=max_data,
        max_datagram_size=datagram_size,
    )


def client_configuration(
    *,
    alpn: Sequence[str],
    server_name: str | None,
    verify: bool,
    ca: Any,
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    """The configuration of one client connection (verification on unless ``verify=False``)."""
    config = _base(
        alpn,
        is_client=True,
        idle_timeout=idle_timeout,
        stream_window=stream_window,
        max_data=max_data,
        datagram_size=datagram_size,
    )
    config.server_name = server_name
    if not verify:
        config.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        _load_trust(config, ca)
    return config


def server_configuration(
    cert: Any,
    *,
    alpn: Sequence[str],
    idle_timeout: float,
    stream_window: int,
    max_data: int,
    datagram_size: int = 1350,
) -> QuicConfiguration:
    """The configuration every connection of one listener shares (one certificate)."""
    config = _base(
        alpn,
        is_client=False,
        idle_timeout=idle_timeout,
        stream_window=stream_window,
        max_data=max_data,
        datagram_size=datagram_size,
    )
    _load_cert(config, cert)
    return config
