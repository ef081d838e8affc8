"""The QUIC engines in isolation: aioquic against qh3 (its fork with a Rust core), no sockets, no trio.

Theory of operation: a client and a server ``QuicConnection`` of one engine are wired back to back in
memory: every datagram one's ``datagrams_to_send`` returns is fed to the other's ``receive_datagram``
(on a virtual clock that jumps to the earliest timer when both are idle). Two figures per engine:

* **bulk**: after the handshake, the client sends ``--mib`` MiB (20 by default) on one stream in
  64 KiB commits, keeping at most 1 MiB committed and unsent (what :mod:`layers._quic_stream` does),
  and the server drains its events; bytes per second of stream data from the first commit to the FIN.
  Windows as our ``QuicLimits`` defaults (1 MiB per stream, 16 MiB per connection), datagrams of
  1350 bytes (``--datagram`` to change).
* **h3 request**: one connection with ``H3Connection`` on both ends; ``--requests`` sequential GET
  requests, each answered with a 13-byte body; microseconds per request/response (both ends' CPU).

Both figures are per CPU second of this process (``time.process_time``: both ends run in it), so a
loaded host slows them less than wall time would (still +-30% on a busy 2-core host: for small
differences count instructions under callgrind instead). Engines: ``aioquic``, ``ours`` (aioquic with
:class:`layers._quic_engine.Engine`, our corrections, as the connection class) and ``qh3``; one that
does not import is reported as missing. qh3 is not a dependency (CONTRIBUTING.md, "QUIC: aioquic
stays"): install it aside, e.g. ``pip install --target .qh3 qh3`` (or ``"qh3<2"``), then::

    PYTHONPATH=.qh3 python -m benchmarks.bench_quic_engines [--mib 20] [--requests 2000]

qh3's ``H3Connection`` always announces ``H3_DATAGRAM``, which a qh3 peer refuses unless the
``max_datagram_frame_size`` transport parameter came too: the configurations here set it on both ends.
"""

from __future__ import annotations

import argparse
import importlib
import time
from types import SimpleNamespace
from typing import Any

from layers import certs

CHUNK = 64 * 1024
MIB = 1024 * 1024
ADDR_C = ("127.0.0.1", 40000)
ADDR_S = ("127.0.0.1", 4433)


def _modules(engine: str) -> dict[str, Any]:
    """``ours``: aioquic with :class:`layers._quic_engine.Engine` (our corrections) as the connection."""
    package = "aioquic" if engine == "ours" else engine
    names = ("quic.configuration", "quic.connection", "quic.events", "h3.connection", "h3.events", "tls")
    mods: dict[str, Any] = {name: importlib.import_module(f"{package}.{name}") for name in names}
    if engine == "ours":
        from layers._quic_engine import Engine

        mods["quic.connection"] = SimpleNamespace(QuicConnection=Engine)
    return mods


class Pair:
    """A client and a server connection of one engine, back to back."""

    def __init__(self, mods: dict[str, Any], leaf: Any, ca: Any, datagram: int, alpn: str) -> None:
        conf_mod, conn_mod, tls = mods["quic.configuration"], mods["quic.connection"], mods["tls"]
        self.events = mods["quic.events"]
        common: dict[str, Any] = {
            "alpn_protocols": [alpn],
            "max_stream_data": MIB,
            "max_data": 16 * MIB,
            "max_datagram_size": datagram,
            # qh3's H3Connection always announces H3_DATAGRAM (module docstring)
            "max_datagram_frame_size": 65536,
        }
        cconf = conf_mod.QuicConfiguration(is_client=True, server_name="localhost", **common)
        cconf.load_verify_locations(cadata=ca.cert_pem)
        sconf = conf_mod.QuicConfiguration(is_client=False, **common)
        chain = tls.load_pem_x509_certificates(leaf.cert_pem)
        sconf.certificate, sconf.certificate_chain = chain[0], chain[1:]
        sconf.private_key = tls.load_pem_private_key(leaf.key_pem)
        conn_class = conn_mod.QuicConnection
        self.client = conn_class(configuration=cconf)
        self.server: Any = None
        self._conn_class, self._sconf = conn_class, sconf
        self.offset = 0.0
        self.t0 = time.monotonic()
        self.client.connect(ADDR_S, now=self.now())
        self.on_server_event: Any = lambda ev: None
        self.on_client_event: Any = lambda ev: None

    def now(self) -> float:
        return time.monotonic() - self.t0 + self.offset

    def pump(self) -> bool:
        """One round both ways; False when neither side had anything to send."""
        moved = False
        now = self.now()
        for data, _ in self.client.datagrams_to_send(now):
            if self.server is None:
                from_cid = data[6 : 6 + data[5]]
                self.server = self._conn_class(configuration=self._sconf, original_destination_connection_id=from_cid)
            self.server.receive_datagram(data, ADDR_C, now)
            moved = True
        if self.server is not None:
            while (ev := self.server.next_event()) is not None:
                self.on_server_event(ev)
            for data, _ in self.server.datagrams_to_send(now):
                self.client.receive_datagram(data, ADDR_S, now)
                moved = True
        while (ev := self.client.next_event()) is not None:
            self.on_client_event(ev)
        return moved

    def idle(self) -> None:
        """Nothing moved: fire the earliest timer (the virtual clock jumps to it)."""
        ends = [c for c in (self.client, self.server) if c is not None]
        timers = [(t, c) for c in ends if (t := c.get_timer()) is not None]
        if not timers:
            raise RuntimeError("deadlock: nothing to send and no timer")
        when, conn = min(timers, key=lambda tc: tc[0])
        now = self.now()
        if when > now:
            self.offset += when - now
        conn.handle_timer(self.now())

    def handshake(self) -> None:
        done = {"c": False}

        def on_client(ev: Any) -> None:
            if isinstance(ev, self.events.HandshakeCompleted):
                done["c"] = True

        self.on_client_event = on_client
        for _ in range(1000):
            if not self.pump():
                if done["c"]:
                    return
                self.idle()
        raise RuntimeError("no handshake")


def bench_bulk(mods: dict[str, Any], leaf: Any, ca: Any, total: int, datagram: int) -> float:
    pair = Pair(mods, leaf, ca, datagram, "bulk")
    pair.handshake()
    got = {"n": 0, "fin": False}
    stream_data = pair.events.StreamDataReceived

    def on_server(ev: Any) -> None:
        if isinstance(ev, stream_data):
            got["n"] += len(ev.data)
            if ev.end_stream:
                got["fin"] = True

    pair.on_server_event = on_server
    client = pair.client
    sid = client.get_next_available_stream_id()
    chunk = b"x" * CHUNK
    committed = 0
    unsent = getattr(client, "get_send_buffer_size", None)
    t0 = time.process_time()
    while not got["fin"]:
        if committed < total:
            # at most 1 MiB committed and not yet sent (as layers._quic_stream does)
            backlog = unsent(sid) if unsent else max(0, committed - _aioquic_sent(client, sid))
            while committed < total and backlog < MIB:
                n = min(CHUNK, total - committed)
                committed += n
                client.send_stream_data(sid, chunk[:n], end_stream=committed >= total)
                backlog += n
        if not pair.pump():
            pair.idle()
    elapsed = time.process_time() - t0
    assert got["n"] == total, (got, total)
    return total / elapsed


def _aioquic_sent(conn: Any, sid: int) -> int:
    stream = conn._streams.get(sid)
    return 0 if stream is None else int(stream.sender.highest_offset)


def bench_h3(mods: dict[str, Any], leaf: Any, ca: Any, requests: int) -> float:
    pair = Pair(mods, leaf, ca, 1350, "h3")
    pair.handshake()
    h3c, h3e = mods["h3.connection"], mods["h3.events"]
    client_h3 = h3c.H3Connection(pair.client)
    server_h3: list[Any] = []
    answered = {"n": 0}

    def on_server(ev: Any) -> None:
        if not server_h3:
            server_h3.append(h3c.H3Connection(pair.server))
        h3 = server_h3[0]
        for hev in h3.handle_event(ev):
            if isinstance(hev, h3e.HeadersReceived) and hev.stream_ended:
                h3.send_headers(
                    hev.stream_id,
                    [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")],
                )
                h3.send_data(hev.stream_id, b"Hello, world!", end_stream=True)

    def on_client(ev: Any) -> None:
        for hev in client_h3.handle_event(ev):
            if isinstance(hev, h3e.DataReceived) and hev.stream_ended:
                answered["n"] += 1

    pair.on_server_event = on_server
    pair.on_client_event = on_client
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/")]
    t0 = time.process_time()
    for i in range(requests):
        sid = pair.client.get_next_available_stream_id()
        client_h3.send_headers(sid, headers, end_stream=True)
        while answered["n"] <= i:
            if not pair.pump():
                pair.idle()
    return (time.process_time() - t0) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--datagram", type=int, default=1350)
    parser.add_argument("--engines", default="aioquic,ours,qh3", help="ours: aioquic with our Engine subclass")
    args = parser.parse_args()
    ca = certs.CA.new()
    leaf = ca.issue("localhost")
    results: dict[str, tuple[float, float]] = {}
    for engine in args.engines.split(","):
        try:
            mods = _modules(engine)
        except ImportError as exc:
            print(f"{engine:8}  missing ({exc})")
            continue
        bulk = bench_bulk(mods, leaf, ca, args.mib * MIB, args.datagram)
        per_req = bench_h3(mods, leaf, ca, args.requests)
        results[engine] = (bulk, per_req)
        version = getattr(importlib.import_module(engine if engine != "ours" else "aioquic"), "__version__", "?")
        print(
            f"{engine:8} {version:7}  bulk {bulk / MIB:8.1f} MiB/s ({args.mib} MiB, {args.datagram}-byte datagrams)"
            f"   h3 request {per_req * 1e6:7.1f} us ({args.requests} sequential)"
        )
    if "aioquic" in results and len(results) > 1:
        base_bulk, base_req = results["aioquic"]
        for engine, (bulk, per_req) in results.items():
            if engine != "aioquic":
                ratios = f"bulk x{bulk / base_bulk:.2f}, h3 requests per second x{base_req / per_req:.2f}"
                print(f"{engine} / aioquic: {ratios}")


if __name__ == "__main__":
    main()
