"""TLS as a ByteStream layer over any ByteStream: ``tls.client(...)`` and ``tls.server(certs)``.

::

    client = Stack(tcp.connect("example.org", 443), tls.client(alpn=["h2", "http/1.1"]))
    stream = await client.connect(deadline=after(10))
    stream.info["alpn"]                              # "h2", "http/1.1" or None

    server = Stack(tcp.listen("127.0.0.1", 8443), tls.server({"a.test": pair_a, "*.b.test": pair_b, None: pair}))

    secure = await tls.client(server_hostname="mail.test", ca=ca).attach(plain)   # STARTTLS
    plain = await secure.detach()                    # and back: bytes after close_notify intact

    server = Stack(tcp.listen("127.0.0.1", 8443), tls.server(pair, client_ca=ca))   # mutual TLS
    client = Stack(tcp.connect("localhost", 8443), tls.client(ca=ca, cert=ca.issue("alice", client=True)))

The layer runs OpenSSL through :class:`ssl.MemoryBIO` and :class:`ssl.SSLObject`, so it works on
whatever is below it: TCP, Unix, a memory pair, an HTTP/2 stream, another TLS stream.

Handshake
    ``attach(lower, deadline=)`` runs the whole handshake under ``deadline`` (a server
    :class:`~stack.Stack` applies its handshake timeout). It returns only once the handshake is
    done and this side's last flight has been handed to ``lower``. Failure raises
    :class:`HandshakeError` (a :class:`~stack.Broken`) whose message names the cause and whose
    ``reason`` is a short code: ``"unknown_ca"``, ``"hostname_mismatch"`` (the message lists the
    names the certificate is valid for), ``"no_alpn"``, ``"unrecognized_name"``,
    ``"protocol_version"``, ``"not_tls"``, ``"eof"``... ``ssl.SSLError`` never escapes. Where a
    spec parameter would fix it, ``parameter`` names it (``"ca"``, ``"cert"``, ``"client_ca"``) and
    ``problem`` is the message without the advice, for programs that say it in their own words
    (the command line's ``--cacert``). Plain HTTP sent to a server gets ``400 Bad Request`` with a
    hint to use https:// (``plain_http_hint``). On failure the lower stream is left to the caller
    (a Stack closes it). On deadline: :class:`~stack.Timeout`.

Client certificates (mutual TLS)
    ``tls.server(..., client_ca=ca)`` asks every client for a certificate and refuses one without
    a certificate (``client_cert="required"``, the default once ``client_ca`` is given), or
    accepts it (``client_cert="optional"``). A certificate that is presented must verify against
    ``client_ca`` (X.509 strict, and the clientAuth extended key usage if it has one) in both
    modes. The client presents ``tls.client(cert=...)`` when asked. The server's
    :class:`HandshakeError`: ``certificate_required`` (no certificate), ``unknown_ca`` (not from
    ``client_ca``), ``bad_certificate`` (expired, not for client authentication...).

    The client sees the same ``reason``; when depends on the version. In TLS 1.2 its ``attach``
    fails (OpenSSL's server refuses a missing certificate with a ``handshake_failure`` alert,
    which the client reports as ``certificate_required`` when it has no certificate and the
    server had already chosen a cipher suite). In TLS 1.3 the client's handshake is over before
    the server has looked at its certificate, so its ``attach`` succeeds and the refusal comes
    as an alert after it: the client's first ``recv`` (or ``recv_into``) raises the
    :class:`HandshakeError` (``certificate_required`` from the TLS 1.3 alert of that name,
    ``unknown_ca``, ``bad_certificate``). A ``send`` before that may succeed (the bytes are
    lost) or fail with :class:`~stack.Broken` once the server has closed the connection.

Receiving
    Ciphertext is read from ``lower`` in large chunks and written into OpenSSL's incoming buffer
    with no ``await`` in between, and plaintext is only taken out of OpenSSL when it is returned,
    so a receive that times out or is cancelled consumes nothing, even in the middle of a record.
    At the peer's close_notify ``recv`` returns ``b""``. If the connection ends *without* a
    close_notify, receiving raises :class:`~stack.Broken` ("the peer closed the connection
    without close_notify: the data may be truncated"), because a truncation attack looks exactly
    like that; ``ragged_eofs=True`` on the spec turns it into a clean ``b""`` for protocols that
    delimit their own data (HTTPS: trio calls it ``https_compatible``, many HTTPS servers close
    without close_notify). ``recv_into`` has a path of its own with the same rules: OpenSSL
    decrypts straight into the caller's buffer, record after record, with no bytes object and
    no copy of ours; a record longer than the buffer stays in OpenSSL for the next call.

Sending
    Each step encrypts at most :data:`SEND_CHUNK` bytes (four 16 KiB records) into this layer's
    outgoing buffer, and only once everything committed before has gone down to ``lower``. So on
    deadline :class:`~stack.Timeout` has an exact ``sent``, at most about one chunk of committed
    ciphertext waits in this layer, and it goes first on the next ``send``, ``done`` or
    ``aclose``: the stream stays usable. (trio's ``SSLStream`` cannot do this: a cancelled
    ``send_all`` breaks it, trio issue 198.)

Post-handshake messages
    TLS 1.3 session tickets and KeyUpdate are handled while receiving (OpenSSL sends the answer
    to a KeyUpdate with the next record it writes). Output produced while receiving (the
    refusal of a TLS 1.2 renegotiation request: renegotiation is refused,
    ``OP_NO_RENEGOTIATION``) waits in OpenSSL's buffer and goes out first with the next send,
    ``done`` or ``aclose``, or is sent by the receiving task itself before it waits for more
    ciphertext when no task is sending.

Ending
    ``done()`` sends close_notify: a half-close (TLS 1.3 lets the peer go on sending, and this side
    goes on receiving). It does not half-close ``lower``, so ``detach()`` still works after it.
    ``detach()`` exchanges close_notify (sends ours, reads until the peer's) and returns ``lower``
    with every byte that came after the peer's close_notify pushed back into it
    (``lower.unread``), so a plain protocol can go on. If application data arrives from the peer
    before its close_notify, ``detach()`` keeps it for ``recv`` and raises
    :class:`~stack.StackError` (receive it, then detach again): it never drops data.
    ``aclose()`` sends close_notify (bounded by the close grace deadline), does not wait for the
    peer's, and closes ``lower``.

``info``
    ``alpn`` (the protocol agreed, or ``None``), ``server_name`` (client: the host name or IP
    address the certificate was checked against, sent as SNI unless it is an IP address; server:
    the SNI the client sent, or ``None``), ``tls_version`` (``"TLSv1.3"``), ``cipher``
    (``"TLS_AES_256_GCM_SHA384"``), ``peer_certificate`` (the peer's certificate, DER bytes, or
    ``None``), ``peer_subject`` and ``peer_alt_names`` (the peer's certificate's subject as
    ``(("commonName", "alice.test"),)`` and its subjectAltName entries as
    ``(("DNS", "alice.test"), ("IP Address", "127.0.0.1"))``, as the :mod:`ssl` module decodes
    them; ``None`` unless this side verified that certificate: a server with ``client_ca`` for
    its client's, a client with ``verify`` for its server's), then everything the lower stream
    knows.

Secure defaults (when the spec builds the context): TLS 1.2 or later, ECDHE key exchange with
AEAD ciphers only for TLS 1.2 (``ECDHE+AESGCM:ECDHE+CHACHA20``; all TLS 1.3 suites are AEAD), no
compression, no renegotiation, no session tickets, an unexpected EOF is an error, X.509 strict
verification, certificate and host name checked by default.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

import trio

from stack.deadlines import FOREVER, check_deadline
from stack.errors import Timeout
from stack.streams import ByteStream, require

from ._tls_context import CA as CA
from ._tls_context import CIPHERS as CIPHERS
from ._tls_context import Cert as Cert
from ._tls_context import CertPair as CertPair
from ._tls_context import Certs as Certs
from ._tls_context import CertSource as CertSource
from ._tls_context import ClientCert as ClientCert
from ._tls_context import PathLike as PathLike
from ._tls_context import TrustSource as TrustSource
from ._tls_context import _check_alpn, _check_client_cert, _client_context, _Conn, _sni_context
from ._tls_errors import HandshakeError as HandshakeError
from ._tls_names import _ip, _normalize_name
from ._tls_stream import RECV_SIZE as RECV_SIZE
from ._tls_stream import SEND_CHUNK as SEND_CHUNK
from ._tls_stream import TLSStream as TLSStream
from ._tls_stream import _Check

__all__ = ["CIPHERS", "CertSource", "HandshakeError", "TLSStream", "TrustSource", "client", "server"]

log = logging.getLogger("stack.tls")


def _host_from_info(lower: ByteStream) -> str | None:
    """The host the lower stream reached: its ``host`` info (a name), else the ``peer`` address."""
    info = lower.info
    host = info.get("host")
    if isinstance(host, str) and host:
        return host
    peer = info.get("peer")
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


async def _run_handshake(stream: TLSStream, check: _Check, deadline: float, who: str) -> None:
    """The handshake under ``deadline``; when it fails, OpenSSL's memory for the connection is
    released at once (the exception's traceback holds the stream for as long as it is kept)."""
    try:
        try:
            with trio.move_on_at(deadline) as scope:
                await stream._handshake(deadline, check)
        except Timeout:
            raise Timeout(f"TLS handshake {who} timed out") from None
        if scope.cancelled_caught:
            raise Timeout(f"TLS handshake {who} timed out")
    except BaseException:
        stream._abort()
        raise


@dataclass(frozen=True, kw_only=True)
class client:
    """Spec: the client side of TLS.

    ``server_hostname``: the name (or IP address) the server's certificate must be valid for,
    and the SNI sent (never for an IP address). Default: the lower stream's ``host`` info (what
    ``tcp.connect(host, port)`` was given), else the host of its ``peer`` address (an IP
    address: checked against the certificate's IP entries, no SNI sent).

    ``alpn``: protocols offered, in preference order (the server chooses). A server that does
    not do ALPN leaves ``info["alpn"]`` ``None``; a server that refuses every protocol offered
    fails the handshake with ``HandshakeError(reason="no_alpn")``.

    ``verify=False`` checks nothing (tests only). ``ca``: what to trust instead of the system's
    CAs: a PEM file or directory, PEM text, or an object with ``configure_trust(ctx)`` such as
    :class:`layers.certs.CA`. ``ragged_eofs``: see the module docstring.

    ``cert``: the certificate this client presents when the server asks for one (mutual TLS), in
    the forms :class:`server` takes its certificates: a ``(certfile, keyfile)`` pair of PEM files
    or an object with ``configure_cert(ctx)`` such as :class:`layers.certs.Leaf` (issue it with
    ``CA.issue(name, client=True)``: a server checks the clientAuth extended key usage). Without
    it, a server that requires a certificate refuses this client; when and how it learns of
    that depends on the TLS version (module docstring).

    ``context``: your own :class:`ssl.SSLContext`, used as it is (then ``alpn``, ``ca``,
    ``cert`` and ``verify`` must not be given; its own host name checking applies, whose errors
    cannot list the certificate's names).
    """

    server_hostname: str | None = None
    alpn: Sequence[str] = ()
    verify: bool = True
    ca: CA | None = None
    cert: Cert | None = None
    context: ssl.SSLContext | None = None
    ragged_eofs: bool = False
    _ctx: ssl.SSLContext = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alpn = _check_alpn(self.alpn)
        object.__setattr__(self, "alpn", alpn)
        if self.context is not None:
            if alpn or self.ca is not None or not self.verify:
                raise ValueError("with context= configure ALPN, trust and verification on the context itself")
            if self.cert is not None:
                raise ValueError("with context= load the client certificate on the context itself (load_cert_chain)")
            ctx = self.context
        else:
            ctx = _client_context(verify=self.verify, ca=self.ca, cert=self.cert, alpn=alpn)
        object.__setattr__(self, "_ctx", ctx)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> TLSStream:
        """Run the handshake over ``lower`` under ``deadline``; return the TLS stream.

        Raises :class:`HandshakeError` (why the handshake failed), :class:`~stack.Timeout`, or
        what ``lower`` raised. ``lower`` is not closed on failure.
        """
        lower = require(lower, ByteStream, "tls.client")
        check_deadline(deadline)
        host = self.server_hostname or _host_from_info(lower)
        if host is not None:
            ip = _ip(host)
            host = str(ip) if ip is not None else _normalize_name(host)
        ours = self.context is None
        if host is None and (self.verify if ours else self._ctx.check_hostname):
            raise ValueError(
                "tls.client needs server_hostname=: the lower stream does not say which host it reached "
                f"(its info: {dict(lower.info)!r})"
            )
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = self._ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=host)
        stream = TLSStream(lower, conn, incoming, outgoing, ragged_eofs=self.ragged_eofs)
        del conn, incoming, outgoing  # only the stream holds them: a failed handshake releases them
        check_name = ours and self.verify
        has_cert = self.cert is not None
        check = _Check(role="client", host=host, alpn=tuple(self.alpn), check_name=check_name, has_cert=has_cert)
        await _run_handshake(stream, check, deadline, f"with {host or lower.info.get('peer')!r}")
        stream._fill_info(host)
        log.debug("tls client: %s %s alpn=%r with %s", stream.info["tls_version"], stream.info["cipher"],
                  stream.info["alpn"], host)  # fmt: skip
        return stream


@dataclass(frozen=True, eq=False)
class server:
    """Spec: the server side of TLS.

    ``certs``: one certificate, or a mapping from host name to certificate with a ``None`` key for
    the default; a name may be a wildcard ``*.example.test`` (matching exactly one more label). A
    certificate is a ``(certfile, keyfile)`` pair of PEM files (the certificate file holding the
    chain, leaf first) or an object with ``configure_cert(ctx)`` such as :class:`layers.certs.Leaf`.
    The certificate is chosen by the client's SNI: exact name first, then wildcard, then the
    default; with no default, a client asking for another name (or none) is refused with an
    ``unrecognized_name`` alert.

    ``ragged_eofs``: as for :class:`client` (a client that vanishes without close_notify).

    ``alpn``: the protocols this server speaks, in *its* order of preference: the first one in
    this list that the client also offers is chosen, whatever the client's order (OpenSSL's
    ``SSL_select_next_proto``). A client that offers ALPN but none of these is refused with a
    ``no_application_protocol`` alert (RFC 7301) and the server's ``HandshakeError`` names both
    lists; a client that offers no ALPN is accepted (``info["alpn"]`` is ``None``).

    ``client_ca``: ask clients for a certificate and trust those issued by this CA, given as
    :class:`client`'s ``ca`` is: a PEM file or directory, PEM text or bytes, or an object with
    ``configure_trust(ctx)`` such as :class:`layers.certs.CA`. There is no default (the system's
    CAs vouch for servers, not for your clients). ``client_cert``: ``"required"`` (a client
    without a certificate is refused: ``certificate_required``), ``"optional"`` (it is
    accepted, ``info["peer_certificate"]`` is ``None``) or ``"none"`` (none is asked for).
    Default: ``"required"`` when ``client_ca`` is given, else ``"none"``; ``"required"`` or
    ``"optional"`` without ``client_ca``, and ``client_ca`` with ``"none"``, are ValueErrors.
    In both modes a certificate that is presented must verify (X.509 strict; a certificate
    with an extended key usage must allow clientAuth), else the handshake fails with
    ``unknown_ca`` or ``bad_certificate``. Every certificate's context (one per SNI name)
    checks clients alike. After construction ``client_cert`` holds the mode in force (``None``
    with ``context=``).

    ``context``: your own :class:`ssl.SSLContext`, used as it is (then ``certs``, ``alpn``,
    ``client_ca`` and ``client_cert`` must not be given). Specs compare by identity.

    ``plain_http_hint``: a client whose first byte is an ASCII letter (plain HTTP sent to this TLS
    port: a TLS client starts with 0x16, a handshake record) is answered ``HTTP/1.1 400 Bad
    Request`` with the hint "This port speaks TLS: use https://" (as nginx does), and the
    handshake fails with ``HandshakeError(reason="not_tls")`` (a :class:`~stack.Stack` then closes
    the connection). ``False``: no answer, only the error.
    """

    certs: Certs | None = None
    _: KW_ONLY
    alpn: Sequence[str] = ()
    client_ca: CA | None = None
    client_cert: ClientCert | None = None
    context: ssl.SSLContext | None = None
    ragged_eofs: bool = False
    plain_http_hint: bool = True
    _ctx: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        alpn = _check_alpn(self.alpn)
        object.__setattr__(self, "alpn", alpn)
        if self.context is not None:
            if self.certs is not None or alpn:
                raise ValueError("with context= load the certificates and set ALPN on the context itself")
            if self.client_ca is not None or self.client_cert is not None:
                raise ValueError(
                    "with context= set verify_mode and load the client CAs on the context itself "
                    "(client_ca= and client_cert= are for the contexts the spec builds)"
                )
            object.__setattr__(self, "_ctx", self.context)
            return
        client_cert = _check_client_cert(self.client_cert, self.client_ca)
        object.__setattr__(self, "client_cert", client_cert)
        if self.certs is None:
            raise ValueError("tls.server needs certs: a (certfile, keyfile) pair or a mapping of host names to pairs")
        object.__setattr__(self, "_ctx", _sni_context(self.certs, alpn, self.client_ca, client_cert))

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> TLSStream:
        """Run the handshake over ``lower`` under ``deadline``; return the TLS stream.

        Raises :class:`HandshakeError` (why the handshake failed), :class:`~stack.Timeout`, or
        what ``lower`` raised. ``lower`` is not closed on failure.
        """
        lower = require(lower, ByteStream, "tls.server")
        check_deadline(deadline)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = self._ctx.wrap_bio(incoming, outgoing, server_side=True)
        if isinstance(conn, _Conn):
            conn._hello = bytearray()
        stream = TLSStream(
            lower, conn, incoming, outgoing, ragged_eofs=self.ragged_eofs, plain_http_hint=self.plain_http_hint
        )
        del conn, incoming, outgoing  # only the stream holds them: a failed handshake releases them
        check = _Check(role="server", host=None, alpn=tuple(self.alpn), check_name=False)
        await _run_handshake(stream, check, deadline, f"with {lower.info.get('peer')!r}")
        conn = stream._ssl
        sni = conn._sni if isinstance(conn, _Conn) else None
        stream._fill_info(sni)
        log.debug("tls server: %s %s alpn=%r sni=%r", conn.version(), conn.cipher(), stream.info["alpn"], sni)
        return stream
