"""WebSocket against a real peer: headless Chromium loads a page from ``python -m stack serve``
whose script opens a WebSocket to the ``/ws/echo`` endpoint, sends text and binary messages,
checks the echoes, closes, and reports the outcome by fetching ``/result?...`` (which the server's
access log records). Once over cleartext HTTP/1.1 (an Upgrade), once over TLS where Chromium
speaks HTTP/2 and, because our server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, opens the
WebSocket as an RFC 8441 extended CONNECT stream; the access log line of the WebSocket request
proves which version carried it.

Chromium is skipped when missing on a developer's machine and fails the test in CI (``CI`` set),
where ``.ci/run`` installs it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ws</title></head><body><p id="r">waiting</p>
<script>
const big = "x".repeat(100000);
const sent = ["hello \\u2603", new Uint8Array([0, 1, 2, 255]), big, ""];
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

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--ignore-certificate-errors",
]


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (CI must install it: .ci/run)")
        pytest.skip(f"{program} is not installed (the WebSocket interop test drives it)")
    return path


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
    assert report.startswith("echo=ok kinds=text,binary,text,text code=1000 clean=true"), (report, lines)
    assert "ext=permessage-deflate" in report, report  # Chromium offers it, serve accepts it
    ws_lines = [line for line in lines if "/ws/echo" in line]
    assert ws_lines and '"GET /ws/echo HTTP/1.1" 101' in ws_lines[0], lines


async def test_chromium_websocket_over_http2_extended_connect(tmp_path: Path) -> None:
    report, lines = await chromium_echo(tmp_path)
    assert report.startswith("echo=ok kinds=text,binary,text,text code=1000 clean=true"), (report, lines)
    assert "ext=permessage-deflate" in report, report
    ws_lines = [line for line in lines if "/ws/echo" in line]
    assert ws_lines and '"CONNECT /ws/echo HTTP/2" 200' in ws_lines[0], lines
