"""STARTTLS and back: plain prefix-framed messages, an upgrade to TLS, a downgrade to plain text,
all on one TCP connection, and not one byte lost at either switch.

The story, as a tiny protocol of 4-byte length-prefixed messages:

1. Plain text. The client says ``HELLO`` and the server answers. Then the client sends
   ``STARTTLS`` and, without waiting for an answer, starts its TLS handshake: its ClientHello
   travels right behind the ``STARTTLS`` message, and the server (which reads a little late on
   purpose) gets both in one read. The framing layer reads ahead, so the ClientHello bytes sit
   in the TCP stream's buffer when the server detaches the framing layer; the TLS layer it
   attaches next reads them from there.
2. Encrypted. The same framing, now over TLS (a layer on a layer), carries two secrets and a
   ``STOPTLS``. Both sides then detach: TLS exchanges close_notify alerts and gives back the TCP
   stream. The server speaks plain text again at once, so its first plain message travels right
   behind its close_notify, and the client (reading late on purpose) gets both in one read; its
   TLS layer hands the plain bytes back to the TCP stream instead of dropping them.
3. Plain text again, until ``QUIT``.

Each side prints what it sees. The program checks the whole conversation and exits 0.

Run it: ``python examples/starttls.py``
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable

import trio

from layers import framing, tcp, tls
from layers.certs import CA
from stack import ByteStream, MessageStream, Stack, after

LATE = 0.05  # seconds a reader waits on purpose, so that what follows a switch arrives with it


async def ask(msgs: MessageStream, text: bytes) -> bytes:
    await msgs.send(text, deadline=after(5))
    return await msgs.recv(deadline=after(5))


def server_handler(certs: tuple[str, str], transcript: list[str]) -> Callable[[ByteStream], Awaitable[None]]:
    spec = tls.server(certs)

    async def handle(raw: ByteStream) -> None:
        msgs = await framing.prefix(4).attach(raw)
        while (msg := await msgs.recv(deadline=after(5))) != b"STARTTLS":
            transcript.append(f"server got plain {msg!r}")
            await msgs.send(b"hello, plain client", deadline=after(5))
        transcript.append("server got plain b'STARTTLS'; upgrading")
        await trio.sleep(LATE)  # the ClientHello is already here, read ahead with STARTTLS
        secure = await spec.attach(await msgs.detach(), deadline=after(5))
        smsgs = await framing.prefix(4).attach(secure)
        while (msg := await smsgs.recv(deadline=after(5))) != b"STOPTLS":
            transcript.append(f"server got secret {msg!r} over {secure.info['tls_version']}")
            await smsgs.send(b"got it: " + msg, deadline=after(5))
        transcript.append("server got secret b'STOPTLS'; downgrading")
        raw = await (await smsgs.detach()).detach(deadline=after(5))  # framing, then TLS
        msgs = await framing.prefix(4).attach(raw)
        await msgs.send(b"plain again, right behind my close_notify", deadline=after(5))
        while (msg := await msgs.recv(deadline=after(5))) != b"QUIT":
            transcript.append(f"server got plain {msg!r}")
            await msgs.send(b"echo " + msg, deadline=after(5))
        transcript.append("server got plain b'QUIT'")
        await msgs.send(b"bye", deadline=after(5))

    return handle


async def run_client(port: int, ca: CA, transcript: list[str]) -> None:
    raw = await tcp.connect("127.0.0.1", port).connect(deadline=after(5))
    async with raw:
        msgs = await framing.prefix(4).attach(raw)
        transcript.append(f"client got plain {await ask(msgs, b'HELLO')!r}")
        await msgs.send(b"STARTTLS", deadline=after(5))
        secure = await tls.client(server_hostname="mail.test", ca=ca).attach(await msgs.detach(), deadline=after(5))
        transcript.append(f"client: TLS is up ({secure.info['tls_version']}, {secure.info['cipher']})")
        smsgs = await framing.prefix(4).attach(secure)
        for secret in (b"secret one", b"secret two"):
            transcript.append(f"client got secret {await ask(smsgs, secret)!r}")
        await smsgs.send(b"STOPTLS", deadline=after(5))
        await secure.done(deadline=after(5))  # our close_notify goes now
        await trio.sleep(LATE)  # the server's close_notify and its first plain message arrive together
        raw = await (await smsgs.detach()).detach(deadline=after(5))
        msgs = await framing.prefix(4).attach(raw)
        transcript.append(f"client got plain {await msgs.recv(deadline=after(5))!r}")
        transcript.append(f"client got plain {await ask(msgs, b'still here')!r}")
        transcript.append(f"client got plain {await ask(msgs, b'QUIT')!r}")


EXPECTED = [
    "server got plain b'HELLO'",
    "client got plain b'hello, plain client'",
    "server got plain b'STARTTLS'; upgrading",
    "client: TLS is up",
    "server got secret b'secret one' over TLSv1.3",
    "client got secret b'got it: secret one'",
    "server got secret b'secret two' over TLSv1.3",
    "client got secret b'got it: secret two'",
    "server got secret b'STOPTLS'; downgrading",
    "client got plain b'plain again, right behind my close_notify'",
    "server got plain b'still here'",
    "client got plain b'echo still here'",
    "server got plain b'QUIT'",
    "client got plain b'bye'",
]


async def main() -> None:
    ca = CA.new("starttls example CA")
    transcript: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        certs = ca.issue("mail.test").write(tmp, "mail")
        async with trio.open_nursery() as nursery:
            server = Stack(tcp.listen("127.0.0.1", 0))
            [(host, port)] = await nursery.start(server.serve, server_handler(certs, transcript))
            print(f"server listening on {host}:{port}")
            await run_client(port, ca, transcript)
            nursery.cancel_scope.cancel()
    for line in transcript:
        print(line)
    assert len(transcript) == len(EXPECTED), "the conversation is not the one expected"
    for line, expected in zip(transcript, EXPECTED, strict=True):
        assert line.startswith(expected), f"{line!r} is not {expected!r}"
    print("done: no byte lost at either switch")


if __name__ == "__main__":
    trio.run(main)
