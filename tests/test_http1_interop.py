"""HTTP/1.1 interop on loopback with independent peers: httpx and curl as clients of our server,
our client against ``python -m http.server``, wrk for a few seconds, and a slowloris client.

A test whose program is missing skips on a developer's machine and fails in CI (``CI`` set).
Everything binds 127.0.0.1, every wait is bounded and every process started is killed.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _peers import need

from layers import http, http1, tcp
from layers.http import Limits
from stack import EndOfStream, Stack

pytestmark = pytest.mark.interop


async def digest_app(request: http.Request) -> None:
    """Answers with the size and SHA-256 of the request body, streamed as it arrives."""
    h = hashlib.sha256()
    size = 0
    while chunk := await request.body.recv():
        h.update(chunk)
        size += len(chunk)
    body = f"{request.method} {request.target} {size} {h.hexdigest()}".encode()
    await request.respond(200, [("content-type", "text/plain")], body)


@asynccontextmanager
async def our_server(app: http.App = digest_app, limits: Limits = http.DEFAULT_LIMITS) -> AsyncIterator[int]:
    """Our server on 127.0.0.1, port 0, in this process; yields the port."""
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app, limits)).serve)
        yield addresses[0][1]
        nursery.cancel_scope.cancel()


async def run(*cmd: str, limit: float = 60) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(limit):
        return await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True, check=False)


# ---------------------------------------------------------------------------------------- httpx


async def test_httpx_client_against_our_server() -> None:
    httpx = pytest.importorskip("httpx")
    payload = os.urandom(300_000)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 50_000):
            yield payload[i : i + 50_000]

    def use_httpx(port: int) -> list[str]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", http1=True, http2=False, timeout=10) as c:
            for _ in range(3):  # one connection, kept alive
                r = c.get("/get?x=1")
                out.append(f"{r.status_code} {r.http_version} {r.text}")
            r = c.post("/post", content=payload)
            out.append(r.text)
            r = c.post("/chunked", content=chunks())
            out.append(r.text)
            r = c.head("/head")
            out.append(f"{r.status_code} {r.headers['content-length']} {r.content!r}")
        return out

    async with our_server() as port:
        results = await trio.to_thread.run_sync(use_httpx, port)
    empty = hashlib.sha256(b"").hexdigest()
    digest = hashlib.sha256(payload).hexdigest()
    assert results[:3] == [f"200 HTTP/1.1 GET /get?x=1 0 {empty}"] * 3
    assert results[3] == f"POST /post {len(payload)} {digest}"
    assert results[4] == f"POST /chunked {len(payload)} {digest}"
    assert results[5].startswith("200 ") and results[5].endswith(" b''")


async def test_async_httpx_on_trio() -> None:
    httpx = pytest.importorskip("httpx")
    async with our_server() as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        responses = [await c.get(f"/{i}") for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]


# --------------------------------------------------------------------------------------- curl


async def test_curl_uploads_to_our_server(tmp_path: Path) -> None:
    need("curl")
    upload = tmp_path / "up.bin"
    data = os.urandom(2 * 1024 * 1024 + 17)
    upload.write_bytes(data)
    expected = f"POST / {len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    async with our_server() as port:
        url = f"http://127.0.0.1:{port}/"
        chunked = await run(
            "curl", "--http1.1", "-s", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", url
        )
        expect = await run("curl", "--http1.1", "-sv", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", url)
    assert chunked.stdout == expected
    assert expect.stdout == expected and b"HTTP/1.1 100 Continue" in expect.stderr


# ----------------------------------------------------------------- our client, an independent server


async def test_our_client_against_python_http_server(tmp_path: Path) -> None:
    (tmp_path / "file.bin").write_bytes(bytes(range(256)) * 300)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        out = bytearray()
        with trio.fail_after(30):
            while not re.search(rb"port (\d+)", out):
                out += await process.stdout.receive_some()
        port = int(re.search(rb"port (\d+)", out).group(1))  # type: ignore[union-attr]
        client = Stack(tcp.connect("127.0.0.1", port), http.client())
        async with await client.connect(deadline=trio.current_time() + 10) as conn:
            response = await conn.request("GET", "/file.bin")
            assert response.status == 200 and response.http_version == "1.0"
            assert await response.read() == bytes(range(256)) * 300
            with pytest.raises(EndOfStream):  # an HTTP/1.0 server closes after each response
                await conn.request("GET", "/file.bin")
        async with await client.connect(deadline=trio.current_time() + 10) as conn:
            response = await conn.request("HEAD", "/file.bin")
            assert response.headers["content-length"] == str(256 * 300) and await response.read() == b""
        async with await client.connect(deadline=trio.current_time() + 10) as conn:
            response = await conn.request("GET", "/missing")
            assert response.status == 404
            await response.read()
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()


# ---------------------------------------------------------------------------------------- wrk


async def test_wrk_zero_socket_errors() -> None:
    need("wrk")

    async def hello(request: http.Request) -> None:
        await request.respond(200, [("content-type", "text/plain")], b"Hello, world!")

    async with our_server(hello) as port:
        for extra in ([], ["-H", "Connection: close"]):
            result = await run("wrk", "-t1", "-c10", "-d3s", *extra, f"http://127.0.0.1:{port}/", limit=60)
            out = result.stdout.decode()
            assert result.returncode == 0, out
            assert "Socket errors" not in out, out
            assert "Non-2xx" not in out, out
            assert int(re.search(r"(\d+) requests in", out).group(1)) > 100, out  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------- slowloris


async def test_slowloris_is_cut_while_others_are_served() -> None:
    header_timeout = 3.0
    async with our_server(limits=Limits(header_timeout=header_timeout)) as port:
        cut: dict[str, object] = {}

        async def slowloris() -> None:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            start = trio.current_time()
            received = b""
            with trio.fail_after(header_timeout + 10):
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    try:
                        await sock.send(bytes([byte]))  # one header byte per second
                    except OSError:
                        break
                    with trio.move_on_after(1.0):
                        data = await sock.recv(4096)
                        received += data
                        if not data:
                            break
                while data := await sock.recv(4096):  # read what is left, up to the close
                    received += data
            cut["after"] = trio.current_time() - start
            cut["response"] = received
            sock.close()

        served: list[float] = []

        async def normal_clients() -> None:
            await trio.sleep(0.5)
            while "after" not in cut:
                t0 = trio.current_time()
                conn = await Stack(tcp.connect("127.0.0.1", port), http.client()).connect()
                async with conn:
                    response = await conn.request("POST", "/", body=b"quick")
                    assert (await response.read()).startswith(b"POST / 5 ")
                served.append(trio.current_time() - t0)
                await trio.sleep(0.2)

        async with trio.open_nursery() as n:
            n.start_soon(slowloris)
            n.start_soon(normal_clients)
    assert header_timeout - 0.5 <= cut["after"] <= header_timeout + 3  # type: ignore[operator]
    assert cut["response"].startswith(b"HTTP/1.1 408 ")  # type: ignore[attr-defined]
    assert len(served) >= 5 and max(served) < 1.0, served


async def test_plain_socket_many_idle_connections() -> None:
    """Connections that only connect are dropped after header_timeout; the server stays responsive."""
    async with our_server(limits=Limits(header_timeout=1.0)) as port:
        socks = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        conn = await http1.client().attach(await tcp.connect("127.0.0.1", port).connect())
        response = await conn.request("GET", "/")
        assert response.status == 200
        await response.read()
        await conn.aclose()
        await trio.sleep(1.5)
        for s in socks:
            s.settimeout(5)
            assert s.recv(10) == b""  # closed without a response
            s.close()
