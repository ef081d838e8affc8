"""The fast HTTP/1.1 client engine's grammar: h11's ABNF as regular expressions and the helpers
that split, check and normalise a response head's field lines, with the caches they keep.

Theory of operation: :class:`~layers._h1client_engines.FastClientEngine` takes h11's grammar and
decisions without h11's machinery; everything here is stateless but for bounded caches (of
normalised field lists and of whole heads), so the engine module holds only the engines and their
state. Private to the ``_h1client`` family.
"""

from __future__ import annotations

import re

# h11's ABNF (h11/_abnf.py), the same expressions
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_CONTENT = _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*"
_FIELD_VALUE = rb"(?:" + _FIELD_CONTENT + rb")?"
_HEADER_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|" + _FIELD_VCHAR + rb")*))?")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_NAME = re.compile(_TOKEN)
_VALUE = re.compile(_FIELD_VALUE)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FOLD = re.compile(rb"[ \t]+")
# RFC 9110 5.5: no control byte in a field value but HTAB (CR and LF are line endings); h11 lets
# most through, and a proxy must never forward one
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _control_byte(block: bytes | bytearray) -> str | None:
    """Why the fields of the head ``block`` (status line first) are refused for a control byte, or None."""
    m = _CONTROL.search(block, block.find(b"\n") + 1)
    return None if m is None else f"control character {block[m.start()]:#04x} in a header field"


def _control_in_trailers(trailers: list[tuple[bytes, bytes]]) -> str | None:
    """Why ``trailers`` (parsed fields) are refused for a control byte in a value, or None."""
    for _, value in trailers:
        m = _CONTROL.search(value)
        if m is not None:
            return f"control character {value[m.start()]:#04x} in a trailer field"
    return None


_CACHE_SIZE = 64

_HEADS: dict[bytes, tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...], tuple[bool, bool, int]]] = {}
"""Response heads the fast engine parsed, by their exact bytes (status line to the empty line):
a server answers most requests with the same few heads (a Date line changes once a second), so a
repeated head skips the line split, the field regexes and the framing checks. Only heads that
parsed go in, at most :data:`_HEADS_SIZE` of at most :data:`_HEADS_BLOCK` bytes (cleared when
full); the state change (``_take_head``) and the size check run on every head, and each head gets
its own list of fields. One dict for the process: every entry is immutable."""
_HEADS_SIZE = 256
_HEADS_BLOCK = 2048


def _comma_values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """h11's ``get_comma_header``: the comma-separated values of ``name``, lower-cased, stripped."""
    out = []
    for n, v in fields:
        if n == name:
            for part in v.lower().split(b","):
                part = part.strip()
                if part:
                    out.append(part)
    return out


def _normalize(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """h11's checks of Content-Length and Transfer-Encoding (``normalize_and_validate``), in its
    words (raised as ValueError); the fields with those two values normalized as h11 does. Names
    must be lower-cased already (pairs of (raw name, lower name) are not kept: callers lower-case)."""
    seen_length: bytes | None = None
    saw_te = False
    out = fields
    for i, (name, value) in enumerate(fields):
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise ValueError("conflicting Content-Length headers")
            value = lengths.pop()
            if _DIGITS.fullmatch(value) is None or len(value) > 20:
                raise ValueError("bad Content-Length")
            if seen_length is None:
                seen_length = value
            elif seen_length != value:
                raise ValueError("conflicting Content-Length headers")
            else:  # h11 keeps the first of equal ones
                if out is fields:
                    out = list(fields)
                out[i] = (b"", b"")
                continue
            if value != fields[i][1]:
                if out is fields:
                    out = list(fields)
                out[i] = (fields[i][0], value)
        elif name == b"transfer-encoding":
            if saw_te:
                raise ValueError("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise ValueError("Only Transfer-Encoding: chunked is supported")
            saw_te = True
            if value != fields[i][1]:
                if out is fields:
                    out = list(fields)
                out[i] = (fields[i][0], value)
    if out is not fields and seen_length is not None:
        out = [pair for pair in out if pair[0]]
    return out


def _field_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """h11's ``_decode_header_lines``: obs-fold joined, each line a field (name lower-cased here);
    ValueError in h11's words."""
    fields: list[tuple[bytes, bytes]] = []
    match = _HEADER_FIELD.fullmatch
    last: bytes | None = None
    folded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            m = _FOLD.match(line)
            assert m is not None
            if last is None:
                raise ValueError("continuation line at start of headers")
            last = last + b" " + line[m.end() :]
            continue
        if last is not None:
            folded.append(last)
        last = line
    if last is not None:
        folded.append(last)
    for line in folded:
        m = match(line)
        if m is None:
            raise ValueError(f"illegal header line: {bytearray(line)!r}")
        fields.append((m.group(1).lower(), m.group(2)))
    return _normalize(fields)


def _head_facts(fields: list[tuple[bytes, bytes]], version: bytes) -> tuple[bool, bool, int]:
    """What a response head says about its connection and body, as h11 reads it: (the server
    will close: ``Connection: close`` or before HTTP/1.1; chunked; the Content-Length, -1 if none)."""
    lengths = _comma_values(fields, b"content-length")
    return (
        b"close" in _comma_values(fields, b"connection") or version < b"1.1",
        bool(_comma_values(fields, b"transfer-encoding")),
        int(lengths[0]) if lengths else -1,
    )


def _split_lines(block: bytes) -> list[bytes]:
    """The lines of a head or trailer section (ending in its empty line), as h11 splits them: on
    LF, a CR before it dropped."""
    if block.count(b"\n") == block.count(b"\r\n"):
        lines = block.split(b"\r\n")
    else:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in block.split(b"\n")]
    del lines[-2:]
    return lines
