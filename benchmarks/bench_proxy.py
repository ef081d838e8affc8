"""Group `proxy`: HTTP/2 requests per second through `python -m stack proxy` against the same backend
reached directly.

    direct:  h2load -c10 -m10 -n N http://127.0.0.1:B/      -> stack serve --hello (h2c)
    proxy:   h2load -c10 -m10 -n N http://127.0.0.1:P/      -> stack proxy --no-tls (h2c in)
                                                                 -> HTTP/1.1 -> the same backend

N = 20000 (5000 with --quick).  The server side runs pinned to CPU 0 (for the proxy row: the proxy
*and* its backend share that core, so the ratio is what the extra hop costs in CPU), h2load pinned
to CPU 1.  Baseline: the backend reached directly.  The proxy keeps up to 64 kept-alive backend
connections (its default pool); h2load's failed requests and non-2xx answers show in "notes".
"""

from __future__ import annotations

from typing import Any

from benchmarks import servers
from benchmarks.bench_h2 import parse_h2load
from benchmarks.harness import (
    PY,
    SERVER_CPU,
    Contender,
    Failed,
    Group,
    Measurement,
    Proc,
    Running,
    ServerContender,
    Settings,
    free_port,
    pinned,
    register,
    run_load,
)


def requests(settings: Settings) -> int:
    return 5000 if settings.quick else 20000


def h2load(server: Running, settings: Settings) -> Measurement:
    out = run_load(["h2load", "-c10", "-m10", f"-n{requests(settings)}", server.url], timeout=180)
    return parse_h2load(out)


class ProxyContender(Contender):
    """The backend (``servers.OURS``) and ``stack proxy`` in front of it, both pinned to
    SERVER_CPU; h2load against the proxy."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(
            name,
            requires=["stack.__main__", "stack.cli.proxy", "layers.reverse_proxy"],
            probe=[PY, "-m", "stack", "proxy", "--help"],
            tools=["h2load"],
            **kw,
        )

    def measure(self, settings: Settings) -> Measurement:
        bport, pport = free_port(), free_port()
        backend = Proc(pinned([part.format(port=bport) for part in servers.OURS.cmd], SERVER_CPU))
        proxy: Proc | None = None
        try:
            backend.wait_for_output(r"serving on", 20)
            backend.wait_for_port(bport, 20)
            cmd = [PY, "-m", "stack", "proxy", "--listen", f"127.0.0.1:{pport}",
                   "--upstream", f"http://127.0.0.1:{bport}", "--no-tls", "--quiet"]  # fmt: skip
            proxy = Proc(pinned(cmd, SERVER_CPU))
            proxy.wait_for_output(r"serving on", 20)
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


DIRECT = "direct: stack serve (h2c)"

register(
    Group(
        name="proxy",
        title="HTTP/2 hello world under h2load -c10 -m10 through `stack proxy` (h2c in, HTTP/1.1 out) "
        "vs the backend directly (20000 requests, 5000 with --quick)",
        unit="req/s",
        baseline=DIRECT,
        contenders=[
            ServerContender(DIRECT, servers.OURS, h2load, tools=["h2load"]),
            ProxyContender("through stack proxy (h2c -> HTTP/1.1)"),
        ],
        rounds=3,
        order=60,
        notes="The proxy and its backend share CPU 0: the ratio is the cost of the extra hop.",
    )
)
