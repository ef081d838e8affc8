"""A static site inside a trio program: :class:`layers.static.FileApp` mounted in our own server.

The app serves the files under a directory (here a temporary one written first): a directory
listing, ``index.html``, byte ranges (206) and conditional requests (304 for an ETag the client
already has). Our client fetches a page, part of a file, and asks again with the ETag it got.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from layers import http, static, tcp
from stack import Stack, after


async def main(root: Path) -> None:
    (root / "index.html").write_text("<h1>hello from a static site</h1>\n")
    (root / "notes.txt").write_text("0123456789" * 10)
    async with trio.open_nursery() as nursery:
        server = Stack(tcp.listen("127.0.0.1", 0), http.server(static.FileApp(root)))  # the whole server
        (host, port), *_ = await nursery.start(server.serve)
        print(f"serving {root} on http://{host}:{port}/")

        async with await Stack(tcp.connect(host, port), http.client()).connect(deadline=after(5)) as conn:
            r = await conn.request("GET", "/", deadline=after(5))
            print(r.status, (await r.read(deadline=after(5))).decode().strip())
            assert r.status == 200

            r = await conn.request("GET", "/notes.txt", headers=[("range", "bytes=5-14")], deadline=after(5))
            part = await r.read(deadline=after(5))
            print(r.status, r.headers["content-range"], part)
            assert (r.status, part) == (206, b"5678901234")

            tag = r.headers["etag"]
            r = await conn.request("GET", "/notes.txt", headers=[("if-none-match", tag)], deadline=after(5))
            print(r.status, "for If-None-Match", tag, "(the copy we have is current)")
            assert r.status == 304 and await r.read(deadline=after(5)) == b""
        nursery.cancel_scope.cancel()  # stop the server: the example is over


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, Path(directory))
