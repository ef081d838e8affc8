"""A SOCKS5 client (RFC 1928, with RFC 1929 username/password): a ByteStream to a target through a proxy.

::

    stream = await Stack(
        tcp.connect("127.0.0.1", 1080),                   # the proxy
        socks5.connect("example.org", 80),                # the target, as the proxy resolves it
    ).connect(deadline=after(10))
    # Stack(tcp.connect(proxy...), socks5.connect(host, 443), tls.client(), http.client()) works too:
    # info["host"] and info["peer"] name the target, so TLS checks the target's certificate.

``socks5.connect(host, port, *, username=None, password=None, handshake_timeout=10.0)`` attaches
to the ByteStream that reaches the proxy and runs the handshake: method negotiation (no
authentication; with a username and password, username/password too), then ``CONNECT``. The
target goes to the proxy as given: a domain name is sent as a name (the proxy resolves it, so
no DNS request leaves this host), an IPv4 or IPv6 literal as an address. Then every byte is
the target's, untouched.

* **Deadline**: the handshake runs under the attach deadline and at most ``handshake_timeout``
  seconds: :class:`~stack.Timeout` past it.
* **Refusals** are :class:`SOCKSError` (a :class:`~stack.Broken`): :class:`AuthenticationFailed`
  when the proxy accepts none of the offered methods or rejects the credentials,
  :class:`ReplyError` when it answers the CONNECT with a failure (``code`` and ``reply`` name
  the RFC 1928 reply, such as ``5 connection refused``).
* **A proxy that breaks the protocol** (wrong version, a method it was not offered, an unknown
  address type, the connection ending mid-handshake): :class:`~stack.ProtocolError` naming it.
* **Read-ahead**: the handshake reads exactly the proxy's replies (``recv_exactly`` on the lower
  stream); target bytes that arrived with the reply stay buffered and come first. ``detach()``
  returns the lower stream with anything this layer still holds. A handshake that fails or
  times out leaves the lower stream mid-protocol: close it (a :class:`~stack.Stack` does).

``info``: ``host`` and ``peer`` (``(host, port)``) name the target as asked; ``local`` and
``socks_bound`` are ``BND.ADDR``/``BND.PORT`` from the reply (the proxy's address toward the
target); ``socks_proxy`` is the proxy's address (the lower stream's ``peer``); ``socks_auth`` is
``"none"`` or ``"username"``.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

import trio

from stack.deadlines import FOREVER, check_deadline
from stack.errors import Broken, EndOfStream, ProtocolError, Timeout
from stack.passthrough import PassThrough
from stack.streams import ByteStream

__all__ = [
    "REPLIES",
    "AuthenticationFailed",
    "ReplyError",
    "SOCKS5Stream",
    "SOCKSError",
    "connect",
]

log = logging.getLogger("stack.socks5")

HANDSHAKE_TIMEOUT = 10.0
"""Default seconds the whole handshake (methods, authentication, CONNECT) may take."""

VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929's subnegotiation version
NO_AUTH, USERNAME, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

REPLIES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
"""RFC 1928 reply codes other than 0 (succeeded)."""


class SOCKSError(Broken):
    """The proxy refused: bad credentials, no acceptable method, or a failed CONNECT."""


class AuthenticationFailed(SOCKSError):
    """The proxy accepted none of the offered methods, or rejected the username/password."""


class ReplyError(SOCKSError):
    """The proxy answered the CONNECT with a failure. ``code``: the RFC 1928 reply code;
    ``reply``: its name (``"connection refused"``...)."""

    def __init__(self, code: int, target: str) -> None:
        self.code = code
        self.reply = REPLIES.get(code, f"unassigned reply {code:#04x}")
        super().__init__(f"SOCKS5 proxy could not connect to {target}: {self.reply} (reply {code})")


class SOCKS5Stream(PassThrough):
    """The target's bytes, untouched; ``info`` as the module docstring says."""

    kind = "socks5"


def _check_seconds(value: object, name: str) -> None:
    """A timeout in seconds: a number > 0 (``inf`` allowed), not a bool; else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__} {value!r:.40}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, not {value!r}")


def _encode_host(host: str) -> bytes:
    """ATYP and address bytes for ``host``: an IP literal as an address, else a domain name."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        ip = None
    if ip is not None:
        return bytes([ATYP_IPV4 if ip.version == 4 else ATYP_IPV6]) + ip.packed
    try:
        name = host.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is not a valid host name: {exc}") from None
    if not 1 <= len(name) <= 255:
        raise ValueError(f"host name {host!r} must be 1 to 255 bytes for SOCKS5")
    return bytes([ATYP_DOMAIN, len(name)]) + name


@dataclass(frozen=True)
class connect:
    """Spec: through the SOCKS5 proxy below, connect to ``host:port`` (see the module docstring).

    ``username`` and ``password`` (1..255 bytes each in UTF-8, both or neither) offer RFC 1929
    authentication alongside "no authentication". ``handshake_timeout``: seconds for the
    whole handshake.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise TypeError(f"socks5.connect host must be a str, not {type(self.host).__name__}")
        if type(self.port) is not int:
            raise TypeError(f"socks5.connect port must be an int, not {type(self.port).__name__} {self.port!r:.40}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is not in 0..65535")
        _encode_host(self.host)
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        for what, value in (("username", self.username), ("password", self.password)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"socks5.connect {what} must be a str, not {type(value).__name__}")
            if value is not None and not 1 <= len(value.encode("utf-8")) <= 255:
                raise ValueError(f"the SOCKS5 {what} must be 1 to 255 bytes")
        _check_seconds(self.handshake_timeout, "handshake_timeout")

    @property
    def target(self) -> str:
        """``host:port`` (IPv6 in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    def _request(self) -> bytes:
        return bytes([VERSION, CMD_CONNECT, 0x00]) + _encode_host(self.host) + self.port.to_bytes(2, "big")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> SOCKS5Stream:
        """Run the handshake with the proxy on ``lower``; return the stream to the target."""
        if not isinstance(lower, ByteStream):
            raise TypeError(f"socks5.connect attaches to a ByteStream, not {type(lower).__name__}")
        check_deadline(deadline)
        deadline = min(deadline, trio.current_time() + self.handshake_timeout)
        proxy = lower.info.get("peer")
        try:
            auth = await self._negotiate(lower, deadline)
            await lower.send(self._request(), deadline=deadline)
            bound = await self._reply(lower, deadline)
        except Timeout:
            raise Timeout(f"SOCKS5 handshake with the proxy {proxy} for {self.target} timed out") from None
        except EndOfStream:
            raise ProtocolError(
                f"the SOCKS5 proxy {proxy} closed the connection during the handshake for {self.target}"
            ) from None
        log.debug("socks5: %s via %s, bound %s", self.target, proxy, bound)
        info = {
            "host": self.host,
            "peer": (self.host, self.port),
            "local": bound,
            "socks_bound": bound,
            "socks_proxy": proxy,
            "socks_auth": "username" if auth == USERNAME else "none",
        }
        return SOCKS5Stream(lower, info)

    async def _negotiate(self, lower: ByteStream, deadline: float) -> int:
        offered = [NO_AUTH] if self.username is None else [NO_AUTH, USERNAME]
        await lower.send(bytes([VERSION, len(offered), *offered]), deadline=deadline)
        version, method = await lower.recv_exactly(2, deadline=deadline)
        if version != VERSION:
            hint = " (it looks like HTTP: is this an HTTP proxy?)" if (version, method) == (0x48, 0x54) else ""
            raise ProtocolError(f"not a SOCKS5 proxy: its answer starts with version byte {version:#04x}{hint}")
        if method == NO_ACCEPTABLE:
            need = "" if self.username is not None else " (it may want a username and password)"
            raise AuthenticationFailed(f"the SOCKS5 proxy accepted none of the offered methods{need}")
        if method not in offered:
            raise ProtocolError(f"the SOCKS5 proxy chose method {method:#04x}, which was not offered")
        if method == USERNAME:
            assert self.username is not None and self.password is not None
            user, password = self.username.encode("utf-8"), self.password.encode("utf-8")
            message = bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password
            await lower.send(message, deadline=deadline)
            auth_version, status = await lower.recv_exactly(2, deadline=deadline)
            if auth_version != AUTH_VERSION:
                raise ProtocolError(f"SOCKS5 username/password reply has version {auth_version:#04x}, not 0x01")
            if status != 0x00:
                raise AuthenticationFailed(f"the SOCKS5 proxy rejected the username/password (status {status})")
        return method

    async def _reply(self, lower: ByteStream, deadline: float) -> tuple[str, int]:
        version, code, _reserved, atyp = await lower.recv_exactly(4, deadline=deadline)
        if version != VERSION:
            raise ProtocolError(f"SOCKS5 reply has version {version:#04x}, not 0x05")
        if code != 0x00:
            raise ReplyError(code, self.target)
        if atyp == ATYP_IPV4:
            raw = await lower.recv_exactly(6, deadline=deadline)
            host = str(ipaddress.IPv4Address(raw[:4]))
        elif atyp == ATYP_IPV6:
            raw = await lower.recv_exactly(18, deadline=deadline)
            host = str(ipaddress.IPv6Address(raw[:16]))
        elif atyp == ATYP_DOMAIN:
            (size,) = await lower.recv_exactly(1, deadline=deadline)
            raw = await lower.recv_exactly(size + 2, deadline=deadline)
            host = raw[:size].decode("ascii", "replace")
        else:
            raise ProtocolError(f"SOCKS5 reply has address type {atyp:#04x} (1, 3 and 4 exist)")
        return host, int.from_bytes(raw[-2:], "big")
