"""``python -m stack serve``: started as a subprocess on port 0, driven by curl and by our client.

Interop tests need curl: without it they skip on a developer's machine and fail in CI (``CI`` set).
Every server started here is killed at the end of its test; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from _peers import need

from layers import certs, http, tcp
from stack import Stack
from stack.cli import build_parser
from stack.testing import memory_pair

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


@dataclass
class Server:
    url: str
    port: int
    process: trio.Process
    stderr: bytearray = field(default_factory=bytearray)

    @property
    def log(self) -> str:
        return self.stderr.decode(errors="replace")


@asynccontextmanager
async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    """Run ``python -m stack serve --port 0 ARGS`` until the block ends; yield where it listens."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env=full_env,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr = bytearray()

    async def collect(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            stderr.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, process.stderr)
            out = bytearray()
            with trio.fail_after(START_TIMEOUT):
                while b"\n" not in out:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"serve exited before it was ready: {stderr.decode(errors='replace')}"
                    out += chunk
            line = out.decode().strip()
            match = re.fullmatch(r"serving on (https?)://127\.0\.0\.1:(\d+)/", line)
            assert match, f"unexpected first line {line!r}"
            server = Server(line.removeprefix("serving on "), int(match.group(2)), process, stderr)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10):
            await process.wait()


async def run(*cmd: str, limit: float = 60) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(limit):
        return await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True, check=False)


async def client(port: int) -> http.ClientConnection:
    return await Stack(tcp.connect("127.0.0.1", port), http.client()).connect(deadline=trio.current_time() + 10)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "hello.txt").write_text("hello, file\n")
    (root / "page.html").write_text("<p>hi</p>\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: streamed in chunks
    (root / "sub" / "index.html").write_text("<h1>index</h1>\n")
    (root / "sub" / "a b.txt").write_text("spaced\n")
    (tmp_path / "secret.txt").write_text("outside the root\n")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "inside").symlink_to(root / "hello.txt")
    return root


# ------------------------------------------------------------------------------------- arguments


def test_parser() -> None:
    args = build_parser().parse_args(["serve", "DIR", "--no-tls", "--port", "0", "--host", "::1"])
    assert (args.root, args.no_tls, args.port, args.host) == ("DIR", True, 0, "::1")
    args = build_parser().parse_args(["serve"])
    assert (args.root, args.port, args.host, args.no_tls) == (None, 8443, "127.0.0.1", False)


async def test_bad_arguments_exit_2() -> None:
    for args in (["--cert", "x.pem"], ["--no-tls", "--cert", "a", "--key", "b"], ["/no/such/dir"]):
        result = await run(sys.executable, "-m", "stack", "serve", "--port", "0", *args)
        assert result.returncode == 2, result.stderr


# ------------------------------------------------------------------------------ the info page, TLS


async def test_one_line_on_stdout_and_info_page_cleartext() -> None:
    async with serve("--no-tls") as server:
        assert server.url.startswith("http://127.0.0.1:")
        conn = await client(server.port)
        response = await conn.request("GET", "/?x=1")
        page = (await response.read()).decode()
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        assert "<td>1.1</td>" in page and "none (cleartext)" in page and "127.0.0.1:" in page
        for method in ("POST", "DELETE", "PATCH"):
            response = await conn.request(method, "/", body=b"discarded" * 1000)
            assert response.status == 200
            await response.read()
        response = await conn.request("GET", "/nope")
        assert response.status == 404
        await response.read()
        await conn.aclose()
        with trio.fail_after(5):
            while server.log.count('HTTP/1.1" ') < 5:  # noqa: ASYNC110 - polling another process's output
                await trio.sleep(0.05)
    # one access line per request: peer, method, target, version, status, bytes, duration
    assert re.search(r'127\.0\.0\.1:\d+ "GET /\?x=1 HTTP/1\.1" 200 \d+ [\d.]+ms', server.log)
    assert re.search(r'"POST / HTTP/1\.1" 200 \d+ ', server.log)
    assert re.search(r'"GET /nope HTTP/1\.1" 404 \d+ ', server.log)


async def test_default_tls_with_the_cached_localhost_certificate(tmp_path: Path) -> None:
    need("curl")
    async with serve(env={"XDG_CACHE_HOME": str(tmp_path)}) as server:
        assert server.url.startswith("https://")
        cafile = tmp_path / "trio-stack" / "ca.pem"
        assert str(cafile) in server.log  # it says where the CA is
        url = server.url.replace("127.0.0.1", "localhost")
        result = await run("curl", "-s", "--http1.1", "--cacert", str(cafile), url)
        page = result.stdout.decode()
        assert result.returncode == 0, result.stderr
        assert "TLSv1.3" in page and "<td>http/1.1</td>" in page and "<td>localhost</td>" in page
        result = await run("curl", "-s", "--http2", "--cacert", str(cafile), url)
        assert result.returncode == 0 and "<td>h2</td>" in result.stdout.decode()


async def test_own_certificate(tmp_path: Path) -> None:
    need("curl")
    ca = certs.CA.new("test CA")
    leaf = ca.issue("localhost", "127.0.0.1")
    leaf.write(str(tmp_path), "mine")
    ca.write(str(tmp_path / "ca.pem"))
    async with serve("--cert", str(tmp_path / "mine.pem"), "--key", str(tmp_path / "mine.key")) as server:
        result = await run("curl", "-s", "--http1.1", "--cacert", str(tmp_path / "ca.pem"), server.url)
        assert result.returncode == 0 and "TLSv1.3" in result.stdout.decode()


# ------------------------------------------------------------------------------------ curl interop


async def test_curl_keep_alive_reuse() -> None:
    need("curl")
    async with serve("--no-tls") as server:
        result = await run(
            "curl", "--http1.1", "-sv", "-o", "/dev/null", "-o", "/dev/null", server.url, server.url + "nope"
        )
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert "Re-using existing connection" in err, err
        assert err.count("Connected to") == 1


async def test_curl_chunked_upload_and_100_continue(tmp_path: Path) -> None:
    need("curl")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(3 * 1024 * 1024))
    async with serve("--no-tls") as server:
        result = await run(
            "curl",
            "--http1.1",
            "-sv",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{upload}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            server.url,
        )
        assert result.stdout == b"200", result.stderr
        assert b"Transfer-Encoding: chunked" in result.stderr
        result = await run(
            "curl",
            "--http1.1",
            "-sv",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{upload}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            server.url,
        )
        assert result.stdout == b"200", result.stderr
        assert b"HTTP/1.1 100 Continue" in result.stderr


async def test_curl_files_head_and_range(site: Path) -> None:
    need("curl")
    async with serve(str(site), "--no-tls") as server:
        result = await run("curl", "--http1.1", "-sI", server.url + "data.bin")
        head = result.stdout.decode()
        assert head.startswith("HTTP/1.1 200") and "content-length: 262144" in head.lower()
        assert "last-modified:" in head.lower()
        result = await run("curl", "--http1.1", "-s", "-r", "10-19", "-w", " %{http_code}", server.url + "data.bin")
        assert result.stdout == bytes(range(10, 20)) + b" 206"
        result = await run("curl", "--http1.1", "-s", server.url + "data.bin")
        assert result.stdout == (site / "data.bin").read_bytes()


# ------------------------------------------------------------------------------------ file serving
# (the static-file app itself, in process: test_static.py)


async def test_traversal_with_curl_path_as_is(site: Path) -> None:
    need("curl")
    async with serve(str(site), "--no-tls") as server:
        result = await run(
            "curl", "--http1.1", "-s", "--path-as-is", "-w", " %{http_code}", server.url + "../secret.txt"
        )
        assert result.stdout.endswith(b" 404") and b"outside" not in result.stdout


# ---------------------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_graceful_shutdown(tmp_path: Path, signum: signal.Signals) -> None:
    need("curl")
    root = tmp_path / "root"
    root.mkdir()
    big = os.urandom(2 * 1024 * 1024)
    (root / "big.bin").write_bytes(big)
    async with serve(str(root), "--no-tls") as server:
        idle = await client(server.port)
        response = await idle.request("GET", "/big.bin", headers=[("range", "bytes=0-0")])
        await response.read()  # now an idle keep-alive connection
        out = tmp_path / "out.bin"
        async with trio.open_nursery() as n:
            results: list[subprocess.CompletedProcess[bytes]] = []

            async def slow_download() -> None:
                results.append(
                    await run("curl", "--http1.1", "-s", "--limit-rate", "1M", "-o", str(out), server.url + "big.bin")
                )

            n.start_soon(slow_download)
            await trio.sleep(0.7)  # the download is in flight
            server.process.send_signal(signum)
            with trio.fail_after(15):
                code = await server.process.wait()
        assert code == 0
        assert results[0].returncode == 0 and hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big).digest()
        with pytest.raises(Exception):  # noqa: B017 - the idle connection was closed by the server
            r = await idle.request("GET", "/big.bin")
            await r.read()
        assert "shutting down" in server.log


ALT_SVC = 'h3=":8443"; ma=86400'


async def _alt_svc_app(request: http.Request) -> None:
    if request.target == "/stream":
        body = await request.start_response(200, [("content-type", "text/plain")])
        await body.send(b"hi")
        await body.done()
    else:
        await request.respond(200, [("content-type", "text/plain")], b"hi")


@pytest.mark.parametrize("version", ["1.1", "2"])
async def test_response_headers_advertise_on_every_response(version: str) -> None:
    """``serve`` advertises HTTP/3 with the HTTP server spec's ``response_headers`` (built once,
    written by the response writers of both versions), not by rewrapping each request's
    ``respond``/``start_response`` (which made a reference cycle per request, issue 17's soak)."""
    spec = http.server(_alt_svc_app, response_headers={"Alt-Svc": ALT_SVC})
    assert spec.response_headers == ((b"alt-svc", ALT_SVC.encode()),)
    a, b = memory_pair()

    async def serve_one() -> None:
        conn = await spec.attach(b)
        await spec.handle(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        async with await http.client(prior_knowledge=version == "2").attach(a) as conn:
            for target in ("/", "/stream"):
                response = await conn.request("GET", target)
                assert await response.read() == b"hi"
                assert response.http_version == version
                assert response.headers.get_all("alt-svc") == [ALT_SVC]
                assert response.headers.get("content-type") == "text/plain"
        nursery.cancel_scope.cancel()


def test_response_headers_refuse_what_the_writers_own() -> None:
    for bad in ({"Content-Length": "3"}, {"Date": "x"}, {"Connection": "close"}, {"x-bad": "a\r\nb"}):
        with pytest.raises(ValueError):
            http.server(_alt_svc_app, response_headers=bad)
