"""The h2 state machine as the HTTP/2 layer uses it: a few corrections to h2's defaults.

Everything that touches h2's private attributes lives here, so an h2 upgrade that breaks one
of them breaks one small file (``tests/test_http2_conformance.py`` pins each behaviour). It is
the sans-io part of the layer, with ``_h2fields.py`` (the checks of received header lists and
the parsing of an HTTP/1.1 ``Upgrade: h2c`` request, re-exported here); nothing here awaits
or touches a socket.

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
* **Our HPACK encoder's table is capped** at :data:`ENCODER_TABLE_SIZE` (an encoder may use
  less than the peer allows; RFC 7541 4.2), and every SETTINGS_HEADER_TABLE_SIZE from the peer
  is answered with a dynamic table size update at the start of our next header block
  (:class:`_Encoder`). hpack forgets a pending update when the table is set to the size it
  already has, so a peer that lowered its limit to exactly our cap (from the 4096 default) got
  no update, and strict decoders (nghttp2, Chromium's) fail the connection with
  COMPRESSION_ERROR when the update they require is missing.
* **Settings take less memory**: h2 keeps a ``deque`` (about 600 bytes) per setting, two sets per
  connection; :class:`_Slot` is a small list with the same use.
* **A SETTINGS ACK with a payload** is FRAME_SIZE_ERROR (RFC 9113 6.5); h2 says PROTOCOL_ERROR.
* **CONTINUATION floods** are cut at ``max_continuation_frames`` frames or a compressed header
  block over twice ``max_header_list_size`` (h2's own cap is 64 frames of any size), with
  ENHANCE_YOUR_CALM.
* **Received header lists are checked here** (:func:`check_fields`), in one pass instead of h2's
  chain of generators, and a malformed one is a stream error (RFC 9113 8.1.1) rather than
  h2's connection error. A value holding a control character other than HTAB (0x00-0x08,
  0x0a-0x1f, 0x7f) is malformed (RFC 9110 5.5, which RFC 9113 8.2.1 lets us enforce): it
  would otherwise be forwarded to a laxer HTTP/1.1 backend, the usual start of a smuggling.
* **Work per call is bounded** (:meth:`H2Core.receive_step`): at most :data:`STEP_FRAMES`
  frames or about :data:`STEP_HEADER_BYTES` of header blocks, the rest left buffered
  (``more_input``) for the layer to take after a checkpoint. A burst of thousands of frames
  in one read (and h2's work for each) no longer holds the process for the whole read, and
  the layer's defences (rate limits, the stream limit) act after each step, not after the
  whole burst.
* **Frames that give the application nothing are budgeted** (``no_progress_limit``, CVE-2019-9512,
  9515, 9518 and kin): :meth:`H2Core.receive_step` classes every frame by the events it gave
  (``_count_frame``); one that brings no head, non-empty DATA, trailers, end or reset adds one
  to ``no_progress`` (a WINDOW_UPDATE does not while DATA we sent pays for it:
  :data:`WINDOW_CREDIT` per DATA frame), one that does takes :data:`PROGRESS_CREDIT` off, the
  count leaks ``no_progress_limit`` per ``no_progress_period`` seconds, and past the limit the
  connection ends with GOAWAY ENHANCE_YOUR_CALM (:class:`NoProgressFlood`, the reason as debug
  data).
* **Closed streams are remembered up to a small constant** (:data:`CLOSED_STREAMS_KEPT`, h2
  keeps 65,536): a long-lived connection's memory does not grow with the streams it carried.
  A frame on a stream forgotten since is treated as on a stream we reset (ignored).
* **Header blocks coded without a table change are remembered** (:class:`_Encoder`,
  :class:`_Decoder`): a repeated request or response head, every field indexed, is the same
  bytes for the same table, so neither side runs hpack's per-field work again until the table
  (or a limit the decoding checks) changes.
* **No eager ``repr`` of every received frame**: h2 formats each frame for its no-op trace
  logger; our copy of ``_receive_frame`` (same dispatch and closed-stream handling) does not.
* **A server's whole response is queued in one step** (:meth:`H2Core.send_response`): a final
  head and at most one DATA frame ending the stream, written as frame bytes directly, with the
  same stream-state transitions and flow-control accounting h2's ``send_headers`` +
  ``send_data`` make (h2 builds, checks and serializes frame objects for each: about a third
  of a small request's cost). Anything else (a 1xx, a body over a frame or the windows, a
  stream not open for it) takes h2's own path.
* **A request's HEADERS opening a stream take a shorter path** (``_receive_headers_frame``):
  the same checks, decoding, stream creation and state transitions as h2's, without what our
  configuration makes idle (the header validation flags h2 builds for its disabled checks, a
  second copy of the decoded list, the informational-response scan of a request that starts
  with ``:method``). Anything else (a client core, trailers, PRIORITY, an unusual head) is h2's.
  It also opens the stream as h2's ``_open_streams`` + ``_begin_new_stream`` do (closed streams
  moved to ``_closed_streams`` in order, the new stream's windows and frame size), reading each
  stream's state directly instead of through two properties per stream per request, and
  without h2's no-op debug logging; a low, reused or even id goes through h2's for its errors.
* **Such a HEADERS frame is read straight from the received bytes** (:meth:`H2Core.receive_data`):
  hyperframe builds, flags and parses a frame object for every frame (about a sixth of a small
  request's cost). A server's HEADERS with END_HEADERS (and maybe END_STREAM) only, a new odd
  stream id above the highest seen, within the frame size limit, no header block pending,
  goes from the buffer to the shorter path above; every other frame (a PADDED or PRIORITY one,
  CONTINUATION, an id h2 would refuse, any other type) is taken from h2's buffer as before, in
  order, so the outcome (events, state, output, errors) is h2's (``tests/test_h2core_fast.py``).
* **The concurrent-stream limit is the layer's**: h2 treats one stream over
  SETTINGS_MAX_CONCURRENT_STREAMS as a connection error; the layer answers REFUSED_STREAM
  instead (RFC 9113 5.1.2 allows either), counting streams whose handler still runs too (a
  stream the client reset is not free until its handler has noticed: CVE-2023-44487).
"""

from __future__ import annotations

import operator
import struct
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.events import RequestReceived, StreamEnded
from h2.stream import H2Stream, StreamClosedBy, StreamInputs, StreamState
from h2.utilities import SizeLimitDict
from hpack.hpack import Decoder, Encoder
from hpack.table import HeaderTable
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, RstStreamFrame

from ._h2budget import PROGRESS_CREDIT, WINDOW_CREDIT, NoProgressBudget, NoProgressFlood
from ._h2fields import Malformed, check_fields, check_request_pseudo, check_response_pseudo, h2c_settings

__all__ = [
    "H2Core",
    "Malformed",
    "NoProgressFlood",
    "ProtocolViolation",
    "check_fields",
    "check_request_pseudo",
    "check_response_pseudo",
    "error_name",
    "h2c_settings",
]

ProtocolViolation = h2.exceptions.ProtocolError
"""What :meth:`H2Core.receive_data` raises when the peer broke the protocol (GOAWAY is queued)."""

_UNLIMITED_STREAMS = 2**31 - 1
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_CONTENT_LENGTH = b"content-length"
_NAME_OF = operator.itemgetter(0)
_IDLE = StreamState.IDLE
_FRAME_HEAD = struct.Struct(">BHBBL")  # a frame header: length (3 bytes), type, flags, stream id

STEP_FRAMES = 64
"""Frames :meth:`H2Core.receive_step` processes at most per call (a frame held up by a header
block counts once: the block itself is bounded by ``max_continuation_frames``)."""

STEP_HEADER_BYTES = 32 * 1024
"""Bytes of header blocks (HEADERS, PUSH_PROMISE, CONTINUATION payloads) after which
:meth:`H2Core.receive_step` stops taking frames (HPACK decoding is the costly part of a frame;
one block may exceed it, up to the header list limits)."""

ENCODER_TABLE_SIZE = 1024
"""Bytes of HPACK dynamic table our encoder uses (at most; the peer may allow more). hpack
searches its table linearly for every field it encodes, and a server adds a new ``date``
entry every second: a small table keeps that search short."""


def error_name(code: int | None) -> str:
    """``8`` -> ``"CANCEL"``; unknown codes as ``"0x.."``."""
    if code is None:
        return "?"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class _Table(HeaderTable):
    """hpack's header table, counting its changes (``generation``): a header block coded
    against the table stays valid while nothing was added and nothing resized."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


_BLOCK_CACHE = 64
"""Header blocks remembered per direction and connection (while the table does not change)."""


class _Decoder(Decoder):
    """hpack's decoder remembering the header blocks it decoded without changing its table:
    a client repeating a request sends the very same bytes (every field indexed), which then
    decode to the same list without hpack's per-field work. Any change to the table (or to
    the limits the decoding checks) forgets them."""

    header_table: _Table

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _Table()
        self._cache: dict[tuple[bytes, bool], list[Any]] = {}
        self._stamp: tuple[int, int, int] = (-1, 0, 0)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        stamp = (table.generation, self.max_allowed_table_size, self.max_header_list_size)
        cache = self._cache
        if stamp != self._stamp:
            cache.clear()
            self._stamp = stamp
        key = (data if data.__class__ is bytes else bytes(data), raw)
        headers = cache.get(key)
        if headers is not None:
            return list(headers)
        headers = list(super().decode(data, raw))
        if table.generation == stamp[0] and len(cache) < _BLOCK_CACHE:
            cache[key] = headers
            return list(headers)
        return headers


class _Encoder(Encoder):
    """hpack's encoder with its table capped at :data:`ENCODER_TABLE_SIZE`, and a correct record
    of the size updates to signal (RFC 7541 4.2, 6.3), remembering the blocks it encoded
    without changing its table (a server repeating a response head, every field indexed,
    gets the same bytes again without hpack's per-field work; the layer only passes plain
    ``(bytes, bytes)`` tuples, never hpack's never-indexed kind).

    Setting ``header_table_size`` (h2 does, with the peer's SETTINGS_HEADER_TABLE_SIZE once it
    acknowledged it) always queues an update for the next header block, even when our size does
    not change (the peer's decoder may have lowered its own limit and then requires one). Since
    the last block, at most two are queued: the smallest size set meanwhile (it must not exceed
    the lowest limit the peer set meanwhile), then the current size.
    """

    @property
    def header_table_size(self) -> int:
        return int(self.header_table.maxsize)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        table = self.header_table
        size = min(value, ENCODER_TABLE_SIZE)
        low = min([*self.table_size_changes, size]) if table.resized else size
        table.maxsize = size  # evicts entries over the new size
        table.resized = True
        self.table_size_changes = [low, size] if low != size else [size]

    header_table: _Table

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _Table()
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._generation = -1

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or headers.__class__ is not list:
            return super().encode(headers, huffman)
        generation = table.generation
        cache = self._cache
        if generation != self._generation:
            cache.clear()
            self._generation = generation
        key = (huffman, *headers)
        try:
            block = cache.get(key)
        except TypeError:  # an unhashable value (the layer sends bytes, but to be safe)
            return super().encode(headers, huffman)
        if block is None:
            block = super().encode(headers, huffman)
            if table.generation == generation and len(cache) < _BLOCK_CACHE:
                cache[key] = block
        return block


class _StateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that GOAWAY (sent or received) changes nothing."""

    _transitions = dict(H2ConnectionStateMachine._transitions)  # noqa: RUF012 - as h2's own
    for _state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
        for _input in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY):
            _transitions[(_state, _input)] = (None, _state)
    del _state, _input


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with a tighter, configurable CONTINUATION limit, and FRAME_SIZE_ERROR
    for a SETTINGS ACK with a payload (RFC 9113 6.5; h2 says PROTOCOL_ERROR)."""

    def __init__(self, server: bool, max_frames: int, max_bytes: int) -> None:
        super().__init__(server=server)
        self._max_frames = max_frames
        self._max_block = max_bytes

    def __next__(self) -> Frame:
        try:
            return super().__next__()
        except h2.exceptions.ProtocolError as exc:
            data = self._data  # the bad frame is still at the front
            if len(data) >= 9 and data[3] == 0x4 and data[4] & 0x1:  # SETTINGS with ACK
                raise h2.exceptions.FrameDataMissingError("SETTINGS ACK with a payload") from exc
            raise

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


class _Slot(list):  # type: ignore[type-arg]
    """Stands in for the ``deque`` h2 keeps per setting (the current value, then values waiting
    for an ACK): a deque allocates a 64-slot block, about 600 bytes, and a connection holds two
    sets of about eight. Only what h2 uses: index, ``append``, ``len``, ``popleft``."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def _compact(settings: h2.settings.Settings) -> None:
    table: dict[Any, Any] = settings._settings
    for key, values in table.items():
        if not isinstance(values, _Slot):
            table[key] = _Slot(values)


CLOSED_STREAMS_KEPT = 128
"""Closed streams whose end (END_STREAM or RST_STREAM, either way) a connection remembers
exactly, the most recently closed (h2 keeps 65,536: several megabytes on a long-lived
connection). Frames arriving later on an older closed stream are treated as on a stream we
reset: ignored, DATA credited to the connection window (RFC 9113 5.1 lets an endpoint stop
telling such late frames apart)."""


class _ClosedStreams(SizeLimitDict):
    """h2's record of how closed streams ended, holding :data:`CLOSED_STREAMS_KEPT`; it
    remembers the highest stream id it forgot, per parity (``forgot[sid & 1]``)."""

    def __init__(self) -> None:
        self.forgot = [0, 0]
        super().__init__(size_limit=CLOSED_STREAMS_KEPT)

    def _check_size_limit(self) -> None:
        while len(self) > CLOSED_STREAMS_KEPT:
            sid, _ = self.popitem(last=False)
            if sid > self.forgot[sid & 1]:
                self.forgot[sid & 1] = sid


class H2Core(NoProgressBudget, h2.connection.H2Connection):
    """An ``h2.connection.H2Connection`` with the corrections listed in the module docstring.

    ``settings`` are the local settings to advertise (applied at once: the peer may rely on
    them only after its ACK, we are lenient before it). ``max_concurrent_streams`` is
    advertised but not enforced by h2: the layer refuses streams itself.
    """

    more_input = False
    """Set by :meth:`receive_step`: it stopped at its budget, complete frames may be waiting."""

    def __init__(
        self,
        *,
        client_side: bool,
        settings: dict[h2.settings.SettingCodes, int],
        max_continuation_frames: int,
        max_header_list_size: int,
        no_progress_limit: int = 1000,
        no_progress_period: float = 10.0,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,  # the layer builds and checks its own header lists
            normalize_outbound_headers=False,
            validate_inbound_headers=False,  # check_fields() below, in one pass
            normalize_inbound_headers=False,
        )
        super().__init__(config=config)
        self.state_machine = _StateMachine()
        self._closed_streams: _ClosedStreams = _ClosedStreams()
        self.incoming_buffer = _FrameBuffer(
            server=not client_side,
            max_frames=max_continuation_frames,
            max_bytes=2 * max_header_list_size + 1024,
        )
        self.advertised = dict(settings)
        self.local_settings = h2.settings.Settings(client=client_side, initial_values=dict(settings))
        self.decoder = _Decoder()
        self.decoder.max_header_list_size = settings.get(h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE, 65536)
        self.max_inbound_frame_size = self.local_settings.max_frame_size
        self.encoder = _Encoder()
        self.encoder.header_table_size = ENCODER_TABLE_SIZE
        _compact(self.remote_settings)
        self._budget_init(no_progress_limit, no_progress_period)

    def initiate_connection(self) -> None:
        """Queue the preface and our SETTINGS; then stop h2 enforcing the stream limit itself."""
        super().initiate_connection()
        unlimited = dict(self.advertised)
        unlimited[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = _UNLIMITED_STREAMS
        self.local_settings = h2.settings.Settings(client=self.config.client_side, initial_values=unlimited)
        _compact(self.local_settings)

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
        return stream is not None and stream.state_machine.state is not _CLOSED  # h2's ``closed``

    def peer_max_concurrent_streams(self) -> int:
        return int(self.remote_settings.max_concurrent_streams)

    def send_response(self, stream_id: int, fields: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Server side: queue the final response head ``fields`` (``:status`` first, not 1xx;
        already checked by the layer) and, if ``body``, one DATA frame, ending the stream either
        way, exactly as ``send_headers(end_stream=not body)`` + ``send_data(body,
        end_stream=True)`` would. Returns False, having changed nothing, when that is not a
        plain case (h2's own path then raises or does it): not a server stream that is open or
        half-closed (remote) with no head sent yet, a 1xx, a body larger than one frame or the
        windows."""
        if self.state_machine.state is not _SERVER_OPEN:
            return False
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        machine = stream.state_machine
        state = machine.state
        if state is not _OPEN and state is not _HALF_CLOSED_REMOTE:
            return False
        if machine.headers_sent or machine.client is not False:
            return False
        if fields[0][0] != b":status" or fields[0][1][:1] == b"1":
            return False
        n = len(body)
        if n and (
            n > self.max_outbound_frame_size
            or n > self.outbound_flow_control_window
            or n > stream.outbound_flow_control_window
        ):
            return False
        # As the state machine does: the transition before the (irreversible) encoding.
        machine.headers_sent = True  # response_sent()
        if state is _OPEN:
            machine.state = _HALF_CLOSED_LOCAL
        else:
            machine.state = _CLOSED
            machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM  # send_end_stream()
        stream.request_method = None  # h2 takes it from the head it sends (a response has none)
        block = self.encoder.encode(fields)
        out = self._data_to_send
        size: int = stream.max_outbound_frame_size or self.max_outbound_frame_size
        flags = 0x4 if n else 0x5  # END_HEADERS, END_STREAM when there is no body
        if len(block) <= size:
            out += _FRAME_HEAD.pack(len(block) >> 16, len(block) & 0xFFFF, 0x1, flags, stream_id)
            out += block
        else:  # HEADERS + CONTINUATION, END_HEADERS on the last
            chunks = [block[i : i + size] for i in range(0, len(block), size)]
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                kind = 0x1 if i == 0 else 0x9
                bits = (0x4 if last else 0) | (flags & 0x1 if i == 0 else 0)
                out += _FRAME_HEAD.pack(len(chunk) >> 16, len(chunk) & 0xFFFF, kind, bits, stream_id)
                out += chunk
        if n:
            out += _FRAME_HEAD.pack(n >> 16, n & 0xFFFF, 0x0, 0x1, stream_id)  # DATA, END_STREAM
            out += body
            stream.outbound_flow_control_window -= n
            self.outbound_flow_control_window -= n
            if self.window_credit < self._np_limit:
                self.window_credit += WINDOW_CREDIT
        return True

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None) -> None:
        """h2's, counting the WINDOW_UPDATEs the frame pays for (:data:`WINDOW_CREDIT`)."""
        super().send_data(stream_id, data, end_stream, pad_length)
        if data and self.window_credit < self._np_limit:
            self.window_credit += WINDOW_CREDIT

    # ---- corrections --------------------------------------------------------------------

    def _receive_frame(self, frame: Frame) -> list[Any]:
        # h2's own, less its eager ``repr(frame)`` for a trace log (a few percent of a small
        # request's cost): the same dispatch and closed-stream handling, line for line.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]

    def receive_data(self, data: Any) -> list[Any]:
        """h2's ``receive_data``: every complete frame of ``data`` (and of what was buffered),
        in as many :meth:`receive_step` as it takes."""
        events = self.receive_step(data)
        while self.more_input:
            events += self.receive_step(b"")
        return events

    def receive_step(self, data: Any) -> list[Any]:
        """Buffer ``data`` and process at most :data:`STEP_FRAMES` frames, or header blocks
        of at most about :data:`STEP_HEADER_BYTES` bytes, whichever comes first; their
        events. ``more_input`` then says whether complete frames may be left in the buffer
        (call again with ``b""`` before reading more)."""
        # h2's own loop over the frame buffer, except that a request's HEADERS opening a stream
        # (END_HEADERS, maybe END_STREAM, no other flag; a new odd stream id above the highest
        # seen; a server core in its open state, no header block pending) is read from the
        # bytes and handed to ``_open_request`` without hyperframe's frame object: what h2's
        # buffer would check of such a frame (its length) is checked here, and anything else
        # goes through h2's buffer, one frame at a time, in order.
        buffer = self.incoming_buffer
        buffer.add_data(data)
        buffer.max_frame_size = limit = self.max_inbound_frame_size
        events: list[Any] = []
        fast = not self.config.client_side
        frames = STEP_FRAMES
        block_bytes = STEP_HEADER_BYTES
        self.more_input = False
        try:
            while True:
                raw = buffer._data
                n = len(raw)
                if n < 9:
                    break
                if frames <= 0 or block_bytes <= 0:
                    self.more_input = True
                    break
                frames -= 1
                if (
                    fast
                    and raw[3] == 0x1
                    and (raw[4] == 0x5 or raw[4] == 0x4)
                    and raw[5] & 0x7F == 0  # below 2**24: the stream id fits the small check below
                ):
                    length = raw[0] << 16 | raw[1] << 8 | raw[2]
                    sid = raw[6] << 16 | raw[7] << 8 | raw[8]
                    if (
                        sid & 1
                        and length <= limit
                        and n >= 9 + length
                        and sid > self.highest_inbound_stream_id
                        and sid not in self.streams
                        and not buffer._headers_buffer
                        and self.state_machine.state is _SERVER_OPEN
                        and self.local_settings.max_concurrent_streams >= _UNLIMITED_STREAMS
                    ):
                        block = bytes(raw[9 : 9 + length])
                        end_stream = raw[4] == 0x5
                        del raw[: 9 + length]
                        block_bytes -= length
                        events += self._open_request(sid, block, end_stream)
                        if self.no_progress:
                            self.no_progress = max(0, self.no_progress - PROGRESS_CREDIT)
                        continue
                kind = raw[3]
                try:
                    frame = next(buffer)
                except StopIteration:
                    break
                if kind == 0x1 or kind == 0x5 or kind == 0x9:  # HEADERS, PUSH_PROMISE, CONTINUATION
                    block_bytes -= n - len(raw)
                new = self._receive_frame(frame)
                self._count_frame(new)
                events += new
        except InvalidPaddingError as e:
            self._terminate_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise h2.exceptions.ProtocolError("Received frame with invalid padding.") from e
        except NoProgressFlood as e:
            self._terminate_connection(e.error_code, str(e).encode()[:256])
            raise
        except h2.exceptions.ProtocolError as e:
            self._terminate_connection(e.error_code)
            raise
        return events

    def _terminate_connection(self, error_code: Any, additional_data: bytes = b"") -> None:
        # h2's, with the GOAWAY's debug data (why we end the connection) when there is some
        f = GoAwayFrame(0)
        f.last_stream_id = self.highest_inbound_stream_id
        f.error_code = error_code
        f.additional_data = additional_data
        self.state_machine.process_input(ConnectionInputs.SEND_GOAWAY)
        self._prepare_for_sending([f])

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Frame], list[Any]]:
        sid = frame.stream_id
        if (
            sid in self.streams
            or self.config.client_side
            or self.state_machine.state is not _SERVER_OPEN  # RECV_HEADERS changes nothing there
            or "PRIORITY" in frame.flags
            or self.local_settings.max_concurrent_streams < _UNLIMITED_STREAMS
        ):
            return super()._receive_headers_frame(frame)
        return [], self._open_request(sid, frame.data, "END_STREAM" in frame.flags)

    def _open_request(self, sid: int, block: bytes, end_stream: bool) -> list[Any]:
        """A server's HEADERS (no PRIORITY, header block complete) on stream ``sid``, not in
        ``self.streams``, as h2's ``_receive_headers_frame`` takes it in the open state with no
        stream limit: its events."""
        # h2's ``_open_streams(1)``: it counts the open streams (against our unlimited setting:
        # nothing to count) and moves the closed ones to ``_closed_streams``, in order
        streams = self.streams
        done = [i for i, s in streams.items() if s.state_machine.state is _CLOSED]
        if done:
            closed = self._closed_streams
            for i in done:
                closed[i] = streams.pop(i).state_machine.stream_closed_by
        headers: Any = h2.connection._decode_headers(self.decoder, block)  # a list (_Decoder)
        if sid & 1 and sid > self.highest_inbound_stream_id:
            # h2's ``_begin_new_stream`` for an id it accepts (without its no-op debug logging)
            stream = H2Stream(
                sid,
                config=self.config,
                inbound_window_size=self.local_settings.initial_window_size,
                outbound_window_size=self.remote_settings.initial_window_size,
            )
            stream.max_outbound_frame_size = self.max_outbound_frame_size
            streams[sid] = stream
            self.highest_inbound_stream_id = sid
        else:  # a low, reused or even id: h2's own errors
            stream = self._begin_new_stream(sid, AllowedStreamIDs.ODD)
        if not headers or headers[0][0] == b":status":  # h2 sees an informational response
            return stream.receive_headers(headers, end_stream, None)[1]
        machine = stream.state_machine
        events: list[Any]
        request: Any
        if machine.state is not _IDLE:  # pragma: no cover - a new stream is idle
            events = machine.process_input(StreamInputs.RECV_HEADERS)
            request = events[0]
            if end_stream:
                ended = machine.process_input(StreamInputs.RECV_END_STREAM)
                request.stream_ended = ended[0]
                events += ended
        else:
            # h2's transitions of an idle stream, without ``process_input``'s table lookup on
            # enum pairs: RECV_HEADERS (``request_received``: IDLE -> OPEN), then, with
            # END_STREAM, RECV_END_STREAM (``stream_half_closed``: OPEN -> HALF_CLOSED_REMOTE,
            # ``stream_closed_by`` left unset)
            machine.client = False
            machine.headers_received = True
            request = RequestReceived(stream_id=sid)
            if end_stream:
                machine.state = _HALF_CLOSED_REMOTE
                ended_event = StreamEnded(stream_id=sid)
                request.stream_ended = ended_event
                events = [request, ended_event]
            else:
                machine.state = _OPEN
                events = [request]
        if _CONTENT_LENGTH in map(_NAME_OF, headers):  # (else h2's scan finds none: the default stays)
            stream._initialize_content_length(headers)
        request.headers = headers  # our decoder returns a list of its own
        return events

    def _stream_closed_by(self, stream_id: int) -> StreamClosedBy | None:
        # h2's, with streams forgotten by ``_ClosedStreams`` taken as reset by us
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.closed_by
        closed = self._closed_streams
        if stream_id in closed:
            return closed[stream_id]  # type: ignore[no-any-return]
        if stream_id <= closed.forgot[stream_id & 1]:
            return StreamClosedBy.SEND_RST_STREAM
        return None

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

    def _acknowledge_settings(self) -> list[Frame]:
        frames = super()._acknowledge_settings()
        _compact(self.remote_settings)  # h2 made deques for settings it had not seen
        return frames

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
