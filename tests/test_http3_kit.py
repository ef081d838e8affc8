"""The conformance kit (stack.testing) on HTTP/3 request streams, as tests/test_http2.py runs it
on HTTP/2 streams and tests/test_quic.py on bare QUIC streams.

One QUIC connection over loopback carries every pair; a pair is one request stream: either a
request/response exchange (the client's stream writes the request body and reads the response
body; the server's, from ``start_response``, reads the request body and writes the response
body) or an extended CONNECT tunnel (RFC 9220). ``closed`` is skipped for the reason
tests/test_http2.py gives: an HTTP/3 stream abandoned before its end is reset
(H3_REQUEST_CANCELLED), so the peer gets Broken, never a truncated body that looks complete
(tests/test_http3.py covers abandoned requests).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from hypothesis import settings

from layers import http, http3
from layers.certs import CA, Leaf
from stack import ByteStream, after
from stack.testing import check_bytestream

TIMEOUT = 10.0
SKIP = ("closed",)
EXAMPLES = settings(max_examples=10)


class _Pairs:
    """Makes connected pairs of HTTP/3 request streams on one connection, one request each."""

    def __init__(self, h3: http3.H3ClientConnection, ends: trio.MemoryReceiveChannel[ByteStream], kind: str) -> None:
        self.h3 = h3
        self.ends = ends
        self.kind = kind

    async def __call__(self) -> tuple[ByteStream, ByteStream]:
        if self.kind == "tunnel":
            response = await self.h3.open_tunnel("kit", "/tunnel", deadline=after(TIMEOUT))
            client_end: ByteStream = response.body
        else:
            head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"kit"), (b":path", b"/exchange")]
            stream = self.h3.start_request(head, end_stream=False)
            await stream.response(deadline=after(TIMEOUT))
            client_end = stream
        with trio.fail_after(TIMEOUT):
            server_end = await self.ends.receive()
        return client_end, server_end


@asynccontextmanager
async def _connection(
    ca: CA, leaf: Leaf
) -> AsyncIterator[tuple[http3.H3ClientConnection, trio.MemoryReceiveChannel[ByteStream]]]:
    send, recv = trio.open_memory_channel[ByteStream](10)

    async def app(request: http.Request) -> None:
        stream = await request.start_response(200)
        await send.send(stream)
        # Until the kit closes it, even once the stream broke: an app that returns has its
        # stream closed by the server (as in tests/test_http2.py's kit pairs).
        while stream._closed is None:  # noqa: ASYNC110 - the test's own nursery cancels the rest
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(functools.partial(http3.serve, app, "127.0.0.1", 0, leaf))
        async with http3.open_client("127.0.0.1", address[1], ca=ca, deadline=after(TIMEOUT)) as h3:
            yield h3, recv
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["exchange", "tunnel"])
async def test_conformance_kit_on_http3_request_streams(ca: CA, leaf: Leaf, kind: str) -> None:
    async with _connection(ca, leaf) as (h3, ends):
        await check_bytestream(_Pairs(h3, ends, kind), skip=SKIP, settings=EXAMPLES)
