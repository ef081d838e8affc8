"""Builds ``go_server.go`` (Go's net/http hello server) into a given path: the Go contenders' probe.

    python -m benchmarks.peers.go_build /tmp/somewhere/hello

The runner names a path in a temporary directory of its own (``servers.GO_BIN``, removed when it
exits) and runs this as the probe of every Go contender: the first probe builds (a few seconds,
then Go's build cache makes it instant), later ones find the binary newer than the source and do
nothing.  Exit 0 when the binary is there; otherwise go's error on stderr (the contender is then
listed as not available).  Without a ``go`` on PATH the contender's ``tools=["go"]`` already says
"go not installed" and this never runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("go_server.go")


def build(out: Path) -> int:
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    env["CGO_ENABLED"] = "0"
    env["GO111MODULE"] = "off"  # one file, standard library only: no go.mod needed
    r = subprocess.run(["go", "build", "-o", str(out), str(SOURCE)], env=env, check=False, timeout=300)
    return r.returncode


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.peers.go_build OUT")
    sys.exit(build(Path(sys.argv[1])))
