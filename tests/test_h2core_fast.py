"""The fast paths of ``layers._h2core.H2Core`` against h2's own, byte for byte (sans-io).

Two identical server cores receive the same client bytes; one answers through the fast path,
the other through h2's public calls; what they queue and the state they keep must be the same.
"""

from __future__ import annotations

import functools
import re

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hpack
import pytest
from h2.stream import StreamState
from hyperframe.frame import (
    ContinuationFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from layers._h2core import H2Core

_SC = h2.settings.SettingCodes
SETTINGS = {_SC.MAX_CONCURRENT_STREAMS: 100, _SC.INITIAL_WINDOW_SIZE: 65535, _SC.MAX_HEADER_LIST_SIZE: 65536}


def _client_bytes(end_stream: bool, client_window: int | None) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    if client_window is not None:
        client.update_settings({_SC.INITIAL_WINDOW_SIZE: client_window})
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")]
    client.send_headers(1, head, end_stream=end_stream)
    return client.data_to_send()


def _server(data: bytes) -> H2Core:
    core = H2Core(client_side=False, settings=SETTINGS, max_continuation_frames=16, max_header_list_size=65536)
    core.initiate_connection()
    core.receive_data(data)
    core.data_to_send()
    return core


def _state(core: H2Core) -> tuple[object, ...]:
    s = core.streams[1]
    m = s.state_machine
    return (
        m.state, m.headers_sent, m.trailers_sent, m.stream_closed_by, s.request_method,
        s.outbound_flow_control_window, core.outbound_flow_control_window, core.encoder.header_table.generation,
    )  # fmt: skip


BIG = [(b"x-big-%d" % i, b"v" * 200) for i in range(120)]  # a block over one 16 KiB frame


@pytest.mark.parametrize("end_stream", [True, False])
@pytest.mark.parametrize(
    ("status", "extra", "body"),
    [
        (b"200", [], b""),
        (b"200", [], b"Hello, world!"),
        (b"404", [(b"content-type", b"text/plain")], b"x" * 16384),
        (b"200", BIG, b"Hello"),
        (b"204", BIG, b""),
    ],
)
def test_send_response_matches_h2(
    end_stream: bool, status: bytes, extra: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = _client_bytes(end_stream, None)
    fast, slow = _server(data), _server(data)
    fields = [(b":status", status), *extra]
    assert fast.send_response(1, fields, body)
    slow.send_headers(1, list(fields), end_stream=not body)
    if body:
        slow.send_data(1, body, end_stream=True)
    assert fast.data_to_send() == slow.data_to_send()
    assert _state(fast) == _state(slow)
    assert fast.streams[1].state_machine.state is (StreamState.CLOSED if end_stream else StreamState.HALF_CLOSED_LOCAL)


@pytest.mark.parametrize(
    ("fields", "body", "client_window"),
    [
        ([(b":status", b"100")], b"", None),  # informational: h2's path
        ([(b":status", b"200")], b"x" * 16385, None),  # over one frame
        ([(b":status", b"200")], b"x" * 100, 10),  # over the stream window
    ],
)
def test_send_response_declines_what_is_not_plain(
    fields: list[tuple[bytes, bytes]], body: bytes, client_window: int | None
) -> None:
    core = _server(_client_bytes(True, client_window))
    before = _state(core)
    assert not core.send_response(1, fields, body)
    assert _state(core) == before
    assert core.data_to_send() == b""


def test_send_response_declines_a_second_head_and_unknown_streams() -> None:
    core = _server(_client_bytes(True, None))
    assert core.send_response(1, [(b":status", b"200")], b"")
    assert not core.send_response(1, [(b":status", b"200")], b"")
    assert not core.send_response(3, [(b":status", b"200")], b"")


def _h2_path(core: H2Core) -> H2Core:
    """``core`` receiving HEADERS through h2's own ``receive_data`` and ``_receive_headers_frame``."""
    core._frame_dispatch_table[HeadersFrame] = functools.partial(
        h2.connection.H2Connection._receive_headers_frame, core
    )
    core.receive_data = functools.partial(h2.connection.H2Connection.receive_data, core)  # type: ignore[method-assign]
    return core


def _outcome(core: H2Core, data: bytes) -> tuple[object, ...]:
    try:
        events = core.receive_data(data)
    except h2.exceptions.ProtocolError as exc:
        return (type(exc), re.sub(r"at 0x[0-9a-f]+", "at ...", str(exc)), core.data_to_send())  # no addresses
    seen = [
        (
            type(e).__name__,
            getattr(e, "stream_id", None),
            getattr(e, "headers", None),
            repr(getattr(e, "stream_ended", None)),
            repr(e),
        )
        for e in events
    ]
    streams = {
        sid: (
            s.state_machine.state,
            s._expected_content_length,
            s.outbound_flow_control_window,
            s._inbound_window_manager.current_window_size,
            s.max_outbound_frame_size,
            sorted(vars(s.state_machine).items()),  # state, client, headers/trailers seen, closed by
        )
        for sid, s in core.streams.items()
    }
    return (seen, streams, dict(core._closed_streams), core.data_to_send())


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")]


@pytest.mark.parametrize(
    ("sid", "fields", "flags"),
    [
        (3, REQUEST, ["END_HEADERS", "END_STREAM"]),
        (3, REQUEST, ["END_HEADERS"]),
        (3, [*REQUEST, (b"content-length", b"12")], ["END_HEADERS"]),
        (3, [*REQUEST, (b"content-length", b"1x")], ["END_HEADERS"]),
        (3, [*REQUEST, (b"content-length", b"1"), (b"content-length", b"2")], ["END_HEADERS"]),
        (3, [(b":status", b"100")], ["END_HEADERS"]),
        (3, [(b":status", b"200")], ["END_HEADERS", "END_STREAM"]),
        (3, [], ["END_HEADERS", "END_STREAM"]),
        (1, REQUEST, ["END_HEADERS", "END_STREAM"]),  # trailers on stream 1 (open)
        (4, REQUEST, ["END_HEADERS"]),  # even: not the client's
        (3, REQUEST, ["END_HEADERS", "PRIORITY"]),
    ],
)
def test_receive_headers_matches_h2(sid: int, fields: list[tuple[bytes, bytes]], flags: list[str]) -> None:
    data = _client_bytes(False, None)
    encoder = hpack.Encoder()
    encoder.encode(REQUEST)  # as the client coded stream 1's head (same table state)
    frame = HeadersFrame(sid)
    frame.data = encoder.encode(fields)
    for flag in flags:
        frame.flags.add(flag)
    if "PRIORITY" in flags:
        frame.depends_on, frame.stream_weight = 0, 15
    fast, slow = _server(data), _h2_path(_server(data))
    assert _outcome(fast, frame.serialize()) == _outcome(slow, frame.serialize())


def _headers(sid: int, block: bytes, flags: int, *, reserved: bool = False, length: int | None = None) -> bytes:
    """A HEADERS frame as raw bytes (any flags, the reserved bit, a length that lies)."""
    n = len(block) if length is None else length
    head = n.to_bytes(3, "big") + bytes([0x1, flags]) + (sid | (0x80000000 if reserved else 0)).to_bytes(4, "big")
    return head + block


def _block(*heads: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The header blocks a client would send for ``heads``, in order (one shared table)."""
    encoder = hpack.Encoder()
    encoder.encode(REQUEST)  # stream 1's head, as _client_bytes coded it
    return [encoder.encode(h) for h in heads]


def _ping() -> bytes:
    f = PingFrame(0)
    f.opaque_data = b"12345678"
    return f.serialize()


def _window(sid: int) -> bytes:
    f = WindowUpdateFrame(sid)
    f.window_increment = 1000
    return f.serialize()


def _settings_ack() -> bytes:
    f = SettingsFrame(0)
    f.flags.add("ACK")
    return f.serialize()


def _reset(sid: int) -> bytes:
    f = RstStreamFrame(sid)
    f.error_code = 8
    return f.serialize()


def _split_headers(sid: int, block: bytes) -> bytes:
    first = HeadersFrame(sid)
    first.data = block[:3]
    first.flags.add("END_STREAM")
    rest = ContinuationFrame(sid)
    rest.data = block[3:]
    rest.flags.add("END_HEADERS")
    return first.serialize() + rest.serialize()


_B = _block(REQUEST, REQUEST, [*REQUEST, (b"x-a", b"1")], REQUEST)
_SEQUENCES = {
    "pipelined": _headers(3, _B[0], 0x5) + _headers(5, _B[1], 0x5) + _headers(7, _B[2], 0x4) + _headers(9, _B[3], 0x5),
    "mixed": _ping() + _headers(3, _B[0], 0x5) + _window(0) + _window(3) + _settings_ack() + _headers(5, _B[1], 0x4),
    "continuation": _headers(3, _B[0], 0x5) + _split_headers(5, _B[1]) + _headers(7, _B[2], 0x5),
    "headers inside a block": _headers(3, _B[0], 0x1) + _headers(5, _B[1], 0x5),
    "reserved bit": _headers(3, _B[0], 0x5, reserved=True) + _headers(5, _B[1], 0x5),
    "too low": _headers(5, _B[0], 0x5) + _headers(3, _B[1], 0x5),
    "reused id": _headers(3, _B[0], 0x5) + _headers(3, _B[1], 0x5),
    "even id": _headers(4, _B[0], 0x5),
    "id zero": _headers(0, _B[0], 0x5),
    "unknown flag": _headers(3, _B[0], 0x5 | 0x10) + _headers(5, _B[1], 0x5 | 0x2),
    "padded": _headers(3, b"\x00" + _B[0], 0x5 | 0x8),
    "oversized": _headers(3, _B[0], 0x5, length=16385) + b"\x00" * 16385,
    "bad hpack": _headers(3, b"\xff\xff\xff\xff", 0x5),
    "informational": _headers(3, _block([(b":status", b"100")])[0], 0x4),
    "bad content-length": _headers(3, _block([*REQUEST, (b"content-length", b"x")])[0], 0x4),
    "after resets": _headers(3, _B[0], 0x4) + _reset(3) + _reset(1) + _headers(5, _B[1], 0x5) + _headers(7, _B[2], 0x5),
    "trailers on 1": _headers(1, _B[0], 0x5) + _headers(3, _B[1], 0x5),
}


@pytest.mark.parametrize("name", sorted(_SEQUENCES))
@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_receive_data_matches_h2(name: str, chunk: int) -> None:
    """HEADERS read straight from the bytes (``H2Core.receive_data``) against h2's buffer, frame
    objects and ``_receive_headers_frame``: the same events, streams, output and errors, whatever
    the reads' sizes."""
    data = _client_bytes(False, None)
    stream = _SEQUENCES[name]
    fast, slow = _server(data), _h2_path(_server(data))
    for i in range(0, len(stream), chunk):
        a, b = _outcome(fast, stream[i : i + chunk]), _outcome(slow, stream[i : i + chunk])
        assert a == b
        if isinstance(a[0], type):  # a connection error: both stop here
            break
    assert fast.highest_inbound_stream_id == slow.highest_inbound_stream_id
    assert fast.decoder.header_table.generation == slow.decoder.header_table.generation
