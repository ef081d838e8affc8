"""Group `h2-mem`: server memory per idle TLS HTTP/2 connection, KiB (lower is better).

A client process (pinned to CPU 1) warms the server up (20 connections, one request each, closed),
then the runner reads the server's VmRSS; the client opens K TLS connections (1,000; 200 with
--quick), ALPN ``h2``, makes one request on each (``GET /``, the 13-byte body) and leaves them idle;
after a second of quiet the runner reads VmRSS again.  Figure: (after - before) / K.  The client then
checks every connection is still open (one the server dropped is counted in "notes").

Servers: those of the `h2-tls` group (same certificate).  Run the client by hand:
``python -m benchmarks.bench_h2_mem client --port P --connections 100`` (then "open", "check",
"quit" on stdin).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import select
import socket
import ssl
import sys

from benchmarks.bench_h2_tls import TLS_SERVERS
from benchmarks.bench_http1_mem import idle_connection_cost
from benchmarks.harness import (
    Failed,
    Group,
    Measurement,
    Running,
    ServerContender,
    Settings,
    register,
)

WARMUP = 20


def idle_tls_h2_cost(server: Running, connections: int) -> Measurement:
    """KiB of server RSS per idle TLS HTTP/2 connection, measured as http1-mem does."""
    return idle_connection_cost(
        server, connections, client_module="benchmarks.bench_h2_mem", warm_timeout=60, open_rate=20
    )


def load(server: Running, settings: Settings) -> Measurement:
    return idle_tls_h2_cost(server, 200 if settings.quick else 1000)


register(
    Group(
        name="h2-mem",
        title="server RSS per idle TLS HTTP/2 connection after one request (1000; 200 with --quick)",
        unit="KiB/conn",
        baseline=TLS_SERVERS[0][0].name,
        contenders=[ServerContender(server.name, server, load) for server, _ in TLS_SERVERS],
        rounds=3,
        higher_is_better=False,
        order=43,
    )
)


# --------------------------------------------------------------------------- the client process


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    return ctx


def request(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """TLS, ALPN h2, one GET answered in full; return the still-open socket."""
    import h2.config
    import h2.connection
    import h2.events

    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        if sock.selected_alpn_protocol() != "h2":
            raise Failed(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"localhost")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                raise Failed("server closed the connection before answering")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                    done = True
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return sock
    except BaseException:
        sock.close()
        raise


def count_open(socks: list[ssl.SSLSocket]) -> int:
    """Sockets still open: the server's close (or GOAWAY) makes one readable."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return len(socks) - len(poller.poll(0))


def client(port: int, connections: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = _context()
    for _ in range(WARMUP):
        request(port, ctx).close()
    print("WARM", flush=True)
    socks: list[ssl.SSLSocket] = []
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "open":
                socks.extend(request(port, ctx) for _ in range(connections))
                print(f"HELD {len(socks)}", flush=True)
            elif cmd == "check":
                print(f"OPEN {count_open(socks)}", flush=True)
            elif cmd == "quit":
                break
    finally:
        for s in socks:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="the idle-connection client of the h2-mem group")
    parser.add_argument("role", choices=["client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    try:
        client(args.port, args.connections)
    except (Failed, OSError) as exc:
        sys.exit(f"client: {exc}")


if __name__ == "__main__":
    main()
