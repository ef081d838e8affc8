"""The fast paths of ``layers._h2core.H2Core`` against h2's own, byte for byte (sans-io).

Two identical server cores receive the same client bytes; one answers through the fast path,
the other through h2's public calls; what they queue and the state they keep must be the same.
"""

from __future__ import annotations

import functools

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hpack
import pytest
from h2.stream import StreamState
from hyperframe.frame import HeadersFrame

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
    """``core`` receiving HEADERS through h2's own ``_receive_headers_frame``."""
    core._frame_dispatch_table[HeadersFrame] = functools.partial(
        h2.connection.H2Connection._receive_headers_frame, core
    )
    return core


def _outcome(core: H2Core, data: bytes) -> tuple[object, ...]:
    try:
        events = core.receive_data(data)
    except h2.exceptions.ProtocolError as exc:
        return (type(exc), str(exc), core.data_to_send())
    seen = [
        (
            type(e).__name__,
            getattr(e, "stream_id", None),
            getattr(e, "headers", None),
            repr(getattr(e, "stream_ended", None)),
        )
        for e in events
    ]
    streams = {sid: (s.state_machine.state, s._expected_content_length) for sid, s in core.streams.items()}
    return (seen, streams, core.data_to_send())


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
