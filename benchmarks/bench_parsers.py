"""Parser and codec libraries in isolation: ns and instructions per request-sized operation.

    python benchmarks/bench_parsers.py                 # ns/op, best of --repeats
    python benchmarks/bench_parsers.py --callgrind     # + instructions/op under valgrind (the figure to quote)
    python benchmarks/bench_parsers.py --only hpack    # groups or case names containing the word

Issue 16 item 2 chooses the compiled HTTP libraries by measurement.  Each *case* is a function that
builds its state (outside the timing) and returns ``op``, a zero-argument callable doing the work one
request costs; every library does the same work and the case checks its result once before timing:

- ``h1``: a server's HTTP/1.1 step on a keep-alive connection, for three request heads (a browser-like
  GET with 8 headers, a POST with Content-Length and a 13-byte body, a chunked POST): ``parse`` feeds
  the bytes and collects method, target, header list and body; ``cycle`` also serializes the
  response (status, 3 headers, 13-byte body) and readies the connection for the next request.
  httptools has no serializer: its ``cycle`` builds the response with a ``bytes.join`` (what uvicorn
  does, and what a fast engine of ours would do).  h11 cannot parse twice without answering, so its
  ``parse`` runs on a fresh ``h11.Connection`` (``new`` rows give each library's construction cost).
- ``hpack``: encode and decode of a typical request header block and response header block, *warm*
  (one encoder/decoder whose dynamic table already holds the block: the steady state of a
  connection) and *cold* (a fresh encoder/decoder per block: the first request of a connection).
- ``h2``: a full server-side step per request on one connection: ``receive_data`` of the client's
  HEADERS frame (end_stream), the events, ``send_headers`` + ``send_data(end_stream)`` of the
  response, ``data_to_send``.  The client's frames come from an h2 client (warm HPACK), made before
  the timing; each repeat replays them on a fresh server connection.

Timing: ``--repeats`` runs of ``--number`` calls, the best mean (ns/op, noisy on a shared host).
``--callgrind`` reruns every case under ``valgrind --tool=callgrind`` twice in a child process, with
``n`` and ``2n`` calls after the same setup and warm-up, and divides the difference of the instruction
totals by ``n``: set-up, imports and interpreter start cancel out, and what is left is deterministic
to well under 1%.  A library that does not import is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

Op = Callable[[], object]

# --------------------------------------------------------------------------------------------------
# The messages.
UA = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GET_FIELDS = [
    (b"host", b"example.com"),
    (b"user-agent", UA),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"connection", b"keep-alive"),
    (b"cookie", b"session=8f14e45fceea167a5a36dedd4bea2543; theme=dark"),
    (b"upgrade-insecure-requests", b"1"),
]
BODY = b"Hello, world!"


def _head(start: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    return start + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


H1_REQUESTS = {
    "GET": _head(b"GET /index.html?q=1 HTTP/1.1", GET_FIELDS),
    "POST-CL": _head(
        b"POST /api/items HTTP/1.1",
        [*GET_FIELDS[:5], (b"content-type", b"text/plain"), (b"content-length", b"13")],
    )
    + BODY,
    "POST-chunked": _head(
        b"POST /api/items HTTP/1.1",
        [*GET_FIELDS[:5], (b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")],
    )
    + b"d\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
}
RESPONSE_FIELDS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"13"),
    (b"date", b"Mon, 07 Dec 2026 12:00:00 GMT"),
]
EXPECT = {  # (method, target, number of fields, body) each parse must produce
    "GET": (b"GET", b"/index.html?q=1", 8, b""),
    "POST-CL": (b"POST", b"/api/items", 7, BODY),
    "POST-chunked": (b"POST", b"/api/items", 7, BODY),
}
H2_REQUEST_FIELDS = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/index.html?q=1"),
    *[f for f in GET_FIELDS if f[0] not in (b"host", b"connection")],
    (b"sec-fetch-mode", b"navigate"),
]
H2_RESPONSE_FIELDS = [(b":status", b"200"), *RESPONSE_FIELDS, (b"server", b"trio-stack")]
HPACK_BLOCKS = {"request": H2_REQUEST_FIELDS, "response": H2_RESPONSE_FIELDS}

CASES: dict[str, tuple[str, Callable[[], Op]]] = {}  # name -> (distribution that must import, setup)


def case(name: str, dist: str) -> Callable[[Callable[[], Op]], Callable[[], Op]]:
    def deco(fn: Callable[[], Op]) -> Callable[[], Op]:
        CASES[name] = (dist, fn)
        return fn

    return deco


def check(shape: str, got: tuple[bytes, bytes, int, bytes]) -> None:
    if got != EXPECT[shape]:
        raise AssertionError(f"{shape}: parsed {got!r}, expected {EXPECT[shape]!r}")


# --------------------------------------------------------------------------------------------------
# HTTP/1.1: h11 (reference).
def _h11_parse(conn: Any, data: bytes) -> tuple[bytes, bytes, int, bytes]:
    import h11

    conn.receive_data(data)
    req = conn.next_event()
    body = b""
    while True:
        ev = conn.next_event()
        if type(ev) is h11.Data:
            body += ev.data
        elif type(ev) is h11.EndOfMessage:
            break
        else:
            raise AssertionError(ev)
    return req.method, req.target, len(req.headers), body


def _h11_cases(shape: str) -> None:
    data = H1_REQUESTS[shape]

    @case(f"h1 parse {shape} | h11", "h11")
    def parse() -> Op:
        import h11

        check(shape, _h11_parse(h11.Connection(h11.SERVER), data))
        return lambda: _h11_parse(h11.Connection(h11.SERVER), data)

    @case(f"h1 cycle {shape} | h11", "h11")
    def cycle() -> Op:
        import h11

        conn = h11.Connection(h11.SERVER)
        resp = h11.Response(status_code=200, headers=RESPONSE_FIELDS)

        def op() -> bytes:
            got = _h11_parse(conn, data)
            out = conn.send(resp) + conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
            assert got[0]
            return out

        check(shape, _h11_parse(h11.Connection(h11.SERVER), data))
        return op


# HTTP/1.1: httptools (llhttp).
class _Proto:
    __slots__ = ("body", "done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _httptools_cases(shape: str) -> None:
    data = H1_REQUESTS[shape]

    def parse_on(parser: Any, proto: _Proto) -> tuple[bytes, bytes, int, bytes]:
        parser.feed_data(data)
        assert proto.done
        return parser.get_method(), proto.url, len(proto.headers), proto.body

    @case(f"h1 parse {shape} | httptools", "httptools")
    def parse() -> Op:
        import httptools

        proto = _Proto()
        parser = httptools.HttpRequestParser(proto)
        check(shape, parse_on(parser, proto))
        return lambda: parse_on(parser, proto)

    @case(f"h1 cycle {shape} | httptools", "httptools")
    def cycle() -> Op:
        import httptools

        proto = _Proto()
        parser = httptools.HttpRequestParser(proto)

        def op() -> bytes:
            parse_on(parser, proto)
            keep = parser.should_keep_alive()
            head = [b"HTTP/1.1 200 OK\r\n"]
            for n, v in RESPONSE_FIELDS:
                head += (n, b": ", v, b"\r\n")
            head.append(b"\r\n" if keep else b"connection: close\r\n\r\n")
            head.append(BODY)
            return b"".join(head)

        check(shape, parse_on(parser, proto))
        return op

    @case("h1 new | httptools", "httptools")
    def new() -> Op:
        import httptools

        proto = _Proto()
        return lambda: httptools.HttpRequestParser(proto)


# HTTP/1.1: zttp (Zig core).
def _zttp_parse(conn: Any, data: bytes) -> tuple[bytes, bytes, int, bytes]:
    import zttp

    req = conn.receive_event(data)
    body = b""
    if not req.end_stream:
        while True:
            ev = conn.next_event()
            if type(ev) is zttp.Data:
                body += ev.data
            elif type(ev) is zttp.EndOfMessage:
                break
            else:
                raise AssertionError(ev)
    return req.method, req.target, len(req.headers), body


def _zttp_cases(shape: str) -> None:
    data = H1_REQUESTS[shape]

    @case(f"h1 parse {shape} | zttp", "zttp")
    def parse() -> Op:
        import zttp

        check(shape, _zttp_parse(zttp.Connection(zttp.SERVER), data))
        # like h11, zttp's connection wants the response before the next request: a fresh one each time
        return lambda: _zttp_parse(zttp.Connection(zttp.SERVER), data)

    @case(f"h1 cycle {shape} | zttp", "zttp")
    def cycle() -> Op:
        import zttp

        conn = zttp.Connection(zttp.SERVER)

        def op() -> bytes:
            _zttp_parse(conn, data)
            conn.send_response(200, RESPONSE_FIELDS)
            conn.send_data(BODY)
            conn.end_message()
            out: bytes = conn.data_to_send()
            conn.start_next_cycle()
            return out

        check(shape, _zttp_parse(zttp.Connection(zttp.SERVER), data))
        return op


for _shape in H1_REQUESTS:
    _h11_cases(_shape)
    _httptools_cases(_shape)
    _zttp_cases(_shape)


@case("h1 new | h11", "h11")
def _h11_new() -> Op:
    import h11

    return lambda: h11.Connection(h11.SERVER)


@case("h1 new | zttp", "zttp")
def _zttp_new() -> Op:
    import zttp

    return lambda: zttp.Connection(zttp.SERVER)


# --------------------------------------------------------------------------------------------------
# HPACK.  Each library: (encoder factory, encode(enc, fields) -> bytes, decoder factory, decode).
def _hpack_lib(name: str) -> tuple[Any, Any, Any, Any]:
    if name == "hpack":
        import hpack

        return hpack.Encoder, lambda e, f: e.encode(f), hpack.Decoder, lambda d, b: d.decode(b, raw=True)
    if name == "jh2 (Rust _hazmat)":
        from jh2 import _hazmat  # type: ignore[import-untyped,import-not-found,unused-ignore]

        return (
            _hazmat.Encoder,
            lambda e, f: e.encode([(n, v, False) for n, v in f], True),
            _hazmat.Decoder,
            lambda d, b: d.decode(b, True),
        )
    if name == "fast-hpack":
        import fast_hpack  # type: ignore[import-untyped,import-not-found,unused-ignore]

        return (
            lambda: fast_hpack.Encoder(fast_hpack.HeaderTable()),
            lambda e, f: e.encode(f),
            lambda: fast_hpack.Decoder(fast_hpack.HeaderTable()),
            lambda d, b: d.decode(b, raw=True),
        )
    raise KeyError(name)


HPACK_LIBS = {"hpack": "hpack", "jh2 (Rust _hazmat)": "jh2", "fast-hpack": "fast-hpack"}


def _fields(decoded: Any) -> list[tuple[bytes, bytes]]:
    def b(x: Any) -> bytes:
        return x.encode() if isinstance(x, str) else bytes(x)  # fast-hpack decodes to str even with raw=True

    return [(b(t[0]), b(t[1])) for t in decoded]


def _hpack_cases(lib: str, block: str) -> None:
    fields = HPACK_BLOCKS[block]

    @case(f"hpack encode {block} warm | {lib}", HPACK_LIBS[lib])
    def enc_warm() -> Op:
        new_enc, encode, _, _ = _hpack_lib(lib)
        enc = new_enc()
        encode(enc, fields)
        return lambda: encode(enc, fields)

    @case(f"hpack encode {block} cold | {lib}", HPACK_LIBS[lib])
    def enc_cold() -> Op:
        new_enc, encode, _, _ = _hpack_lib(lib)
        return lambda: encode(new_enc(), fields)

    @case(f"hpack decode {block} warm | {lib}", HPACK_LIBS[lib])
    def dec_warm() -> Op:
        new_enc, encode, new_dec, decode = _hpack_lib(lib)
        enc = new_enc()
        cold, warm = encode(enc, fields), encode(enc, fields)
        dec = new_dec()
        assert _fields(decode(dec, cold)) == fields
        assert _fields(decode(dec, warm)) == fields
        return lambda: decode(dec, warm)

    @case(f"hpack decode {block} cold | {lib}", HPACK_LIBS[lib])
    def dec_cold() -> Op:
        new_enc, encode, new_dec, decode = _hpack_lib(lib)
        cold = encode(new_enc(), fields)
        assert _fields(decode(new_dec(), cold)) == fields
        return lambda: decode(new_dec(), cold)


for _lib in HPACK_LIBS:
    for _block in HPACK_BLOCKS:
        _hpack_cases(_lib, _block)


# --------------------------------------------------------------------------------------------------
# HTTP/2: a server's step per request.  The client's bytes are made once by an h2 client.
H2_STEPS = 30_000  # requests the client bytes cover (one server connection per repeat)


def _client_bytes(steps: int) -> tuple[bytes, list[bytes]]:
    """(preface + SETTINGS + a large connection WINDOW_UPDATE, one HEADERS frame per request)."""
    import h2.config
    import h2.connection

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(2**31 - 1 - 65535)
    preface = c.data_to_send()
    frames = []
    for i in range(steps):
        c.send_headers(1 + 2 * i, H2_REQUEST_FIELDS, end_stream=True)
        frames.append(c.data_to_send())
    return preface, frames


_CLIENT: tuple[bytes, list[bytes]] | None = None


def _h2_family_case(lib: str) -> None:
    @case(f"h2 server step | {lib}", lib)
    def step() -> Op:
        global _CLIENT
        if _CLIENT is None:
            _CLIENT = _client_bytes(H2_STEPS)
        preface, frames = _CLIENT
        config_mod = importlib.import_module(f"{lib}.config")
        conn_mod = importlib.import_module(f"{lib}.connection")
        events_mod = importlib.import_module(f"{lib}.events")
        request_received = events_mod.RequestReceived
        config = config_mod.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,  # as layers/_h2core.py
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        conn = conn_mod.H2Connection(config=config)
        conn.initiate_connection()
        conn.receive_data(preface)
        conn.data_to_send()
        it = iter(frames)

        def op() -> bytes:
            out = b""
            for ev in conn.receive_data(next(it)):
                if type(ev) is request_received:
                    sid = ev.stream_id
                    conn.send_headers(sid, H2_RESPONSE_FIELDS)
                    conn.send_data(sid, BODY, end_stream=True)
                    out = conn.data_to_send()
            return out

        first = op()
        assert BODY in first, first
        return op


for _lib in ("h2", "jh2"):
    _h2_family_case(_lib)


@case("h2 server step | zttp", "zttp")
def _zttp_h2_step() -> Op:
    import zttp

    global _CLIENT
    if _CLIENT is None:
        _CLIENT = _client_bytes(H2_STEPS)
    preface, frames = _CLIENT
    conn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
    conn.initiate_connection()
    conn.receive_data(preface)
    while conn.next_event() is not zttp.NEED_DATA:
        pass
    conn.data_to_send()
    it = iter(frames)
    request = zttp.Request
    need = zttp.NEED_DATA
    response = H2_RESPONSE_FIELDS[1:]

    def op() -> bytes:
        conn.receive_data(next(it))
        while (ev := conn.next_event()) is not need:
            if type(ev) is request:
                s = conn.stream(ev.stream_id)
                s.send_response(200, response)
                s.send_data(BODY)
                s.end_message()
        out: bytes = conn.data_to_send()
        return out

    first = op()
    assert BODY in first, first
    return op


# --------------------------------------------------------------------------------------------------
# Running.
def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def available(dist: str) -> bool:
    module = {"fast-hpack": "fast_hpack"}.get(dist, dist)
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def time_case(setup: Callable[[], Op], number: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        op = setup()
        for _ in range(min(number, 200)):  # warm-up
            op()
        t0 = time.perf_counter_ns()
        for _ in range(number):
            op()
        best = min(best, (time.perf_counter_ns() - t0) / number)
    return best


def number_for(name: str, number: int) -> int:
    return min(number, H2_STEPS - 300) if name.startswith("h2 ") else number


def run_child(name: str, n: int) -> None:
    """In the child under valgrind: set up, warm up, ``n`` calls, exit."""
    global H2_STEPS
    H2_STEPS = n + 500  # the client frames the h2 cases need, no more (made by pure-Python h2)
    op = CASES[name][1]()
    for _ in range(200):
        op()
    for _ in range(n):
        op()


def callgrind_per_op(name: str, n: int, outdir: str) -> float:
    totals = []
    for count in (n, 2 * n):
        out = os.path.join(outdir, f"cg.{count}")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--child-n",
            str(count),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out, errors="replace") as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
        if not m:
            raise RuntimeError(f"no instruction total for {name}")
        totals.append(int(m.group(1)))
        os.unlink(out)
    return (totals[1] - totals[0]) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true", help="also count instructions/op under callgrind")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--number", type=int, default=10_000, help="calls per repeat (default 10000)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats; the best is kept (default 7)")
    parser.add_argument("--cg-n", type=int, default=1000, help="calls per callgrind run (default 1000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.child_n)
        return
    if args.callgrind and shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    print(
        f"python {sys.version.split()[0]}; "
        + ", ".join(f"{d} {version(d)}" for d in ("h11", "httptools", "zttp", "h2", "jh2", "hpack", "fast-hpack"))
    )
    skipped: set[str] = set()
    header = f"{'case':44} {'library':22} {'ns/op':>9}" + (f" {'instr/op':>10}" if args.callgrind else "")
    print(header)
    with tempfile.TemporaryDirectory() as outdir:
        for name, (dist, setup) in CASES.items():
            if args.only and not any(w in name for w in args.only):
                continue
            what, lib = name.split(" | ")
            if not available(dist):
                if dist not in skipped:
                    print(f"  (skipping {dist}: not installed)")
                    skipped.add(dist)
                continue
            ns = time_case(setup, number_for(name, args.number), args.repeats)
            line = f"{what:44} {lib:22} {ns:9.0f}"
            if args.callgrind:
                line += f" {callgrind_per_op(name, number_for(name, args.cg_n), outdir):10.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
