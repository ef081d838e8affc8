"""The checks of received HTTP/2 header lists, and the parsing of an ``Upgrade: h2c`` request.

Sans-io helpers of the HTTP/2 layer (re-exported by ``_h2core.py``, whose :class:`H2Core`
turns h2's own inbound validation off):

* :func:`check_fields` checks a received header list in one pass (RFC 9113 8.2, 8.3: field
  names, values, pseudo-header order and set, connection-specific fields, ``te``) and splits
  it into pseudo-headers and regular fields; a violation raises :class:`Malformed`, which the
  layer answers as a malformed message (a stream error of type PROTOCOL_ERROR, 8.1.1). Names
  and short values found valid are remembered process-wide (a few thousand at most), so a
  repeated head costs set lookups only. A value may not hold a control character other than
  HTAB (RFC 9110 5.5), which RFC 9113 8.2.1 lets a recipient refuse.
* :func:`check_request_pseudo` and :func:`check_response_pseudo`: the pseudo-header rules of a
  request (8.3.1, RFC 8441 4) and of a response (8.3.2).
* :func:`h2c_settings`: whether an HTTP/1.1 request asks for a valid ``Upgrade: h2c`` (RFC 7540
  3.2), and its decoded HTTP2-Settings.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._http_model import Headers

__all__ = ["Malformed", "check_fields", "check_request_pseudo", "check_response_pseudo", "h2c_settings"]

# ---- received header lists ------------------------------------------------------------------
# h2's own inbound validation (a chain of seven generators per header block) is the single
# largest cost of a small request; this is the same set of RFC 9113 8.2/8.3 rules in one pass.
# A violation is a malformed message: a *stream* error of type PROTOCOL_ERROR (8.1.1).

_ILLEGAL_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]|.:")
_ILLEGAL_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB (RFC 9110 5.5)
_WS = (0x20, 0x09)
_CONNECTION_SPECIFIC = frozenset([b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"])
_checked_names: set[bytes] = set()  # names and (short) values already found valid
_checked_values: set[bytes] = {b""}


class Malformed(Exception):
    """A received header list breaks RFC 9113 8.2/8.3; ``str(exc)`` says which rule."""


def check_fields(raw: Any, pseudo_allowed: frozenset[bytes]) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    """Check a received header list; return ``(pseudo-headers, regular fields)``.

    Regular fields keep their order, multiple ``cookie`` fields are joined with ``"; "``
    (9113 8.2.3). ``pseudo_allowed`` is the set of pseudo-headers this kind of block may carry
    (empty for trailers). Raises :class:`Malformed`.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] | None = None
    names = _checked_names
    values = _checked_values
    for name, value in raw:
        if name not in names:
            _check_name(name)
        if value not in values:
            _check_value(name, value)
        if name[0] == 0x3A:  # ":"
            if regular or cookies:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if name not in pseudo_allowed:
                raise Malformed(f"pseudo-header {name!r} not allowed here")
            if name in pseudo:
                raise Malformed(f"duplicate pseudo-header {name!r}")
            pseudo[name] = value
        elif name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
        else:
            if name == b"te" and value.lower() != b"trailers":
                raise Malformed(f"te may only be 'trailers', not {value!r}")
            regular.append((name, value))
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    return pseudo, regular


def _check_name(name: bytes) -> None:
    if not name:
        raise Malformed("empty field name")
    if name[0] == 0x3A:
        if _ILLEGAL_NAME.search(name, 1) or b":" in name[1:]:
            raise Malformed(f"invalid pseudo-header name {name!r}")
    elif _ILLEGAL_NAME.search(name):
        raise Malformed(f"invalid field name {name!r} (uppercase, a control or non-ASCII character, or ':')")
    elif name in _CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode('latin-1')!r}")
    if len(_checked_names) < 4096:
        _checked_names.add(name)


def _check_value(name: bytes, value: bytes) -> None:
    if value and (value[0] in _WS or value[-1] in _WS or _ILLEGAL_VALUE.search(value)):
        raise Malformed(f"invalid value for {name!r}: {value!r}")
    if len(value) <= 128 and len(_checked_values) < 4096:  # values repeat: user-agent, :authority
        _checked_values.add(value)


def check_request_pseudo(pseudo: dict[bytes, bytes], regular: list[tuple[bytes, bytes]]) -> None:
    """The pseudo-header rules of a request (RFC 9113 8.3.1, RFC 8441 4). Raises Malformed."""
    method = pseudo.get(b":method")
    if method is None:
        raise Malformed("no :method")
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise Malformed("a CONNECT request may not carry :scheme or :path")
        if b":authority" not in pseudo:
            raise Malformed("a CONNECT request needs :authority")
    else:
        if b":protocol" in pseudo and method != b"CONNECT":
            raise Malformed(":protocol is only for CONNECT")
        path = pseudo.get(b":path")
        if b":scheme" not in pseudo or path is None:
            raise Malformed("a request needs :scheme and :path")
        if not path:
            raise Malformed("empty :path")
    authority = pseudo.get(b":authority")
    host = None
    for name, value in regular:
        if name == b"host":
            if host is not None:
                raise Malformed("more than one host field")
            host = value
    if authority is None and host is None:
        raise Malformed("neither :authority nor host")
    if authority is not None and host is not None and authority != host:
        raise Malformed(f":authority {authority!r} and host {host!r} differ")


def check_response_pseudo(pseudo: dict[bytes, bytes]) -> int:
    """The status of a response head (RFC 9113 8.3.2). Raises Malformed."""
    status = pseudo.get(b":status")
    if status is None or len(status) != 3 or not status.isdigit():
        raise Malformed(f"bad or missing :status {status!r}")
    return int(status)


def h2c_settings(headers: Headers) -> bytes | None:
    """For an HTTP/1.1 server: the decoded HTTP2-Settings payload if ``headers`` ask for a valid
    ``Upgrade: h2c`` (RFC 7540 3.2: an ``h2c`` token in Upgrade, ``Connection`` naming
    ``Upgrade`` and ``HTTP2-Settings``, exactly one well-formed HTTP2-Settings), else ``None``
    (then serve the request over HTTP/1.1 and ignore the Upgrade)."""
    upgrade = [t.strip().lower() for v in headers.get_all("upgrade") for t in v.split(",")]
    if "h2c" not in upgrade:
        return None
    connection = {t.strip().lower() for v in headers.get_all("connection") for t in v.split(",")}
    if not {"upgrade", "http2-settings"} <= connection:
        return None
    values = headers.get_all("http2-settings")
    if len(values) != 1:
        return None
    value = values[0].strip().rstrip("=")
    if not _BASE64URL.fullmatch(value):
        return None
    try:
        payload = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(payload) % 6:
        return None
    return payload


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
