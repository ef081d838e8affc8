"""Hypothesis strategies for HTTP/1.1 requests as bytes, for the engine differential tests.

A request is drawn as parts (method, target, version, fields, body framing, line endings) and
rendered to bytes with the mutations request smuggling lives on: CL with TE, repeated or
list-valued Content-Length, signs and overflows in sizes, obs-fold, bare LF and bare CR, spaces
before the colon, invalid tokens, control bytes in values, chunk-size overflow, chunk extensions,
trailers, oversized lines. Most draws are valid, so the accepted path is compared as closely as
the refused one. Every strategy shrinks toward a plain ``GET / HTTP/1.1`` with a Host.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"]
ODD_METHODS = [b"FOO", b"M-SEARCH", b"PROPFIND", b"get", b"G(T", b"GE T", b"", b"X" * 40]
TARGETS = [b"/", b"/a?b=c", b"/%7Euser/x.html", b"*", b"http://example.org/x", b"/" + b"p" * 200]
ODD_TARGETS = [b"/a b", b"/a\x01", b"/\xff", b"/a#frag", b"", b"a"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"]
ODD_VERSIONS = [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11", b"HTTP/1"]

CONTENT_LENGTHS = [b"0", b"3", b"12"]
ODD_CONTENT_LENGTHS = [b"03", b"+3", b"-1", b"3, 3", b"3,3", b" 3", b"3 ", b"", b"0x3", b"99999999999999999999999"]
TRANSFER_ENCODINGS = [b"chunked"]
ODD_TRANSFER_ENCODINGS = [b"Chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"gzip", b"", b"chunked\x0b"]
NAMES = [b"Accept", b"User-Agent", b"X-Custom", b"Cookie", b"Accept-Encoding", b"If-None-Match", b"A"]
ODD_NAMES = [b"X Y", b"X(Y", b"", b"X\x00", b"\xffX", b"X:Y", b" X"]
VALUES = [b"text/html", b"a b", b"*/*", b"v;q=0.9", b"", b"a\tb", b"  padded  ", b"\xe2\x82\xac"]
ODD_VALUES = [
    b"a\x01b",
    b"a\x00b",
    b"a\x7fb",
    b"a\x1fb",
    b"a\x08b",
    b"a\rb",
    b"a\nb",
    b"\x04",
    b"a\x0bb",
    b"a\x0cb",
    b"\x1b[31m",
    b"ab\x7f",
]


@dataclass(frozen=True)
class Shape:
    """One generated request: its bytes and the parts it was drawn from (for readable failures)."""

    raw: bytes
    notes: tuple[str, ...]


def _pick(common: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(common), st.sampled_from(common), st.sampled_from(common), st.sampled_from(odd))


@st.composite
def _chunked_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """A chunked body, valid or broken in one of the ways parsers disagree on."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3))
    kind = draw(
        st.sampled_from(
            [
                "ok",
                "ok",
                "ok",
                "ext",
                "trailer",
                "upper",
                "overflow",
                "bare-lf",
                "no-crlf",
                "bad-trailer",
                "ctl-trailer",
                "leading-zeros",
                "space-size",
                "bare-lf-end",
            ]
        )
    )
    out = b""
    for c in chunks:
        size = b"%x" % len(c)
        if kind == "upper":
            size = size.upper()
        elif kind == "leading-zeros":
            size = b"000" + size
        elif kind == "space-size":
            size = size + b" "
        if kind == "ext":
            size += b";name=value"
        sep = b"\n" if kind == "bare-lf" else b"\r\n"
        out += size + sep + c + (b"" if kind == "no-crlf" else b"\r\n")
    if kind == "overflow":
        out += b"1" + b"0" * 16 + b"\r\n"
    last = b"0\r\n"
    if kind == "trailer":
        last += b"X-Trailer: yes\r\n"
    elif kind == "bad-trailer":
        last += b"X-Trailer\x01: yes\r\n"
    elif kind == "ctl-trailer":  # a control byte in a trailer value (RFC 9110 5.5), as in heads
        last += b"X-Trailer: " + draw(st.sampled_from(ODD_VALUES)) + b"\r\n"
    last += b"\n" if kind == "bare-lf-end" else b"\r\n"
    return out + last, f"chunked:{kind}"


@st.composite
def requests(draw: st.DrawFn) -> Shape:
    """One HTTP/1.x request (head and body) as bytes, often valid, sometimes a smuggling shape."""
    notes: list[str] = []
    method = draw(_pick(METHODS, ODD_METHODS))
    target = draw(_pick(TARGETS, ODD_TARGETS))
    version = draw(_pick(VERSIONS, ODD_VERSIONS))
    sp = draw(st.sampled_from([b" ", b" ", b" ", b" ", b"  ", b"\t"]))
    fields: list[tuple[bytes, bytes]] = []
    hosts = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
    fields += [(b"Host", b"example.org")] * hosts
    for _ in range(draw(st.integers(0, 4))):
        fields.append((draw(_pick(NAMES, ODD_NAMES)), draw(_pick(VALUES, ODD_VALUES))))
    framing = draw(st.sampled_from(["none", "none", "cl", "cl", "te", "te", "cl+te", "cl,cl", "te,te"]))
    body = b""
    length = draw(_pick(CONTENT_LENGTHS, ODD_CONTENT_LENGTHS))
    coding = draw(_pick(TRANSFER_ENCODINGS, ODD_TRANSFER_ENCODINGS))
    if "cl" in framing:
        fields.append((draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"])), length))
        if framing == "cl,cl":
            fields.append((b"Content-Length", draw(st.sampled_from([length, b"4"]))))
        if length.isdigit() and int(length) < 100:
            body = draw(st.binary(min_size=int(length), max_size=int(length)))
    if "te" in framing:
        fields.append((b"Transfer-Encoding", coding))
        if framing == "te,te":
            fields.append((b"Transfer-Encoding", b"chunked"))
        chunked, note = draw(_chunked_body())
        notes.append(note)
        body = chunked
    if draw(st.integers(0, 9)) == 0:
        fields.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"CLOSE"]))))
    if draw(st.integers(0, 14)) == 0:
        fields.append((b"Expect", b"100-continue"))
    if draw(st.integers(0, 19)) == 0:
        fields.append((b"X-Long", b"v" * draw(st.sampled_from([4000, 9000]))))
    order = draw(st.permutations(range(len(fields))))
    fields = [fields[i] for i in order]
    eol = draw(st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r"]))
    colon = draw(st.sampled_from([b": "] * 10 + [b":", b" : ", b":\t", b":  "]))
    lines = [method + sp + target + b" " + version]
    for i, (name, value) in enumerate(fields):
        line = name + colon + value
        if i == 0 and draw(st.integers(0, 24)) == 0:
            line += b"\r\n folded"  # obs-fold
            notes.append("obs-fold")
        lines.append(line)
    line_end = [eol if draw(st.integers(0, 29)) == 0 else b"\r\n" for _ in lines]
    head = b"".join(line + end for line, end in zip(lines, line_end, strict=True)) + b"\r\n"
    if draw(st.integers(0, 29)) == 0:
        head = b"\r\n" + head  # an empty line before the request line (RFC 9112 2.2 lets a server ignore it)
        notes.append("leading-crlf")
    return Shape(head + body, tuple(notes))
