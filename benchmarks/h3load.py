"""A small HTTP/3 load generator (h2load has no HTTP/3 in Debian's build): the `h3` group's client.

    python -m benchmarks.h3load https://127.0.0.1:8443/ -n 5000 -c 4 -m 10 [--ca ca.pem | --insecure]

Theory of operation: it is independent of trio-stack on purpose, so that ours and hypercorn are
measured by the same third-party client: asyncio and aioquic's own client (``aioquic.asyncio
.connect`` with an ``H3Connection`` on top). ``-c`` connections are opened first (their handshakes
are not timed); then each connection keeps ``-m`` GET requests in flight until ``-n`` requests
(spread evenly over the connections) were answered. A request counts when its response ended
(the stream's FIN) with status 200; any other status or a reset counts as an error. It prints
``RESULT <json>`` with ``value`` (requests per second, from the first request sent to the last
response ended), ``errors`` and ``requests``, as the benchmarks' workers do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset


class H3Client(QuicConnectionProtocol):
    """aioquic's protocol with HTTP/3 on top: ``get()`` waits for one whole response."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.http = H3Connection(self._quic)
        self.waiting: dict[int, tuple[asyncio.Future[int], list[int]]] = {}

    async def get(self, authority: str, path: str) -> int:
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode())]
        self.http.send_headers(sid, [*headers, (b":path", path.encode())], end_stream=True)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, [0])
        self.transmit()
        return await fut

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            entry = self.waiting.pop(event.stream_id, None)
            if entry is not None:
                entry[0].set_result(-1)
        for h3 in self.http.handle_event(event):
            self.h3_event(h3)

    def h3_event(self, event: H3Event) -> None:
        entry = self.waiting.get(getattr(event, "stream_id", -1))
        if entry is None:
            return
        fut, status = entry
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                if name == b":status":
                    status[0] = int(value)
        if isinstance(event, (HeadersReceived, DataReceived)) and event.stream_ended:
            del self.waiting[event.stream_id]
            fut.set_result(status[0])


async def run(url: str, total: int, conns: int, inflight: int, ca: str | None, insecure: bool) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    authority, path = parts.netloc, parts.path or "/"
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=None)
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif ca:
        config.load_verify_locations(ca)
    config.server_name = "localhost" if host in ("127.0.0.1", "::1") else host
    errors = 0
    done = 0

    async def worker(client: H3Client, count: int) -> None:
        nonlocal errors, done
        left = [count]

        async def lane() -> None:
            nonlocal errors, done
            while left[0] > 0:
                left[0] -= 1
                try:
                    status = await client.get(authority, path)
                except Exception:
                    status = -1
                if status == 200:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(lane() for _ in range(inflight)))

    async with _connections(host, port, config, conns) as clients:
        share = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, n) for c, n in zip(clients, share, strict=True)))
        seconds = time.perf_counter() - t0
    return {"value": done / seconds, "errors": errors, "requests": done, "seconds": seconds}


class _connections:
    """``conns`` connections, opened together, closed together."""

    def __init__(self, host: str, port: int, config: QuicConfiguration, conns: int) -> None:
        self.args = (host, port, config)
        self.conns = conns
        self.cms: list[Any] = []

    async def __aenter__(self) -> list[H3Client]:
        host, port, config = self.args
        self.cms = [connect(host, port, configuration=config, create_protocol=H3Client) for _ in range(self.conns)]
        return list(await asyncio.gather(*(cm.__aenter__() for cm in self.cms)))

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(cm.__aexit__(None, None, None) for cm in self.cms), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP/3 GET load (aioquic client)")
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=5000, help="requests in all")
    parser.add_argument("-c", type=int, default=4, help="connections")
    parser.add_argument("-m", type=int, default=10, help="requests in flight per connection")
    parser.add_argument("--ca", help="CA to verify the server with (PEM)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server")
    args = parser.parse_args()
    result = asyncio.run(asyncio.wait_for(run(args.url, args.n, args.c, args.m, args.ca, args.insecure), 300))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
