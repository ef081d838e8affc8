"""The static-file app of :mod:`layers.static`, mounted in process through its library API.

:class:`~layers.static.FileApp` runs in a server built as ``Stack(tcp.listen(...),
http.server(app))`` and our client asks it for files, directories, ranges and conditional
answers, over HTTP/1.1 and HTTP/2; :func:`~layers.static.parse_range` is checked alone.
``tests/test_cli_serve.py`` drives ``python -m stack serve DIR`` with curl. Every wait is bounded.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from layers import http, static, tcp
from layers.static import FileApp, parse_range
from stack import Stack, after


@asynccontextmanager
async def mounted(app: http.App) -> AsyncIterator[int]:
    """Serve ``app`` on a free port of 127.0.0.1 while the block runs; yield the port."""
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
        yield port
        nursery.cancel_scope.cancel()


async def client(port: int, *, h2: bool = False) -> http.ClientConnection:
    stack = Stack(tcp.connect("127.0.0.1", port), http.client(prior_knowledge=h2))
    conn: http.ClientConnection = await stack.connect(deadline=after(10))
    return conn


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "hello.txt").write_text("hello, file\n")
    (root / "page.html").write_text("<p>hi</p>\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: streamed in chunks
    (root / "sub" / "index.html").write_text("<h1>index</h1>\n")
    (root / "sub" / "a b.txt").write_text("spaced\n")
    (tmp_path / "secret.txt").write_text("outside the root\n")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "inside").symlink_to(root / "hello.txt")
    return root


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=-1000", 100) == (0, 100)
    assert parse_range("bytes=50-1000", 100) == (50, 100)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=a-b", "bytes=5-1", "bytes=", "bytes=-"):
        assert parse_range(ignored, 100) is None, ignored


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        FileApp(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        FileApp(tmp_path / "missing")


async def test_files(site: Path) -> None:
    async with mounted(FileApp(site)) as port:
        conn = await client(port)

        async def get(
            target: str, method: str = "GET", headers: Sequence[tuple[str, str]] = (), body: bytes | None = None
        ) -> tuple[http.Response, bytes]:
            response = await conn.request(method, target, headers=headers, body=body)
            return response, await response.read()

        r, body = await get("/hello.txt")
        assert (r.status, body) == (200, b"hello, file\n")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        r, body = await get("/page.html")
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        r, body = await get("/data.bin")
        assert body == (site / "data.bin").read_bytes() and r.headers["content-type"] == "application/octet-stream"
        r, body = await get("/data.bin", "HEAD")
        assert r.headers["content-length"] == "262144" and body == b""
        # directories: redirect, index.html, listing
        r, _ = await get("/sub")
        assert r.status == 301 and r.headers["location"] == "/sub/"
        r, body = await get("/sub/")
        assert body == b"<h1>index</h1>\n"
        r, body = await get("/")
        assert r.status == 200 and b'href="sub/"' in body and b'href="hello.txt"' in body
        r, body = await get("/sub/a%20b.txt")
        assert body == b"spaced\n"
        # conditional and partial
        mtime = int((site / "hello.txt").stat().st_mtime)
        since = email.utils.formatdate(mtime, usegmt=True)
        r, body = await get("/hello.txt", headers=[("if-modified-since", since)])
        assert r.status == 304 and body == b""
        before = email.utils.formatdate(mtime - 10, usegmt=True)
        r, body = await get("/hello.txt", headers=[("if-modified-since", before)])
        assert r.status == 200
        r, body = await get("/data.bin", headers=[("range", "bytes=-4")])
        assert r.status == 206 and body == bytes([252, 253, 254, 255])
        assert r.headers["content-range"] == "bytes 262140-262143/262144"
        r, body = await get("/data.bin", headers=[("range", "bytes=1000-70000")])
        assert r.status == 206 and body == (bytes(range(256)) * 1024)[1000:70001]
        r, body = await get("/hello.txt", headers=[("range", "bytes=100-")])
        assert r.status == 416 and r.headers["content-range"] == "bytes */12"
        # other methods: the body is read and discarded, the connection goes on
        r, body = await get("/hello.txt", "POST", body=b"x" * 200_000)
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        r, body = await get("/no/such/file")
        assert r.status == 404
        # symlinks: inside the root followed, pointing out refused
        r, body = await get("/inside")
        assert body == b"hello, file\n"
        for escape in (
            "/escape",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/sub/../../secret.txt",
            "/..%2fsecret.txt",
            "/hello.txt/",
            "/%00",
        ):
            r, body = await get(escape)
            assert r.status == 404 and b"outside" not in body, escape
        await conn.aclose()


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
async def test_etag_and_if_none_match(site: Path, h2: bool) -> None:
    """An ETag on every file; If-None-Match with it (or ``*``, or a weak form) is 304 without a
    body, and it wins over If-Modified-Since; a changed file gets a new tag."""
    with trio.fail_after(30):
        async with mounted(FileApp(site)) as port, await client(port, h2=h2) as conn:

            async def get(target: str, *headers: tuple[str, str]) -> tuple[http.Response, bytes]:
                response = await conn.request("GET", target, headers=headers, deadline=after(5))
                return response, await response.read(deadline=after(5))

            r, body = await get("/hello.txt")
            tag = r.headers["etag"]
            st = (site / "hello.txt").stat()
            assert (r.status, body, tag) == (200, b"hello, file\n", static.etag(st.st_size, st.st_mtime))
            assert tag.startswith('"') and tag.endswith('"')
            for match in (tag, f'"nope", {tag}', f"W/{tag}", "*"):
                r, body = await get("/hello.txt", ("if-none-match", match))
                assert (r.status, body, r.headers["etag"]) == (304, b"", tag), match
            # a stale tag: the whole file, even with an If-Modified-Since that alone would give 304
            since = email.utils.formatdate(int(st.st_mtime) + 60, usegmt=True)
            r, body = await get("/hello.txt", ("if-none-match", '"old"'), ("if-modified-since", since))
            assert (r.status, body) == (200, b"hello, file\n")
            r, body = await get("/hello.txt", ("if-modified-since", since))
            assert (r.status, body) == (304, b"")
            # the file changes: its tag changes, the old one no longer matches
            (site / "hello.txt").write_text("hello, new file\n")
            r, body = await get("/hello.txt", ("if-none-match", tag))
            assert (r.status, body) == (200, b"hello, new file\n") and r.headers["etag"] != tag


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
async def test_range_head_and_listing_over_both_versions(site: Path, h2: bool) -> None:
    data = (site / "data.bin").read_bytes()
    with trio.fail_after(30):
        async with mounted(FileApp(site)) as port, await client(port, h2=h2) as conn:
            r = await conn.request("GET", "/data.bin", headers=[("range", "bytes=10-19")], deadline=after(5))
            assert (r.status, await r.read(deadline=after(5))) == (206, data[10:20])
            assert r.headers["content-range"] == "bytes 10-19/262144" and r.headers["content-length"] == "10"
            r = await conn.request("GET", "/data.bin", headers=[("range", "bytes=0-1,5-6")], deadline=after(5))
            assert (r.status, await r.read(deadline=after(5))) == (200, data)  # several ranges: ignored
            r = await conn.request("HEAD", "/data.bin", deadline=after(5))
            assert (r.status, r.headers["accept-ranges"], await r.read(deadline=after(5))) == (200, "bytes", b"")
            r = await conn.request("GET", "/empty/", deadline=after(5))
            assert r.status == 200 and b"<h1>Index of /empty/</h1>" in await r.read(deadline=after(5))
            r = await conn.request("GET", "/sub?x=1", deadline=after(5))
            assert (r.status, r.headers["location"]) == (301, "/sub/?x=1")
            await r.read(deadline=after(5))


async def test_handle_returns_the_body_bytes_sent(site: Path) -> None:
    """:meth:`FileApp.handle` is the app with the size of what it sent, for a wrapper to log."""
    files = FileApp(site)
    sizes: list[int] = []

    async def app(request: http.Request) -> None:
        sizes.append(await files.handle(request))

    with trio.fail_after(30):
        async with mounted(app) as port, await client(port) as conn:
            asked = [("GET", "/hello.txt"), ("GET", "/data.bin"), ("HEAD", "/data.bin"), ("GET", "/nope")]
            for method, target in asked:
                response = await conn.request(method, target, deadline=after(5))
                await response.read(deadline=after(5))
    assert sizes == [12, 262144, 0, len(b"not found\n")]
