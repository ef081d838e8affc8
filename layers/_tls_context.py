"""TLS contexts and trust: how the specs build :class:`ssl.SSLContext` objects.

Secure defaults (:func:`_harden`): TLS 1.2 or later, :data:`CIPHERS` for TLS 1.2, no compression,
no renegotiation, no session tickets, an unexpected EOF is an error. Verification is X.509 strict.
A client context checks the chain (OpenSSL) but not the host name (the stream's handshake check
does, with a better message); it trusts the system's CAs or ``ca=`` (:func:`_load_trust`) and may
present ``cert=`` (:func:`_load_cert`). A server context per certificate (:func:`_server_context`)
may ask clients for a certificate (``client_cert``, checked by :func:`_check_client_cert`).

A server with several certificates (:func:`_sni_context`) hands OpenSSL one base context whose
SNI callback (:class:`_Chooser`) switches to the certificate's context by name (exact, then
wildcard, then default) and refuses, with the right alert, a name it has no certificate for, or a
client whose ALPN offer (read from the ClientHello by :func:`_offered_alpn`, since OpenSSL's own
refusal does not say what was offered) has nothing in common with the server's. What the callback
decided travels on the connection object (:class:`_Conn`) back to the handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from ._tls_errors import HandshakeError
from ._tls_names import _normalize_name

log = logging.getLogger("stack.tls")

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


class _Conn(ssl.SSLObject):
    """The SSLObject class of the server contexts built here: it carries what the SNI callback
    needs (the client's first bytes, to read the ALPN list) and what it decided."""

    _hello: bytearray | None = None
    _sni: str | None = None
    _refusal: HandshakeError | None = None


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


def _sni_context(certs: Certs, alpn: tuple[str, ...], client_ca: CA | None, client_cert: ClientCert) -> ssl.SSLContext:
    """The server's context for ``certs`` (one certificate, or host names to certificates with a
    ``None`` key for the default): one context per distinct certificate, the base one choosing
    among them by SNI."""
    mapping = certs if isinstance(certs, Mapping) else {None: certs}
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
            ctx = contexts[key] = _server_context(cert, alpn, client_ca, client_cert)
        if name is None:
            default = ctx
        elif name.startswith("*."):
            wild[_normalize_name(name[2:])] = ctx
        elif "*" in name:
            raise ValueError(f"certificate name {name!r}: a wildcard must be the whole leftmost label: *.example.test")
        else:
            exact[_normalize_name(name)] = ctx
    base = default or next(iter(contexts.values()))
    base.sslobject_class = _Conn
    base.sni_callback = _Chooser(exact, wild, default, alpn)
    return base
