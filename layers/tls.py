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
    ``"protocol_version"``, ``"not_tls"``, ``"eof"``... ``ssl.SSLError`` never escapes. On failure
    the lower stream is left to the caller (a Stack closes it). On deadline:
    :class:`~stack.Timeout`.

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

import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, cast, runtime_checkable

import trio

from stack.deadlines import FOREVER
from stack.errors import Broken, ProtocolError, StackError, Timeout
from stack.streams import ByteStream

__all__ = ["CIPHERS", "CertSource", "HandshakeError", "TLSStream", "TrustSource", "client", "server"]

log = logging.getLogger("stack.tls")

RECV_SIZE = 256 * 1024
"""Ciphertext asked of the lower stream per receive (OpenSSL's buffer takes it all at once)."""

_RECORD = 16384
"""The most plaintext one TLS record carries, so the most one ``SSLObject.read`` returns."""

SEND_CHUNK = 64 * 1024
"""Plaintext encrypted per send step: four full records, handed to the lower stream in one send."""

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2: ECDHE key exchange, AEAD only. TLS 1.3 suites are all AEAD."""

_HELLO_LIMIT = 128 * 1024
"""Bytes of a client's first flight a server keeps to read the ALPN list offered (then forgets)."""

_ALERT_UNRECOGNIZED_NAME = 112
_ALERT_NO_APPLICATION_PROTOCOL = 120  # RFC 7301; the ssl module has no constant for it
_ALERT_INTERNAL_ERROR = 80

PathLike: TypeAlias = "str | os.PathLike[str]"


@runtime_checkable
class CertSource(Protocol):
    """Anything that can install a certificate chain and key into a context
    (:class:`layers.certs.Leaf` is one)."""

    def configure_cert(self, ctx: ssl.SSLContext) -> None: ...


@runtime_checkable
class TrustSource(Protocol):
    """Anything that can make a context trust a CA (:class:`layers.certs.CA` is one)."""

    def configure_trust(self, ctx: ssl.SSLContext) -> None: ...


CertPair: TypeAlias = "tuple[PathLike, PathLike]"
"""``(certfile, keyfile)``: PEM files, the certificate file holding the chain, leaf first."""

Cert: TypeAlias = "CertPair | CertSource"
Certs: TypeAlias = "Cert | Mapping[str, Cert] | Mapping[str | None, Cert]"
CA: TypeAlias = "PathLike | bytes | TrustSource"
ClientCert: TypeAlias = 'Literal["none", "optional", "required"]'


class HandshakeError(Broken):
    """The TLS handshake failed (or, for a TLS 1.3 client, its certificate was refused just after:
    see the module docstring). The message says why and what to check; ``reason`` is a code:

    ``unknown_ca`` (the certificate's issuer is not trusted), ``hostname_mismatch``,
    ``bad_certificate`` (expired, not yet valid, or otherwise refused), ``certificate_required``
    (the server requires a client certificate and the client sent none), ``no_alpn`` (no
    application protocol in common), ``unrecognized_name`` (the server has no certificate for the
    name asked for), ``protocol_version`` (no TLS version in common), ``no_shared_cipher``,
    ``not_tls`` (the peer does not speak TLS), ``eof`` (the peer closed the connection during the
    handshake), ``failed`` (anything else).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- the stream


class _Conn(ssl.SSLObject):
    """The SSLObject class of the server contexts built here: it carries what the SNI callback
    needs (the client's first bytes, to read the ALPN list) and what it decided."""

    _hello: bytearray | None = None
    _sni: str | None = None
    _refusal: HandshakeError | None = None


class TLSStream(ByteStream):
    """A TLS connection over a lower :class:`~stack.ByteStream`; built by ``client``/``server``
    specs. See the module docstring for every semantic (deadlines, EOF, done, detach)."""

    kind = "tls"
    _lower: ByteStream

    def __init__(
        self,
        lower: ByteStream,
        conn: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        *,
        ragged_eofs: bool,
    ) -> None:
        super().__init__(lower)
        self._ssl = conn
        self._in = incoming
        self._out = outgoing
        self._ragged_eofs = ragged_eofs
        self._close_notify_sent = False
        self._peer_closed = False  # the peer's close_notify was read (or a ragged EOF accepted)
        self._ragged_eof = False  # the connection ended without close_notify
        self._lower_eof = False
        self._read_error: StackError | None = None  # found while reading ahead; raised by the next receive
        self._recv_flush: trio.Event | None = None  # set while the receiving task sends post-handshake output
        self._reading = False  # a task is inside _recv_some or _recv_into (it may be waiting for ciphertext)

    # ---- handshake ---------------------------------------------------------------------

    async def _handshake(self, deadline: float, check: _Check) -> None:
        conn = self._ssl
        lower = self._lower
        while True:
            try:
                conn.do_handshake()
                finished = True
            except ssl.SSLWantReadError:
                finished = False
            except ssl.SSLError as exc:
                error = check.failure(exc, conn)
                await self._send_alert(deadline)
                raise error from exc
            if finished:
                check.verify(conn)  # before our last flight goes: a refused server never sees our Finished
            if self._out.pending:
                self._outbuf += self._out.read()
            if self._outbuf:
                await lower.send_from(self._outbuf, deadline=deadline)
            if finished:
                return
            data = await lower.recv(RECV_SIZE, deadline=deadline)
            hello = conn._hello if isinstance(conn, _Conn) else None
            if hello is not None and len(hello) < _HELLO_LIMIT:
                hello += data
            if data:
                self._in.write(data)
            else:
                self._lower_eof = True
                self._in.write_eof()

    async def _send_alert(self, deadline: float) -> None:
        """Best effort: let the peer see the alert OpenSSL wrote when the handshake failed."""
        if not self._out.pending:
            return
        self._outbuf += self._out.read()
        with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
            try:
                await self._lower.send_from(self._outbuf, deadline=deadline)
            except StackError as exc:
                log.debug("could not send the TLS alert: %s", exc)

    def _fill_info(self, server_name: str | None) -> None:
        conn = self._ssl
        cipher = conn.cipher()
        der = conn.getpeercert(binary_form=True)
        fields = conn.getpeercert() if der is not None else None  # {} when it was not verified
        self._info.update(
            alpn=conn.selected_alpn_protocol(),
            server_name=server_name,
            tls_version=conn.version(),
            cipher=cipher[0] if cipher else None,
            peer_certificate=der,
            peer_subject=tuple(pair for rdn in fields["subject"] for pair in rdn) if fields else None,
            peer_alt_names=tuple(fields.get("subjectAltName", ())) if fields else None,
        )

    # ---- receiving ---------------------------------------------------------------------

    def _decrypt(self, max_bytes: int) -> bytes | None:
        """Plaintext from what OpenSSL holds (at most one record); ``None`` when it needs more
        ciphertext; ``b""`` at the peer's close_notify (or a ragged EOF when allowed). Raises the
        stream's error."""
        if self._read_error is not None:
            raise self._read_error
        try:
            data = self._ssl.read(max_bytes if max_bytes < _RECORD else _RECORD)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLError as exc:
            self._read_ended(exc)
            data = b""
        if not data:
            self._peer_closed = True
        return data

    def _decrypt_into(self, view: memoryview | bytearray) -> int | None:
        """:meth:`_decrypt` written into the front of ``view`` (OpenSSL copies the plaintext
        straight there, at most one record): the count, ``None`` for "want read", ``0`` at the
        end. Nothing past the count is written."""
        if self._read_error is not None:
            raise self._read_error
        try:
            n = cast(int, self._ssl.read(len(view), view))  # with a buffer: the count (typeshed says bytes)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLError as exc:
            self._read_ended(exc)
            n = 0
        if not n:
            self._peer_closed = True
        return n

    def _read_ended(self, exc: ssl.SSLError) -> None:
        """A read failed other than with "want read": return if that is the end of the peer's
        data (its close_notify, or a connection that ended without one when ``ragged_eofs``
        allows it), else raise the error it means."""
        if isinstance(exc, ssl.SSLZeroReturnError):
            return
        if not isinstance(exc, ssl.SSLEOFError | ssl.SSLSyscallError) or not self._lower_eof:
            raise _data_error(exc, "client" if self._ssl.server_side else "server") from exc
        self._ragged_eof = True
        if not self._ragged_eofs:
            raise Broken(
                "the peer closed the connection without close_notify: the data may be truncated "
                "(use ragged_eofs=True only for protocols that delimit their own data)"
            ) from exc
        log.debug("tls: the peer closed the connection without close_notify (ragged_eofs=True)")

    def _may_decrypt(self) -> bool:
        """Whether a read from OpenSSL could give anything but "want read": there is
        ciphertext or plaintext buffered, or an end or error to report. (A failed read raises
        ``SSLWantReadError``, which costs about as much as a successful one.)"""
        return bool(
            self._in.pending
            or self._ssl.pending()
            or self._peer_closed
            or self._lower_eof
            or self._read_error is not None
        )

    def _decrypt_more(self, first: bytes, max_bytes: int) -> bytes:
        """Join further whole records already received to ``first``, up to ``max_bytes``."""
        parts = [first]
        total = len(first)
        while total < max_bytes and self._may_decrypt():
            try:
                more = self._decrypt(max_bytes - total)
            except StackError as exc:
                self._read_error = exc  # raised by the next receive, after this data
                break
            if not more:
                break
            parts.append(more)
            total += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    def _decrypt_more_into(self, view: memoryview, n: int) -> int:
        """Decrypt further whole records already received into ``view`` after its first ``n``
        bytes, up to its end; return the new count."""
        size = len(view)
        while n < size and self._may_decrypt():
            try:
                more = self._decrypt_into(view[n:])
            except StackError as exc:
                self._read_error = exc  # raised by the next receive, after this data
                break
            if not more:
                break
            n += more
        return n

    def _drain(self) -> None:
        """Decrypt every whole record already received into the unread buffer.

        Only with no receive in progress (then the order of bytes is kept). A receiving task
        waits for ciphertext only when OpenSSL holds no whole record, so there is nothing to do.
        """
        if self._reading or self._peer_closed or self._read_error is not None:
            return
        while True:
            try:
                data = self._decrypt(RECV_SIZE)
            except StackError as exc:
                self._read_error = exc
                return
            if not data:
                return
            self._unread += data

    async def _wait_for_ciphertext(self, deadline: float) -> None:
        """One step of progress for a reader: push post-handshake output if no one else can,
        else receive ciphertext into OpenSSL's buffer (no await between receiving and storing).

        The ciphertext arrives in the bytes object ``lower.recv`` returns (a socket's kernel
        writes straight into it) and ``MemoryBIO.write`` copies it once, the copy OpenSSL needs.
        A reusable buffer of ours would hold :data:`RECV_SIZE` bytes per connection while it
        waits; landing it in a ``recv_into`` caller's buffer means smaller reads, which cost more
        per byte than the allocation they save (measured with callgrind)."""
        if self._out.pending and not self._sending and self._closed is None and self._recv_flush is None:
            await self._flush_while_receiving(deadline)
            return
        data = await self._lower.recv(RECV_SIZE, deadline=deadline)
        if data:
            self._in.write(data)
        else:
            self._lower_eof = True
            self._in.write_eof()

    async def _flush_while_receiving(self, deadline: float) -> None:
        done = self._recv_flush = trio.Event()
        try:
            self._outbuf += self._out.read()
            await self._lower.send_from(self._outbuf, deadline=deadline)
        except Timeout:
            raise Timeout("tls recv timed out (sending a post-handshake message)") from None
        except StackError as exc:  # the next send reports it; receiving may still work
            log.debug("tls: could not send post-handshake output while receiving: %s", exc)
        finally:
            self._recv_flush = None
            done.set()

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        self._reading = True
        try:
            while True:
                if self._may_decrypt():
                    data = self._decrypt(max_bytes)
                    if data is not None:
                        if data and len(data) < max_bytes:
                            data = self._decrypt_more(data, max_bytes)
                        return data
                await self._wait_for_ciphertext(deadline)
        finally:
            self._reading = False

    async def _recv_into(self, buffer: bytearray | memoryview, deadline: float) -> int:
        """``_recv_some`` without a bytes object: OpenSSL decrypts into ``buffer`` itself, record
        after record while whole ones are buffered. The same rules: 1..``len(buffer)`` bytes; a
        record longer than ``buffer`` stays in OpenSSL for the next call. ``0`` at the peer's
        close_notify (or at an end without one when ``ragged_eofs`` allows it, else
        :class:`~stack.Broken`); an error met after some data is raised by the next call.
        Nothing is taken out of OpenSSL until the wait for ciphertext is over, so a deadline or
        a cancellation consumes nothing and leaves ``buffer`` as it was."""
        self._reading = True
        try:
            while True:
                if self._may_decrypt():
                    n = self._decrypt_into(buffer)
                    if n is not None:
                        if n and n < len(buffer):
                            with memoryview(buffer) as view:
                                n = self._decrypt_more_into(view, n)
                        return n
                await self._wait_for_ciphertext(deadline)
        finally:
            self._reading = False

    # ---- sending -----------------------------------------------------------------------

    async def _flush(self, deadline: float) -> None:
        while self._recv_flush is not None:
            await self._recv_flush.wait()
        if self._out.pending:
            self._outbuf += self._out.read()
        if self._outbuf:
            await self._lower.send_from(self._outbuf, deadline=deadline)

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        if self._outbuf or self._out.pending or self._recv_flush is not None:
            await self._flush(deadline)
        # From here on no await: what is encrypted is committed and lands in the outgoing buffer.
        n = len(data)
        try:
            n = self._ssl.write(memoryview(data)[:SEND_CHUNK] if n > SEND_CHUNK else data)
        except ssl.SSLWantReadError as exc:  # only a renegotiation could want to read; we refuse those
            raise ProtocolError("the peer tried to renegotiate TLS, which is not supported") from exc
        except ssl.SSLError as exc:
            raise _data_error(exc) from exc
        self._outbuf += self._out.read()
        return n

    # ---- ending ------------------------------------------------------------------------

    def _send_close_notify(self) -> None:
        """Queue our close_notify in OpenSSL's outgoing buffer (once); the next flush sends it."""
        if self._close_notify_sent:
            return
        # SSL_shutdown also reads, and fails on application data it finds: decrypt it first.
        self._drain()
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is queued; the peer's has not come yet
        except ssl.SSLError as exc:
            raise _data_error(exc) from exc
        self._close_notify_sent = True

    async def _done(self, deadline: float) -> None:
        self._send_close_notify()
        await self._flush(deadline)

    async def _close(self, deadline: float) -> None:
        try:
            self._send_close_notify()
        except StackError as exc:
            log.debug("tls: no close_notify on close: %s", exc)
            return
        await self._flush(deadline)

    async def _detach(self, deadline: float) -> ByteStream:
        self._drain()
        if self._unread:
            raise StackError(
                f"cannot detach the tls layer yet: {len(self._unread)} bytes of data from the peer "
                "were not received; recv them first"
            )
        if self._ragged_eof or (self._lower_eof and not self._peer_closed):
            raise Broken("cannot detach: the peer closed the connection without close_notify")
        self._send_close_notify()
        await self._flush(deadline)
        self._send_closed = True  # our close_notify is out: no more TLS data from this side
        while not self._peer_closed:
            data = self._decrypt(RECV_SIZE)
            if data is None:
                await self._wait_for_ciphertext(deadline)
            elif data:
                self._unread += self._decrypt_more(data, RECV_SIZE)
                raise StackError(
                    f"cannot detach the tls layer yet: the peer sent {len(self._unread)} more bytes of data "
                    "before its close_notify; recv them, then call detach() again"
                )
        if self._ragged_eof:
            raise Broken("cannot detach: the peer closed the connection without close_notify")
        rest = self._in.read()
        if rest:
            self._lower.unread(rest)
        log.debug("tls detached; %d bytes after the peer's close_notify go back to the lower stream", len(rest))
        return self._lower


def _ssl_text(exc: BaseException) -> str:
    """An ssl error's message without the ``[SSL: X]`` prefix and the ``(_ssl.c:123)`` suffix."""
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def _data_error(exc: ssl.SSLError, peer: str = "peer") -> Broken:
    """Translate an ssl error after the handshake into the error family.

    A certificate alert from the peer is a :class:`HandshakeError`: in TLS 1.3 a server checks
    the client's certificate after the client's handshake is over, so a refused client learns of
    it here, on its first receive."""
    text = _ssl_text(exc)
    reason = exc.reason or ""
    if "ALERT" in reason or " alert " in f" {text} ":
        refused = _certificate_alert(text, peer)
        if refused is not None:
            return HandshakeError(
                f"{refused} (refused after this side's handshake was done: a TLS 1.3 server checks the "
                "client's certificate after the client's last handshake message)",
                reason=refused.reason,
            )
        return Broken(f"the peer aborted the TLS connection: {text}")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLSyscallError):
        return Broken(f"the TLS connection failed: {text}")
    return ProtocolError(f"the peer broke the TLS protocol: {text}")


def _certificate_alert(text: str, peer: str) -> HandshakeError | None:
    """The error for an alert from ``peer`` that refuses this side's certificate (or its
    absence), else ``None``. ``text`` is the ssl error's text (``tlsv1 alert unknown ca``)."""
    lowered = text.lower()
    if "certificate required" in lowered:
        return HandshakeError(
            f"the {peer} requires a certificate from this side and got none ({text}): give tls.client cert=",
            reason="certificate_required",
        )
    if "unknown ca" in lowered:
        return HandshakeError(
            f"the {peer} does not trust this side's certificate (it answered 'unknown CA'): "
            f"give the {peer} the CA that issued it",
            reason="unknown_ca",
        )
    if "certificate" in lowered:
        return HandshakeError(f"the {peer} refused this side's certificate ({text})", reason="bad_certificate")
    return None


def _client_certificate_error(code: int, message: str) -> HandshakeError:
    """The server's error for a client certificate that failed verification (OpenSSL's code)."""
    if code in (2, 18, 19, 20, 21):
        return HandshakeError(
            f"the client's certificate is not trusted ({message}): it was not issued by a CA this server "
            "trusts; pass client_ca= the CA that issued it",
            reason="unknown_ca",
        )
    if code == 26:  # X509_V_ERR_INVALID_PURPOSE
        return HandshakeError(
            f"the client's certificate is not for client authentication ({message}): it needs the clientAuth "
            "extended key usage (layers.certs: CA.issue(..., client=True))",
            reason="bad_certificate",
        )
    return HandshakeError(f"the client's certificate was refused: {message}", reason="bad_certificate")


# --------------------------------------------------------------------------- handshake checks


class _Check:
    """What one side checks and how it explains a failure."""

    def __init__(
        self, *, role: str, host: str | None, alpn: tuple[str, ...], check_name: bool, has_cert: bool = False
    ) -> None:
        self.role = role
        self.host = host
        self.alpn = alpn
        self.check_name = check_name
        self.has_cert = has_cert  # a client that the spec gave a certificate

    def verify(self, conn: ssl.SSLObject) -> None:
        """After the handshake: the host name check (ours, so a mismatch can list the names)."""
        if not self.check_name or self.host is None:
            return
        cert = conn.getpeercert()
        if not cert:  # pragma: no cover - CERT_REQUIRED makes OpenSSL refuse first
            raise HandshakeError("the server presented no certificate", reason="bad_certificate")
        names = _cert_names(cert)
        if not _name_matches(self.host, names):
            shown = ", ".join(f"{kind}:{value}" for kind, value in names) or "no names at all"
            raise HandshakeError(
                f"the server's certificate is not valid for {self.host!r}: it is valid for {shown}",
                reason="hostname_mismatch",
            )

    def failure(self, exc: ssl.SSLError, conn: ssl.SSLObject) -> HandshakeError:
        refusal = conn._refusal if isinstance(conn, _Conn) else None
        if refusal is not None:
            return refusal
        text = _ssl_text(exc)
        reason = exc.reason or ""
        peer = "server" if self.role == "client" else "client"
        if isinstance(exc, ssl.SSLCertVerificationError):
            code = exc.verify_code
            message = exc.verify_message
            if self.role == "server":
                return _client_certificate_error(code, message)
            if code in (2, 18, 19, 20, 21):
                return HandshakeError(
                    f"the server's certificate is not trusted ({message}): it was not issued by a CA this "
                    "client trusts; pass ca= the CA that issued it",
                    reason="unknown_ca",
                )
            if code in (62, 64):
                return HandshakeError(
                    f"the server's certificate is not valid for {self.host!r} ({message})", reason="hostname_mismatch"
                )
            return HandshakeError(f"the server's certificate was refused: {message}", reason="bad_certificate")
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLSyscallError):
            return HandshakeError(f"the {peer} closed the connection during the TLS handshake", reason="eof")
        lowered = text.lower()
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return HandshakeError(
                "the client sent no certificate, and this server requires one (client_cert='required'); "
                "the client must present one issued by a CA in client_ca=",
                reason="certificate_required",
            )
        refused = _certificate_alert(text, peer)
        if refused is not None:
            return refused
        if "no application protocol" in lowered:
            return HandshakeError(
                f"no shared ALPN protocol: the server accepts none of {list(self.alpn)}", reason="no_alpn"
            )
        if "unrecognized name" in lowered:
            return HandshakeError(
                f"the server has no certificate for the name {self.host!r} (it answered 'unrecognized name')",
                reason="unrecognized_name",
            )
        if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION") or (
            "protocol version" in lowered
        ):
            return HandshakeError(
                f"no TLS version in common with the {peer} ({text}); this side's default is TLS 1.2 or later",
                reason="protocol_version",
            )
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG"):
            return HandshakeError(f"the {peer} does not speak TLS ({text}): is it a plain-text port?", reason="not_tls")
        if reason in ("NO_SHARED_CIPHER", "SSLV3_ALERT_HANDSHAKE_FAILURE") or "handshake failure" in lowered:
            if self.role == "client" and conn.cipher() is not None:
                # The server chose a cipher suite, then refused: in TLS 1.2 that is how OpenSSL
                # (and others) refuse a client that sent no certificate when one is required.
                if self.has_cert:
                    return HandshakeError(f"the server ended the handshake after its hello ({text})", reason="failed")
                return HandshakeError(
                    f"the server ended the TLS handshake after its hello ({text}): most likely it requires a "
                    "client certificate and this client has none; give tls.client cert=",
                    reason="certificate_required",
                )
            return HandshakeError(
                f"the TLS handshake failed: no cipher suite or key exchange in common with the {peer} ({text}); "
                "this side allows ECDHE with AES-GCM or ChaCha20 only",
                reason="no_shared_cipher",
            )
        return HandshakeError(f"the TLS handshake with the {peer} failed: {text}", reason="failed")


def _cert_names(cert: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The subjectAltName entries of a decoded certificate that name a host: ``("DNS"|"IP", value)``."""
    out: list[tuple[str, str]] = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            out.append(("DNS", value))
        elif kind == "IP Address":
            out.append(("IP", value.strip()))
    return out


def _name_matches(host: str, names: Sequence[tuple[str, str]]) -> bool:
    """RFC 6125 matching, strict: subjectAltName only (never the common name); a wildcard only as
    the whole leftmost label of a name with at least two more labels, matching exactly one label;
    an IP address only against IP entries."""
    ip = _ip(host)
    if ip is not None:
        return any(kind == "IP" and _ip(value) == ip for kind, value in names)
    wanted = _normalize_name(host)
    first, _, rest = wanted.partition(".")
    for kind, value in names:
        if kind != "DNS":
            continue
        pattern = value.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and rest and first and pattern[2:] == rest and pattern.count(".") >= 2:
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        return None


def _normalize_name(name: str) -> str:
    """Lower case, no trailing dot, IDNA A-labels (what SNI and certificates carry)."""
    name = name.rstrip(".").lower()
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return name


# --------------------------------------------------------------------------- contexts


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF


def _check_alpn(alpn: Sequence[str]) -> tuple[str, ...]:
    if isinstance(alpn, str | bytes):
        raise TypeError("alpn is a list of protocol names, such as ['h2', 'http/1.1']")
    out = tuple(alpn)
    for name in out:
        if not isinstance(name, str) or not 0 < len(name.encode()) < 256:
            raise ValueError(f"ALPN protocol names are non-empty strings of at most 255 bytes, not {name!r}")
    return out


def _load_trust(ctx: ssl.SSLContext, ca: CA) -> None:
    """Make ``ctx`` trust ``ca``: an object with ``configure_trust(ctx)``, PEM bytes or text, a
    directory of hashed PEM files, or a PEM file (the client's ``ca=``, the server's ``client_ca=``)."""
    if isinstance(ca, TrustSource):
        ca.configure_trust(ctx)
    elif isinstance(ca, bytes):
        ctx.load_verify_locations(cadata=ca.decode("ascii"))
    elif isinstance(ca, str) and ca.lstrip().startswith("-----BEGIN"):
        ctx.load_verify_locations(cadata=ca)
    elif os.path.isdir(ca):
        ctx.load_verify_locations(capath=os.fspath(ca))
    else:
        ctx.load_verify_locations(cafile=os.fspath(ca))


def _load_cert(ctx: ssl.SSLContext, cert: Cert) -> None:
    """Make ``ctx`` present ``cert``: an object with ``configure_cert(ctx)`` or a ``(certfile,
    keyfile)`` pair (the server's certificates, the client's ``cert=``)."""
    if isinstance(cert, CertSource):
        cert.configure_cert(ctx)
    else:
        certfile, keyfile = cert
        ctx.load_cert_chain(os.fspath(certfile), os.fspath(keyfile))


def _check_client_cert(client_cert: object, client_ca: CA | None) -> ClientCert:
    """The server's ``client_cert`` made explicit: ``"required"`` when ``client_ca`` is given
    without it, ``"none"`` when neither is; a contradiction is a ValueError."""
    if client_cert is None:
        return "none" if client_ca is None else "required"
    if client_cert not in ("none", "optional", "required"):
        raise ValueError(f"client_cert is 'none', 'optional' or 'required', not {client_cert!r}")
    if client_cert != "none" and client_ca is None:
        raise ValueError(
            f"client_cert={client_cert!r} needs client_ca=: the CA whose client certificates this server trusts"
        )
    if client_cert == "none" and client_ca is not None:
        raise ValueError("client_ca= is given but client_cert='none' asks for no client certificate: drop one of them")
    return client_cert


def _client_context(*, verify: bool, ca: CA | None, cert: Cert | None, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    # The chain is checked by OpenSSL; the host name by _Check.verify (same rules, better message).
    ctx.check_hostname = False
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        if ca is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _load_trust(ctx, ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        _load_cert(ctx, cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


_CLIENT_CERT_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _server_context(cert: Cert, alpn: tuple[str, ...], client_ca: CA | None, client_cert: ClientCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    _load_cert(ctx, cert)
    if client_ca is not None and client_cert != "none":
        ctx.verify_mode = _CLIENT_CERT_MODES[client_cert]
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        _load_trust(ctx, client_ca)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))  # OpenSSL picks by the server's order: the first of ours the client offers
    return ctx


def _offered_alpn(data: bytes | bytearray) -> list[str] | None:
    """The ALPN protocol names in the ClientHello at the start of ``data`` (plaintext in every TLS
    version); ``None`` if it has no ALPN extension or cannot be read."""
    try:
        hs = bytearray()
        pos = 0
        while len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4], "big"):
            if data[pos] != 22:  # handshake record
                return None
            length = int.from_bytes(data[pos + 3 : pos + 5], "big")
            if pos + 5 + length > len(data):
                return None
            hs += data[pos + 5 : pos + 5 + length]
            pos += 5 + length
        if hs[0] != 1:  # client_hello
            return None
        body = memoryview(hs)[4 : 4 + int.from_bytes(hs[1:4], "big")]
        p = 34  # legacy_version, random
        p += 1 + body[p]  # session id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher suites
        p += 1 + body[p]  # compression methods
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        p += 2
        while p + 4 <= end:
            kind = int.from_bytes(body[p : p + 2], "big")
            size = int.from_bytes(body[p + 2 : p + 4], "big")
            p += 4
            if kind == 16:  # application_layer_protocol_negotiation
                ext = body[p : p + size]
                names: list[str] = []
                q = 2
                while q < 2 + int.from_bytes(ext[0:2], "big"):
                    n = ext[q]
                    names.append(bytes(ext[q + 1 : q + 1 + n]).decode("ascii", "replace"))
                    q += 1 + n
                return names
            p += size
    except IndexError:
        return None
    return None


class _Chooser:
    """The server's SNI callback: picks the certificate's context by name and refuses, with the
    right alert, a name it has no certificate for or a client with no ALPN protocol in common."""

    def __init__(
        self,
        exact: dict[str, ssl.SSLContext],
        wild: dict[str, ssl.SSLContext],
        default: ssl.SSLContext | None,
        alpn: tuple[str, ...],
    ) -> None:
        self.exact = exact
        self.wild = wild
        self.default = default
        self.alpn = alpn

    def pick(self, name: str | None) -> ssl.SSLContext | None:
        if name is not None:
            name = _normalize_name(name)
            if name in self.exact:
                return self.exact[name]
            _, _, rest = name.partition(".")
            if rest in self.wild:
                return self.wild[rest]
        return self.default

    def __call__(self, conn: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
        if not isinstance(conn, _Conn):  # pragma: no cover - our contexts make _Conn objects
            return None
        try:
            conn._sni = name
            chosen = self.pick(name)
            if chosen is None:
                known = sorted(self.exact) + sorted("*." + w for w in self.wild)
                conn._refusal = HandshakeError(
                    f"no certificate for the server name {name!r} (this server has certificates for "
                    f"{', '.join(known)}, and no default)",
                    reason="unrecognized_name",
                )
                return _ALERT_UNRECOGNIZED_NAME
            if chosen is not ctx:
                conn.context = chosen
            if self.alpn and conn._hello is not None:
                offered = _offered_alpn(conn._hello)
                conn._hello = None
                if offered and not set(offered) & set(self.alpn):
                    conn._refusal = HandshakeError(
                        f"no shared ALPN protocol: the client offered {offered}, this server accepts {list(self.alpn)}",
                        reason="no_alpn",
                    )
                    return _ALERT_NO_APPLICATION_PROTOCOL
            conn._hello = None
            return None
        except Exception as exc:  # an exception here would only be printed by the ssl module
            log.exception("tls: the SNI callback failed")
            conn._refusal = HandshakeError(f"the server failed choosing a certificate: {exc}", reason="failed")
            return _ALERT_INTERNAL_ERROR


# --------------------------------------------------------------------------- specs


def _need_bytestream(lower: object, what: str) -> ByteStream:
    if not isinstance(lower, ByteStream):
        raise TypeError(f"{what} attaches to a ByteStream, not {type(lower).__name__}")
    return lower


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
    try:
        with trio.move_on_at(deadline) as scope:
            await stream._handshake(deadline, check)
    except Timeout:
        raise Timeout(f"TLS handshake {who} timed out") from None
    if scope.cancelled_caught:
        raise Timeout(f"TLS handshake {who} timed out")


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
        lower = _need_bytestream(lower, "tls.client")
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
        check_name = ours and self.verify
        has_cert = self.cert is not None
        check = _Check(role="client", host=host, alpn=tuple(self.alpn), check_name=check_name, has_cert=has_cert)
        await _run_handshake(stream, check, deadline, f"with {host or lower.info.get('peer')!r}")
        stream._fill_info(host)
        log.debug("tls client: %s %s alpn=%r with %s", conn.version(), conn.cipher(), stream.info["alpn"], host)
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
    """

    certs: Certs | None = None
    _: KW_ONLY
    alpn: Sequence[str] = ()
    client_ca: CA | None = None
    client_cert: ClientCert | None = None
    context: ssl.SSLContext | None = None
    ragged_eofs: bool = False
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
        mapping = self.certs if isinstance(self.certs, Mapping) else {None: self.certs}
        if not mapping:
            raise ValueError("tls.server certs mapping is empty")
        contexts: dict[object, ssl.SSLContext] = {}
        exact: dict[str, ssl.SSLContext] = {}
        wild: dict[str, ssl.SSLContext] = {}
        default: ssl.SSLContext | None = None
        for name, cert in mapping.items():
            key: object = cert if isinstance(cert, CertSource) else tuple(os.fspath(p) for p in cert)
            ctx = contexts.get(key)
            if ctx is None:
                ctx = contexts[key] = _server_context(cert, alpn, self.client_ca, client_cert)
            if name is None:
                default = ctx
            elif name.startswith("*."):
                wild[_normalize_name(name[2:])] = ctx
            elif "*" in name:
                raise ValueError(
                    f"certificate name {name!r}: a wildcard must be the whole leftmost label: *.example.test"
                )
            else:
                exact[_normalize_name(name)] = ctx
        base = default or next(iter(contexts.values()))
        base.sslobject_class = _Conn
        base.sni_callback = _Chooser(exact, wild, default, alpn)
        object.__setattr__(self, "_ctx", base)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> TLSStream:
        """Run the handshake over ``lower`` under ``deadline``; return the TLS stream.

        Raises :class:`HandshakeError` (why the handshake failed), :class:`~stack.Timeout`, or
        what ``lower`` raised. ``lower`` is not closed on failure.
        """
        lower = _need_bytestream(lower, "tls.server")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = self._ctx.wrap_bio(incoming, outgoing, server_side=True)
        if isinstance(conn, _Conn):
            conn._hello = bytearray()
        stream = TLSStream(lower, conn, incoming, outgoing, ragged_eofs=self.ragged_eofs)
        check = _Check(role="server", host=None, alpn=tuple(self.alpn), check_name=False)
        await _run_handshake(stream, check, deadline, f"with {lower.info.get('peer')!r}")
        sni = conn._sni if isinstance(conn, _Conn) else None
        stream._fill_info(sni)
        log.debug("tls server: %s %s alpn=%r sni=%r", conn.version(), conn.cipher(), stream.info["alpn"], sni)
        return stream
