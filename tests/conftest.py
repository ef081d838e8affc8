"""Shared test setup.

* The hypothesis profile (``HYPOTHESIS_PROFILE``: ``dev`` by default, ``ci`` in CI).
* The HTTP/1.1 engines: every test of the modules in :data:`BOTH_ENGINES` runs twice, once on
  the fast engine (llhttp) and once on the reference engine (h11), by changing what
  ``engine="auto"`` (every spec's default) picks. Servers in subprocesses (the command-line tests)
  run the default, the fast engine; ``tests/test_h1_engines.py`` holds the two to the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import stack.testing  # registers the "ci" and "dev" profiles
from layers import http1
from layers.certs import CA, Leaf

settings.load_profile(os.environ.get(stack.testing.PROFILE_ENV, "dev"))

BOTH_ENGINES = {
    "test_http1",
    "test_http1_conformance",
    "test_http1_client_duplex",
    "test_http1_interop",
    "test_http_model",
    "test_http2",  # h2c upgrades through the HTTP/1.1 server
    "test_websocket",
    "test_websocket_conformance",
    "test_reverse_proxy",
    "test_static",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        "h1_engine" in metafunc.fixturenames
        and metafunc.module.__name__ in BOTH_ENGINES
        and metafunc.definition.get_closest_marker("no_http1") is None  # the engine plays no part
    ):
        engines = [e for e in ("fast", "reference") if e in http1.ENGINES]
        metafunc.parametrize("h1_engine", engines, indirect=True)


@pytest.fixture(autouse=True)
def h1_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The HTTP/1.1 engine ``"auto"`` picks in this test (see the module docstring)."""
    engine = getattr(request, "param", None)
    if engine == "reference" and "fast" in http1.ENGINES:
        monkeypatch.delitem(http1.ENGINES, "fast")
    yield engine or http1.engine_name("auto")


@pytest.fixture(scope="session")
def ca() -> CA:
    """A throwaway test CA (one per run); a module that needs its own defines ``ca`` itself."""
    return CA.new()


@pytest.fixture(scope="session")
def leaf(ca: CA) -> Leaf:
    """A leaf certificate from :func:`ca` for ``localhost`` and ``127.0.0.1``."""
    return ca.issue("localhost", "127.0.0.1")
