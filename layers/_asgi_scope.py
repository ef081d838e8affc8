"""What every ASGI scope of one connection shares: the client and server addresses, the scheme and
the ``extensions`` (with the ``tls`` one), computed once per connection and remembered.

Theory of operation. An HTTP app of ours sees one request at a time and no connection object,
but every request of a connection carries the same :class:`~stack.Info` (HTTP/1.1 and HTTP/2
make one per connection). :class:`ConnectionFacts` holds what the scopes need from it, in a
small table keyed by the identity of that ``info`` (an ``Info`` is not hashable; the table
holds the ``info`` itself, so an id is never reused while it is in the table) and emptied when
it grows past :data:`_MAX_CONNECTIONS`, so a request pays a dict lookup, not a walk through
the layers' info maps. It also holds the connection's ``http`` scope as a template, every key
in place: a request's scope is a copy of it (a C-level clone, no key inserted) with the request's
own values set. The ``tls`` extension follows the ASGI TLS extension: ``tls_version``
and ``cipher_suite`` as the integers of the TLS registries, ``client_cert_chain`` as PEM (the
peer's leaf certificate: the layers keep no more of the chain), ``server_cert`` as given to
:class:`layers.asgi.ASGIApp` (the TLS layer does not expose its own).

Also here: :data:`ASGI_VERSION` and :class:`ClientDisconnected`, the error ``send`` raises once
the client is gone (an :class:`OSError`, as ASGI 2.4 asks, and a :class:`~stack.Broken`).
"""

from __future__ import annotations

import ssl
from typing import Any

from layers._http_model import remember
from stack.errors import Broken

__all__ = ["ASGI_VERSION", "ClientDisconnected", "ConnectionFacts", "facts_of", "tls_extension"]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
"""The ``asgi`` key of every scope (shared: apps read it, never write it)."""

_MAX_CONNECTIONS = 4096

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_cipher_ids: dict[str, int] | None = None


class ClientDisconnected(Broken, OSError):
    """``send`` on a connection or stream the client has left (ASGI 2.4: an :class:`OSError`)."""


def _cipher_id(name: str | None) -> int | None:
    """The IANA number of an OpenSSL cipher name (``None`` if unknown)."""
    global _cipher_ids
    if name is None:
        return None
    if _cipher_ids is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _cipher_ids = {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}
    return _cipher_ids.get(name)


def tls_extension(info: Any, server_cert: str | None) -> dict[str, Any]:
    """The ASGI ``tls`` extension of a connection whose ``info`` has TLS keys."""
    der = info.get("peer_certificate")
    subject = info.get("peer_subject")
    return {
        "server_cert": server_cert,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": subject if isinstance(subject, str) else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(info.get("tls_version") or ""),
        "cipher_suite": _cipher_id(info.get("cipher")),
    }


def _address(addr: Any) -> list[Any] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return [str(addr[0]), int(addr[1])]
    return None


class ConnectionFacts:
    """What the scopes of one connection share (see the module docstring)."""

    __slots__ = ("client", "extensions", "http_scope", "http_scope_state", "info", "secure", "server", "ws_extensions")

    def __init__(self, info: Any, server_cert: str | None) -> None:
        self.info = info
        self.client = _address(info.get("peer"))
        self.server = _address(info.get("local"))
        self.secure = "tls_version" in info
        ext: dict[str, Any] = {
            "http.response.trailers": {},
            "http.response.pathsend": {},
            "http.response.early_hint": {},
        }
        ws: dict[str, Any] = {"websocket.http.response": {}}
        if self.secure:
            ext["tls"] = ws["tls"] = tls_extension(info, server_cert)
        self.extensions = ext
        self.ws_extensions = ws
        # The http scope of this connection's requests, every key there (the request's own
        # values are placeholders, replaced in the copy): a request copies it (one C-level
        # clone, no key inserted) and sets its own eight (``layers._asgi_http.http_scope``).
        self.http_scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [],
            "client": self.client,
            "server": self.server,
            "extensions": ext,
        }
        self.http_scope_state = {**self.http_scope, "state": {}}  # the same, when the app has a lifespan


def facts_of(table: dict[int, ConnectionFacts], info: Any, server_cert: str | None) -> ConnectionFacts:
    """The facts of ``info``'s connection, from ``table`` or computed and remembered there."""
    facts = table.get(id(info))
    if facts is None or facts.info is not info:
        facts = remember(table, id(info), ConnectionFacts(info, server_cert), _MAX_CONNECTIONS)
    return facts
