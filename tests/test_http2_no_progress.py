"""HTTP/2's no-progress budget (``Limits.no_progress_limit``): frames that give the application
nothing end the connection with GOAWAY ENHANCE_YOUR_CALM, on both sides, and honest peers are
never cut.

A frame gives the application something when it opens a request or delivers a response head,
non-empty DATA, trailers, a stream's end or a reset; a WINDOW_UPDATE counts as such while DATA
we sent pays for it (two per DATA frame). Every other frame (PRIORITY, PING, SETTINGS, GOAWAY,
unknown types, empty or padding-only DATA, a WINDOW_UPDATE nobody paid for, anything on a
closed stream) adds one to the connection's count; each frame that gives something takes 16
off; past ``no_progress_limit`` (after the count leaked ``no_progress_limit`` per
``flood_period`` seconds) the connection ends.

The floods reuse ``test_http2_hardening.attack`` (a real server, the burst built before the
clock starts, an honest client on another connection answered meanwhile, the process's CPU
across the burst). The honest peers are a 1 MiB download with windows of one small frame
acknowledged frame by frame, a browser-like client sending a PRIORITY and WINDOW_UPDATEs with
every request, and a slow trickle of PINGs that the leak absorbs.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
import trio
from _h2raw import OnEvent, raw_h2_server
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_http2_defences import victim
from test_http2_hardening import GET, SLOW, attack, calm, check, slow_app

import stack
from layers import http, http2, tcp
from layers.http import Limits
from stack import Stack
from stack.testing import memory_pair

LIMIT = 500
"""The budget the floods meet (the default is 1,000; each flood sends several times it)."""

UNKNOWN = b"\x00\x00\x01\xee\x00\x00\x00\x00\x00x"
"""A frame of an unknown type (0xEE) on stream 0, one byte of payload (ignored, RFC 9113 5.5)."""

FLOOD_LIMITS = Limits(no_progress_limit=LIMIT, ping_flood_limit=10**9, settings_flood_limit=10**9)
"""Only the no-progress budget stands in the way (the PING and SETTINGS rates are off)."""


def _open(enc: hpack.Encoder, sid: int = 1) -> HeadersFrame:
    """A request whose app sleeps: stream ``sid`` stays open both ways."""
    return HeadersFrame(sid, data=enc.encode(SLOW), flags=["END_HEADERS"])


def _done(enc: hpack.Encoder, sid: int = 1) -> HeadersFrame:
    """A complete GET: stream ``sid`` is answered and closed at once."""
    return HeadersFrame(sid, data=enc.encode(GET), flags=["END_STREAM", "END_HEADERS"])


def _then(head: list[HeadersFrame], frame: Frame | bytes, n: int = 3000) -> list[Frame | bytes]:
    """``head``, then ``n`` times ``frame``."""
    return [*head, *([frame] * n)]


Burst = Callable[[hpack.Encoder], list[Frame | bytes]]

FLOODS: dict[str, Burst] = {
    "window_update_connection": lambda enc: _then([_open(enc)], WindowUpdateFrame(0, window_increment=1)),
    "window_update_stream": lambda enc: _then([_open(enc)], WindowUpdateFrame(1, window_increment=1)),
    "window_update_closed_stream": lambda enc: _then([_done(enc)], WindowUpdateFrame(1, window_increment=1)),
    "priority": lambda enc: [PriorityFrame(sid, depends_on=0, stream_weight=16) for sid in range(1, 6001, 2)],
    "priority_open_stream": lambda enc: _then([_open(enc)], PriorityFrame(1, depends_on=0, stream_weight=16)),
    "empty_data": lambda enc: _then([_open(enc)], DataFrame(1, data=b"")),
    "padding_only_data": lambda enc: _then([_open(enc)], DataFrame(1, data=b"", flags=["PADDED"], pad_length=3)),
    "ping": lambda enc: [PingFrame(0, opaque_data=b"%08d" % i) for i in range(3000)],
    "settings": lambda enc: _then([], SettingsFrame(0)),
    "settings_ack": lambda enc: _then([], SettingsFrame(0, flags=["ACK"])),
    "rst_stream_closed": lambda enc: _then([_done(enc)], RstStreamFrame(1, error_code=8)),
    "unknown_type": lambda enc: _then([], UNKNOWN),
    # stream 3 is refused (RST_STREAM): what follows on it is ignored
    "headers_on_reset_stream": lambda enc: _then(
        [_open(enc, 1), _open(enc, 3)], HeadersFrame(3, data=b"", flags=["END_STREAM", "END_HEADERS"])
    ),
    "data_on_reset_stream": lambda enc: _then([_open(enc, 1), _open(enc, 3)], DataFrame(3, data=b"")),
}
"""Each sends several times ``LIMIT`` frames that give the application nothing. (A GOAWAY from
the client counts too, but the server ends the connection at the first one: no flood.)"""

ONE_STREAM = Limits(
    no_progress_limit=LIMIT, ping_flood_limit=10**9, settings_flood_limit=10**9, max_concurrent_streams=1
)


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_a_flood_of_frames_that_give_nothing_is_cut(kind: str) -> None:
    r = await attack(FLOODS[kind], limits=ONE_STREAM if "reset_stream" in kind else FLOOD_LIMITS)
    check(r)
    calm(r)
    assert r.goaway is not None and b"no-progress" in r.goaway.additional_data


async def test_a_flood_mixed_with_requests_is_cut() -> None:
    """A request now and then (which takes 16 off the count) does not buy 100 frames each."""

    def burst(enc: hpack.Encoder) -> list[Frame | bytes]:
        frames: list[Frame | bytes] = []
        for i in range(60):
            frames.append(_done(enc, 1 + 2 * i))
            frames += [PriorityFrame(1, depends_on=0, stream_weight=16)] * 100
        return frames

    r = await attack(burst, limits=FLOOD_LIMITS)
    check(r)
    calm(r)


async def test_the_default_budget_cuts_a_flood() -> None:
    r = await attack(lambda enc: _then([_open(enc)], WindowUpdateFrame(0, window_increment=1), 5000))
    check(r)
    calm(r)


# ---- honest peers ----------------------------------------------------------------------------


async def test_a_download_acknowledged_frame_by_frame_is_not_cut() -> None:
    """1 MiB through windows of one 1 KiB frame, each DATA frame acknowledged by a stream and a
    connection WINDOW_UPDATE as it arrives: 2,000 WINDOW_UPDATEs, each paid for."""
    async with victim(Limits(no_progress_limit=20), slow_app) as v:
        c = await v.attacker()
        await c.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 1024, SettingsFrame.MAX_FRAME_SIZE: 16384})
        await c.request(1, path="/big")
        got = 0
        with trio.fail_after(30):
            while True:
                f = await c.frame()
                assert f is not None, "the server closed the connection"
                assert not isinstance(f, GoAwayFrame), f
                if isinstance(f, DataFrame) and f.stream_id == 1:
                    got += len(f.data)
                    if "END_STREAM" in f.flags:
                        break
                    if f.data:
                        await c.send(
                            WindowUpdateFrame(1, window_increment=len(f.data)),
                            WindowUpdateFrame(0, window_increment=len(f.data)),
                        )
        assert got == 1_000_000
        await c.request(3)  # the connection is fine
        assert (await c.response(3))[0] == 200


async def test_our_client_downloading_with_a_tiny_window_is_not_cut() -> None:
    """Our own client, its stream window one small frame: it acknowledges as it reads."""
    async with victim(Limits(no_progress_limit=20), slow_app) as v:
        limits = Limits(stream_window=4096, connection_window=65535)
        async with await Stack(
            tcp.connect(v.host, v.port), http.client(limits, prior_knowledge=True)
        ).connect() as conn:
            for _ in range(2):
                r = await conn.request("GET", "/big")
                assert len(await r.read()) == 1_000_000


async def test_a_browser_like_client_is_not_cut() -> None:
    """Each request comes with a PRIORITY frame for an idle stream and two WINDOW_UPDATEs after
    its response (the kind of frames browsers add): 300 requests, a budget of 20."""
    async with victim(Limits(no_progress_limit=20), slow_app) as v:
        c = await v.attacker()
        await c.handshake(window=15 << 20)
        with trio.fail_after(30):
            for i in range(300):
                sid = 1 + 2 * i
                await c.send(PriorityFrame(sid + 100_001, depends_on=0, stream_weight=8), c.headers(sid))
                status, body = await c.response(sid)
                assert status == 200
                await c.send(
                    WindowUpdateFrame(sid, window_increment=len(body) or 1),
                    WindowUpdateFrame(0, window_increment=len(body) or 1),
                )
        await c.send(PingFrame(0, opaque_data=b"lastping"))
        pong = await c.until(lambda f: isinstance(f, (PingFrame, GoAwayFrame)))
        assert isinstance(pong, PingFrame), pong


async def test_a_slow_trickle_is_absorbed_by_the_leak() -> None:
    """A keep-alive PING every so often never adds up: the count leaks ``no_progress_limit``
    per ``flood_period`` seconds."""
    async with victim(Limits(no_progress_limit=10, flood_period=0.2), slow_app) as v:
        c = await v.attacker()
        await c.handshake()
        with trio.fail_after(20):
            for i in range(12):
                await c.send(*[PingFrame(0, opaque_data=b"%04d%04d" % (i, j)) for j in range(8)])
                for _ in range(8):
                    f = await c.until(lambda f: isinstance(f, (PingFrame, GoAwayFrame)))
                    assert isinstance(f, PingFrame), f
                await trio.sleep(0.25)
        await c.request(1)
        assert (await c.response(1))[0] == 200


# ---- the client side -------------------------------------------------------------------------


def _flooding(flood: bytes, seen: list[int]) -> OnEvent:
    """An h2 server's events (see tests/_h2raw.py): stream 1 answered with a body it never ends,
    then ``flood``; the error code of any GOAWAY it receives recorded in ``seen``."""

    def on_event(core: h2.connection.H2Connection, ev: h2.events.Event) -> bytes:
        if isinstance(ev, h2.events.RequestReceived):
            core.send_headers(ev.stream_id, [(b":status", b"200")])
            core.send_data(ev.stream_id, b"partial")
            return flood
        if isinstance(ev, h2.events.ConnectionTerminated):
            seen.append(int(ev.error_code or 0))
        return b""

    return on_event


CLIENT_FLOODS = {
    "window_update": WindowUpdateFrame(0, window_increment=1).serialize() * 3000,
    "priority": PriorityFrame(1, depends_on=0, stream_weight=16).serialize() * 3000,
    "empty_data": DataFrame(1, data=b"").serialize() * 3000,
    "unknown_type": UNKNOWN * 3000,
}


@pytest.mark.parametrize("kind", sorted(CLIENT_FLOODS))
async def test_our_client_cuts_a_flooding_server(kind: str) -> None:
    a, b = memory_pair(capacity=1 << 22)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw_h2_server, b, _flooding(CLIENT_FLOODS[kind], seen))
        async with await http2.client(Limits(no_progress_limit=LIMIT)).attach(a) as conn:
            with trio.fail_after(5), pytest.raises(stack.StackError):
                r = await conn.request("GET", "/")
                await r.read()
            assert "no-progress" in str(conn.failure())
        with trio.fail_after(5):
            while not seen:  # noqa: ASYNC110 - waiting for the other task's record
                await trio.sleep(0.01)
        assert seen == [0xB]  # ENHANCE_YOUR_CALM
        nursery.cancel_scope.cancel()
