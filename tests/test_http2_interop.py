"""HTTP/2 against real peers on loopback: nghttp, curl, h2load, httpx and Chromium as clients of
our server (in-process stacks and ``python -m stack serve``), and our client against nghttpd.

A test whose program is missing is skipped on a developer's machine and fails in CI (``CI``
set), where every program must be installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from _peers import CHROMIUM_FLAGS, need

from layers import http, http2, tcp, tls
from layers.certs import CA
from stack import Stack

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
App = Callable[[http.Request], Awaitable[None]]
log = logging.getLogger("test.interop")


async def run(cmd: list[str], within: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(within):
        return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False, **kw)


class Recorder:
    """An app that answers a small site and records (method, path, HTTP version) per request."""

    PAGE = (
        b"<!doctype html><html><head><title>t</title><link rel=stylesheet href=/style.css>"
        b"<script src=/script.js></script></head><body><p id=p>page</p>"
        b"<img src=/a.svg><img src=/b.svg><img src=/c.svg></body></html>"
    )
    SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
    FILES: ClassVar[dict[str, tuple[str, bytes]]] = {
        "/": ("text/html", PAGE),
        "/style.css": ("text/css", b"p { color: green }"),
        "/script.js": (
            "application/javascript",
            b"document.addEventListener('DOMContentLoaded', () => {"
            b" document.getElementById('p').textContent = 'script ran over ' + performance"
            b".getEntriesByType('navigation')[0].nextHopProtocol; });",
        ),
        "/a.svg": ("image/svg+xml", SVG),
        "/b.svg": ("image/svg+xml", SVG),
        "/c.svg": ("image/svg+xml", SVG),
    }

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def __call__(self, request: http.Request) -> None:
        self.seen.append((request.method, request.path, request.http_version))
        log.info("%s %s HTTP/%s", request.method, request.target, request.http_version)
        body = await request.read()
        if request.path == "/echo":
            await request.respond(200, [("content-type", "application/octet-stream")], body)
            return
        if request.path == "/big":
            await request.respond(200, [("content-type", "application/octet-stream")], b"z" * 1_000_000)
            return
        found = self.FILES.get(request.path)
        if found is None:
            await request.respond(404, [("content-type", "text/plain")], b"not found\n")
            return
        ctype, data = found
        await request.respond(200, [("content-type", ctype)], data)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.new("interop test CA")


@contextlib.asynccontextmanager
async def our_server(app: App, *, tls_leaf: Any = None) -> AsyncIterator[int]:
    layers: list[Any] = []
    if tls_leaf is not None:
        layers.append(tls.server(tls_leaf, alpn=["h2", "http/1.1"], ragged_eofs=True))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), *layers, http.server(app)).serve)
        yield addrs[0][1]
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def stack_serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[tuple[str, str]]:
    """``python -m stack serve ARGS --port 0``; yields (url, stderr so far)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack", "serve", "--port", "0", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = b""
        with trio.fail_after(30):
            while b"\n" not in out:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    err = await proc.stderr.receive_some(65536)
                    raise AssertionError(f"stack serve exited: {err.decode(errors='replace')}")
                out += chunk
        m = re.search(rb"serving on (\S+)", out)
        assert m, out
        err = b""
        with trio.move_on_after(0.3):
            err = await proc.stderr.receive_some(65536)
        yield m.group(1).decode(), err.decode(errors="replace")
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# =============================================================================================
# clients against our server


async def test_nghttp_against_our_cleartext_server() -> None:
    need("nghttp")
    app = Recorder()
    async with our_server(app) as port:
        r = await run(["nghttp", "-v", "-n", "-a", f"http://127.0.0.1:{port}/"])
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert ":status: 200" in out
        r = await run(["nghttp", "-d", "-", f"http://127.0.0.1:{port}/echo"], stdin=b"posted body")
        assert r.returncode == 0 and r.stdout == b"posted body"
        r = await run(["nghttp", f"http://127.0.0.1:{port}/big"])
        assert r.returncode == 0 and r.stdout == b"z" * 1_000_000
    paths = {p for _, p, v in app.seen if v == "2"}
    assert {"/", "/style.css", "/script.js", "/a.svg", "/echo", "/big"} <= paths


async def test_curl_prior_knowledge_against_our_cleartext_server() -> None:
    need("curl")
    async with our_server(Recorder()) as port:
        r = await run(
            ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/style.css"]
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"p { color: green }\n2"
        r = await run(
            ["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", f"http://127.0.0.1:{port}/echo"],
            stdin=b"x" * 100_000,
        )
        assert r.stdout == b"x" * 100_000


async def test_curl_and_nghttp_upgrade_to_h2c_with_and_without_a_body() -> None:
    """``Upgrade: h2c`` (RFC 7540 3.2) from curl ``--http2`` and ``nghttp -u``: the upgrading
    request, body included, is answered on stream 1 over HTTP/2. A body over ``stream_window``
    is served over HTTP/1.1, the Upgrade ignored."""
    need("curl", "nghttp")
    app = Recorder()
    async with our_server(app) as port:
        url = f"http://127.0.0.1:{port}"
        r = await run(["curl", "-sS", "--http2", "-w", "\n%{http_version}", f"{url}/style.css"])
        assert r.stdout == b"p { color: green }\n2", r.stderr
        r = await run(
            ["curl", "-sS", "--http2", "--data-binary", "@-", "-w", "\n%{http_version}", f"{url}/echo"],
            stdin=b"u" * 100_000,
        )
        assert r.stdout == b"u" * 100_000 + b"\n2", r.stderr[-500:]
        big = os.urandom(1_500_000)
        r = await run(
            ["curl", "-sS", "--http2", "--data-binary", "@-", "-w", "\n%{http_version}", f"{url}/echo"], stdin=big
        )
        assert r.stdout == big + b"\n1.1", r.stderr[-500:]
        r = await run(["nghttp", "-u", f"{url}/style.css"])
        assert (r.returncode, r.stdout) == (0, b"p { color: green }"), r.stderr
        r = await run(["nghttp", "-u", "-d", "-", f"{url}/echo"], stdin=b"posted over h2c")
        assert (r.returncode, r.stdout) == (0, b"posted over h2c"), r.stderr
    assert [(m, p) for m, p, v in app.seen if v == "1.1"] == [("POST", "/echo")], app.seen


async def test_curl_http2_over_tls_and_alpn_fallback(ca: CA, tmp_path: Path) -> None:
    need("curl")
    cafile = ca.write(tmp_path / "ca.pem")
    app = Recorder()
    async with our_server(app, tls_leaf=ca.issue("localhost", "127.0.0.1")) as port:
        r = await run(
            [
                "curl",
                "-sS",
                "--http2",
                "--cacert",
                cafile,
                "-w",
                "\n%{http_version}",
                f"https://localhost:{port}/style.css",
            ]
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"p { color: green }\n2"
        r = await run(
            [
                "curl",
                "-sS",
                "--http1.1",
                "--cacert",
                cafile,
                "-w",
                "\n%{http_version}",
                f"https://localhost:{port}/style.css",
            ]
        )
        assert r.stdout == b"p { color: green }\n1.1"


async def test_httpx_http2_client() -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    async with our_server(Recorder()) as port:

        def use_httpx() -> list[tuple[int, str, bytes]]:
            out = []
            with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{port}") as client:
                for path in ("/", "/style.css", "/nope"):
                    r = client.get(path)
                    out.append((r.status_code, r.http_version, r.content[:20]))
                r = client.post("/echo", content=b"e" * 300_000)
                out.append((r.status_code, r.http_version, r.content[-5:]))
            return out

        results = await trio.to_thread.run_sync(use_httpx)
    assert results == [
        (200, "HTTP/2", Recorder.PAGE[:20]),
        (200, "HTTP/2", b"p { color: green }"),
        (404, "HTTP/2", b"not found\n"),
        (200, "HTTP/2", b"eeeee"),
    ]


@pytest.mark.slow
async def test_h2load_100000_requests_without_a_failure() -> None:
    need("h2load")
    async with stack_serve("--no-tls", "--hello", "--quiet") as (url, _):
        r = await run(["h2load", "-n", "100000", "-c", "10", "-m", "10", url], within=600)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    assert m, out
    _total, _started, _done, succeeded, failed, errored, timeout = map(int, m.groups())
    assert (succeeded, failed, errored, timeout) == (100000, 0, 0, 0), out
    assert re.search(r"status codes: 100000 2xx", out), out


@pytest.mark.parametrize("size", [0, 512, 1024, 65536])
async def test_h2load_and_nghttp_with_other_header_table_sizes(size: int) -> None:
    """Our HPACK encoder answers the client's SETTINGS_HEADER_TABLE_SIZE as nghttp2's strict
    decoder wants (1024, our encoder's own cap, once got COMPRESSION_ERROR)."""
    need("h2load", "nghttp")
    async with our_server(Recorder()) as port:
        url = f"http://127.0.0.1:{port}/style.css"
        r = await run(["h2load", "-n", "200", "-c", "2", "-m", "10", f"--header-table-size={size}", url])
        assert re.search(r"requests: 200 total, 200 started, 200 done, 200 succeeded", r.stdout.decode()), r.stdout
        r = await run(["nghttp", f"--header-table-size={size}", url, url.replace("style.css", "script.js")])
        assert r.returncode == 0 and b"p { color: green }" in r.stdout and b"script ran" in r.stdout, r.stderr


async def test_nghttp_and_curl_against_stack_serve_cleartext() -> None:
    need("nghttp", "curl")
    async with stack_serve("--no-tls", "--hello") as (url, _):
        r = await run(["nghttp", url])
        assert r.returncode == 0 and r.stdout == b"Hello, world!", r.stderr
        r = await run(["curl", "-sS", "--http2-prior-knowledge", "-w", " %{http_version}", url])
        assert r.stdout == b"Hello, world! 2", r.stderr
        r = await run(["curl", "-sS", "--http2", "-w", " %{http_version}", url])  # Upgrade: h2c
        assert r.stdout == b"Hello, world! 2", r.stderr


async def test_curl_http2_over_tls_against_stack_serve(tmp_path: Path) -> None:
    need("curl", "nghttp")
    async with stack_serve(env={"XDG_CACHE_HOME": str(tmp_path)}) as (url, err):
        cafile = tmp_path / "trio-stack" / "ca.pem"
        assert cafile.exists(), err
        https = url.replace("127.0.0.1", "localhost")
        r = await run(["curl", "-sS", "--http2", "--cacert", str(cafile), "-w", "\n%{http_version}", https])
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith(b"\n2") and b"<td>2</td>" in r.stdout  # the page shows HTTP version 2
        r = await run(["nghttp", "-n", https])
        assert r.returncode == 0, r.stderr


# =============================================================================================
# our client against nghttpd


@contextlib.asynccontextmanager
async def nghttpd(docroot: Path, key_cert: tuple[str, str] | None = None) -> AsyncIterator[int]:
    """``nghttpd`` serving ``docroot``: cleartext (prior knowledge), or TLS with ``key_cert``."""
    port = _free_port()
    tail = [str(port), *key_cert] if key_cert else ["--no-tls", str(port)]
    proc = await trio.lowlevel.open_process(
        ["nghttpd", "-d", str(docroot), *tail],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    s = await tcp.connect("127.0.0.1", port).connect()
                except Exception:
                    await trio.sleep(0.05)
                    continue
                await s.aclose()
                break
        yield port
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_our_client_against_nghttpd_cleartext(tmp_path: Path) -> None:
    need("nghttpd")
    (tmp_path / "index.html").write_bytes(b"<h1>nghttpd</h1>")
    (tmp_path / "big.bin").write_bytes(os.urandom(3_000_000))
    async with nghttpd(tmp_path) as port:
        client = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=True))
        async with await client.connect(deadline=trio.current_time() + 10) as conn:
            assert isinstance(conn, http2.H2ClientConnection)
            r = await conn.request("GET", "/index.html")
            assert r.status == 200 and r.http_version == "2"
            assert await r.read() == b"<h1>nghttpd</h1>"
            results: dict[int, bytes] = {}

            async def get(i: int) -> None:
                r = await conn.request("GET", "/big.bin")
                results[i] = await r.read(10_000_000)

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(get, i)
            assert all(v == (tmp_path / "big.bin").read_bytes() for v in results.values())
            assert len(results) == 5
            r = await conn.request("GET", "/missing")
            assert r.status == 404
            await r.aclose()
            assert await conn.ping(deadline=trio.current_time() + 5) >= 0


async def test_our_client_against_nghttpd_over_tls(tmp_path: Path, ca: CA) -> None:
    need("nghttpd")
    (tmp_path / "index.html").write_bytes(b"<h1>tls</h1>")
    leaf = ca.issue("localhost")
    certfile, keyfile = leaf.write(tmp_path, "leaf")
    async with nghttpd(tmp_path, (keyfile, certfile)) as port:
        client = Stack(tcp.connect("localhost", port), tls.client(alpn=["h2", "http/1.1"], ca=ca), http.client())
        async with await client.connect(deadline=trio.current_time() + 10) as conn:
            assert conn.info["alpn"] == "h2" and isinstance(conn, http2.H2ClientConnection)
            r = await conn.request("GET", "/index.html")
            assert await r.read() == b"<h1>tls</h1>"


# =============================================================================================
# a browser


async def test_headless_chromium_loads_a_page_over_h2(ca: CA, tmp_path: Path) -> None:
    need("chromium")
    app = Recorder()
    async with our_server(app, tls_leaf=ca.issue("localhost", "127.0.0.1")) as port:
        r = await run(
            [
                "chromium",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                f"https://localhost:{port}/",
            ],
            within=120,
        )
    dom = r.stdout.decode(errors="replace")
    assert "script ran over h2" in dom, (dom, r.stderr.decode(errors="replace")[-2000:])
    paths = [p for _, p, _ in app.seen]
    for needed in ("/", "/style.css", "/script.js", "/a.svg", "/b.svg", "/c.svg"):
        assert needed in paths, app.seen
    assert all(version == "2" for _, _, version in app.seen), app.seen
