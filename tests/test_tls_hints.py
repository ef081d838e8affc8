"""What the TLS layer tells a person who got it wrong (issue 17, item 7).

Plain HTTP sent to a TLS port is answered ``400 Bad Request`` with a hint to use https://, as
nginx does, then the connection closes (before, the client read an empty reply). A certificate
error names the spec parameter that fixes it (``ca``, ``cert``, ``client_ca``) in a message a
library user can act on, and carries it as ``HandshakeError.parameter`` with the advice apart
(``problem``), so the command line can say ``--cacert`` instead.
"""

from __future__ import annotations

import functools

import pytest
import trio
from test_tls_support import attach_both, bounded, certs, client, server

from layers import tcp, tls
from stack import ByteStream, Stack, after
from stack.testing import memory_pair

__all__ = ["bounded"]  # the autouse fixture that bounds every test's time


async def _read_all(stream: ByteStream, limit: float = 5.0) -> bytes:
    out = bytearray()
    with trio.fail_after(limit):
        while chunk := await stream.recv():
            out += chunk
    return bytes(out)


async def test_plain_http_to_a_tls_port_gets_400_with_a_hint() -> None:
    """Over loopback TCP through Stack.serve, as a user's curl http://host:8443/ would."""
    handled: list[object] = []

    async def handler(stream: object) -> None:
        handled.append(stream)

    async with trio.open_nursery() as nursery:
        stack = Stack(tcp.listen("127.0.0.1", 0), server())
        [address] = await nursery.start(functools.partial(stack.serve, handler))
        for request in (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"post /x HTTP/1.0\r\n\r\n"):
            conn = await tcp.connect(*address).connect(deadline=after(5))
            async with conn:
                await conn.send(request)
                reply = await _read_all(conn)  # the server answers, then closes (b"" at the end)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
            assert b"Connection: close" in head
            assert f"Content-Length: {len(body)}".encode() in head
            assert b"https://" in body and b"TLS" in body
        # a TLS client on the same server is served as before
        conn = await Stack(tcp.connect(*address), client()).connect(deadline=after(5))
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert len(handled) == 1  # only the TLS client reached the handler


async def test_plain_http_hint_error_and_opt_out() -> None:
    for hint in (True, False):
        a, b = memory_pair()
        await a.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(tls.HandshakeError, match="does not speak TLS") as info:
            await server(plain_http_hint=hint).attach(b, deadline=after(5))
        assert info.value.reason == "not_tls"
        await b.aclose()
        reply = await _read_all(a)
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") if hint else reply == b"", reply


async def test_a_first_byte_that_is_no_letter_gets_no_http_answer() -> None:
    a, b = memory_pair()
    await a.send(b"\x05\x01\x00")  # a SOCKS5 greeting: not TLS, not HTTP
    await a.done()
    with pytest.raises(tls.HandshakeError) as info:
        await server().attach(b, deadline=after(5))
    await b.aclose()
    assert not (await _read_all(a)).startswith(b"HTTP/"), info.value


async def test_untrusted_server_certificate_names_the_parameter() -> None:
    a, b = memory_pair()
    c, _s = await attach_both(client(ca=certs().other_ca), server(), a, b)
    assert isinstance(c, tls.HandshakeError) and c.reason == "unknown_ca", c
    assert c.parameter == "ca"
    assert "tls.client(ca=" in str(c) and "pass ca=" not in str(c)
    assert "not trusted" in c.problem and "ca=" not in c.problem  # the CLI says --cacert instead
    assert str(c) == f"{c.problem}; {c.advice}"


async def test_client_certificate_errors_name_their_parameters() -> None:
    cs = certs()
    # a server that requires a client certificate, a client without one: "cert"
    a, b = memory_pair()
    c, s = await attach_both(client(), server(client_ca=cs.ca), a, b)
    if not isinstance(c, tls.HandshakeError):  # TLS 1.3: the client learns on its first receive
        with pytest.raises(tls.HandshakeError) as info:
            await c.recv(deadline=after(5))
        c = info.value
    assert c.reason == "certificate_required" and c.parameter == "cert", c
    assert "tls.client(cert=" in str(c)
    # a client certificate from a CA the server does not trust: the server's error names client_ca
    a, b = memory_pair()
    c, s = await attach_both(client(cert=cs.other_ca.issue("alice", client=True)), server(client_ca=cs.ca), a, b)
    assert isinstance(s, tls.HandshakeError) and s.reason == "unknown_ca" and s.parameter == "client_ca", s
    assert "client_ca=" in str(s) and "client_ca=" not in s.problem
