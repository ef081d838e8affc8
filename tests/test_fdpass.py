"""The fd-passing layer: pipes and listening sockets between tasks and between processes, the
limits, ownership (no fd leaks on any path), bad peers, and the conformance kit over Unix."""

from __future__ import annotations

import itertools
import os
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from layers import fdpass, tcp, unix
from layers._socket import SocketStream
from stack import (
    Broken,
    ByteStream,
    EndOfStream,
    MessageStream,
    MessageTooLarge,
    ProtocolError,
    Stack,
    StackError,
    Stream,
    Timeout,
    after,
)
from stack.testing import check_detach, check_message_stream


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raw_pair() -> tuple[SocketStream, socket.socket]:
    """Our Unix stream on one end, a plain stdlib socket (an independent peer) on the other."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = SocketStream(trio.socket.from_stdlib_socket(ours), "unix", {"transport": "unix"})
    return stream, theirs


async def fd_pair(**knobs: int) -> tuple[fdpass.FdStream, fdpass.FdStream]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spec = fdpass.messages(**knobs)
    ends = [SocketStream(trio.socket.from_stdlib_socket(s), "unix", {"transport": "unix"}) for s in (a, b)]
    return await spec.attach(ends[0]), await spec.attach(ends[1])


def frame(body: bytes, count: int) -> bytes:
    return len(body).to_bytes(4, "big") + bytes([count]) + body


# ---- passing fds ---------------------------------------------------------------------------------


async def test_pipe_fd_between_tasks() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair()
        async with a, b:
            r, w = os.pipe()
            try:
                await a.send_fds(b"the write end", [w])
                os.close(w)  # ours: the peer has its own copy now
                data, fds = await b.recv_fds()
                assert data == b"the write end" and len(fds) == 1
                os.write(fds[0], b"through the passed fd")
                os.close(fds[0])
                assert os.read(r, 100) == b"through the passed fd"
                assert os.read(r, 100) == b""  # every copy of the write end is closed
            finally:
                os.close(r)
            await a.send(b"plain")  # a MessageStream as usual
            assert await b.recv_fds() == (b"plain", [])


async def test_listening_socket_fd_between_tasks() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair()
        async with a, b:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
                listening.bind(("127.0.0.1", 0))
                listening.listen()
                port = listening.getsockname()[1]
                await a.send_fds(b"serve this", [listening])
            # The original is closed: the passed copy still listens.
            _, [fd] = await b.recv_fds()
            server_sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
            with server_sock:
                async with await tcp.connect("127.0.0.1", port).connect(deadline=after(5)) as client:
                    conn, _ = await server_sock.accept()
                    with conn:
                        await conn.send(b"accepted on a passed socket")
                        assert await client.recv_exactly(27, deadline=after(5)) == b"accepted on a passed socket"


async def test_several_fds_and_messages_in_order() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair()
        async with a, b:
            pipes = [os.pipe() for _ in range(3)]
            try:
                await a.send(b"zero")
                await a.send_fds(b"two", [pipes[0][1], pipes[1][1]])
                await a.send(b"none")
                await a.send_fds(b"one", [pipes[2][1]])
                got = [await b.recv_fds() for _ in range(4)]
                assert [d for d, _ in got] == [b"zero", b"two", b"none", b"one"]
                assert [len(f) for _, f in got] == [0, 2, 0, 1]
                for (_, fds), targets in zip(got[1::2], [pipes[:2], pipes[2:]], strict=True):
                    for fd, (r, _) in zip(fds, targets, strict=True):
                        os.write(fd, b"!")
                        os.close(fd)
                        assert os.read(r, 1) == b"!"
            finally:
                for r, w in pipes:
                    os.close(r)
                    os.close(w)


async def test_large_message_with_fds_goes_in_several_writes() -> None:
    """A body far over the socket buffer: sendmsg takes a part (the fds ride on its first byte),
    the rest follows through the Unix stream's own sends."""
    with trio.fail_after(10):
        a, b = await fd_pair()
        async with a, b:
            body = bytes(range(256)) * 8192  # 2 MiB
            r, w = os.pipe()
            got: list[tuple[bytes, list[int]]] = []
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    got.append(await b.recv_fds())
                    got.append(await b.recv_fds())

                nursery.start_soon(receive)
                await a.send_fds(body, [r])
                await a.send(b"after")
            assert got[0][0] == body and len(got[0][1]) == 1 and got[1] == (b"after", [])
            os.write(w, b"?")
            assert os.read(got[0][1][0], 1) == b"?"
            for fd in (r, w, got[0][1][0]):
                os.close(fd)


# ---- limits ---------------------------------------------------------------------------------------


async def test_too_many_fds_to_send_is_refused_and_nothing_is_sent() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair(max_fds=2)
        async with a, b:
            r, w = os.pipe()
            try:
                with pytest.raises(MessageTooLarge) as info:
                    await a.send_fds(b"three", [w, w, w])
                assert info.value.limit == 2 and info.value.size == 3
                await a.send(b"next")
                assert await b.recv_fds() == (b"next", [])
            finally:
                os.close(r)
                os.close(w)


async def test_too_many_fds_received_breaks_and_closes_them() -> None:
    with trio.fail_after(5):
        stream, peer = raw_pair()
        receiver = await fdpass.messages(max_fds=2).attach(stream)
        async with receiver:
            r, w = os.pipe()
            before = open_fds()
            _send_with_fds(peer, frame(b"five", 5), [w] * 5)  # a peer with a larger limit
            with pytest.raises(MessageTooLarge, match="max_fds=2"):
                await receiver.recv_fds()
            assert open_fds() == before  # those that fit were closed here, the kernel closed the rest
            with pytest.raises(Broken):
                await receiver.recv()
            os.close(r)
            os.close(w)
        peer.close()


async def test_oversize_body_is_refused_both_ways() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair(max_message=10)
        async with a, b:
            with pytest.raises(MessageTooLarge):
                await a.send(b"x" * 11)
        stream, peer = raw_pair()
        async with await fdpass.messages(max_message=10).attach(stream) as receiver:
            peer.sendall(frame(b"y" * 11, 0))
            with pytest.raises(MessageTooLarge, match="max_message=10"):
                await receiver.recv()
            with pytest.raises(Broken):
                await receiver.recv()
        peer.close()


# ---- ownership: no fd leaks ------------------------------------------------------------------------


async def test_plain_recv_closes_the_fds() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair()
        async with a, b:
            r, w = os.pipe()
            before = open_fds()
            await a.send_fds(b"fds you will not take", [r, w])
            assert await b.recv() == b"fds you will not take"
            assert open_fds() == before
            os.close(r)
            os.close(w)


def _send_with_fds(peer: socket.socket, data: bytes, fds: list[int]) -> None:
    socket.send_fds(peer, [data], fds)


async def test_timeout_keeps_the_fds_and_aclose_closes_held_ones() -> None:
    with trio.fail_after(5):
        stream, peer = raw_pair()
        receiver = await fdpass.messages().attach(stream)
        r, w = os.pipe()
        before = open_fds()
        whole = frame(b"0123456789", 1)
        _send_with_fds(peer, whole[:8], [w])  # the header and 3 bytes of the body, with the fd
        with pytest.raises(Timeout):
            await receiver.recv_fds(deadline=after(0.05))
        assert receiver.held_fds == 1  # kept for the message, which is not whole yet
        peer.sendall(whole[8:])
        data, [fd] = await receiver.recv_fds(deadline=after(5))
        assert data == b"0123456789"
        os.close(fd)
        assert open_fds() == before

        _send_with_fds(peer, whole[:8], [w, r])  # announces 1, carries 2: read on timeout, then refused
        with pytest.raises(Timeout):
            await receiver.recv(deadline=after(0.05))
        assert receiver.held_fds == 2
        with pytest.raises(StackError, match="holds 2 fds"):
            await receiver.detach()
        await receiver.aclose()
        assert open_fds() == before - 1  # the stream's socket closed too, and both held fds
        peer.close()
        os.close(r)
        os.close(w)


async def test_fds_a_message_did_not_announce_are_a_protocol_error() -> None:
    with trio.fail_after(5):
        stream, peer = raw_pair()
        async with await fdpass.messages().attach(stream) as receiver:
            r, w = os.pipe()
            before = open_fds()
            _send_with_fds(peer, frame(b"announces none", 0), [w])
            peer.sendall(frame(b"next", 0))
            assert await receiver.recv() == b"announces none"  # its header came first
            with pytest.raises(ProtocolError, match="announced none"):
                await receiver.recv()
            assert open_fds() == before
            os.close(r)
            os.close(w)
        peer.close()


async def test_missing_fds_are_a_protocol_error() -> None:
    with trio.fail_after(5):
        stream, peer = raw_pair()
        async with await fdpass.messages().attach(stream) as receiver:
            peer.sendall(frame(b"announces two", 2))
            with pytest.raises(ProtocolError, match="announced 2 fds but 0"):
                await receiver.recv_fds()
        peer.close()


async def test_end_of_stream_inside_a_message() -> None:
    with trio.fail_after(5):
        stream, peer = raw_pair()
        async with await fdpass.messages().attach(stream) as receiver:
            peer.sendall(frame(b"whole", 0) + frame(b"cut short", 0)[:7])
            peer.shutdown(socket.SHUT_WR)
            assert await receiver.recv() == b"whole"
            with pytest.raises(ProtocolError, match="ended inside"):
                await receiver.recv()
        peer.close()


async def test_done_is_end_of_stream_for_the_peer() -> None:
    with trio.fail_after(5):
        a, b = await fd_pair()
        async with a, b:
            await a.send(b"last")
            await a.done()
            assert await b.recv() == b"last"
            with pytest.raises(EndOfStream):
                await b.recv_fds()


async def test_bad_input_to_the_api() -> None:
    with pytest.raises(ValueError):
        fdpass.messages(max_fds=254)
    a, _ = trio.testing.memory_stream_pair()
    with pytest.raises(TypeError, match="Unix socket"):
        await fdpass.messages().attach(a)
    with trio.fail_after(5):
        listener = await tcp.listen("127.0.0.1", 0).listen()
        async with listener:
            tcp_stream = await tcp.connect(*listener.address).connect()
            async with tcp_stream:
                with pytest.raises(TypeError, match="Unix socket"):
                    await fdpass.messages().attach(tcp_stream)
        x, y = await fd_pair()
        async with x, y:
            r, w = os.pipe()
            os.close(r)
            os.close(w)
            with pytest.raises(ValueError, match="not an open"):
                await x.send_fds(b"closed fd", [w])
            await x.send(b"still fine")
            assert await y.recv() == b"still fine"


# ---- the conformance kit over Unix sockets ---------------------------------------------------------


def unix_bottom(directory: Path) -> object:
    counter = itertools.count()

    async def make() -> tuple[ByteStream, ByteStream]:
        path = str(directory / f"f{next(counter)}.sock")
        listener = await unix.listen(path).listen()
        async with listener:
            client = await unix.connect(path).connect()
            server = await listener.accept()
        return client, server

    return make


async def test_conformance_over_unix(tmp_path: Path) -> None:
    make_bottom = unix_bottom(tmp_path)

    async def make() -> tuple[MessageStream, MessageStream]:
        a, b = await make_bottom()  # type: ignore[operator]
        spec = fdpass.messages()
        return await spec.attach(a), await spec.attach(b)

    await check_message_stream(make)


async def test_detach_over_unix(tmp_path: Path) -> None:
    async def attach(a: ByteStream, b: ByteStream) -> tuple[Stream, Stream]:
        spec = fdpass.messages()
        return await spec.attach(a), await spec.attach(b)

    await check_detach(unix_bottom(tmp_path), attach)  # type: ignore[arg-type]


# ---- two processes ----------------------------------------------------------------------------------

CHILD = r"""
import os, socket, sys
# An independent peer: the standard library's socket.send_fds / recv_fds and the wire format
# written by hand (4-byte length, 1-byte fd count, body).
def frame(body, count):
    return len(body).to_bytes(4, "big") + bytes([count]) + body
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
r, w = os.pipe()
os.write(w, b"written by the child")
os.close(w)
socket.send_fds(sock, [frame(b"a pipe", 1)], [r])
listening = socket.socket()
listening.bind(("127.0.0.1", 0))
listening.listen()
port = listening.getsockname()[1]
socket.send_fds(sock, [frame(str(port).encode(), 1)], [listening.fileno()])
os.close(r)
listening.close()
# A plain recv() of the bytes that carry fds would make the kernel close them: recv_fds it is.
data, fds, _, _ = socket.recv_fds(sock, 1024, 1)
size, count = int.from_bytes(data[:4], "big"), data[4]
assert len(data) == 5 + size and count == len(fds) == 1
os.write(fds[0], b"the child wrote " + data[5:])
sock.close()
"""


async def test_two_processes(tmp_path: Path) -> None:
    """A child process (the stdlib's SCM_RIGHTS, not our code) passes us a pipe and a listening
    socket and exits; both keep working here. Then we pass it a pipe's write end."""
    path = str(tmp_path / "parent.sock")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await Stack(unix.listen(path), fdpass.messages()).listen()
            async with listener:
                nursery.start_soon(
                    partial(trio.run_process, [sys.executable, "-c", CHILD, path], check=True, capture_stderr=True)
                )
                conn = await listener.accept(deadline=after(10))
            async with conn:
                data, [pipe_r] = await conn.recv_fds(deadline=after(10))
                assert data == b"a pipe"
                with os.fdopen(pipe_r, "rb") as pipe:
                    assert pipe.read() == b"written by the child"
                port_text, [listening_fd] = await conn.recv_fds(deadline=after(10))
                server_sock = trio.socket.from_stdlib_socket(socket.socket(fileno=listening_fd))
                with server_sock:
                    client = await tcp.connect("127.0.0.1", int(port_text)).connect(deadline=after(5))
                    async with client:
                        accepted, _ = await server_sock.accept()
                        accepted.close()
                r, w = os.pipe()
                await conn.send_fds(b"from the parent", [w], deadline=after(10))
                os.close(w)
                with os.fdopen(r, "rb") as pipe:
                    assert pipe.read() == b"the child wrote from the parent"
