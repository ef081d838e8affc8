"""A hand-written minimal HTTP/1.1 server: h11 on trio, the reference peer for the http1 groups.

    python -m benchmarks.peers.h11_server --port 8080

Any request gets ``200`` with the 13-byte body ``Hello, world!``.  Keep-alive as HTTP/1.1 says;
``Connection: close`` from the client (or HTTP/1.0 without keep-alive) closes after the response.
The request body, if any, is read and discarded.  Response head and body go out in one send.
Prints ``serving on http://HOST:PORT/`` when listening.  No idle timeout (the http1-mem group
holds idle connections on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import sys

import h11
import trio

BODY = b"Hello, world!"
HEADERS = [("content-type", "text/plain"), ("content-length", str(len(BODY)))]
RECV = 65536


def _response(conn: h11.Connection) -> bytes:
    return b"".join(
        (
            conn.send(h11.Response(status_code=200, headers=HEADERS, reason=b"OK")) or b"",
            conn.send(h11.Data(data=BODY)) or b"",
            conn.send(h11.EndOfMessage()) or b"",
        )
    )


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECV))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(_response(conn))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # MUST_CLOSE: Connection: close, HTTP/1.0, ...
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                break
            # Request / Data: nothing to do until the request is complete.
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                head = h11.Response(
                    status_code=exc.error_status_hint,
                    headers=[("content-length", "0"), ("connection", "close")],
                )
                await stream.send_all((conn.send(head) or b"") + (conn.send(h11.EndOfMessage()) or b""))
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
    with contextlib.suppress(ValueError, OSError):  # many idle connections in http1-mem
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.host, args.port)
    sys.exit(0)


if __name__ == "__main__":
    main()
