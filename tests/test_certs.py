"""layers.certs: throwaway CAs and leaves that Python's ssl (strict) and `openssl verify` accept."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from layers import certs
from layers.certs import CA, Leaf, default_cache_dir, localhost_pair

POSIX = os.name == "posix"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.new()


def _strict(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # On by default in 3.13's create_default_context(); force it here so 3.11/3.12 check the same rules.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def client_ctx(*cas: CA) -> ssl.SSLContext:
    ctx = _strict(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    for one in cas:
        one.configure_trust(ctx)
    return ctx


def server_ctx(leaf: Leaf) -> ssl.SSLContext:
    ctx = _strict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    leaf.configure_cert(ctx)
    return ctx


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None
) -> tuple[BaseException | None, BaseException | None]:
    """Run a TLS handshake over an in-memory stream pair, then one round trip if both sides succeeded.

    Returns (server error, client error); each is the ssl error behind trio's BrokenResourceError, or None.
    A side that fails closes its transport, so the other side fails too instead of waiting forever.
    """
    a, b = trio.testing.memory_stream_pair()
    s = trio.SSLStream(a, server, server_side=True)
    c = trio.SSLStream(b, client, server_hostname=server_hostname)
    errors: dict[str, BaseException | None] = {"server": None, "client": None}

    async def run(name: str, stream: trio.SSLStream[Any]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            errors[name] = exc.__cause__ or exc
            await stream.transport_stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "server", s)
            nursery.start_soon(run, "client", c)
        if errors["server"] is None and errors["client"] is None:
            await c.send_all(b"ping")
            assert await s.receive_some() == b"ping"
            await s.send_all(b"pong")
            assert await c.receive_some() == b"pong"
    return errors["server"], errors["client"]


# --- real handshakes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "server_hostname"),
    [
        (("example.test",), "example.test"),
        (("example.test", "www.example.test"), "www.example.test"),
        (("*.example.test",), "api.example.test"),
        (("127.0.0.1",), "127.0.0.1"),
        (("::1",), "::1"),
        (("localhost", "127.0.0.1", "::1"), "::1"),
    ],
)
async def test_handshake_verifies(ca: CA, names: tuple[str, ...], server_hostname: str) -> None:
    leaf = ca.issue(*names)
    assert await handshake(server_ctx(leaf), client_ctx(ca), server_hostname) == (None, None)


@pytest.mark.parametrize(
    ("names", "server_hostname"),
    [
        (("example.test",), "other.test"),
        (("example.test",), "www.example.test"),
        (("*.example.test",), "example.test"),  # a wildcard does not match the bare domain
        (("*.example.test",), "a.b.example.test"),  # ... nor more than one label
        (("127.0.0.1",), "127.0.0.2"),
        (("::1",), "127.0.0.1"),
        (("localhost",), "127.0.0.1"),  # a DNS name does not cover an address
    ],
)
async def test_hostname_mismatch_fails(ca: CA, names: tuple[str, ...], server_hostname: str) -> None:
    leaf = ca.issue(*names)
    _, client_error = await handshake(server_ctx(leaf), client_ctx(ca), server_hostname)
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    # X509_V_ERR_HOSTNAME_MISMATCH (62) or X509_V_ERR_IP_ADDRESS_MISMATCH (64): the chain itself is fine.
    assert client_error.verify_code in (62, 64), client_error
    assert "mismatch" in str(client_error).lower()


async def test_untrusted_ca_fails(ca: CA) -> None:
    leaf = ca.issue("example.test")
    _, client_error = await handshake(server_ctx(leaf), client_ctx(CA.new("someone else")), "example.test")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    # The server sends its CA along, so OpenSSL sees an untrusted self-signed root in the chain (19);
    # 20 would be "unable to get local issuer certificate" for a server sending the leaf alone.
    assert client_error.verify_code in (19, 20), client_error


async def test_mutual_tls(ca: CA) -> None:
    server = server_ctx(ca.issue("example.test"))
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    client = client_ctx(ca)
    ca.issue("client.example.test", client=True).configure_cert(client)
    assert await handshake(server, client, "example.test") == (None, None)


async def test_client_auth_needs_client_flag(ca: CA) -> None:
    server = server_ctx(ca.issue("example.test"))
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    client = client_ctx(ca)
    ca.issue("client.example.test").configure_cert(client)  # serverAuth only
    server_error, _ = await handshake(server, client, "example.test")
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert server_error.verify_code == 26, server_error  # X509_V_ERR_INVALID_PURPOSE


async def test_long_first_name_has_no_cn_but_verifies(ca: CA) -> None:
    name = "a" * 60 + ".example.test"
    leaf = ca.issue(name)
    assert len(leaf.cert.subject) == 0
    assert leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert await handshake(server_ctx(leaf), client_ctx(ca), name) == (None, None)


# --- what the certificates contain ----------------------------------------------------------------------


def test_ca_extensions(ca: CA) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "trio-stack test CA"
    assert cert.version == x509.Version.v3
    assert cert.serial_number > 0
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("client", [False, True])
def test_leaf_extensions(ca: CA, client: bool) -> None:
    before = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue("example.test", "*.example.test", "192.0.2.1", "2001:db8::1", days=30, client=client)
    cert = leaf.cert
    assert cert.issuer == ca.cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "example.test"
    cert.verify_directly_issued_by(ca.cert)
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    expected = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    assert eku == expected
    assert (
        ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        == ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert list(san.value) == [
        x509.DNSName("example.test"),
        x509.DNSName("*.example.test"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]
    assert cert.not_valid_before_utc < before - datetime.timedelta(minutes=30)
    assert cert.not_valid_after_utc - before < datetime.timedelta(days=30, minutes=1)
    assert cert.not_valid_after_utc - before > datetime.timedelta(days=29)


def test_leaf_never_outlives_ca() -> None:
    short = CA.new(days=2)
    leaf = short.issue("example.test", days=365)
    assert leaf.cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_pem_shapes(ca: CA) -> None:
    leaf = ca.issue("example.test")
    chain = x509.load_pem_x509_certificates(leaf.cert_pem)
    assert chain == [leaf.cert, ca.cert]
    assert leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert x509.load_pem_x509_certificate(ca.cert_pem) == ca.cert
    assert ca.key_pem != leaf.key_pem


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Example.TEST.", x509.DNSName("example.test")),
        ("*.Example.test", x509.DNSName("*.example.test")),
        ("under_score.test", x509.DNSName("under_score.test")),
        ("bücher.test", x509.DNSName("xn--bcher-kva.test")),
        ("[::1]", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("::ffff:127.0.0.1", x509.IPAddress(ipaddress.ip_address("::ffff:127.0.0.1"))),
    ],
)
def test_name_normalisation(ca: CA, given: str, expected: x509.GeneralName) -> None:
    san = ca.issue(given).cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [expected]


def test_duplicate_names_dropped(ca: CA) -> None:
    leaf = ca.issue("example.test", "EXAMPLE.test", "::1", "0:0::1")
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("example.test"), x509.IPAddress(ipaddress.ip_address("::1"))]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "empty"),
        (" ", "whitespace"),
        ("exa mple.test", "whitespace"),
        ("example.test\n", "whitespace"),
        ("*.test", "two labels after"),
        ("*", "two labels after"),
        ("www.*.example.test", "wildcard must be the whole leftmost label"),
        ("w*.example.test", "wildcard must be the whole leftmost label"),
        ("-bad.test", "label '-bad'"),
        ("a..b", "label ''"),
        (".", "not a DNS host name"),
        ("a" * 64 + ".test", "1 to 63"),
        (".".join(["a" * 63] * 4), "253"),
        ("exa/mple.test", "label 'exa/mple'"),
        ("[example.test]", "brackets"),
        ("fe80::1%eth0", "scope id"),
    ],
)
def test_bad_names(ca: CA, name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("*", r"\*")):
        ca.issue(name)


def test_bad_arguments(ca: CA) -> None:
    with pytest.raises(ValueError, match="at least one name"):
        ca.issue()
    with pytest.raises(ValueError, match="days"):
        ca.issue("example.test", days=0)
    with pytest.raises(ValueError, match="days"):
        CA.new(days=-1)
    with pytest.raises(ValueError, match="CA name"):
        CA.new("")
    with pytest.raises(ValueError, match="stem"):
        ca.issue("example.test").write(".", "a/b")


# --- files ----------------------------------------------------------------------------------------------


def test_write_files(ca: CA, tmp_path: Path) -> None:
    leaf = ca.issue("example.test")
    certfile, keyfile = leaf.write(tmp_path, "server")
    assert (certfile, keyfile) == (str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    assert Path(certfile).read_bytes() == leaf.cert_pem
    assert Path(keyfile).read_bytes() == leaf.key_pem
    cafile = ca.write(tmp_path / "ca.pem")
    assert cafile == str(tmp_path / "ca.pem")
    assert Path(cafile).read_bytes() == ca.cert_pem
    if POSIX:
        assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]  # no temp files
    # The written files load as they are.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    ssl.create_default_context(cafile=cafile)


@pytest.mark.interop
@pytest.mark.parametrize(
    ("names", "check"),
    [
        (("example.test",), ["-verify_hostname", "example.test"]),
        (("*.example.test",), ["-verify_hostname", "api.example.test"]),
        (("127.0.0.1",), ["-verify_ip", "127.0.0.1"]),
        (("::1",), ["-verify_ip", "::1"]),
    ],
)
def test_openssl_verify(ca: CA, tmp_path: Path, names: tuple[str, ...], check: list[str]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed, and CI is set: the interop check must run in CI")
        pytest.skip("openssl is not installed")
    cafile = ca.write(tmp_path / "ca.pem")
    certfile, _ = ca.issue(*names).write(tmp_path, "leaf")

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "verify", "-x509_strict", "-CAfile", cafile, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = verify("-purpose", "sslserver", *check, certfile)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == f"{certfile}: OK"
    ca_ok = verify(cafile)
    assert ca_ok.returncode == 0, ca_ok.stdout + ca_ok.stderr
    # And it does say no: a leaf from another CA, and a client purpose without client=True.
    other = CA.new("other").write(tmp_path / "other.pem")
    assert (
        subprocess.run(
            [openssl, "verify", "-CAfile", other, certfile], capture_output=True, timeout=60, check=False
        ).returncode
        != 0
    )
    assert verify("-purpose", "sslclient", certfile).returncode != 0


# --- localhost_pair -------------------------------------------------------------------------------------


def _contents(paths: tuple[str, str, str]) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]


async def test_localhost_pair_handshakes(tmp_path: Path) -> None:
    certfile, keyfile, cafile = localhost_pair(tmp_path / "cache")
    assert [Path(p).name for p in (certfile, keyfile, cafile)] == ["localhost.pem", "localhost.key", "ca.pem"]
    assert all(os.path.isabs(p) for p in (certfile, keyfile, cafile))
    server = _strict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    server.load_cert_chain(certfile, keyfile)
    client = _strict(ssl.create_default_context(cafile=cafile))
    for host in ("localhost", "127.0.0.1", "::1"):
        assert await handshake(server, client, host) == (None, None)
    if POSIX:
        assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700


def test_localhost_pair_reuses_cache(tmp_path: Path) -> None:
    first = localhost_pair(tmp_path)
    before = _contents(first)
    mtimes = [os.stat(p).st_mtime_ns for p in first]
    second = localhost_pair(str(tmp_path))
    assert second == first
    assert _contents(second) == before
    assert [os.stat(p).st_mtime_ns for p in second] == mtimes


def test_localhost_pair_remints_when_expiring(tmp_path: Path) -> None:
    first = _contents(localhost_pair(tmp_path, days=3))  # fewer than 7 days left from the start
    second = _contents(localhost_pair(tmp_path, days=3))
    assert all(a != b for a, b in zip(first, second, strict=True))
    third = _contents(localhost_pair(tmp_path))  # a full year: kept from now on
    assert _contents(localhost_pair(tmp_path)) == third


def test_localhost_pair_remints_as_time_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = localhost_pair(tmp_path, days=30)
    first = _contents(paths)
    real_now = certs._now
    monkeypatch.setattr(certs, "_now", lambda: real_now() + datetime.timedelta(days=22))
    assert _contents(localhost_pair(tmp_path, days=30)) == first  # 8 days left: kept
    monkeypatch.setattr(certs, "_now", lambda: real_now() + datetime.timedelta(days=24))
    assert all(a != b for a, b in zip(first, _contents(localhost_pair(tmp_path, days=30)), strict=True))


@pytest.mark.parametrize("damage", ["missing-key", "garbage-cert", "other-ca", "other-key"])
def test_localhost_pair_remints_when_damaged(tmp_path: Path, damage: str) -> None:
    certfile, keyfile, cafile = localhost_pair(tmp_path)
    before = _contents((certfile, keyfile, cafile))
    if damage == "missing-key":
        os.unlink(keyfile)
    elif damage == "garbage-cert":
        Path(certfile).write_bytes(b"not a certificate\n")
    elif damage == "other-ca":
        CA.new().write(cafile)
    else:
        Path(keyfile).write_bytes(CA.new().issue("localhost").key_pem)
    after = _contents(localhost_pair(tmp_path))
    assert after[0] != before[0]
    # The fresh set is whole: the leaf in the chain is issued by the CA and matches the key.
    chain = x509.load_pem_x509_certificates(after[0])
    chain[0].verify_directly_issued_by(x509.load_pem_x509_certificate(after[2]))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "trio-stack"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "trio-stack"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "trio-stack"
    assert not (tmp_path / "home").exists()  # not created


@pytest.mark.skipif(sys.platform == "win32", reason="the .lock file exists only where fcntl does (POSIX)")
def test_localhost_pair_leaves_no_temp_files(tmp_path: Path) -> None:
    localhost_pair(tmp_path, days=3)
    localhost_pair(tmp_path, days=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "ca.pem", "localhost.key", "localhost.pem"]
