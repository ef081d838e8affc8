"""The static-file app of :mod:`layers.static`, mounted in process through its library API.

:class:`~layers.static.FileApp` runs in a server built as ``Stack(tcp.listen(...),
http.server(app))`` and our client asks it for files, directories, ranges and conditional
answers, over HTTP/1.1 and HTTP/2; :func:`~layers.static.parse_range` is checked alone.
``tests/test_cli_serve.py`` drives ``python -m stack serve DIR`` with curl. Every wait is bounded.
"""

from __future__ import annotations

import email.utils
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
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
        r, body = await get("/")
        assert b"escape" not in body  # it would be 404: not listed
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


# ------------------------------------------------------------------------------ issue 17: the edges


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
async def test_if_range(site: Path, h2: bool) -> None:
    """RFC 9110 13.1.5: a Range applies only if If-Range names the file as it is now: its ETag
    (strong comparison: a weak tag never matches) or exactly its Last-Modified date; otherwise
    the whole file (200), so a resumed download never splices new bytes onto old ones."""
    data = (site / "data.bin").read_bytes()
    with trio.fail_after(30):
        async with mounted(FileApp(site)) as port, await client(port, h2=h2) as conn:

            async def get(*headers: tuple[str, str]) -> tuple[int, bytes]:
                r = await conn.request("GET", "/data.bin", headers=[("range", "bytes=0-1"), *headers],
                                       deadline=after(5))  # fmt: skip
                return r.status, await r.read(deadline=after(5))

            r = await conn.request("HEAD", "/data.bin", deadline=after(5))
            await r.read(deadline=after(5))
            tag, modified = r.headers["etag"], r.headers["last-modified"]
            mtime = email.utils.parsedate_to_datetime(modified).timestamp()
            other_date = email.utils.formatdate(mtime - 3600, usegmt=True)
            later_date = email.utils.formatdate(mtime + 3600, usegmt=True)
            assert await get(("if-range", tag)) == (206, data[:2])
            assert await get(("if-range", modified)) == (206, data[:2])
            for stale in ('"not-the-tag"', f"W/{tag}", other_date, later_date, "garbage"):
                assert await get(("if-range", stale)) == (200, data), stale
            # a stale If-Range also cancels a range that could not be satisfied
            r = await conn.request("GET", "/data.bin", headers=[("range", "bytes=999999-"), ("if-range", '"x"')],
                                   deadline=after(5))  # fmt: skip
            assert (r.status, len(await r.read(deadline=after(5)))) == (200, len(data))


@pytest.mark.no_http1
def test_if_range_matches() -> None:
    tag, date = '"5f-c"', "Sun, 06 Nov 1994 08:49:37 GMT"
    assert static.if_range_matches(tag, tag, date)
    assert static.if_range_matches(date, tag, date)
    assert static.if_range_matches("Sunday, 06-Nov-94 08:49:37 GMT", tag, date)  # the same date, obsolete form
    for stale in (f"W/{tag}", '"5f-d"', "Sun, 06 Nov 1994 08:49:38 GMT", "Sun, 06 Nov 1994 08:49:36 GMT",
                  "Sun, 06 Nov 1994 08:49:37", "", "*"):  # fmt: skip
        assert not static.if_range_matches(stale, tag, date), stale


@pytest.fixture
def dotted(site: Path) -> Path:
    (site / ".env").write_text("SECRET=1\n")
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[core]\n")
    (site / "sub" / ".hidden").write_text("hidden\n")
    (site / "alias").symlink_to(site / ".env")  # a visible name for a dotfile
    (site / "dangling").symlink_to(site / "no-such-file")
    return site


async def test_dotfiles_hidden_and_unservable_entries_not_listed(dotted: Path) -> None:
    """Dotfiles are 404 and not listed by default; a symlink leading out of the root (or to a
    dotfile, or nowhere) is not listed, since it would be 404."""
    with trio.fail_after(30):
        async with mounted(FileApp(dotted)) as port, await client(port) as conn:

            async def get(target: str) -> tuple[int, bytes]:
                r = await conn.request("GET", target, deadline=after(5))
                return r.status, await r.read(deadline=after(5))

            for hidden in ("/.env", "/%2eenv", "/.git/config", "/.git/", "/.git", "/sub/.hidden", "/alias",
                           "/sub/../.env", "/escape", "/dangling"):  # fmt: skip
                status, body = await get(hidden)
                assert status == 404 and b"SECRET" not in body, hidden
            status, page = await get("/")
            assert status == 200 and b'href="hello.txt"' in page and b'href="inside"' in page
            for absent in (b".env", b".git", b"alias", b"escape", b"dangling"):
                assert absent not in page, absent
            status, page = await get("/sub/")
            assert (status, page) == (200, b"<h1>index</h1>\n")
    with trio.fail_after(30):
        async with mounted(FileApp(dotted, dotfiles=True)) as port, await client(port) as conn:
            r = await conn.request("GET", "/", deadline=after(5))
            page = await r.read(deadline=after(5))
            assert b'href=".env"' in page and b'href=".git/"' in page and b'href="alias"' in page
            assert b"escape" not in page and b"dangling" not in page
            for target, body in (("/.env", b"SECRET=1\n"), ("/alias", b"SECRET=1\n"), ("/sub/.hidden", b"hidden\n")):
                r = await conn.request("GET", target, deadline=after(5))
                assert (r.status, await r.read(deadline=after(5))) == (200, body), target


async def test_416_reason_phrase_is_rfc_9110s(site: Path) -> None:
    with trio.fail_after(30):
        async with mounted(FileApp(site)) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /hello.txt HTTP/1.1\r\nhost: x\r\nrange: bytes=100-\r\n\r\n")
                head = await stream.receive_some(65536)
    assert head.startswith(b"HTTP/1.1 416 Range Not Satisfiable\r\n"), head


class _SlowClose:
    """An open file whose close takes a while (a slow disk, a busy thread pool)."""

    def __init__(self, file: trio._file_io.AsyncIOWrapper[Any]) -> None:
        self.file = file

    async def __aenter__(self) -> trio._file_io.AsyncIOWrapper[Any]:
        return self.file

    async def __aexit__(self, *exc: object) -> None:
        await trio.sleep(0.5)
        await self.file.aclose()


async def _h2_fetch_then_reset(port: int, path: str) -> bytes:
    """GET ``path`` over cleartext HTTP/2 (the ``h2`` library on a raw socket), read the response
    to its END_STREAM, then reset the connection at once (as curl sometimes does)."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                      end_stream=True)  # fmt: skip
    await sock.send(conn.data_to_send())
    body = bytearray()
    ended = False
    while not ended:
        data = await sock.recv(65536)
        assert data, "the server closed first"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            ended = ended or isinstance(event, h2.events.StreamEnded)
        await sock.send(conn.data_to_send())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset: the server cancels what still runs for this connection
    return bytes(body)


@pytest.mark.no_http1
async def test_a_complete_response_is_never_logged_as_failed(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: an HTTP/2 download was logged with ``-`` bytes: curl had the whole file and
    closed the connection while the handler was still closing the file, so the server cancelled
    it. The file is now closed before the response ends (the handler's last step)."""
    real_open = trio.open_file

    async def slow_open(*args: Any, **kwargs: Any) -> _SlowClose:
        return _SlowClose(await real_open(*args, **kwargs))

    monkeypatch.setattr(trio, "open_file", slow_open)
    files = FileApp(site)
    outcomes: list[int | str] = []

    async def app(request: http.Request) -> None:
        try:
            outcomes.append(await files.handle(request))
        except BaseException as exc:
            outcomes.append(type(exc).__name__)
            raise

    with trio.fail_after(30):
        async with mounted(app) as port:
            assert await _h2_fetch_then_reset(port, "/data.bin") == (site / "data.bin").read_bytes()  # streamed
            assert await _h2_fetch_then_reset(port, "/hello.txt") == b"hello, file\n"  # small: in one write
            while len(outcomes) < 2:  # noqa: ASYNC110 - the server's handlers finish on their own
                await trio.sleep(0.05)
    assert outcomes == [262144, 12]
