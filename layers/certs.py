"""Throwaway certificates for tests, examples and the command line's default TLS certificate.

This is not a layer: it is the helper that gives the TLS layer something to present. It mints a private
certificate authority in memory and issues leaf certificates from it, all with the ``cryptography``
package and EC P-256 keys (a CA plus a leaf takes a few milliseconds)::

    ca = CA.new()
    leaf = ca.issue("localhost", "127.0.0.1", "::1")

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

Every certificate made here passes OpenSSL's strict checks (``ssl.VERIFY_X509_STRICT``, on by default in
Python 3.13 contexts, and ``openssl verify -x509_strict``): version 3, a positive random serial, critical
BasicConstraints and KeyUsage, SubjectKeyIdentifier on every certificate, AuthorityKeyIdentifier on every
certificate, a SubjectAlternativeName on every leaf. ``notBefore`` is set one hour in the past so that a
peer whose clock runs a little behind still accepts a certificate minted a moment ago.

The CA's private key never leaves memory: nothing here writes it, so a cached CA that someone chose to
trust cannot be used to mint anything else.

:func:`localhost_pair` is the command line's default certificate: a CA and a ``localhost`` leaf kept in a
cache directory (:func:`default_cache_dir`) and minted again only when missing, damaged or close to expiry.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pathlib
import re
import ssl
import tempfile
from collections.abc import Iterator
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "LOCALHOST_NAMES", "Leaf", "default_cache_dir", "localhost_pair"]

#: The names the :func:`localhost_pair` leaf is valid for.
LOCALHOST_NAMES: Final[tuple[str, ...]] = ("localhost", "127.0.0.1", "::1")

#: How far ``notBefore`` lies before the moment of minting (tolerates peers whose clocks run behind).
_BACKDATE: Final = datetime.timedelta(hours=1)

#: :func:`localhost_pair` mints again when the cached CA or leaf has this little validity left, or less.
_RENEW_WITHIN: Final = datetime.timedelta(days=7)

#: The longest value a subject commonName may have (RFC 5280 ub-common-name).
_MAX_CN: Final = 64

_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

_CA_FILE: Final = "ca.pem"
_LEAF_STEM: Final = "localhost"


def _now() -> datetime.datetime:
    """The current time, timezone-aware UTC (a seam for tests)."""
    return datetime.datetime.now(datetime.UTC)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive whole number of days, not {days!r}")


def _general_name(name: str) -> x509.GeneralName:
    """Parse one ``issue()`` name into the SubjectAlternativeName entry it stands for.

    An IPv4 or IPv6 literal (an IPv6 one may be written in brackets, ``[::1]``) becomes an IPAddress
    entry; anything else must be a DNS host name and becomes a DNSName entry. DNS names are lowercased,
    one trailing dot is dropped, and non-ASCII labels are converted to their IDNA ``xn--`` form. A
    wildcard is allowed only as the whole leftmost label with at least two labels after it
    (``*.example.test``), the only form TLS clients match.
    """
    if not isinstance(name, str):
        raise TypeError(f"certificate names must be str, not {type(name).__name__}")
    if not name:
        raise ValueError("certificate name is empty: give a DNS host name or an IP address literal")
    if any(ch.isspace() for ch in name):
        raise ValueError(f"certificate name {name!r} contains whitespace: give a DNS host name or an IP address")
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError(f"certificate name {name!r}: an IP address in a certificate cannot carry a scope id")
        return x509.IPAddress(address)
    if literal is not name:
        raise ValueError(f"certificate name {name!r}: only an IPv6 address literal may be written in brackets")
    return x509.DNSName(_dns_name(name))


def _dns_name(name: str) -> str:
    host = name[:-1] if name.endswith(".") else name
    if not host:
        raise ValueError(f"certificate name {name!r} is not a DNS host name")
    labels = host.lower().split(".")
    out: list[str] = []
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            out.append(label)
            continue
        if "*" in label:
            raise ValueError(
                f"certificate name {name!r}: a wildcard must be the whole leftmost label, as in *.example.test"
            )
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise ValueError(f"certificate name {name!r}: label {label!r} is not a valid IDNA label") from exc
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"certificate name {name!r}: label {label!r} must be 1 to 63 letters, digits, '-' or '_',"
                " not starting or ending with '-'"
            )
        out.append(label)
    if out[0] == "*" and len(out) < 3:
        raise ValueError(
            f"certificate name {name!r}: a wildcard needs at least two labels after it"
            " (clients refuse *.tld); use e.g. *.example.test"
        )
    result = ".".join(out)
    if len(result) > 253:
        raise ValueError(f"certificate name {name!r} is longer than the 253 characters DNS allows")
    return result


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_atomic(path: str, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same directory, are flushed to disk, then renamed over
    ``path`` with :func:`os.replace`. ``private`` files get mode 0600 (from creation on, so the key is
    never readable by others even for a moment); the others 0644.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Leaf:
    """A certificate issued by a :class:`CA`, with its private key.

    Made by :meth:`CA.issue`; not meant to be constructed directly.
    """

    __slots__ = ("_ca_cert", "_cert", "_key")

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate):
        self._cert = cert
        self._key = key
        self._ca_cert = ca_cert

    @property
    def cert(self) -> x509.Certificate:
        """The leaf certificate itself."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The chain as PEM: the leaf certificate followed by the issuing CA's certificate.

        This is what a server presents (``SSLContext.load_cert_chain`` accepts it as the certfile).
        """
        return self._cert.public_bytes(serialization.Encoding.PEM) + self._ca_cert.public_bytes(
            serialization.Encoding.PEM
        )

    @property
    def key_pem(self) -> bytes:
        """The leaf's private key as unencrypted PKCS#8 PEM."""
        return _key_pem(self._key)

    def write(self, dir: str | os.PathLike[str], stem: str) -> tuple[str, str]:
        """Write ``<dir>/<stem>.pem`` (the :attr:`cert_pem` chain) and ``<dir>/<stem>.key`` (the key).

        Each file is replaced atomically; the key file has mode 0600 and the certificate file 0644.
        ``dir`` must exist. Returns ``(certfile, keyfile)``, the two paths, ready for
        ``SSLContext.load_cert_chain(certfile, keyfile)``.
        """
        if not stem or "/" in stem or os.sep in stem or stem in (".", ".."):
            raise ValueError(f"stem must be a plain file name without a directory part, not {stem!r}")
        base = os.fspath(dir)
        certfile = os.path.join(base, stem + ".pem")
        keyfile = os.path.join(base, stem + ".key")
        _write_atomic(keyfile, self.key_pem, private=True)
        _write_atomic(certfile, self.cert_pem, private=False)
        return certfile, keyfile

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` present this certificate chain and key (``load_cert_chain``).

        The ssl module loads keys only from files, so the two are written to a private temporary
        directory that is removed again before this returns.
        """
        with tempfile.TemporaryDirectory(prefix="trio-stack-cert-") as tmp:
            certfile, keyfile = self.write(tmp, "leaf")
            ctx.load_cert_chain(certfile, keyfile)

    def __repr__(self) -> str:
        subject = self._cert.subject.rfc4514_string() or "(no subject)"
        return f"<Leaf {subject} serial={self._cert.serial_number:x}>"


class CA:
    """A private certificate authority: a self-signed certificate and its key, held in memory.

    Build one with :meth:`CA.new`; issue leaves with :meth:`issue`; make a client (or a server that checks
    client certificates) trust it with :meth:`configure_trust`.
    """

    __slots__ = ("_cert", "_key")

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self._cert = cert
        self._key = key

    @classmethod
    def new(cls, name: str = "trio-stack test CA", *, days: int = 3650) -> CA:
        """Mint a fresh self-signed CA named ``name`` (its subject commonName), valid for ``days`` days.

        The key is a new EC P-256 key. The certificate carries critical BasicConstraints (CA, no path
        length limit), critical KeyUsage (keyCertSign, cRLSign) and Subject/AuthorityKeyIdentifier.
        """
        _check_days(days)
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_CN:
            raise ValueError(f"CA name must be 1 to {_MAX_CN} characters and not blank, not {name!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        ski = _ski(key)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert(self) -> x509.Certificate:
        """The CA certificate."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA's private key as unencrypted PKCS#8 PEM (nothing in this module writes it anywhere)."""
        return _key_pem(self._key)

    def issue(self, *names: str, days: int = 365, client: bool = False) -> Leaf:
        """Issue a leaf certificate valid for ``names``, for ``days`` days, with a new EC P-256 key.

        Each name is a DNS host name (a wildcard such as ``*.example.test`` is allowed as the whole
        leftmost label) or an IPv4/IPv6 address literal; DNS names become DNSName and addresses IPAddress
        SubjectAlternativeName entries, in the order given, duplicates dropped. The first name is also the
        subject commonName (when it is longer than 64 characters the subject is left empty and the SAN
        extension is marked critical, as RFC 5280 requires). Names are checked before anything is made:
        an empty name, whitespace, a malformed label or a misplaced wildcard raises ValueError.

        The leaf never outlives its CA: ``notAfter`` is the earlier of now + ``days`` and the CA's own
        ``notAfter``. ExtendedKeyUsage is serverAuth, plus clientAuth when ``client`` is true (so the same
        leaf can authenticate either end of a mutual-TLS connection).
        """
        _check_days(days)
        if not names:
            raise ValueError("issue() needs at least one name (a DNS host name or an IP address literal)")
        sans: list[x509.GeneralName] = []
        for name in names:
            entry = _general_name(name)
            if entry not in sans:
                sans.append(entry)
        cn = names[0][1:-1] if names[0].startswith("[") else names[0]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if len(cn) <= _MAX_CN else [])

        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), self._cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(_ski(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(self._key)),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
            .sign(self._key, hashes.SHA256())
        )
        return Leaf(cert, key, self._cert)

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write the CA certificate (PEM, mode 0644) to ``path``, atomically; return the path as str.

        The CA's private key is not written.
        """
        target = os.fspath(path)
        _write_atomic(target, self.cert_pem, private=False)
        return target

    def configure_trust(self, ctx: ssl.SSLContext) -> None:
        """Add this CA to the certificates ``ctx`` trusts (``load_verify_locations(cadata=...)``).

        On a client context this makes servers with leaves from this CA verify; on a server context with
        ``verify_mode = CERT_REQUIRED`` it makes client certificates from ``issue(..., client=True)`` verify.
        Certificates ``ctx`` trusted before are kept.
        """
        ctx.load_verify_locations(cadata=self.cert_pem.decode("ascii"))

    def __repr__(self) -> str:
        return f"<CA {self._cert.subject.rfc4514_string()} serial={self._cert.serial_number:x}>"


def default_cache_dir() -> pathlib.Path:
    """Where :func:`localhost_pair` keeps the command line's default certificate.

    ``$XDG_CACHE_HOME/trio-stack`` when ``XDG_CACHE_HOME`` is set to an absolute path (the XDG Base
    Directory spec says relative values are to be ignored), else ``~/.cache/trio-stack``. The directory
    is not created here.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(xdg) if xdg and os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
    return base / "trio-stack"


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<directory>/.lock`` (POSIX; a no-op where fcntl is missing).

    It keeps two processes that start at once from each minting a pair and mixing their files.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _cached_pair_ok(certfile: str, keyfile: str, cafile: str, names: tuple[str, ...]) -> bool:
    """True when the three files hold a CA and a leaf it issued for ``names``, with the leaf's key, and
    both certificates are valid now and for more than :data:`_RENEW_WITHIN` to come."""
    try:
        with open(cafile, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(certfile, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(keyfile, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        leaf = chain[0]
        if len(chain) != 2 or chain[1] != ca:
            return False
        leaf.verify_directly_issued_by(ca)
        if key.public_key() != leaf.public_key():
            return False
        wanted = [_general_name(n) for n in names]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if any(entry not in sans for entry in wanted):
            return False
    except (OSError, ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, x509.ExtensionNotFound):
        return False  # any doubt means mint again
    now = _now()
    return all(c.not_valid_before_utc <= now and c.not_valid_after_utc - now > _RENEW_WITHIN for c in (ca, leaf))


def localhost_pair(cache_dir: str | os.PathLike[str], *, days: int = 365) -> tuple[str, str, str]:
    """The command line's default TLS certificate: ``(certfile, keyfile, cafile)`` in ``cache_dir``.

    ``certfile`` (``localhost.pem``) is a leaf for ``localhost``, ``127.0.0.1`` and ``::1`` followed by
    its CA, ``keyfile`` (``localhost.key``, mode 0600) its key, ``cafile`` (``ca.pem``) the CA certificate
    to trust (the CA's key is never written).

    If the files already there form such a set and both certificates have more than 7 days of validity
    left, they are reused untouched. Otherwise (missing, damaged, mismatched or close to expiry) a fresh
    CA and leaf valid for ``days`` days are minted and each file is replaced atomically (written to a
    temporary file, then :func:`os.replace`). A ``days`` of 7 or less therefore mints on every call.
    ``cache_dir`` is created (mode 0700) if needed; concurrent callers are serialised by a lock file
    there on POSIX. The returned paths are absolute.

    This does blocking file I/O (and may mint keys): call it before ``trio.run``, or through
    ``trio.to_thread.run_sync``.
    """
    _check_days(days)
    directory = os.path.abspath(os.fspath(cache_dir))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    certfile = os.path.join(directory, _LEAF_STEM + ".pem")
    keyfile = os.path.join(directory, _LEAF_STEM + ".key")
    cafile = os.path.join(directory, _CA_FILE)
    with _locked(directory):
        if not _cached_pair_ok(certfile, keyfile, cafile, LOCALHOST_NAMES):
            ca = CA.new("trio-stack localhost CA", days=days)
            leaf = ca.issue(*LOCALHOST_NAMES, days=days)
            ca.write(cafile)
            leaf.write(directory, _LEAF_STEM)
    return certfile, keyfile, cafile
