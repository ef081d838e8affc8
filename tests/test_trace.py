"""The trace layer: events (Recorder) and log records for every kind of call and outcome,
payload previews off by default, nothing lost by attaching or detaching, the kit at every level."""

from __future__ import annotations

import logging
from collections import deque

import pytest
import trio
from test_udp import DATAGRAMS, udp_pair

from layers import framing, tcp, trace, udp
from stack import Broken, ByteStream, EndOfStream, MessageStream, Stack, Stream, Timeout, after
from stack.testing import chaos_pair, check_bytestream, check_detach, check_message_stream, memory_pair


async def traced_memory(**knobs: object) -> tuple[trace.TracedBytes, ByteStream, trace.Recorder]:
    a, b = memory_pair(capacity=64)
    recorder = trace.Recorder()
    traced = await trace.log(recorder=recorder, **knobs).attach(a)  # type: ignore[arg-type]
    assert isinstance(traced, trace.TracedBytes)
    return traced, b, recorder


async def test_byte_events() -> None:
    with trio.fail_after(5):
        traced, peer, recorder = await traced_memory()
        await traced.send(b"hello")
        assert await peer.recv_exactly(5) == b"hello"
        await peer.send(b"world")
        assert await traced.recv() == b"world"
        await traced.done()
        await peer.done()
        assert await traced.recv() == b""
        await traced.aclose()
        await traced.aclose()  # once only in the trace
        assert recorder.ops() == ["attach", "send", "recv", "done", "recv", "close"]
        send, recv, end = recorder.events[1], recorder.events[2], recorder.events[4]
        assert (send.label, send.size, send.outcome) == ("memory", 5, "ok")  # label: the kind below
        assert (recv.size, recv.outcome, end.outcome) == (5, "ok", "end")
        assert all(e.preview == b"" for e in recorder.events)  # payloads are off by default
        assert all(e.duration >= 0 and e.error is None for e in recorder.events)
        assert recorder.total("send") == 5 and recorder.total("recv") == 5


async def test_preview_and_log_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="stack.trace")
    with trio.fail_after(5):
        traced, peer, recorder = await traced_memory(label="raw", preview=4)
        await traced.send(b"secret payload")
        await peer.recv_exactly(14)
        await traced.aclose()
    assert recorder.events[1].preview == b"secr"
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records[0][:2] == ("stack.trace", logging.INFO) and records[0][2].startswith("raw attach")
    assert records[1][1] == logging.DEBUG and records[1][2].startswith("raw send 14 bytes in ")
    assert records[1][2].endswith("b'secr'")
    assert records[2][1] == logging.INFO and records[2][2].startswith("raw close")


async def test_nothing_logged_when_the_logger_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stack.trace")
    with trio.fail_after(5):
        a, b = memory_pair()
        traced = await trace.log(logger="stack.trace.quiet").attach(a)
        assert isinstance(traced, ByteStream)
        await traced.send(b"x")
        assert await b.recv() == b"x"
        await traced.aclose()
    assert [r for r in caplog.records if r.name.startswith("stack.trace")] == []


async def test_recv_timeout_is_traced_and_loses_nothing() -> None:
    with trio.fail_after(5):
        traced, peer, recorder = await traced_memory()
        with pytest.raises(Timeout):
            await traced.recv(deadline=after(0.01))
        await peer.send(b"late")
        assert await traced.recv() == b"late"
        assert [(e.op, e.outcome) for e in recorder.events[1:]] == [("recv", "timeout"), ("recv", "ok")]


async def test_send_timeout_reports_what_was_committed_and_delivers_it() -> None:
    with trio.fail_after(5):
        traced, peer, recorder = await traced_memory()  # the pipe holds 64 bytes
        with pytest.raises(Timeout) as info:
            await traced.send(b"x" * 100, deadline=after(0.05))
        assert info.value.sent == 100  # committed into the layer: 64 went down, 36 wait
        sends = [e for e in recorder.events if e.op == "send"]
        assert [(e.outcome, e.size) for e in sends] == [("timeout", 64)]
        assert await peer.recv_exactly(64) == b"x" * 64
        await traced.done()  # the rest goes first
        assert await peer.recv_exactly(36) == b"x" * 36
        assert await peer.recv() == b""
        assert [(e.op, e.size) for e in recorder.events[-2:]] == [("send", 36), ("done", None)]


async def test_errors_are_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="stack.trace")
    with trio.fail_after(5):
        traced, peer, recorder = await traced_memory()
        peer.reset()
        with pytest.raises(Broken):
            await traced.recv()
        event = recorder.events[-1]
        assert (event.op, event.outcome) == ("recv", "error") and isinstance(event.error, Broken)
    assert caplog.records[-1].levelno == logging.WARNING and "Broken" in caplog.records[-1].getMessage()


async def test_cancelled_call_is_traced() -> None:
    with trio.fail_after(5):
        traced, _, recorder = await traced_memory()
        with trio.move_on_after(0.01):
            await traced.recv()
        assert recorder.events[-1].outcome == "cancelled"


async def test_detach_hands_back_what_was_read_ahead() -> None:
    with trio.fail_after(5):
        a, b = memory_pair()
        recorder = trace.Recorder()
        traced = await trace.log(recorder=recorder).attach(a)
        assert isinstance(traced, trace.TracedBytes)
        await b.send(b"line one\nrest of the bytes")
        assert await traced.recv_until(b"\n") == b"line one\n"  # the rest was read ahead
        lower = await traced.detach()
        assert lower is a
        assert await a.recv_exactly(17) == b"rest of the bytes"
        assert recorder.events[-1].op == "detach" and recorder.events[-1].size == 17


async def test_message_events_and_end() -> None:
    with trio.fail_after(5):
        a, b = memory_pair()
        recorder = trace.Recorder()
        messages = await trace.log(recorder=recorder, preview=2).attach(await framing.prefix().attach(a))
        peer = await framing.prefix().attach(b)
        assert isinstance(messages, trace.TracedMessages)
        await messages.send(b"one")
        assert await peer.recv() == b"one"
        await peer.send(b"")
        await peer.done()
        assert await messages.recv() == b""
        with pytest.raises(EndOfStream):
            await messages.recv()
        lower = await messages.detach()
        assert isinstance(lower, framing.PrefixStream)
        got = [(e.op, e.outcome, e.size, e.preview) for e in recorder.events]
        assert got == [
            ("attach", "ok", None, b""),
            ("send", "ok", 3, b"on"),
            ("recv", "ok", 0, b""),
            ("recv", "end", None, b""),
            ("detach", "ok", None, b""),
        ]
        assert recorder.events[0].label == "prefix"


async def test_in_a_stack_over_tcp_and_udp_datagrams() -> None:
    with trio.fail_after(10):
        recorder = trace.Recorder()

        async def echo(stream: MessageStream) -> None:
            async for msg in stream:
                await stream.send(msg)

        server = Stack(tcp.listen("127.0.0.1", 0), framing.prefix())
        async with trio.open_nursery() as nursery:
            [(host, port)] = await nursery.start(server.serve, echo)
            client = Stack(tcp.connect(host, port), trace.log("tcp", recorder=recorder), framing.prefix())
            async with await client.connect(deadline=after(5)) as conn:
                await conn.send(b"ping")
                assert await conn.recv(deadline=after(5)) == b"ping"
            nursery.cancel_scope.cancel()
        assert recorder.ops()[0] == "attach" and recorder.ops()[-1] == "close"
        assert recorder.total("send") == 8 and recorder.total("recv") == 8  # 4-byte prefix + 4 bytes

        server_udp = await udp.bind().connect()
        traced = await trace.log(recorder=recorder).attach(server_udp)
        async with traced, await udp.connect(*server_udp.info["local"]).connect() as client_udp:
            await client_udp.send(b"dgram")
            got = await traced.recv()
            assert isinstance(got, udp.Datagram)
            await traced.send(got)  # the address passes through
            assert await client_udp.recv(deadline=after(5)) == b"dgram"


async def test_bad_input() -> None:
    with pytest.raises(ValueError):
        trace.log(preview=-1)
    with pytest.raises(TypeError):
        await trace.log().attach(object())


# ---- the conformance kit ------------------------------------------------------------------------

LAST_EVENTS: deque[trace.Event] = deque(maxlen=1000)
SPEC = trace.log(recorder=LAST_EVENTS.append, preview=8)  # recording and previews on: the busiest path


async def attach_both(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
    return await SPEC.attach(a), await SPEC.attach(b)


async def traced_chaos() -> tuple[ByteStream, ByteStream]:
    return await attach_both(*chaos_pair(capacity=4096))  # type: ignore[return-value]


async def traced_tcp() -> tuple[ByteStream, ByteStream]:
    listener = await tcp.listen("127.0.0.1", 0).listen()
    async with listener:
        c = await tcp.connect(*listener.address).connect(deadline=after(5))
        s = await listener.accept(deadline=after(5))
    return await attach_both(c, s)  # type: ignore[return-value]


async def test_conformance_bytes_over_chaos() -> None:
    await check_bytestream(traced_chaos)
    assert {e.op for e in LAST_EVENTS} >= {"send", "recv", "close"}


async def test_conformance_bytes_over_tcp() -> None:
    await check_bytestream(traced_tcp)


async def test_detach_over_memory_and_chaos() -> None:
    async def memory() -> tuple[ByteStream, ByteStream]:
        return memory_pair(capacity=4096)

    async def chaos() -> tuple[ByteStream, ByteStream]:
        return chaos_pair(capacity=4096)

    await check_detach(memory, attach_both)
    await check_detach(chaos, attach_both)


async def test_conformance_messages_over_prefix_over_chaos() -> None:
    async def make() -> tuple[MessageStream, MessageStream]:
        a, b = chaos_pair(capacity=4096)
        spec = framing.prefix()
        return await SPEC.attach(await spec.attach(a)), await SPEC.attach(await spec.attach(b))  # type: ignore[return-value]

    await check_message_stream(make)


async def test_conformance_messages_over_udp() -> None:
    async def make() -> tuple[MessageStream, MessageStream]:
        a, b = await udp_pair()
        return await SPEC.attach(a), await SPEC.attach(b)  # type: ignore[return-value]

    await check_message_stream(make, messages=DATAGRAMS, eof=False)
