"""Group `proxy`: HTTP/2 requests per second through a reverse proxy, `python -m stack proxy` against
nghttpx and HAProxy in front of the same backend, on the same pinning.

    h2load -c10 -m10 -n N http://127.0.0.1:P/   -> the proxy (h2c in, prior knowledge)
                                                  -> HTTP/1.1, kept alive -> the backend

N = 20000 (5000 with --quick).  The backend is benchmarks/peers/raw_trio_server.py (a canned answer
per request head, about 5x our HTTP/1.1 server's rate): it must not be what limits the figure.

Pinning (2 cores): the proxy alone on CPU 0; the backend *and* h2load on CPU 1.  So the proxy has
a core to itself and the ratio between proxies is the ratio of their own costs; while the proxy is
the slowest part, the backend and h2load sharing a core does not show.  A proxy fast enough to
saturate CPU 1 (nghttpx and HAProxy may) is held to that core's rate, which flatters the ratio
ours / it.  With three processes for two cores there is no pinning without such a compromise; this
one keeps ours measured on a core of its own, which is what the target is about.

Each proxy gets the same backend connection budget: at most 64 kept-alive connections (`stack
proxy`'s default pool; nghttpx ``--backend-connections-per-frontend=64``; HAProxy ``maxconn 64`` on
the server line, ``http-reuse always``), one worker thread (nghttpx ``--single-process
--single-thread``, HAProxy ``nbthread 1``), no access log.  Baseline: nghttpx.  Under the table,
ours / each peer, with issue 16's target (>= 0.5x nghttpx).  h2load's failed requests and non-2xx
answers show in "notes".
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.bench_h2 import parse_h2load
from benchmarks.harness import (
    LOAD_CPU,
    PY,
    SERVER_CPU,
    Contender,
    Failed,
    Group,
    Measurement,
    Proc,
    Running,
    Settings,
    free_port,
    pinned,
    register,
    run_load,
)

POOL = 64  # backend connections each proxy may keep: stack proxy's default --pool-size


def requests(settings: Settings) -> int:
    return 5000 if settings.quick else 20000


def h2load(server: Running, settings: Settings) -> Measurement:
    out = run_load(["h2load", "-c10", "-m10", f"-n{requests(settings)}", server.url], timeout=180)
    return parse_h2load(out)


# A front-end command: (its port, the backend's port, a scratch directory) -> argv.
Front = Callable[[int, int, Path], list[str]]


class ProxyContender(Contender):
    """A proxy pinned to SERVER_CPU in front of the raw-trio backend pinned to LOAD_CPU, h2load
    (LOAD_CPU) against the proxy; fresh processes for every measurement.  This class is ours
    (``stack proxy``); :class:`PeerProxy` runs another program the same way."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(
            name,
            requires=["stack.__main__", "stack.cli.proxy", "layers.reverse_proxy"],
            probe=[PY, "-m", "stack", "proxy", "--help"],
            tools=["h2load"],
            **kw,
        )
        self.front: Front = stack_proxy
        self.ready: str | None = r"serving on"

    def measure(self, settings: Settings) -> Measurement:
        bport, pport = free_port(), free_port()
        scratch = Path(tempfile.mkdtemp(prefix="trio-stack-bench-proxy-"))
        backend = Proc(pinned([part.format(port=bport) for part in servers.RAW_TRIO.cmd], LOAD_CPU))
        proxy: Proc | None = None
        try:
            backend.wait_for_output(r"serving on", 20)
            backend.wait_for_port(bport, 20)
            proxy = Proc(pinned(self.front(pport, bport, scratch), SERVER_CPU))
            if self.ready:
                proxy.wait_for_output(self.ready, 20)
            proxy.wait_for_port(pport, 20)
            result = h2load(Running(proxy, pport), settings)
            for p, what in ((backend, "backend"), (proxy, "proxy")):
                if p.exited():
                    raise Failed(f"{what} {p.describe_exit()}")
            return result
        finally:
            for p in (proxy, backend):
                if p is not None:
                    p.stop()
                    p.close_files()
            shutil.rmtree(scratch, ignore_errors=True)


class PeerProxy(ProxyContender):
    """Another proxy program (`front` builds its command) in ProxyContender's place."""

    def __init__(self, name: str, front: Front, *, tools: list[str], **kw: Any) -> None:
        # Contender's __init__, not ProxyContender's: a peer needs none of stack's modules.
        Contender.__init__(self, name, tools=[*tools, "h2load"], **kw)
        self.front = front
        self.ready = None


def stack_proxy(pport: int, bport: int, scratch: Path) -> list[str]:
    return [PY, "-m", "stack", "proxy", "--listen", f"127.0.0.1:{pport}", "--upstream", f"http://127.0.0.1:{bport}",
            "--no-tls", "--quiet", "--pool-size", str(POOL)]  # fmt: skip


def nghttpx(pport: int, bport: int, scratch: Path) -> list[str]:
    return [
        "nghttpx",
        "--conf=/dev/null",  # not /etc/nghttpx/nghttpx.conf
        f"--frontend=127.0.0.1,{pport};no-tls",
        f"--backend=127.0.0.1,{bport}",
        "--single-process",
        "--single-thread",
        "--workers=1",
        f"--backend-connections-per-frontend={POOL}",
    ]


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 1000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend front
    bind 127.0.0.1:{pport} proto h2
    default_backend back
backend back
    server b 127.0.0.1:{bport} maxconn {pool}
"""


def haproxy(pport: int, bport: int, scratch: Path) -> list[str]:
    cfg = scratch / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(pport=pport, bport=bport, pool=POOL))
    return ["haproxy", "-db", "-f", str(cfg)]  # -db: foreground, no daemon


NGHTTPX = "nghttpx"

register(
    Group(
        name="proxy",
        title="HTTP/2 hello world under h2load -c10 -m10 through a reverse proxy (h2c in, HTTP/1.1 out to the "
        "raw-trio backend; 20000 requests, 5000 with --quick)",
        unit="req/s",
        baseline=NGHTTPX,
        contenders=[
            PeerProxy(NGHTTPX, nghttpx, tools=["nghttpx"], versus=0.5),
            PeerProxy("HAProxy", haproxy, tools=["haproxy"]),
            ProxyContender("stack proxy (ours)", ours=True),
        ],
        rounds=3,
        order=60,
        notes="Pinning: each proxy alone on CPU 0; the raw-trio backend and h2load share CPU 1 "
        f"(every proxy: <= {POOL} backend connections, one thread, no access log).",
    )
)
