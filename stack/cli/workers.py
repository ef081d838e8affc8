"""``python -m stack serve --workers N``: N server processes sharing one port, supervised.

::

    python -m stack serve DIR --no-tls --port 8080 --workers 4

The parent process does not serve: it reserves the port (a socket bound with ``SO_REUSEPORT``
and never listening, so ``--port 0`` picks one port for all and no other program can take it
while a worker restarts), then starts N workers. Each worker is ``python -m stack.cli.workers``
running the ordinary ``serve`` (:func:`stack.cli.serve.serve`) with ``tcp.listen(...,
reuse_port=True)``: the kernel spreads new connections across the N listening sockets. The parent
prints one ``serving on URL`` line once every worker is ready.

Supervision:

* A worker that exits on its own (a crash, a signal from elsewhere) is restarted with backoff:
  0.5 s, doubling for each crash in a row up to 30 s; a worker that ran for 30 s or more counts
  as a fresh start. A worker that fails before its first ``serving on`` at startup stops
  everything (a bad argument, a port in use): the parent exits 1.
* SIGTERM or SIGINT to the parent drains all: the signal is forwarded to every worker (each
  closes its listener and finishes what is in flight, as ``serve`` does), the parent waits up to
  ``Limits.drain_timeout`` plus a margin, then kills what is left. A second signal is forwarded
  too (the workers then stop at once). Workers run in their own process group, so a Ctrl-C in a
  terminal reaches them once, through the parent.
* A worker whose parent vanished (SIGKILL) notices (its stdin, a pipe from the parent, ends)
  and drains and exits by itself.

Every log line of a worker carries its pid (``stack.access[1234]``), so the access log shows
which process served each request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import trio

from layers import certs
from layers.http import DEFAULT_LIMITS
from stack.cli.common import failure_line, raise_nofile, setup_logging, tls_layer, url
from stack.cli.serve import serve

__all__ = ["ARGS_ENV", "BACKOFF_MAX", "Supervisor", "Worker", "supervise", "worker_main"]

log = logging.getLogger("stack.cli.workers")

ARGS_ENV = "TRIO_STACK_WORKER_ARGS"
"""Environment variable carrying the worker's ``serve`` arguments (JSON) from the parent."""

BACKOFF_FIRST = 0.5
"""Seconds before the first restart of a crashed worker."""

BACKOFF_MAX = 30.0
"""Most seconds between restarts; also how long a worker must run to reset its backoff."""

START_TIMEOUT = 60.0
"""Seconds a worker has to print ``serving on`` before it is killed (and restarted)."""

KILL_MARGIN = 5.0
"""Seconds past the drain timeout before the parent kills the workers that are left."""

WORKER_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class _Startup(Exception):
    """A worker failed before it was ever ready: the whole server cannot start."""


class Worker:
    """One worker slot: its current process (replaced on restart) and how it is doing."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.ready = trio.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The pid of the current process, if one is running."""
        p = self.process
        return p.pid if p is not None and p.returncode is None else None


class Supervisor:
    """Starts, watches and restarts ``count`` workers; forwards signals; see the module docstring."""

    def __init__(self, args: argparse.Namespace, count: int, port: int, drain_timeout: float) -> None:
        self.count = count
        self.port = port
        self.drain_timeout = drain_timeout
        self.stopping = False
        self.workers = [Worker(i) for i in range(count)]
        values = {k: v for k, v in vars(args).items() if k != "func"}
        values.update(port=port, workers=count)
        self.env = dict(os.environ, **{ARGS_ENV: json.dumps(values)})
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), self.env.get("PYTHONPATH")]))

    async def run(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every worker until a signal drains them; print ``serving on`` once all are ready."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for w in self.workers:
                    nursery.start_soon(self._keep, w)
                for w in self.workers:
                    await w.ready.wait()
                print(f"serving on {url}", flush=True)
                log.info("%d workers ready: pids %s", self.count, " ".join(str(w.pid) for w in self.workers))
                task_status.started()
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not self.stopping:
                        log.warning("%s: draining %d workers (a second signal stops them at once)", name, self.count)
                        self.stopping = True
                        nursery.start_soon(self._stop_all, nursery.cancel_scope)
                    self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    w.process.send_signal(signum)

    async def _stop_all(self, scope: trio.CancelScope) -> None:
        """Wait for the drained workers to exit; past the drain timeout, kill them."""
        with trio.move_on_after(self.drain_timeout + KILL_MARGIN):
            for w in self.workers:
                if w.process is not None:
                    await w.process.wait()
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                log.warning("worker %d did not drain in time: killing it", w.process.pid)
                w.process.kill()
                await w.process.wait()
        scope.cancel()

    async def _keep(self, w: Worker) -> None:
        """Keep worker slot ``w`` running: start it, wait for it, restart it with backoff."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            started = trio.current_time()
            code = await self._run_once(w)
            if self.stopping:
                return
            lived = trio.current_time() - started
            if lived >= BACKOFF_MAX:
                delay = BACKOFF_FIRST
            log.warning("worker %d exited (%s) after %.1fs: restarting it in %.1fs",
                        w.index, _describe(code), lived, delay)  # fmt: skip
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            w.restarts += 1

    async def _run_once(self, w: Worker) -> int:
        """Start one process for ``w``, mark it ready at its ``serving on`` line, return its exit
        status. A process that never got ready during the first start raises :class:`_Startup`.
        If this task is cancelled (the drain timed out, startup failed elsewhere), the process
        is killed."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "stack.cli.workers"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, process_group=0,
        )  # fmt: skip
        w.process = process
        log.info("worker %d started: pid %d", w.index, process.pid)
        first_start = not w.ready.is_set()
        try:
            assert process.stdout is not None
            ready = False
            with trio.move_on_after(START_TIMEOUT) as scope:
                ready = await _wait_ready(process.stdout)
            if not ready:
                if scope.cancelled_caught:
                    log.warning("worker %d (pid %d) was not ready within %gs: killing it",
                                w.index, process.pid, START_TIMEOUT)  # fmt: skip
                    process.kill()
                code = await process.wait()
                if first_start and not self.stopping:
                    raise _Startup(f"worker {w.index} failed to start ({_describe(code)})")
                return code
            w.ready.set()
            if not first_start:
                log.info("worker %d restarted: pid %d serves", w.index, process.pid)
            await _drain(process.stdout)
            return await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()


async def _wait_ready(stdout: trio.abc.ReceiveStream) -> bool:
    """Read the worker's stdout until its ``serving on`` line; False if it ended first."""
    seen = b""
    while b"serving on" not in seen or not seen.endswith(b"\n"):
        chunk = await stdout.receive_some()
        if not chunk:
            return False
        seen = seen[-4096:] + chunk
    return True


async def _drain(stdout: trio.abc.ReceiveStream) -> None:
    while await stdout.receive_some():
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _repo_root() -> str:
    """The directory holding the ``stack`` package (so workers import the same code)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (never listen) a ``SO_REUSEPORT`` socket on ``host:port``: it fixes the port for
    every worker and keeps it ours while they restart. OSError if the port is taken."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def supervise(args: argparse.Namespace) -> int:
    """Run ``serve`` as ``args.workers`` supervised processes; return the exit status.

    ``args`` are the parsed ``serve`` arguments (already checked by ``cmd_serve``); the workers
    get them as they are, with the port fixed. Without ``--cert``, the cached ``localhost``
    certificate is resolved here once, so every worker uses the same files.
    """
    if args.workers < 1:
        print("serve: --workers needs a number of processes, at least 1", file=sys.stderr)
        return 2
    if not hasattr(socket, "SO_REUSEPORT"):
        print("serve: --workers needs SO_REUSEPORT, which this system lacks", file=sys.stderr)
        return 1
    if not args.no_tls and not args.cert:
        args.cert, args.key, _ = certs.localhost_pair(certs.default_cache_dir())
    try:
        reserved = _reserve(args.host, args.port)
    except OSError as exc:
        print(f"serve: {failure_line(exc, f'{args.host}:{args.port}')}", file=sys.stderr)
        return 1
    with reserved:
        host, port = reserved.getsockname()[:2]
        address = url("http" if args.no_tls else "https", (host, port))
        supervisor = Supervisor(args, args.workers, port, DEFAULT_LIMITS.drain_timeout)
        try:
            trio.run(supervisor.run, address)
        except _Startup as exc:
            print(f"serve: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # pragma: no cover - the signal receiver normally takes it
            return 130
        except BaseExceptionGroup as group:
            startup = group.subgroup(_Startup)
            if startup is None:
                raise
            print(f"serve: {startup.exceptions[0]}", file=sys.stderr)
            return 1
    log.info("all workers stopped")
    return 0


# --------------------------------------------------------------------------------------------------
# the worker process


async def _watch_parent(stdin: Any) -> None:
    """Return once stdin (a pipe from the parent) ends: the parent is gone."""
    while await stdin.receive_some():
        pass


async def _worker(args: argparse.Namespace, layer: Any) -> None:
    async with trio.open_nursery() as nursery:

        async def orphaned() -> None:
            await _watch_parent(trio.lowlevel.FdStream(os.dup(0)))
            log.warning("the parent process is gone: draining")
            os.kill(os.getpid(), signal.SIGTERM)  # the same graceful path as a signal

        nursery.start_soon(orphaned)
        await serve(args, layer)
        nursery.cancel_scope.cancel()


def worker_main() -> int:
    """Entry point of a worker process (``python -m stack.cli.workers``): ``serve`` with the
    arguments from :data:`ARGS_ENV` and ``SO_REUSEPORT`` on the listening socket."""
    raw = os.environ.get(ARGS_ENV)
    if raw is None:
        print("stack.cli.workers: started by `python -m stack serve --workers N`, not by hand", file=sys.stderr)
        return 2
    args = argparse.Namespace(**json.loads(raw))
    setup_logging(args.verbose)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(WORKER_FORMAT))
    raise_nofile()
    try:
        layer = None if args.no_tls else tls_layer(args)
        trio.run(_worker, args, layer)
    except Exception as exc:
        from stack.errors import Broken

        cause = _single(exc)
        if isinstance(cause, OSError | ValueError | Broken):  # cannot listen, a bad root or certificate
            print(f"serve worker {os.getpid()}: {cause}", file=sys.stderr)
            return 1
        raise
    return 0


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one member, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(worker_main())
