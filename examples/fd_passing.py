"""Passing file descriptors between processes: a supervisor hands its listening socket to a worker.

The story: the supervisor opens a TCP listening socket and a pipe, starts a worker process
(this same file with ``--worker``), and sends it, over a Unix socket with the ``fdpass`` layer,
one message carrying two fds: the listening socket and the pipe's write end. It then closes its
own copies. The worker accepts a connection on the socket it was given (the supervisor, as a
client, sends ``hello``; the worker answers ``HELLO``) and reports through the pipe. The port
never moved: the socket itself did. This is how zero-downtime restarts and privilege separation
hand sockets around.

Ownership is explicit: ``send_fds`` leaves the sender's fds open (the peer gets duplicates);
``recv_fds`` gives the receiver new fds that are its own to close or wrap.

Run it: ``python examples/fd_passing.py``
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from functools import partial

import trio

from layers import fdpass, tcp, unix
from stack import Stack, after


async def worker(path: str) -> None:
    """The worker process: receive a listening socket and a pipe, serve one connection."""
    stream = await unix.connect(path).connect(deadline=after(5))
    async with await fdpass.messages(max_fds=2).attach(stream) as channel:
        note, [listen_fd, report_fd] = await channel.recv_fds(deadline=after(5))
    with trio.socket.from_stdlib_socket(socket.socket(fileno=listen_fd)) as listening:
        conn, _ = await listening.accept()
        with conn:
            data = await conn.recv(100)
            await conn.send(data.upper())
    async with trio.lowlevel.FdStream(report_fd) as report:
        await report.send_all(f"worker {os.getpid()} got {note.decode()!r} and served one connection".encode())


async def supervisor() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "supervisor.sock")
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        host, port = listening.getsockname()
        report_r, report_w = os.pipe()
        print(f"supervisor {os.getpid()}: listening on {host}:{port}, starting a worker")

        async with trio.open_nursery() as nursery:
            listener = await Stack(unix.listen(path), fdpass.messages(max_fds=2)).listen()
            async with listener:
                command = [sys.executable, __file__, "--worker", path]
                nursery.start_soon(partial(trio.run_process, command, check=True))
                channel = await listener.accept(deadline=after(10))
            async with channel:
                await channel.send_fds(b"serve this port", [listening, report_w], deadline=after(5))
            listening.close()  # ours: the worker has its own copies now
            os.close(report_w)

            async with await tcp.connect(host, port).connect(deadline=after(5)) as client:
                await client.send(b"hello")
                reply = await client.recv_exactly(5, deadline=after(5))
            print(f"client: the worker answered {reply!r} on port {port}")
            assert reply == b"HELLO"

            report = bytearray()
            async with trio.lowlevel.FdStream(report_r) as pipe:
                while chunk := await pipe.receive_some():
                    report += chunk
            print(f"report through the passed pipe: {report.decode()}")
    print("done")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        trio.run(worker, sys.argv[2])
    else:
        trio.run(supervisor)
