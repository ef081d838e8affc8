"""``python -m stack proxy``: curl, nghttp and h2load through it to a backend on TCP (``python -m
stack serve DIR --no-tls``) and on a Unix socket (a small HTTP/1.1 server of ours); 502 and 504;
the backend killed and restarted under load. The library behind it (the pool and the header
rules, in process) is tested in ``test_reverse_proxy.py``.

Programs that are missing skip a test on a developer's machine and fail it in CI (``CI`` set).
Every process started here is stopped at the end of its test; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _peers import need
from test_cli_get import Child, free_port, sha, spawn, wait_port, write_pki

pytestmark = pytest.mark.interop

PY = sys.executable

UNIX_BACKEND = r"""
import hashlib, sys, trio
from layers import http, unix
from stack import Stack
from layers.static import FileApp

files = FileApp(sys.argv[1])

async def app(request):
    if request.path == "/sha":  # the request body's size and sha256, read chunk by chunk
        digest, size = hashlib.sha256(), 0
        while chunk := await request.body.recv(65536):
            digest.update(chunk)
            size += len(chunk)
        await request.respond(200, [("content-type", "text/plain")], f"{size} {digest.hexdigest()}".encode())
    elif request.path == "/headers":
        text = "".join(f"{k}: {v}\n" for k, v in request.headers)
        hop = [("keep-alive", "timeout=5"), ("x-hop", "1"), ("connection", "x-hop")]
        await request.respond(200, [("content-type", "text/plain"), *hop], text.encode())
    elif request.path == "/slow":
        await trio.sleep(30)
        await request.respond(200, [], b"late\n")
    elif request.path == "/hello":
        await request.respond(200, [("content-type", "text/plain")], b"Hello, world!")
    else:
        await files(request)

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(Stack(unix.listen(sys.argv[2]), http.server(app)).serve)
        print("serving on unix:" + sys.argv[2], flush=True)

trio.run(main)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_text("hello through the proxy\n")
    (root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    return root


@asynccontextmanager
async def tcp_backend(site: Path, port: int = 0, *extra: str) -> AsyncIterator[tuple[str, Child]]:
    """``python -m stack serve SITE --no-tls``: yields its URL and the process."""
    cmd = [PY, "-m", "stack", "serve", str(site), "--no-tls", "--port", str(port), "-q", *extra]
    async with spawn(cmd, ready=r"serving on (http://\S+)/", stop=signal.SIGTERM) as child:
        m = await child.wait_for(r"serving on (http://\S+)/")
        yield m.group(1), child


@asynccontextmanager
async def unix_backend(site: Path, path: Path) -> AsyncIterator[Child]:
    async with spawn([PY, "-c", UNIX_BACKEND, str(site), str(path)], ready="serving on unix:") as child:
        yield child


@asynccontextmanager
async def proxy(upstream: str, *extra: str) -> AsyncIterator[tuple[str, Child]]:
    """``python -m stack proxy --listen 127.0.0.1:0 --upstream UPSTREAM EXTRA``: its URL and process."""
    cmd = [PY, "-m", "stack", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream, *extra]
    async with spawn(cmd, ready=r"serving on (https?://\S+)/", stop=signal.SIGTERM) as child:
        m = await child.wait_for(r"serving on (https?://\S+)/")
        yield m.group(1), child


async def run(*cmd: str, limit: float = 120) -> tuple[int, bytes, bytes]:
    with trio.fail_after(limit):
        r = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True, check=False)
    return r.returncode, r.stdout, r.stderr


def h2load_counts(out: str) -> dict[str, int]:
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)  # fmt: skip
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and s, out
    names = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
    counts = dict(zip(names, map(int, m.groups()), strict=True))
    counts.update(zip(["2xx", "3xx", "4xx", "5xx"], map(int, s.groups()), strict=True))
    return counts


# --------------------------------------------------------------------------------------------------
# real peers, backend on TCP, TLS in front


async def test_curl_nghttp_h2load_through_tls_proxy_to_tcp_backend(site: Path, tmp_path: Path) -> None:
    curl, nghttp, h2load = need("curl"), need("nghttp"), need("h2load")
    certfile, keyfile, cafile = write_pki(tmp_path)
    with trio.fail_after(240):
        async with (
            tcp_backend(site) as (backend, _),
            proxy(backend, "--cert", certfile, "--key", keyfile) as (url, front),
        ):
            port = int(url.rsplit(":", 1)[1])
            base = f"https://localhost:{port}"
            for version in ("--http2", "--http1.1"):
                code, out, err = await run(curl, "-sS", version, "--cacert", cafile, "-D", "-", f"{base}/hello.txt")
                assert code == 0, err
                head, _, body = out.partition(b"\r\n\r\n")
                assert body == b"hello through the proxy\n"
                assert b"via: 1.1 trio-stack" in head.lower()
                code, out, err = await run(curl, "-sS", version, "--cacert", cafile, f"{base}/big.bin")
                assert code == 0 and sha(out) == sha((site / "big.bin").read_bytes()), err
            code, out, _ = await run(curl, "-sS", "-I", "--cacert", cafile, f"{base}/big.bin")
            assert b"content-length: 2097157" in out.lower()
            code, out, _ = await run(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cafile,
                                     "-X", "POST", "-d", "x", f"{base}/hello.txt")  # fmt: skip
            assert out == b"405"  # the backend's answer, passed through

            code, out, err = await run(nghttp, "-v", f"https://127.0.0.1:{port}/big.bin")
            assert code == 0, err
            text = out.decode(errors="replace")
            assert ":status: 200" in text and "via: 1.1 trio-stack" in text

            code, out, err = await run(h2load, "-n10000", "-c10", "-m10", f"https://127.0.0.1:{port}/hello.txt")
            counts = h2load_counts(out.decode())
            assert counts["succeeded"] == counts["2xx"] == 10000, out.decode()[-1500:]
            assert counts["failed"] == counts["errored"] == counts["timeout"] == 0
            await front.wait_for(r'"GET /hello.txt HTTP/2" 200 24')
            await front.wait_for(r'"GET /hello.txt HTTP/1.1" 200 24')


# --------------------------------------------------------------------------------------------------
# real peers, backend on a Unix socket, cleartext in front


async def test_curl_nghttp_h2load_through_cleartext_proxy_to_unix_backend(site: Path, tmp_path: Path) -> None:
    curl, nghttp, h2load = need("curl"), need("nghttp"), need("h2load")
    sock = tmp_path / "backend.sock"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    with trio.fail_after(300):
        async with unix_backend(site, sock), proxy(f"unix:{sock}", "--no-tls") as (url, _):
            code, out, err = await run(curl, "-sS", "--http2-prior-knowledge", f"{url}/hello")
            assert (code, out) == (0, b"Hello, world!"), err
            # streamed uploads: 5 MiB with a length (HTTP/2) and chunked (HTTP/1.1, no length)
            expected = f"{upload.stat().st_size} {sha(upload.read_bytes())}".encode()
            for extra in (["--http2-prior-knowledge"], ["--http1.1", "-H", "Transfer-Encoding: chunked"]):
                code, out, err = await run(curl, "-sS", *extra, "--data-binary", f"@{upload}",
                                           "-H", "Content-Type: application/octet-stream", f"{url}/sha")  # fmt: skip
                assert (code, out) == (0, expected), err
            # hop-by-hop headers stay on their hop; Via, Forwarded and Host go through
            code, out, err = await run(
                curl, "-sS", "--http1.1", "-D", "-", "-H", "Connection: keep-alive, X-Secret", "-H", "X-Secret: 1",
                "-H", "Keep-Alive: timeout=1", "-H", "Proxy-Authorization: Basic eA==", "-H", "X-Kept: yes",
                f"{url}/headers",
            )  # fmt: skip
            head, _, body = out.partition(b"\r\n\r\n")
            seen = body.decode()
            port = url.rsplit(":", 1)[1]
            assert f"host: 127.0.0.1:{port}\n" in seen and "x-kept: yes\n" in seen, seen
            for gone in ("x-secret", "keep-alive", "proxy-authorization", "connection"):
                assert f"{gone}:" not in seen, seen
            assert "via: 1.1 trio-stack\n" in seen
            assert f'forwarded: for=127.0.0.1;proto=http;host="127.0.0.1:{port}"\n' in seen
            lowered = head.lower()
            assert b"keep-alive: timeout" not in lowered and b"via: 1.1 trio-stack" in lowered

            code, out, err = await run(nghttp, f"{url}/big.bin")
            assert code == 0 and sha(out) == sha((site / "big.bin").read_bytes()), err
            code, out, err = await run(h2load, "-n50000", "-c10", "-m10", f"{url}/hello", limit=240)
            counts = h2load_counts(out.decode())
            assert counts["succeeded"] == counts["2xx"] == 50000, out.decode()[-1500:]
            assert counts["failed"] == counts["errored"] == counts["timeout"] == 0


# --------------------------------------------------------------------------------------------------
# failures: 502, 504, a backend killed and restarted under load


async def test_502_and_504(site: Path, tmp_path: Path) -> None:
    curl = need("curl")
    sock = tmp_path / "backend.sock"

    async def status(url: str) -> tuple[bytes, bytes]:
        _, out, _ = await run(curl, "-s", "-w", "\n%{http_code}", url)
        body, _, status = out.rpartition(b"\n")
        return status, body

    with trio.fail_after(60):
        async with proxy(f"http://127.0.0.1:{free_port()}", "--no-tls") as (url, front):
            assert await status(f"{url}/") == (b"502", b"502 the backend cannot be reached\n")
            await front.wait_for("backend unreachable")
        async with proxy(f"unix:{tmp_path / 'nobody.sock'}", "--no-tls") as (url, _):
            assert (await status(f"{url}/"))[0] == b"502"
        async with unix_backend(site, sock), proxy(f"unix:{sock}", "--no-tls", "--timeout", "1") as (url, _):
            assert await status(f"{url}/slow") == (b"504", b"504 the backend did not answer in time\n")
            assert (await status(f"{url}/hello"))[0] == b"200"  # the proxy goes on


async def test_backend_killed_and_restarted_mid_load(site: Path) -> None:
    curl, h2load = need("curl"), need("h2load")
    port = free_port()
    with trio.fail_after(120):
        async with proxy(f"http://127.0.0.1:{port}", "--no-tls", "-q") as (url, _):
            result: dict[str, int] = {}

            async def load() -> None:
                _, out, _ = await run(h2load, "-D", "6", "-c4", "-m8", f"{url}/hello.txt", limit=60)
                result.update(h2load_counts(out.decode()))

            async with tcp_backend(site, port) as (_, first):
                await wait_port(port)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load)
                    await trio.sleep(1.5)
                    first.process.kill()  # SIGKILL: connections die mid-request
                    await first.process.wait()
                    await trio.sleep(1.5)  # meanwhile: 502s
                    async with tcp_backend(site, port):  # back on the same port
                        await trio.sleep(4.5)
                        _, out, _ = await run(curl, "-s", f"{url}/hello.txt")
                        assert out == b"hello through the proxy\n"
            assert result["started"] - result["done"] <= 4 * 8, result  # only those in flight at the end
            assert result["timeout"] == 0, result
            assert result["2xx"] > 0 and result["5xx"] > 0, result


# --------------------------------------------------------------------------------------------------
# HTTP/3 from clients


async def test_http3_through_the_tls_proxy_and_alt_svc(site: Path, tmp_path: Path) -> None:
    from layers import http3

    certfile, keyfile, cafile = write_pki(tmp_path)
    with trio.fail_after(120):
        async with (
            tcp_backend(site) as (backend, _),
            proxy(backend, "--cert", certfile, "--key", keyfile) as (url, front),
        ):
            port = int(url.rsplit(":", 1)[1])
            async with http3.open_client("127.0.0.1", port, ca=cafile, server_hostname="localhost") as h3:
                response = await h3.request("GET", "/hello.txt")
                assert response.status == 200 and response.http_version == "3"
                assert await response.read() == b"hello through the proxy\n"
                assert "trio-stack" in response.headers.get("via", "")
                response = await h3.request("GET", "/big.bin")
                assert sha(await response.read()) == sha((site / "big.bin").read_bytes())
            await front.wait_for(r'"GET /hello.txt HTTP/3" 200 24')
            get = [PY, "-m", "stack", "get", "--cacert", cafile, "-i", f"https://localhost:{port}/hello.txt"]
            code, out, _ = await run(*get)
            assert code == 0
            assert f'alt-svc: h3=":{port}"'.encode() in out.lower(), out
