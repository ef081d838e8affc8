"""The Autobahn|Testsuite WebSocket conformance suite against ``python -m stack serve``'s echo.

``wstest -m fuzzingclient`` (``pip install ../shared/autobahn-testsuite``, done by ``.ci/run``)
drives the WebSocket echo that every ``serve`` answers at ``/ws/echo`` (HTTP/1.1 Upgrade;
permessage-deflate accepted when offered), then writes its JSON report
(``reports/servers/index.json``: per case ``behavior`` and ``behaviorClose``). Every case must be
``OK`` or ``INFORMATIONAL``: ``NON-STRICT`` and ``UNIMPLEMENTED`` fail like ``FAILED`` does.

What runs where. The whole suite over both transports takes far more than the ~90 s the CI budget
allows: the compression cases 12.* and 13.* are 216 cases of 1,000 echoes each (many of them sent
in 256-byte fragments) and take most of it, the performance cases 9.* most of the rest. Measured on
the shared 2-core development host under load (load average 7-12, no quiet host was available):
cases 1.* to 13.1.14 over cleartext took ~29 minutes of wall time (wstest and the server used
about 4.5 minutes of CPU between them for the first 355 cases: wall time there is mostly waiting
for a CPU), and the TLS run below (247 cases) under 9 minutes (its cases' own durations add up to
8.5 s). So CI runs (the default, :data:`CI_CASES`):

- cleartext (``serve --no-tls``, ``ws://``): every case of 1.* to 7.* and 10.*, and of the
  compression cases a sample: the first and the ninth message size of every 12.* and 13.* family
  (12.1.1, 12.1.9 ... 13.7.9: every payload kind and every negotiated parameter set, 24 cases);
  the performance cases 9.* are left out of CI. ``AUTOBAHN_CASES='*'`` runs all 517;
- TLS (``serve --cert --key`` with a certificate from a throwaway test CA, ``wss://``): every case
  except 9.* (performance) and 12.* / 13.* (compression), which exercise nothing of TLS that the
  other cases do not. wstest does not check the certificate (its client uses Twisted's
  ``ClientContextFactory``) and offers no ALPN, so the WebSocket runs over HTTP/1.1 there too.

``AUTOBAHN_CASES`` (comma-separated wstest patterns, such as ``1.*,2.*,12.1.*``, or ``*`` for
all) runs those cases instead, over both transports (TLS still without 9.*, 12.* and 13.*), for a quick look by hand.

Both runs go at once (two servers, two wstest processes), each against its own ``serve``. The
test fails (names the cases, their behaviour and wstest's result text) if any case is not OK or
INFORMATIONAL, or if fewer cases ran than expected (a wstest that silently skipped a server).
wstest absent: skipped on a developer's machine, failed under ``CI``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _peers import need

from layers import certs

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 1800.0  # seconds for a whole wstest run: a hung case must not hang CI forever
FAST_ONLY = ["9.*", "12.*", "13.*"]  # left out over TLS (see the module docstring)
ACCEPTED = {"OK", "INFORMATIONAL"}
# wstest matches a pattern with "*" as an unanchored regular expression ("12.*.1" would take
# 12.1.10 too), so the compression sample is spelled out: sizes 1 and 9 of every family.
_SAMPLE = [f"{group}.{family}.{size}" for group, families in ((12, 5), (13, 7)) for family in range(1, families + 1)
           for size in (1, 9)]  # fmt: skip
CI_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", *_SAMPLE]
CI_CASE_COUNT = 517 - 54 - 216 + 24  # the suite's 517, without 9.* (54) and 12.* / 13.* (216), plus the sample


@contextmanager
def serve(*args: str) -> Iterator[str]:
    """Run ``python -m stack serve --port 0 -q ARGS`` until the block ends; yield its host:port."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "stack", "serve", "--port", "0", "-q", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(ROOT), env=env, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # "serving on http://127.0.0.1:PORT/"
        match = re.fullmatch(r"serving on https?://(127\.0\.0\.1:\d+)/", line)
        assert match, f"serve did not start: {line!r}"
        yield match.group(1)
    finally:
        process.kill()
        process.wait(timeout=10)


def start_wstest(workdir: Path, url: str, cases: list[str], exclude: list[str]) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "outdir": str(workdir / "reports" / "servers"),
        "servers": [{"agent": "stack", "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    (workdir / "spec.json").write_text(json.dumps(spec))
    log = open(workdir / "wstest.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [need("wstest"), "-m", "fuzzingclient", "-s", "spec.json"], cwd=str(workdir), stdout=log, stderr=log
    )


def results(workdir: Path, process: subprocess.Popen[bytes], deadline: float) -> dict[str, dict[str, object]]:
    """Wait for wstest, then its report: case id -> the case's entry."""
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        tail = (workdir / "wstest.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"wstest did not finish in {RUN_TIMEOUT:.0f} s; its log ends with:\n{tail}")
    index = workdir / "reports" / "servers" / "index.json"
    assert index.exists(), f"no report: {(workdir / 'wstest.log').read_text(errors='replace')[-2000:]}"
    report = json.loads(index.read_text())
    assert list(report) == ["stack"], report.keys()
    cases: dict[str, dict[str, object]] = report["stack"]
    return cases


def failures(workdir: Path, cases: dict[str, dict[str, object]]) -> list[str]:
    """One line per case that is not OK / INFORMATIONAL (on behaviour or on closing behaviour)."""
    bad = []
    for case, entry in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        if entry["behavior"] in ACCEPTED and entry["behaviorClose"] in ACCEPTED:
            continue
        detail = ""
        report_file = workdir / "reports" / "servers" / str(entry.get("reportfile", ""))
        if report_file.is_file():
            detail = str(json.loads(report_file.read_text()).get("result", ""))[:200]
        bad.append(f"{case}: {entry['behavior']} / close {entry['behaviorClose']}: {detail}")
    return bad


def test_autobahn_suite_over_cleartext_and_tls(tmp_path: Path) -> None:
    """Every Autobahn case run OK or INFORMATIONAL: CI's selection over ws://, the same without
    12.* and 13.* over wss:// (see the module docstring for why and for the time it takes)."""
    need("wstest")
    ca = certs.CA.new("autobahn test CA")
    ca.issue("localhost", "127.0.0.1").write(str(tmp_path), "leaf")
    tls_args = ("--cert", str(tmp_path / "leaf.pem"), "--key", str(tmp_path / "leaf.key"))
    given = os.environ.get("AUTOBAHN_CASES")
    chosen = [c.strip() for c in given.split(",") if c.strip()] if given else CI_CASES
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT
    with serve("--no-tls") as plain, serve(*tls_args) as tls:
        runs = {
            "cleartext": start_wstest(tmp_path / "cleartext", f"ws://{plain}/ws/echo", chosen, []),
            "tls": start_wstest(tmp_path / "tls", f"wss://{tls}/ws/echo", chosen, FAST_ONLY),
        }
        got = {name: results(tmp_path / name, process, deadline) for name, process in runs.items()}
    elapsed = time.monotonic() - started
    print(f"autobahn: {', '.join(f'{n} {len(c)} cases' for n, c in got.items())} in {elapsed:.1f} s")
    if chosen == ["*"]:  # the suite has 517 cases; 9.* is 54 of them, 12.* and 13.* 216
        assert len(got["cleartext"]) >= 517, f"only {len(got['cleartext'])} cases ran over cleartext"
        assert len(got["tls"]) >= 517 - 54 - 216, f"only {len(got['tls'])} cases ran over TLS"
    if chosen == CI_CASES:
        assert len(got["cleartext"]) == CI_CASE_COUNT, f"{len(got['cleartext'])} cases ran over cleartext"
        assert len(got["tls"]) == CI_CASE_COUNT - 24, f"{len(got['tls'])} cases ran over TLS"
    assert got["cleartext"], "no case ran"
    bad = [f"{name} {line}" for name in got for line in failures(tmp_path / name, got[name])]
    assert not bad, "Autobahn cases not OK:\n" + "\n".join(bad)
