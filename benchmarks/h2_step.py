"""One HTTP/2 server step in isolation, per library: h2 as it comes, our ``H2Core``, zttp.

    python benchmarks/h2_step.py [--n 20000]

A step is what a small request costs the sans-io layer: receive one HEADERS frame opening a new
stream (an h2load-like GET with END_STREAM, every field indexed after the first; a WINDOW_UPDATE every
1000), take the
events, queue a response head (``:status 200``, ``content-type``, ``content-length``) and a
13-byte body ending the stream, and take the bytes to send. No sockets, no trio, no app: this
is the part a compiled HTTP/2 library could replace. Figures are ns per step (best of 5), on
this shared host read for their ratios.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h2.config
import h2.connection
import h2.events
import hpack

from layers._h2core import H2Core

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"127.0.0.1"),
           (b"user-agent", b"h2load nghttp2/1.59.0")]  # fmt: skip
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")]
BODY = b"Hello, world!"


def _frames(n: int) -> list[bytes]:
    encoder = hpack.Encoder()
    blocks = [encoder.encode(REQUEST), encoder.encode(REQUEST)]
    out = []
    for i in range(n):
        block = blocks[min(i, 1)]
        frame = struct.pack(">BHBBL", 0, len(block), 1, 0x5, 2 * i + 1) + block
        if i % 1000 == 999:  # the client gives the connection window back, as h2load does
            frame += struct.pack(">BHBBLL", 0, 4, 8, 0, 0, 1000 * len(BODY))
        out.append(frame)
    return out


def h2_plain(frames: list[bytes]) -> float:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    return _h2_loop(conn, frames, fast=False)


def ours(frames: list[bytes]) -> float:
    core = H2Core(client_side=False, settings={}, max_continuation_frames=16, max_header_list_size=65536)
    return _h2_loop(core, frames, fast=True)


def _h2_loop(conn: h2.connection.H2Connection, frames: list[bytes], fast: bool) -> float:
    conn.initiate_connection()
    conn.receive_data(PREFACE)
    conn.data_to_send()
    t = time.perf_counter()
    for frame in frames:
        for ev in conn.receive_data(frame):
            if ev.__class__ is h2.events.RequestReceived:
                sid = ev.stream_id
                if not (fast and conn.send_response(sid, list(RESPONSE), BODY)):  # type: ignore[attr-defined]
                    conn.send_headers(sid, list(RESPONSE))
                    conn.send_data(sid, BODY, end_stream=True)
        conn.data_to_send()
    return time.perf_counter() - t


def zttp_step(frames: list[bytes]) -> float:
    import zttp

    conn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
    conn.initiate_connection()
    conn.receive_data(PREFACE)
    while conn.next_event() is not zttp.NEED_DATA:
        pass
    conn.data_to_send()
    t = time.perf_counter()
    for frame in frames:
        conn.receive_data(frame)
        while True:
            ev = conn.next_event()
            if ev is zttp.NEED_DATA:
                break
            if ev.__class__ is zttp.Request:
                stream = conn.stream(ev.stream_id)
                stream.send_response(200, RESPONSE[1:])
                stream.send_data(BODY)
                stream.end_message()
        conn.data_to_send()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="steps per connection (default: 2000)")
    args = parser.parse_args()
    frames = _frames(args.n)  # a connection each time (zttp calls 20,000 streams in a row a flood)
    cases: dict[str, Callable[[list[bytes]], float]] = {"h2 4.x": h2_plain, "ours (H2Core)": ours, "zttp": zttp_step}
    base = None
    for name, fn in cases.items():
        try:
            best = min(fn(frames) for _ in range(5)) / args.n * 1e9
        except ImportError as exc:
            print(f"{name:16} not available: {exc}")
            continue
        base = base or best
        print(f"{name:16} {best:8.0f} ns/step  {best / base:5.2f} of h2")


if __name__ == "__main__":
    main()
