"""HTTP/2 ``open_tunnel``: the version-agnostic tunnel call (layers.http.ClientConnection) as an
extended CONNECT (RFC 8441), against our own server: the response's body is the tunnel both
ways, a non-2xx raises TunnelRefused with a readable response, the server's setting is needed,
and a deadline leaves nothing open."""

from __future__ import annotations

import pytest
import trio
from test_http2 import h2_pair

from layers import http, http2
from stack import ByteStream, StackError, Timeout
from stack.testing import memory_pair

TIMEOUT = 10.0


def after(seconds: float) -> float:
    return trio.current_time() + seconds


async def tunnel_app(request: http.Request) -> None:
    """Extended CONNECT echo: the tunnel's bytes come back uppercased; /refused gets a 403 with
    a body; /silent never answers; the first reply tells what the server saw."""
    assert isinstance(request, http2.H2Request)
    if request.method != "CONNECT" or request.protocol is None:
        await request.respond(405, [], b"")
        return
    if request.path == "/refused":
        await request.respond(403, [("x-why", "policy")], b"not allowed")
        return
    if request.path == "/silent":
        await trio.sleep_forever()
    seen = f"{request.protocol} {request.target} {request.authority} {request.headers.get('x-extra')}"
    tunnel = await request.start_response(200, [("x-seen", seen)])
    while chunk := await tunnel.recv():
        await tunnel.send(chunk.upper())
    await tunnel.done()


async def test_open_tunnel_returns_the_response_whose_body_is_the_tunnel() -> None:
    async with h2_pair(tunnel_app) as conn:
        with trio.fail_after(TIMEOUT):
            response = await conn.open_tunnel("websocket", "/chat", headers=[("x-extra", "1")])
            assert isinstance(response, http2.H2Response) and response.status == 200
            assert response.headers["x-seen"] == "websocket /chat test.example 1"
            tunnel = response.body
            assert isinstance(tunnel, ByteStream)
            await tunnel.send(b"hello ")
            assert await tunnel.recv_exactly(6) == b"HELLO "
            await tunnel.send(b"world")
            await tunnel.done()
            assert await tunnel.recv_until(b"D") == b"WORLD"
            assert await tunnel.recv() == b""
            await response.aclose()
            # the connection goes on
            r = await conn.request("GET", "/", deadline=after(TIMEOUT))
            assert r.status == 405
            await r.aclose()


async def test_open_tunnel_uses_a_host_header_as_the_authority() -> None:
    async with h2_pair(tunnel_app) as conn:
        response = await conn.open_tunnel(
            "chat", "/room?x=1", headers=[("host", "other.example")], deadline=after(TIMEOUT)
        )
        assert response.headers["x-seen"] == "chat /room?x=1 other.example None"
        await response.aclose()


async def test_open_tunnel_is_the_client_connection_call() -> None:
    async with h2_pair(tunnel_app) as conn:
        generic: http.ClientConnection = conn
        response = await generic.open_tunnel("websocket", "/", deadline=after(TIMEOUT))
        await response.body.send(b"abc")
        assert await response.body.recv_exactly(3) == b"ABC"
        await response.aclose()


async def test_a_refused_tunnel_raises_with_a_readable_response() -> None:
    async with h2_pair(tunnel_app) as conn:
        with pytest.raises(http2.TunnelRefused) as info:
            await conn.open_tunnel("websocket", "/refused", deadline=after(TIMEOUT))
        response = info.value.response
        assert response.status == 403 and response.headers["x-why"] == "policy"
        assert await response.read(deadline=after(TIMEOUT)) == b"not allowed"
        await response.aclose()
        assert http2.TunnelRefused is http.TunnelRefused
        r = await conn.request("GET", "/", deadline=after(TIMEOUT))  # the connection goes on
        assert r.status == 405
        await r.aclose()


async def test_open_tunnel_needs_the_server_setting() -> None:
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            conn = await http2.server(tunnel_app, enable_connect_protocol=False).attach(b, deadline=after(TIMEOUT))
            await conn.serve(tunnel_app)

        nursery.start_soon(serve)
        async with await http2.client().attach(a) as conn:
            with pytest.raises(StackError, match="extended CONNECT"):
                await conn.open_tunnel("websocket", "/", deadline=after(TIMEOUT))
        nursery.cancel_scope.cancel()


async def test_open_tunnel_deadline_leaves_nothing_open() -> None:
    async with h2_pair(tunnel_app) as conn:
        with pytest.raises(Timeout):
            await conn.open_tunnel("websocket", "/silent", deadline=after(0.2))
        assert not conn._streams  # the stream was reset and released
        response = await conn.open_tunnel("websocket", "/", deadline=after(TIMEOUT))
        assert response.status == 200
        await response.aclose()


async def test_a_server_connection_cannot_be_detached() -> None:
    """Same name as HTTP/1.1's ``detach``; HTTP/2 never allows it, and nothing changes."""
    a, b = memory_pair()
    servers: list[http2.H2ServerConnection] = []
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            servers.append(await http2.server(tunnel_app).attach(b, deadline=after(TIMEOUT)))
            await servers[0].serve(tunnel_app)

        nursery.start_soon(serve)
        async with await http2.client().attach(a) as conn:
            response = await conn.open_tunnel("websocket", "/", deadline=after(TIMEOUT))
            await response.aclose()
            with pytest.raises(StackError, match="cannot be detached"):
                await servers[0].detach()
            response = await conn.open_tunnel("websocket", "/", deadline=after(TIMEOUT))
            assert response.status == 200
            await response.aclose()
        nursery.cancel_scope.cancel()
