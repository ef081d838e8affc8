"""The command line: ``python -m stack`` (or ``trio-stack``), an app built on the library.

::

    python -m stack serve [DIR]                                  # HTTP/1.1 and HTTP/2 server (stack.cli.serve)
    python -m stack get URL                                      # a small curl (stack.cli.get)
    python -m stack proxy --listen HOST:PORT --upstream URL      # reverse proxy (stack.cli.proxy)

Theory of operation: :func:`main` parses the arguments with :func:`build_parser` (each command
module adds its own subcommand), sets up logging (:func:`stack.cli.common.setup_logging`) and
calls the chosen command, which returns the exit status. The package is the application layer:
it imports ``layers`` and ``stack``; nothing in ``layers`` or the core of ``stack`` imports it.
The reusable parts live in the library (:mod:`layers.static`, :mod:`layers.reverse_proxy`); the
command modules only turn arguments into stacks. Imports go one way::

    stack.cli -> serve, get, proxy (workers, lazily) -> common
    workers -> serve, common

``serve --workers N`` is :mod:`stack.cli.workers` (a supervisor of N processes, each running
``python -m stack.cli.workers``); :func:`cmd_serve` chooses between it and one process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stack.cli import get, proxy, serve
from stack.cli.common import raise_nofile, setup_logging, tls_layer

__all__ = ["build_parser", "cmd_serve", "main"]


def cmd_serve(args: argparse.Namespace) -> int:
    """``python -m stack serve``: check the arguments, set up TLS, serve in this process or, with
    ``--workers N``, in N supervised ones; return the exit status."""
    problem = serve.check_args(args)
    if problem is not None:
        print(f"serve: {problem}", file=sys.stderr)
        return 2
    raise_nofile()
    try:
        layer = None if args.no_tls else tls_layer(args)
    except (OSError, ValueError) as exc:
        print(f"serve: cannot set up TLS: {exc}", file=sys.stderr)
        return 1
    if args.workers != 1:  # N supervised processes sharing the port: stack/cli/workers.py
        from stack.cli.workers import supervise  # lazily: a worker process imports this package

        return supervise(args)
    return serve.run(args, layer)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m stack``: the ``serve``, ``get`` and ``proxy`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m stack", description="trio-stack: composable protocol stacks on trio."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.add_parser(sub).set_defaults(func=cmd_serve)
    get.add_parser(sub)
    proxy.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m stack`` and ``trio-stack``; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", 0))
    result: int = args.func(args)
    return result
