"""A throttled download: the client reads at a fixed rate, and TCP slows the server to match.

The story: a server sends 384 KiB as fast as it can. The client puts ``throttle.limit(recv=...)``
on its side of the stack, 1 MiB/s with a 64 KiB burst, so it reads no faster than that; the
socket buffers fill and TCP's flow control holds the server back (the server's ``send`` simply
takes longer). Midway the client asks for 128 KiB within 50 ms, which the budget cannot allow:
the receive times out and loses nothing (the bytes that arrived stay buffered), and the next
receive carries on. The client prints the rate it measured and how long the throttle made it
wait. Throttles sit at any level: over a message stream, ``limit(recv_messages=...)`` paces
messages instead.

Run it: ``python examples/throttled_download.py``
"""

from __future__ import annotations

import hashlib

import trio

from layers import tcp, throttle
from stack import ByteStream, Stack, Timeout, after

SIZE = 384 * 1024
RATE = throttle.Rate(1024 * 1024, burst=64 * 1024)
PAYLOAD = bytes(range(256)) * (SIZE // 256)


async def serve(stream: ByteStream) -> None:
    """The server: send the whole payload as fast as the network lets it, then finish."""
    await stream.send(PAYLOAD)
    await stream.done()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(Stack(tcp.listen("127.0.0.1", 0)).serve, serve)
        client = Stack(tcp.connect(host, port), throttle.limit(recv=RATE))
        async with await client.connect(deadline=after(5)) as download:
            start = trio.current_time()
            got = bytearray(await download.recv_exactly(128 * 1024, deadline=after(10)))
            try:
                await download.recv_exactly(128 * 1024, deadline=after(0.05))
            except Timeout:
                print("128 KiB within 50 ms is over the budget: Timeout, nothing lost")
            while chunk := await download.recv(deadline=after(10)):
                got += chunk
            elapsed = trio.current_time() - start
            assert isinstance(download, throttle.ThrottledBytes)
            waited = download.waited
        nursery.cancel_scope.cancel()
    assert hashlib.sha256(got).digest() == hashlib.sha256(PAYLOAD).digest(), "the download is not the payload"
    print(f"downloaded {len(got) // 1024} KiB in {elapsed:.2f} s: {len(got) / elapsed / 1024:.0f} KiB/s")
    limit = f"{RATE.per_second / 1024:.0f} KiB/s with a {RATE.capacity / 1024:.0f} KiB burst"
    print(f"limit {limit}; the throttle waited {waited:.2f} s")
    print("done")


if __name__ == "__main__":
    trio.run(main)
