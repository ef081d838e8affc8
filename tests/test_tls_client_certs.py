"""Client certificates (mutual TLS) in the TLS specs: ``tls.client(cert=)`` and
``tls.server(client_ca=, client_cert=)``, in TLS 1.3 and 1.2, over memory pairs and loopback TCP;
interop with ``openssl s_client`` / ``s_server``; the conformance kit over an mTLS connection.

In TLS 1.3 a server checks the client's certificate after the client's handshake is over, so a
refused client's ``attach`` succeeds and its first receive raises the ``HandshakeError``; in TLS
1.2 its ``attach`` fails. ``refusal`` below collects the client's error either way.
"""

from __future__ import annotations

import ssl
import subprocess
from typing import Any

import pytest
import trio
from _peers import need
from cryptography import x509
from test_tls_conformance import tcp_pair
from test_tls_interop import free_port, running
from test_tls_support import attach_both, bounded, certs, connected

from layers import tcp, tls
from layers.certs import Leaf
from stack import ByteStream, Stack, after
from stack.testing import check_bytestream, memory_pair

__all__ = ["bounded"]  # the autouse fixture that bounds every test's time

VERSIONS = ["TLSv1.3", "TLSv1.2"]


def alice() -> Leaf:
    """A client certificate from the trusted CA (clientAuth extended key usage)."""
    return certs().ca.issue("alice.test", client=True)


def mtls_client(version: str, **kw: Any) -> tls.client:
    """A client of the localhost server, trusting the test CA, limited to ``version``. The specs
    have no version knob: the limit goes on the spec's own context, so ``cert=`` is still what
    loads the client's certificate."""
    spec = tls.client(server_hostname="localhost", ca=certs().ca, **kw)
    spec._ctx.maximum_version = ssl.TLSVersion[version.replace(".", "_")]
    return spec


def mtls_server(**kw: Any) -> tls.server:
    kw.setdefault("client_ca", certs().ca)
    return tls.server(certs().localhost, **kw)


async def refusal(c: Any, how: str = "recv") -> Any:
    """The client's error: its attach's (TLS 1.2), or that of its first receive (TLS 1.3)."""
    if isinstance(c, BaseException):
        return c
    assert isinstance(c, tls.TLSStream)
    assert c.info["tls_version"] == "TLSv1.3", "only a TLS 1.3 client finishes its handshake before the refusal"
    with pytest.raises(tls.HandshakeError) as info:
        if how == "recv":
            await c.recv(deadline=after(5))
        else:
            await c.recv_into(bytearray(100), deadline=after(5))
    return info.value


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("version", VERSIONS)
async def test_required_with_a_valid_certificate(version: str) -> None:
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await connected(mtls_client(version, cert=alice()), mtls_server(), a, b)
        async with c, s:
            assert c.info["tls_version"] == s.info["tls_version"] == version
            cert = x509.load_der_x509_certificate(s.info["peer_certificate"])
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.DNSName) == ["alice.test"]
            assert s.info["peer_subject"] == (("commonName", "alice.test"),)
            assert s.info["peer_alt_names"] == (("DNS", "alice.test"),)
            # and the client's view of the server, decoded the same way
            assert c.info["peer_subject"] == (("commonName", "localhost"),)
            assert ("DNS", "localhost") in c.info["peer_alt_names"]
            await c.send(b"ping")
            assert await s.recv_exactly(4, deadline=after(5)) == b"ping"
            await s.send(b"pong")
            assert await c.recv_exactly(4, deadline=after(5)) == b"pong"


@pytest.mark.parametrize("version", VERSIONS)
async def test_optional_without_a_certificate(version: str) -> None:
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await connected(mtls_client(version), mtls_server(client_cert="optional"), a, b)
        async with c, s:
            assert s.info["tls_version"] == version
            assert s.info["peer_certificate"] is None
            assert s.info["peer_subject"] is None and s.info["peer_alt_names"] is None
            await c.send(b"ping")  # the connection works: nothing was refused
            assert await s.recv_exactly(4, deadline=after(5)) == b"ping"
            await s.send(b"pong")
            assert await c.recv_exactly(4, deadline=after(5)) == b"pong"


async def test_optional_with_a_certificate_shows_it() -> None:
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await connected(mtls_client("TLSv1.3", cert=alice()), mtls_server(client_cert="optional"), a, b)
        async with c, s:
            assert s.info["peer_subject"] == (("commonName", "alice.test"),)


async def test_certificate_and_trust_forms(tmp_path: Any) -> None:
    """``cert=`` as a (certfile, keyfile) pair or a Leaf; ``client_ca=`` as a CA object, a PEM
    file, PEM bytes and PEM text: each handshake succeeds and the server sees alice."""
    cs = certs()
    leaf = alice()
    pair = leaf.write(tmp_path, "alice")
    ca_file = cs.ca_file
    forms = [(leaf, cs.ca), (pair, ca_file), (leaf, cs.ca.cert_pem), (pair, cs.ca.cert_pem.decode())]
    with trio.fail_after(20):
        for cert, client_ca in forms:
            a, b = memory_pair()
            c, s = await connected(mtls_client("TLSv1.3", cert=cert), mtls_server(client_ca=client_ca), a, b)
            assert s.info["peer_subject"] == (("commonName", "alice.test"),), (cert, client_ca)
            await c.aclose()
            await s.aclose()


async def test_every_sni_context_checks_clients() -> None:
    """The server builds one context per certificate and switches by SNI: the switched-to
    context must trust ``client_ca`` and require the certificate just as the default one."""
    cs = certs()
    spec = tls.server({"a.test": cs.a, None: cs.localhost}, client_ca=cs.ca)
    with trio.fail_after(20):
        for name in ("a.test", "localhost"):
            a, b = memory_pair()
            cspec = tls.client(server_hostname=name, ca=cs.ca, cert=alice())
            c, s = await connected(cspec, spec, a, b)
            assert s.info["server_name"] == name
            assert s.info["peer_subject"] == (("commonName", "alice.test"),)
            await c.aclose()
            await s.aclose()
            a, b = memory_pair()
            c, s = await attach_both(tls.client(server_hostname=name, ca=cs.ca), spec, a, b)
            assert isinstance(s, tls.HandshakeError) and s.reason == "certificate_required", (name, s)
            assert (await refusal(c)).reason == "certificate_required"


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("how", ["recv", "recv_into"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_required_without_a_certificate(version: str, how: str) -> None:
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await attach_both(mtls_client(version), mtls_server(), a, b)
        assert isinstance(s, tls.HandshakeError), s
        assert s.reason == "certificate_required", s
        assert "sent no certificate" in str(s) and "client_ca=" in str(s)
        error = await refusal(c, how)
        assert isinstance(error, tls.HandshakeError), error
        assert error.reason == "certificate_required", error
        assert "client certificate" in str(error) or "certificate from this side" in str(error)
        assert "cert=" in str(error)


@pytest.mark.parametrize("mode", ["required", "optional"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_certificate_from_another_ca(version: str, mode: str) -> None:
    stranger = certs().other_ca.issue("mallory.test", client=True)
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await attach_both(mtls_client(version, cert=stranger), mtls_server(client_cert=mode), a, b)
        assert isinstance(s, tls.HandshakeError), s
        assert s.reason == "unknown_ca", s
        assert "client's certificate is not trusted" in str(s) and "client_ca=" in str(s)
        error = await refusal(c)
        assert error.reason == "unknown_ca", error
        assert "does not trust this side's certificate" in str(error)


@pytest.mark.parametrize("version", VERSIONS)
async def test_certificate_without_client_auth_usage(version: str) -> None:
    server_only = certs().ca.issue("alice.test")  # ExtendedKeyUsage serverAuth only
    with trio.fail_after(20):
        a, b = memory_pair()
        c, s = await attach_both(mtls_client(version, cert=server_only), mtls_server(), a, b)
        assert isinstance(s, tls.HandshakeError), s
        assert s.reason == "bad_certificate", s
        assert "clientAuth" in str(s) and "client=True" in str(s)
        error = await refusal(c)
        assert error.reason == "bad_certificate", error
        assert "refused this side's certificate" in str(error)


# --------------------------------------------------------------------------- configuration


def test_configuration_errors_and_defaults() -> None:
    cs = certs()
    with pytest.raises(ValueError, match="context="):
        tls.client(context=ssl.create_default_context(), cert=cs.localhost)
    with pytest.raises(ValueError, match="needs client_ca="):
        tls.server(cs.localhost, client_cert="required")
    with pytest.raises(ValueError, match="needs client_ca="):
        tls.server(cs.localhost, client_cert="optional")
    with pytest.raises(ValueError, match="client_cert='none'"):
        tls.server(cs.localhost, client_ca=cs.ca, client_cert="none")
    with pytest.raises(ValueError, match="'none', 'optional' or 'required'"):
        tls.server(cs.localhost, client_ca=cs.ca, client_cert="yes")  # type: ignore[arg-type]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match="context="):
        tls.server(context=ctx, client_ca=cs.ca)
    with pytest.raises(ValueError, match="context="):
        tls.server(context=ctx, client_cert="none")

    assert tls.server(cs.localhost).client_cert == "none"
    assert tls.server(cs.localhost)._ctx.verify_mode == ssl.CERT_NONE
    required = tls.server(cs.localhost, client_ca=cs.ca)
    assert required.client_cert == "required"  # the default once client_ca is given
    assert required._ctx.verify_mode == ssl.CERT_REQUIRED
    assert required._ctx.verify_flags & ssl.VERIFY_X509_STRICT
    optional = tls.server(cs.localhost, client_ca=cs.ca, client_cert="optional")
    assert optional._ctx.verify_mode == ssl.CERT_OPTIONAL


# --------------------------------------------------------------------------- the conformance kit


async def mtls_over_tcp() -> tuple[ByteStream, ByteStream]:
    c, s = await connected(mtls_client("TLSv1.3", cert=alice()), mtls_server(), *await tcp_pair())
    assert s.info["peer_subject"] == (("commonName", "alice.test"),)
    return c, s


async def test_conformance_kit_over_mtls_over_tcp() -> None:
    await check_bytestream(mtls_over_tcp)


# --------------------------------------------------------------------------- interop: openssl


async def whoami(stream: ByteStream) -> None:
    """Answer one line with what the server knows of the client's certificate."""
    assert isinstance(stream, tls.TLSStream)
    line = await stream.recv_until(b"\n", deadline=after(10))
    subject = dict(stream.info["peer_subject"] or ())
    facts = f"cn={subject.get('commonName')} version={stream.info['tls_version']}"
    await stream.send(b"echo: " + line + facts.encode() + b"\n")


@pytest.mark.interop
@pytest.mark.parametrize("version", VERSIONS)
async def test_openssl_s_client_with_a_certificate(version: str, tmp_path: Any) -> None:
    openssl = need("openssl")
    cert, key = alice().write(tmp_path, "alice")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (addr,) = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), mtls_server()).serve, whoami)
            flag = "-tls1_3" if version == "TLSv1.3" else "-tls1_2"
            cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{addr[1]}", "-servername", "localhost",
                   "-CAfile", certs().ca_file, "-verify_return_error", "-ign_eof", flag,
                   "-cert", cert, "-key", key]  # fmt: skip
            result = await trio.run_process(
                cmd, stdin=b"hello from s_client\n", capture_stdout=True, stderr=subprocess.STDOUT, check=False
            )
            nursery.cancel_scope.cancel()
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, text
    assert f"echo: hello from s_client\ncn=alice.test version={version}\n" in text, text


@pytest.mark.interop
@pytest.mark.parametrize("version", VERSIONS)
async def test_openssl_s_client_without_a_certificate_is_refused(version: str) -> None:
    openssl = need("openssl")
    spec = mtls_server()
    seen: list[BaseException] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listener = await Stack(tcp.listen("127.0.0.1", 0), spec).listen(handshake_timeout=10)

            async def accept_one() -> None:
                lower = await listener.bottom.accept()
                try:
                    await spec.attach(lower, deadline=after(10))
                except tls.HandshakeError as exc:
                    seen.append(exc)
                finally:
                    await lower.aclose()

            nursery.start_soon(accept_one)
            flag = "-tls1_3" if version == "TLSv1.3" else "-tls1_2"
            cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{listener.address[1]}", "-servername", "localhost",
                   "-CAfile", certs().ca_file, "-verify_return_error", "-ign_eof", flag]  # fmt: skip
            result = await trio.run_process(
                cmd, stdin=b"hello from s_client\n", capture_stdout=True, stderr=subprocess.STDOUT, check=False
            )
        await listener.aclose()
    text = result.stdout.decode("utf-8", "replace")
    (exc,) = seen
    assert isinstance(exc, tls.HandshakeError) and exc.reason == "certificate_required", exc
    assert "echo:" not in text, text
    # What OpenSSL's client reports: TLS 1.3 has an alert of its own for it, TLS 1.2 does not.
    alert = "certificate required" if version == "TLSv1.3" else "handshake failure"
    assert alert in text.lower(), text


@pytest.mark.interop
@pytest.mark.parametrize("version", VERSIONS)
async def test_our_client_against_openssl_s_server_requiring_a_certificate(version: str) -> None:
    openssl = need("openssl")
    cs = certs()
    port = free_port()
    cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "2", "-rev",
           "-cert", cs.localhost[0], "-key", cs.localhost[1],
           "-Verify", "1", "-verify_return_error", "-CAfile", cs.ca_file,
           "-no_tls1_3" if version == "TLSv1.2" else "-no_tls1_2"]  # fmt: skip
    with trio.fail_after(30):
        async with running(cmd) as (_, out):
            await out.wait_for("ACCEPT")
            spec = tls.client(server_hostname="localhost", ca=cs.ca, cert=alice())
            async with await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(10)) as s:
                assert s.info["tls_version"] == version
                await s.send(b"hello with a certificate\n")
                assert await s.recv_until(b"\n", deadline=after(10)) == b"etacifitrec a htiw olleh\n"
            await out.wait_for("alice.test")  # s_server printed the client certificate's subject

            # without a certificate: refused, in the handshake (1.2) or on the first receive (1.3)
            bare = tls.client(server_hostname="localhost", ca=cs.ca)
            stack = Stack(tcp.connect("127.0.0.1", port), bare)
            try:
                stream = await stack.connect(deadline=after(10))
            except tls.HandshakeError as exc:
                error = await refusal(exc)
            else:
                async with stream:
                    error = await refusal(stream)
            assert error.reason == "certificate_required", error
