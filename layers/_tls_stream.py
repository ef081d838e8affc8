"""The TLS stream: the handshake and the record I/O of :class:`TLSStream` over OpenSSL's memory BIOs.

See :mod:`layers.tls` for every semantic (deadlines, EOF, done, detach). In short: ciphertext is
received from the lower stream in :data:`RECV_SIZE` chunks and written into OpenSSL's incoming
buffer with no ``await`` between, and plaintext leaves OpenSSL only when it is returned, so a
receive that times out consumes nothing; ``recv_into`` lets OpenSSL decrypt straight into the
caller's buffer. A send step encrypts at most :data:`SEND_CHUNK` bytes, and only once what was
committed before has gone down, so a timeout leaves an exact ``sent`` and a usable stream.
Post-handshake output produced while receiving goes out first with the next send, or is sent by
the receiving task itself when no task is sending.

The handshake (:meth:`TLSStream._handshake`) runs under a :class:`_Check`: the host name check
after OpenSSL's (ours, so that a mismatch lists the certificate's names) and the explanation of a
failure as a :class:`~layers._tls_errors.HandshakeError` with its ``reason``.

OpenSSL's memory for a connection (tens of KiB: the SSL object, its record buffers, the memory
BIOs) is released when the stream is closed or detached (:meth:`TLSStream._abort` drops the
references; a task still inside the stream then meets :class:`~stack.Closed`) or its handshake
fails, not when the stream object is freed: a server's connection objects often sit in reference
cycles (an upper layer keeps the exception that ended the connection, whose traceback holds the
layers' frames) until the collector's rare full pass, and under connection churn the OpenSSL
state they held piled up and fragmented the C heap (issue 17). For the same reason the ``ssl``
errors ours are chained to lose their tracebacks (:func:`_untraced`): their frames, the ``ssl``
module's methods, hold the SSL object.
"""

from __future__ import annotations

import logging
import ssl
from typing import cast

import trio

from stack.errors import Broken, Closed, ProtocolError, StackError, Timeout
from stack.streams import ByteStream

from ._tls_context import _HELLO_LIMIT, _Conn
from ._tls_errors import HandshakeError, _certificate_alert, _client_certificate_error, _data_error, _ssl_text
from ._tls_names import _cert_names, _name_matches

log = logging.getLogger("stack.tls")

RECV_SIZE = 64 * 1024
"""Ciphertext asked of the lower stream per receive (OpenSSL's buffer takes it all at once).

64 KiB, as the other layers' reads, and below glibc's default mmap threshold (128 KiB): a larger
``recv`` buffer is mmapped, and freeing one unshrunk (a receive that found nothing, or a full
one) raises glibc's dynamic threshold, after which every such transient buffer comes from the
heap and, interleaved with the connections' longer-lived blocks, fragments it (issue 17's soak:
the TLS server's heap crept; with 256 KiB reads about 3 MiB in 3 minutes of the reproducer
``benchmarks/tls_rss.py``, with 64 KiB about 1)."""

_RECORD = 16384
"""The most plaintext one TLS record carries, so the most one ``SSLObject.read`` returns."""

SEND_CHUNK = 64 * 1024
"""Plaintext encrypted per send step: four full records, handed to the lower stream in one send."""

_PLAIN_HTTP_BODY = b"This port speaks TLS: use https:// to reach it.\n"
PLAIN_HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)
"""What a TLS server answers a client whose first byte is an ASCII letter (plain HTTP sent to a
TLS port; a TLS client's first byte is 0x16, a handshake record), as nginx does, before it closes."""


class _Released:
    """What a closed :class:`TLSStream` holds instead of its SSL object and memory BIOs, so that
    OpenSSL frees them at once: any use raises :class:`~stack.Closed` (only a task that was
    inside the stream when it was closed can get here; a new call is refused before)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> object:
        raise Closed("the tls stream was closed")


_RELEASED = _Released()


def _untraced(exc: ssl.SSLError) -> ssl.SSLError:
    """``exc`` without its traceback, to chain as a cause: the traceback's frames (the ``ssl``
    module's methods) hold the SSL object, and the stream's error outlives its close."""
    return exc.with_traceback(None)


class TLSStream(ByteStream):
    """A TLS connection over a lower :class:`~stack.ByteStream`; built by ``client``/``server``
    specs. See :mod:`layers.tls` for every semantic (deadlines, EOF, done, detach)."""

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
        plain_http_hint: bool = False,
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
        self._plain_http_hint = plain_http_hint  # a server: answer plain HTTP with 400 (until the first bytes)

    # ---- handshake ---------------------------------------------------------------------

    async def _handshake(self, deadline: float, check: _Check) -> None:
        # No local for the SSL object: a failure's traceback holds this frame, and the object
        # must go when the stream releases it (``_abort``), not when the exception does.
        lower = self._lower
        while True:
            try:
                self._ssl.do_handshake()
                finished = True
            except ssl.SSLWantReadError:
                finished = False
            except ssl.SSLError as exc:
                error = check.failure(exc, self._ssl)
                try:
                    await self._send_alert(deadline)
                    raise error from _untraced(exc)
                finally:
                    del error  # no cycle through this frame: the SSL object goes with the exception
            if finished:
                check.verify(self._ssl)  # before our last flight goes: a refused server never sees our Finished
            if self._out.pending:
                self._outbuf += self._out.read()
            if self._outbuf:
                await lower.send_from(self._outbuf, deadline=deadline)
            if finished:
                return
            data = await lower.recv(RECV_SIZE, deadline=deadline)
            if self._plain_http_hint:
                self._plain_http_hint = False  # only the first bytes tell
                if data and 97 <= (data[0] | 0x20) <= 122:  # an ASCII letter (a TLS hello starts 0x16)
                    await self._refuse_plain_http(deadline)
            conn = self._ssl
            if isinstance(conn, _Conn) and conn._hello is not None and len(conn._hello) < _HELLO_LIMIT:
                conn._hello += data
            del conn
            if data:
                self._in.write(data)
            else:
                self._lower_eof = True
                self._in.write_eof()

    async def _refuse_plain_http(self, deadline: float) -> None:
        """A client sent plain HTTP (an ASCII letter first) to this TLS server: answer 400 with a
        hint, best effort within a second, and fail the handshake (the caller closes)."""
        self._outbuf += PLAIN_HTTP_REPLY
        with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
            try:
                await self._lower.send_from(self._outbuf, deadline=deadline)
            except StackError as exc:
                log.debug("could not answer plain HTTP on the TLS port: %s", exc)
        raise HandshakeError(
            "the client does not speak TLS: it sent plain HTTP to this TLS port (answered 400 Bad Request, "
            "saying to use https://)",
            reason="not_tls",
        )

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
            raise _data_error(exc, "client" if self._ssl.server_side else "server") from _untraced(exc)
        self._ragged_eof = True
        if not self._ragged_eofs:
            raise Broken(
                "the peer closed the connection without close_notify: the data may be truncated "
                "(use ragged_eofs=True only for protocols that delimit their own data)"
            ) from _untraced(exc)
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
            raise ProtocolError("the peer tried to renegotiate TLS, which is not supported") from _untraced(exc)
        except ssl.SSLError as exc:
            raise _data_error(exc) from _untraced(exc)
        self._outbuf += self._out.read()
        return n

    # ---- ending ------------------------------------------------------------------------

    def _abort(self) -> None:
        """Closed or detached: let OpenSSL free this connection's memory now (see the module
        docstring), whatever still refers to this stream."""
        self._ssl = cast(ssl.SSLObject, _RELEASED)
        self._in = self._out = cast(ssl.MemoryBIO, _RELEASED)

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
            raise _data_error(exc) from _untraced(exc)
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
                    "client trusts",
                    reason="unknown_ca",
                    parameter="ca",
                    advice="to trust the CA that issued it, give it as tls.client(ca=...)",
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
                    "client certificate and this client has none",
                    reason="certificate_required",
                    parameter="cert",
                    advice="present one with tls.client(cert=...)",
                )
            return HandshakeError(
                f"the TLS handshake failed: no cipher suite or key exchange in common with the {peer} ({text}); "
                "this side allows ECDHE with AES-GCM or ChaCha20 only",
                reason="no_shared_cipher",
            )
        return HandshakeError(f"the TLS handshake with the {peer} failed: {text}", reason="failed")
