"""Fewer copies of a QUIC stream's bytes inside aioquic: two drop-in replacements for objects
aioquic keeps per connection and per stream (:mod:`layers._quic_engine` installs them).

Theory of operation: once path MTU discovery raised the datagrams to 64 KiB, what aioquic costs
per byte (not per packet) shows: every byte sent was copied about a dozen times in Python, a few
of them by two structures that need not copy at all. Each replacement keeps the state and the
interface aioquic uses, so aioquic's own code runs unchanged around it:

* :class:`HeaderProtection` (RFC 9001 5.4): aioquic's ``apply`` joins the header and the
  protected payload, copies that into a ``bytearray`` to mask the header's few bytes and copies
  it back to ``bytes`` (three copies of the packet); ``remove`` copies the whole packet to unmask
  its header. Ours masks a copy of the header alone and joins it to the payload once. Installed
  on a connection's 1-RTT keys once the handshake completed, by setting the ``__class__`` of
  aioquic's objects (same state, these two methods), and only where aioquic's header protection
  is the Python class whose ``_mask`` it relies on (aioquic >= 1.7; before, a C extension).
  The same keys' ``CryptoContext`` becomes a :class:`RecvContext` likewise: it decrypts a
  received packet's payload from a view rather than from a copy of it (aioquic slices it out).
  A key update (RFC 9001 6) makes new contexts of aioquic's own: they work as before.
* :class:`SendBuffer`: a stream sender's ``_buffer`` (what was committed and is not yet
  acknowledged). aioquic's is a ``bytearray`` appended at the end and cut at the front as
  acknowledgements come: CPython then copies all of it (megabytes, at a bulk sender's windows)
  each time the allocation runs out or halves, 5-16 us per 64 KiB appended (3-10 copies' worth).
  Ours keeps the committed ``bytes`` objects as they came (no copy at all when the writer gave
  ``bytes``), drops whole ones from the front, and a frame's bytes are one slice (one copy)
  instead of aioquic's ``bytes(bytearray[a:b])`` (two). Installed on a stream once a commit of at
  least :data:`BULK` bytes shows it is a bulk stream (:meth:`SendBuffer.install`): a stream of
  small writes keeps aioquic's buffer.

Both depend on how aioquic 1.x uses these objects (``apply``/``remove``/``_mask``; ``+=``,
``del buffer[:n]`` and ``buffer[a:b]`` on ``QuicStreamSender._buffer``); tests/test_quic_copies.py
checks each against aioquic's own.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from aioquic.quic.crypto import CryptoContext, KeyUnavailableError, next_key_phase
from aioquic.quic.packet import decode_packet_number, is_long_header

try:  # aioquic >= 1.7: header protection in Python
    from aioquic._crypto import HeaderProtection as _HeaderProtection
except ImportError:  # pragma: no cover
    _HeaderProtection = None  # type: ignore[assignment,misc]

__all__ = ["BULK", "HeaderProtection", "RecvContext", "SendBuffer", "lighten_header_protection", "prime_heap"]

PYTHON_HP = _HeaderProtection is not None and hasattr(_HeaderProtection, "_mask")

BULK = 16 * 1024
"""A commit of at least this many bytes gives its stream a :class:`SendBuffer`."""


class HeaderProtection(_HeaderProtection if PYTHON_HP else object):  # type: ignore[misc]
    """aioquic's header protection without copying the packet (module docstring)."""

    def apply(self, plain_header: bytes, protected_payload: bytes) -> bytes:
        pn_length = (plain_header[0] & 0x03) + 1
        pn_offset = len(plain_header) - pn_length
        sample_offset = 4 - pn_length  # PACKET_NUMBER_LENGTH_MAX
        mask = self._mask(protected_payload[sample_offset : sample_offset + 16])
        header = bytearray(plain_header)
        header[0] ^= mask[0] & (0x0F if header[0] & 0x80 else 0x1F)
        for i in range(pn_length):
            header[pn_offset + i] ^= mask[1 + i]
        return bytes(header) + protected_payload

    def remove(self, packet: bytes, pn_offset: int) -> tuple[bytes, int]:
        sample_offset = pn_offset + 4  # PACKET_NUMBER_LENGTH_MAX
        if sample_offset + 16 > len(packet):
            return super().remove(packet, pn_offset)  # type: ignore[no-any-return]  # its error
        mask = self._mask(packet[sample_offset : sample_offset + 16])
        header = bytearray(packet[:sample_offset])
        header[0] ^= mask[0] & (0x0F if header[0] & 0x80 else 0x1F)
        pn_length = (header[0] & 0x03) + 1
        pn_truncated = 0
        for i in range(pn_length):
            header[pn_offset + i] ^= mask[1 + i]
            pn_truncated = header[pn_offset + i] | (pn_truncated << 8)
        return bytes(header[: pn_offset + pn_length]), pn_truncated


_primed = False

HEAP_PRIMER = 8 * 1024 * 1024
"""Bytes of the one buffer :func:`prime_heap` allocates and frees."""


def prime_heap() -> None:
    """Once per process, allocate and free one :data:`HEAP_PRIMER`-byte buffer.

    A connection of 64 KiB datagrams makes and drops a few 64 KiB objects per packet (aioquic's
    packet builder, the encryption). glibc's malloc gives memory back to the system whenever the
    free space at the top of its heap passes ``M_TRIM_THRESHOLD`` (128 KiB until told otherwise),
    so such objects kept landing on freshly mapped pages: one page fault per 4 KiB, about a
    third of a bulk sender's CPU on a VM (52,000 faults for 128 MiB sent, against 100 after
    this). glibc raises its thresholds by itself the first time it frees a block that large (its
    dynamic mmap threshold, up to 32 MiB: the trim threshold becomes twice the block), as any
    process that once held a large buffer already did; this makes it happen on purpose. Other
    allocators ignore it; it costs one allocation per process. The block is ``bytes`` (calloc:
    glibc maps it fresh and knows it is zero) rather than a ``bytearray`` (zero-filled page by page:
    4-6 ms, on the critical path of the handshake's end, both sides)."""
    global _primed
    if not _primed:
        _primed = True
        block = bytes(HEAP_PRIMER)
        del block


def lighten_header_protection(contexts: Any) -> None:
    """Give each of these aioquic ``CryptoContext`` objects our :class:`HeaderProtection`, and
    our :class:`RecvContext`'s ``decrypt_packet``."""
    if not PYTHON_HP:
        return
    for context in contexts:
        hp = getattr(context, "hp", None)
        if type(hp) is _HeaderProtection:
            hp.__class__ = HeaderProtection
        if type(context) is CryptoContext:
            context.__class__ = RecvContext


class RecvContext(CryptoContext):
    """aioquic's ``CryptoContext`` whose ``decrypt_packet`` decrypts the payload from a view of
    the packet: aioquic slices it out (a copy of the whole packet) for the AEAD, which reads
    any buffer. Otherwise aioquic's code, line for line (aioquic 1.x ``quic/crypto.py``)."""

    def decrypt_packet(
        self, packet: bytes, encrypted_offset: int, expected_packet_number: int
    ) -> tuple[bytes, bytes, int, bool]:
        if self.aead is None:
            raise KeyUnavailableError("Decryption key is not available")
        assert self.hp is not None
        plain_header, packet_number = self.hp.remove(packet, encrypted_offset)
        first_byte = plain_header[0]
        pn_length = (first_byte & 0x03) + 1
        packet_number = decode_packet_number(packet_number, pn_length * 8, expected_packet_number)
        crypto: CryptoContext = self
        if not is_long_header(first_byte):
            key_phase = (first_byte & 4) >> 2
            if key_phase != self.key_phase:
                crypto = next_key_phase(self)
        assert crypto.aead is not None
        payload = crypto.aead.decrypt(memoryview(packet)[len(plain_header) :], plain_header, packet_number)  # type: ignore[arg-type]  # any buffer
        return plain_header, payload, packet_number, crypto != self


class SendBuffer:
    """A stream sender's unacknowledged bytes as the ``bytes`` objects committed (module
    docstring). Offsets in the methods are from the buffer's start, as in aioquic's
    ``bytearray``; internally every chunk is placed by its end on a running count that only
    grows (``_ends``), the buffer's start being ``_origin`` on that count."""

    __slots__ = ("_chunks", "_end", "_ends", "_head", "_origin")

    def __init__(self, data: bytes | bytearray = b"") -> None:
        self._chunks: list[bytes] = []
        self._ends: list[int] = []
        self._head = 0  # chunks before this index are gone
        self._origin = 0
        self._end = 0
        if data:
            self += data

    @classmethod
    def install(cls, sender: Any) -> None:
        """Replace ``sender._buffer`` (aioquic's ``QuicStreamSender``) with one of ours."""
        buffer = sender._buffer
        if type(buffer) is not cls:
            sender._buffer = cls(bytes(buffer))

    def __len__(self) -> int:
        return self._end - self._origin

    def __iadd__(self, data: bytes | bytearray | memoryview) -> SendBuffer:
        if data:
            chunk = data if type(data) is bytes else bytes(data)
            self._end += len(chunk)
            self._chunks.append(chunk)
            self._ends.append(self._end)
        return self

    def __delitem__(self, key: slice) -> None:
        if key.start is not None or key.step is not None:
            raise NotImplementedError("a stream's send buffer is only cut at its front")
        stop = len(self) if key.stop is None else min(key.stop, len(self))
        if stop <= 0:
            return
        self._origin = origin = self._origin + stop
        ends, head = self._ends, self._head
        while head < len(ends) and ends[head] <= origin:
            head += 1
        if head > 32 and 2 * head > len(ends):  # forget the chunks gone, now and then
            del self._chunks[:head], ends[:head]
            head = 0
        self._head = head

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise NotImplementedError("a stream's send buffer is only sliced in order")
        if stop <= start:
            return b""
        ends, chunks = self._ends, self._chunks
        first = self._origin + start
        last = self._origin + stop
        i = bisect_right(ends, first, self._head)
        chunk = chunks[i]
        begin = ends[i] - len(chunk)
        if last <= ends[i]:
            if first == begin and last == ends[i]:
                return chunk
            return chunk[first - begin : last - begin]
        pieces = [memoryview(chunk)[first - begin :]]
        i += 1
        while ends[i] < last:
            pieces.append(memoryview(chunks[i]))
            i += 1
        chunk = chunks[i]
        pieces.append(memoryview(chunk)[: last - ends[i] + len(chunk)])
        return b"".join(pieces)

    def copy_into(self, target: memoryview, start: int) -> None:
        """Copy the ``len(target)`` bytes from offset ``start`` into ``target`` (a frame's data
        straight into the plaintext of its packet: :mod:`layers._quic_bulk`)."""
        first = self._origin + start
        last = first + len(target)
        if start < 0 or last > self._end:
            raise IndexError("outside the send buffer")
        ends, chunks = self._ends, self._chunks
        i = bisect_right(ends, first, self._head)
        pos = 0
        while first < last:
            chunk = chunks[i]
            begin = ends[i] - len(chunk)
            stop = min(ends[i], last)
            n = stop - first
            target[pos : pos + n] = memoryview(chunk)[first - begin : stop - begin]
            pos += n
            first = stop
            i += 1
