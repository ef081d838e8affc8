"""Instructions a server executes for a load, under callgrind: the procedure of the ``*_instructions.py`` scripts.

:func:`count` starts the server command under ``valgrind --tool=callgrind`` pinned to
``SERVER_CPU``, waits for its port, runs the caller's warm-up (imports, caches, first connections),
zeroes the counters (``callgrind_control -z PID``), runs the caller's load, dumps the counters
(``callgrind_control -d PID``) and stops the server. Zeroing and dumping always go by pid: other
callgrind runs on the host keep their counters. The figure is the instruction total of the newest
dump (user-space only: the kernel's part is left out), returned with the request count the load
reported; the caller divides. The dumps live in a temporary directory of their own, gone on return.

The warm-up and the load are callables, so each script keeps only what is its own: which servers,
which load generator (wrk, h2load, ...) and the table it prints. :func:`total` reads the total of one
callgrind output file, for scripts that run a whole program under callgrind instead.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.harness import SERVER_CPU, Failed, Proc, pinned

TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def control(*args: str) -> None:
    """Run ``callgrind_control`` with ``args`` (e.g. ``-z PID``), waiting up to 60 s."""
    proc = Proc(["callgrind_control", *args])
    proc.wait(60)
    proc.close_files()


def total(path: str) -> int:
    """The instruction total of the callgrind output file ``path``; Failed if it has none."""
    m = TOTAL.search(Path(path).read_text(errors="replace"))
    if not m:
        raise Failed(f"no instruction total in {path}")
    return int(m.group(1))


def count(
    cmd: Sequence[str],
    port: int,
    warm: Callable[[], object],
    load: Callable[[], int],
    *,
    what: str,
    startup: float = 120,
) -> tuple[int, int]:
    """(instructions, requests): ``cmd`` (serving on ``port``) under callgrind, counted during ``load()``.

    ``warm()`` runs before the counters are zeroed; ``load()`` returns the requests it completed.
    ``what`` names the server in the error messages; ``startup`` bounds the wait for the port.
    """
    with tempfile.TemporaryDirectory() as outdir:
        out = os.path.join(outdir, f"cg.{port}")
        proc = Proc(pinned(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], SERVER_CPU))
        try:
            proc.wait_for_port(port, startup)
            warm()
            control("-z", str(proc.pid))
            requests = load()
            control("-d", str(proc.pid))
            time.sleep(1)
        finally:
            proc.stop(grace=10)
            proc.close_files()
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        if not dumps:
            raise Failed(f"no callgrind dump for {what}")
        return total(dumps[-1]), requests
