"""layers.asgi with raw ASGI apps, in this process: the scope exactly, the body streamed both ways
with backpressure, http.disconnect on both versions, trailers, pathsend, early hints, the TLS
extension, WebSocket over HTTP/1.1 and HTTP/2, lifespan, and app errors. Clients: ours (both
versions, so every byte the server sent is visible) and raw sockets.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _servers import running

from layers import asgi, http, tcp, tls, websocket
from layers.certs import CA
from stack import Stack, StackError

Scope = dict[str, Any]
VERSIONS = ["1.1", "2"]


@asynccontextmanager
async def served(app: Any, *, leaf: Any = None, root_path: str = "", lifespan: bool = False) -> AsyncIterator[int]:
    """``serve_asgi(app)`` on 127.0.0.1, any port, in this process; yields the port. Unless
    ``lifespan``, the app is wrapped to refuse the lifespan scope (as an app without it does)."""
    tls_spec = tls.server(leaf, alpn=["h2", "http/1.1"], ragged_eofs=True) if leaf is not None else None
    cert = leaf.cert_pem.decode() if leaf is not None else None
    wrapped = asgi.ASGIApp(app if lifespan else no_lifespan(app), root_path=root_path, server_cert=cert)
    shutdown = trio.Event()
    serve = functools.partial(asgi.serve_asgi, wrapped, "127.0.0.1", 0, tls=tls_spec, shutdown=shutdown)
    with trio.fail_after(30):
        async with running(serve, shutdown=shutdown) as port:  # graceful: the lifespan shutdown runs last
            yield port


def no_lifespan(app: Any) -> Any:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("this app has no lifespan")
        await app(scope, receive, send)

    return wrapped


@asynccontextmanager
async def client(port: int, version: str, *specs: Any) -> AsyncIterator[http.ClientConnection]:
    stack = Stack(tcp.connect("127.0.0.1", port), *specs, http.client(prior_knowledge=version == "2"))
    async with await stack.connect() as conn:
        yield conn


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_http_scope_is_exact(version: str) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        scopes.append(scope)
        await hello(scope, receive, send)

    async with served(app, root_path="/mount/") as port, client(port, version) as conn:
        r = await conn.request("GET", "/a%20b/c%2Fd/%C3%A9?x=1&y=%20", headers=[("X-Custom", "Val")])
        assert (r.status, await r.read()) == (200, b"hello")
    (scope,) = scopes
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == version
    assert scope["scheme"] == "http"
    assert scope["method"] == "GET"
    assert scope["path"] == "/mount/a b/c/d/\u00e9"
    assert scope["raw_path"] == b"/a%20b/c%2Fd/%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == "/mount"
    headers = [tuple(h) for h in scope["headers"]]
    assert (b"x-custom", b"Val") in headers
    assert all(isinstance(k, bytes) and k == k.lower() and isinstance(v, bytes) for k, v in headers)
    assert [k for k, _ in headers].count(b"host") == 1
    assert not any(k.startswith(b":") for k, _ in headers)
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", port]
    assert "state" not in scope  # the app has no lifespan
    assert {"http.response.trailers", "http.response.pathsend", "http.response.early_hint"} <= set(scope["extensions"])
    assert "tls" not in scope["extensions"]


def lifespan_app(inner: Callable[..., Any], state: dict[str, Any], log: list[str]) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await inner(scope, receive, send)
            return
        while True:
            message = await receive()
            log.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"].update(state)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


async def test_lifespan_state_is_copied_into_each_scope() -> None:
    seen: list[Any] = []

    async def inner(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(dict(scope["state"]))
        scope["state"]["mine"] = True  # a copy: the next request does not see it
        await hello(scope, receive, send)

    log: list[str] = []
    async with served(lifespan_app(inner, {"db": "ready"}, log), lifespan=True) as port, client(port, "1.1") as conn:
        for _ in range(2):
            await (await conn.request("GET", "/")).read()
        assert log == ["lifespan.startup"]
    assert seen == [{"db": "ready"}, {"db": "ready"}]
    assert log == ["lifespan.startup", "lifespan.shutdown"]


async def test_lifespan_startup_failure_stops_serving() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(asgi.LifespanFailure, match="no database"):
        await asgi.serve_asgi(app, "127.0.0.1", 0)

    async def raises(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("boom in startup")

    with pytest.raises(asgi.LifespanFailure, match="boom in startup"):
        await asgi.serve_asgi(raises, "127.0.0.1", 0)


@pytest.mark.parametrize("version", VERSIONS)
async def test_request_and_response_bodies_stream(version: str) -> None:
    """The body arrives in pieces as sent, and the echo goes back in pieces, both versions."""
    messages: list[int] = []

    async def echo(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            messages.append(len(message["body"]))
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
            if not message["more_body"]:
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    payload = os.urandom(1_000_000)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]
            await trio.lowlevel.checkpoint()

    async with served(echo) as port, client(port, version) as conn:
        r = await conn.request("POST", "/", body=body())
        assert await r.read() == payload
    assert len(messages) > 5 and max(messages) <= 65536 and sum(messages) == len(payload)


async def test_receive_holds_the_client_back() -> None:
    """An app that stops reading stops the upload (HTTP/2 flow control: about the stream window)."""
    sent = 0
    stalled = trio.Event()

    async def slow(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        stalled.set()
        await trio.sleep(1.0)
        while (await receive())["more_body"]:
            pass
        await hello(scope, receive, send)

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(256):  # 16 MiB
            sent += 65536
            yield bytes(65536)

    async with served(slow) as port, client(port, "2") as conn, trio.open_nursery() as nursery:

        async def upload() -> None:
            r = await conn.request("POST", "/", body=body())
            assert await r.read() == b"hello"

        nursery.start_soon(upload)
        await stalled.wait()
        await trio.sleep(0.5)
        assert sent <= 4 * 1024 * 1024, sent  # the window (1 MiB) and a little, never the 16 MiB
    assert sent == 256 * 65536


@pytest.mark.parametrize("version", [*VERSIONS, "1.1 over TLS", "2 over TLS"])
async def test_disconnect_reaches_an_app_waiting_on_receive(version: str) -> None:
    """The client goes away mid-response while the app waits in receive(): http.disconnect, and
    a send after it raises an OSError."""
    got: list[Any] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        got.append(await receive())
        try:
            await send({"type": "http.response.body", "body": b"more", "more_body": True})
        except OSError as exc:
            got.append(exc)
        done.set()

    ca = CA.new("asgi test CA")
    leaf = ca.issue("localhost") if "TLS" in version else None
    async with served(app, leaf=leaf) as port:
        if leaf is not None:
            alpn = ["h2"] if version.startswith("2") else ["http/1.1"]
            async with client(port, "", tls.client(ca=ca, server_hostname="localhost", alpn=alpn)) as conn:
                r = await conn.request("GET", "/")
                assert await r.body.recv(100) == b"first"
                if alpn == ["h2"]:
                    await r.aclose()  # RST_STREAM
        elif version == "1.1":
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                seen = b""
                while b"first" not in seen:  # the head and the first chunk may come apart
                    chunk = await trio.to_thread.run_sync(s.recv, 4096)
                    assert chunk, seen
                    seen += chunk
        else:
            async with client(port, "2") as conn:
                r = await conn.request("GET", "/")
                assert await r.body.recv(100) == b"first"
                await r.aclose()  # RST_STREAM
        with trio.fail_after(5):
            await done.wait()
    assert got[0] == {"type": "http.disconnect"}
    assert isinstance(got[1], OSError)


async def test_receive_after_the_response_gives_disconnect_at_once() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await hello(scope, receive, send)
        with trio.fail_after(1):
            assert (await receive())["type"] == "http.request"
            assert (await receive())["type"] == "http.disconnect"

    async with served(app) as port, client(port, "1.1") as conn:
        for _ in range(2):  # the connection goes on
            assert await (await conn.request("GET", "/")).read() == b"hello"


def trailer_app(scope: Scope, receive: Any, send: Any) -> Any:
    async def run() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-count", b"1")], "more_trailers": False})

    return run()


@pytest.mark.parametrize(("version", "te"), [("2", False), ("1.1", True), ("1.1", False)])
async def test_trailers(version: str, te: bool) -> None:
    async with served(trailer_app) as port, client(port, version) as conn:
        r = await conn.request("GET", "/", headers=[("te", "trailers")] if te else [])
        assert await r.read() == b"data"
        expected = [("x-checksum", "abc"), ("x-count", "1")] if version == "2" or te else []
        assert list(r.trailers) == expected


@pytest.mark.parametrize("version", VERSIONS)
async def test_pathsend(version: str, tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"tiny file")
    large.write_bytes(os.urandom(1_000_003))

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x/y")]})
        await send({"type": "http.response.pathsend", "path": str(tmp_path / scope["path"].strip("/"))})

    async with served(app) as port, client(port, version) as conn:
        for f in (small, large):
            r = await conn.request("GET", "/" + f.name)
            assert (r.status, await r.read()) == (200, f.read_bytes())


async def test_early_hints_over_http1() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload; as=style"]})
        await hello(scope, receive, send)

    async with served(app) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await trio.to_thread.run_sync(s.recv, 65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload; as=style\r\n")
    assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in data and data.endswith(b"hello")


@pytest.mark.parametrize("version", VERSIONS)
async def test_app_errors(version: str, caplog: pytest.LogCaptureFixture) -> None:
    """Before the response: 500 and a traceback; after it started: reset or closed, never a hang;
    no answer: 500; the server goes on."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/before":
            raise RuntimeError("failed before")
        if path == "/silent":
            return
        if path in ("/after", "/half"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            if path == "/after":
                raise RuntimeError("failed after")
            return
        await hello(scope, receive, send)

    async with served(app) as port:
        for path in ("/before", "/silent"):
            async with client(port, version) as conn:
                r = await conn.request("GET", path)
                assert r.status == 500
                await r.read()
        for path in ("/after", "/half"):
            with trio.fail_after(5):
                async with client(port, version) as conn:
                    r = await conn.request("GET", path)
                    assert r.status == 200
                    with pytest.raises(StackError):
                        await r.read()
        async with client(port, version) as conn:
            assert await (await conn.request("GET", "/ok")).read() == b"hello"
    assert "failed before" in caplog.text and "Traceback" in caplog.text
    assert "failed after" in caplog.text


async def test_tls_extension_and_https_scheme() -> None:
    ca = CA.new("asgi test CA")
    leaf = ca.issue("localhost")
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    async with served(app, leaf=leaf) as port:
        for alpn in (["h2"], ["http/1.1"]):
            spec = tls.client(ca=ca, server_hostname="localhost", alpn=alpn)
            async with client(port, "", spec) as conn:
                assert await (await conn.request("GET", "/")).read() == b"hello"
    assert [s["http_version"] for s in scopes] == ["2", "1.1"]
    for scope in scopes:
        assert scope["scheme"] == "https"
        ext = scope["extensions"]["tls"]
        assert ext["tls_version"] == 0x0304
        assert isinstance(ext["cipher_suite"], int) and 0x1301 <= ext["cipher_suite"] <= 0x1305
        assert ext["client_cert_chain"] == []
        assert ext["server_cert"].startswith("-----BEGIN CERTIFICATE-----")


# ---------------------------------------------------------------------------------- WebSocket


async def ws_app(scope: Scope, receive: Any, send: Any) -> None:
    """/deny: a 401 denial; /refuse: close before accept (403); else accept the last subprotocol
    offered, echo until "close", then close with 4001 "bye" and report the client's close."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"no token"})
        return
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close"})
        return
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await send({"type": "websocket.send", "text": "unreachable"})  # raises: the client is gone
        text = message.get("text")
        if text == "close":
            await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
            message = await receive()
            assert message == {"type": "websocket.disconnect", "code": 4002, "reason": "client bye"}
            return
        if text is not None:
            await send({"type": "websocket.send", "text": f"{scope['http_version']}:{text}"})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


@pytest.mark.parametrize("version", VERSIONS)
async def test_websocket_both_versions(version: str) -> None:
    async with served(ws_app) as port, client(port, version) as conn:
        ws = await websocket.connect(conn, "/chat", subprotocols=["a", "b"])
        assert ws.subprotocol == "b"
        await ws.send("hi")
        assert await ws.recv() == f"{version}:hi"
        await ws.send(b"\x01\x02")
        assert await ws.recv() == b"\x02\x01"
        await ws.send("close")
        with pytest.raises(websocket.CloseReceived) as info:
            await ws.recv()
        assert (info.value.code, info.value.reason) == (4001, "bye")
        await ws.done(4002, "client bye")
        await ws.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_websocket_denial_and_refusal(version: str) -> None:
    async with served(ws_app) as port, client(port, version) as conn:
        with pytest.raises(websocket.UpgradeRefused) as info:
            await websocket.connect(conn, "/deny")
        assert (info.value.status, info.value.body) == (401, b"no token")
    async with served(ws_app) as port, client(port, version) as conn:
        with pytest.raises(websocket.UpgradeRefused) as info:
            await websocket.connect(conn, "/refuse")
        assert info.value.status == 403


async def test_websocket_client_vanishing_gives_disconnect() -> None:
    got: list[Any] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        got.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            got.append(exc)
        done.set()

    async with served(app) as port:
        conn = await Stack(tcp.connect("127.0.0.1", port), http.client()).connect()
        ws = await websocket.connect(conn, "/")
        await ws.send("one")
        await conn.aclose()  # the connection goes without a Close frame
        with trio.fail_after(5):
            await done.wait()
    assert got[0] == {"type": "websocket.receive", "text": "one"}
    assert got[1]["type"] == "websocket.disconnect" and got[1]["code"] in (1005, 1006, 1000)
    assert isinstance(got[2], OSError)
