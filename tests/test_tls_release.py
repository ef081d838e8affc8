"""A TLS stream gives OpenSSL's memory back when it is closed, not when it is freed.

A server's connection objects often end up in reference cycles (an upper layer keeps the
exception that ended the connection, and its traceback holds the layers' frames); such a cycle
lives until the collector's full pass, which is rare, and under connection churn the OpenSSL state
it held (the SSL object, its record buffers, the memory BIOs: tens of KiB each) piled up and
fragmented the C heap (issue 17's soak: the TLS server's RSS +14 % in 12 minutes). These tests
run with the cycle collector off and keep the stream (and the exception) alive, as such a cycle
would, and check that the ``SSLObject`` is gone all the same: after ``aclose``, after a failed
handshake (the exception kept), after ``detach``.
"""

from __future__ import annotations

import gc
import ssl
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from test_tls_support import bounded, client, connected, server

from layers import tls
from stack import Broken, Closed, after
from stack.testing import memory_pair

__all__ = ["bounded"]  # the autouse fixture that bounds every test's time


@pytest.fixture(autouse=True)
def no_cycle_collector() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def recording(spec: Any, made: list[weakref.ref[ssl.SSLObject]]) -> Any:
    """``spec`` with its context recording a weak reference to each SSL object it makes."""
    ctx = spec._ctx
    wrap = ctx.wrap_bio

    def wrap_bio(*args: Any, **kw: Any) -> ssl.SSLObject:
        conn: ssl.SSLObject = wrap(*args, **kw)
        made.append(weakref.ref(conn))
        return conn

    ctx.wrap_bio = wrap_bio
    return spec


async def test_aclose_releases_the_ssl_object_while_the_stream_lives() -> None:
    a, b = memory_pair(capacity=1 << 20)
    c, s = await connected(client(), server(), a, b)
    conn = weakref.ref(s._ssl)
    await a.aclose()  # the client vanishes without close_notify
    with pytest.raises(Broken) as failure:
        await s.recv(deadline=after(5))
    await s.aclose()
    assert conn() is None, "the closed stream still holds its SSL object"
    with pytest.raises(Closed):  # the stream still behaves as closed
        await s.recv(deadline=after(5))
    assert failure.value is not None and s is not None  # both were kept to the end
    await c.aclose()


async def test_a_task_inside_the_stream_when_it_closes_gets_closed() -> None:
    a, b = memory_pair(capacity=1 << 20)
    c, s = await connected(client(), server(), a, b)
    got: list[BaseException] = []

    async def reader() -> None:
        try:
            await s.recv(deadline=after(5))
        except Exception as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await s.aclose()
    assert len(got) == 1 and isinstance(got[0], Closed)
    await c.aclose()


async def test_a_failed_handshake_releases_the_ssl_object_while_the_error_lives() -> None:
    made: list[weakref.ref[ssl.SSLObject]] = []
    spec = recording(server(), made)
    a, b = memory_pair(capacity=1 << 20)
    out = ssl.MemoryBIO()
    peer = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        peer.do_handshake()
    first = out.read()
    await a.send(first[: len(first) // 2])  # half a ClientHello, then the client goes
    await a.aclose()
    with pytest.raises(tls.HandshakeError) as failure:
        await spec.attach(b, deadline=after(5))
    assert failure.value.reason == "eof"
    assert len(made) == 1 and made[0]() is None, "the failed handshake's error holds the SSL object"


async def test_detach_releases_the_ssl_object() -> None:
    a, b = memory_pair(capacity=1 << 20)
    c, s = await connected(client(), server(), a, b)
    conns = weakref.ref(c._ssl), weakref.ref(s._ssl)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.detach)
        nursery.start_soon(s.detach)
    assert conns[0]() is None and conns[1]() is None
    assert c is not None and s is not None
