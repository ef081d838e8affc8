"""The reverse proxy of :mod:`layers.reverse_proxy`, mounted in process through its library API.

A :class:`~layers.reverse_proxy.ProxyApp` runs in a server built as ``Stack(tcp.listen(...),
http.server(app))`` in front of an in-process HTTP/1.1 backend: what the backend sees (Host, Via,
Forwarded, no hop-by-hop fields), what the client gets back, the pool (reuse only after a whole
body, the size bound, idle expiry, first come first served, retry of a stale connection), and the
failures (504, 408, a backend stalling mid-body). ``tests/test_cli_proxy.py`` drives the command
``python -m stack proxy`` with real peers. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from layers import http, tcp
from layers.reverse_proxy import HEADS_KEPT, BackendPool, ProxyApp, Upstream, parse_listen, request_headers
from stack import Stack, StackError, after
from stack.streams import Info

# --------------------------------------------------------------------------------------------------
# units: arguments and the header rules


def test_parse_arguments() -> None:
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError):
        parse_listen("localhost")
    assert Upstream.parse("http://127.0.0.1:9000").port == 9000
    assert Upstream.parse("unix:/run/a.sock").path == "/run/a.sock"
    assert Upstream.parse("unix:///run/a.sock").path == "/run/a.sock"
    for bad in ("https://x:1", "http://x:1/path", "unix:", "ftp://x"):
        with pytest.raises(ValueError):
            Upstream.parse(bad)


def test_request_headers_and_forwarded_per_connection() -> None:
    def request(info: Info, fields: list[tuple[bytes, bytes]], authority: str, version: str = "1.1") -> Any:
        return SimpleNamespace(info=info, headers=http.Headers._wire(fields), authority=authority, http_version=version)

    v4 = Info({"http_version": "1.1"}, Info({"peer": ("10.0.0.1", 5000), "transport": "tcp"}))
    v6 = Info({"http_version": "2"}, Info({"tls_version": "TLSv1.3"}), Info({"peer": ("::1", 5001)}))
    fields = [(b"host", b"a.example"), (b"connection", b"keep-alive, X-Hop"), (b"x-hop", b"1"), (b"keep-alive", b"5"),
              (b"cookie", b"a=1"), (b"te", b"trailers"), (b"proxy-authorization", b"x"), (b"x-kept", b"y"),
              (b"upgrade", b"h2c"), (b"cookie", b"b=2"), (b"expect", b"100-continue"),
              (b"via", b"1.0 far")]  # fmt: skip
    app = ProxyApp(cast(BackendPool, None), access=False)
    r = request(v4, fields, "a.example")
    assert request_headers(r, app._forwarded(r)) == [
        (b"host", b"a.example"), (b"cookie", b"a=1; b=2"), (b"x-kept", b"y"), (b"via", b"1.0 far"),
        (b"via", b"1.1 trio-stack"), (b"forwarded", b"for=10.0.0.1;proto=http;host=a.example"),
    ]  # fmt: skip
    r6 = request(v6, [(b"accept", b"*/*")], "[::1]:8443", "2")
    assert request_headers(r6, app._forwarded(r6))[-2:] == [
        (b"via", b"2 trio-stack"), (b"forwarded", b'for="[::1]";proto=https;host="[::1]:8443"'),
    ]  # fmt: skip
    for _ in range(2):  # kept per connection, and per Host
        assert app._forwarded(request(v4, [], "a.example")) == b"for=10.0.0.1;proto=http;host=a.example"
        assert app._forwarded(request(v6, [], "b.example")) == b'for="[::1]";proto=https;host=b.example'
        assert app._forwarded(request(v4, [], "")) == b"for=10.0.0.1;proto=http"
    assert request_headers(request(Info({}), [], ""))[-1] == (b"forwarded", b"for=unknown;proto=http")
    # kept per head: the same answer as request_headers, a different one for a different head or
    # connection, and at most HEADS_KEPT heads
    for _ in range(2):
        assert app._request_fields(r) == request_headers(r, app._forwarded(r))
        assert app._request_fields(r6) == request_headers(r6, app._forwarded(r6))
    for i in range(HEADS_KEPT + 10):
        ri = request(v4, [(b"x-n", b"%d" % i)], "a.example")
        assert app._request_fields(ri)[1] == (b"x-n", b"%d" % i)
        assert len(app._requests_kept) <= HEADS_KEPT


def test_which_requests_go_without_a_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/1.x by its framing fields; HTTP/2 by its stream having ended with the HEADERS (and no
    Content-Length but 0); any other version (HTTP/3) takes the path that reads the body."""
    monkeypatch.setattr(ProxyApp, "_forward_bodiless", lambda self, *args: "bodiless")
    monkeypatch.setattr(ProxyApp, "_forward_body", lambda self, *args: "body")
    app = ProxyApp(cast(BackendPool, None), access=False)
    info = Info({"peer": ("10.0.0.1", 5000)})

    def path(version: str, fields: list[tuple[bytes, bytes]], ended: bool | None = None) -> Any:
        body = SimpleNamespace() if ended is None else SimpleNamespace(ended=ended)
        request = SimpleNamespace(info=info, headers=http.Headers._wire(fields), authority="a", http_version=version,
                                  body=body)  # fmt: skip
        return app._forward(cast(http.Request, request))

    for version in ("1.1", "1.0"):
        assert path(version, []) == path(version, [(b"content-length", b"0")]) == "bodiless"
        assert path(version, [(b"content-length", b"3")]) == "body"
        assert path(version, [(b"transfer-encoding", b"chunked")]) == "body"
    assert path("2", [], ended=True) == path("2", [(b"content-length", b"0")], ended=True) == "bodiless"
    assert path("2", [], ended=False) == path("2", [(b"content-length", b"3")], ended=True) == "body"
    assert path("3", []) == path("3", [(b"content-length", b"0")]) == "body"


# --------------------------------------------------------------------------------------------------
# in process: the pool and the forwarding rules


class Backend:
    """An in-process HTTP/1.1 backend that records which connection served each request."""

    def __init__(self, limits: http.Limits = http.DEFAULT_LIMITS) -> None:
        self.peers: list[object] = []
        self.limits = limits
        self.port = 0

    async def app(self, request: http.Request) -> None:
        self.peers.append(request.info.get("peer"))
        body = await request.read()
        if request.path == "/close":
            await request.respond(200, [("connection", "close")], b"bye")
        elif request.path == "/large":
            out = await request.start_response(200, [("content-type", "application/octet-stream")])
            for _ in range(64):
                await out.send(b"z" * 65536)
            await out.done()
        elif request.path == "/slow":
            await trio.sleep(5)
            await request.respond(200, [], b"late")
        elif request.path in ("/stall-small", "/stall-large"):  # the head, part of the body, then nothing
            size = 10 if request.path == "/stall-small" else 10 * 65536
            out = await request.start_response(200, [("content-length", str(size))])
            await out.send(b"z" * (size // 2))
            await trio.sleep(5)
            await out.send(b"z" * (size - size // 2))
            await out.done()
        elif request.path == "/cookie":
            await request.respond(200, [], "|".join(request.headers.get_all("cookie")).encode())
        else:
            await request.respond(200, [("x-body", str(len(body)))], b"ok " + request.path.encode())

    async def start(self, nursery: trio.Nursery) -> None:
        server = Stack(tcp.listen("127.0.0.1", 0), http.server(self.app, self.limits))
        (_, self.port), *_ = await nursery.start(server.serve)


@asynccontextmanager
async def in_process_proxy(
    backend: Backend, *, size: int = 8, idle: float = 10.0, backend_timeout: float = 10.0
) -> AsyncIterator[tuple[int, BackendPool]]:
    async with trio.open_nursery() as nursery:
        await backend.start(nursery)
        pool = BackendPool(Stack(tcp.connect("127.0.0.1", backend.port), http.client()), size=size, idle_timeout=idle)
        await nursery.start(pool.run)
        app = ProxyApp(pool, timeout=backend_timeout, access=False)
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
        yield port, pool
        nursery.cancel_scope.cancel()


async def client(port: int, *, h2: bool = False) -> http.ClientConnection:
    stack = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=h2))
    conn: http.ClientConnection = await stack.connect(deadline=after(5))
    return conn


async def test_pool_reuses_one_connection_for_sequential_requests() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend) as (port, pool), await client(port) as conn:
            for i in range(20):
                response = await conn.request("POST", f"/r{i}", body=b"x" * i, deadline=after(5))
                assert await response.read() == f"ok /r{i}".encode()
                assert response.headers["x-body"] == str(i)
            assert len(set(backend.peers)) == 1 and pool.open == pool.idle == 1
            # the backend says Connection: close: that connection is not kept
            response = await conn.request("GET", "/close", deadline=after(5))
            assert await response.read() == b"bye"
            assert pool.open == 0
            response = await conn.request("GET", "/again", deadline=after(5))
            assert await response.read() == b"ok /again"
            assert len(set(backend.peers)) == 2


async def test_pool_size_bounds_concurrency_and_idle_connections_expire() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend, size=3, idle=0.3) as (port, pool), await client(port, h2=True) as conn:
            results: list[bytes] = []

            async def one(i: int) -> None:
                response = await conn.request("GET", f"/c{i}", deadline=after(10))
                results.append(await response.read())

            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, i)
            assert sorted(results) == sorted(f"ok /c{i}".encode() for i in range(30))
            assert len(set(backend.peers)) <= 3
            assert pool.idle >= 1
            await trio.sleep(1.0)
            assert pool.open == pool.idle == 0  # expired and closed


async def test_pool_hands_connections_to_waiting_callers_first_come_first_served() -> None:
    """A connection given back, or the room of one closed, goes to the caller waiting longest,
    not to one that comes after."""

    class Conn:
        async def aclose(self, *, deadline: float | None = None) -> None:
            pass

    class Source:
        async def connect(self, *, deadline: float) -> Conn:
            return Conn()

    pool = BackendPool(cast(Stack, Source()), size=1)
    order: list[tuple[str, bool]] = []

    async def take(name: str, keep: bool = True) -> None:
        conn, reused = await pool.acquire(deadline=after(5))
        order.append((name, reused))
        assert pool.open == 1
        await pool.release(conn, reusable=keep)

    with trio.fail_after(10):
        for keep in (True, False):  # given back, or closed (a new connection in its room)
            order.clear()
            conn, _ = await pool.acquire(deadline=after(5))
            async with trio.open_nursery() as nursery:
                for name in ("a", "b"):
                    nursery.start_soon(take, name, keep)
                    await trio.testing.wait_all_tasks_blocked()
                await pool.release(conn, reusable=keep)
                await take("c")  # came after a and b: waits for both
            assert [name for name, _ in order] == ["a", "b", "c"]
            assert [reused for _, reused in order] == ([True] * 3 if keep else [False] * 3)
            assert pool.open == pool.idle == 1


async def test_abandoned_response_is_not_reused_and_stale_connection_is_retried() -> None:
    backend = Backend(http.Limits(keepalive_timeout=0.3))  # the backend drops idle connections quickly
    with trio.fail_after(30):
        async with in_process_proxy(backend, idle=30) as (port, pool), await client(port, h2=True) as conn:
            response = await conn.request("GET", "/large", deadline=after(5))
            assert len(await response.body.recv(1000, deadline=after(5))) > 0
            await response.aclose()  # the client gives up mid-body: the stream is reset
            for _ in range(500):  # the proxy sees it and closes the backend connection (not reusable)
                if not pool.open:
                    break
                await trio.sleep(0.01)
            assert pool.open == 0
            response = await conn.request("GET", "/next", deadline=after(5))
            assert await response.read() == b"ok /next"
            assert len(set(backend.peers)) == 2 and pool.idle == 1
            await trio.sleep(0.8)  # the backend closed the kept connection meanwhile: retried on a new one
            response = await conn.request("GET", "/after-idle", deadline=after(5))
            assert (response.status, await response.read()) == (200, b"ok /after-idle")
            assert len(set(backend.peers)) == 3


async def test_504_in_process_and_the_proxy_goes_on() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend, backend_timeout=0.5) as (port, _), await client(port) as conn:
            response = await conn.request("GET", "/slow", deadline=after(5))
            assert response.status == 504 and response.headers["via"] == f"1.1 {'trio-stack'}"
            await response.read()
            response = await conn.request("GET", "/fine", deadline=after(5))
            assert (response.status, await response.read()) == (200, b"ok /fine")


async def test_http2_request_ended_with_its_headers_takes_no_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP/2 request whose HEADERS ended the stream (``H2Stream.ended``) goes as a bodiless
    HTTP/1.x one, without a cancel scope: the watchdog keeps its deadline (a slow backend is a
    504, and the proxy goes on), an empty POST reaches the backend with an empty body. A request
    whose body follows its HEADERS keeps the scope."""
    paths: list[str] = []
    for name in ("_forward_bodiless", "_forward_body"):
        method = getattr(ProxyApp, name)

        def spy(self: ProxyApp, *args: Any, _method: Any = method, _name: str = name) -> Any:
            paths.append(_name)
            return _method(self, *args)

        monkeypatch.setattr(ProxyApp, name, spy)
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend, backend_timeout=0.5) as (port, pool), await client(port, h2=True) as conn:
            response = await conn.request("GET", "/slow", deadline=after(5))
            assert response.status == 504 and response.headers["via"] == "2 trio-stack"
            await response.read()
            response = await conn.request("POST", "/empty", deadline=after(5))
            assert (response.status, response.headers["x-body"], await response.read()) == (200, "0", b"ok /empty")
            assert paths == ["_forward_bodiless", "_forward_bodiless"]
            response = await conn.request("POST", "/up", body=b"abc", deadline=after(5))
            assert (response.status, response.headers["x-body"], await response.read()) == (200, "3", b"ok /up")
            assert paths[2:] == ["_forward_body"]
            response = await conn.request("GET", "/fine", deadline=after(5))
            assert (response.status, await response.read()) == (200, b"ok /fine")
            assert pool.idle >= 1


async def test_a_small_http1_response_body_says_when_it_ended() -> None:
    """``ended`` of the HTTP/1.1 client's response body (what the proxy reads a small body by):
    false while bytes or the end are still to come, true once every byte of a whole body was taken."""
    backend = Backend()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await backend.start(nursery)
            async with await Stack(tcp.connect("127.0.0.1", backend.port), http.client()).connect(
                deadline=after(5)
            ) as conn:
                response = await conn.request("GET", "/fine", deadline=after(5))
                body = cast(Any, response.body)
                assert not body.ended
                assert await body.recv(1, deadline=after(5)) == b"o"
                assert not body.ended
                assert await body.recv(100, deadline=after(5)) == b"k /fine"
                assert body.ended and await body.recv(100) == b""
                response = await conn.request("GET", "/large", deadline=after(5))
                assert not cast(Any, response.body).ended
                await response.aclose()
            nursery.cancel_scope.cancel()


async def test_backend_stalling_in_a_response_body() -> None:
    """A small body is read whole before the head goes out: a stall is a 504. A large one
    streams: a stall aborts the response (HTTP/1.1 closes, HTTP/2 resets the stream). Neither
    connection is kept, and the proxy goes on."""
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend, backend_timeout=0.5) as (port, pool):
            for h2 in (False, True):
                async with await client(port, h2=h2) as conn:
                    response = await conn.request("GET", "/stall-small", deadline=after(5))
                    assert (response.status, await response.read()) == (504, b"504 the backend failed\n")
                async with await client(port, h2=h2) as conn:
                    response = await conn.request("GET", "/stall-large", deadline=after(5))
                    assert response.status == 200
                    with pytest.raises(StackError):
                        await response.read(deadline=after(5))
                async with await client(port, h2=h2) as conn:
                    response = await conn.request("GET", "/fine", deadline=after(5))
                    assert (response.status, await response.read()) == (200, b"ok /fine")
            assert pool.open == pool.idle == 1  # only the connection of the last /fine was kept


async def test_client_stalling_in_its_request_body_gets_408() -> None:
    """An upload that stops for longer than the timeout is the client's fault (408), whatever
    the backend does meanwhile; the backend connection it was going to is not reused."""
    backend = Backend()
    heads = [b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
             b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"]  # fmt: skip
    with trio.fail_after(30):
        async with in_process_proxy(backend, backend_timeout=0.5) as (port, pool):
            for head in heads:
                async with await Stack(tcp.connect("127.0.0.1", port)).connect(deadline=after(5)) as raw:
                    await raw.send(head)
                    answer = await raw.recv_until(b"\r\n", deadline=after(5))
                    assert answer.startswith(b"HTTP/1.1 408 "), answer

            async def stalling() -> AsyncIterator[bytes]:
                yield b"abc"
                await trio.sleep(1.5)
                yield b"def"

            async with await client(port, h2=True) as conn:
                response = await conn.request("POST", "/up", headers=[("content-length", "6")], body=stalling(),
                                              deadline=after(5))  # fmt: skip
                assert response.status == 408
                assert await response.read() == b"408 the request body did not arrive in time\n"
                response = await conn.request("GET", "/fine", deadline=after(5))
                assert (response.status, await response.read()) == (200, b"ok /fine")
            assert pool.open == pool.idle == 1


async def test_hop_by_hop_response_fields_are_removed() -> None:
    """A raw backend answers with fields named in Connection: they stay on its hop."""
    head = (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nTrailer: x-t\r\nX-Kept: 1\r\nVia: 1.0 upstream\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )

    async def raw_backend(stream: Any) -> None:
        await stream.recv_until(b"\r\n\r\n", deadline=after(5))
        await stream.send(head)
        await stream.done()
        while await stream.recv(deadline=after(5)):
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (_, bport), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0)).serve, raw_backend)
            pool = BackendPool(Stack(tcp.connect("127.0.0.1", bport), http.client()))
            app = ProxyApp(pool, access=False)
            (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
            for h2 in (False, True):
                async with await client(port, h2=h2) as conn:
                    response = await conn.request("GET", "/", deadline=after(5))
                    assert await response.read() == b"ok"
                    names = [name for name, _ in response.headers]
                    for gone in ("x-hop", "keep-alive", "proxy-authenticate", "trailer", "transfer-encoding"):
                        assert gone not in names, response.headers
                    assert response.headers["x-kept"] == "1"
                    assert response.headers.get_all("via") == ["1.0 upstream", "1.1 trio-stack"]
            nursery.cancel_scope.cancel()


async def test_http2_cookies_are_joined_for_http1() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with in_process_proxy(backend) as (port, _), await client(port, h2=True) as conn:
            response = await conn.request("GET", "/cookie", headers=[("cookie", "a=1"), ("cookie", "b=2")])
            assert await response.read() == b"a=1; b=2"


async def test_mounted_in_a_server_the_backend_sees_host_via_and_forwarded() -> None:
    """The few lines of the module docstring: a pool, the app, a server; over HTTP/1.1 and HTTP/2
    the backend gets the client's Host, Via and Forwarded, and no hop-by-hop field."""
    seen: list[http.Headers] = []

    async def backend(request: http.Request) -> None:
        seen.append(request.headers)
        body = await request.read()
        await request.respond(200, [("content-type", "text/plain")], b"got " + body)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (_, bport), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(backend)).serve)
            pool = BackendPool(Upstream.parse(f"http://127.0.0.1:{bport}").stack(), size=4)
            await nursery.start(pool.run)
            app = ProxyApp(pool, timeout=10, access=False)
            (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
            for h2, version in ((False, "1.1"), (True, "2")):
                async with await client(port, h2=h2) as conn:
                    response = await conn.request(
                        "POST", "/echo", headers=[("x-kept", "yes"), ("te", "trailers")], body=b"hello",
                        deadline=after(5),
                    )  # fmt: skip
                    assert (response.status, await response.read()) == (200, b"got hello")
                    assert response.headers.get_all("via") == ["1.1 trio-stack"]
                headers = seen[-1]
                assert headers["host"] == f"127.0.0.1:{port}"
                assert headers["x-kept"] == "yes" and "te" not in headers
                assert headers["via"] == f"{version} trio-stack"
                assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{port}"'
            assert pool.open >= 1
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_unreachable_backend_is_502() -> None:
    with socket_port() as dead:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                pool = BackendPool(Stack(tcp.connect("127.0.0.1", dead), http.client()), connect_timeout=2)
                app = ProxyApp(pool, access=False)
                (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
                async with await client(port) as conn:
                    response = await conn.request("GET", "/", deadline=after(5))
                    assert response.status == 502
                    assert await response.read() == b"502 the backend cannot be reached\n"
                nursery.cancel_scope.cancel()


class socket_port:
    """A port nobody listens on (bound, never listening, while the block runs)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
