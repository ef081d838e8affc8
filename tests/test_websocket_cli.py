"""``python -m stack serve`` answers a WebSocket echo at ``/ws/echo``: our own client over HTTP/1.1
(Upgrade) and HTTP/2 (extended CONNECT, cleartext prior knowledge), and a plain GET there is
refused with 400. (Chromium against the same endpoint: ``test_websocket_interop.py``.)
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from layers import http, tcp, websocket
from stack import Stack, after

ROOT = Path(__file__).resolve().parent.parent
T = 10.0


@contextlib.asynccontextmanager
async def serve_no_tls() -> AsyncIterator[tuple[str, int]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack", "serve", "--no-tls", "--port", "0", "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(30):
            while b"\n" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "stack serve exited before serving"
                out += chunk
        m = re.search(rb"serving on http://([\d.]+):(\d+)/", out)
        assert m, out
        yield m.group(1).decode(), int(m.group(2))
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("version", ["1.1", "2"])
async def test_serve_echoes_websocket_messages(version: str) -> None:
    async with serve_no_tls() as (host, port):
        stack = Stack(tcp.connect(host, port), http.client(prior_knowledge=version == "2"))
        with trio.fail_after(30):
            async with await stack.connect(deadline=after(T)) as conn:
                ws = await websocket.connect(conn, "/ws/echo", deflate=True, deadline=after(T))
                assert ws.info["http_version"] == version and ws.info["websocket_deflate"]
                await ws.send("text \u2603")
                await ws.send(b"\x00binary" * 10000)
                assert await ws.recv(deadline=after(T)) == "text \u2603"
                assert await ws.recv(deadline=after(T)) == b"\x00binary" * 10000
                await ws.done(4000, "done here")
                with pytest.raises(websocket.CloseReceived) as info:
                    await ws.recv(deadline=after(T))
                assert info.value.code == 4000  # serve echoes our code
                await ws.aclose()


async def test_serve_refuses_a_plain_request_to_the_websocket_path() -> None:
    async with serve_no_tls() as (host, port):
        with trio.fail_after(30):
            async with await Stack(tcp.connect(host, port), http.client()).connect(deadline=after(T)) as conn:
                response = await conn.request("GET", "/ws/echo", deadline=after(T))
                assert response.status == 400
                assert b"not a WebSocket handshake" in await response.read(deadline=after(T))
