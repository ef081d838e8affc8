"""Unit tests of the WebSocket layer's rules: opcodes, fragments, close codes, size limits,
ping/pong, bad frames, the opening handshake (refusals included) and deadlines.

A *raw peer* here is the bare memory stream on the other side, writing frames built by hand
(:func:`frame`) and reading what our layer wrote (:func:`read_frame`), so every rule is checked
on the wire.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from layers import http, http1, http2, websocket
from stack import Broken, ByteStream, Closed, MessageTooLarge, ProtocolError, StackError, Timeout, after
from stack.testing import memory_pair

T = 5.0  # seconds any single step may take


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    """One frame on the wire; masked as a client's must be (``mask=False`` for a server's)."""
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(s: ByteStream) -> tuple[int, bool, bytes]:
    """(opcode, fin, unmasked payload) of the next frame our layer wrote on ``s``."""
    b0, b1 = await s.recv_exactly(2, deadline=after(T))
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await s.recv_exactly(2, deadline=after(T)))
    elif n == 127:
        (n,) = struct.unpack("!Q", await s.recv_exactly(8, deadline=after(T)))
    key = await s.recv_exactly(4, deadline=after(T)) if b1 & 0x80 else b""
    data = await s.recv_exactly(n, deadline=after(T))
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, bool(b0 & 0x80), data


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


async def server_ws(**kw: object) -> tuple[websocket.WebSocket, ByteStream]:
    """Our server-role WebSocket and the raw peer (the client side)."""
    a, b = memory_pair()
    ws = await websocket.raw("server", **kw).attach(b)  # type: ignore[arg-type]
    return ws, a


async def ws_pair(**kw: object) -> tuple[websocket.WebSocket, websocket.WebSocket]:
    a, b = memory_pair()
    return (
        await websocket.raw("client", **kw).attach(a),  # type: ignore[arg-type]
        await websocket.raw("server", **kw).attach(b),  # type: ignore[arg-type]
    )


# ---- messages and opcodes --------------------------------------------------------------------


async def test_str_is_text_and_bytes_is_binary_on_the_wire() -> None:
    a, b = memory_pair()
    ws = await websocket.raw("server").attach(b)
    await ws.send("h\u00e9")
    await ws.send(b"\x00\xff")
    await ws.send(bytearray(b"ba"))
    await ws.send(memoryview(b"mv"))
    assert await read_frame(a) == (0x1, True, "h\u00e9".encode())
    assert await read_frame(a) == (0x2, True, b"\x00\xff")
    assert await read_frame(a) == (0x2, True, b"ba")
    assert await read_frame(a) == (0x2, True, b"mv")
    with pytest.raises(TypeError):
        await ws.send(42)  # type: ignore[arg-type]


async def test_recv_returns_str_for_text_and_bytes_for_binary() -> None:
    c, s = await ws_pair()
    await c.send("text")
    await c.send(b"bin")
    await c.send("")
    await c.send(b"")
    got = [await s.recv(deadline=after(T)) for _ in range(4)]
    assert got == ["text", b"bin", "", b""]
    assert [type(m) for m in got] == [str, bytes, str, bytes]


async def test_client_masks_and_server_does_not() -> None:
    a, b = memory_pair()
    c = await websocket.raw("client").attach(a)
    s = await websocket.raw("server").attach(b)
    await c.send(b"x")
    head = await b.recv_exactly(2, deadline=after(T))
    assert head[1] & 0x80, "a client's frames are masked"
    b.unread(head)
    assert await s.recv(deadline=after(T)) == b"x"
    await s.send(b"y")
    head = await a.recv_exactly(2, deadline=after(T))
    assert not head[1] & 0x80, "a server's frames are not masked"


async def test_fragments_are_reassembled_with_a_ping_between_them() -> None:
    ws, peer = await server_ws()
    await peer.send(
        frame(0x1, b"hel", fin=False)
        + frame(0x9, b"p1")
        + frame(0x0, "lo \u2603".encode()[:4], fin=False)
        + frame(0x0, "lo \u2603".encode()[4:])
        + frame(0x2, b"a", fin=False)
        + frame(0x0, b"b")
    )
    assert await ws.recv(deadline=after(T)) == "hello \u2603"  # UTF-8 split across frames
    assert await ws.recv(deadline=after(T)) == b"ab"
    await ws.send("next")  # the Pong we owe goes first
    assert await read_frame(peer) == (0xA, True, b"p1")
    assert await read_frame(peer) == (0x1, True, b"next")


@pytest.mark.parametrize("deflate", [False, True])
async def test_many_small_fragments_are_reassembled_text_and_binary(deflate: bool) -> None:
    """Continuation frames whole in the buffer take the layer's own path (unmask, inflate, decode):
    a character split across fragments, empty fragments, a Ping between them, with and without
    permessage-deflate (one compressed message cut into 7-byte fragments)."""
    text = "h\u00e9llo \u2603 w\u00f6rld " * 20
    data = os.urandom(1000)
    kw = {"deflate": "permessage-deflate"} if deflate else {}
    ws, peer = await server_ws(**kw)

    def fragments(opcode: int, payload: bytes) -> bytes:
        rsv1 = deflate
        if deflate:
            c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            payload = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)]
        wire = frame(opcode, pieces[0], fin=False, rsv1=rsv1) + frame(0x0, b"", fin=False) + frame(0x9, b"p")
        wire += b"".join(frame(0x0, piece, fin=False) for piece in pieces[1:-1])
        return wire + frame(0x0, pieces[-1])

    await peer.send(fragments(0x1, text.encode()) + fragments(0x2, data))
    assert await ws.recv(deadline=after(T)) == text
    assert await ws.recv(deadline=after(T)) == data


@pytest.mark.parametrize(
    ("middle", "code"),
    [
        (frame(0x0, b"\xff\xfe", fin=False), 1007),  # invalid UTF-8 in a middle fragment
        (frame(0x0, b"x", fin=False, mask=False), 1002),  # an unmasked middle fragment
        (frame(0x0, b"x", fin=False, rsv1=True), 1002),  # RSV1 on a continuation
        (frame(0x1, b"x", fin=False), 1002),  # a new message before the end of this one
    ],
)
async def test_a_bad_middle_fragment_is_refused_with_the_rfc_code(middle: bytes, code: int) -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x1, b"ab", fin=False) + frame(0x0, b"cd", fin=False) + middle + frame(0x0, b"e"))
    with pytest.raises(ProtocolError):
        await ws.recv(deadline=after(T))
    opcode, _, payload = await read_frame(peer)
    assert opcode == 0x8 and payload[:2] == struct.pack("!H", code)


# ---- closing -----------------------------------------------------------------------------------


async def test_done_sends_close_with_code_and_reason_and_the_peer_gets_them() -> None:
    c, s = await ws_pair()
    await c.send("last")
    await c.done(4001, "bye now")
    assert await s.recv(deadline=after(T)) == "last"
    for _ in range(2):  # again and again
        with pytest.raises(websocket.CloseReceived) as info:
            await s.recv(deadline=after(T))
        assert (info.value.code, info.value.reason) == (4001, "bye now")
    assert (s.close_code, s.close_reason) == (4001, "bye now")
    with pytest.raises(Closed):
        await c.send("more")
    await c.done()  # again: nothing
    # half-close: the other way goes on until the server closes too
    await s.send("still here")
    assert await c.recv(deadline=after(T)) == "still here"
    await s.aclose()  # echoes the client's code
    with pytest.raises(websocket.CloseReceived) as info:
        await c.recv(deadline=after(T))
    assert info.value.code == 4001


async def test_close_without_a_code_is_1005_and_is_echoed_without_one() -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x8, b""))
    with pytest.raises(websocket.CloseReceived) as info:
        await ws.recv(deadline=after(T))
    assert (info.value.code, info.value.reason) == (1005, "")
    await ws.aclose()
    assert await read_frame(peer) == (0x8, True, b"")
    assert await peer.recv(deadline=after(T)) == b""


async def test_aclose_sends_1000_when_this_side_closes_first() -> None:
    ws, peer = await server_ws()
    await ws.aclose()
    assert await read_frame(peer) == (0x8, True, close_payload(1000))
    assert await peer.recv(deadline=after(T)) == b""


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 5000])
async def test_codes_that_may_not_be_sent_are_refused(code: int) -> None:
    c, _ = await ws_pair()
    with pytest.raises(ValueError, match="may not be sent"):
        await c.done(code)


async def test_a_reason_over_123_bytes_is_refused() -> None:
    c, _ = await ws_pair()
    with pytest.raises(ValueError, match="123 bytes"):
        await c.done(1000, "\u00e9" * 62)
    await c.done(1000, "\u00e9" * 61)


async def test_the_connection_ending_without_close_is_broken() -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x1, b"ok"))
    await peer.done()
    assert await ws.recv(deadline=after(T)) == "ok"
    with pytest.raises(Broken, match="1006"):
        await ws.recv(deadline=after(T))
    with pytest.raises(Broken):
        await ws.send("x")


async def test_close_in_the_middle_of_a_message_is_broken_not_truncated() -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x1, b"part", fin=False) + frame(0x8, close_payload(1000)))
    with pytest.raises(Broken, match="middle of a message"):
        await ws.recv(deadline=after(T))


async def test_a_close_in_the_middle_of_a_message_is_still_answered_with_a_close() -> None:
    """The message is lost (Broken), but the connection is sound: the peer gets its Close echoed
    (Autobahn 7.1.5 wants the closing handshake to complete cleanly)."""
    ws, peer = await server_ws()
    await peer.send(frame(0x1, b"part", fin=False) + frame(0x8, close_payload(1000)))
    with pytest.raises(Broken, match="middle of a message"):
        await ws.recv(deadline=after(T))
    opcode, fin, payload = await read_frame(peer)
    assert (opcode, fin, payload[:2]) == (0x8, True, struct.pack("!H", 1000))


# ---- size limits -------------------------------------------------------------------------------


async def test_a_message_over_max_message_is_refused_before_it_is_read_and_closes_1009() -> None:
    ws, peer = await server_ws(max_message=1000)
    await peer.send(frame(0x2, b"x" * 1000))
    assert await ws.recv(deadline=after(T)) == b"x" * 1000  # the limit itself is fine
    header = frame(0x2, b"y" * 1001)[:8]  # the header alone announces 1001 bytes
    await peer.send(header)
    with pytest.raises(MessageTooLarge) as info:
        await ws.recv(deadline=after(T))
    assert info.value.limit == 1000
    opcode, _, payload = await read_frame(peer)
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1009))
    with pytest.raises(Broken):  # sticky
        await ws.recv(deadline=after(T))


async def test_fragments_count_together_against_the_limit() -> None:
    ws, peer = await server_ws(max_message=100)
    await peer.send(frame(0x2, b"a" * 60, fin=False) + frame(0x0, b"b" * 60))
    with pytest.raises(MessageTooLarge):
        await ws.recv(deadline=after(T))


async def test_deflate_limit_applies_to_the_inflated_size() -> None:
    """A deflate bomb: 64 KiB of compressed zeros would inflate to 64 MiB; the limit stops the
    inflating at 1 MiB (it never holds the whole)."""
    ws, peer = await server_ws(max_message=1 << 20, deflate="permessage-deflate")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    small = comp.compress(b"z" * 1000) + comp.flush(zlib.Z_SYNC_FLUSH)
    await peer.send(frame(0x2, small[:-4], rsv1=True))
    assert await ws.recv(deadline=after(T)) == b"z" * 1000  # an ordinary compressed message
    bomb = comp.compress(bytes(64 << 20)) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 128 * 1024
    await peer.send(frame(0x2, bomb[:-4], rsv1=True))
    with pytest.raises(MessageTooLarge):
        await ws.recv(deadline=after(T))
    opcode, _, payload = await read_frame(peer)
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1009))


async def test_deflate_pings_between_and_inside_compressed_messages_leave_them_intact() -> None:
    """Control frames never carry RSV1; they must not reset or set the compressed state of the
    message around them (wsproto's own extension gets both wrong)."""
    ws, peer = await server_ws(deflate="permessage-deflate")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)

    def deflate(data: bytes) -> bytes:
        return (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]

    one, two, three = deflate(b"first " * 100), deflate(b"second " * 100), deflate(b"third " * 100)
    await peer.send(
        frame(0x2, one, rsv1=True)
        + frame(0x9, b"between")
        + frame(0x2, two, rsv1=True)
        + frame(0x2, three[:5], rsv1=True, fin=False)
        + frame(0xA, b"inside")
        + frame(0x0, three[5:])
        + frame(0x1, b"plain")  # uncompressed text: RSV1 clear
    )
    assert await ws.recv(deadline=after(T)) == b"first " * 100
    assert await ws.recv(deadline=after(T)) == b"second " * 100
    assert await ws.recv(deadline=after(T)) == b"third " * 100
    assert await ws.recv(deadline=after(T)) == "plain"


async def test_deflate_round_trip_over_the_handshake() -> None:
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        out: dict[str, websocket.WebSocket] = {}

        async def serve() -> None:
            out["s"] = await websocket.server(deflate=True).attach(b, deadline=after(T))

        nursery.start_soon(serve)
        c = await websocket.client("test", "/", deflate=True).attach(a, deadline=after(T))
    s = out["s"]
    assert c.info["websocket_deflate"] and s.info["websocket_deflate"]
    text = "compress me " * 10000
    await c.send(text)
    assert await s.recv(deadline=after(T)) == text
    await s.send(text.encode())
    assert await c.recv(deadline=after(T)) == text.encode()


async def test_deflate_is_off_unless_asked() -> None:
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        out: dict[str, websocket.WebSocket] = {}

        async def serve() -> None:
            out["s"] = await websocket.server().attach(b, deadline=after(T))

        nursery.start_soon(serve)
        c = await websocket.client("test", "/", deflate=True).attach(a, deadline=after(T))
    assert not c.info["websocket_deflate"] and not out["s"].info["websocket_deflate"]


# ---- ping --------------------------------------------------------------------------------------


async def test_ping_returns_the_round_trip_time_while_both_sides_receive() -> None:
    c, s = await ws_pair()

    async def drain(ws: websocket.WebSocket) -> None:
        async for _ in ws:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, c)
        nursery.start_soon(drain, s)
        rtt = await c.ping(deadline=after(T))
        assert rtt >= 0.0
        assert await s.ping(b"custom", deadline=after(T)) >= 0.0
        await c.done()
        await s.done()


@pytest.mark.parametrize("deflate", [None, "permessage-deflate"])
async def test_pings_both_ways_while_messages_flow_both_ways(deflate: str | None) -> None:
    """Pongs written by receiving tasks, Pings by pinging tasks and messages by sending tasks
    share the wire: every frame stays whole and in order, every message arrives once, intact."""
    import random

    rng = random.Random(7)
    a, b = memory_pair(capacity=4096)  # small: senders block on backpressure, and so would pongs
    c = await websocket.raw("client", deflate=deflate).attach(a)
    s = await websocket.raw("server", deflate=deflate).attach(b)
    msgs: list[bytes | str] = [
        rng.randbytes(rng.choice([0, 1, 100, 5000, 70000])) if i % 2 else "t" * rng.choice([0, 3, 200, 9000])
        for i in range(60)
    ]

    async def send_all(ws: websocket.WebSocket) -> None:
        for m in msgs:
            await ws.send(m, deadline=after(T))
        await ws.done()

    async def recv_all(ws: websocket.WebSocket, got: list[bytes | str]) -> None:
        got.extend([m async for m in ws])

    async def ping_some(ws: websocket.WebSocket, done: trio.Event) -> None:
        while not done.is_set():
            try:
                await ws.ping(deadline=after(T))
            except Closed:  # either side closed: no more pings
                return

    got_c: list[bytes | str] = []
    got_s: list[bytes | str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            nursery.start_soon(recv_all, c, got_c)
            nursery.start_soon(recv_all, s, got_s)
            nursery.start_soon(ping_some, c, stop)
            nursery.start_soon(ping_some, s, stop)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_all, c)
                senders.start_soon(send_all, s)
            stop.set()
    assert got_c == msgs and got_s == msgs


async def test_a_peer_ping_is_answered_with_its_payload() -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x9, b"hello?") + frame(0x9, b"again?") + frame(0x1, b"m"))
    assert await ws.recv(deadline=after(T)) == "m"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.recv)  # the Pong goes out while this waits for more
        assert await read_frame(peer) == (0xA, True, b"hello?")  # each Ping gets its own Pong
        assert await read_frame(peer) == (0xA, True, b"again?")
        await peer.send(frame(0x1, b"end"))


async def test_a_ping_flood_is_answered_with_the_last_max_pongs_pongs_only() -> None:
    """Each Ping gets its Pong, but what we owe stays bounded: past MAX_PONGS pending, the
    oldest are dropped (RFC 6455 5.5.3 allows answering only the most recent)."""
    ws, peer = await server_ws()
    n = websocket.MAX_PONGS + 10
    await peer.send(b"".join(frame(0x9, b"%d" % i) for i in range(n)) + frame(0x1, b"m"))
    assert await ws.recv(deadline=after(T)) == "m"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.recv)
        got = [await read_frame(peer) for _ in range(websocket.MAX_PONGS)]
        assert got == [(0xA, True, b"%d" % i) for i in range(10, n)]
        await peer.send(frame(0x1, b"end"))


async def test_ping_without_a_receiver_times_out_and_the_stream_goes_on() -> None:
    c, s = await ws_pair()
    with pytest.raises(Timeout):
        await c.ping(deadline=after(0.05))
    await c.send("x")
    assert await s.recv(deadline=after(T)) == "x"


# ---- bad frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(0x1, b"no mask", mask=False), 1002),  # a client must mask
        (frame(0x3, b"x"), 1002),  # reserved opcode
        (frame(0x1, b"x", rsv1=True), 1002),  # RSV1 without an extension
        (frame(0x9, b"x", fin=False), 1002),  # a fragmented control frame
        (frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
        (frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8 in a text message
        (frame(0x8, b"\x03"), 1002),  # a Close payload of one byte
    ],
)
async def test_bad_frames_raise_protocol_error_and_close_with_the_rfc_code(wire: bytes, code: int) -> None:
    ws, peer = await server_ws()
    await peer.send(wire)
    with pytest.raises(ProtocolError):
        await ws.recv(deadline=after(T))
    opcode, _, payload = await read_frame(peer)
    assert opcode == 0x8 and payload[:2] == struct.pack("!H", code)
    with pytest.raises(Broken):
        await ws.send("after")


# ---- deadlines -----------------------------------------------------------------------------------


async def test_a_timed_out_recv_loses_no_part_of_a_message() -> None:
    ws, peer = await server_ws()
    whole = frame(0x2, b"0123456789" * 100)
    await peer.send(whole[:300])
    with pytest.raises(Timeout) as info:
        await ws.recv(deadline=after(0.05))
    assert info.value.sent is None
    await peer.send(whole[300:])
    assert await ws.recv(deadline=after(T)) == b"0123456789" * 100


async def test_a_timed_out_send_reports_whether_the_message_was_committed() -> None:
    a, b = memory_pair(capacity=1024)
    c = await websocket.raw("client").attach(a)
    s = await websocket.raw("server").attach(b)
    await c.send(b"fits")
    with pytest.raises(Timeout) as info:
        await c.send(b"m" * 100_000, deadline=after(0.05))  # fills the pipe, then stalls
    assert info.value.committed and info.value.sent == 100_000
    with pytest.raises(Timeout) as info:
        await c.send(b"late", deadline=after(0.05))  # the rest of the last one goes first: stuck
    assert not info.value.committed and info.value.sent == 0

    async def reader() -> list[bytes | str]:
        return [await s.recv(deadline=after(T)) for _ in range(3)]

    async with trio.open_nursery() as nursery:
        got: list[bytes | str] = []

        async def read_all() -> None:
            got.extend(await reader())

        nursery.start_soon(read_all)
        await c.send("next", deadline=after(T))
    assert got == [b"fits", b"m" * 100_000, "next"]  # "late" was not sent, the rest arrived once


async def test_with_deflate_a_timed_out_send_is_committed_once_compressed() -> None:
    ext = "permessage-deflate"
    a, b = memory_pair(capacity=64)
    c = await websocket.raw("client", deflate=ext).attach(a)
    s = await websocket.raw("server", deflate=ext).attach(b)
    text = "squeeze " * 5000
    with pytest.raises(Timeout) as info:
        await c.send(text, deadline=after(0.02))  # compressed (so committed), then stuck
    assert info.value.committed and info.value.sent == len(text)
    async with trio.open_nursery() as nursery:
        got: list[bytes | str] = []

        async def read_two() -> None:
            got.extend([await s.recv(deadline=after(T)), await s.recv(deadline=after(T))])

        nursery.start_soon(read_two)
        await c.send("after", deadline=after(T))  # the committed rest goes first
    assert got == [text, "after"]  # the compressor's context stayed in step


async def test_a_message_over_fragment_goes_as_fragments_and_a_pong_goes_between_them() -> None:
    a, b = memory_pair(capacity=4096)  # the sender stalls on every fragment until the peer reads
    ws = await websocket.raw("server").attach(b)
    payload = bytes(range(256)) * 1024  # 256 KiB: four fragments of 64 KiB
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ws.send(payload, deadline=after(T)))
        opcode, fin, first = await read_frame(a)
        assert (opcode, fin, len(first)) == (0x2, False, websocket.FRAGMENT)
        await a.send(frame(0x9, b"are you there"))  # a Ping while the message is being sent
        receiving = trio.CancelScope()

        async def receive() -> None:  # our receiving side reads the Ping and owes the Pong
            with receiving:
                await ws.recv()

        nursery.start_soon(receive)
        frames = [await read_frame(a) for _ in range(4)]
        receiving.cancel()
    pong = (0xA, True, b"are you there")
    assert pong in frames[:2]  # the Pong did not wait for the rest of the message
    data = [f for f in frames if f != pong]
    assert [(op, fin) for op, fin, _ in data] == [(0x0, False), (0x0, False), (0x0, True)]
    assert first + b"".join(d for _, _, d in data) == payload


async def test_a_text_message_is_cut_between_characters() -> None:
    a, b = memory_pair()
    ws = await websocket.raw("server").attach(b)
    text = "é中😀" * 30_000  # 90,000 characters of 2, 3 and 4 bytes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ws.send(text, deadline=after(T)))
        frames = [await read_frame(a), await read_frame(a)]
    assert [(op, fin) for op, fin, _ in frames] == [(0x1, False), (0x0, True)]
    assert [d.decode("utf-8") for _, _, d in frames] == [text[: websocket.FRAGMENT], text[websocket.FRAGMENT :]]


async def test_our_close_waits_for_the_end_of_a_fragmented_message() -> None:
    a, b = memory_pair(capacity=4096)
    c = await websocket.raw("client").attach(a)
    s = await websocket.raw("server").attach(b)
    payload = os.urandom(3 * websocket.FRAGMENT + 5)
    with pytest.raises(Timeout) as info:
        await c.send(payload, deadline=after(0.05))  # the first fragment started: committed
    assert info.value.committed
    got: list[bytes | str] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            got.append(await s.recv(deadline=after(T)))
            with pytest.raises(websocket.CloseReceived):
                await s.recv(deadline=after(T))

        nursery.start_soon(read)
        await c.done(deadline=after(T))  # the rest of the message first, then Close
    assert got == [payload]


@pytest.mark.parametrize("deflate", [None, "permessage-deflate"])
async def test_large_messages_both_ways_round_trip(deflate: str | None) -> None:
    a, b = memory_pair(capacity=65536)
    c = await websocket.raw("client", deflate=deflate).attach(a)
    s = await websocket.raw("server", deflate=deflate).attach(b)
    messages: list[bytes | str] = [os.urandom(300_000), "x" * 200_001, b"", "small", os.urandom(65537)]
    got: list[bytes | str] = []
    async with trio.open_nursery() as nursery:

        async def echo() -> None:
            for _ in messages:
                await s.send(await s.recv(deadline=after(T)), deadline=after(T))

        async def read() -> None:
            got.extend([await c.recv(deadline=after(T)) for _ in messages])

        nursery.start_soon(echo)
        nursery.start_soon(read)
        for m in messages:
            await c.send(m, deadline=after(T))
    assert got == messages


async def test_a_waiting_ping_is_woken_when_the_stream_closes() -> None:
    c, _s = await ws_pair()
    async with trio.open_nursery() as nursery:
        outcome: list[BaseException] = []

        async def pinger() -> None:
            try:
                await c.ping(deadline=after(T))
            except (Closed, Broken) as exc:
                outcome.append(exc)

        nursery.start_soon(pinger)
        await trio.testing.wait_all_tasks_blocked()
        await c.aclose()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)


async def test_handshake_deadline() -> None:
    a, _b = memory_pair()
    with pytest.raises(Timeout):
        await websocket.client("test", "/").attach(a, deadline=after(0.05))
    _a2, b2 = memory_pair()
    with pytest.raises(Timeout):
        await websocket.server().attach(b2, deadline=after(0.05))


# ---- detach ---------------------------------------------------------------------------------------


async def test_detach_refuses_while_a_message_is_unread_and_keeps_it() -> None:
    ws, peer = await server_ws()
    await peer.send(frame(0x1, b"unread"))
    with pytest.raises(StackError, match="recv it first"):
        await ws.detach(deadline=after(T))
    assert await read_frame(peer) == (0x8, True, close_payload(1000))  # our Close went out
    assert await ws.recv(deadline=after(T)) == "unread"
    await peer.send(frame(0x8, close_payload(1000)) + b"raw bytes after")
    lower = await ws.detach(deadline=after(T))
    assert await lower.recv(deadline=after(T)) == b"raw bytes after"


# ---- the opening handshake -------------------------------------------------------------------------


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def handshake_against_server(request: bytes, **kw: object) -> tuple[bytes, BaseException | None]:
    """Send ``request`` to ``websocket.server(**kw)``; the server's answer head and its outcome."""
    a, b = memory_pair()
    outcome: list[BaseException | None] = []

    async def serve() -> None:
        try:
            await websocket.server(**kw).attach(b, deadline=after(T))  # type: ignore[arg-type]
            outcome.append(None)
        except StackError as exc:
            outcome.append(exc)
            await b.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await a.send(request)
        head = await a.recv_until(b"\r\n\r\n", deadline=after(T))
    return head, outcome[0]


async def test_the_server_answers_a_valid_upgrade_with_101_and_the_accept_token() -> None:
    head, exc = await handshake_against_server(UPGRADE + b"Sec-WebSocket-Protocol: a, chat\r\n\r\n",
                                               subprotocols=("chat",))  # fmt: skip
    assert exc is None
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head  # the RFC 6455 1.3 example
    assert b"sec-websocket-protocol: chat\r\n" in head.lower()


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /chat HTTP/1.1\r\nHost: test\r\n\r\n", b"400"),  # not an upgrade at all
        (UPGRADE.replace(b"websocket", b"h2c") + b"\r\n", b"400"),  # another protocol's upgrade
        (UPGRADE.replace(b"keep-alive, Upgrade", b"keep-alive") + b"\r\n", b"400"),
        (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short") + b"\r\n", b"400"),
        (UPGRADE.replace(b"GET", b"POST") + b"Content-Length: 0\r\n\r\n", b"400"),
        (UPGRADE.replace(b"Version: 13", b"Version: 8") + b"\r\n", b"426"),
    ],
)
async def test_a_request_that_is_not_a_websocket_handshake_is_refused(request_head: bytes, status: bytes) -> None:
    head, exc = await handshake_against_server(request_head)
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert isinstance(exc, ProtocolError)
    if status == b"426":
        assert b"sec-websocket-version: 13" in head.lower()


async def test_the_server_spec_refuses_other_paths_with_404() -> None:
    head, exc = await handshake_against_server(UPGRADE + b"\r\n", paths=("/other",))
    assert head.startswith(b"HTTP/1.1 404 ") and isinstance(exc, ProtocolError)


async def test_the_client_refuses_a_wrong_accept_token() -> None:
    a, b = memory_pair()

    async def fake_server() -> None:
        await b.recv_until(b"\r\n\r\n", deadline=after(T))
        await b.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n")  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        with pytest.raises(ProtocolError, match="Sec-WebSocket-Accept"):
            await websocket.client("test", "/").attach(a, deadline=after(T))


async def test_the_client_raises_upgrade_refused_for_an_http_answer() -> None:
    a, b = memory_pair()

    async def fake_server() -> None:
        await b.recv_until(b"\r\n\r\n", deadline=after(T))
        await b.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        with pytest.raises(websocket.UpgradeRefused) as info:
            await websocket.client("test", "/").attach(a, deadline=after(T))
    assert info.value.status == 404 and info.value.body == b"not here\n"


# ---- through the HTTP layers: accept() in an app, connect() on a client connection ------------------


async def echo_app(request: http.Request) -> None:
    """``/ws``: a WebSocket echo; ``/plain``: accept() on a plain request (it answers 400);
    anything else: 404."""
    if request.path == "/plain":
        with pytest.raises(ProtocolError):
            await websocket.accept(request, deadline=after(T))
        return
    if request.path != "/ws":
        await request.respond(404, [("content-type", "text/plain")], b"no\n")
        return
    assert websocket.is_websocket(request)
    async with await websocket.accept(request, subprotocols=("v2", "v1"), deadline=after(T)) as ws:
        async for msg in ws:
            await ws.send(msg)


@contextlib.asynccontextmanager
async def http_client(version: str, app: http.App = echo_app) -> AsyncIterator[http.ClientConnection]:
    a, b = memory_pair()
    async with trio.open_nursery() as nursery:
        conn: http.ClientConnection
        if version == "2":
            nursery.start_soon(_serve_h2, b, app)
            conn = await http2.client(authority="test", scheme="http").attach(a)
            async with conn:
                yield conn
        else:
            nursery.start_soon(_serve_h1, b, app)
            conn = await http1.client(authority="test", scheme="http").attach(a)
            yield conn
            await conn.aclose()
        nursery.cancel_scope.cancel()


async def _serve_h2(lower: ByteStream, app: http.App) -> None:
    conn = await http2.server(app).attach(lower, deadline=after(T))
    await conn.serve(app)


async def _serve_h1(lower: ByteStream, app: http.App) -> None:
    conn = await http1.server(app).attach(lower, deadline=after(T))
    await conn.serve(app)


@pytest.mark.parametrize("version", ["1.1", "2"])
async def test_accept_in_an_app_and_connect_on_a_client_connection(version: str) -> None:
    async with http_client(version) as conn:
        ws = await websocket.connect(conn, "/ws", subprotocols=("v1", "v3"), deadline=after(T))
        assert ws.subprotocol == "v1" and ws.info["websocket_subprotocol"] == "v1"
        assert ws.info["http_version"] == version
        await ws.send("over HTTP/" + version)
        await ws.send(b"\x00" * 70000)
        assert await ws.recv(deadline=after(T)) == "over HTTP/" + version
        assert await ws.recv(deadline=after(T)) == b"\x00" * 70000
        await ws.done(1000, "thanks")
        with pytest.raises(websocket.CloseReceived) as info:
            await ws.recv(deadline=after(T))
        assert info.value.code == 1000  # the server's aclose echoed our code
        await ws.aclose()
        if version == "2":  # the connection goes on carrying requests
            response = await conn.request("GET", "/plain", deadline=after(T))
            assert response.status == 400


@pytest.mark.parametrize("version", ["1.1", "2"])
async def test_connect_to_a_path_that_is_not_a_websocket_raises_upgrade_refused(version: str) -> None:
    async with http_client(version) as conn:
        with pytest.raises(websocket.UpgradeRefused) as info:
            await websocket.connect(conn, "/not-ws", deadline=after(T))
        assert info.value.status == 404
        if version == "1.1":  # (HTTP/2: see the next test)
            assert info.value.body == b"no\n"


async def test_a_refused_http2_tunnel_is_read_for_its_reason_and_closed() -> None:
    """open_tunnel leaves a refused HTTP/2 stream readable: the handshake reads the start of its
    body into the UpgradeRefused, closes it, and the connection goes on with nothing left open."""
    async with http_client("2") as conn:
        assert isinstance(conn, http2.H2ClientConnection)
        with pytest.raises(websocket.UpgradeRefused) as info:
            await websocket.connect(conn, "/not-ws", deadline=after(T))
        assert info.value.status == 404 and info.value.body == b"no\n"
        assert not conn._streams  # the refused stream was closed and released
        response = await conn.request("GET", "/plain", deadline=after(T))
        assert response.status == 400
        await response.aclose()


async def test_connect_over_http2_needs_enable_connect_protocol() -> None:
    a, b = memory_pair()

    async def serve() -> None:
        conn = await http2.server(echo_app, enable_connect_protocol=False).attach(b, deadline=after(T))
        await conn.serve(echo_app)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with await http2.client(authority="test", scheme="http").attach(a) as conn:
            with pytest.raises(StackError, match="extended CONNECT"):
                await websocket.connect(conn, "/ws", deadline=after(T))
        nursery.cancel_scope.cancel()
