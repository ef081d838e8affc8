"""layers._quic_copies: our header protection and stream send buffer behave as aioquic's own.

The header protection is checked byte for byte against aioquic's (apply, then remove, on random
headers of both forms and every packet-number length); the send buffer against a ``bytearray``
under the three operations aioquic's stream sender does (append, cut at the front, slice) and
the bulk path's copy of a range, in random sequences, and through a whole QUIC transfer with
retransmissions (a lossy path).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import _quic_copies, udp
from layers._quic_copies import HeaderProtection, SendBuffer
from stack import after
from tests.test_quic import TIMEOUT, client, server

pytestmark = pytest.mark.skipif(not _quic_copies.PYTHON_HP, reason="aioquic's header protection is not Python here")


def test_header_protection_is_aioquics() -> None:
    from aioquic._crypto import HeaderProtection as Theirs

    rng = random.Random(7)
    for name in (b"aes-128-ecb", b"aes-256-ecb", b"chacha20"):
        key = os.urandom(32 if name != b"aes-128-ecb" else 16)
        theirs = Theirs(name, key)
        ours = Theirs(name, key)
        ours.__class__ = HeaderProtection
        for _ in range(300):
            pn_length = rng.randint(1, 4)
            first = (0xC0 if rng.random() < 0.3 else 0x40) | (pn_length - 1)
            header = bytes([first]) + os.urandom(rng.randint(0, 40)) + os.urandom(pn_length)
            payload = os.urandom(rng.randint(20, 2000))
            protected = theirs.apply(header, payload)
            assert ours.apply(header, payload) == protected
            offset = len(header) - pn_length
            assert ours.remove(protected, offset) == theirs.remove(protected, offset)
            assert ours.remove(protected, offset)[0] == header
    with pytest.raises(ValueError):  # too short to sample: aioquic's own error
        ours.remove(b"\x40" + bytes(10), 5)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.binary(min_size=0, max_size=300), st.booleans()),
        st.tuples(st.just("cut"), st.integers(0, 400)),
        st.tuples(st.just("slice"), st.integers(0, 600), st.integers(0, 600)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_send_buffer_is_a_bytearray(ops: list[Any]) -> None:
    ours, theirs = SendBuffer(b"seed"), bytearray(b"seed")
    for op in ops:
        if op[0] == "add":
            data = op[1] if op[2] else memoryview(bytearray(op[1]))
            ours += data
            theirs += data
        elif op[0] == "cut":
            n = min(op[1], len(theirs))
            del ours[:n]
            del theirs[:n]
        else:
            a, b = sorted(op[1:])
            assert bytes(ours[a:b]) == bytes(theirs[a:b])
            if b <= len(theirs):  # the bulk path's copy of a frame's bytes (layers._quic_bulk)
                target = bytearray(b - a + 2)
                ours.copy_into(memoryview(target)[1 : 1 + b - a], a)
                assert target == b"\0" + theirs[a:b] + b"\0"
        assert len(ours) == len(theirs)
    assert ours[:] == bytes(theirs)


def test_send_buffer_keeps_the_bytes_it_was_given() -> None:
    chunk = b"x" * 1000
    buf = SendBuffer()
    buf += chunk
    assert buf[0:1000] is chunk  # a frame of exactly one commit: no copy at all
    with pytest.raises(NotImplementedError):
        del buf[5:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="64 KiB datagrams need the route MTU (Linux)")
async def test_a_lossy_bulk_transfer_arrives_whole(ca: Any, leaf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # every 7th datagram of the client is lost: frames are sent again from our send buffer
    send_batch = udp.UDPStream.send_batch
    count = 0

    async def lossy(self: udp.UDPStream, datagrams: list[tuple[bytes, Any]]) -> int:
        nonlocal count
        kept = []
        for d in datagrams:
            count += 1
            if count % 7:
                kept.append(d)
        return int(await send_batch(self, kept))

    monkeypatch.setattr(udp.UDPStream, "send_batch", lossy)
    data = os.urandom(3 * 1024 * 1024 + 123)
    async with (
        server(leaf) as srv,
        client(ca, srv.port).open(deadline=after(TIMEOUT)) as conn,
    ):
        sconn = await srv.conns.receive()
        a = conn.open_stream()
        got = bytearray()
        buffers: set[type] = set()

        async def read() -> None:
            b = await sconn.accept_stream()
            while chunk := await b.recv(65536):
                got.extend(chunk)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for i in range(0, len(data), 65536):
                    await a.send(data[i : i + 65536])
                    sender = conn.engine._streams[a.stream_id].sender
                    buffers.add(type(sender._buffer))
                await a.done()
        assert conn.engine.datagram_size > 60000
    assert bytes(got) == data
    assert SendBuffer in buffers  # the stream took ours (at its first 64 KiB commit)
    assert count > 48 + 7  # and datagrams were lost
