"""Host names: which names a certificate is valid for, and whether one matches (RFC 6125).

The client checks the server's host name itself (the context's ``check_hostname`` is off) so that
a mismatch can list the names the certificate *is* valid for. The rules are strict:
subjectAltName entries only (never the subject's common name); a wildcard only as the whole
leftmost label of a name with at least two more labels, standing for exactly one label; an IP
address only against IP entries (``[::1]`` is read as ``::1``). Names are compared as SNI and
certificates carry them: lower case, no trailing dot, IDNA A-labels (:func:`_normalize_name`,
which the server's SNI choice uses too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any


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
