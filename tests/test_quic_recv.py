"""layers._quic_recv: a bulk receiver's datagrams taken without aioquic's ``receive_datagram``
leave the connection exactly as aioquic's own ``receive_datagram`` leaves it.

Theory of operation: tests/test_quic_bulk.py's in-memory pair (a client and a server ``Engine``
on a virtual clock, 64 KiB datagrams) sends bulk data to the server; before the server takes
each datagram, a twin of it is made (``copy.deepcopy``, sharing only what a received 1-RTT
packet does not change: the TLS context, the configuration, the logger, the AEAD and header
protection objects, the CRYPTO send buffers) without the fast path. Both take the datagram; the
events they queue must be equal, and so must every attribute of the two connections, compared
recursively (packet number spaces and their ACK ranges, the ACK timer, the idle timer, the spin
bit, streams, flow control, loss recovery, network paths...). The transfers drop, reorder and
duplicate datagrams, update keys from either side, and send pings and a second stream midway:
what the fast path does not take, aioquic takes, and the fast path must have taken most. Our
PADDING handler leaves a frame buffer where aioquic's leaves it.
"""

from __future__ import annotations

import copy
import functools
import heapq
from collections import deque
from typing import Any

import pytest
from aioquic import tls as aioquic_tls
from aioquic._buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection as AioquicConnection

from layers import _quic_copies
from layers import _quic_engine as engine_module
from layers._quic_engine import Engine
from layers._quic_recv import skip_padding
from layers.certs import CA, Leaf
from tests.test_quic_bulk import ADDR_C, ONE_WAY, Pair

pytestmark = pytest.mark.skipif(not _quic_copies.PYTHON_HP, reason="aioquic's header protection is not Python here")

ONE_RTT = aioquic_tls.Epoch.ONE_RTT


def twin_of(engine: Engine) -> Engine:
    """A deep copy of ``engine`` without the fast receive path (see the module docstring)."""
    shared: list[Any] = [engine.tls, engine._configuration, engine._logger, *engine._crypto_buffers.values()]
    for pair in [*engine._cryptos.values(), *engine._cryptos_initial.values()]:
        for context in (pair.recv, pair.send):
            shared += [x for x in (context.aead, context.hp) if x is not None]
    twin = copy.deepcopy(engine, {id(x): x for x in shared})
    twin._fast = None
    return twin


def assert_same(a: Any, b: Any, path: str, seen: set[tuple[int, int]]) -> None:
    """Every attribute of ``a`` equals ``b``'s, recursively (objects shared are the same object)."""
    if a is b or (id(a), id(b)) in seen:
        return
    seen.add((id(a), id(b)))
    assert type(a) is type(b), path
    if isinstance(a, bytes | bytearray | memoryview | str | int | float | complex | range | type(None)):
        assert a == b, path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]", seen)
    elif isinstance(a, list | tuple | deque):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]", seen)
    elif isinstance(a, set | frozenset):
        assert a == b, path
    elif isinstance(a, functools.partial):
        assert_same((a.func, a.args, a.keywords), (b.func, b.args, b.keywords), path, seen)
    elif hasattr(a, "__func__"):  # a bound method: the same function (of the twin objects)
        assert a.__func__ is b.__func__, path
    elif callable(a) and not hasattr(a, "__dict__"):
        assert a == b, path
    else:
        names = set(getattr(a, "__dict__", {})) | {s for c in type(a).__mro__ for s in getattr(c, "__slots__", ())}
        names.discard("__dict__")
        names.discard("__weakref__")
        if isinstance(a, Engine):
            names.discard("_fast")  # (the twin has none)
        if not names and type(a).__module__.startswith("cryptography."):
            return  # the keys of a key update, made on each side (the transfer shows they work)
        assert names, f"{path}: {type(a)} compared by nothing"
        for name in sorted(names):
            assert hasattr(a, name) == hasattr(b, name), f"{path}.{name}"
            if hasattr(a, name):
                assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}", seen)


def drain(engine: Engine) -> list[qe.QuicEvent]:
    out = []
    while (event := engine.next_event()) is not None:
        out.append(event)
    return out


class TwinPair(Pair):
    """:class:`tests.test_quic_bulk.Pair` whose server checks each datagram against its twin;
    every ``reorder``-th datagram to the server is held back behind the next, every
    ``duplicate``-th is delivered twice."""

    def __init__(self, ca: CA, leaf: Leaf, drop_every: int = 0, reorder: int = 0, duplicate: int = 0) -> None:
        super().__init__(ca, leaf, drop_every=drop_every)
        self.reorder, self.duplicate = reorder, duplicate
        self.to_server = 0
        self.compared = 0

    def _deliver(self, data: bytes, to_server: bool) -> None:
        if to_server:
            self.to_server += 1
            if self.reorder and self.to_server % self.reorder == 0:
                heapq.heappush(self.wire, (self.now + ONE_WAY / 4, -self.to_server, True, data))
                return  # after the next one (on the wire a quarter of a one-way trip longer)
        server = self.server
        if not to_server or server is None or server._fast is None:
            super()._deliver(data, to_server)
            return
        for _ in range(2 if self.duplicate and self.to_server % self.duplicate == 0 else 1):
            twin = twin_of(server)
            server.receive_batch([(data, ADDR_C)], self.now)
            twin.receive_batch([(data, ADDR_C)], self.now)
            ours, theirs = drain(server), drain(twin)
            assert ours == theirs
            assert_same(server, twin, "server", set())
            self.compared += 1
            for ev in ours:
                if isinstance(ev, qe.StreamDataReceived):
                    self.received.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ev.end_stream:
                        self.ended.add(ev.stream_id)
                    server.credit_due(ev.stream_id)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[bool, int]:
    """How many datagrams the fast path took (True) and handed back to aioquic (False)."""
    counts = {True: 0, False: 0}
    receive_short = engine_module.receive_short

    def watched(*args: Any) -> bool:
        taken = receive_short(*args)
        counts[taken] += 1
        return taken

    monkeypatch.setattr(engine_module, "receive_short", watched)
    return counts


def test_the_fast_path_leaves_the_connection_as_aioquic_does(ca: CA, leaf: Leaf, counted: dict[bool, int]) -> None:
    pair = TwinPair(ca, leaf)
    pair.transfer({0: 3 * 1024 * 1024 + 11})
    assert pair.compared > 40
    assert counted[True] > 40


def test_through_losses_reordering_and_duplicates(ca: CA, leaf: Leaf, counted: dict[bool, int]) -> None:
    pair = TwinPair(ca, leaf, drop_every=11, reorder=7, duplicate=5)
    pair.transfer({0: 3 * 1024 * 1024})
    assert pair.resent > 2
    assert counted[True] > 30
    assert counted[False] > 5  # the duplicates: aioquic's


def test_key_updates_pings_and_a_second_stream(ca: CA, leaf: Leaf, counted: dict[bool, int]) -> None:
    def midway(pair: Pair) -> None:
        pair.client.send_ping(1)
        pair.client._cryptos[ONE_RTT].update_key()  # the client's key update: its next packets

    pair = TwinPair(ca, leaf, drop_every=13)
    pair.transfer({0: 2 * 1024 * 1024, 4: 1024 * 1024 + 3}, midway=midway)
    assert pair.client._cryptos[ONE_RTT].recv.key_phase == 1
    assert counted[True] > 20 and counted[False] > 0

    def server_update(pair: Pair) -> None:
        assert pair.server is not None
        pair.server._cryptos[ONE_RTT].update_key()  # the server's: the client follows

    pair2 = TwinPair(ca, leaf)
    pair2.transfer({0: 2 * 1024 * 1024}, midway=server_update)
    assert pair2.server is not None and pair2.server._cryptos[ONE_RTT].recv.key_phase == 1


def test_padding_is_skipped_as_aioquic_skips_it() -> None:
    class Conn:
        _quic_logger = None

    cases = [b"", b"\x00" * 5, b"\x00" * 3 + b"\x01\x00", b"\x07", b"\x00" * 70000 + b"\x02" + b"\x00" * 9]
    for data in cases:
        for start in range(min(len(data), 3) + 1):
            ours, theirs = Buffer(data=b"\x00" + data), Buffer(data=b"\x00" + data)
            ours.seek(1 + start)
            theirs.seek(1 + start)
            skip_padding(Conn(), None, 0, ours)
            AioquicConnection._handle_padding_frame(Conn(), None, 0, theirs)  # type: ignore[arg-type]
            assert ours.tell() == theirs.tell()
