"""TLS errors: :class:`HandshakeError` and the translation of :mod:`ssl` errors into the family.

``ssl.SSLError`` never escapes the layer. A failed handshake is a :class:`HandshakeError` whose
``reason`` is a short code (the handshake's own explanations live with its checks, in
:mod:`layers._tls_stream`); an error after the handshake (:func:`_data_error`) is a
:class:`~stack.Broken` (the peer aborted, or the connection failed), a
:class:`~stack.ProtocolError` (the peer broke TLS), or a :class:`HandshakeError` again when the
peer's alert refuses this side's certificate: a TLS 1.3 server checks the client's certificate
after the client's handshake is over, so a refused client learns of it on its first receive.
"""

from __future__ import annotations

import re
import ssl

from stack.errors import Broken, ProtocolError


class HandshakeError(Broken):
    """The TLS handshake failed (or, for a TLS 1.3 client, its certificate was refused just after:
    see the docstring of :mod:`layers.tls`). The message says why and what to check; ``reason`` is a code:

    ``unknown_ca`` (the certificate's issuer is not trusted), ``hostname_mismatch``,
    ``bad_certificate`` (expired, not yet valid, or otherwise refused), ``certificate_required``
    (the server requires a client certificate and the client sent none), ``no_alpn`` (no
    application protocol in common), ``unrecognized_name`` (the server has no certificate for the
    name asked for), ``protocol_version`` (no TLS version in common), ``no_shared_cipher``,
    ``not_tls`` (the peer does not speak TLS), ``eof`` (the peer closed the connection during the
    handshake), ``failed`` (anything else).

    When a spec parameter would fix it, ``parameter`` names it (``"ca"``, ``"cert"`` of
    :class:`~layers.tls.client`; ``"client_ca"`` of :class:`~layers.tls.server`) and ``problem``
    is the message without the ``advice`` (which names the parameter): a program with its own
    options says what to do in its own words (the command line's ``--cacert``). Else
    ``parameter`` is ``None`` and ``problem`` is the whole message.
    """

    def __init__(self, message: str, *, reason: str, parameter: str | None = None, advice: str = "") -> None:
        super().__init__(f"{message}; {advice}" if advice else message)
        self.reason = reason
        self.parameter = parameter
        self.problem = message
        self.advice = advice


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
                f"{refused.problem} (refused after this side's handshake was done: a TLS 1.3 server checks the "
                "client's certificate after the client's last handshake message)",
                reason=refused.reason,
                parameter=refused.parameter,
                advice=refused.advice,
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
            f"the {peer} requires a certificate from this side and got none ({text})",
            reason="certificate_required",
            parameter="cert",
            advice="present one with tls.client(cert=...)",
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
            f"the client's certificate is not trusted ({message}): it was not issued by a CA this server trusts",
            reason="unknown_ca",
            parameter="client_ca",
            advice="to trust the CA that issued it, give it as tls.server(client_ca=...)",
        )
    if code == 26:  # X509_V_ERR_INVALID_PURPOSE
        return HandshakeError(
            f"the client's certificate is not for client authentication ({message}): it needs the clientAuth "
            "extended key usage (layers.certs: CA.issue(..., client=True))",
            reason="bad_certificate",
        )
    return HandshakeError(f"the client's certificate was refused: {message}", reason="bad_certificate")
