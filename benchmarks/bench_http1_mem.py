"""Group `http1-mem`: server memory per idle HTTP/1.1 keep-alive connection.

A client process (pinned to CPU 1) first warms the server up (20 connections, one request each,
closed), then the runner reads the server's VmRSS from /proc/PID/status; the client opens K
keep-alive connections (4,000; 500 with --quick), makes one request on each and leaves them idle;
after a second of quiet the runner reads VmRSS again.  Figure: (after - before) / K in KiB.  The
client then checks that every connection is still open: connections the server dropped before the
second reading are counted in "notes" (they would make a server look lighter than it is).

The helper :func:`idle_connection_cost` is the reusable part: any group whose load step is "hold K
idle connections" can call it with a running server.

Run the client by hand:  python -m benchmarks.bench_http1_mem client --port P --connections 100
(then type "open", "check", "quit" on stdin).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import select
import socket
import sys
import time

from benchmarks import servers
from benchmarks.harness import (
    LOAD_CPU,
    PY,
    Failed,
    Group,
    Measurement,
    Proc,
    Running,
    ServerContender,
    Settings,
    pinned,
    register,
    rss_kib,
)

WARMUP = 20
SETTLE = 1.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: trio-stack-bench\r\n\r\n"


def idle_connection_cost(
    server: Running,
    connections: int,
    *,
    client_module: str = "benchmarks.bench_http1_mem",
    warm_timeout: float = 30,
    open_rate: float = 50,
) -> Measurement:
    """KiB of server RSS per idle connection (one request each), measured as above.

    ``client_module`` is run as the client process (``client --port P --connections N``; it
    speaks the WARM / open / HELD / check / OPEN / quit protocol on stdin and stdout);
    ``open_rate`` is the connections per second it is allowed when opening them.
    """
    cmd = [
        PY,
        "-m",
        client_module,
        "client",
        "--port",
        str(server.port),
        "--connections",
        str(connections),
    ]
    client = Proc(pinned(cmd, LOAD_CPU), stdin=True)
    try:
        client.wait_for_output(r"^WARM$", warm_timeout, stderr_too=False)
        time.sleep(SETTLE / 2)
        before = rss_kib(server.pid)
        client.send_line("open")
        client.wait_for_output(r"^HELD \d+$", warm_timeout + connections / open_rate, stderr_too=False)
        time.sleep(SETTLE)
        after = rss_kib(server.pid)
        client.send_line("check")
        still_open = int(client.wait_for_output(r"^OPEN (\d+)$", 30, stderr_too=False).group(1))
        client.send_line("quit")
        client.wait(30)
    finally:
        client.stop()
        client.close_files()
    dropped = connections - still_open
    note = "idle connections closed by the server before measuring" if dropped else ""
    return Measurement((after - before) / connections, dropped, note)


def load(server: Running, settings: Settings) -> Measurement:
    return idle_connection_cost(server, 500 if settings.quick else 4000)


register(
    Group(
        name="http1-mem",
        title="server RSS per idle HTTP/1.1 keep-alive connection after one request (4000; 500 with --quick)",
        unit="KiB/conn",
        baseline=servers.HTTP1_MEM[0][0].name,
        contenders=[ServerContender(server.name, server, load, target=target) for server, target in servers.HTTP1_MEM],
        rounds=3,
        higher_is_better=False,
        order=35,
    )
)


# --------------------------------------------------------------------------- the client process


def request(port: int) -> socket.socket:
    """Connect, send one GET, read the whole response; return the still-open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(REQUEST)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                raise Failed("server closed the connection before answering")
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise Failed(f"unexpected response {head[:40]!r}")
        m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        length = int(m.group(1)) if m else 0
        while len(body) < length:
            data = sock.recv(4096)
            if not data:
                raise Failed("server closed the connection mid-body")
            body += data
        return sock
    except BaseException:
        sock.close()
        raise


def count_open(socks: list[socket.socket]) -> int:
    """Sockets with nothing to read: a server that closed one makes it readable (EOF)."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return len(socks) - len(poller.poll(0))


def client(port: int, connections: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for _ in range(WARMUP):
        request(port).close()
    print("WARM", flush=True)
    socks: list[socket.socket] = []
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "open":
                socks.extend(request(port) for _ in range(connections))
                print(f"HELD {len(socks)}", flush=True)
            elif cmd == "check":
                print(f"OPEN {count_open(socks)}", flush=True)
            elif cmd == "quit":
                break
    finally:
        for s in socks:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="the idle-connection client of the http1-mem group")
    parser.add_argument("role", choices=["client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4000)
    args = parser.parse_args()
    try:
        client(args.port, args.connections)
    except (Failed, OSError) as exc:
        sys.exit(f"client: {exc}")


if __name__ == "__main__":
    main()
