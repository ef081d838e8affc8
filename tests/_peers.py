"""Peer programs the interop tests drive (curl, nghttp, openssl, haproxy, chromium, socat...)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's closed network refuses Google's hosts
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--ignore-certificate-errors",  # the servers under test use throwaway certificates
]
"""Headless Chromium as the interop tests run it (add ``--user-data-dir`` and the page)."""


def need(*programs: str) -> str:
    """The path of the first of ``programs`` (each must be installed). A missing one skips the
    test on a developer's machine and fails it in CI (``CI`` set): .ci/run must install it."""
    paths = []
    for program in programs:
        path = shutil.which(program)
        if path is None:
            if os.environ.get("CI"):
                pytest.fail(f"{program} is not installed, and CI is set: .ci/run must install it")
            pytest.skip(f"{program} is not installed (the interop test drives it; CI installs it)")
        paths.append(path)
    return paths[0]


# ------------------------------------------------------------------ hypercorn (trio worker)

HYPERCORN_APP = '''
async def app(scope, receive, send):
    """Echoes the request body as it arrives (200 at once); /refuse answers 413 once the body began."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/refuse":
        await receive()  # the upload has begun; refuse it without reading the rest
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"9")]})
        await send({"type": "http.response.body", "body": b"too large"})
        return
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if message.get("body"):
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        if not message.get("more_body"):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})
'''


@asynccontextmanager
async def hypercorn(tmp_path: Path, *, quic: tuple[str, str] | None = None) -> AsyncIterator[int]:
    """hypercorn with its trio worker, serving HYPERCORN_APP on 127.0.0.1 in a child process
    (started within 30 s, killed at the end); yields the port. ``quic=(certfile, keyfile)``:
    over TLS, and HTTP/3 too (``--quic-bind``): yields the QUIC (UDP) port."""
    if importlib.util.find_spec("hypercorn") is None:
        if os.environ.get("CI"):
            pytest.fail("hypercorn is not installed, and CI is set: .ci/run must install it (the bench extra)")
        pytest.skip("hypercorn is not installed (the interop test runs it; CI installs it)")
    (tmp_path / "duplex_echo.py").write_text(HYPERCORN_APP)
    extra: list[str] = []
    ready = rb"Running on http://127\.0\.0\.1:(\d+)"
    if quic is not None:
        extra = ["--certfile", quic[0], "--keyfile", quic[1], "--quic-bind", "127.0.0.1:0"]
        ready = rb"Running on https://127\.0\.0\.1:(\d+) \(QUIC\)"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", "0",
         "--bind", "127.0.0.1:0", *extra, "duplex_echo:app"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        out = bytearray()
        with trio.fail_after(30):
            while (found := re.search(ready, out)) is None:
                more = await process.stdout.receive_some()
                assert more, f"hypercorn exited: {out.decode(errors='replace')}"
                out += more
        yield int(found.group(1))
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()
