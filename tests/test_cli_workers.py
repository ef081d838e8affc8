"""``python -m stack serve --workers N``: processes sharing the port with SO_REUSEPORT, supervised.

Connections spread across the workers (each access log line names its pid), a worker killed with
SIGKILL is replaced by a new process that serves, SIGTERM drains them all, and a port that cannot
be shared fails the start. Every process is stopped at the end; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import trio
from test_cli_get import Child, spawn, stack

from layers import http, tcp
from stack import Stack, after

PY = sys.executable
ACCESS = re.compile(r"stack\.access\[(\d+)\] INFO .*\"GET /\S* HTTP/1\.1\" 200")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def fetch(port: int, path: str = "/") -> bytes:
    """One request on a new connection (so the kernel picks a worker each time)."""
    stream = Stack(tcp.connect("127.0.0.1", port), http.client())
    async with await stream.connect(deadline=after(5)) as conn:
        response = await conn.request("GET", path, deadline=after(5))
        body: bytes = await response.read(deadline=after(5))
        assert response.status == 200
        return body


def pids_in_log(child: Child) -> set[int]:
    return {int(pid) for pid in ACCESS.findall(child.err.decode(errors="replace"))}


async def test_workers_share_the_port_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("hello from a worker\n")
    cmd = [PY, "-m", "stack", "serve", str(tmp_path), "--no-tls", "--port", "0", "--workers", "2"]
    with trio.fail_after(120):
        async with spawn(cmd, ready=r"serving on http://127\.0\.0\.1:(\d+)/", stop=signal.SIGTERM) as child:
            port = int((await child.wait_for(r"serving on http://127\.0\.0\.1:(\d+)/")).group(1))
            started = [int(p) for p in re.findall(r"worker \d started: pid (\d+)", child.err.decode())]
            assert len(started) == 2, child.text
            # many new connections: the kernel spreads them over both listening sockets
            for _ in range(60):
                assert await fetch(port) == b"hello from a worker\n"
            for _ in range(200):  # the log lines of the 60 requests
                if len(ACCESS.findall(child.err.decode(errors="replace"))) >= 60:
                    break
                await trio.sleep(0.05)
            assert pids_in_log(child) == set(started), child.text[-3000:]

            # SIGKILL one worker: the supervisor starts a new one, which serves
            victim = started[0]
            os.kill(victim, signal.SIGKILL)
            m = await child.wait_for(r"worker \d restarted: pid (\d+) serves")
            new = int(m.group(1))
            assert new not in started and alive(new)
            assert "killed by SIGKILL" in child.text
            with trio.fail_after(30):
                while new not in pids_in_log(child):
                    await fetch(port)

            # SIGTERM drains everything: the parent and its workers exit cleanly
            child.process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                code = await child.process.wait()
            assert code == 0, child.text[-3000:]
            for _ in range(200):  # the workers are gone too
                if not (alive(started[1]) or alive(new)):
                    break
                await trio.sleep(0.05)
            assert not alive(started[1]) and not alive(new)


async def test_a_port_that_cannot_be_shared_fails_the_start() -> None:
    with socket.socket() as taken:  # listening without SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = await stack("serve", "--no-tls", "--port", str(port), "--workers", "2", limit=60)
    assert result.returncode == 1
    assert b"cannot listen" in result.stderr


async def test_a_worker_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    """(cmd_serve checks DIR first; calling supervise() directly lets the workers meet the error.)"""
    script = (
        "import sys\n"
        "from stack.cli import build_parser\n"
        "from stack.cli.common import setup_logging\n"
        "from stack.cli.workers import supervise\n"
        "args = build_parser().parse_args(['serve', sys.argv[1], '--no-tls', '--port', '0', '--workers', '2'])\n"
        "setup_logging(0)\n"
        "sys.exit(supervise(args))\n"
    )
    with trio.fail_after(60):
        async with spawn([PY, "-c", script, str(tmp_path / "missing")]) as child:
            code = await child.process.wait()
            await child.wait_for(r"serve: worker \d failed to start \(exit status 1\)")
    assert code == 1
    started = [int(p) for p in re.findall(r"worker \d started: pid (\d+)", child.err.decode())]
    assert len(started) == 2 and not any(alive(pid) for pid in started)
