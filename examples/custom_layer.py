"""A layer of your own: a XOR "cipher" ByteStream layer, proved with the conformance kit.

It has the shape of every layer in ``layers/`` and uses only the layer-author API of
docs/design.md ("Writing a layer"), each part once:

* a **spec**, ``xor(key)``: a frozen dataclass, built once and attached many times, whose
  ``attach`` checks what it is given with ``stack.require(lower, ByteStream, "xor")``;
* a **stream class** subclassing :class:`stack.ByteStream`, passing its ``info`` keys up, that
  writes only the primitives: ``_recv_some`` (receive from below, decode, return: no ``await``
  after the bytes arrived, so a cancelled or timed-out receive consumes nothing), ``_send_some``
  (``_flush`` what was committed before, then commit one bounded chunk into ``self._outbuf``: so
  ``Timeout.sent`` is exact) and the ``_detach`` hook. The base class does deadlines, Busy,
  Closed, Broken and both buffers;
* ``detach`` extended, not replaced: it hands back the bytes the layer decoded ahead (its own
  read-ahead buffer, ``self._unread``) with the lower stream's public ``unread``, then lets
  ``super().detach`` do the rest.

XOR with a repeating key is its own inverse, which makes ``detach()`` exact even though the layer
has no framing: bytes it decoded ahead that the app did not take are encoded again and pushed
back below, so the stream below returns them exactly as they came (nothing dropped, nothing
doubled). Then ``stack.testing`` proves the contract on memory pairs and on pairs that fragment
at random, with hypothesis: ``check_bytestream`` and ``check_detach``. Last, the layer goes into
a Stack over TCP like any other.

It is not encryption: never use XOR to protect anything. Run it: ``python examples/custom_layer.py``
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
from hypothesis import settings

from layers import tcp
from stack import FOREVER, ByteStream, Stack, after, require
from stack.testing import chaos_pair, check_bytestream, check_detach, memory_pair

CHUNK = 65536
"""Most bytes committed per send step."""


class XorStream(ByteStream):
    """Bytes XORed with a repeating key, each direction from its own position in the key."""

    kind = "xor"
    _lower: ByteStream

    def __init__(self, lower: ByteStream, key: bytes) -> None:
        super().__init__(lower, {"cipher": "xor"})
        self._key = key
        self._recv_pos = 0  # key position of the next byte received from below
        self._send_pos = 0  # key position of the next byte committed

    def _apply(self, data: bytes, pos: int) -> bytes:
        """XOR ``data`` with the key stream from position ``pos`` (whole-buffer, no byte loop)."""
        if not data:
            return b""
        key = self._key
        start = pos % len(key)
        stream = (key[start:] + key * (len(data) // len(key) + 1))[: len(data)]
        return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")

    async def _recv_some(self, max_bytes: int, deadline: float) -> bytes:
        data = await self._lower.recv(max_bytes, deadline=deadline)  # consumes nothing if it raises
        out = self._apply(data, self._recv_pos)  # from here on, no await: nothing can be lost
        self._recv_pos += len(data)
        return out

    async def _send_some(self, data: memoryview | bytearray, deadline: float) -> int:
        if self._outbuf:  # what the previous step committed goes down first
            await self._flush(deadline)
        n = min(len(data), CHUNK)
        self._outbuf += self._apply(bytes(data[:n]), self._send_pos)  # committed: it will be delivered
        self._send_pos += n
        return n

    async def detach(self, *, deadline: float = FOREVER) -> ByteStream:
        """Undo the layer. Bytes decoded ahead and not received go back below, encoded again.

        The base refuses to detach while decoded bytes wait (they cannot go back below a layer
        that changes them); this layer can re-encode them, so it empties its buffer first.
        """
        if self._unread:
            pos = self._recv_pos - len(self._unread)
            self._lower.unread(self._apply(bytes(self._unread), pos))
            self._recv_pos = pos
            self._unread.clear()
        return await super().detach(deadline=deadline)

    async def _detach(self, deadline: float) -> ByteStream:
        return self._lower  # no buffer of its own: the base flushed what was committed


@dataclass(frozen=True)
class xor:
    """Spec: XOR every byte with ``key``, repeated."""

    key: bytes

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("the key must not be empty")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> XorStream:
        """Wrap ``lower``. No handshake: returns at once."""
        return XorStream(require(lower, ByteStream, "xor"), self.key)


KEY = b"not a secret"
SPEC = xor(KEY)
QUICK = settings(max_examples=15)  # an example, not the test suite: CI's profile runs far more


async def memory_xor_pair() -> tuple[XorStream, XorStream]:
    a, b = memory_pair()
    return await SPEC.attach(a), await SPEC.attach(b)


async def chaos_xor_pair() -> tuple[XorStream, XorStream]:
    a, b = chaos_pair()  # fragmentation and delays drawn by hypothesis
    return await SPEC.attach(a), await SPEC.attach(b)


async def memory_bottom() -> tuple[ByteStream, ByteStream]:
    return memory_pair()


async def chaos_bottom() -> tuple[ByteStream, ByteStream]:
    return chaos_pair()


async def attach_both(a: ByteStream, b: ByteStream) -> tuple[XorStream, XorStream]:
    return await SPEC.attach(a), await SPEC.attach(b)


async def echo(stream: XorStream) -> None:
    while data := await stream.recv():
        await stream.send(data.upper())


async def main() -> None:
    for name, make in (("memory", memory_xor_pair), ("chaos", chaos_xor_pair)):
        await check_bytestream(make, settings=QUICK)
        print(f"check_bytestream on {name} pairs: the contract holds")
    await check_detach(memory_bottom, attach_both, settings=QUICK)
    await check_detach(chaos_bottom, attach_both, settings=QUICK)
    print("check_detach: every read-ahead byte comes back below, exactly once")

    async with trio.open_nursery() as nursery:
        (host, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), SPEC).serve, echo)
        async with await Stack(tcp.connect(host, port), SPEC).connect(deadline=after(5)) as stream:
            await stream.send(b"hello through a layer of my own")
            reply = await stream.recv_exactly(31, deadline=after(5))
            info = stream.info
            print(f"over TCP: {reply.decode()} (cipher={info['cipher']}, transport={info['transport']})")
            assert reply == b"HELLO THROUGH A LAYER OF MY OWN"
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
