"""``python -m stack get URL``: a small curl, built as a :class:`~stack.Stack`.

::

    python -m stack get https://localhost:8443/ --cacert CA.pem -v     # the connection story on stderr
    python -m stack get http://127.0.0.1:8080/big.iso -o big.iso        # a progress bar in a terminal
    python -m stack get http://127.0.0.1:8080/ --http2                  # cleartext HTTP/2 (prior knowledge)
    python -m stack get http://localhost/ --unix-socket /run/app.sock   # over a Unix socket
    python -m stack get https://example.org/api -X PUT -d @body.json -H 'Content-Type: application/json'

The stack is ``tcp.connect(host, port)`` (or ``unix.connect(path)``), then for ``https``
``tls.client(alpn=[...])``, then ``http.client()``: HTTP/2 when ALPN chose ``h2`` (or with
``--http2`` in cleartext, prior knowledge), else HTTP/1.1.

The body goes to stdout (or ``-o FILE``, opened before connecting, so that a file that cannot be
written fails at once, exit 23; it is truncated only once a response has come). A binary body
(one with a NUL byte, curl's test) is not written to a terminal unless ``--output -`` asks for it
(exit 23, as curl). ``-v`` tells the connection's story on stderr: the
address reached, the TLS version, cipher and ALPN protocol, the server certificate (subject,
issuer, names, expiry), and the request and response heads. A download shows a progress bar with
its rate and ETA on stderr when stderr is a terminal and the body does not go to that same terminal
(it would garble it); with stderr going to a pipe or a file it stays quiet (``-s`` silences it
everywhere).

Exit codes follow curl's (see :data:`EXIT_CODES`); an HTTP status of 400 or more exits 22 after
writing the body (curl needs ``-f`` for that; here it is the default, ``--no-fail`` turns it off).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import shutil
import socket
import stat
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from layers import http, tcp, tls, unix
from stack import __version__
from stack.cli.common import ENGINES
from stack.compose import Stack
from stack.deadlines import FOREVER, after
from stack.errors import Broken, EndOfStream, ProtocolError, StackError, Timeout

__all__ = ["EXIT_CODES", "GetError", "ProgressBar", "add_parser", "cmd_get", "get", "parse_url"]

OK = 0
UNSUPPORTED_PROTOCOL = 1
USAGE = 2
BAD_URL = 3
CANNOT_RESOLVE = 6
CANNOT_CONNECT = 7
WEIRD_REPLY = 8
HTTP2_ERROR = 16
PARTIAL_BODY = 18
HTTP_ERROR = 22
WRITE_ERROR = 23
READ_ERROR = 26
TIMEOUT = 28
TLS_ERROR = 35
EMPTY_REPLY = 52
RECV_ERROR = 56
CERT_ERROR = 60
CA_FILE_ERROR = 77

EXIT_CODES: dict[int, str] = {
    OK: "success",
    UNSUPPORTED_PROTOCOL: "the URL's scheme is not http or https",
    USAGE: "bad command line",
    BAD_URL: "the URL is malformed",
    CANNOT_RESOLVE: "the host name could not be resolved",
    CANNOT_CONNECT: "could not connect (refused, unreachable)",
    WEIRD_REPLY: "the server broke HTTP/1.1",
    HTTP2_ERROR: "the server broke HTTP/2 (or reset the stream)",
    PARTIAL_BODY: "the body ended before its announced length",
    HTTP_ERROR: "the server answered with a status of 400 or more",
    WRITE_ERROR: "the body could not be written (-o FILE, or stdout closed)",
    READ_ERROR: "the -d @FILE could not be read",
    TIMEOUT: "--timeout or --connect-timeout passed",
    TLS_ERROR: "the TLS handshake failed (no common version, cipher or ALPN; not TLS)",
    EMPTY_REPLY: "the server closed the connection without answering",
    RECV_ERROR: "the connection failed while receiving (reset)",
    CERT_ERROR: "the server's certificate was refused (unknown CA, wrong name, expired); see -k, --cacert",
    CA_FILE_ERROR: "the --cacert file could not be used",
}
"""Exit status -> meaning; the numbers are curl's."""

DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 65536
USER_AGENT = f"trio-stack/{__version__}"


class GetError(Exception):
    """A failure with the exit status it maps to (curl's numbering) and a message for people."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------
# URL and options


@dataclass(frozen=True)
class Target:
    """A parsed URL: ``scheme``, ``host`` (no brackets), ``port``, ``authority`` (as sent in
    Host / ``:authority``), ``path`` (path and query, at least ``/``)."""

    scheme: str
    host: str
    port: int
    authority: str
    path: str


def parse_url(url: str) -> Target:
    """Split ``url``; :class:`GetError` (3 or 1) when it is malformed or not http(s)."""
    if "://" not in url:
        url = "http://" + url  # as curl: a bare host name means http
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise GetError(BAD_URL, f"malformed URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise GetError(UNSUPPORTED_PROTOCOL, f"unsupported scheme {scheme!r} (only http and https)")
    host = parts.hostname
    if not host:
        raise GetError(BAD_URL, f"no host in URL {url!r}")
    if any(c.isspace() for c in url):
        raise GetError(BAD_URL, f"malformed URL {url!r}: it contains white space")
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port is None or port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], authority, path)


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or name != name.strip():
        raise argparse.ArgumentTypeError(f"a header is 'Name: value', not {text!r}")
    return name, value.strip()


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``get`` subcommand to ``sub`` (the subparsers of ``python -m stack``)."""
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    p: argparse.ArgumentParser = sub.add_parser(
        "get",
        help="fetch a URL over HTTP/1.1 or HTTP/2, a small curl",
        description="Fetch URL and write its body to stdout (or -o FILE): a small curl built from the "
        "stack's layers (tcp or unix, tls, http).",
        epilog=f"exit status (as curl's):\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="http:// or https:// URL")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("-k", "--insecure", action="store_true", help="do not check the server's certificate")
    trust.add_argument(
        "--cacert", metavar="FILE", help="trust the CA certificates in FILE (PEM) instead of the system's"
    )
    version = p.add_mutually_exclusive_group()
    version.add_argument("--http1", "--http1.1", dest="http1", action="store_true", help="speak HTTP/1.1 only")
    version.add_argument(
        "--http3", action="store_true", help="speak HTTP/3 over QUIC (UDP to the URL's port; https only)"
    )
    version.add_argument(
        "--http2",
        action="store_true",
        help="HTTP/2: over TLS prefer it (the default), in cleartext use prior knowledge",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="tell the connection's story on stderr (-vv: also debug logging)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE instead of stdout")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="HTTP/1.1 engine: fast, reference (h11), auto: fast (the default)",
    )
    p.add_argument(
        "-X", "--request", dest="method", metavar="METHOD", help="request method (default: GET, or POST with -d)"
    )
    p.add_argument(
        "-d",
        "--data",
        action="append",
        metavar="DATA",
        help="request body (@FILE reads a file, @- stdin); repeated, joined with '&'",
    )
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    p.add_argument("-i", "--include", action="store_true", help="write the response head before the body")
    p.add_argument(
        "--timeout",
        "-m",
        "--max-time",
        dest="timeout",
        type=float,
        metavar="SECONDS",
        help="deadline for the whole transfer (default: none)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline to connect, TLS handshake included (default: 30)",
    )
    p.add_argument("--unix-socket", metavar="PATH", help="connect to this Unix socket instead of the URL's host")
    p.add_argument("-s", "--silent", action="store_true", help="no progress bar and no error message")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # tests: the bar without a terminal
    p.add_argument("--no-fail", action="store_true", help="exit 0 for an HTTP status of 400 or more")
    p.set_defaults(func=cmd_get)
    return p


# --------------------------------------------------------------------------------------------------
# the progress bar


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ProgressBar:
    """A one-line progress bar on a terminal: percentage, bar, bytes, rate and ETA (or, without a
    known total, bytes, rate and elapsed time). Redrawn at most ten times a second."""

    def __init__(self, out: Any, total: int | None, *, width: int | None = None) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self._drawn = 0.0
        self.width = width or shutil.get_terminal_size((80, 24)).columns

    def update(self, n: int) -> None:
        """Count ``n`` more bytes; redraw if the last drawing is older than 0.1 s."""
        self.done += n
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def finish(self) -> None:
        """Draw the final state and end the line."""
        self._draw(time.monotonic())
        self.out.write("\n")
        self.out.flush()

    def line(self, now: float) -> str:
        """The text of the bar at time ``now``."""
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            tail = f" {_size(self.done)}/{_size(self.total)} {_size(rate)}/s ETA {_clock(eta)}"
            room = max(10, self.width - len(tail) - 8)
            filled = int(room * fraction)
            return f"{fraction * 100:3.0f}% [{'#' * filled}{' ' * (room - filled)}]{tail}"
        return f"{_size(self.done)} {_size(rate)}/s {_clock(elapsed)} elapsed"

    def _draw(self, now: float) -> None:
        text = self.line(now)[: self.width - 1]
        self.out.write("\r" + text.ljust(self.width - 1))
        self.out.flush()


# --------------------------------------------------------------------------------------------------
# the story (-v)


class Story:
    """What ``-v`` prints on stderr: ``*`` lines about the connection, ``>`` the request head,
    ``<`` the response head (as curl)."""

    def __init__(self, enabled: bool, out: Any = None) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stderr

    def say(self, prefix: str, text: str = "") -> None:
        if self.enabled:
            self.out.write(f"{prefix} {text}".rstrip() + "\n")
            self.out.flush()

    def connection(self, info: Any, verified: str) -> None:
        if not self.enabled:
            return
        peer = info.get("peer")
        if info.get("transport") == "unix":
            self.say("*", f"Connected to unix:{peer}")
        elif isinstance(peer, tuple):
            local = info.get("local")
            mine = f" (from port {local[1]})" if isinstance(local, tuple) and len(local) > 1 else ""
            self.say("*", f"Connected to {peer[0]} port {peer[1]}{mine}")
        version = info.get("tls_version")
        if version is None:
            self.say("*", "No TLS (cleartext)")
        else:
            self.say("*", f"TLS: {version}, cipher {info.get('cipher')}")
            self.say("*", f"ALPN: the server chose {info.get('alpn') or 'nothing (no ALPN)'}")
            self.certificate(info.get("peer_certificate"), verified)

    def certificate(self, der: bytes | None, verified: str) -> None:
        if not der:
            self.say("*", "Server certificate: none")
            return
        from cryptography import x509

        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            self.say("*", f"Server certificate: unreadable ({exc})")
            return
        self.say("*", "Server certificate:")
        self.say("*", f"  subject: {cert.subject.rfc4514_string()}")
        self.say("*", f"  issuer: {cert.issuer.rfc4514_string()}")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
            names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
            self.say("*", f"  names: {', '.join(names)}")
        except x509.ExtensionNotFound:
            pass
        until = cert.not_valid_after_utc
        days = (until - datetime.datetime.now(datetime.UTC)).days
        self.say("*", f"  valid until: {until:%Y-%m-%d %H:%M} UTC ({days} days left)")
        self.say("*", f"  verified: {verified}")

    def head(self, prefix: str, first: str, headers: Sequence[tuple[str, str]]) -> None:
        self.say(prefix, first)
        for name, value in headers:
            self.say(prefix, f"{name}: {value}")
        self.say(prefix)


# --------------------------------------------------------------------------------------------------
# the transfer


def _failure(
    exc: BaseException, phase: str, target: Target, version: str = "1.1", address: str | None = None
) -> GetError:
    """Map an exception raised while ``phase`` ("connect", "head", "body") to curl's exit code
    (``address``: where the connection went, when not the URL's host and port)."""
    where = f"{target.host} port {target.port}"
    if isinstance(exc, Timeout):
        what = {"connect": f"connecting to {where}", "head": "waiting for the response", "body": "receiving the body"}
        return GetError(TIMEOUT, f"timed out {what.get(phase, phase)}: {exc}")
    if isinstance(exc, tls.HandshakeError):
        if exc.reason in ("unknown_ca", "hostname_mismatch", "bad_certificate"):
            return GetError(CERT_ERROR, certificate_message(exc))
        return GetError(TLS_ERROR, f"TLS handshake with {where} failed: {exc}")
    if phase == "connect":
        cause = exc.__cause__
        if isinstance(cause, socket.gaierror):
            return GetError(CANNOT_RESOLVE, f"could not resolve host {target.host}: {cause.strerror}")
        if isinstance(exc, Broken):
            return GetError(CANNOT_CONNECT, f"could not connect to {address or where}: {_connect_reason(exc)}")
        return GetError(CANNOT_CONNECT, f"could not connect: {exc}")
    if phase == "head":
        if isinstance(exc, EndOfStream):
            return GetError(EMPTY_REPLY, f"empty reply from the server: {exc}")
        if isinstance(exc, ProtocolError) or not isinstance(exc, Broken):
            return GetError(HTTP2_ERROR if version == "2" else WEIRD_REPLY, f"bad reply from the server: {exc}")
        return GetError(RECV_ERROR, f"failure receiving the response: {exc}")
    if isinstance(exc, EndOfStream | ProtocolError) and version != "2":
        return GetError(PARTIAL_BODY, f"the body ended early: {exc}")
    if isinstance(exc, ProtocolError):
        return GetError(HTTP2_ERROR, f"the body failed: {exc}")
    return GetError(RECV_ERROR, f"failure receiving the body: {exc}")


def certificate_message(exc: BaseException) -> str:
    """One line for a refused server certificate that tells a command-line user what to do: the
    library's reason without its advice for programs (``HandshakeError.problem``: the advice names
    a spec parameter, ``tls.client(ca=...)``), then ``--cacert`` / ``-k``."""
    text = str(getattr(exc, "problem", None) or exc).rstrip(" :;,")
    if getattr(exc, "reason", None) == "unknown_ca":
        return f"{text}: pass --cacert FILE with the CA that issued it (-k skips the check)"
    return f"{text} (--cacert FILE trusts another CA; -k skips the check)"


def _connect_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (``connection refused``), from the OSErrors under
    ``exc`` (its causes and, for several addresses tried, their exception group)."""
    errors: list[OSError] = []
    pending: list[BaseException] = [exc]
    while pending:
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        elif isinstance(e, OSError) and e.errno is not None:
            errors.append(e)
        if e.__cause__ is not None:
            pending.append(e.__cause__)
    if not errors:
        return str(exc)
    if all(isinstance(e, ConnectionRefusedError) for e in errors):
        return "connection refused"
    errno = errors[-1].errno
    reason = os.strerror(errno) if errno is not None else str(errors[-1])
    return reason[:1].lower() + reason[1:]


async def _read_data(values: list[str]) -> bytes:
    parts: list[bytes] = []
    for value in values:
        if value.startswith("@"):
            name = value[1:]
            try:
                if name == "-":
                    parts.append(await trio.to_thread.run_sync(sys.stdin.buffer.read))
                else:
                    parts.append(await trio.Path(name).read_bytes())
            except OSError as exc:
                raise GetError(READ_ERROR, f"cannot read {name}: {exc.strerror or exc}") from None
        else:
            parts.append(value.encode())
    return b"&".join(parts)


def build_stack(args: argparse.Namespace, target: Target) -> Stack:
    """The client stack for ``target`` as ``args`` ask: tcp or unix, tls for https, http."""
    bottom: Any = unix.connect(args.unix_socket) if args.unix_socket else tcp.connect(target.host, target.port)
    layers: list[Any] = []
    if target.scheme == "https":
        alpn = ["http/1.1"] if args.http1 else ["h2", "http/1.1"]
        layers.append(
            tls.client(
                server_hostname=target.host, alpn=alpn, verify=not args.insecure, ca=args.cacert, ragged_eofs=True
            )
        )
    prior = bool(args.http2) and target.scheme == "http"
    layers.append(
        http.client(
            authority=target.authority,
            scheme=target.scheme,
            prior_knowledge=prior,
            engine=getattr(args, "engine", "auto"),
        )
    )
    return Stack(bottom, *layers)


def _wants_bar(args: argparse.Namespace) -> bool:
    if args.silent:
        return False
    if args.progress:
        return True
    body_to_terminal = args.output in (None, "-") and sys.stdout.isatty()
    return sys.stderr.isatty() and not body_to_terminal


class Output:
    """Where the body goes: stdout, or ``-o FILE``. The file is opened at once (a file that
    cannot be written fails before anything is sent) but not truncated until :meth:`start`,
    when a response has come; a file it created for a transfer that failed before is removed
    again (:meth:`abandon`). On a terminal, a binary body (a NUL byte) is refused, as curl does,
    unless ``--output -``."""

    def __init__(self, file: Any, path: str | None, created: bool, terminal: bool) -> None:
        self.file = file
        self.path = path
        self.created = created
        self.terminal = terminal
        self.started = False

    @classmethod
    async def open(cls, args: argparse.Namespace) -> Output:
        if args.output in (None, "-"):
            terminal = args.output is None and sys.stdout.isatty()
            return cls(trio.wrap_file(sys.stdout.buffer), None, False, terminal)
        path = args.output
        try:
            created = not await trio.to_thread.run_sync(os.path.lexists, path)
            file = await trio.open_file(path, "ab")  # append mode: nothing is truncated yet
        except OSError as exc:
            raise GetError(WRITE_ERROR, f"cannot write {path}: {exc.strerror or exc}") from None
        return cls(file, path, created, False)

    async def start(self) -> None:
        """A response came: empty the file (if it is a regular one)."""
        self.started = True
        if self.path is not None:
            try:
                if stat.S_ISREG(os.fstat(self.file.fileno()).st_mode):
                    await self.file.truncate(0)
            except OSError as exc:
                raise GetError(WRITE_ERROR, f"cannot write {self.path}: {exc.strerror or exc}") from None

    async def write(self, data: bytes) -> None:
        if self.terminal and b"\0" in data:
            raise GetError(
                WRITE_ERROR,
                'Binary output can mess up your terminal. Use "--output -" to tell get to output it to your '
                'terminal anyway, or consider "--output FILE" to save to a file.',
            )
        try:
            await self.file.write(data)
        except OSError as exc:
            raise GetError(WRITE_ERROR, f"cannot write the body: {exc.strerror or exc}") from None

    async def finish(self) -> None:
        """Close the file, or flush stdout."""
        if self.path is not None:
            with trio.CancelScope(shield=True):
                await self.file.aclose()
            return
        try:
            await self.file.flush()
        except OSError as exc:
            raise GetError(WRITE_ERROR, f"cannot write the body: {exc.strerror or exc}") from None

    async def abandon(self) -> None:
        """The transfer failed before a response: close the file, and remove it if it is ours."""
        if self.path is None:
            return
        with trio.CancelScope(shield=True):
            await self.file.aclose()
        if self.created and not self.started:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


async def get(args: argparse.Namespace) -> int:
    """Run one transfer as ``args`` say; return the exit status (raise :class:`GetError`)."""
    target = parse_url(args.url)
    story = Story(args.verbose > 0)
    data = await _read_data(args.data) if args.data else None
    method = args.method or ("POST" if data is not None else "GET")
    headers: list[tuple[str, str]] = [("user-agent", USER_AGENT), ("accept", "*/*")]
    given = {name.lower() for name, _ in args.headers}
    headers = [(n, v) for n, v in headers if n not in given] + list(args.headers)
    if data is not None and "content-type" not in given:
        headers.append(("content-type", "application/x-www-form-urlencoded"))
    deadline = after(args.timeout) if args.timeout else FOREVER
    try:
        stack = build_stack(args, target)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise GetError(CA_FILE_ERROR, f"cannot use --cacert {args.cacert}: {exc}") from None
    out = await Output.open(args)  # before connecting: a file that cannot be written fails first
    try:
        response = await _transfer(args, target, stack, story, out, method, headers, data, deadline)
    except BaseException:
        if not out.started:
            await out.abandon()
        raise
    if response.status >= 400 and not args.no_fail:
        if not args.silent:
            sys.stderr.write(f"get: the server answered {response.status} {response.reason}".rstrip() + "\n")
        return HTTP_ERROR
    return OK


async def _transfer(
    args: argparse.Namespace,
    target: Target,
    stack: Stack,
    story: Story,
    out: Output,
    method: str,
    headers: list[tuple[str, str]],
    data: bytes | None,
    deadline: float,
) -> http.Response:
    """Connect, send the request, write the response to ``out``; return the response (read)."""
    connect_deadline = min(deadline, after(args.connect_timeout))
    where = f"unix:{args.unix_socket}" if args.unix_socket else f"{target.host} port {target.port}"
    story.say("*", f"Connecting to {where}" + (" over QUIC (HTTP/3)" if args.http3 else ""))
    verified = "NO (-k)" if args.insecure else f"yes, by {args.cacert}" if args.cacert else "yes, by the system's CAs"
    exchange = functools.partial(_exchange, args, target, story, out, method, headers, data, deadline)
    if args.http3:
        return await _get_http3(args, target, story, verified, exchange, connect_deadline)
    try:
        conn = await stack.connect(deadline=connect_deadline)
    except (StackError, OSError) as exc:
        raise _failure(exc, "connect", target, address=where) from None
    story.connection(conn.info, verified)
    async with conn:
        return await exchange(conn)


async def _get_http3(
    args: argparse.Namespace,
    target: Target,
    story: Story,
    verified: str,
    exchange: Callable[[Any], Awaitable[http.Response]],
    connect_deadline: float,
) -> http.Response:
    """``--http3``: the same exchange over HTTP/3 (QUIC on UDP to the URL's port)."""
    from layers import http3

    if target.scheme != "https":
        raise GetError(UNSUPPORTED_PROTOCOL, "--http3 needs an https:// URL (QUIC is always encrypted)")
    try:
        async with http3.open_client(
            target.host, target.port, ca=args.cacert, verify=not args.insecure, deadline=connect_deadline
        ) as conn:
            story.connection(conn.info, verified)
            return await exchange(conn)
    except (StackError, OSError) as exc:
        raise _failure(exc, "connect", target, "3") from None


async def _exchange(
    args: argparse.Namespace,
    target: Target,
    story: Story,
    out: Output,
    method: str,
    headers: list[tuple[str, str]],
    data: bytes | None,
    deadline: float,
    conn: Any,
) -> http.Response:
    """Send the request on ``conn`` (any HTTP version), write the response to ``out``; return it."""
    version = conn.http_version
    shown = [("host" if version not in ("2", "3") else ":authority", target.authority), *headers]
    if data is not None:
        shown.append(("content-length", str(len(data))))
    story.head(">", f"{method} {target.path} HTTP/{version}", shown)
    try:
        response: http.Response = await conn.request(method, target.path, headers=headers, body=data, deadline=deadline)
    except (StackError, OSError) as exc:
        raise _failure(exc, "head", target, version) from None
    async with response:
        status_line = f"HTTP/{response.http_version} {response.status} {response.reason}".rstrip()
        story.head("<", status_line, list(response.headers))
        try:
            await out.start()
            if args.include:
                head = status_line + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in response.headers) + "\r\n"
                await out.write(head.encode("latin-1"))
            received = await _copy_body(args, response, out, deadline, target)
        finally:
            await out.finish()
        if response.trailers:
            story.head("<", "(trailers)", list(response.trailers))
        story.say("*", f"Received {received} body bytes")
    return response


async def _copy_body(
    args: argparse.Namespace, response: http.Response, out: Output, deadline: float, target: Target
) -> int:
    length = response.headers.get("content-length")
    total = int(length) if length is not None and length.isdigit() else None
    bar = ProgressBar(sys.stderr, total) if _wants_bar(args) else None
    received = 0
    try:
        async for chunk in _chunks(response, deadline, target):
            await out.write(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.finish()
    return received


async def _chunks(response: http.Response, deadline: float, target: Target) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await response.body.recv(CHUNK, deadline=deadline)
        except (StackError, OSError) as exc:
            raise _failure(exc, "body", target, response.http_version) from None
        if not chunk:
            return
        yield chunk


def cmd_get(args: argparse.Namespace) -> int:
    """``python -m stack get``: run :func:`get`, print an error as curl does, return the status."""
    try:
        return trio.run(get, args)
    except GetError as exc:
        if exc.code == WRITE_ERROR:
            _quiet_stdout()
        if not args.silent:
            print(f"get: ({exc.code}) {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return WRITE_ERROR


def _quiet_stdout() -> None:
    """stdout's reader went away: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass
