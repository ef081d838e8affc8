"""HTTP/3 from the command line: ``serve`` answers over QUIC on its port and advertises it with
Alt-Svc (``--no-http3`` turns it off), ``get --http3`` fetches over it, and headless Chromium
loads ``serve``'s page over HTTP/3 (QUIC forced on, our test certificate's key pinned)."""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import trio
from _peers import CHROMIUM_FLAGS, need
from cryptography.hazmat.primitives import serialization
from test_cli_serve import ROOT, run, serve

from layers import http, http3, tcp, tls
from layers.certs import CA
from stack import Stack, after


def _own_cert(tmp_path: Path) -> tuple[CA, list[str], str]:
    ca = CA.new("h3 test CA")
    leaf = ca.issue("localhost", "127.0.0.1")
    certfile, keyfile = leaf.write(str(tmp_path), "leaf")
    spki = leaf.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ca, ["--cert", certfile, "--key", keyfile], base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_serve_answers_http3_and_advertises_it(tmp_path: Path) -> None:
    ca, cert_args, _ = _own_cert(tmp_path)
    cafile = ca.write(tmp_path / "ca.pem")
    async with serve(*cert_args, "-q") as server:
        client = Stack(tcp.connect("127.0.0.1", server.port), tls.client(alpn=["h2"], ca=ca), http.client())
        async with await client.connect(deadline=after(10)) as conn:
            response = await conn.request("GET", "/")
            await response.read()
            assert response.headers.get("alt-svc") == f'h3=":{server.port}"; ma=86400'
        async with http3.open_client("127.0.0.1", server.port, ca=ca, deadline=after(10)) as h3:
            response = await h3.request("GET", "/")
            page = await response.read()
            assert b"<tr><th>HTTP version</th><td>3</td></tr>" in page and "alt-svc" not in response.headers
        result = await run(sys.executable, "-m", "stack", "get", "--http3", "--cacert", cafile, server.url, "-i")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"HTTP/3 200") and b"<td>h3</td>" in result.stdout


async def test_no_http3(tmp_path: Path) -> None:
    ca, cert_args, _ = _own_cert(tmp_path)
    async with serve(*cert_args, "-q", "--no-http3") as server:
        client = Stack(tcp.connect("127.0.0.1", server.port), tls.client(alpn=["h2"], ca=ca), http.client())
        async with await client.connect(deadline=after(10)) as conn:
            response = await conn.request("GET", "/")
            await response.read()
            assert "alt-svc" not in response.headers
        result = await run(
            sys.executable, "-m", "stack", "get", "--http3", "-k", "--connect-timeout", "1", server.url, limit=30
        )
        assert result.returncode != 0


async def test_headless_chromium_loads_the_page_over_http3(tmp_path: Path) -> None:
    chromium = need("chromium")
    _, cert_args, spki = _own_cert(tmp_path)
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--disable-quic"]
    async with serve(*cert_args, "-q") as server:
        origin = f"127.0.0.1:{server.port}"
        with trio.fail_after(120):
            result = await trio.run_process(
                [
                    chromium,
                    *flags,
                    "--enable-quic",
                    f"--origin-to-force-quic-on={origin}",
                    f"--ignore-certificate-errors-spki-list={spki}",
                    f"--user-data-dir={tmp_path / 'profile'}",
                    "--virtual-time-budget=5000",
                    "--dump-dom",
                    server.url,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=str(ROOT),
            )
    dom = result.stdout.decode(errors="replace")
    assert "<tr><th>HTTP version</th><td>3</td></tr>" in dom, (dom, result.stderr.decode(errors="replace")[-2000:])
