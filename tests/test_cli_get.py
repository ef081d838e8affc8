"""``python -m stack get``: against ``nghttpd`` (HTTP/2 over TLS and cleartext), ``python -m
http.server`` (HTTP/1.0), and small servers of our own (methods, bodies, headers, Unix sockets);
curl's exit codes; the progress bar (on a pseudo-terminal).

Programs that are missing skip a test on a developer's machine and fail it in CI (``CI`` set).
Every process started here is killed at the end of its test; every wait is bounded. The helpers
at the top are shared with ``test_cli_proxy`` and ``test_cli_workers``.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _peers import need

from layers import certs, http, tcp, unix
from stack import Stack
from stack.cli.get import EXIT_CODES, ProgressBar, parse_url

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.interop


# --------------------------------------------------------------------------------------------------
# shared helpers


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A running program whose stdout and stderr are collected as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out = bytearray()
        self.err = bytearray()
        self.ended = 0  # how many of the two pipes reached their end
        self._changed = trio.Event()

    @property
    def text(self) -> str:
        return (self.out + b"\n" + self.err).decode(errors="replace")

    async def collect(self, stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk
            self._changed.set()
            self._changed = trio.Event()
        self.ended += 1
        self._changed.set()

    async def wait_for(self, pattern: str, seconds: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output (stdout then stderr)."""
        rx = re.compile(pattern, re.MULTILINE)
        with trio.move_on_after(seconds):
            while True:
                m = rx.search(self.text)
                if m:
                    return m
                if self.process.returncode is not None and self.ended == 2:
                    break  # it exited and all its output was read
                changed = self._changed
                with trio.move_on_after(0.2):
                    await changed.wait()
        raise AssertionError(f"no {pattern!r} within {seconds}s; output:\n{self.text[-3000:]}")


@asynccontextmanager
async def spawn(cmd: Sequence[str], *, ready: str | None = None, stop: int = signal.SIGKILL) -> AsyncIterator[Child]:
    """Run ``cmd`` for the block (``ready``: a regex to wait for first); then send ``stop`` and,
    after 10 s, SIGKILL."""
    process = await trio.lowlevel.open_process(
        list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
        env=child_env(),
    )  # fmt: skip
    child = Child(process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(child.collect, process.stdout, child.out)
            nursery.start_soon(child.collect, process.stderr, child.err)
            if ready is not None:
                await child.wait_for(ready)
            yield child
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(stop)
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def wait_port(port: int, seconds: float = 20.0) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    with trio.fail_after(seconds):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await s.aclose()
            return


async def stack(*args: str, limit: float = 60, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m stack ARGS`` to the end."""
    with trio.fail_after(limit):
        return await trio.run_process(
            [sys.executable, "-m", "stack", *args], stdin=stdin, capture_stdout=True, capture_stderr=True,
            check=False, cwd=str(ROOT), env=child_env(),
        )  # fmt: skip


def write_pki(directory: Path) -> tuple[str, str, str]:
    """A CA and a localhost leaf in ``directory``: ``(certfile, keyfile, cafile)``."""
    ca = certs.CA.new("get test CA")
    certfile, keyfile = ca.issue("localhost", "127.0.0.1").write(directory, "localhost")
    return certfile, keyfile, ca.write(directory / "ca.pem")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_text("hello, get\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# units


def test_parse_url() -> None:
    t = parse_url("https://localhost:8443/a/b?x=1")
    assert (t.scheme, t.host, t.port, t.authority, t.path) == ("https", "localhost", 8443, "localhost:8443", "/a/b?x=1")
    t = parse_url("http://[::1]/")
    assert (t.host, t.port, t.authority) == ("::1", 80, "[::1]")
    assert parse_url("example.org").path == "/"
    assert parse_url("https://example.org:443").authority == "example.org"


def test_progress_bar_line() -> None:
    class Sink:
        def write(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    bar = ProgressBar(Sink(), 1000, width=80)
    bar.done = 500
    line = bar.line(bar.start + 1.0)
    assert line.startswith(" 50% [") and "ETA 0:01" in line and "500 B/s" in line
    bar = ProgressBar(Sink(), None, width=80)
    bar.done = 2048
    assert "2.0 KiB" in bar.line(bar.start + 2.0) and "elapsed" in bar.line(bar.start + 2.0)


async def test_help_lists_exit_codes() -> None:
    result = await stack("get", "--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for code in (7, 22, 28, 35, 60):
        assert re.search(rf"^\s+{code}\s+{re.escape(EXIT_CODES[code][:20])}", text, re.MULTILINE), text


# --------------------------------------------------------------------------------------------------
# nghttpd: HTTP/2 over TLS and in cleartext


async def test_get_from_nghttpd_over_tls(site: Path, tmp_path: Path) -> None:
    nghttpd = need("nghttpd")
    certfile, keyfile, cafile = write_pki(tmp_path)
    port = free_port()
    with trio.fail_after(90):
        async with spawn([nghttpd, "--address=127.0.0.1", "-d", str(site), str(port), keyfile, certfile]):
            await wait_port(port)
            url = f"https://localhost:{port}"
            result = await stack("get", f"{url}/hello.txt", "--cacert", cafile, "-v")
            story = result.stderr.decode()
            assert result.returncode == 0, story
            assert result.stdout == b"hello, get\n"
            for line in (
                "* TLS: TLSv1.3",
                "* ALPN: the server chose h2",
                "subject: CN=localhost",
                "names: DNS:localhost, IP:127.0.0.1",
                "> GET /hello.txt HTTP/2",
                "< HTTP/2 200",
            ):
                assert line in story, story  # fmt: skip

            out = tmp_path / "big.out"
            result = await stack("get", f"{url}/big.bin", "--cacert", cafile, "-o", str(out))
            assert result.returncode == 0, result.stderr
            assert result.stderr == b""  # to a file, stderr not a terminal: quiet
            assert sha(out.read_bytes()) == sha((site / "big.bin").read_bytes())

            # not trusted without the CA (60, as curl), fine with -k; HTTP/1.1 refused by nghttpd (35)
            result = await stack("get", f"{url}/hello.txt")
            assert result.returncode == 60, result.stderr
            assert b"not trusted" in result.stderr
            result = await stack("get", f"{url}/hello.txt", "-k", "-v")
            assert result.returncode == 0 and result.stdout == b"hello, get\n"
            assert b"verified: NO (-k)" in result.stderr
            result = await stack("get", f"{url}/missing", "--cacert", cafile)
            assert result.returncode == 22, result.stderr
            result = await stack("get", f"{url}/missing", "--cacert", cafile, "--no-fail", "-s")
            assert (result.returncode, result.stderr) == (0, b"")


async def test_get_from_nghttpd_cleartext_prior_knowledge(site: Path, tmp_path: Path) -> None:
    nghttpd = need("nghttpd")
    port = free_port()
    with trio.fail_after(60):
        async with spawn([nghttpd, "--address=127.0.0.1", "--no-tls", "-d", str(site), str(port)]):
            await wait_port(port)
            result = await stack("get", f"http://127.0.0.1:{port}/big.bin", "--http2", "-v", "-o", str(tmp_path / "b"))
            assert result.returncode == 0, result.stderr
            assert b"* No TLS (cleartext)" in result.stderr and b"< HTTP/2 200" in result.stderr
            assert sha((tmp_path / "b").read_bytes()) == sha((site / "big.bin").read_bytes())
            result = await stack("get", f"http://127.0.0.1:{port}/hello.txt", "--http2", "-i")
            assert result.returncode == 0
            head, _, body = result.stdout.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/2 200") and body == b"hello, get\n"


# --------------------------------------------------------------------------------------------------
# python -m http.server: HTTP/1.0, and the errors


async def test_get_from_python_http_server(site: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site), str(port)]
    with trio.fail_after(90):
        async with spawn(cmd):
            await wait_port(port)
            url = f"http://127.0.0.1:{port}"
            result = await stack("get", f"{url}/hello.txt", "-v")
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"hello, get\n"
            assert b"< HTTP/1.0 200 OK" in result.stderr and b"> GET /hello.txt HTTP/1.1" in result.stderr
            result = await stack("get", f"{url}/big.bin", "--http1")
            assert result.returncode == 0 and sha(result.stdout) == sha((site / "big.bin").read_bytes())
            result = await stack("get", f"{url}/nope.txt")
            assert result.returncode == 22 and b"404" in result.stderr
            # TLS to a cleartext port: the handshake fails (35)
            result = await stack("get", f"https://127.0.0.1:{port}/", "-k", "--timeout", "10")
            assert result.returncode == 35, result.stderr
            # -X HEAD: no body
            result = await stack("get", f"{url}/big.bin", "-X", "HEAD", "-i")
            assert result.returncode == 0 and result.stdout.endswith(b"\r\n\r\n")
            assert b"content-length: 3145745" in result.stdout.lower()


async def test_exit_codes_without_a_server(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    assert (await stack("get", f"http://127.0.0.1:{port}/")).returncode == 7
    assert (await stack("get", "ftp://127.0.0.1/")).returncode == 1
    assert (await stack("get", "http://127.0.0.1:99999/")).returncode == 3
    assert (await stack("get", "http://host.invalid/")).returncode == 6
    assert (await stack("get", "-d", f"@{tmp_path / 'missing'}", f"http://127.0.0.1:{port}/")).returncode == 26
    missing_ca = str(tmp_path / "missing.pem")
    assert (await stack("get", "--cacert", missing_ca, f"https://127.0.0.1:{port}/")).returncode == 77
    # a server that accepts (backlog) but never answers: --timeout gives 28
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        silent = sock.getsockname()[1]
        result = await stack("get", f"http://127.0.0.1:{silent}/", "--timeout", "1")
        assert result.returncode == 28, result.stderr
        assert b"timed out" in result.stderr


# --------------------------------------------------------------------------------------------------
# our own servers: methods, bodies, headers, Unix sockets


async def echo_app(request: http.Request) -> None:
    """Answer with the method, target, the headers it got and the body's sha256."""
    body = await request.read()
    lines = [f"{request.method} {request.target} HTTP/{request.http_version}"]
    lines += [f"{k}: {v}" for k, v in request.headers]
    lines.append(f"body {len(body)} {sha(body)}")
    await request.respond(200, [("content-type", "text/plain")], ("\n".join(lines) + "\n").encode())


async def test_methods_data_and_headers(tmp_path: Path) -> None:
    payload = os.urandom(200_000)
    (tmp_path / "payload").write_bytes(payload)
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(echo_app)).serve)
        url = f"http://127.0.0.1:{port}/echo?x=1"
        with trio.fail_after(60):
            result = await stack("get", url, "-d", "a=1", "-d", "b=2", "-H", "X-Test: yes")
            text = result.stdout.decode()
            assert result.returncode == 0, result.stderr
            assert text.startswith("POST /echo?x=1 HTTP/1.1\n")
            assert "x-test: yes" in text and "content-type: application/x-www-form-urlencoded" in text
            assert f"body 7 {sha(b'a=1&b=2')}" in text
            result = await stack("get", url, "-X", "PUT", "-d", f"@{tmp_path / 'payload'}", "--http2",
                                 "-H", "Content-Type: application/octet-stream")  # fmt: skip
            text = result.stdout.decode()
            assert text.startswith("PUT /echo?x=1 HTTP/2\n"), text
            assert f"body {len(payload)} {sha(payload)}" in text
            assert "content-type: application/octet-stream" in text
            result = await stack("get", url, "-X", "DELETE", "-d", "@-", stdin=b"from stdin")
            assert f"body 10 {sha(b'from stdin')}" in result.stdout.decode()
        nursery.cancel_scope.cancel()


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(Stack(unix.listen(path), http.server(echo_app)).serve)
        with trio.fail_after(30):
            result = await stack("get", "http://localhost/over-unix", "--unix-socket", path, "-v")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"GET /over-unix HTTP/1.1\nhost: localhost\n")
        assert f"* Connected to unix:{path}".encode() in result.stderr
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------------------
# the progress bar: on a terminal, not on a pipe


async def big_app(request: http.Request) -> None:
    out = await request.start_response(200, [("content-length", str(4 * 1024 * 1024))])
    chunk = b"x" * 65536
    for _ in range(64):
        await out.send(chunk)
        await trio.sleep(0.005)
    await out.done()


async def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(big_app)).serve)
        url = f"http://127.0.0.1:{port}/"
        with trio.fail_after(60):
            piped = await stack("get", url, "-o", str(tmp_path / "a"))
            assert piped.returncode == 0 and piped.stderr == b""  # stderr is a pipe: quiet
            master, slave = pty.openpty()
            try:
                result = await trio.run_process(
                    [sys.executable, "-m", "stack", "get", url, "-o", str(tmp_path / "b")],
                    stderr=slave, capture_stdout=True, check=False, cwd=str(ROOT), env=child_env(),
                )  # fmt: skip
                os.set_blocking(master, False)
                drawn = b""
                while True:
                    try:
                        chunk = os.read(master, 65536)
                    except (BlockingIOError, OSError):
                        break
                    if not chunk:
                        break
                    drawn += chunk
            finally:
                os.close(master)
                os.close(slave)
            assert result.returncode == 0
            text = drawn.decode(errors="replace")
            assert "100% [" in text and "4.0 MiB/4.0 MiB" in text and "ETA" in text, text
            assert (tmp_path / "b").stat().st_size == 4 * 1024 * 1024
        nursery.cancel_scope.cancel()
