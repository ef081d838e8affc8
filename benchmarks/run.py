"""Run benchmark groups side by side with their peers and print ratio tables.

    python benchmarks/run.py                      # every group
    python benchmarks/run.py tcp prefix --rounds 7
    python benchmarks/run.py http1 h2 --quick     # smaller runs, 2 rounds: a smoke test
    python benchmarks/run.py asgi                 # layers.asgi vs hypercorn-trio, uvicorn, granian
    python benchmarks/run.py --markdown > out.md  # the same tables as Markdown (for RESULTS.md)
    python benchmarks/run.py --list               # groups and contenders, with availability

Progress goes to stderr, the tables to stdout.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", help="groups to run (default: all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per group (default: per group; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller runs and 2 rounds: checks that all runs")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (all rounds) as JSON")
    parser.add_argument("--list", action="store_true", help="list groups and contenders, then exit")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset (figures are noisier)")
    args = parser.parse_args(argv)

    if args.no_pin:
        harness.PINNING["enabled"] = False
    harness.raise_nofile()
    groups = harness.discover()

    unknown = [g for g in args.groups if g not in groups]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(groups)}")
    selected = [groups[g] for g in (args.groups or groups)]

    if args.list:
        for g in selected:
            print(f"{g.name}: {g.title} [{g.unit}] (baseline: {g.baseline})")
            for c in g.contenders:
                why = c.unavailable()
                print(f"  - {c.name}" + (f"  ({why})" if why else ""))
        return 0

    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, stopping every child
    # Started in the background by a shell, SIGINT may be ignored, and children would inherit that:
    # a handler (unlike SIG_IGN) resets to the default in them, so servers stop on SIGINT as meant.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results: list[harness.Result] = []
    try:
        for g in selected:
            rounds = args.rounds or (2 if args.quick else g.rounds)
            settings = harness.Settings(rounds=max(1, rounds), quick=args.quick)
            harness.log(f"== {g.name}: {len(g.contenders)} contenders x {settings.rounds} rounds")
            results.append((g, harness.run_group(g, settings), settings))
    except KeyboardInterrupt:
        harness.log("interrupted: reporting the groups that finished")
    finally:
        harness.stop_all()

    if not results:
        return 1
    print(harness.render_markdown(results) if args.markdown else harness.render_text(results))
    if args.json:
        Path(args.json).write_text(json.dumps(harness.to_json(results), indent=2))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
