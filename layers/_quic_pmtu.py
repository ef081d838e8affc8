"""Path MTU discovery for :mod:`layers.quic`: DPLPMTUD (RFC 8899) as RFC 9000 14.3 applies it.

Theory of operation: a connection starts at the safe size, ``QuicLimits.datagram_size`` (1350
by default, what any Internet path carries), and only ever sends larger datagrams after the path
acknowledged one. Three parts, two of them here:

* **The local route's MTU** (:func:`route_payload`): on Linux, a throwaway UDP socket connected
  to the peer reads ``IP_MTU`` / ``IPV6_MTU``, the MTU of the interface the route to the peer
  leaves by (65536 on loopback, 1500 on Ethernet), minus the IP and UDP headers. That is the most
  worth probing; what lies beyond the first hop is learnt by probing. Elsewhere (macOS, Windows,
  or any error) it says ``None`` and the connection stays at its safe size.
* **The search** (:class:`Search`, sans-io): the largest size to try is the smallest of the route's
  payload, the peer's ``max_udp_payload_size`` transport parameter (RFC 9000 18.2; 65527 when
  absent) and our ``QuicLimits.max_datagram_size``. It probes that size first (loopback and
  same-MTU LANs end there with one probe); a size whose probe is lost :data:`MAX_PROBES` times in
  a row is too large, and the search halves the gap between the largest size acknowledged and
  the smallest that failed, until the gap is under :data:`SEARCH_DONE` bytes (RFC 8899 5.3).
* **The probes** (in :class:`layers._quic_engine.Engine`): a probe is a 1-RTT packet of exactly the
  size being tried, holding only PING and PADDING (RFC 9000 14.4), sent once the handshake is
  confirmed and the congestion window has room for it. Its acknowledgement raises the engine's
  datagram size (and with it what aioquic's congestion controller and pacer count in); its loss
  is not a congestion signal (RFC 9000 14.4: the probe's bytes leave the bytes in flight without
  reducing the window).

:func:`set_dont_fragment` sets the Don't Fragment bit on a QUIC socket (``IP_PMTUDISC_PROBE``:
DF set, the kernel's own cached path MTU not applied), as RFC 9000 14 requires of IPv4 where
possible: an oversized datagram is then dropped by the path, never fragmented, which is what
makes a lost probe mean "too large".

Not done: acting on ICMP Packet Too Big messages (the kernel keeps them; we never read the error
queue), and black-hole detection after raising (RFC 8899 4.3): a path whose MTU shrinks during a
connection loses the larger packets until the connection's loss recovery gives up. Both matter
only on paths whose MTU changes mid-connection.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

__all__ = ["MAX_PROBES", "SEARCH_DONE", "Search", "route_payload", "set_dont_fragment"]

log = logging.getLogger("stack.quic")

MAX_PROBES = 3
"""Lost probes of one size after which the size counts as too large (RFC 8899 5.1.2)."""

SEARCH_DONE = 64
"""The search stops once the largest confirmed size and the smallest failed one are this close."""

PEER_DEFAULT = 65527
"""The peer's ``max_udp_payload_size`` when it sent none (RFC 9000 18.2)."""

_LINUX = sys.platform.startswith("linux")
# <linux/in.h>, <linux/in6.h>: Python's socket module has none of these names
_IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE, _IP_MTU = 10, 3, 14
_IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE, _IPV6_MTU = 23, 3, 24


def route_payload(address: Any) -> int | None:
    """The largest UDP payload the local route to ``address`` (``(host, port, ...)``) carries
    in one IP packet, or ``None`` where the system does not tell (anything but Linux)."""
    if not _LINUX or not isinstance(address, tuple) or len(address) < 2:
        return None
    v6 = ":" in str(address[0])
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address[:4] if v6 else address[:2])
            if v6:
                mtu = probe.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
            else:
                mtu = probe.getsockopt(socket.IPPROTO_IP, _IP_MTU)
    except OSError as exc:
        log.debug("quic: no route MTU towards %s: %s", address, exc)
        return None
    return mtu - (48 if v6 else 28)


def set_dont_fragment(sock: Any) -> None:
    """Set DF on the datagrams of ``sock`` (a socket or a trio socket; Linux only: elsewhere the
    system's default stays)."""
    if not _LINUX:
        return
    options = [(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)]
    if sock.family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:  # an IPv6-only socket refuses the IPv4 option: no IPv4 to send
            log.debug("quic: cannot set Don't Fragment (%d/%d): %s", level, option, exc)


class Search:
    """The DPLPMTUD search of one connection (module docstring); sans-io.

    ``current``: the largest size confirmed (the one to send with). ``next_probe()``: the size
    to probe now, or ``None``. ``acked(size)`` / ``lost(size)``: what became of that probe.
    """

    def __init__(self, base: int, limit: int) -> None:
        self.current = base
        self._failed = limit + 1  # the smallest size known too large
        self._trying = limit if limit > base else 0
        self._losses = 0
        self.in_flight = False

    def next_probe(self) -> int | None:
        if self.in_flight or not self._trying:
            return None
        return self._trying

    @property
    def done(self) -> bool:
        """Whether the search ended (nothing more to probe)."""
        return not self._trying and not self.in_flight

    def sent(self) -> None:
        self.in_flight = True

    def acked(self, size: int) -> None:
        self.in_flight = False
        if size > self.current:
            self.current = size
        self._losses = 0
        self._next()

    def lost(self, size: int) -> None:
        self.in_flight = False
        if size != self._trying:
            return
        self._losses += 1
        if self._losses >= MAX_PROBES:
            self._failed = size
            self._losses = 0
            self._next()

    def _next(self) -> None:
        gap = self._failed - self.current
        self._trying = 0 if gap <= SEARCH_DONE else self.current + gap // 2
