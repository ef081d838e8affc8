"""The rough edges a new user of ``python -m stack`` hits (issue 17, item 7), each reproduced:

* ``serve`` and ``proxy`` on a port already in use print one line (not an exception group);
* ``serve``: HEAD ``/`` has GET's Content-Length; dotfiles are hidden unless ``--dotfiles``;
* ``get``: a binary body is not written to a terminal (unless ``--output -``); ``-o FILE`` is
  opened before connecting (23 at once, an existing file untouched by a failed transfer); a
  refused connection says so; a refused certificate points at ``--cacert``.

Servers run in process (``Stack(...).serve``) or as ``python -m stack serve`` subprocesses (the
helpers of ``test_cli_get``); every wait is bounded.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import sys
from pathlib import Path

import trio
from test_cli_get import ROOT, child_env, free_port, stack, write_pki
from test_cli_serve import serve

from layers import http, tcp, tls
from stack import Stack, after

BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


async def binary_app(request: http.Request) -> None:
    body = BINARY if request.path == "/binary" else b"plain text\n"
    await request.respond(200, [("content-type", "application/octet-stream")], body)


# --------------------------------------------------------------------------------- a busy port


async def test_busy_port_is_one_line_for_serve_and_proxy() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = f"cannot listen on 127.0.0.1:{port}: address already in use"
        proxy = ["proxy", "--no-tls", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:1"]
        for command in (["serve", "--no-tls", "--port", str(port)],
                        ["serve", "--no-tls", "--port", str(port), "--workers", "2"], proxy):  # fmt: skip
            result = await stack(*command)
            assert result.returncode == 1, command
            assert result.stderr.decode() == f"{command[0]}: {line}\n", command


# --------------------------------------------------------------------------------------- serve


async def test_head_has_the_content_length_of_get(tmp_path: Path) -> None:
    """RFC 9110 9.3.2: HEAD gets GET's head. The connection page named the method (HEAD is one
    byte longer than GET), so HEAD / said 459 bytes where GET / sent 458."""
    (tmp_path / "a.txt").write_text("a\n")
    for args in (["--no-tls"], [str(tmp_path), "--no-tls"]):
        async with serve(*args, "-q") as server:
            conn = await Stack(tcp.connect("127.0.0.1", server.port), http.client()).connect(deadline=after(10))
            async with conn:
                lengths = []
                for method in ("GET", "HEAD", "GET"):
                    response = await conn.request(method, "/", deadline=after(10))
                    body = await response.read(deadline=after(10))
                    lengths.append(int(response.headers["content-length"]))
                    assert len(body) == (lengths[-1] if method == "GET" else 0)
                assert lengths[0] == lengths[1] == lengths[2], (args, lengths)


async def test_serve_hides_dotfiles_unless_asked(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "index.txt").write_text("hi\n")
    for flag, status in (([], 404), (["--dotfiles"], 200)):
        async with serve(str(tmp_path), "--no-tls", "-q", *flag) as server:
            conn = await Stack(tcp.connect("127.0.0.1", server.port), http.client()).connect(deadline=after(10))
            async with conn:
                response = await conn.request("GET", "/.env", deadline=after(10))
                body = await response.read(deadline=after(10))
                assert response.status == status and (b"SECRET" in body) == (status == 200)
                response = await conn.request("GET", "/", deadline=after(10))
                assert (b".env" in await response.read(deadline=after(10))) == (status == 200)


async def test_sigusr1_logs_the_live_task_count() -> None:
    """What ``benchmarks/soak.py`` samples: SIGUSR1 logs ``stats: N live trio tasks``."""
    async with serve("--no-tls", "-q") as server:
        server.process.send_signal(signal.SIGUSR1)
        with trio.fail_after(10):
            while "live trio tasks" not in server.log:  # noqa: ASYNC110 - another process's output
                await trio.sleep(0.05)
        assert re.search(r"stats: \d+ live trio tasks", server.log)
        assert server.process.returncode is None  # still serving


# ----------------------------------------------------------------------------------------- get


async def _get_on_a_terminal(*args: str) -> tuple[int, bytes, bytes]:
    """Run ``python -m stack get ARGS`` with stdout on a pseudo-terminal: (status, what the
    terminal got, stderr)."""
    master, slave = pty.openpty()
    try:
        result = await trio.run_process(
            [sys.executable, "-m", "stack", "get", *args], stdout=slave, capture_stderr=True, check=False,
            cwd=str(ROOT), env=child_env(),
        )  # fmt: skip
        os.set_blocking(master, False)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # BlockingIOError: nothing more
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        os.close(slave)
    return result.returncode, shown, result.stderr


async def test_get_refuses_binary_output_to_a_terminal(tmp_path: Path) -> None:
    """As curl: exit 23 and a hint, nothing written; ``--output -`` writes it anyway; text goes."""
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(binary_app)).serve)
        url = f"http://127.0.0.1:{port}"
        with trio.fail_after(60):
            code, shown, err = await _get_on_a_terminal(f"{url}/binary")
            assert code == 23 and shown == b"", (code, shown, err)
            assert b"Binary output can mess up your terminal" in err and b"--output -" in err
            assert err.count(b"\n") == 1
            code, shown, err = await _get_on_a_terminal(f"{url}/binary", "--output", "-")
            assert code == 0 and b"PNG" in shown, (code, shown, err)
            code, shown, err = await _get_on_a_terminal(f"{url}/text")
            assert code == 0 and b"plain text" in shown, (code, shown, err)
            # not a terminal: written as it is
            result = await stack("get", f"{url}/binary")
            assert (result.returncode, result.stdout) == (0, BINARY)
            result = await stack("get", f"{url}/binary", "-o", str(tmp_path / "out"))
            assert result.returncode == 0 and (tmp_path / "out").read_bytes() == BINARY
        nursery.cancel_scope.cancel()


async def test_get_opens_its_output_before_connecting(tmp_path: Path) -> None:
    """``-o FILE`` that cannot be written: 23 before any connection (was 7 here: the connection
    was tried first). A failed transfer leaves an existing file as it was and creates none."""
    port = free_port()  # nobody listens there
    result = await stack("get", f"http://127.0.0.1:{port}/", "-o", str(tmp_path / "no-such-dir" / "out"))
    assert result.returncode == 23, result.stderr
    assert b"cannot write" in result.stderr
    result = await stack("get", f"http://127.0.0.1:{port}/", "-o", str(tmp_path))  # a directory
    assert result.returncode == 23, result.stderr
    (tmp_path / "old").write_bytes(b"kept")
    assert (await stack("get", f"http://127.0.0.1:{port}/", "-o", str(tmp_path / "old"))).returncode == 7
    assert (tmp_path / "old").read_bytes() == b"kept"
    assert (await stack("get", f"http://127.0.0.1:{port}/", "-o", str(tmp_path / "new"))).returncode == 7
    assert not (tmp_path / "new").exists()
    # a successful one replaces the whole file (no append)
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(binary_app)).serve)
        (tmp_path / "old").write_bytes(b"a much longer old content\n")
        result = await stack("get", f"http://127.0.0.1:{port}/text", "-o", str(tmp_path / "old"))
        assert result.returncode == 0 and (tmp_path / "old").read_bytes() == b"plain text\n"
        nursery.cancel_scope.cancel()


async def test_get_says_connection_refused() -> None:
    port = free_port()
    result = await stack("get", f"http://127.0.0.1:{port}/")
    assert result.returncode == 7
    assert result.stderr == f"get: (7) could not connect to 127.0.0.1 port {port}: connection refused\n".encode()


async def test_get_certificate_error_points_at_cacert(tmp_path: Path) -> None:
    """A refused certificate says ``--cacert`` (a command-line option), not the library's
    ``ca=``; one line; 60 as curl."""
    certfile, keyfile, cafile = write_pki(tmp_path)
    front = Stack(tcp.listen("127.0.0.1", 0), tls.server((certfile, keyfile)), http.server(binary_app))
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(front.serve)
        with trio.fail_after(60):
            result = await stack("get", f"https://localhost:{port}/text")
            err = result.stderr.decode()
            assert result.returncode == 60, err
            assert "--cacert" in err and "ca=" not in err and err.count("\n") == 1, err
            result = await stack("get", f"https://localhost:{port}/text", "--cacert", cafile)
            assert (result.returncode, result.stdout) == (0, b"plain text\n")
        nursery.cancel_scope.cancel()
