"""Shared helpers for the TLS tests (imported by test_tls*.py; holds no tests itself).

Certificates are minted once per process with :mod:`layers.certs` into a temporary directory.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from layers import tls
from layers.certs import CA
from stack import ByteStream, after
from stack.testing import memory_pair

TEST_SECONDS = 60.0
SLOW_TEST_SECONDS = 600.0  # tests marked slow (testssl.sh takes a minute or two)


@pytest.fixture(autouse=True)
def bounded(request: pytest.FixtureRequest) -> Iterator[None]:
    """No TLS test may hang the run: past TEST_SECONDS (SLOW_TEST_SECONDS for a test marked
    ``slow``) the process dumps every thread's stack to stderr and exits. Each test also bounds
    its own waits with deadlines and ``trio.fail_after``; this is the last resort."""
    slow = request.node.get_closest_marker("slow") is not None
    faulthandler.dump_traceback_later(SLOW_TEST_SECONDS if slow else TEST_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@dataclass(frozen=True)
class Certs:
    dir: str
    ca: CA
    ca_file: str
    other_ca: CA  # trusted by nobody here
    localhost: tuple[str, str]  # localhost, 127.0.0.1, ::1
    a: tuple[str, str]  # a.test
    wild: tuple[str, str]  # *.example.test
    default: tuple[str, str]  # default.test
    untrusted: tuple[str, str]  # localhost, issued by other_ca
    no_ip: tuple[str, str]  # localhost only, no IP address entries


@functools.cache
def certs() -> Certs:
    d = tempfile.mkdtemp(prefix="trio-stack-tls-tests-")
    atexit.register(shutil.rmtree, d, True)
    ca, other = CA.new("trio-stack tls test CA"), CA.new("untrusted test CA")
    return Certs(
        dir=d,
        ca=ca,
        ca_file=ca.write(os.path.join(d, "ca.pem")),
        other_ca=other,
        localhost=ca.issue("localhost", "127.0.0.1", "::1").write(d, "localhost"),
        a=ca.issue("a.test").write(d, "a"),
        wild=ca.issue("*.example.test").write(d, "wild"),
        default=ca.issue("default.test").write(d, "default"),
        untrusted=other.issue("localhost", "127.0.0.1").write(d, "untrusted"),
        no_ip=ca.issue("localhost").write(d, "no-ip"),
    )


def client(**kw: Any) -> tls.client:
    kw.setdefault("server_hostname", "localhost")
    kw.setdefault("ca", certs().ca)
    return tls.client(**kw)


def server(**kw: Any) -> tls.server:
    return tls.server(kw.pop("certs", certs().localhost), **kw)


async def attach_both(
    cspec: Any, sspec: Any, a: ByteStream, b: ByteStream, *, seconds: float = 10.0
) -> tuple[Any, Any]:
    """Attach ``cspec`` on ``a`` and ``sspec`` on ``b`` at once. Each result is the stream or the
    exception its attach raised; a side that fails closes its lower stream so the other ends too."""
    results: dict[str, Any] = {}
    deadline = after(seconds)

    async def run(name: str, spec: Any, lower: ByteStream) -> None:
        try:
            results[name] = await spec.attach(lower, deadline=deadline)
        except Exception as exc:
            results[name] = exc
            await lower.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "c", cspec, a)
        nursery.start_soon(run, "s", sspec, b)
    return results["c"], results["s"]


async def connected(cspec: Any, sspec: Any, a: ByteStream, b: ByteStream) -> tuple[tls.TLSStream, tls.TLSStream]:
    """Both attached, or the first failure raised."""
    c, s = await attach_both(cspec, sspec, a, b)
    for r in (c, s):
        if isinstance(r, BaseException):
            raise r
    return c, s


class Relay:
    """Two memory pairs joined by the test: it moves raw TLS bytes between them by hand."""

    def __init__(self) -> None:
        self.c_lower, self.c_raw = memory_pair(capacity=1 << 20)
        self.s_lower, self.s_raw = memory_pair(capacity=1 << 20)

    @staticmethod
    async def pump(src: ByteStream, dst: ByteStream) -> None:
        while data := await src.recv():
            await dst.send(data)
