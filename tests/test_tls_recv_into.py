"""``recv_into`` on the TLS layer: its own primitive, ``TLSStream._recv_into``, decrypts straight
into the caller's buffer. These tests pin that the TLS path (not the base class's fallback through
``_recv_some``) runs, and that it keeps the rules of ``recv``: data and several records per call,
a record longer than the buffer kept for the next call, close_notify and a vanishing peer, an
error found after data, post-handshake records, and a deadline or a cancellation in the middle of
a record that consumes nothing. The conformance kit (test_tls_conformance.py) runs the same path
under chaos, random deadlines and cancellation.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
from test_tls_support import Relay, bounded, certs, client, connected, server

from layers import tls
from stack import Broken, ByteStream, ProtocolError, Timeout, after
from stack.testing import memory_pair

__all__ = ["bounded"]  # the autouse fixture that bounds every test's time

SENTINEL = 0xA5


def no_fallback(stream: tls.TLSStream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the base class's fallback (``_recv_some`` and a copy) fail if anything takes it."""

    async def fallback(max_bytes: int, deadline: float) -> bytes:
        raise AssertionError("recv_into went through _recv_some")

    monkeypatch.setattr(stream, "_recv_some", fallback)


async def pair(monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[tls.TLSStream, tls.TLSStream]:
    """A client and server over a memory pair; the client's receives can only take the TLS path."""
    a, b = memory_pair(capacity=1 << 20)
    c, s = await connected(client(**kw), server(), a, b)
    no_fallback(c, monkeypatch)
    return c, s


async def receive_all(stream: ByteStream, n: int, size: int) -> bytes:
    """``n`` bytes through ``recv_into`` a reused ``size``-byte view inside a larger buffer, checking
    on every call that nothing outside the view was written."""
    buffer = bytearray([SENTINEL]) * (size + 2)
    view = memoryview(buffer)[1 : size + 1]
    out = bytearray()
    while len(out) < n:
        got = await stream.recv_into(view, deadline=after(5))
        assert 0 < got <= size
        assert buffer[0] == buffer[-1] == SENTINEL
        out += view[:got]
    return bytes(out)


def test_recv_into_is_the_tls_primitive() -> None:
    assert "_recv_into" in vars(tls.TLSStream)
    assert tls.TLSStream._recv_into is not ByteStream._recv_into


async def test_data_several_records_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    c, s = await pair(monkeypatch)
    data = bytes(range(256)) * 800  # 200 KiB: 13 records
    await s.send(data)
    await trio.testing.wait_all_tasks_blocked()
    buffer = bytearray(1 << 20)
    first = await c.recv_into(buffer)
    assert first > 16384  # more than one record in one call
    assert buffer[:first] == data[:first]
    assert buffer[first:] == bytes(len(buffer) - first)  # nothing past the count was written
    assert await receive_all(c, len(data) - first, 65536) == data[first:]


async def test_buffer_smaller_than_a_record_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    c, s = await pair(monkeypatch)
    data = bytes(range(256)) * 40  # 10 KiB: one record
    await s.send(data)
    buffer = bytearray(1000)
    assert await c.recv_into(buffer) == 1000
    assert buffer == data[:1000]
    assert c._ssl.pending() == len(data) - 1000  # the rest of the record waits in OpenSSL
    assert await c.recv_into(memoryview(buffer)[:1]) == 1
    assert buffer[:1] == data[1000:1001]
    monkeypatch.undo()  # recv takes _recv_some: both share the record
    assert await c.recv(3000) == data[1001:4001]
    assert await receive_all(c, len(data) - 4001, 777) == data[4001:]
    assert c._ssl.pending() == 0


async def test_close_notify_is_zero_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    c, s = await pair(monkeypatch)
    await s.send(b"last words")
    await s.done()  # close_notify right behind the data
    buffer = bytearray(100)
    assert await c.recv_into(buffer) == 10
    assert buffer[:10] == b"last words"
    assert await c.recv_into(buffer) == 0
    assert await c.recv_into(buffer) == 0
    await c.send(b"still sending after the peer's done()")
    assert await s.recv() == b"still sending after the peer's done()"


async def test_vanishing_peer_is_broken_unless_ragged_eofs(monkeypatch: pytest.MonkeyPatch) -> None:
    for ragged in (False, True):
        c, s = await pair(monkeypatch, ragged_eofs=ragged)
        await s.send(b"partial")
        assert isinstance(s.lower, ByteStream)
        await s.lower.aclose()  # the transport goes away under the server: no close_notify
        buffer = bytearray(100)
        assert await c.recv_into(buffer) == 7
        if ragged:
            assert await c.recv_into(buffer) == 0
        else:
            with pytest.raises(Broken, match="without close_notify: the data may be truncated"):
                await c.recv_into(buffer)
            with pytest.raises(Broken):  # sticky
                await c.recv_into(buffer)


async def test_error_after_data_comes_with_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    c, s = await pair(monkeypatch)
    await s.send(b"good")
    assert isinstance(s.lower, ByteStream)
    await s.lower.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # then a record that fails to decrypt
    buffer = bytearray(100)
    assert await c.recv_into(buffer) == 4  # the data first, in the same call that met the bad record
    assert buffer[:4] == b"good"
    with pytest.raises(ProtocolError, match="TLS"):
        await c.recv_into(buffer)
    with pytest.raises(Broken):
        await c.recv_into(buffer)


async def test_post_handshake_records_before_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session tickets come after the handshake and carry no data: OpenSSL reads them and says
    "want read", so the receive waits for the next records."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certs().ca.issue("localhost").configure_cert(ctx)
    ctx.num_tickets = 3
    a, b = memory_pair()
    c, s = await connected(client(), tls.server(context=ctx), a, b)
    no_fallback(c, monkeypatch)
    await trio.testing.wait_all_tasks_blocked()
    assert len(a._in.buf) > 0  # the tickets wait below the client
    buffer = bytearray(100)
    with pytest.raises(Timeout):  # the tickets arrive and are read, no data comes
        await c.recv_into(buffer, deadline=after(0.05))
    assert not c._in.pending  # OpenSSL took the tickets
    await s.send(b"after the tickets")
    assert await c.recv_into(buffer, deadline=after(5)) == 17
    assert buffer[:17] == b"after the tickets"


async def test_deadline_and_cancel_mid_record_consume_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Relay()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(r.pump, r.c_raw, r.s_raw)
        nursery.start_soon(r.pump, r.s_raw, r.c_raw)
        c, s = await connected(client(), server(), r.c_lower, r.s_lower)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    no_fallback(c, monkeypatch)
    message = bytes(range(256)) * 40  # 10 KiB: one record
    await s.send(message)
    record = await r.s_raw.recv_exactly(len(message) + 22)  # header 5 + type 1 + tag 16
    buffer = bytearray([SENTINEL]) * 20000
    await r.c_raw.send(record[:3000])
    with pytest.raises(Timeout):
        await c.recv_into(buffer, deadline=after(0.05))
    await r.c_raw.send(record[3000:6000])
    with trio.move_on_after(0.05) as scope:  # cancelled rather than timed out: the same rule
        await c.recv_into(buffer)
    assert scope.cancelled_caught
    assert buffer == bytearray([SENTINEL]) * 20000  # neither call wrote anything
    await r.c_raw.send(record[6000:])
    assert await c.recv_into(buffer, deadline=after(1)) == len(message)
    assert buffer[: len(message)] == message


async def test_bulk_both_ways_over_tcp() -> None:
    """recv_into on both ends of a full-duplex bulk transfer over loopback TCP."""
    from test_tls_conformance import tls_over_tcp

    c, s = await tls_over_tcp()
    up = bytes(range(251)) * 4000
    down = bytes(range(241)) * 4200
    got: dict[str, bytes] = {}

    async def read(name: str, stream: ByteStream, n: int) -> None:
        got[name] = await receive_all(stream, n, 65536)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.send, up)
            nursery.start_soon(s.send, down)
            nursery.start_soon(read, "up", s, len(up))
            nursery.start_soon(read, "down", c, len(down))
    assert got == {"up": up, "down": down}
    await c.aclose()
    assert await s.recv_into(bytearray(10)) == 0  # close_notify
    await s.aclose()
