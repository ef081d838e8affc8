"""WebSocket against real peers. The ``websockets`` library (an independent implementation, run as
a separate program) as server for our client and as client of our server, with permessage-deflate;
and headless Chromium loads a page from ``python -m stack serve``
whose script opens a WebSocket to the ``/ws/echo`` endpoint, sends text and binary messages,
checks the echoes, closes, and reports the outcome by fetching ``/result?...`` (which the server's
access log records). Once over cleartext HTTP/1.1 (an Upgrade), once over TLS where Chromium
speaks HTTP/2 and, because our server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, opens the
WebSocket as an RFC 8441 extended CONNECT stream; the access log line of the WebSocket request
proves which version carried it.

Chromium and ``websockets`` are skipped when missing on a developer's machine and fails the test in CI (``CI`` set),
where ``.ci/run`` installs it.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import trio
from _peers import CHROMIUM_FLAGS, need

from layers import tcp, websocket
from stack import Stack, after

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ws</title></head><body><p id="r">waiting</p>
<script>
const big = "x".repeat(100000);
const sent = ["hello \\u2603", new Uint8Array([0, 1, 2, 255]), big];
const got = [];
function report(s) {
  document.getElementById("r").textContent = s;
  fetch("/result?" + encodeURIComponent(s));
}
function same(a, b) {
  if (typeof a === "string") return a === b;
  const x = new Uint8Array(b);
  return x.length === a.length && a.every((v, i) => v === x[i]);
}
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/echo");
ws.binaryType = "arraybuffer";
ws.onopen = () => { for (const m of sent) ws.send(m); };
ws.onmessage = (e) => {
  got.push(e.data);
  if (got.length === sent.length) ws.close(1000, "done");
};
ws.onerror = () => report("error");
ws.onclose = (e) => {
  const ok = got.length === sent.length && sent.every((m, i) => same(m, got[i]));
  const kinds = got.map((m) => typeof m === "string" ? "text" : "binary").join(",");
  report("echo=" + (ok ? "ok" : "bad") + " kinds=" + kinds + " code=" + e.code + " clean=" + e.wasClean
         + " ext=" + ws.extensions);
};
</script></body></html>
"""


async def _collect(stream: trio.abc.ReceiveStream, lines: list[str], new: trio.MemorySendChannel[str]) -> None:
    buf = b""
    while chunk := await stream.receive_some(65536):
        buf += chunk
        *done, buf = buf.split(b"\n")
        for raw in done:
            line = raw.decode(errors="replace")
            lines.append(line)
            new.send_nowait(line)


async def chromium_echo(tmp_path: Path, *serve_args: str) -> tuple[str, list[str]]:
    """Serve the page with ``python -m stack serve``, load it in Chromium; return the page's
    report and the server's log lines."""
    chromium = need("chromium")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the localhost certificate is minted here
    lines: list[str] = []
    new, incoming = trio.open_memory_channel[str](math.inf)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            server = await trio.lowlevel.open_process(
                [sys.executable, "-m", "stack", "serve", str(site), "--port", "0", *serve_args],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            browser: trio.Process | None = None
            try:
                assert server.stdout is not None and server.stderr is not None
                nursery.start_soon(_collect, server.stderr, lines, new)
                out = b""
                while b"\n" not in out:
                    chunk = await server.stdout.receive_some(4096)
                    assert chunk, f"stack serve exited: {lines}"
                    out += chunk
                m = re.search(rb"serving on (\S+)", out)
                assert m, out
                url = m.group(1).decode()
                browser = await trio.lowlevel.open_process(
                    [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                target = None
                with trio.move_on_after(60):
                    async for line in incoming:
                        if target := re.search(r"/result\?(\S+)", line):
                            break
                assert target, f"Chromium reported nothing within 60 s; the server logged: {lines}"
                report = urllib.parse.unquote(target.group(1))
            finally:
                for proc in (browser, server):
                    if proc is not None and proc.returncode is None:
                        proc.terminate()
                with trio.move_on_after(10):
                    for proc in (browser, server):
                        if proc is not None:
                            await proc.wait()
                for proc in (browser, server):
                    if proc is not None and proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            nursery.cancel_scope.cancel()
    return report, lines


async def test_chromium_websocket_over_http1(tmp_path: Path) -> None:
    report, lines = await chromium_echo(tmp_path, "--no-tls")
    assert report.startswith("echo=ok kinds=text,binary,text code=1000 clean=true"), (report, lines)
    assert "ext=permessage-deflate" in report, report  # Chromium offers it, serve accepts it
    ws_lines = [line for line in lines if "/ws/echo" in line]
    assert ws_lines and '"GET /ws/echo HTTP/1.1" 101' in ws_lines[0], lines


async def test_chromium_websocket_over_http2_extended_connect(tmp_path: Path) -> None:
    report, lines = await chromium_echo(tmp_path)
    assert report.startswith("echo=ok kinds=text,binary,text code=1000 clean=true"), (report, lines)
    assert "ext=permessage-deflate" in report, report
    ws_lines = [line for line in lines if "/ws/echo" in line]
    assert ws_lines and '"CONNECT /ws/echo HTTP/2" 200' in ws_lines[0], lines


# ---- the websockets library as a separate program ----------------------------------------------------

WEBSOCKETS_SERVER = """
import asyncio
from websockets.asyncio.server import serve

async def echo(ws):
    async for msg in ws:
        await ws.send(msg)

async def main():
    async with serve(echo, "127.0.0.1", 0, compression="deflate", subprotocols=["chat"]) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"""

WEBSOCKETS_CLIENT = """
import sys
from websockets.sync.client import connect

with connect(sys.argv[1], compression="deflate", subprotocols=["chat"], open_timeout=10) as ws:
    ws.send("hello \\u2603")
    assert ws.recv(timeout=10) == "hello \\u2603"
    ws.send(bytes(range(256)))
    assert ws.recv(timeout=10) == bytes(range(256))
    big = "y" * 300000
    ws.send(big)
    assert ws.recv(timeout=10) == big
    assert ws.ping().wait(10)
    ext = ws.response.headers.get("Sec-WebSocket-Extensions")
    print("ok", ws.subprotocol, ext, flush=True)
    ws.close(4000, "bye")
print("closed", ws.close_code, flush=True)
"""


def need_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the websockets package is not installed (CI installs the test extras)")
        pytest.skip("the websockets package is not installed (pip install websockets)")


async def test_our_client_against_the_websockets_library_server() -> None:
    need_websockets()
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", WEBSOCKETS_SERVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            with trio.fail_after(30):
                out = b""
                while b"\n" not in out:
                    chunk = await proc.stdout.receive_some(100)
                    assert chunk, "the websockets server exited"
                    out += chunk
                port = int(out)
                spec = websocket.client(f"127.0.0.1:{port}", "/", deflate=True, subprotocols=("chat",))
                ws = await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10))
                async with ws:
                    assert ws.subprotocol == "chat" and ws.info["websocket_deflate"]
                    got: list[bytes | str] = []
                    ended = trio.Event()

                    async def receive() -> None:
                        got.extend([m async for m in ws])  # until the server's Close
                        ended.set()

                    nursery.start_soon(receive)
                    await ws.send("hello \u2603")
                    await ws.send(bytes(range(256)))
                    await ws.send(b"z" * 1_000_000)
                    assert await ws.ping(deadline=after(10)) >= 0
                    await ws.done(1000, "done")
                    await ended.wait()
                assert got == ["hello \u2603", bytes(range(256)), b"z" * 1_000_000]
                assert ws.close_code == 1000
        finally:
            proc.kill()
            await proc.wait()


async def test_the_websockets_library_client_against_our_server() -> None:
    need_websockets()
    closes: list[tuple[int | None, str | None]] = []

    async def echo(ws: websocket.WebSocket) -> None:
        async for msg in ws:
            await ws.send(msg)
        closes.append((ws.close_code, ws.close_reason))

    server = Stack(tcp.listen("127.0.0.1", 0), websocket.server(deflate=True, subprotocols=("chat",)))
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(server.serve, echo)
        with trio.fail_after(60):
            result = await trio.run_process(
                [sys.executable, "-c", WEBSOCKETS_CLIENT, f"ws://{host}:{port}/"],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode()[-3000:])
    assert "ok chat permessage-deflate" in out and "closed 4000" in out, out
    assert closes == [(4000, "bye")]
