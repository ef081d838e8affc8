"""The conformance kit (``stack.testing``) on HTTP/1.1's ByteStreams: bodies and tunnels.

Which pairings are honest: the kit's checks take two connected ByteStreams and send both ways.
An HTTP/1.1 exchange has exactly such a pair only where the protocol gives one:

``tunnel``
    After ``CONNECT`` (and a 2xx) the client's ``response.body`` and the server's
    ``start_response`` stream are the two ends of the raw connection, handed over with h11's
    read-ahead pushed back. Every property, and ``check_detach`` (the tunnel gives back the
    stream below with every byte intact).
``exchange``
    One request/response exchange as a duplex: the server end is the stream
    ``request.start_response(200)`` returns (``send``: the chunked response body; ``recv``: the
    request body, chunked), the client end a thin adapter over our client (``send`` hands chunks
    to the streamed request body ``conn.request(body=...)`` uploads; ``recv`` reads
    ``response.body``). The server side is checked for real (request-body receives under
    deadlines and cancellation, chunked writing and reading, end of stream, Busy, Broken); the
    adapter's own send semantics are a channel hand-off, so what ``send_deadlines`` proves
    there is that every chunk our client took arrives once, in order.
``response``
    The server's response stream (``a``, sending with deadlines: ``Timeout.sent`` through
    chunked framing) to the client's ``response.body`` (``b``). The client body only receives, so
    the properties that send back are skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from layers import http, http1
from stack import Broken, ByteStream, Closed
from stack.testing import chaos_pair, check_bytestream, check_detach

CAPACITY = 4096  # small buffers: send deadlines meet backpressure with small payloads


async def never_called(request: http.Request) -> None:  # pragma: no cover - the tests drive recv()
    raise AssertionError("not used")


async def connect_tunnel(lower_c: ByteStream, lower_s: ByteStream) -> tuple[ByteStream, ByteStream]:
    """Attach our client and server on the two lower streams and open a CONNECT tunnel."""
    client = await http1.client(authority="proxy.test").attach(lower_c)
    server = await http1.server(never_called).attach(lower_s)
    ends: dict[str, ByteStream] = {}

    async def server_side() -> None:
        request = await server.recv()
        ends["server"] = await request.start_response(200)

    async with trio.open_nursery() as n:
        n.start_soon(server_side)
        response = await client.request("CONNECT", "example.test:443")
        assert response.status == 200
        ends["client"] = response.body
    return ends["client"], ends["server"]


async def tunnel_pair() -> tuple[ByteStream, ByteStream]:
    return await connect_tunnel(*chaos_pair(capacity=CAPACITY))


async def lower_pair() -> tuple[ByteStream, ByteStream]:
    return chaos_pair(capacity=CAPACITY)


async def test_tunnel_bytestream() -> None:
    await check_bytestream(tunnel_pair)


async def test_tunnel_detach() -> None:
    await check_detach(lower_pair, connect_tunnel)


class Upload(ByteStream):
    """Client end of one exchange: ``send`` feeds the streamed request body, ``recv`` reads the
    response body (once the upload ended and the response head came)."""

    kind = "test-upload"

    def __init__(self, lower: ByteStream, conn: http1.ClientConnection) -> None:
        super().__init__(lower, {})
        self._conn = conn
        self._chunks_in, self._chunks_out = trio.open_memory_channel[bytes](0)
        self._ready = trio.Event()
        self._response: http.Response | None = None

    async def run(self) -> None:
        async def body() -> AsyncIterator[bytes]:
            async for chunk in self._chunks_out:
                yield chunk

        try:
            self._response = await self._conn.request("POST", "/", body=body())
        except (Broken, Closed):
            pass
        finally:
            self._ready.set()

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        n = min(len(data), 65536)
        await self._chunks_in.send(bytes(data[:n]))  # committed once the uploader took it
        return n

    async def _done(self, deadline: float) -> None:
        await self._chunks_in.aclose()  # the upload ends: our client sends the last chunk

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        await self._ready.wait()
        if self._response is None:
            raise Broken("the exchange failed")
        return await self._response.body.recv(max_bytes, deadline=deadline)

    async def _close(self, deadline: float) -> None:
        await self._chunks_in.aclose()
        with trio.move_on_at(deadline):
            await self._ready.wait()  # the request body ended cleanly before the connection closes


def exchange_maker(nursery: trio.Nursery) -> object:
    async def make() -> tuple[ByteStream, ByteStream]:
        lower_c, lower_s = chaos_pair(capacity=CAPACITY)
        client = await http1.client(authority="example.test").attach(lower_c)
        server = await http1.server(never_called).attach(lower_s)
        upload = Upload(lower_c, client)
        nursery.start_soon(upload.run)
        request = await server.recv()
        assert request.headers.get("transfer-encoding") == "chunked"
        stream = await request.start_response(200)
        return upload, stream

    return make


async def test_exchange_bytestream() -> None:
    async with trio.open_nursery() as nursery:
        await check_bytestream(exchange_maker(nursery))  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def response_pair() -> tuple[ByteStream, ByteStream]:
    lower_c, lower_s = chaos_pair(capacity=CAPACITY)
    client = await http1.client(authority="example.test").attach(lower_c)
    server = await http1.server(never_called).attach(lower_s)
    ends: dict[str, ByteStream] = {}

    async def server_side() -> None:
        request = await server.recv()
        ends["server"] = await request.start_response(200)

    async with trio.open_nursery() as n:
        n.start_soon(server_side)
        response = await client.request("GET", "/")
    return ends["server"], response.body


async def test_response_stream_to_client_body() -> None:
    await check_bytestream(response_pair, skip={"round_trip", "recv_deadlines", "closed"})
