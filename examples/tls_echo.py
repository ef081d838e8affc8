"""Echo over TLS: a throwaway CA, a server with two host names on one port, and its clients.

The story: we mint a private certificate authority in memory (``layers.certs``) and issue two
server certificates from it, one for ``echo.test`` and a wildcard one for ``*.example.test``.
A server listens on 127.0.0.1 (port 0: the OS picks) with the stack TCP + TLS, choosing the
certificate by the name the client asks for (SNI) and the application protocol (ALPN) by its own
preference. It echoes bytes until the client is done.

Two clients connect to the same port under different names. Each trusts only our CA, checks that
the certificate is valid for the name it asked for, prints what was agreed (TLS version, cipher,
ALPN, the names in the certificate), sends a few messages, half-closes with ``done()`` (a TLS
close_notify) and reads the echo to the end. A third client asks for a name no certificate
covers; the server has no default certificate, so it refuses with an ``unrecognized_name`` alert
and the client's :class:`layers.tls.HandshakeError` says so.

Run it: ``python examples/tls_echo.py``
"""

from __future__ import annotations

import tempfile

import trio
from cryptography import x509

from layers import tcp, tls
from layers.certs import CA
from stack import ByteStream, Stack, after

MESSAGES = [b"hello over TLS\n", b"bytes in, the same bytes out\n", b"z" * 50_000]


async def echo(stream: ByteStream) -> None:
    """The server's handler: echo until the client's close_notify, then say goodbye."""
    while data := await stream.recv(65536, deadline=after(10)):
        await stream.send(data, deadline=after(10))


def names_in(stream: tls.TLSStream) -> list[str]:
    cert = x509.load_der_x509_certificate(stream.info["peer_certificate"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


async def client(port: int, name: str, ca: CA) -> None:
    spec = tls.client(server_hostname=name, ca=ca, alpn=["http/1.1", "echo/1"])
    async with await Stack(tcp.connect("127.0.0.1", port), spec).connect(deadline=after(5)) as stream:
        info = stream.info
        agreed = f"{info['tls_version']} {info['cipher']}, ALPN {info['alpn']!r}"
        print(f"[{name}] {agreed}, certificate for {names_in(stream)}")
        expected = b"".join(MESSAGES)
        received = bytearray()
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                for msg in MESSAGES:
                    await stream.send(msg, deadline=after(5))
                await stream.done(deadline=after(5))  # close_notify: we send no more, we still read

            nursery.start_soon(send_all)
            while chunk := await stream.recv(65536, deadline=after(5)):
                received += chunk
        assert received == expected, "the echo differs from what was sent"
        print(f"[{name}] sent {len(expected)} bytes, the echo matched, then the server's close_notify")


async def main() -> None:
    ca = CA.new("tls_echo example CA")
    with tempfile.TemporaryDirectory() as tmp:
        certs = {
            "echo.test": ca.issue("echo.test").write(tmp, "echo"),
            "*.example.test": ca.issue("*.example.test").write(tmp, "wildcard"),
        }
        server = Stack(tcp.listen("127.0.0.1", 0), tls.server(certs, alpn=["echo/1", "http/1.1"]))
        async with trio.open_nursery() as nursery:
            [(host, port)] = await nursery.start(server.serve, echo)
            print(f"server listening on {host}:{port} for echo.test and *.example.test")
            await client(port, "echo.test", ca)
            await client(port, "api.example.test", ca)
            try:
                # a name no certificate covers: the server has no default, so it refuses
                await client(port, "other.test", ca)
            except tls.HandshakeError as exc:
                print(f"[other.test] refused as it should be ({exc.reason}): {exc}")
            else:
                raise AssertionError("a name without a certificate was accepted")
            nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    trio.run(main)
