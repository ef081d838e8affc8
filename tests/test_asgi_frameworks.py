"""layers.asgi with real frameworks and independent clients: a Starlette app and a FastAPI app
(routes, request body, StreamingResponse, FileResponse through pathsend, a WebSocket endpoint,
lifespan state) served in this process, with httpx over HTTP/1.1 and HTTP/2, the ``websockets``
library and curl (103 Early Hints on both versions); and ``python -m stack serve module:app``
(the lifespan's shutdown after a SIGTERM drains, a startup failure as one line and exit 1);
Quart-trio when installed; headless Chromium loading a FastAPI app served by
`python -m stack serve module:app` over TLS and opening its WebSocket endpoint, over HTTP/2
(extended CONNECT) and over HTTP/1.1 (Upgrade; Chromium run with ``--disable-http2``).

The frameworks and clients come with the ``test`` extra; a missing one skips outside CI and fails
in CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _peers import need
from _servers import running

from layers import asgi

ROOT = Path(__file__).resolve().parent.parent


def require(module: str) -> Any:
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module)


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    shutdown = trio.Event()
    serve = functools.partial(asgi.serve_asgi, app, "127.0.0.1", 0, shutdown=shutdown)
    with trio.fail_after(30):
        async with running(serve, shutdown=shutdown) as port:
            yield port


def starlette_app(files: Path, events: list[str]) -> Any:
    require("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello"}
        events.append("shutdown")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.state.greeting} {request.url.path} {request.query_params['q']}")

    async def upload(request: Request) -> JSONResponse:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"size": size, "version": request.scope["http_version"]})

    async def stream(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part {i}\n".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    async def file(request: Request) -> FileResponse:
        return FileResponse(files / "big.bin")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="chat")
        try:
            while True:
                text = await websocket.receive_text()
                if text == "bye":
                    await websocket.close(code=4000, reason="see you")
                    return
                await websocket.send_text(text.upper())
        except WebSocketDisconnect as exc:
            events.append(f"ws closed {exc.code}")

    routes = [
        Route("/", home),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/file", file),
        WebSocketRoute("/ws", ws),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def test_starlette_with_httpx_on_both_versions(tmp_path: Path) -> None:
    httpx = require("httpx")
    require("h2")  # httpx[http2]
    big = os.urandom(700_000)
    (tmp_path / "big.bin").write_bytes(big)
    events: list[str] = []
    async with served(starlette_app(tmp_path, events)) as port:
        for http2 in (False, True):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=not http2, http2=http2) as c:
                want = "HTTP/2" if http2 else "HTTP/1.1"
                r = await c.get("/x", params={"q": "a b"})
                assert (r.status_code, r.http_version) == (404, want)
                r = await c.get("/", params={"q": "a b"})
                assert (r.status_code, r.text, r.http_version) == (200, "hello / a b", want)
                r = await c.post("/upload", content=os.urandom(300_000))
                assert r.json() == {"size": 300_000, "version": "2" if http2 else "1.1"}
                r = await c.get("/stream")
                assert r.text == "".join(f"part {i}\n" for i in range(5))
                r = await c.get("/file")
                assert r.content == big and r.headers["content-length"] == str(len(big))
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


async def test_starlette_websocket_with_the_websockets_library(tmp_path: Path) -> None:
    require("websockets")
    events: list[str] = []
    async with served(starlette_app(tmp_path, events)) as port:
        code = f"""
import asyncio, websockets
async def main():
    async with websockets.connect("ws://127.0.0.1:{port}/ws", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        await ws.send("hi")
        print(await ws.recv())
        await ws.send("bye")
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            print(exc.rcvd.code, exc.rcvd.reason)
    async with websockets.connect("ws://127.0.0.1:{port}/ws", subprotocols=["chat"]) as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(4321, "client leaves")
asyncio.run(main())
"""
        with trio.fail_after(30):
            done = await trio.run_process(
                [sys.executable, "-c", code], capture_stdout=True, capture_stderr=True, check=False
            )
    assert done.stdout.decode().split("\n")[:2] == ["HI", "4000 see you"], done.stderr
    assert "ws closed 4321" in events


def fastapi_app(events: list[str]) -> Any:
    require("fastapi")
    from fastapi import FastAPI, WebSocket
    from pydantic import BaseModel

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"factor": 3}

    app = FastAPI(lifespan=lifespan)

    class Item(BaseModel):
        name: str
        count: int

    async def create(item: Item) -> dict[str, Any]:
        return {"name": item.name, "total": item.count * 3}

    create.__annotations__["item"] = Item  # a local class: FastAPI cannot resolve the string annotation
    app.post("/items")(create)

    @app.get("/items/{item_id}")
    async def read(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        data = await websocket.receive_json()
        await websocket.send_json({"echo": data, "factor": websocket.state.factor})
        await websocket.close()

    ws.__annotations__["websocket"] = WebSocket
    app.websocket("/ws")(ws)

    return app


async def test_fastapi_with_httpx_and_websockets() -> None:
    httpx = require("httpx")
    require("websockets")
    events: list[str] = []
    async with served(fastapi_app(events)) as port:
        for http2 in (False, True):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=not http2, http2=http2) as c:
                r = await c.get("/items/7", params={"q": "x"})
                assert r.json() == {"item_id": 7, "q": "x"}
                r = await c.post("/items", json={"name": "a", "count": 2})
                assert r.json() == {"name": "a", "total": 6}
                r = await c.post("/items", json={"name": "a"})
                assert r.status_code == 422
        code = f"""
import asyncio, json, websockets
async def main():
    async with websockets.connect("ws://127.0.0.1:{port}/ws") as ws:
        await ws.send(json.dumps({{"k": 1}}))
        print(await ws.recv())
asyncio.run(main())
"""
        with trio.fail_after(30):
            done = await trio.run_process(
                [sys.executable, "-c", code], capture_stdout=True, capture_stderr=True, check=False
            )
    assert done.stdout.decode().strip() == '{"echo":{"k":1},"factor":3}', done.stderr


@pytest.mark.interop
@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
async def test_curl_sees_early_hints(version: str) -> None:
    need("curl")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"final"})

    async with served(app) as port:
        with trio.fail_after(30):
            done = await trio.run_process(
                ["curl", "-sv", version, f"http://127.0.0.1:{port}/"], capture_stdout=True, capture_stderr=True
            )
    err = done.stderr.decode()
    assert done.stdout == b"final"
    assert re.search(r"< HTTP/(1\.1|2) 103", err), err
    assert "< link: </style.css>; rel=preload; as=style" in err.lower() or "< Link:" in err, err
    assert re.search(r"< HTTP/(1\.1|2) 200", err), err


# ---------------------------------------------------------------------------------- the command

CLI_APP = """
import os, trio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
                    return
                scope["state"]["n"] = 1
                await send({"type": "lifespan.startup.complete"})
            else:
                with open(os.environ["SHUTDOWN_MARK"], "w") as f:
                    f.write("shutdown ran")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await trio.sleep(1.0)
    body = f"{scope['root_path']} {scope['path']} {scope['state']['n']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


async def start_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> trio.Process:
    (tmp_path / "cli_app.py").write_text(CLI_APP)
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    full.update(env)
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack", "serve", "cli_app:app", "--no-tls", "--port", "0", *args],
        cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def test_cli_serves_an_app_and_shuts_down_after_draining(tmp_path: Path) -> None:
    httpx = require("httpx")
    mark = tmp_path / "mark"
    proc = await start_cli(tmp_path, "--root-path", "/api", "-q", env={"SHUTDOWN_MARK": str(mark)})
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            out = b""
            while b"\n" not in out:
                out += await proc.stdout.receive_some(4096)
            url = re.search(rb"serving on (\S+)", out).group(1).decode()  # type: ignore[union-attr]
            async with httpx.AsyncClient(base_url=url) as c:
                r = await c.get("/x%20y")  # a proxy took /api off: path gets it back, as uvicorn does
                assert r.text == "/api /api/x y 1"
                async with trio.open_nursery() as nursery:

                    async def slow() -> None:
                        r = await c.get("/slow")
                        assert r.status_code == 200  # in flight at the signal: drained, answered

                    nursery.start_soon(slow)
                    await trio.sleep(0.3)
                    assert not mark.exists()
                    proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        assert mark.read_text() == "shutdown ran"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_startup_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = await start_cli(tmp_path, env={"FAIL_STARTUP": "1", "SHUTDOWN_MARK": str(tmp_path / "m")})
    assert proc.stderr is not None
    with trio.fail_after(30):
        err = b""
        while chunk := await proc.stderr.receive_some(4096):
            err += chunk
        assert await proc.wait() == 1
    lines = [line for line in err.decode().splitlines() if "INFO" not in line]
    assert lines == ["serve: ASGI lifespan startup failed: database unreachable"], err


async def test_cli_names_a_bad_app() -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "stack", "serve", "no_such_module:app", "--no-tls"],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.decode().startswith("serve: cannot import no_such_module"), done.stderr


async def test_quart_trio_routes_and_websocket_on_both_versions() -> None:
    quart_trio = require("quart_trio")
    httpx = require("httpx")
    quart = require("quart")

    from layers import http, tcp, websocket
    from stack import Stack

    app = quart_trio.QuartTrio("asgi_test")

    async def echo() -> str:
        return "quart:" + str(await quart.request.get_data(as_text=True))

    async def ws() -> None:
        msg = await quart.websocket.receive()
        await quart.websocket.send(f"quart:{msg}")

    app.route("/echo", methods=["POST"])(echo)
    app.websocket("/ws")(ws)

    async with served(app) as port:
        for http2 in (False, True):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=not http2, http2=http2) as c:
                r = await c.post("/echo", content=b"body")
                assert (r.status_code, r.text) == (200, "quart:body")
            stack = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=http2))
            async with await stack.connect() as conn:
                w = await websocket.connect(conn, "/ws")
                await w.send("hi")
                assert await w.recv() == "quart:hi"
                await w.aclose()


# ----------------------------------------------- Chromium: a FastAPI app, WebSocket over both versions

CHROMIUM_APP = """
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, PlainTextResponse

PAGE = open("page.html").read()
app = FastAPI()

@app.get("/", response_class=HTMLResponse)
async def page():
    return PAGE

@app.get("/result", response_class=PlainTextResponse)
async def result():
    return "ok"

@app.websocket("/ws/echo")
async def echo(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass
"""

# Chromium's flags and the first access-log line of the WebSocket, per HTTP version
CHROMIUM_VERSIONS = {
    "2": ([], '"CONNECT /ws/echo HTTP/2" 200'),  # extended CONNECT (RFC 8441)
    "1.1": (["--disable-http2"], '"GET /ws/echo HTTP/1.1" 101'),  # Upgrade
}


@pytest.mark.interop
@pytest.mark.parametrize("version", list(CHROMIUM_VERSIONS))
async def test_chromium_loads_a_fastapi_app_with_websocket(tmp_path: Path, version: str) -> None:
    """Issue 18's "done when": ``python -m stack serve app:app`` serves a FastAPI app over TLS;
    Chromium loads its page over HTTP/2 (ALPN h2), or HTTP/1.1 with ``--disable-http2``, and opens
    the WebSocket to the FastAPI endpoint: an extended CONNECT stream over HTTP/2, an Upgrade over
    HTTP/1.1. The page reports the echo's result on ``/result``, seen in the access log."""
    require("fastapi")
    chromium = need("chromium")
    from _peers import CHROMIUM_FLAGS
    from test_websocket_interop import PAGE

    flags, ws_line = CHROMIUM_VERSIONS[version]
    (tmp_path / "page.html").write_text(PAGE)
    (tmp_path / "chromium_app.py").write_text(CHROMIUM_APP)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    lines: list[str] = []
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack", "serve", "chromium_app:app", "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    browser: trio.Process | None = None
    report = None
    try:
        assert server.stdout is not None and server.stderr is not None
        with trio.fail_after(90):
            out = b""
            while b"\n" not in out:
                chunk = await server.stdout.receive_some(4096)
                assert chunk, "stack serve exited"
                out += chunk
            url = re.search(rb"serving on (\S+)", out).group(1).decode()  # type: ignore[union-attr]
            assert url.startswith("https://"), url
            browser = await trio.lowlevel.open_process(
                [chromium, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={tmp_path / 'profile'}", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            buf = b""
            # until the page's report and the WebSocket's access line (logged when that connection
            # ends: over HTTP/1.1 it may come after the report, which another connection carries)
            while report is None or not any("/ws/echo" in line for line in lines):
                chunk = await server.stderr.receive_some(65536)
                assert chunk, f"stack serve exited: {lines}"
                buf += chunk
                *done, buf = buf.split(b"\n")
                for raw in done:
                    lines.append(raw.decode(errors="replace"))
                    if m := re.search(r"/result\?(\S+)", lines[-1]):
                        report = urllib.parse.unquote(m.group(1))
    finally:
        for proc in (browser, server):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert report.startswith("echo=ok kinds=text,binary,text code=1000 clean=true"), (report, lines)
    page_lines = [line for line in lines if '"GET / HTTP/' in line]
    assert page_lines and f'"GET / HTTP/{version}" 200' in page_lines[0], lines
    ws_lines = [line for line in lines if "/ws/echo" in line]
    assert ws_lines and ws_line in ws_lines[0], lines
