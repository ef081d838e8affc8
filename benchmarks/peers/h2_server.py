"""A hand-written minimal HTTP/2 server: h2 on trio, the reference peer for the h2 group.

    python -m benchmarks.peers.h2_server --port 8080                         # cleartext, prior knowledge
    python -m benchmarks.peers.h2_server --port 8443 --cert c.pem --key k.pem  # TLS, ALPN h2

Every request gets ``200`` with the 13-byte body ``Hello, world!`` once the request has ended
(END_STREAM).  One task per connection, no task per stream: read, feed h2, answer, write what h2
produced in one send.  Request bodies are discarded and their flow-control credit is given back
(``acknowledge_received_data``), so uploads do not stall.  Response bodies respect the peer's
windows and frame size: what does not fit waits for WINDOW_UPDATE.  A GOAWAY from the client, a
protocol error or EOF ends the connection.  Prints ``serving on URL`` when listening.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

BODY = b"Hello, world!"
HEADERS = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]
RECV = 65536


class Responder:
    """h2 state for one connection, plus response bodies waiting for flow-control window."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.pending: dict[int, bytes] = {}

    def respond(self, stream_id: int) -> None:
        try:
            self.conn.send_headers(stream_id, HEADERS)
        except h2.exceptions.StreamClosedError:
            return  # reset by the peer in the same read
        self.push(stream_id, BODY)

    def push(self, stream_id: int, body: bytes) -> None:
        """Send as much of `body` as the windows allow; keep the rest in `pending`."""
        conn = self.conn
        try:
            while True:
                n = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(body))
                if n == len(body):
                    conn.send_data(stream_id, body, end_stream=True)
                    self.pending.pop(stream_id, None)
                    return
                if n <= 0:
                    self.pending[stream_id] = body
                    return
                conn.send_data(stream_id, body[:n])
                body = body[n:]
        except h2.exceptions.StreamClosedError:
            self.pending.pop(stream_id, None)

    def handle(self, events: list[h2.events.Event]) -> bool:
        """React to events; return False when the connection should end."""
        for ev in events:
            if isinstance(ev, h2.events.StreamEnded):
                self.respond(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated):
                ids = list(self.pending) if ev.stream_id == 0 else [ev.stream_id]
                for sid in ids:
                    if sid in self.pending:
                        self.push(sid, self.pending[sid])
            elif isinstance(ev, h2.events.StreamReset):
                self.pending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return False
        return True


async def handle(stream: trio.abc.Stream) -> None:
    r = Responder()
    r.conn.initiate_connection()
    try:
        await stream.send_all(r.conn.data_to_send())
        alive = True
        while alive:
            data = await stream.receive_some(RECV)
            if not data:
                break
            try:
                alive = r.handle(r.conn.receive_data(data))
            except h2.exceptions.ProtocolError:
                alive = False  # h2 has queued a GOAWAY; send it and stop
            out = r.conn.data_to_send()
            if out:
                await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def serve(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    async with trio.open_nursery() as nursery:
        if ctx is None:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, port, host=host))
        else:
            listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, handle, port, ctx, host=host))
        sock = listeners[0].socket if ctx is None else listeners[0].transport_listener.socket
        bound = sock.getsockname()
        scheme = "http" if ctx is None else "https"
        print(f"serving on {scheme}://{bound[0]}:{bound[1]}/", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cert", help="PEM certificate chain: serve TLS with ALPN h2")
    parser.add_argument("--key", help="PEM private key for --cert")
    args = parser.parse_args()
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = tls_context(args.cert, args.key) if args.cert else None
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.host, args.port, ctx)
    sys.exit(0)


if __name__ == "__main__":
    main()
