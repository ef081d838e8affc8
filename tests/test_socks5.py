"""SOCKS5 client (``layers/socks5.py``): every rule and error path against a scripted proxy in the
test, the conformance kit over memory and chaos with the handshake done first, and interop with
real SOCKS5 servers: Dante (``danted``, no authentication and RFC 1929 username/password with a
throwaway system user) and OpenSSH's dynamic forwarding (``ssh -D`` to a private ``sshd``),
each reaching a local HTTP server and checking the bytes.

Dante and OpenSSH must be installed (missing: skipped on a developer's machine, failed in CI, where
``.ci/run`` installs them). Their tests run as root (dante checks system users; sshd needs its
privilege separation directory): as another user they skip and say so. Every process started here
is stopped at the end of its test, and the throwaway user is removed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from _peers import need
from test_cli_get import Child, free_port, spawn, wait_port

from layers import certs, http, socks5, tcp, tls
from layers.socks5 import AuthenticationFailed, ReplyError, SOCKSError
from stack import Broken, ByteStream, PassThrough, ProtocolError, Stack, StackError, Stream, Timeout, after
from stack.testing import ChaosSchedule, chaos, chaos_pair, check_bytestream, check_detach, memory_pair

BOUND4 = bytes([1, 10, 0, 0, 7]) + (4321).to_bytes(2, "big")  # ATYP IPv4 10.0.0.7:4321
OK4 = b"\x05\x00\x00" + BOUND4


# --------------------------------------------------------------------------------------------------
# a scripted proxy


@dataclass
class Script:
    """What the scripted proxy answers, step by step; ``None`` ends the connection there."""

    method: bytes | None = b"\x05\x00"
    auth: bytes | None = b"\x01\x00"
    reply: bytes | None = OK4
    then: bytes = b""  # target bytes sent right behind the reply (read-ahead for the client)


@dataclass
class Seen:
    greeting: bytes = b""
    auth: bytes = b""
    request: bytes = b""


async def scripted_proxy(stream: ByteStream, script: Script, seen: Seen) -> None:
    """The proxy side of the handshake over ``stream``, answering per ``script``."""
    head = await stream.recv_exactly(2)
    seen.greeting = head + await stream.recv_exactly(head[1])
    if script.method is None:
        await stream.aclose()
        return
    await stream.send(script.method)
    if script.method[1:] == b"\x02":
        ver_ulen = await stream.recv_exactly(2)
        user = await stream.recv_exactly(ver_ulen[1])
        plen = await stream.recv_exactly(1)
        seen.auth = ver_ulen + user + plen + await stream.recv_exactly(plen[0])
        if script.auth is None:
            await stream.aclose()
            return
        await stream.send(script.auth)
        if script.auth[1:] != b"\x00":
            return
    elif script.method[1:] != b"\x00":
        return
    head = await stream.recv_exactly(4)
    size = {1: 4, 4: 16}.get(head[3])
    if size is None:
        n = await stream.recv_exactly(1)
        address = n + await stream.recv_exactly(n[0])
    else:
        address = await stream.recv_exactly(size)
    seen.request = head + address + await stream.recv_exactly(2)
    if script.reply is None:
        await stream.aclose()
        return
    await stream.send(script.reply + script.then)


async def handshake(
    spec: socks5.connect, script: Script, *, deadline: float | None = None
) -> tuple[ByteStream, ByteStream, Seen]:
    """Attach ``spec`` against the scripted proxy on a memory pair: (client stream, proxy end, seen)."""
    a, b = memory_pair()
    seen = Seen()
    out: list[ByteStream] = []

    async def attach() -> None:
        out.append(await spec.attach(a, deadline=deadline if deadline is not None else after(5)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_proxy, b, script, seen)
            await attach()
    return out[0], b, seen


# --------------------------------------------------------------------------------------------------
# the rules


async def test_no_auth_connect_by_name_with_read_ahead() -> None:
    s, proxy, seen = await handshake(socks5.connect("example.org", 443), Script(then=b"HTTP/1.1 200"))
    assert seen.greeting == b"\x05\x01\x00"
    assert seen.request == b"\x05\x01\x00\x03\x0bexample.org" + (443).to_bytes(2, "big")
    assert s.info["peer"] == ("example.org", 443) and s.info["host"] == "example.org"
    assert s.info["socks_bound"] == ("10.0.0.7", 4321) == s.info["local"]
    assert s.info["socks_proxy"] == "b" and s.info["socks_auth"] == "none" and s.info["transport"] == "memory"
    assert await s.recv() == b"HTTP/1.1 200"  # arrived with the reply: kept, not lost
    await s.send(b"ping")
    assert await proxy.recv() == b"ping"
    lower = await s.detach()
    await proxy.send(b"after")
    assert await lower.recv() == b"after"


@pytest.mark.parametrize(
    ("host", "request_address"),
    [
        ("192.0.2.1", b"\x01\xc0\x00\x02\x01"),
        ("2001:db8::1", b"\x04" + bytes.fromhex("20010db8000000000000000000000001")),
        ("[2001:db8::1]", b"\x04" + bytes.fromhex("20010db8000000000000000000000001")),
        ("bücher.example", b"\x03\x15xn--bcher-kva.example"),
    ],
)
async def test_address_types(host: str, request_address: bytes) -> None:
    _, _, seen = await handshake(socks5.connect(host, 80), Script())
    assert seen.request == b"\x05\x01\x00" + request_address + b"\x00\x50"


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        (b"\x04" + bytes(15) + b"\x01" + b"\x1f\x90", ("::1", 8080)),
        (b"\x03\x09proxy.lan" + b"\x00\x50", ("proxy.lan", 80)),
        (b"\x01\x00\x00\x00\x00\x00\x00", ("0.0.0.0", 0)),
    ],
)
async def test_bound_address_types(bound: bytes, expected: tuple[str, int]) -> None:
    s, _, _ = await handshake(socks5.connect("example.org", 80), Script(reply=b"\x05\x00\x00" + bound, then=b"x"))
    assert s.info["socks_bound"] == expected and await s.recv() == b"x"


async def test_username_password() -> None:
    spec = socks5.connect("example.org", 80, username="alice", password="s3cret")
    s, _, seen = await handshake(spec, Script(method=b"\x05\x02"))
    assert seen.greeting == b"\x05\x02\x00\x02"  # no auth and username/password offered
    assert seen.auth == b"\x01\x05alice\x06s3cret"
    assert s.info["socks_auth"] == "username"
    s, _, seen = await handshake(spec, Script(method=b"\x05\x00"))  # the proxy needs none: fine
    assert s.info["socks_auth"] == "none" and seen.auth == b""


@pytest.mark.parametrize(
    ("spec", "script", "error", "match"),
    [
        (socks5.connect("h", 1), Script(method=b"HT"), ProtocolError, "not a SOCKS5 proxy.*HTTP proxy"),
        (socks5.connect("h", 1), Script(method=b"\x04\x00"), ProtocolError, "version byte 0x04"),
        (socks5.connect("h", 1), Script(method=b"\x05\xff"), AuthenticationFailed, "may want a username"),
        (socks5.connect("h", 1), Script(method=b"\x05\x02"), ProtocolError, "method 0x02, which was not offered"),
        (socks5.connect("h", 1, username="u", password="p"), Script(method=b"\x05\xff"), AuthenticationFailed,
         "none of the offered methods"),
        (socks5.connect("h", 1, username="u", password="p"), Script(method=b"\x05\x02", auth=b"\x01\x01"),
         AuthenticationFailed, "rejected the username/password"),
        (socks5.connect("h", 1, username="u", password="p"), Script(method=b"\x05\x02", auth=b"\x05\x00"),
         ProtocolError, "version 0x05, not 0x01"),
        (socks5.connect("h", 1), Script(reply=b"\x04\x00\x00\x01"), ProtocolError, "reply has version 0x04"),
        (socks5.connect("h", 1), Script(reply=b"\x05\x00\x00\x02"), ProtocolError, "address type 0x02"),
        (socks5.connect("h", 1), Script(method=None), ProtocolError, "closed the connection during the handshake"),
        (socks5.connect("h", 1, username="u", password="p"), Script(method=b"\x05\x02", auth=None),
         ProtocolError, "closed the connection"),
        (socks5.connect("h", 1), Script(reply=None), ProtocolError, "closed the connection"),
        (socks5.connect("h", 1), Script(reply=b"\x05\x00\x00\x01\x7f\x00"), ProtocolError, "closed the connection"),
    ],
)  # fmt: skip
async def test_refusals_and_protocol_errors(
    spec: socks5.connect, script: Script, error: type[Exception], match: str
) -> None:
    exc = await refused(spec, script)
    assert isinstance(exc, error) and isinstance(exc, Broken), repr(exc)
    assert re.search(match, str(exc)), str(exc)


async def refused(spec: socks5.connect, script: Script) -> StackError:
    """Attach ``spec`` against the scripted proxy, which then ends its side; the error raised."""
    a, b = memory_pair()

    async def proxy() -> None:
        with contextlib.suppress(StackError):
            await scripted_proxy(b, script, Seen())
            await b.done()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy)
            try:
                await spec.attach(a, deadline=after(5))
            except StackError as exc:
                return exc
            finally:
                await a.aclose()  # what a Stack does when an attach fails
    raise AssertionError("the attach succeeded")


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 6, 7, 8, 9])
async def test_reply_codes(code: int) -> None:
    exc = await refused(socks5.connect("example.org", 443), Script(reply=bytes([5, code, 0]) + BOUND4))
    assert isinstance(exc, ReplyError) and isinstance(exc, SOCKSError) and isinstance(exc, Broken)
    assert exc.code == code and exc.reply == socks5.REPLIES.get(code, "unassigned reply 0x09")
    assert f"example.org:443: {exc.reply} (reply {code})" in str(exc)


async def test_silent_proxy_times_out() -> None:
    a, _b = memory_pair()
    with trio.fail_after(10), pytest.raises(Timeout, match=r"SOCKS5 handshake .* timed out"):
        await socks5.connect("example.org", 443, handshake_timeout=0.05).attach(a)
    with trio.fail_after(10), pytest.raises(Timeout):
        await socks5.connect("example.org", 443).attach(a, deadline=after(0.05))


def test_spec_checks_its_input() -> None:
    for kwargs in (
        {"host": "h", "port": 70000},
        {"host": "x" * 256, "port": 1},
        {"host": "", "port": 1},
        {"host": "h", "port": 1, "username": "u"},
        {"host": "h", "port": 1, "password": "p"},
        {"host": "h", "port": 1, "username": "", "password": "p"},
        {"host": "h", "port": 1, "username": "u", "password": "p" * 256},
        {"host": "h", "port": 1, "handshake_timeout": 0},
    ):
        with pytest.raises(ValueError):
            socks5.connect(**kwargs)  # type: ignore[arg-type]
    assert socks5.connect("2001:db8::1", 443).target == "[2001:db8::1]:443"


# --------------------------------------------------------------------------------------------------
# the conformance kit: the client layer against the scripted proxy, which then relays as the target


async def attach_pair(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
    out: list[ByteStream] = []

    async def client() -> None:
        out.append(await socks5.connect("target.example", 443).attach(a, deadline=after(5)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await scripted_proxy(b, Script(), Seen())
    return out[0], PassThrough(b)


@pytest.mark.parametrize("bottom", ["memory", "chaos"])
async def test_conformance_bytestream(bottom: str) -> None:
    async def make() -> tuple[ByteStream, ByteStream]:
        a, b = chaos_pair(capacity=4096) if bottom == "chaos" else memory_pair(capacity=4096)
        s, t = await attach_pair(a, b)
        assert isinstance(s, ByteStream) and isinstance(t, ByteStream)
        return s, t

    await check_bytestream(make)


async def test_conformance_detach() -> None:
    async def make() -> tuple[ByteStream, ByteStream]:
        return chaos_pair(capacity=4096)

    await check_detach(make, attach_pair)


async def test_handshake_in_one_byte_pieces() -> None:
    a, b = memory_pair()
    slow = chaos(a, ChaosSchedule((1,), (0.0,)))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_proxy, b, Script(method=b"\x05\x02", then=b"tail"), Seen())
            spec = socks5.connect("example.org", 443, username="u", password="p")
            s = await spec.attach(slow, deadline=after(5))
    assert await s.recv_exactly(4) == b"tail"


# --------------------------------------------------------------------------------------------------
# interop: a local HTTP server reached through dante and through ssh -D


PAGE = b"through the SOCKS5 proxy: " + bytes(range(256)) * 64


@asynccontextmanager
async def http_target() -> AsyncIterator[int]:
    """A trio HTTP/1.1 server on 127.0.0.1 answering PAGE (and the peer it saw, on /peer)."""

    async def app(request: http.Request) -> None:
        body = PAGE if request.path == "/" else repr(request.info.get("peer")).encode()
        await request.respond(200, [("content-type", "application/octet-stream")], body)

    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
        yield port
        nursery.cancel_scope.cancel()


async def get_through(proxy_port: int, host: str, port: int, path: str = "/", **auth: str) -> tuple[int, bytes]:
    spec = socks5.connect(host, port, **auth)
    conn = await Stack(tcp.connect("127.0.0.1", proxy_port), spec, http.client()).connect(deadline=after(15))
    async with conn:
        assert conn.info["socks_proxy"][1] == proxy_port
        response = await conn.request("GET", path, deadline=after(15))
        return response.status, await response.read()


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


DANTE_CONFIG = """
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: {method}
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks block {{ from: 0.0.0.0/0 to: 127.0.0.1/32 port = {blocked} }}
socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }}
"""


@asynccontextmanager
async def danted(tmp_path: Path, method: str = "none", blocked: int = 9) -> AsyncIterator[tuple[int, Child]]:
    """Dante in the foreground on 127.0.0.1 (one process); yields its port. ``method``: the
    socksmethod (``none`` or ``username``); connections to ``blocked`` are refused by a rule."""
    program = need("danted")
    need_root("dante runs as root here (its username method checks system users)")
    port = free_port()
    conf = tmp_path / "danted.conf"
    conf.write_text(DANTE_CONFIG.format(port=port, method=method, blocked=blocked))
    cmd = [program, "-f", str(conf), "-p", str(tmp_path / "danted.pid"), "-N", "1"]
    async with spawn(cmd, stop=signal.SIGTERM) as child:
        await wait_port(port)
        yield port, child


@asynccontextmanager
async def throwaway_user() -> AsyncIterator[tuple[str, str]]:
    """A system user with a random password (no home, no shell), removed afterwards."""
    need_root("creating a throwaway system user for dante's username method")
    name = "tssocks" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    with trio.fail_after(30):
        await trio.run_process(["useradd", "-M", "-s", "/usr/sbin/nologin", name])
        try:
            await trio.run_process(["chpasswd"], stdin=f"{name}:{password}\n".encode())
        except BaseException:
            await trio.run_process(["userdel", name], check=False)
            raise
    try:
        yield name, password
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await trio.run_process(["userdel", name], check=False)


@pytest.mark.interop
async def test_dante_no_auth(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with http_target() as port, danted(tmp_path, blocked=free_port()) as (proxy, _):
            assert await get_through(proxy, "127.0.0.1", port) == (200, PAGE)
            status, peer = await get_through(proxy, "localhost", port, "/peer")  # a name dante resolves
            assert status == 200 and peer.startswith(b"('127.0.0.1'")
            closed = free_port()
            with pytest.raises(ReplyError) as refused:
                await get_through(proxy, "127.0.0.1", closed)
            assert refused.value.code in (4, 5), refused.value  # nothing listens there
            # credentials offered to a proxy that needs none: it picks "no authentication"
            assert await get_through(proxy, "127.0.0.1", port, username="u", password="p") == (200, PAGE)


@pytest.mark.interop
async def test_dante_tls_checks_the_target_name(tmp_path: Path) -> None:
    """TLS over SOCKS5 checks the *target's* certificate: ``info["host"]`` names it, not the proxy."""
    ca = certs.CA.new("socks5 test CA")

    async def app(request: http.Request) -> None:
        await request.respond(200, [], PAGE)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, danted(tmp_path) as (proxy, _):
            target = Stack(tcp.listen("127.0.0.1", 0), tls.server(ca.issue("localhost")), http.server(app))
            (_, port), *_ = await nursery.start(target.serve)
            client = Stack(tcp.connect("127.0.0.1", proxy), socks5.connect("localhost", port), tls.client(ca=ca),
                           http.client())  # fmt: skip
            async with await client.connect(deadline=after(15)) as conn:
                assert conn.info["server_name"] == "localhost" and conn.info["socks_proxy"] == ("127.0.0.1", proxy)
                response = await conn.request("GET", "/", deadline=after(15))
                assert response.status == 200 and await response.read() == PAGE
            wrong = Stack(tcp.connect("127.0.0.1", proxy), socks5.connect("127.0.0.1", port), tls.client(ca=ca))
            with pytest.raises(tls.HandshakeError):  # the certificate is for localhost, not 127.0.0.1
                await wrong.connect(deadline=after(15))
            nursery.cancel_scope.cancel()


@pytest.mark.interop
async def test_dante_ruleset_refusal(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with http_target() as port, danted(tmp_path, blocked=port) as (proxy, _):
            with pytest.raises(ReplyError) as blocked:
                await get_through(proxy, "127.0.0.1", port)
            assert blocked.value.code == 2 and blocked.value.reply == "connection not allowed by ruleset"


@pytest.mark.interop
async def test_dante_username_password(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with (
            throwaway_user() as (user, password),
            http_target() as port,
            danted(tmp_path, method="username") as (proxy, _),
        ):
            assert await get_through(proxy, "127.0.0.1", port, username=user, password=password) == (200, PAGE)
            with pytest.raises(AuthenticationFailed, match="rejected the username/password"):
                await get_through(proxy, "127.0.0.1", port, username=user, password=password + "x")
            with pytest.raises(AuthenticationFailed, match="may want a username"):
                await get_through(proxy, "127.0.0.1", port)


SSHD_CONFIG = """
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
PermitRootLogin prohibit-password
"""


@asynccontextmanager
async def ssh_socks(tmp_path: Path) -> AsyncIterator[int]:
    """A private sshd on a free port and ``ssh -N -D`` to it; yields the SOCKS port."""
    sshd, ssh, keygen = need("sshd"), need("ssh"), need("ssh-keygen")
    need_root("sshd needs its privilege separation directory and to switch users")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with trio.fail_after(30):
        for name in ("host_key", "id"):
            await trio.run_process([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
                                   stdout=subprocess.DEVNULL)  # fmt: skip
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    (tmp_path / "id").chmod(0o600)
    port, socks = free_port(), free_port()
    (tmp_path / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=tmp_path))
    async with spawn([sshd, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stop=signal.SIGTERM):
        await wait_port(port)
        cmd = [ssh, "-N", "-D", f"127.0.0.1:{socks}", "-p", str(port), "-i", str(tmp_path / "id"),
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "ExitOnForwardFailure=yes", f"{getpass.getuser()}@127.0.0.1"]  # fmt: skip
        async with spawn(cmd, stop=signal.SIGTERM):
            await wait_port(socks, 30)
            yield socks


@pytest.mark.interop
async def test_ssh_dynamic_forwarding(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with http_target() as port, ssh_socks(tmp_path) as proxy:
            assert await get_through(proxy, "127.0.0.1", port) == (200, PAGE)
            assert (await get_through(proxy, "localhost", port, "/peer"))[0] == 200
            # Nothing listens there: OpenSSH closes the client's connection without a failure reply
            # (dante answers one), so this is a ProtocolError that says so; either way, Broken.
            with pytest.raises(Broken, match=r"closed the connection during the handshake|reply"):
                await get_through(proxy, "127.0.0.1", free_port())
