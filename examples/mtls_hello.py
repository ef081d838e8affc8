"""Mutual TLS: a server that knows its clients by their certificates.

The story: we mint a private CA in memory (``layers.certs``), issue the server a ``localhost``
certificate and issue alice a client certificate (``client=True``: the clientAuth usage). The
server listens on 127.0.0.1 with ``tls.server(..., client_ca=ca)``, which requires every client to
present a certificate from that CA, and greets each client by the name in its certificate
(``info["peer_subject"]``, no DER parsing). Alice connects with ``tls.client(cert=...)`` and is
greeted. Then a client without a certificate tries: the server refuses it, and in TLS 1.3 the
client learns of that on its first receive, a :class:`layers.tls.HandshakeError` with
``reason == "certificate_required"``.

Run it: ``python examples/mtls_hello.py``
"""

from __future__ import annotations

import trio

from layers import tcp, tls
from layers.certs import CA
from stack import ByteStream, Stack, after


async def greet(stream: ByteStream) -> None:
    """The server's handler: only clients with a verified certificate get this far."""
    subject = dict(stream.info["peer_subject"])
    await stream.send(f"hello {subject['commonName']}\n".encode(), deadline=after(5))


async def main() -> None:
    ca = CA.new("mtls_hello example CA")
    server = Stack(tcp.listen("127.0.0.1", 0), tls.server(ca.issue("localhost"), client_ca=ca))
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(server.serve, greet)
        print(f"server on {host}:{port}, requiring a client certificate from {ca.cert.subject.rfc4514_string()}")

        alice = tls.client(server_hostname="localhost", ca=ca, cert=ca.issue("alice.test", client=True))
        async with await Stack(tcp.connect(host, port), alice).connect(deadline=after(5)) as stream:
            line = await stream.recv_until(b"\n", deadline=after(5))
            print(f"[alice] {line.decode().strip()}")
            assert line == b"hello alice.test\n"

        anonymous = tls.client(server_hostname="localhost", ca=ca)  # no cert=
        try:
            async with await Stack(tcp.connect(host, port), anonymous).connect(deadline=after(5)) as stream:
                await stream.recv(deadline=after(5))  # TLS 1.3: the refusal arrives here
        except tls.HandshakeError as exc:
            print(f"[anonymous] refused as it should be ({exc.reason})")
            assert exc.reason == "certificate_required"
        else:
            raise AssertionError("a client without a certificate was accepted")
        nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    trio.run(main)
