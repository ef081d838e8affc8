"""``layers.httpx_transport.StackTransport``: httpx's documented behaviour over our HTTP clients.

Against our own server (HTTP/1.1 and HTTP/2 over TLS, and cleartext), against nghttpd (an
independent HTTP/2 server), through a SOCKS5 proxy (dante) and an HTTP CONNECT proxy (our
reverse proxy's CONNECT): methods and bodies both ways, streaming, redirects, the pool (keep-alive
reuse, HTTP/2 multiplexing, max_connections), timeouts and errors mapped to httpx's classes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from _peers import need
from _servers import running, serve_http
from test_cli_get import free_port, spawn, wait_port
from test_tls_support import certs

from layers import http, tcp, tls
from layers.httpx_transport import StackTransport
from layers.reverse_proxy import BackendPool, ProxyApp
from stack import Stack

LIMIT = 30.0
PAGE = b"hello from trio-stack\n"


async def app(request: http.Request) -> None:
    peers.add(request.info.get("peer"))
    if request.path == "/echo":
        body = await request.read()
        await request.respond(200, [("content-type", "application/octet-stream")], body)
    elif request.path == "/big":
        stream = await request.start_response(200, [("content-length", str(64 * 16384))])
        for _ in range(64):
            await stream.send(b"b" * 16384)
        await stream.done()
    elif request.path == "/redirect":
        await request.respond(302, [("location", "/final")], b"")
    elif request.path == "/slow-head":
        await trio.sleep(10)
        await request.respond(200, [], b"late")
    elif request.path == "/slow-body":
        stream = await request.start_response(200, [("content-length", "10")])
        await stream.send(b"12345")
        await trio.sleep(10)
        await stream.send(b"67890")
    elif request.path == "/version":
        await request.respond(200, [], request.http_version.encode())
    else:
        await request.respond(200, [("content-type", "text/plain")], PAGE)


peers: set[object] = set()


@asynccontextmanager
async def our_server(*, use_tls: bool = True) -> AsyncIterator[int]:
    """Our HTTP server (HTTP/1.1 and HTTP/2; over TLS by ALPN, else by sniffing) on 127.0.0.1."""
    layers: list[object] = [tls.server(certs().localhost, alpn=["h2", "http/1.1"])] if use_tls else []
    async with running(serve_http(app, *layers)) as port:
        peers.clear()
        yield port


def transport(**kw: object) -> StackTransport:
    kw.setdefault("verify", certs().ca_file)
    return StackTransport(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
async def test_get_post_stream_over_tls(http2: bool, version: str) -> None:
    with trio.fail_after(LIMIT):
        async with our_server() as port, httpx.AsyncClient(transport=transport(http2=http2)) as client:
            base = f"https://localhost:{port}"
            r = await client.get(base + "/")
            assert (r.status_code, r.content, r.http_version) == (200, PAGE, version)
            assert r.headers["content-type"] == "text/plain"
            r = await client.post(base + "/echo", content=b"x" * 100_000)
            assert r.content == b"x" * 100_000

            async def upload() -> AsyncIterator[bytes]:
                for i in range(50):
                    yield b"%d," % i

            r = await client.post(base + "/echo", content=upload())
            assert r.content == b"".join(b"%d," % i for i in range(50))
            async with client.stream("GET", base + "/big") as streamed:
                sizes = [len(chunk) async for chunk in streamed.aiter_raw()]
            assert sum(sizes) == 64 * 16384 and len(sizes) > 1
            assert len(peers) == 1  # one connection carried everything (kept alive / multiplexed)


async def test_cleartext_and_keep_alive_reuse_without_a_client_block() -> None:
    """Outside ``async with`` the transport has no nursery: HTTP/1.1 only, still pooled."""
    with trio.fail_after(LIMIT):
        async with our_server(use_tls=False) as port:
            client = httpx.AsyncClient(transport=transport())
            for _ in range(10):
                r = await client.get(f"http://127.0.0.1:{port}/version")
                assert r.content == b"1.1"
            assert len(peers) == 1
            await client.aclose()


async def test_h2_multiplexes_100_concurrent_requests_on_one_connection() -> None:
    with trio.fail_after(LIMIT):
        async with our_server() as port, httpx.AsyncClient(transport=transport()) as client:
            statuses: list[int] = []

            async def get() -> None:
                r = await client.get(f"https://localhost:{port}/")
                statuses.append(r.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(get)
            assert statuses == [200] * 100
            assert len(peers) == 1


async def test_cleartext_http2_prior_knowledge() -> None:
    with trio.fail_after(LIMIT):
        async with our_server(use_tls=False) as port, httpx.AsyncClient(transport=transport(http1=False)) as client:
            r = await client.get(f"http://127.0.0.1:{port}/version")
            assert (r.content, r.http_version) == (b"2", "HTTP/2")


async def test_redirects_are_httpxs() -> None:
    with trio.fail_after(LIMIT):
        async with our_server() as port, httpx.AsyncClient(transport=transport(), follow_redirects=True) as client:
            r = await client.get(f"https://localhost:{port}/redirect")
            assert r.status_code == 200 and r.url.path == "/final" and len(r.history) == 1


async def test_timeouts_map_to_httpx() -> None:
    with trio.fail_after(LIMIT):
        async with our_server() as port, httpx.AsyncClient(transport=transport()) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"https://localhost:{port}/slow-head", timeout=0.3)
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"https://localhost:{port}/slow-body", timeout=0.3)
            r = await client.get(f"https://localhost:{port}/")  # the connection still serves
            assert r.content == PAGE


async def test_pool_timeout_when_max_connections_are_busy() -> None:
    with trio.fail_after(LIMIT):
        async with (
            our_server(use_tls=False) as port,
            httpx.AsyncClient(transport=transport(limits=httpx.Limits(max_connections=1))) as client,
        ):
            async with client.stream("GET", f"http://127.0.0.1:{port}/big"):  # holds the only one
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5, pool=0.2))
            r = await client.get(f"http://127.0.0.1:{port}/")  # room again once it was closed
            assert r.content == PAGE


async def test_connect_errors() -> None:
    with trio.fail_after(LIMIT):
        async with httpx.AsyncClient(transport=transport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/")
        async with our_server() as port, httpx.AsyncClient(transport=StackTransport()) as client:
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.get(f"https://localhost:{port}/")  # our test CA is not the system's


async def test_server_closing_without_an_answer_is_a_remote_protocol_error() -> None:
    async def rude(stream: object) -> None:
        await stream.recv()  # type: ignore[attr-defined]
        await stream.aclose()  # type: ignore[attr-defined]

    with trio.fail_after(LIMIT):
        rude_server = functools.partial(Stack(tcp.listen("127.0.0.1", 0)).serve, rude)
        async with running(rude_server) as port, httpx.AsyncClient(transport=transport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/")


async def test_through_an_http_connect_proxy() -> None:
    with trio.fail_after(LIMIT):
        async with our_server() as port:
            unused = BackendPool(Stack(tcp.connect("127.0.0.1", 9)))
            proxy_app = ProxyApp(unused, allow_connect=[f"localhost:{port}"], access=False)
            async with (
                running(serve_http(proxy_app)) as proxy_port,
                httpx.AsyncClient(transport=transport(proxy=f"http://127.0.0.1:{proxy_port}")) as client,
            ):
                r = await client.get(f"https://localhost:{port}/version")
                assert r.content == b"2"  # TLS and ALPN end to end, inside the tunnel
                with pytest.raises(httpx.ProxyError):
                    await client.get(f"https://localhost:{free_port()}/")  # not allowed: 403


@pytest.mark.interop
async def test_through_dante_socks5(tmp_path: Path) -> None:
    from test_socks5 import danted

    with trio.fail_after(60):
        async with our_server() as port, danted(tmp_path) as (proxy_port, _):
            proxied = transport(proxy=f"socks5://127.0.0.1:{proxy_port}")
            async with httpx.AsyncClient(transport=proxied) as client:
                r = await client.get(f"https://localhost:{port}/")
                assert (r.status_code, r.content) == (200, PAGE)


@pytest.mark.interop
async def test_against_nghttpd(tmp_path: Path) -> None:
    program = need("nghttpd")
    (tmp_path / "index.html").write_bytes(PAGE)
    port = free_port()
    certfile, keyfile = certs().localhost
    cmd = [program, "-d", str(tmp_path), "-a", "127.0.0.1", str(port), keyfile, certfile]
    with trio.fail_after(60):
        async with spawn(cmd, stop=signal.SIGTERM):
            await wait_port(port)
            async with httpx.AsyncClient(transport=transport()) as client:
                r = await client.get(f"https://localhost:{port}/index.html")
                assert (r.status_code, r.content, r.http_version) == (200, PAGE, "HTTP/2")
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(client.get, f"https://localhost:{port}/index.html")
                r = await client.get(f"https://localhost:{port}/missing")
                assert r.status_code == 404


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http1 or http2"):
        StackTransport(http1=False, http2=False)
    with pytest.raises(ValueError, match="proxy scheme"):
        StackTransport(proxy="ftp://example.org")
    with pytest.raises(ValueError):
        StackTransport(engine="nope")
