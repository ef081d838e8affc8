"""Interop with real TLS peers on loopback: ``openssl s_server`` for our client, ``openssl
s_client`` and ``curl`` for our server, with ALPN and SNI (two host names on one port).

Outside CI a test skips when its program is missing; with ``CI`` set it fails instead. Every test
binds 127.0.0.1, bounds its time with ``trio.fail_after``, and kills what it starts.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from _peers import need
from cryptography import x509
from test_tls_support import bounded, certs

from layers import tcp, tls
from stack import Broken, ByteStream, Stack, Timeout, after

__all__ = ["bounded"]  # the autouse fixture that bounds every test's time

pytestmark = pytest.mark.interop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Output:
    """A child's stdout, collected by a task; ``wait_for`` blocks until a text shows up."""

    def __init__(self) -> None:
        self.text = ""
        self.changed = trio.Event()

    async def collect(self, stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some():
            self.text += chunk.decode("utf-8", "replace")
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, needle: str, seconds: float = 10.0) -> None:
        with trio.move_on_after(seconds):
            while needle not in self.text:
                await self.changed.wait()
            return
        raise AssertionError(f"no {needle!r} within {seconds}s in the output:\n{self.text[-2000:]}")


@asynccontextmanager
async def running(cmd: list[str]) -> AsyncIterator[tuple[trio.Process, Output]]:
    """Start ``cmd`` with stdin and stdout piped (stderr joined to stdout); kill it at the end."""
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = Output()
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stdout is not None
            nursery.start_soon(out.collect, proc.stdout)
            try:
                yield proc, out
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()


def sans(stream: tls.TLSStream) -> list[str]:
    cert = x509.load_der_x509_certificate(stream.info["peer_certificate"])
    return list(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    )


# --------------------------------------------------------------------------- our client, openssl s_server


async def test_our_client_against_openssl_s_server_sni() -> None:
    openssl = need("openssl")
    cs = certs()
    port = free_port()
    cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "2", "-rev",
           "-cert", cs.default[0], "-key", cs.default[1],
           "-servername", "a.test", "-cert2", cs.a[0], "-key2", cs.a[1]]  # fmt: skip
    with trio.fail_after(30):
        async with running(cmd) as (_, out):
            await out.wait_for("ACCEPT")
            for name in ("a.test", "default.test"):
                spec = tls.client(server_hostname=name, ca=cs.ca)
                async with await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10)) as s:
                    assert sans(s) == [name]  # s_server picked the certificate by our SNI
                    await s.send(b"hello over tls\n")
                    assert await s.recv_until(b"\n", deadline=after(10)) == b"slt revo olleh\n"


async def receive_line(s: ByteStream, how: str) -> bytes:
    """One line, through ``recv_until`` or through ``recv_into`` calls (the TLS layer's own path)."""
    if how == "recv":
        return await s.recv_until(b"\n", deadline=after(10))
    line = bytearray()
    buffer = bytearray(4096)
    while not line.endswith(b"\n"):
        n = await s.recv_into(buffer, deadline=after(10))
        assert n, f"the stream ended after {bytes(line)!r}"
        line += buffer[:n]
    return bytes(line)


async def receive_any(s: ByteStream, how: str, deadline: float) -> None:
    if how == "recv":
        await s.recv(deadline=deadline)
    else:
        await s.recv_into(bytearray(4096), deadline=deadline)


@pytest.mark.parametrize("how", ["recv", "recv_into"])
async def test_our_client_against_openssl_s_server_alpn_and_key_update(how: str) -> None:
    openssl = need("openssl")
    cs = certs()
    port = free_port()
    cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
           "-cert", cs.localhost[0], "-key", cs.localhost[1], "-alpn", "h2,http/1.1"]  # fmt: skip
    with trio.fail_after(30):
        async with running(cmd) as (proc, out):
            assert proc.stdin is not None
            await out.wait_for("ACCEPT")
            spec = tls.client(server_hostname="localhost", ca=cs.ca, alpn=["http/1.1", "h2"])
            async with await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10)) as s:
                assert s.info["alpn"] == "h2"  # the server's preference, not ours
                assert s.info["tls_version"] == "TLSv1.3"
                await out.wait_for("CIPHER is")
                # A KeyUpdate that asks for ours in return. OpenSSL answers with the next record
                # it writes; if the answer were lost the server could not decrypt what follows.
                await proc.stdin.send_all(b"K\n")
                with pytest.raises(Timeout):  # no data comes, but the KeyUpdate does
                    await receive_any(s, how, after(1))
                await proc.stdin.send_all(b"hello from s_server\n")
                assert await receive_line(s, how) == b"hello from s_server\n"
                await s.send(b"after the key update\n", deadline=after(10))
                await out.wait_for("after the key update")
                await proc.stdin.send_all(b"still readable\n")
                assert await receive_line(s, how) == b"still readable\n"
            assert "KEY UPDATE" in out.text or "SSL_do_handshake -> 1" in out.text


@pytest.mark.parametrize("how", ["recv", "recv_into"])
async def test_our_client_refuses_renegotiation_and_says_so(how: str) -> None:
    """TLS 1.2 renegotiation requested by the server: our client refuses (OP_NO_RENEGOTIATION),
    and its refusal alert, produced while receiving, is sent by the receiving task itself."""
    openssl = need("openssl")
    cs = certs()
    port = free_port()
    cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-no_tls1_3",
           "-cert", cs.localhost[0], "-key", cs.localhost[1]]  # fmt: skip
    with trio.fail_after(30):
        async with running(cmd) as (proc, out):
            assert proc.stdin is not None
            await out.wait_for("ACCEPT")
            spec = tls.client(server_hostname="localhost", ca=cs.ca)
            async with await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10)) as s:
                assert s.info["tls_version"] == "TLSv1.2"
                await out.wait_for("CIPHER is")
                await proc.stdin.send_all(b"R\n")  # s_server: HelloRequest
                with pytest.raises(Broken, match="the peer aborted the TLS connection"):
                    await receive_any(s, how, after(10))
            await out.wait_for("no renegotiation")  # our no_renegotiation alert reached it


async def test_our_client_rejects_s_server_untrusted_certificate() -> None:
    openssl = need("openssl")
    cs = certs()
    port = free_port()
    cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
           "-cert", cs.untrusted[0], "-key", cs.untrusted[1]]  # fmt: skip
    with trio.fail_after(30):
        async with running(cmd) as (_, out):
            await out.wait_for("ACCEPT")
            spec = tls.client(server_hostname="localhost", ca=cs.ca)
            with pytest.raises(tls.HandshakeError) as info:
                await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10))
            assert info.value.reason == "unknown_ca"
            await out.wait_for("unknown ca")  # s_server saw our alert


# --------------------------------------------------------------------------- our server, openssl s_client and curl


def server_spec(alpn: list[str]) -> tls.server:
    cs = certs()
    return tls.server({"a.test": cs.a, "*.example.test": cs.wild, None: cs.default}, alpn=alpn)


async def echo_line(stream: ByteStream) -> None:
    assert isinstance(stream, tls.TLSStream)
    line = await stream.recv_until(b"\n", deadline=after(10))
    facts = f"sni={stream.info['server_name']} alpn={stream.info['alpn']} version={stream.info['tls_version']}"
    await stream.send(b"echo: " + line + facts.encode() + b"\n")


async def s_client(port: int, *args: str) -> str:
    openssl = need("openssl")
    cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", certs().ca_file,
           "-verify_return_error", "-ign_eof", *args]  # fmt: skip
    result = await trio.run_process(
        cmd, stdin=b"hello from s_client\n", capture_stdout=True, stderr=subprocess.STDOUT, check=False
    )
    text: str = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, text
    return text


@pytest.mark.parametrize(
    ("args", "sni", "subject", "alpn", "version"),
    [
        (["-servername", "a.test", "-alpn", "http/1.1,h2"], "a.test", "a.test", "h2", "TLSv1.3"),
        (
            ["-servername", "x.example.test", "-alpn", "http/1.1"],
            "x.example.test",
            "*.example.test",
            "http/1.1",
            "TLSv1.3",
        ),
        (["-noservername"], "None", "default.test", "None", "TLSv1.3"),
        (["-servername", "a.test", "-tls1_2", "-alpn", "h2"], "a.test", "a.test", "h2", "TLSv1.2"),
    ],
)
async def test_openssl_s_client_against_our_server(
    args: list[str], sni: str, subject: str, alpn: str, version: str
) -> None:
    need("openssl")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (addr,) = await nursery.start(
                Stack(tcp.listen("127.0.0.1", 0), server_spec(["h2", "http/1.1"])).serve, echo_line
            )
            text = await s_client(addr[1], *args)
            nursery.cancel_scope.cancel()
    assert f"echo: hello from s_client\nsni={sni} alpn={alpn} version={version}\n" in text, text
    assert f"subject=CN = {subject}" in text, text
    assert "Verify return code: 0 (ok)" in text, text
    if alpn != "None":
        assert f"ALPN protocol: {alpn}" in text, text


async def test_openssl_s_client_no_shared_alpn() -> None:
    need("openssl")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (addr,) = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), server_spec(["http/1.1"])).serve, echo_line)
            openssl = need("openssl")
            cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{addr[1]}", "-servername", "a.test", "-alpn", "h2"]
            result = await trio.run_process(cmd, stdin=b"", capture_stdout=True, stderr=subprocess.STDOUT, check=False)
            nursery.cancel_scope.cancel()
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0
    assert "no application protocol" in text, text


HTTP_BODY = "served {sni} over {alpn}\n"


async def tiny_http(stream: ByteStream) -> None:
    """A fixed HTTP/1.0 answer written by hand (the HTTP layer is another story)."""
    assert isinstance(stream, tls.TLSStream)
    head = await stream.recv_until(b"\r\n\r\n", max_bytes=16384, deadline=after(10))
    assert head.startswith(b"GET / HTTP/1.1\r\n")
    body = HTTP_BODY.format(sni=stream.info["server_name"], alpn=stream.info["alpn"]).encode()
    await stream.send(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )


async def test_curl_against_our_server_two_names_one_port() -> None:
    curl = need("curl")
    cs = certs()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (addr,) = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), server_spec(["http/1.1"])).serve, tiny_http)
            port = addr[1]
            cmd = [curl, "-sS", "--cacert", cs.ca_file,
                   "--resolve", f"a.test:{port}:127.0.0.1", "--resolve", f"b.example.test:{port}:127.0.0.1",
                   "-w", "%{http_version} %{ssl_verify_result}\n",
                   f"https://a.test:{port}/", f"https://b.example.test:{port}/"]  # fmt: skip
            result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert out == "served a.test over http/1.1\n1 0\nserved b.example.test over http/1.1\n1 0\n", out


async def test_curl_refuses_our_server_for_an_unknown_name() -> None:
    curl = need("curl")
    cs = certs()
    seen: list[Any] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            spec = tls.server({"a.test": cs.a}, alpn=["http/1.1"])
            listener = await Stack(tcp.listen("127.0.0.1", 0), spec).listen(handshake_timeout=10)

            async def accept_one() -> None:
                try:
                    await spec.attach(await listener.bottom.accept(), deadline=after(10))
                except tls.HandshakeError as exc:
                    seen.append(exc)

            nursery.start_soon(accept_one)
            port = listener.address[1]
            cmd = [curl, "-sS", "--cacert", cs.ca_file, "--resolve", f"other.test:{port}:127.0.0.1",
                   f"https://other.test:{port}/"]  # fmt: skip
            result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        await listener.aclose()
    assert result.returncode != 0
    assert "unrecognized name" in result.stderr.decode().lower(), result.stderr.decode()
    (exc,) = seen
    assert exc.reason == "unrecognized_name" and "'other.test'" in str(exc)


# Findings about the throwaway test certificate itself, not about the TLS layer: a certificate
# from a private CA minted for the test carries no CRL or OCSP address.
CERTIFICATE_ONLY = {"cert_revocation"}


@pytest.mark.slow
async def test_testssl_finds_nothing_to_report(tmp_path: Any) -> None:
    """testssl.sh against a TLS server stack with the default configuration: protocols, cipher
    categories, forward secrecy, server defaults and preferences, known vulnerabilities."""
    testssl = need("testssl")
    report = tmp_path / "testssl.json"
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            spec = tls.server(certs().localhost, alpn=["http/1.1"])  # valid for 127.0.0.1
            (addr,) = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), spec).serve, tiny_http)
            cmd = [testssl, "--quiet", "--color", "0", "--warnings", "off", "--severity", "MEDIUM",
                   "--add-ca", certs().ca_file, "--jsonfile", str(report),
                   "-p", "-s", "-f", "-S", "-P", "-U", f"127.0.0.1:{addr[1]}"]  # fmt: skip
            result = await trio.run_process(cmd, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
            nursery.cancel_scope.cancel()
    text = result.stdout.decode("utf-8", "replace")
    findings = json.loads(report.read_text())
    bad = [f for f in findings if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] not in CERTIFICATE_ONLY]
    assert not bad, "\n".join(f"{f['severity']} {f['id']}: {f['finding']}" for f in bad) + "\n" + text[-3000:]
    assert "TLS 1.3    offered" in text and "TLS 1.1    not offered" in text, text
    assert "Obsolete CBC ciphers (AES, ARIA etc.)         not offered" in text, text
