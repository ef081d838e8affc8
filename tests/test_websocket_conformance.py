"""The conformance kit on the WebSocket layer: raw frames over memory, chaos and TCP pairs, the
HTTP/1.1 opening handshake (``websocket.server()`` / ``websocket.client()``), permessage-deflate,
and WebSockets over an HTTP/2 extended CONNECT stream (RFC 8441); detach as the closing handshake.

``HYPOTHESIS_PROFILE=ci`` runs 120 examples per property (stack.testing.CI_EXAMPLES), ``dev`` 30.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from layers import _ws_stream, http2, tcp, websocket
from stack import ByteStream, MessageStream, Stream, after
from stack.testing import chaos_pair, check_detach, check_message_stream, memory_pair

PairMaker = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]
MessagePairMaker = Callable[[], Awaitable[tuple[MessageStream, MessageStream]]]

CAPACITY = 4096  # small buffers: send deadlines meet backpressure with small messages


async def memory_maker() -> tuple[ByteStream, ByteStream]:
    return memory_pair(capacity=CAPACITY)


async def chaos_maker() -> tuple[ByteStream, ByteStream]:
    return chaos_pair(capacity=CAPACITY)


async def tcp_maker() -> tuple[ByteStream, ByteStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    try:
        host, port = listener.address
        client = await tcp.connect(host, port).connect()
        server = await listener.accept()
    finally:
        await listener.aclose()
    return client, server


BOTTOMS: dict[str, PairMaker] = {"memory": memory_maker, "chaos": chaos_maker, "tcp": tcp_maker}


def raw_pair(make: PairMaker, deflate: str | None = None) -> MessagePairMaker:
    async def make_pair() -> tuple[MessageStream, MessageStream]:
        a, b = await make()
        c = await websocket.raw("client", deflate=deflate).attach(a)
        s = await websocket.raw("server", deflate=deflate).attach(b)
        return c, s

    return make_pair


async def handshake(a: ByteStream, b: ByteStream, *, deflate: bool = False) -> tuple[Stream, Stream]:
    """The HTTP/1.1 opening handshake with the specs, both sides at once."""
    out: dict[str, Stream] = {}

    async def serve() -> None:
        out["s"] = await websocket.server(deflate=deflate).attach(b, deadline=after(5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        out["c"] = await websocket.client("test", "/ws", deflate=deflate).attach(a, deadline=after(5))
    return out["c"], out["s"]


def handshake_pair(make: PairMaker, *, deflate: bool = False) -> MessagePairMaker:
    async def make_pair() -> tuple[MessageStream, MessageStream]:
        a, b = await make()
        c, s = await handshake(a, b, deflate=deflate)
        assert isinstance(c, MessageStream) and isinstance(s, MessageStream)
        return c, s

    return make_pair


@pytest.mark.no_http1  # websocket.raw: no HTTP/1.1 handshake
@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp"])
async def test_raw_frames(bottom: str) -> None:
    await check_message_stream(raw_pair(BOTTOMS[bottom]))


@pytest.mark.no_http1  # websocket.raw: no HTTP/1.1 handshake
@pytest.mark.parametrize("deflate", [None, "permessage-deflate"])
async def test_raw_frames_sent_in_small_fragments(deflate: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message of more than 7 bytes goes out as fragments, with Pings and Pongs between them."""
    monkeypatch.setattr(_ws_stream, "FRAGMENT", 7)  # the module whose _fragments reads it
    await check_message_stream(raw_pair(chaos_maker, deflate=deflate))


@pytest.mark.parametrize("bottom", ["memory", "tcp"])
async def test_after_the_http1_handshake(bottom: str) -> None:
    await check_message_stream(handshake_pair(BOTTOMS[bottom]))


async def test_with_permessage_deflate() -> None:
    await check_message_stream(handshake_pair(chaos_maker, deflate=True))


@pytest.mark.no_http1  # websocket.raw: no HTTP/1.1 handshake
async def test_raw_with_permessage_deflate_no_context_takeover() -> None:
    ext = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
    await check_message_stream(raw_pair(memory_maker, deflate=ext))


@pytest.mark.no_http1  # websocket.raw: no HTTP/1.1 handshake
@pytest.mark.parametrize("bottom", ["memory", "chaos", "tcp"])
async def test_detach_is_the_closing_handshake(bottom: str) -> None:
    async def attach(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
        return await websocket.raw("client").attach(a), await websocket.raw("server").attach(b)

    await check_detach(BOTTOMS[bottom], attach, raw_after_detach=True)


async def test_detach_after_the_handshake() -> None:
    await check_detach(memory_maker, handshake, raw_after_detach=True)


# ---- over HTTP/2 extended CONNECT ---------------------------------------------------------------


def _on_close(ws: websocket.WebSocket) -> trio.Event:
    """An event set when ``ws`` is closed (its ``_abort`` hook runs on every aclose)."""
    event = trio.Event()
    abort = ws._abort

    def wrapped() -> None:
        abort()
        event.set()

    ws._abort = wrapped  # type: ignore[method-assign]
    return event


async def _h2_pair(make: PairMaker, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Two WebSockets over one extended CONNECT stream of an HTTP/2 connection (our client, our
    server); the connections run until both WebSockets are closed."""
    a, b = await make()
    async with trio.open_nursery() as nursery:
        client_conn = await http2.client(authority="test", scheme="http").attach(a)
        await nursery.start(client_conn.run)
        server_conn = await http2.server(_no_app).attach(b, deadline=after(5))
        await nursery.start(server_conn.run)
        out: dict[str, websocket.WebSocket] = {}

        async def accept() -> None:
            request = await server_conn.recv(deadline=after(5))
            out["s"] = await websocket.accept(request, deadline=after(5))

        async with trio.open_nursery() as inner:
            inner.start_soon(accept)
            out["c"] = await websocket.connect(client_conn, "/ws", deadline=after(5))
        assert out["c"].info["http_version"] == "2" and out["s"].info["http_version"] == "2"
        closed = [_on_close(out["c"]), _on_close(out["s"])]
        task_status.started((out["c"], out["s"]))
        for event in closed:
            await event.wait()
        nursery.cancel_scope.cancel()


async def _no_app(request: Any) -> None:  # pragma: no cover - recv() mode
    raise AssertionError("unused")


@pytest.mark.parametrize("bottom", ["memory", "tcp"])
async def test_over_an_http2_stream(bottom: str) -> None:
    async with trio.open_nursery() as nursery:

        async def make_pair() -> tuple[MessageStream, MessageStream]:
            pair: tuple[MessageStream, MessageStream] = await nursery.start(_h2_pair, BOTTOMS[bottom])
            return pair

        await check_message_stream(make_pair)
        nursery.cancel_scope.cancel()
