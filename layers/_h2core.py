"""The h2 state machine as the HTTP/2 layer uses it: a few corrections to h2's defaults.

Everything that touches h2's private attributes lives here, so an h2 upgrade that breaks one
of them breaks one small file (``tests/test_http2_conformance.py`` pins each behaviour).

What :class:`H2Core` changes, and why:

* **GOAWAY does not end the connection state.** h2 moves its connection state machine to
  CLOSED on the first GOAWAY sent or received, after which every frame raises, and it drops
  the frames queued for sending when a GOAWAY arrives. RFC 9113 6.8 wants the opposite:
  streams up to the last stream id go on to completion (that is what the two-step graceful
  shutdown is for). Here GOAWAY leaves the state and the queue as they were; the layer
  refuses new streams itself.
* **Frames on a stream we reset are ignored** (RFC 9113 5.1, "closed": "An endpoint MUST ignore
  frames that it receives on closed streams after it has sent a RST_STREAM frame"). h2 answers
  every such DATA frame with another RST_STREAM; the connection flow-control window is still
  credited, so the connection never stalls.
* **RST_STREAM on an idle stream is a connection error** of type PROTOCOL_ERROR (RFC 9113 6.4);
  h2 ignores it.
* **Frame size errors** get FRAME_SIZE_ERROR where h2 says PROTOCOL_ERROR (RFC 9113 6.5: a
  SETTINGS ACK with a payload; fixed-size frames of another size).
* **CONTINUATION floods** are cut at ``max_continuation_frames`` frames or a compressed header
  block over twice ``max_header_list_size`` (h2's own cap is 64 frames of any size), with
  ENHANCE_YOUR_CALM.
* **The concurrent-stream limit is the layer's**: h2 treats one stream over
  SETTINGS_MAX_CONCURRENT_STREAMS as a connection error; the layer answers REFUSED_STREAM
  instead (RFC 9113 5.1.2 allows either), counting streams whose handler still runs too (a
  stream the client reset is not free until its handler has noticed: CVE-2023-44487).
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.stream import StreamClosedBy
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, PushPromiseFrame

__all__ = ["H2Core", "ProtocolViolation", "error_name"]

ProtocolViolation = h2.exceptions.ProtocolError
"""What :meth:`H2Core.receive_data` raises when the peer broke the protocol (GOAWAY is queued)."""

_UNLIMITED_STREAMS = 2**31 - 1


def error_name(code: int | None) -> str:
    """``8`` -> ``"CANCEL"``; unknown codes as ``"0x.."``."""
    if code is None:
        return "?"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class _StateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that GOAWAY (sent or received) changes nothing."""

    _transitions = dict(H2ConnectionStateMachine._transitions)  # noqa: RUF012 - as h2's own
    for _state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
        for _input in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY):
            _transitions[(_state, _input)] = (None, _state)
    del _state, _input


# Frame types whose payload has a fixed size (RFC 9113 6.3, 6.4, 6.7, 6.9): another size is a
# FRAME_SIZE_ERROR. h2 reports some of them as PROTOCOL_ERROR.
_FIXED_SIZE = {0x2: 5, 0x3: 4, 0x6: 8, 0x8: 4}


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with a tighter, configurable CONTINUATION limit and the frame size
    errors RFC 9113 names (SETTINGS ACK with a payload, a SETTINGS length not a multiple of 6,
    fixed-size frames of another size: FRAME_SIZE_ERROR)."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9:
            length = (data[0] << 16) | (data[1] << 8) | data[2]
            ftype = data[3]
            if ftype == 0x4:
                if (data[4] & 0x1 and length) or length % 6:
                    raise h2.exceptions.FrameDataMissingError(f"SETTINGS frame of bad length {length}")
            else:
                want = _FIXED_SIZE.get(ftype)
                if want is not None and length != want:
                    raise h2.exceptions.FrameDataMissingError(f"frame type {ftype} of bad length {length}")
        return super().__next__()

    def __init__(self, server: bool, max_frames: int, max_bytes: int) -> None:
        super().__init__(server=server)
        self._max_frames = max_frames
        self._max_block = max_bytes

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        buffered = self._headers_buffer
        if buffered and isinstance(f, ContinuationFrame):
            if len(buffered) >= self._max_frames:
                raise h2.exceptions.DenialOfServiceError(
                    f"CONTINUATION flood: more than {self._max_frames} frames in one header block"
                )
            if sum(len(x.data) for x in buffered) + len(f.data) > self._max_block:
                raise h2.exceptions.DenialOfServiceError(
                    f"header block over {self._max_block} bytes (compressed) in CONTINUATION frames"
                )
        return super()._update_header_buffer(f)


class H2Core(h2.connection.H2Connection):
    """An ``h2.connection.H2Connection`` with the corrections listed in the module docstring.

    ``settings`` are the local settings to advertise (applied at once: the peer may rely on
    them only after its ACK, we are lenient before it). ``max_concurrent_streams`` is
    advertised but not enforced by h2: the layer refuses streams itself.
    """

    def __init__(
        self,
        *,
        client_side: bool,
        settings: dict[h2.settings.SettingCodes, int],
        max_continuation_frames: int,
        max_header_list_size: int,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,  # the layer builds and checks its own header lists
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
        )
        super().__init__(config=config)
        self.state_machine = _StateMachine()
        self.incoming_buffer = _FrameBuffer(
            server=not client_side,
            max_frames=max_continuation_frames,
            max_bytes=2 * max_header_list_size + 1024,
        )
        self.advertised = dict(settings)
        self.local_settings = h2.settings.Settings(client=client_side, initial_values=dict(settings))
        self.decoder.max_header_list_size = settings.get(h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE, 65536)
        self.max_inbound_frame_size = self.local_settings.max_frame_size

    def initiate_connection(self) -> None:
        """Queue the preface and our SETTINGS; then stop h2 enforcing the stream limit itself."""
        super().initiate_connection()
        unlimited = dict(self.advertised)
        unlimited[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = _UNLIMITED_STREAMS
        self.local_settings = h2.settings.Settings(
            client=self.config.client_side, initial_values=unlimited
        )

    # ---- small additions ----------------------------------------------------------------

    @property
    def pending_output(self) -> int:
        """Bytes queued by h2 and not yet taken by :meth:`data_to_send`."""
        return len(self._data_to_send)

    def take_output(self, into: bytearray) -> None:
        """Move every queued byte to the end of ``into`` (no intermediate copy)."""
        if self._data_to_send:
            into += self._data_to_send
            self._data_to_send = bytearray()

    def stream_is_open(self, stream_id: int) -> bool:
        """True while h2 still considers the stream open in at least one direction."""
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.closed

    def stream_can_send(self, stream_id: int) -> bool:
        """True while this side may still send DATA/HEADERS on the stream."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        state = stream.state_machine.state
        return state in (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)

    def stream_remote_open(self, stream_id: int) -> bool:
        """True while the peer may still send DATA on the stream (it has not ended or reset it)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        state = stream.state_machine.state
        return state in (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)

    def peer_max_concurrent_streams(self) -> int:
        return int(self.remote_settings.max_concurrent_streams)

    # ---- corrections --------------------------------------------------------------------

    def _handle_data_on_closed_stream(
        self, events: list[Any], exc: h2.exceptions.StreamClosedError, frame: Any
    ) -> tuple[list[Frame], list[Any]]:
        frames, out = super()._handle_data_on_closed_stream(events, exc, frame)
        # ``exc._events`` is non-empty only the first time h2 itself resets the stream for this
        # frame (a stream error it detected now): that RST_STREAM must go. Otherwise the stream
        # was already closed; if it was closed by a RST_STREAM we sent, the frame is ignored.
        if not exc._events and self._stream_closed_by(frame.stream_id) == StreamClosedBy.SEND_RST_STREAM:
            frames = [f for f in frames if f.type != 0x3]
        return frames, out

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Frame], list[Any]]:
        # h2 drops everything queued for sending on GOAWAY; the streams it lets finish need it.
        queued = self._data_to_send
        frames, events = super()._receive_goaway_frame(frame)
        self._data_to_send = queued + self._data_to_send
        return frames, events

    def _receive_rst_stream_frame(self, frame: Any) -> tuple[list[Frame], list[Any]]:
        sid = frame.stream_id
        if sid not in self.streams:
            outbound = self._stream_id_is_outbound(sid)
            highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
            if sid > highest:
                raise h2.exceptions.ProtocolError(f"RST_STREAM on idle stream {sid}")
        return super()._receive_rst_stream_frame(frame)


# Frame classes re-exported for the tests' raw-frame peers.
__all__ += ["ContinuationFrame", "HeadersFrame", "PushPromiseFrame"]
