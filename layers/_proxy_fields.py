"""The proxy's header rules (RFC 9110 section 7.6), as :mod:`layers.reverse_proxy` applies them.

Theory of operation: hop-by-hop fields (:data:`HOP_BY_HOP`, every ``proxy-*`` field and those the
Connection header names) never cross the proxy; what goes to the backend is Host first (from the
request's authority), the end-to-end fields (HTTP/2's split Cookie fields joined into one), Via
and Forwarded (RFC 7239); what goes back to the client is the end-to-end fields and Via. Fields
are handled as on the wire (lower-case byte names) in one pass each way; the proxy keeps the
results per head (``ProxyApp``), so these run once per head shape. Re-exported by
:mod:`layers.reverse_proxy`, where the public names are documented.
"""

from __future__ import annotations

import re
from typing import Any

from layers import http

__all__ = [
    "HOP_BY_HOP", "PSEUDONYM", "field_value", "forwarded_value", "request_headers", "response_headers",
]  # fmt: skip

PSEUDONYM = "trio-stack"
"""How this proxy names itself in Via."""

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection", "expect"}
)
"""Fields never forwarded (plus every ``proxy-*`` field and those the Connection header names)."""

_DROP = frozenset(name.encode("latin-1") for name in HOP_BY_HOP) | {b"host"}
"""Names never forwarded as they are, as on the wire (Host is written first, from the authority)."""

_VIA = {version: f"{version} {PSEUDONYM}".encode("latin-1") for version in ("1.0", "1.1", "2")}

_TOKEN = re.compile(r"[\w!#$%&'*+.^`|~-]+")
"""An RFC 7230 token; ``\\w`` matches what ``str.isalnum()`` accepts, and ``_``."""


def _via(version: str) -> bytes:
    via = _VIA.get(version)
    return via if via is not None else f"{version} {PSEUDONYM}".encode("latin-1")


_NO_TOKENS: frozenset[bytes] = frozenset()


def field_value(raw: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case, as on the wire) in ``raw``, or None."""
    for k, v in raw:
        if k == name:
            return v
    return None


def _end_to_end(headers: http.Headers) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes]]:
    """The fields of ``headers`` without the hop-by-hop ones (and without Host), and the tokens
    of its Connection fields (lower-case bytes). One pass over the raw fields; the Connection
    tokens are only worked out when a Connection field is there (on the wire names are
    lower-case already)."""
    raw = headers.raw
    out = [field for field in raw if field[0] not in _DROP and not field[0].startswith(b"proxy-")]
    if len(out) == len(raw):
        return out, _NO_TOKENS
    values = [v for k, v in raw if k == b"connection"]
    if not values:  # only Host (always there in HTTP/1.1) or other fixed names were dropped
        return out, _NO_TOKENS
    tokens = frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())
    if tokens:
        out = [field for field in out if field[0] not in tokens]
    return out, tokens


def _node(info: Any) -> str:
    """The client as an RFC 7239 node: ``for=1.2.3.4``, ``for="[::1]"``, or ``for=unknown``."""
    peer = info.get("peer")
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        return f'"[{host}]"' if ":" in host else host
    return "unknown"


def _quoted(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarded_value(info: Any, host: str) -> bytes:
    proto = "https" if "tls_version" in info else "http"
    forwarded = f"for={_node(info)};proto={proto}" + (f";host={_quoted(host)}" if host else "")
    return forwarded.encode("latin-1")


def request_headers(request: http.Request, forwarded: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """What goes to the backend: Host, the end-to-end fields, Via and Forwarded added
    (``forwarded``: its value, if the caller has it already)."""
    host = request.authority
    fields, _ = _end_to_end(request.headers)
    if len(fields) > 1:  # (one field cannot be two Cookie fields)
        cookies = [v for k, v in fields if k == b"cookie"]
        if len(cookies) > 1:  # HTTP/2 splits Cookie; HTTP/1.1 wants one field (RFC 9113 8.2.3)
            at = next(i for i, (k, _) in enumerate(fields) if k == b"cookie")
            fields = [(k, v) for k, v in fields if k != b"cookie"]
            fields.insert(at, (b"cookie", b"; ".join(cookies)))
    return [
        *([(b"host", host.encode("latin-1"))] if host else ()),
        *fields,
        (b"via", _via(request.http_version)),
        (b"forwarded", forwarded if forwarded is not None else forwarded_value(request.info, host)),
    ]


def response_headers(response: http.Response) -> tuple[list[tuple[bytes, bytes]], bool]:
    """What goes back to the client (the end-to-end fields, Via added), and whether the backend
    keeps the connection (not HTTP/1.0, no ``Connection: close``)."""
    out, tokens = _end_to_end(response.headers)
    out.append((b"via", _via(response.http_version)))
    return out, response.http_version != "1.0" and b"close" not in tokens
