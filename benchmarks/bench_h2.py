"""Group `h2`: HTTP/2 requests per second under h2load, cleartext with prior knowledge (h2c).

    h2load -c10 -m10 -n N http://127.0.0.1:P/     (N = 20000; 5000 with --quick)

10 connections with up to 10 concurrent streams each.  The server runs pinned to CPU 0, h2load pinned
to CPU 1.  Baseline: the hand-written h2-on-trio server.  Peers: granian (h2c prior knowledge on its
`--http auto` port, one worker, one runtime thread) and hypercorn; under the table, ours / each peer
with issue 16's targets (>= 0.5x granian, >= 2x the hand-written server).  h2load's failed / errored / timed-out
requests and non-2xx statuses are counted in the "notes" column; a run with no successful request
fails.
"""

from __future__ import annotations

import re

from benchmarks import servers
from benchmarks.harness import Failed, Group, Measurement, Running, ServerContender, Settings, register, run_load


def h2load(server: Running, settings: Settings) -> Measurement:
    n = 5000 if settings.quick else 20000
    out = run_load(["h2load", "-c10", "-m10", f"-n{n}", server.url], timeout=120)
    return parse_h2load(out)


def parse_h2load(out: str) -> Measurement:
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not m or not r:
        raise Failed(f"unexpected h2load output: {out[-300:]!r}")
    _total, _, _, succeeded, failed, errored, timeout = (int(x) for x in r.groups())
    if succeeded == 0:
        raise Failed(f"h2load: no request succeeded ({failed} failed, {errored} errored)")
    errors = failed + errored + timeout
    notes = []
    if errors:
        notes.append("failed/errored/timeout requests")
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if s and int(s.group(1)) != succeeded:
        errors += succeeded - int(s.group(1))
        notes.append("non-2xx responses")
    return Measurement(float(m.group(1)), errors, ", ".join(notes))


# Targets for ours / peer: >= 0.5x granian and >= 2x the hand-written h2-on-trio server (issue 16),
# >= 4x hypercorn-trio (issue 5).
VERSUS = {servers.GRANIAN.name: 0.5, servers.H2.name: 2.0, servers.HYPERCORN.name: 4.0}

register(
    Group(
        name="h2",
        title="HTTP/2 hello world under h2load -c10 -m10 (h2c prior knowledge; 20000 requests, 5000 with --quick)",
        unit="req/s",
        baseline=servers.H2_SERVERS[0][0].name,
        contenders=[
            # issue 5: ours >= 0.95 of the hand-written server (and >= 4x hypercorn-trio: see notes)
            ServerContender(
                server.name,
                server,
                h2load,
                tools=["h2load"],
                target=0.95 if server is servers.OURS and target is None else target,
                ours=server is servers.OURS,
                versus=VERSUS.get(server.name),
            )
            for server, target in servers.H2_SERVERS
        ],
        rounds=3,
        order=40,
        notes="Targets for ours: >= 0.95 of the hand-written server (table, issue 5); >= 2x the hand-written server, "
        ">= 0.5x granian (issue 16) and >= 4x hypercorn-trio (ours / peer lines).",
    )
)
