"""The PROXY protocol (HAProxy's, v1 text and v2 binary): the real client address behind a proxy.

A TCP proxy (HAProxy ``send-proxy``/``send-proxy-v2``, nginx ``proxy_protocol``, AWS NLB...)
opens its connection to the server with one header naming the original client and destination,
then relays the client's bytes. The server side reads that header and hands up a ByteStream
of every following byte, untouched, whose ``info`` tells the truth::

    server = Stack(tcp.listen("127.0.0.1", 8080), proxy_protocol.server(), http.server(app))
    # in the app: request.info["peer"] is the client as the proxy saw it

    backend = Stack(tcp.connect("10.0.0.5", 8080), proxy_protocol.client(("203.0.113.7", 51000),
                    ("10.0.0.5", 8080)), http.client())

The wire format is HAProxy's ``proxy-protocol.txt``. :func:`parse` is the sans-io core (bytes
in, a :class:`Header` or "need more" out); the spec objects do the I/O.

**server** (``proxy_protocol.server(versions=(1, 2), header_timeout=5.0, max_header=4096)``):

* Reads the header on ``attach``, under the attach deadline and at most ``header_timeout``
  seconds (:class:`~stack.Timeout` past it). A connection that does not start with a header of an
  accepted version is refused at once with :class:`~stack.ProtocolError` (as soon as its first
  bytes cannot start one: a direct client is not held until the deadline), and so is a header
  that breaks a rule of the spec (the error names it), or a connection that ends inside the
  header. A v1 header is at most 107 bytes (the spec's bound); a v2 header announcing more than
  ``max_header`` bytes raises :class:`~stack.MessageTooLarge` before its body is read.
* v2 ``LOCAL`` (health checks from the proxy itself) and v1 ``UNKNOWN`` / v2 ``AF_UNSPEC``: the
  connection is accepted and keeps its real endpoints (the spec's rule); the address block is
  ignored.
* v2 TLVs are parsed and bounds-checked: a ``PP2_TYPE_CRC32C`` checksum is verified (a mismatch
  is a ProtocolError); ALPN, authority (the client's SNI), unique ID, the SSL block and the
  network namespace are exposed in ``info``, every TLV raw in ``info["proxy_tlvs"]``.
* Bytes read past the header are kept (pushed back into the lower stream), so the stream above
  sees every byte the proxy relayed, in order. If the attach fails or times out, every byte
  it read goes back to the lower stream likewise. ``detach()`` returns the lower stream with
  anything this layer still holds.

``info`` on the server stream: ``proxy_protocol`` (1 or 2), ``proxy_command`` (``"PROXY"`` or
``"LOCAL"``), ``proxy_via`` (the proxy's own address: the lower stream's ``peer``); when the
header carries addresses, ``peer`` and ``local`` are the original source and destination
(``(host, port)``, or a path for AF_UNIX) and shadow the lower stream's; and where present
``proxy_alpn``, ``proxy_authority``, ``proxy_unique_id``, ``proxy_tls`` (a dict: ``client``,
``verify``, ``version``, ``cn``, ``cipher``, ``sig_alg``, ``key_alg``), ``proxy_netns``,
``proxy_tlvs`` (every TLV as ``(type, value)``), ``proxy_transport`` (``"stream"``,
``"dgram"``).

**client** (``proxy_protocol.client(source, destination, version=2)``): writes one header on
``attach`` (under the deadline), then carries bytes through. Addresses are ``(ip, port)``
(IPv4 and IPv6 mixed: the IPv4 one is sent IPv4-mapped) or, v2 only, Unix paths; ``None`` sends
v1 ``UNKNOWN`` / v2 ``AF_UNSPEC``. ``local=True`` sends v2 ``LOCAL``. ``tlvs`` adds v2 TLVs and
``crc32c=True`` a checksum. :meth:`client.from_info` builds one from a stream's ``info``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from stack.deadlines import FOREVER, check_deadline
from stack.errors import MessageTooLarge, ProtocolError, Timeout
from stack.passthrough import PassThrough
from stack.streams import ByteStream, require

__all__ = [
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX",
    "V2_SIGNATURE",
    "Header",
    "ProxyProtocolStream",
    "client",
    "crc32c",
    "encode_v1",
    "encode_v2",
    "parse",
    "server",
]

log = logging.getLogger("stack.proxy_protocol")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes every v2 header starts with."""

V1_PREFIX = b"PROXY "
V1_MAX = 107
"""Most bytes of a v1 header, CRLF included (the spec's bound)."""

V2_MAX = 16 + 0xFFFF
"""Most bytes a v2 header can announce."""

HEADER_TIMEOUT = 5.0
"""Default seconds a connection has to send its whole header."""

MAX_HEADER = 4096
"""Default ``max_header``: the largest v2 header accepted (addresses and TLVs), in bytes."""

# v2 commands, families, transports, TLV types (proxy-protocol.txt section 2.2)
LOCAL, PROXY = 0x0, 0x1
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
_FAMILIES = {AF_UNSPEC: "unspec", AF_INET: "inet", AF_INET6: "inet6", AF_UNIX: "unix"}
_TRANSPORTS = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}
_ADDRESS_SIZE = {AF_UNSPEC: 0, AF_INET: 12, AF_INET6: 36, AF_UNIX: 216}

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30
_SSL_SUBTYPES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}
_UNIQUE_ID_MAX = 128  # the spec's bound on PP2_TYPE_UNIQUE_ID

Address = tuple[str, int] | str
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------------------------------
# the sans-io core


@dataclass(frozen=True)
class Header:
    """One parsed PROXY protocol header.

    ``command``: ``"PROXY"`` (relayed: the addresses are the original ones) or ``"LOCAL"`` (the
    proxy's own connection, v2 only). ``family``: ``"inet"``, ``"inet6"``, ``"unix"`` or
    ``"unspec"`` (v1 ``UNKNOWN``); ``source`` and ``destination`` are ``None`` unless the header
    carries addresses the receiver should use. ``tlvs``: v2 TLVs as ``(type, value)``, in order.
    """

    version: int
    command: str
    family: str
    transport: str
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        for t, value in self.tlvs:
            if t == kind:
                return value
        return None

    @property
    def alpn(self) -> str | None:
        """The ALPN protocol the client negotiated with the proxy (``PP2_TYPE_ALPN``)."""
        value = self.tlv(PP2_TYPE_ALPN)
        return None if value is None else value.decode("ascii", "replace")

    @property
    def authority(self) -> str | None:
        """The host name the client asked the proxy for, usually its SNI (``PP2_TYPE_AUTHORITY``)."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        """The proxy's identifier for the connection (``PP2_TYPE_UNIQUE_ID``)."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """The network namespace the proxy accepted the connection in (``PP2_TYPE_NETNS``)."""
        value = self.tlv(PP2_TYPE_NETNS)
        return None if value is None else value.decode("ascii", "replace")

    @property
    def tls(self) -> dict[str, Any] | None:
        """The ``PP2_TYPE_SSL`` block as a dict (``client``, ``verify``, and the sub-TLVs present:
        ``version``, ``cn``, ``cipher``, ``sig_alg``, ``key_alg``), or None."""
        value = self.tlv(PP2_TYPE_SSL)
        return None if value is None else _parse_ssl(value)

    def info(self) -> dict[str, Any]:
        """The ``info`` keys a server stream carrying this header adds (see the module docstring)."""
        out: dict[str, Any] = {"proxy_protocol": self.version, "proxy_command": self.command}
        if self.command == "PROXY" and self.source is not None:
            out["peer"] = self.source
            out["local"] = self.destination
            out["proxy_transport"] = self.transport
        for key, value in (
            ("proxy_alpn", self.alpn),
            ("proxy_authority", self.authority),
            ("proxy_unique_id", self.unique_id),
            ("proxy_tls", self.tls),
            ("proxy_netns", self.netns),
        ):
            if value is not None:
                out[key] = value
        if self.tlvs:
            out["proxy_tlvs"] = self.tlvs
        return out


def parse(
    data: bytes | bytearray, *, versions: Sequence[int] = (1, 2), max_header: int = MAX_HEADER
) -> tuple[Header, int] | None:
    """Parse a header at the start of ``data``: ``(header, its length in bytes)``, or ``None``
    when ``data`` is a valid start but too short to decide.

    Raises :class:`~stack.ProtocolError` (naming the rule) as soon as ``data`` cannot be the
    start of a header of one of ``versions``, and :class:`~stack.MessageTooLarge` when a v2
    header announces more than ``max_header`` bytes. Never reads past the header.
    """
    if not data:
        return None
    head = bytes(data[:12])
    if 2 in versions and V2_SIGNATURE.startswith(head[: len(V2_SIGNATURE)]):
        return _parse_v2(data, max_header) if len(data) >= 12 else None
    if 1 in versions and (V1_PREFIX.startswith(head[:6]) if len(head) < 6 else head.startswith(V1_PREFIX)):
        return _parse_v1(data)
    accepted = " or ".join(f"v{v}" for v in sorted(versions))
    other = 1 if V1_PREFIX.startswith(head[:6]) else 2 if V2_SIGNATURE.startswith(head) else None
    if other is not None and len(head) >= 6:
        raise ProtocolError(f"a PROXY protocol v{other} header, but only {accepted} is accepted")
    raise ProtocolError(f"no PROXY protocol {accepted} header: the connection starts with {head!r}")


def _parse_v1(data: bytes | bytearray) -> tuple[Header, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if b"\n" in data[:V1_MAX]:
            raise ProtocolError("PROXY v1 header: a line feed without carriage return (the line ends with CRLF)")
        if len(data) >= V1_MAX:
            raise ProtocolError(f"PROXY v1 header: no CRLF within {V1_MAX} bytes (the spec's maximum)")
        return None
    line = bytes(data[:end])
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):  # the rest is ignored (spec)
        return Header(1, "PROXY", "unspec", "unspec"), end + 2
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ProtocolError(f"PROXY v1 header: a byte that is not printable US-ASCII in {line!r}")
    parts = line.decode("ascii").split(" ")
    if len(parts) < 2:
        raise ProtocolError(f"PROXY v1 header {line!r}: no protocol (TCP4, TCP6 or UNKNOWN)")
    proto = parts[1]
    if proto not in ("TCP4", "TCP6"):
        raise ProtocolError(f"PROXY v1 header {line!r}: protocol {proto!r} is not TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        raise ProtocolError(
            f"PROXY v1 header {line!r}: expected 'PROXY {proto} SRC DST SRCPORT DSTPORT' separated by single spaces"
        )
    version = 4 if proto == "TCP4" else 6
    src = _v1_address(parts[2], version, line)
    dst = _v1_address(parts[3], version, line)
    sport, dport = _v1_port(parts[4], line), _v1_port(parts[5], line)
    family = "inet" if version == 4 else "inet6"
    return Header(1, "PROXY", family, "stream", (src, sport), (dst, dport)), end + 2


def _v1_address(text: str, version: int, line: bytes) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version or (version == 6 and "%" in text):
        raise ProtocolError(f"PROXY v1 header {line!r}: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str, line: bytes) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (text != "0" and text.startswith("0")):
        raise ProtocolError(f"PROXY v1 header {line!r}: port {text!r} is not a number 0..65535 without leading zeros")
    port = int(text)
    if port > 65535:
        raise ProtocolError(f"PROXY v1 header {line!r}: port {port} is over 65535")
    return port


def _parse_v2(data: bytes | bytearray, max_header: int) -> tuple[Header, int] | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProtocolError(f"PROXY v2 header: version {ver_cmd >> 4} (the version nibble must be 2)")
    command = ver_cmd & 0xF
    if command not in (LOCAL, PROXY):
        raise ProtocolError(f"PROXY v2 header: command {command:#x} (only LOCAL 0x0 and PROXY 0x1 exist)")
    family, transport = fam >> 4, fam & 0xF
    if family not in _FAMILIES or transport not in _TRANSPORTS:
        raise ProtocolError(f"PROXY v2 header: unknown address family/transport byte {fam:#04x}")
    total = 16 + length
    if total > max_header:
        raise MessageTooLarge(
            f"PROXY v2 header of {total} bytes is over max_header={max_header}", limit=max_header, size=total
        )
    if len(data) < total:
        return None
    if command == LOCAL:  # the proxy's own connection: the address block is discarded
        return Header(2, "LOCAL", _FAMILIES[family], _TRANSPORTS[transport]), total
    block = bytes(data[16:total])
    size = _ADDRESS_SIZE[family]
    if length < size:
        raise ProtocolError(
            f"PROXY v2 header: {length} bytes of addresses, too few for {_FAMILIES[family]} ({size} bytes)"
        )
    source, destination = _v2_addresses(family, block)
    tlvs, crc_at = _parse_tlvs(block, size)
    if crc_at is not None:
        at = 16 + crc_at
        header = bytearray(data[:total])
        expected = int.from_bytes(header[at : at + 4], "big")
        header[at : at + 4] = b"\0\0\0\0"
        if crc32c(header) != expected:
            raise ProtocolError("PROXY v2 header: the CRC32C checksum does not match the header")
    return Header(2, "PROXY", _FAMILIES[family], _TRANSPORTS[transport], source, destination, tlvs), total


def _v2_addresses(family: int, block: bytes) -> tuple[Address | None, Address | None]:
    if family == AF_INET:
        src4, dst4 = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        return (str(src4), int.from_bytes(block[8:10], "big")), (str(dst4), int.from_bytes(block[10:12], "big"))
    if family == AF_INET6:
        src6, dst6 = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        return (str(src6), int.from_bytes(block[32:34], "big")), (str(dst6), int.from_bytes(block[34:36], "big"))
    if family == AF_UNIX:
        return _unix_path(block[0:108]), _unix_path(block[108:216])
    return None, None  # AF_UNSPEC: use the real endpoints


def _unix_path(raw: bytes) -> str:
    if raw[:1] == b"\0":  # Linux's abstract namespace
        return "\0" + raw[1:].rstrip(b"\0").decode("utf-8", "backslashreplace")
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _parse_tlvs(block: bytes, start: int) -> tuple[tuple[tuple[int, bytes], ...], int | None]:
    """The TLVs in ``block[start:]`` and the offset in ``block`` of a CRC32C value, if any."""
    out: list[tuple[int, bytes]] = []
    crc_at: int | None = None
    at, end = start, len(block)
    while at < end:
        if end - at < 3:
            raise ProtocolError(f"PROXY v2 header: {end - at} stray bytes after the last TLV")
        kind, size = block[at], int.from_bytes(block[at + 1 : at + 3], "big")
        if at + 3 + size > end:
            raise ProtocolError(
                f"PROXY v2 header: TLV type {kind:#04x} announces {size} bytes, only {end - at - 3} are left"
            )
        value = block[at + 3 : at + 3 + size]
        if kind == PP2_TYPE_CRC32C:
            if size != 4 or crc_at is not None:
                raise ProtocolError("PROXY v2 header: a CRC32C TLV must be 4 bytes and appear once")
            crc_at = at + 3
        elif kind == PP2_TYPE_UNIQUE_ID and size > _UNIQUE_ID_MAX:
            raise ProtocolError(f"PROXY v2 header: unique ID of {size} bytes (at most {_UNIQUE_ID_MAX})")
        elif kind == PP2_TYPE_SSL:
            _parse_ssl(value)  # checked now: a malformed block refuses the connection
        if kind != PP2_TYPE_NOOP:
            out.append((kind, value))
        at += 3 + size
    return tuple(out), crc_at


def _parse_ssl(value: bytes) -> dict[str, Any]:
    if len(value) < 5:
        raise ProtocolError(f"PROXY v2 header: SSL TLV of {len(value)} bytes (at least 5: client, verify)")
    out: dict[str, Any] = {"client": value[0], "verify": int.from_bytes(value[1:5], "big")}
    at = 5
    while at < len(value):
        if len(value) - at < 3:
            raise ProtocolError("PROXY v2 header: a truncated sub-TLV in the SSL TLV")
        kind, size = value[at], int.from_bytes(value[at + 1 : at + 3], "big")
        if at + 3 + size > len(value):
            raise ProtocolError(f"PROXY v2 header: SSL sub-TLV type {kind:#04x} runs past the SSL TLV")
        name = _SSL_SUBTYPES.get(kind)
        if name is not None:
            out[name] = value[at + 3 : at + 3 + size].decode("utf-8", "replace")
        at += 3 + size
    return out


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes | bytearray) -> int:
    """CRC-32C (Castagnoli), as ``PP2_TYPE_CRC32C`` uses. Headers are small: a table loop does."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# writing headers


def _ip_pair(source: Address | None, destination: Address | None) -> tuple[_IP, int, _IP, int] | None:
    """Both addresses as IP objects of one version (IPv4-mapped when mixed), or None if not IP."""
    if not (isinstance(source, tuple) and isinstance(destination, tuple)):
        return None
    src, dst = ipaddress.ip_address(source[0].split("%")[0]), ipaddress.ip_address(destination[0].split("%")[0])
    if src.version != dst.version:
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    return src, int(source[1]), dst, int(destination[1])


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 header: ``PROXY TCP4|TCP6 SRC DST SPORT DPORT``, or ``PROXY UNKNOWN`` when the
    addresses are not both IP (v1 carries no Unix paths)."""
    pair = _ip_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    return f"PROXY TCP{src.version} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(
    source: Address | None,
    destination: Address | None,
    *,
    local: bool = False,
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc32c_tlv: bool = False,
) -> bytes:
    """A v2 header (transport STREAM). ``local=True``: the LOCAL command, no addresses. IP
    addresses as AF_INET/AF_INET6, Unix paths as AF_UNIX, ``None`` as AF_UNSPEC. ``tlvs`` are
    written in order; ``crc32c_tlv`` appends a checksum TLV."""
    command = LOCAL if local else PROXY
    block = bytearray()
    family = AF_UNSPEC
    pair = None if local else _ip_pair(source, destination)
    if pair is not None:
        src, sport, dst, dport = pair
        family = AF_INET if src.version == 4 else AF_INET6
        block += src.packed + dst.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    elif not local and isinstance(source, str) and isinstance(destination, str):
        family = AF_UNIX
        for path in (source, destination):
            raw = path.encode("utf-8")
            if len(raw) > 108:
                raise ValueError(f"Unix path {path!r} is over 108 bytes")
            block += raw.ljust(108, b"\0")
    for kind, value in tlvs:
        if type(kind) is not int or not isinstance(value, bytes | bytearray):
            raise TypeError(f"a TLV is (type: int, value: bytes), not ({kind!r:.20}, {value!r:.20})")
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type {kind!r} with {len(value)} bytes does not fit a v2 TLV")
        block += bytes([kind]) + len(value).to_bytes(2, "big") + value
    crc_at = len(block)
    if crc32c_tlv:
        block += bytes([PP2_TYPE_CRC32C]) + b"\0\x04" + b"\0\0\0\0"
    if len(block) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {len(block)} bytes is over 65535")
    fam = (family << 4) | (0x0 if family == AF_UNSPEC else 0x1)
    header = bytearray(V2_SIGNATURE + bytes([0x20 | command, fam]) + len(block).to_bytes(2, "big") + block)
    if crc32c_tlv:
        at = 16 + crc_at + 3
        header[at : at + 4] = crc32c(header).to_bytes(4, "big")
    return bytes(header)


# --------------------------------------------------------------------------------------------------
# the streams and specs


class ProxyProtocolStream(PassThrough):
    """Every byte after the header, untouched; ``header`` is the :class:`Header` that was read
    (``None`` on the client side); ``info`` as the module docstring says."""

    kind = "proxy_protocol"

    def __init__(self, lower: ByteStream, header: Header | None, info: Mapping[str, Any]) -> None:
        super().__init__(lower, info)
        self.header = header


@dataclass(frozen=True)
class server:
    """Spec: read a PROXY protocol header of one of ``versions`` on attach (see the module
    docstring). ``header_timeout``: seconds the whole header may take. ``max_header``: the
    largest v2 header accepted (v1 headers are at most 107 bytes whatever it says)."""

    versions: tuple[int, ...] = (1, 2)
    header_timeout: float = HEADER_TIMEOUT
    max_header: int = MAX_HEADER

    def __post_init__(self) -> None:
        versions = (self.versions,) if isinstance(self.versions, int) else tuple(self.versions)
        if not versions or any(type(v) is not int for v in versions) or not set(versions) <= {1, 2}:
            raise ValueError(f"versions must be 1, 2 or both, not {self.versions!r}")
        object.__setattr__(self, "versions", versions)
        t = self.header_timeout
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise TypeError(f"header_timeout must be a number of seconds, not {type(t).__name__} {t!r:.40}")
        if not t > 0:
            raise ValueError("header_timeout must be > 0 seconds")
        if type(self.max_header) is not int:
            raise TypeError(f"max_header must be an int, not {type(self.max_header).__name__}")
        if not 16 <= self.max_header <= V2_MAX:
            raise ValueError(f"max_header must be between 16 and {V2_MAX} bytes")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ProxyProtocolStream:
        """Read the header (under ``deadline`` and ``header_timeout``); refuse a bad one."""
        lower = require(lower, ByteStream, "proxy_protocol.server")
        check_deadline(deadline)
        deadline = min(deadline, trio.current_time() + self.header_timeout)
        buf = bytearray()
        done = False
        try:
            while True:
                result = parse(buf, versions=self.versions, max_header=self.max_header)
                if result is not None:
                    header, size = result
                    break
                try:
                    chunk = await lower.recv(4096, deadline=deadline)
                except Timeout:
                    raise Timeout(
                        f"no complete PROXY protocol header from {lower.info.get('peer')} in time "
                        f"({len(buf)} bytes received)"
                    ) from None
                if not chunk:
                    got = f"after {len(buf)} bytes of a header" if buf else "before a header"
                    raise ProtocolError(f"the connection ended {got} (PROXY protocol expected)")
                buf += chunk
            done = True
        finally:
            if not done:
                lower.unread(buf)  # nothing is lost: the lower stream gets every byte back
        lower.unread(memoryview(buf)[size:])  # read ahead past the header: the stream above gets it
        info = header.info()
        info["proxy_via"] = lower.info.get("peer")
        log.debug("PROXY v%d %s from %s: %s -> %s", header.version, header.command, info["proxy_via"],
                  header.source, header.destination)  # fmt: skip
        return ProxyProtocolStream(lower, header, info)


@dataclass(frozen=True)
class client:
    """Spec: write a PROXY protocol header for ``source`` -> ``destination`` on attach.

    ``version`` 1 or 2. Addresses: ``(ip, port)``, a Unix path (v2), or ``None`` (v1
    ``UNKNOWN``, v2 ``AF_UNSPEC``). ``local=True`` sends v2 ``LOCAL`` (addresses ignored).
    ``tlvs``: extra v2 TLVs ``(type, value)``; ``crc32c=True`` adds a checksum TLV.
    """

    source: Address | None = None
    destination: Address | None = None
    version: int = 2
    local: bool = False
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())
    crc32c: bool = False

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, not {self.version!r}")
        if self.version == 1 and (self.local or self.tlvs or self.crc32c):
            raise ValueError("LOCAL, TLVs and CRC32C exist only in PROXY protocol v2")
        for address in (self.source, self.destination):
            if isinstance(address, tuple):
                if len(address) < 2 or not isinstance(address[0], str) or type(address[1]) is not int:
                    raise TypeError(f"an address is (ip: str, port: int), a Unix path or None, not {address!r:.60}")
                ipaddress.ip_address(address[0].split("%")[0])  # ValueError: not an IP address
                if not 0 <= int(address[1]) <= 65535:
                    raise ValueError(f"port {address[1]!r} is not in 0..65535")
            elif address is not None and not isinstance(address, str):
                raise TypeError(f"an address is (ip: str, port: int), a Unix path or None, not {address!r:.60}")
        object.__setattr__(self, "tlvs", tuple(self.tlvs))
        self.header()  # ValueError now rather than on every attach

    @classmethod
    def from_info(cls, info: Mapping[str, Any], version: int = 2) -> client:
        """The header that forwards a connection whose stream ``info`` is given: its ``peer``
        as the source and its ``local`` as the destination (``UNKNOWN``/``AF_UNSPEC`` when they
        are not IP addresses)."""
        peer, local = info.get("peer"), info.get("local")
        if isinstance(peer, tuple) and isinstance(local, tuple) and len(peer) >= 2 and len(local) >= 2:
            try:
                return cls((str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])), version)
            except ValueError:
                pass
        return cls(None, None, version)

    def header(self) -> bytes:
        """The header bytes this spec writes."""
        if self.version == 1:
            return encode_v1(self.source, self.destination)
        return encode_v2(self.source, self.destination, local=self.local, tlvs=self.tlvs, crc32c_tlv=self.crc32c)

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> ProxyProtocolStream:
        """Send the header (under ``deadline``), then carry bytes through."""
        lower = require(lower, ByteStream, "proxy_protocol.client")
        check_deadline(deadline)
        await lower.send(self.header(), deadline=deadline)
        return ProxyProtocolStream(lower, None, {"proxy_protocol_sent": self.version})
