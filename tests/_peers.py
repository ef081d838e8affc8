"""Peer programs the interop tests drive (curl, nghttp, openssl, haproxy, chromium, socat...)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's closed network refuses Google's hosts
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--ignore-certificate-errors",  # the servers under test use throwaway certificates
]
"""Headless Chromium as the interop tests run it (add ``--user-data-dir`` and the page)."""


def need(*programs: str) -> str:
    """The path of the first of ``programs`` (each must be installed). A missing one skips the
    test on a developer's machine and fails it in CI (``CI`` set): .ci/run must install it."""
    paths = []
    for program in programs:
        path = shutil.which(program)
        if path is None:
            if os.environ.get("CI"):
                pytest.fail(f"{program} is not installed, and CI is set: .ci/run must install it")
            pytest.skip(f"{program} is not installed (the interop test drives it; CI installs it)")
        paths.append(path)
    return paths[0]
