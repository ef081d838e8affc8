"""trio's ceiling for HTTP/1.1: a SocketStream that answers a canned response per request head.

    python -m benchmarks.peers.raw_trio_server --port 8080

No HTTP parsing at all: each read is appended to a buffer, every complete request head in it (up
to ``\\r\\n\\r\\n``) is answered with the same pre-built ``200`` and 13-byte body ``Hello, world!``,
and all the answers to one read go out in one ``send_all``.  Request bodies are not supported (the
benchmarks send none).  The one concession to HTTP: a head containing ``connection: close`` (any
case) gets the canned answer with ``connection: close`` and the connection ends after it, else
wrk's ``Connection: close`` row would measure keep-alive.  What is left is the cost of trio itself
(task per connection, ``receive_some`` / ``send_all``, the epoll loop): the figure no HTTP server on
trio can beat.  Also the backend of the ``proxy`` group and the HTTP/1.1 server of the ``client``
group, where the server must not be the bottleneck.  Prints ``serving on URL`` when listening.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import sys

import trio

BODY = b"Hello, world!"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % len(BODY)
KEEP = HEAD + b"\r\n" + BODY
CLOSE = HEAD + b"connection: close\r\n\r\n" + BODY
RECV = 65536


async def handle(stream: trio.SocketStream) -> None:
    buf = b""
    try:
        while True:
            data = await stream.receive_some(RECV)
            if not data:
                return
            buf += data
            out = []
            end = buf.find(b"\r\n\r\n")
            while end >= 0:
                head, buf = buf[:end], buf[end + 4 :]
                if b"connection: close" in head.lower():
                    out.append(CLOSE)
                    await stream.send_all(b"".join(out))
                    return
                out.append(KEEP)
                end = buf.find(b"\r\n\r\n")
            if out:
                await stream.send_all(out[0] if len(out) == 1 else b"".join(out))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def serve(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, port, host=host))
        bound = listeners[0].socket.getsockname()
        print(f"serving on http://{bound[0]}:{bound[1]}/", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.host, args.port)
    sys.exit(0)


if __name__ == "__main__":
    main()
