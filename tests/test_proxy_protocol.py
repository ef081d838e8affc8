"""PROXY protocol v1/v2 (``layers/proxy_protocol.py``): the parser's rules, the layer over memory,
chaos and TCP, the conformance kit, and interop with HAProxy both ways (HAProxy ``send-proxy`` and
``send-proxy-v2`` in front of ``python -m stack serve --proxy-protocol``, driven by curl from a
distinct address; HAProxy ``accept-proxy`` parsing the headers our client writes) and our own
``proxy --send-proxy[-v2]`` in front of ``serve --proxy-protocol``.

HAProxy and curl are needed for the interop tests: missing, they skip on a developer's machine and
fail in CI (``CI`` set). Every process started here is stopped at the end of its test.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _peers import need
from hypothesis import given
from hypothesis import strategies as st
from test_cli_get import Child, free_port, spawn, wait_port, write_pki

from layers import http, tcp
from layers.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    Header,
    client,
    crc32c,
    encode_v1,
    encode_v2,
    parse,
    server,
)
from stack import Broken, ByteStream, MessageTooLarge, ProtocolError, Stack, Stream, Timeout, after
from stack.testing import ChaosSchedule, chaos, chaos_pair, check_bytestream, check_detach, memory_pair

PY = sys.executable
SRC4, DST4 = ("192.0.2.10", 51000), ("198.51.100.20", 443)
SRC6, DST6 = ("2001:db8::1", 40000), ("2001:db8::2", 8443)


def v2(body: bytes, ver_cmd: int = 0x21, fam: int = 0x11) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


INET_BLOCK = bytes([192, 0, 2, 10, 198, 51, 100, 20]) + (51000).to_bytes(2, "big") + (443).to_bytes(2, "big")


# --------------------------------------------------------------------------------------------------
# the parser: v1


def test_v1_tcp4_tcp6_unknown() -> None:
    data = b"PROXY TCP4 192.0.2.10 198.51.100.20 51000 443\r\nGET /"
    header, size = parse(data) or (None, 0)
    assert header == Header(1, "PROXY", "inet", "stream", SRC4, DST4) and data[size:] == b"GET /"
    header, size = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n") or (None, 0)
    assert header is not None and (header.source, header.destination, header.family) == (SRC6, DST6, "inet6")
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", b"PROXY UNKNOWN \x01?\r\n"):
        header, size = parse(line + b"x") or (None, 0)
        assert header == Header(1, "PROXY", "unspec", "unspec") and size == len(line)
        assert "peer" not in header.info()  # UNKNOWN: the real endpoints stay


def test_v1_every_prefix_needs_more_and_nothing_past_the_header_is_read() -> None:
    line = encode_v1(SRC4, DST4)
    for n in range(len(line)):
        assert parse(line[:n]) is None, n
    assert parse(line + b"\r\n\r\n")[1] == len(line)  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.04 1.2.3.4 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "over 65535"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", "not a number"),
        (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "line feed without carriage return"),
        (b"PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n", "not printable"),
        (b"PROXY \xc3\xa9 1\r\n", "not printable"),
        (b"PROXY\r\n", "no PROXY protocol"),
        (b"PROXY " + b"x" * 101, "no CRLF within 107 bytes"),
    ],
)
def test_v1_rules(data: bytes, rule: str) -> None:
    with pytest.raises(ProtocolError, match=rule):
        parse(data)


def test_v1_bound_is_107_bytes() -> None:
    longest = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(longest) == 104 and parse(longest) is not None
    assert parse(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n") is not None  # 107 bytes: allowed
    with pytest.raises(ProtocolError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")


def test_not_a_header_is_refused_from_the_first_byte() -> None:
    for start in (b"G", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\r\n\r\nx", b"PROXX"):
        with pytest.raises(ProtocolError, match="no PROXY protocol"):
            parse(start)
    assert parse(b"") is None and parse(b"PRO") is None and parse(b"\r\n\r\n\x00") is None


def test_versions_option() -> None:
    with pytest.raises(ProtocolError, match="v1 header, but only v2"):
        parse(encode_v1(SRC4, DST4), versions=(2,))
    with pytest.raises(ProtocolError, match="v2 header, but only v1"):
        parse(encode_v2(SRC4, DST4), versions=(1,))
    assert parse(encode_v2(SRC4, DST4), versions=(2,)) is not None
    assert server(versions=2).versions == (2,)  # type: ignore[arg-type]
    for bad in ((), (3,), (1, 4)):
        with pytest.raises(ValueError):
            server(versions=bad)
    with pytest.raises(ValueError):
        server(max_header=8)
    with pytest.raises(ValueError):
        server(header_timeout=0)


# --------------------------------------------------------------------------------------------------
# the parser: v2


def test_v2_inet_inet6_unix_unspec_local() -> None:
    header, size = parse(v2(INET_BLOCK) + b"rest") or (None, 0)
    assert header == Header(2, "PROXY", "inet", "stream", SRC4, DST4) and size == 28
    header, _ = parse(encode_v2(SRC6, DST6)) or (None, 0)
    assert header is not None and (header.family, header.source, header.destination) == ("inet6", SRC6, DST6)
    header, _ = parse(encode_v2("/run/client.sock", "\0abstract")) or (None, 0)
    assert header is not None and (header.family, header.source, header.destination) == (
        "unix", "/run/client.sock", "\0abstract"
    )  # fmt: skip
    header, size = parse(encode_v2(None, None)) or (None, 0)
    assert header == Header(2, "PROXY", "unspec", "unspec") and size == 16
    assert "peer" not in header.info()
    # LOCAL: the address block is discarded, whatever it holds
    local = v2(INET_BLOCK + b"\xff\xff", ver_cmd=0x20)
    header, size = parse(local) or (None, 0)
    assert header == Header(2, "LOCAL", "inet", "stream") and size == len(local)
    assert header.info() == {"proxy_protocol": 2, "proxy_command": "LOCAL"}
    assert parse(encode_v2(SRC4, DST4, local=True))[0].command == "LOCAL"  # type: ignore[index]


def test_v2_mixed_families_are_sent_ipv4_mapped() -> None:
    header, _ = parse(encode_v2(("192.0.2.1", 1), ("2001:db8::2", 2))) or (None, 0)
    assert header is not None and header.source == ("::ffff:c000:201", 1) and header.family == "inet6"
    assert encode_v1(("192.0.2.1", 1), ("2001:db8::2", 2)) == b"PROXY TCP6 ::ffff:c000:201 2001:db8::2 1 2\r\n"
    assert encode_v1("/a.sock", "/b.sock") == b"PROXY UNKNOWN\r\n"


def test_v2_every_prefix_needs_more() -> None:
    data = encode_v2(SRC6, DST6, tlvs=[(PP2_TYPE_ALPN, b"h2")], crc32c_tlv=True)
    for n in range(len(data)):
        assert parse(data[:n]) is None, n
    assert parse(data + b"x")[1] == len(data)  # type: ignore[index]


def test_v2_tlvs_in_info() -> None:
    ssl = bytes([0x07]) + (0).to_bytes(4, "big") + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client cn")
    ssl += tlv(0x23, b"TLS_AES_128_GCM_SHA256") + tlv(0x99, b"unknown sub-type")
    tlvs = [
        (PP2_TYPE_ALPN, b"h2"),
        (PP2_TYPE_AUTHORITY, b"example.org"),
        (PP2_TYPE_NOOP, b"\0" * 5),
        (PP2_TYPE_UNIQUE_ID, b"id-1234"),
        (PP2_TYPE_SSL, ssl),
        (PP2_TYPE_NETNS, b"blue"),
        (0xE0, b"custom"),
    ]
    header, _ = parse(encode_v2(SRC4, DST4, tlvs=tlvs, crc32c_tlv=True)) or (None, 0)
    assert header is not None
    info = header.info()
    assert info["peer"] == SRC4 and info["local"] == DST4 and info["proxy_transport"] == "stream"
    assert (info["proxy_alpn"], info["proxy_authority"], info["proxy_unique_id"]) == ("h2", "example.org", b"id-1234")
    assert info["proxy_tls"] == {
        "client": 7, "verify": 0, "version": "TLSv1.3", "cn": "client cn", "cipher": "TLS_AES_128_GCM_SHA256"
    }  # fmt: skip
    assert info["proxy_netns"] == "blue"
    kinds = [k for k, _ in info["proxy_tlvs"]]
    assert PP2_TYPE_NOOP not in kinds and kinds[-2:] == [0xE0, 0x03]  # the CRC32C TLV is kept raw


def test_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    good = bytearray(encode_v2(SRC4, DST4, tlvs=[(PP2_TYPE_ALPN, b"http/1.1")], crc32c_tlv=True))
    assert parse(good) is not None
    good[20] ^= 1  # an address byte changed in transit
    with pytest.raises(ProtocolError, match="CRC32C"):
        parse(good)
    twice = v2(INET_BLOCK + tlv(0x03, b"\0\0\0\0") + tlv(0x03, b"\0\0\0\0"))
    with pytest.raises(ProtocolError, match="appear once"):
        parse(twice)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (v2(INET_BLOCK, ver_cmd=0x11), "version 1"),
        (v2(INET_BLOCK, ver_cmd=0x31), "version 3"),
        (v2(INET_BLOCK, ver_cmd=0x22), "command 0x2"),
        (v2(INET_BLOCK, fam=0x41), "family/transport byte 0x41"),
        (v2(INET_BLOCK, fam=0x13), "family/transport byte 0x13"),
        (v2(INET_BLOCK[:11]), "11 bytes of addresses, too few for inet"),
        (v2(INET_BLOCK, fam=0x21), "12 bytes of addresses, too few for inet6"),
        (v2(INET_BLOCK + b"\x01\x00"), "2 stray bytes"),
        (v2(INET_BLOCK + b"\x01\x00\x05ab"), "announces 5 bytes, only 2"),
        (v2(INET_BLOCK + tlv(PP2_TYPE_SSL, b"\x01\0\0")), "SSL TLV of 3 bytes"),
        (v2(INET_BLOCK + tlv(PP2_TYPE_SSL, b"\x01\0\0\0\0" + b"\x21\x00\x09ab")), "runs past"),
        (v2(INET_BLOCK + tlv(PP2_TYPE_SSL, b"\x01\0\0\0\0\x21")), "truncated sub-TLV"),
        (v2(INET_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"x" * 129)), "unique ID of 129 bytes"),
        (v2(INET_BLOCK + tlv(0x03, b"\0\0\0")), "4 bytes"),
    ],
)
def test_v2_rules(data: bytes, rule: str) -> None:
    with pytest.raises(ProtocolError, match=rule):
        parse(data)


def test_v2_size_bound_before_the_body_arrives() -> None:
    start = V2_SIGNATURE + b"\x21\x11" + (5000).to_bytes(2, "big")  # only the 16 fixed bytes
    with pytest.raises(MessageTooLarge) as info:
        parse(start)
    assert info.value.limit == 4096 and info.value.size == 5016
    assert parse(start, max_header=5016) is None  # allowed with the knob: waits for the rest
    assert parse(start + b"\0" * 12 + tlv(0xE1, b"z" * 4985), max_header=5016) is not None


@given(
    st.sampled_from([4, 6]),
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**128 - 1),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(st.tuples(st.integers(0xE0, 0xEF), st.binary(max_size=40)), max_size=4),
    st.booleans(),
)
def test_round_trip_any_addresses(
    version: int, a: int, b: int, sport: int, dport: int, tlvs: list[tuple[int, bytes]], crc: bool
) -> None:
    import ipaddress

    if version == 4:
        src, dst = str(ipaddress.IPv4Address(a % 2**32)), str(ipaddress.IPv4Address(b % 2**32))
    else:
        src, dst = str(ipaddress.IPv6Address(a)), str(ipaddress.IPv6Address(b))
    for data in (
        encode_v1((src, sport), (dst, dport)),
        encode_v2((src, sport), (dst, dport), tlvs=tlvs, crc32c_tlv=crc),
    ):
        header, size = parse(data + b"after") or (None, 0)
        assert header is not None and size == len(data)
        assert (header.source, header.destination) == ((src, sport), (dst, dport))
        if header.version == 2:
            assert list(header.tlvs[: len(tlvs)]) == tlvs


def test_client_spec_checks_its_input() -> None:
    for kwargs in (
        {"source": ("not an ip", 1), "destination": DST4},
        {"source": ("1.2.3.4", 70000), "destination": DST4},
        {"source": SRC4, "destination": DST4, "version": 3},
        {"source": SRC4, "destination": DST4, "version": 1, "local": True},
        {"source": SRC4, "destination": DST4, "version": 1, "tlvs": ((1, b"h2"),)},
        {"source": "/" + "x" * 200, "destination": "/y"},
        {"source": SRC4, "destination": DST4, "tlvs": ((256, b""),)},
    ):
        with pytest.raises(ValueError):
            client(**kwargs)  # type: ignore[arg-type]
    assert client.from_info({"peer": SRC4, "local": DST4}, 1).header() == encode_v1(SRC4, DST4)
    assert client.from_info({"peer": "/tmp/a.sock", "local": "/tmp/b.sock"}).header() == encode_v2(None, None)


# --------------------------------------------------------------------------------------------------
# the layer


async def test_attach_keeps_read_ahead_and_shows_the_original_addresses() -> None:
    a, b = memory_pair()
    await a.send(encode_v2(SRC6, DST6, tlvs=[(PP2_TYPE_AUTHORITY, b"example.org")]) + b"hello, world")
    s = await server().attach(b, deadline=after(5))
    assert s.info["peer"] == SRC6 and s.info["local"] == DST6 and s.info["proxy_via"] == "a"
    assert s.info["transport"] == "memory" and s.info["proxy_authority"] == "example.org"
    assert s.header is not None and s.header.version == 2
    assert await s.recv_exactly(5) == b"hello"
    lower = await s.detach()
    assert lower is b and await b.recv() == b", world"


async def test_header_one_byte_at_a_time() -> None:
    a, b = memory_pair()
    slow = chaos(b, ChaosSchedule((1,), (0.0,)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, encode_v1(SRC4, DST4) + b"payload")
        s = await server().attach(slow, deadline=after(5))
    assert s.info["peer"] == SRC4 and s.info["proxy_protocol"] == 1
    assert await s.recv_exactly(7) == b"payload"


async def test_direct_client_refused_at_once_and_nothing_lost() -> None:
    a, b = memory_pair()
    await a.send(b"GET / HTTP/1.1\r\n")  # the connection stays open: no waiting for more bytes
    with trio.fail_after(5), pytest.raises(ProtocolError, match="no PROXY protocol v1 or v2 header"):
        await server().attach(b)
    assert await b.recv() == b"GET / HTTP/1.1\r\n"


async def test_silent_peer_times_out_and_partial_header_is_kept() -> None:
    a, b = memory_pair()
    await a.send(b"PROXY TCP4 1.2")
    with trio.fail_after(5), pytest.raises(Timeout, match="no complete PROXY protocol header"):
        await server(header_timeout=0.05).attach(b)
    assert await b.recv() == b"PROXY TCP4 1.2"
    with trio.fail_after(5), pytest.raises(Timeout):  # the attach deadline applies too
        await server().attach(b, deadline=after(0.05))


async def test_end_inside_the_header_is_a_protocol_error() -> None:
    for sent in (b"", b"\r\n\r\n\x00\r\nQU"):
        a, b = memory_pair()
        await a.send(sent)
        await a.done()
        with trio.fail_after(5), pytest.raises(ProtocolError, match="connection ended"):
            await server().attach(b)


async def test_oversized_v2_refused_before_reading_it() -> None:
    a, b = memory_pair()
    await a.send(V2_SIGNATURE + b"\x21\x11\xff\xff")
    with trio.fail_after(5), pytest.raises(MessageTooLarge):
        await server().attach(b)


async def test_local_keeps_the_real_endpoints() -> None:
    a, b = memory_pair()
    await a.send(encode_v2(None, None, local=True) + b"x")
    s = await server().attach(b)
    assert s.info["peer"] == "a" and s.info["proxy_command"] == "LOCAL" and await s.recv() == b"x"


async def test_over_tcp_in_a_stack() -> None:
    seen: list[object] = []

    async def handler(stream: ByteStream) -> None:
        seen.append((stream.info["peer"], stream.info["local"], stream.info["proxy_via"]))
        while data := await stream.recv():
            await stream.send(data.upper())

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listen = Stack(tcp.listen("127.0.0.1", 0), server(versions=(2,)))
            (host, port), *_ = await nursery.start(listen.serve, handler)
            for version in (1, 2):
                spec = client(SRC4, DST4, version=version)
                conn = await Stack(tcp.connect(host, port), spec).connect(deadline=after(5))
                got = b""
                async with conn:
                    try:
                        await conn.send(b"abc")
                        await conn.done()
                        while data := await conn.recv():
                            got += data
                    except Broken:  # refused: the server may have closed (even reset) already
                        assert version == 1
                assert got == (b"ABC" if version == 2 else b"")  # v1 refused by versions=(2,)
            nursery.cancel_scope.cancel()
    assert len(seen) == 1 and seen[0][:2] == (SRC4, DST4) and seen[0][2][0] == "127.0.0.1"  # type: ignore[index]


# --------------------------------------------------------------------------------------------------
# the conformance kit


def pair_maker(bottom: str, version: int) -> object:
    async def make() -> tuple[ByteStream, ByteStream]:
        a, b = chaos_pair(capacity=4096) if bottom == "chaos" else memory_pair(capacity=4096)
        return await attach_both(a, b, version)

    return make


async def attach_both(a: ByteStream, b: ByteStream, version: int) -> tuple[ByteStream, ByteStream]:
    out: dict[str, ByteStream] = {}

    async def one(name: str, spec: client | server, lower: ByteStream) -> None:
        out[name] = await spec.attach(lower, deadline=after(5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a", client(SRC4, DST4, version=version), a)
        nursery.start_soon(one, "b", server(), b)
    return out["a"], out["b"]


@pytest.mark.parametrize("bottom", ["memory", "chaos"])
@pytest.mark.parametrize("version", [1, 2])
async def test_conformance_bytestream(bottom: str, version: int) -> None:
    await check_bytestream(pair_maker(bottom, version))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [1, 2])
async def test_conformance_detach(version: int) -> None:
    async def make() -> tuple[ByteStream, ByteStream]:
        return chaos_pair(capacity=4096)

    async def attach(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
        return await attach_both(a, b, version)

    await check_detach(make, attach)


# --------------------------------------------------------------------------------------------------
# interop: HAProxy, curl, serve --proxy-protocol, proxy --send-proxy


HAPROXY_GLOBAL = """
global
    maxconn 100
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


@asynccontextmanager
async def haproxy(config: str, tmp_path: Path, ports: list[int]) -> AsyncIterator[Child]:
    """``haproxy -db -f CONFIG`` in the foreground until the block ends, once ``ports`` accept."""
    path = tmp_path / "haproxy.cfg"
    path.write_text(HAPROXY_GLOBAL + config)
    async with spawn([need("haproxy"), "-db", "-f", str(path)], stop=signal.SIGTERM) as child:
        for port in ports:
            await wait_port(port)
        yield child


@asynccontextmanager
async def serve_pp(*tls: str) -> AsyncIterator[tuple[int, Child]]:
    """``python -m stack serve --proxy-protocol`` (``--no-tls`` unless ``tls`` gives ``--cert``
    and ``--key``) with the access log on stderr."""
    cmd = [PY, "-m", "stack", "serve", *(tls or ["--no-tls"]), "--proxy-protocol", "--port", "0"]
    async with spawn(cmd, ready=r"serving on https?://\S+/", stop=signal.SIGTERM) as child:
        m = await child.wait_for(r"serving on https?://127\.0\.0\.1:(\d+)/")
        yield int(m.group(1)), child


async def curl_from(ip: str, url: str, *extra: str) -> tuple[str, int]:
    """GET ``url`` with curl bound to ``ip``: the page and the local port curl used."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [need("curl"), "-sS", "--interface", ip, "-w", "\n%{local_port}", *extra, url],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    page, _, port = result.stdout.decode().rpartition("\n")
    return page, int(port)


@pytest.mark.interop
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
async def test_haproxy_in_front_of_serve(send: str, tmp_path: Path) -> None:
    need("curl")
    front = free_port()
    with trio.fail_after(90):
        async with serve_pp() as (port, backend):
            # The health check goes over its own connection with a LOCAL (v2) header: its access
            # line shows HAProxy's own address, the relayed requests the client's. Its 404 counts
            # as healthy: otherwise HAProxy marks the server down after a few checks and a client
            # arriving later on a slow host gets an empty reply.
            check = "check inter 300ms check-send-proxy" if send == "send-proxy-v2" else ""
            config = f"""
frontend fe
    mode tcp
    bind 127.0.0.1:{front}
    default_backend be
backend be
    mode tcp
    option httpchk GET /health-check
    http-check expect status 404
    server app 127.0.0.1:{port} {send} {check}
"""
            async with haproxy(config, tmp_path, [front]):
                page, local_port = await curl_from("127.0.0.2", f"http://127.0.0.1:{front}/")
                assert f"<th>Peer</th><td>127.0.0.2:{local_port}</td>" in page
                line = await backend.wait_for(r'stack\.access INFO (\S+) "GET / HTTP/1\.1" 200')
                assert line.group(1) == f"127.0.0.2:{local_port}"
                if check:
                    hc = await backend.wait_for(r'stack\.access INFO (\S+) "GET /health-check HTTP/1\.\d" 404')
                    assert hc.group(1).startswith("127.0.0.1:")


@pytest.mark.interop
async def test_haproxy_in_front_of_tls_serve(tmp_path: Path) -> None:
    """The PROXY header comes before the TLS handshake; HTTP/2 over it shows the client too."""
    need("curl")
    certfile, keyfile, cafile = write_pki(tmp_path)
    front = free_port()
    with trio.fail_after(90):
        async with serve_pp("--cert", certfile, "--key", keyfile) as (port, backend):
            config = f"""
frontend fe
    mode tcp
    bind 127.0.0.1:{front}
    default_backend be
backend be
    mode tcp
    server app 127.0.0.1:{port} send-proxy-v2
"""
            async with haproxy(config, tmp_path, [front]):
                url = f"https://localhost:{front}/"
                page, local_port = await curl_from(
                    "127.0.0.2", url, "--cacert", cafile, "--resolve", f"localhost:{front}:127.0.0.1", "--http2"
                )
                assert f"<th>Peer</th><td>127.0.0.2:{local_port}</td>" in page and "<td>h2</td>" in page
                await backend.wait_for(rf'stack\.access INFO 127\.0\.0\.2:{local_port} "GET / HTTP/2" 200')


@pytest.mark.interop
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
async def test_haproxy_accept_proxy_parses_our_headers(
    version: int, src: tuple[str, int], dst: tuple[str, int], tmp_path: Path
) -> None:
    front = free_port()
    tlvs = ((PP2_TYPE_AUTHORITY, b"app.example"),) if version == 2 else ()
    fetch = "%[src] %[src_port] %[dst] %[dst_port]" + (" %[fc_pp_authority]" if version == 2 else "")
    config = f"""
frontend fe
    mode http
    bind 127.0.0.1:{front} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{fetch}"
"""
    with trio.fail_after(60):
        async with haproxy(config, tmp_path, []):
            await wait_port(front)  # a bare probe connection: haproxy drops it (no header)
            spec = client(src, dst, version=version, tlvs=tlvs, crc32c=version == 2)
            conn = await Stack(tcp.connect("127.0.0.1", front), spec, http.client()).connect(deadline=after(10))
            async with conn:
                response = await conn.request("GET", "/")
                body = (await response.read()).decode()
    expected = f"{src[0]} {src[1]} {dst[0]} {dst[1]}" + (" app.example" if version == 2 else "")
    assert response.status == 200 and body == expected


@pytest.mark.interop
@pytest.mark.parametrize("flag", ["--send-proxy", "--send-proxy-v2"])
async def test_our_proxy_sends_the_client_address_to_serve(flag: str) -> None:
    need("curl")
    with trio.fail_after(90):
        async with serve_pp() as (port, backend):
            cmd = [PY, "-m", "stack", "proxy", "--no-tls", "--listen", "127.0.0.1:0",
                   "--upstream", f"http://127.0.0.1:{port}", flag]  # fmt: skip
            async with spawn(cmd, ready=r"serving on http://\S+/", stop=signal.SIGTERM) as front:
                m = await front.wait_for(r"serving on (http://127\.0\.0\.1:\d+)/")
                for _ in range(2):  # a second request: a new backend connection, the right header
                    page, local_port = await curl_from("127.0.0.2", m.group(1) + "/")
                    assert f"<th>Peer</th><td>127.0.0.2:{local_port}</td>" in page
                    await backend.wait_for(rf'stack\.access INFO 127\.0\.0\.2:{local_port} "GET / HTTP/1\.1" 200')
