"""An independent HTTP/3 peer for the interop tests: aioquic's asyncio API and its H3Connection,
nothing of ours. Run as a program (the tests start it in a subprocess):

    python tests/_h3_peer.py server CERTFILE KEYFILE     prints "PORT <n>", serves until killed
    python tests/_h3_peer.py client PORT CAFILE          GET / and POST /echo, prints the results

The server answers ``GET /`` with ``aioquic saw HTTP/3 <path>`` and echoes a POST's body, with a
trailer ``x-peer: aioquic``. The client prints ``STATUS <code>``, ``BODY <repr>`` and
``TRAILERS <repr>`` per request.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent


class Peer(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3: H3Connection | None = None
        self.bodies: dict[int, bytearray] = {}
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.done: dict[int, asyncio.Future[None]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            sid = h3_event.stream_id  # type: ignore[attr-defined]
            if isinstance(h3_event, HeadersReceived):
                if sid in self.heads:
                    self.trailers[sid] = h3_event.headers
                else:
                    self.heads[sid] = h3_event.headers
                    self.bodies[sid] = bytearray()
            elif isinstance(h3_event, DataReceived):
                self.bodies[sid] += h3_event.data
            if getattr(h3_event, "stream_ended", False):
                self.ended(sid)

    def ended(self, sid: int) -> None:
        if self._quic.configuration.is_client:
            future = self.done.get(sid)
            if future is not None and not future.done():
                future.set_result(None)
            return
        assert self.h3 is not None
        head = dict(self.heads[sid])
        path = head.get(b":path", b"")
        body = bytes(self.bodies[sid]) if head.get(b":method") == b"POST" else b"aioquic saw HTTP/3 " + path
        self.h3.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
        self.h3.send_data(sid, body, end_stream=False)
        self.h3.send_headers(sid, [(b"x-peer", b"aioquic")], end_stream=True)
        self.transmit()

    async def request(self, method: bytes, path: bytes, authority: bytes, body: bytes = b"") -> int:
        assert self.h3 is not None
        sid = self._quic.get_next_available_stream_id()
        self.done[sid] = asyncio.get_running_loop().create_future()
        head = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path)]
        self.h3.send_headers(sid, head, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done[sid], 10)
        return sid


async def run_server(certfile: str, keyfile: str) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(certfile, keyfile)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Peer)
    port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


async def run_client(port: int, cafile: str) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(cafile)
    async with connect("127.0.0.1", port, configuration=config, create_protocol=Peer) as client:
        assert isinstance(client, Peer)
        authority = b"localhost:%d" % port
        for method, path, body in [(b"GET", b"/hello", b""), (b"POST", b"/echo", b"x" * 100_000)]:
            sid = await client.request(method, path, authority, body)
            status = dict(client.heads[sid])[b":status"].decode()
            print(f"STATUS {status}")
            print(f"BODY {bytes(client.bodies[sid])[:60]!r} {len(client.bodies[sid])}")
            print(f"TRAILERS {client.trailers.get(sid)!r}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(run_client(int(sys.argv[2]), sys.argv[3]))
