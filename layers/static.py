"""A static-file app: the files under a directory, served to HTTP/1.1 and HTTP/2 clients.

Mount it in any server built from the layers::

    from layers import http, static, tcp
    from stack import Stack

    files = static.FileApp("public")
    server = Stack(tcp.listen("127.0.0.1", 8080), http.server(files))
    await server.serve()

This is what ``python -m stack serve DIR`` runs (with an access log around it).

Theory of operation. :class:`FileApp` is an :data:`layers.http.App`: one call per request. The
request body, if any, is read and dropped first (:func:`discard_body`), so the connection can
carry the next request. The request path is then mapped to a file in a worker thread (the
blocking ``stat``/``realpath``/``scandir`` calls stay off the event loop): percent-decoded,
resolved with symlinks followed, and refused (404) unless it stays inside the root. Dotfiles
(any part of the path, as asked or as resolved, starting with ``.``) are hidden unless
``dotfiles=True``: 404, and left out of listings. What it maps to decides the answer:

* a file: its bytes, with ``Content-Type`` (from :mod:`mimetypes`), ``Last-Modified``, ``ETag``
  and ``Accept-Ranges``. Conditional requests (RFC 9110 section 13): ``If-None-Match`` matching
  the ETag (or ``*``) gives ``304 Not Modified``; without it, ``If-Modified-Since`` not older than
  the file does. A single byte ``Range`` (:func:`parse_range`) gives ``206`` with
  ``Content-Range``, one past the end ``416``; several ranges or a malformed one are ignored
  (``200``, the whole file). Files up to :data:`SMALL_FILE` bytes go whole with the head in one
  write; larger ones stream in :data:`FILE_CHUNK` pieces read with trio's async file I/O, each
  waiting for the client to take the previous one (backpressure). A file that changes size while
  it is sent fails the response rather than sending a wrong length. The file is closed before
  the response is ended: ending it is the handler's last step, so a client that leaves as soon
  as it has the whole response (an HTTP/2 connection closed at once: the server cancels its
  handlers) never makes a complete response look failed.
* a directory without its trailing ``/``: ``301`` to add it (so relative links work); with it,
  its ``index.html`` if there is one, else an HTML listing of what can be served from it (regular
  files and directories that stay inside the root; no dotfiles unless asked for: a symlink
  leading out of the root, or dangling, is not listed).
* anything else (missing, outside the root, not a regular file, a NUL in the path): ``404``.
* a method other than GET and HEAD: ``405`` with ``Allow: GET, HEAD``.

:meth:`FileApp.handle` does the same and returns the number of body bytes sent, for an app that
wraps it (an access log, say).
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import mimetypes
import os
import stat
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from layers import http
from stack.streams import ByteStream

__all__ = ["FILE_CHUNK", "SMALL_FILE", "FileApp", "discard_body", "etag", "if_range_matches", "parse_range"]

FILE_CHUNK = 65536
"""Bytes read from a file and sent per step when streaming a file body."""

SMALL_FILE = 65536
"""Files up to this size are read whole and sent with the head in one write."""


async def discard_body(request: http.Request) -> None:
    """Read the request body to its end and forget it (so the connection can be reused)."""
    while await request.body.recv(65536):
        pass


async def _text(request: http.Request, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> int:
    body = text.encode()
    await request.respond(status, [("content-type", "text/plain; charset=utf-8"), *headers], body)
    return len(body)


@dataclass(frozen=True)
class _Found:
    """What a request path maps to under the root (computed in a worker thread)."""

    kind: str  # "file", "dir", "missing", "redirect", "forbidden"
    path: Path | None = None
    size: int = 0
    mtime: float = 0.0
    listing: tuple[tuple[str, bool], ...] = ()


class FileApp:
    """Serve the files under ``root`` (see the module docstring for the rules).

    * The path is percent-decoded and resolved (symlinks too); anything that ends up outside the
      root, or holds a NUL, is 404. Hidden traversal through ``..`` or a symlink pointing out is
      therefore impossible; symlinks that stay inside the root are followed.
    * GET and HEAD; other methods get 405 (their body is read and discarded).
    * Content-Type from :mod:`mimetypes` (``application/octet-stream`` when unknown).
    * ``Last-Modified`` and ``ETag``; ``If-None-Match`` and ``If-Modified-Since`` answered with 304.
    * ``Range``: one byte range gives 206 with ``Content-Range``; a range past the end gives 416;
      several ranges or a malformed header are ignored (200, the whole file); so is a ``Range``
      whose ``If-Range`` does not match the file (200, the whole file).
    * A directory: a redirect to add the trailing ``/``, then its ``index.html`` or a listing.
    * Files are streamed in chunks read with trio's async file I/O.
    * Dotfiles (a path part starting with ``.``) are 404 and not listed unless ``dotfiles=True``.

    ``root`` must be an existing directory (FileNotFoundError, NotADirectoryError).
    """

    def __init__(self, root: str | os.PathLike[str], *, dotfiles: bool = False) -> None:
        self.dotfiles = dotfiles
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")

    async def __call__(self, request: http.Request) -> None:
        """Answer ``request`` (the :data:`layers.http.App` interface)."""
        await self.handle(request)

    async def handle(self, request: http.Request) -> int:
        """Answer ``request``; return the number of body bytes sent."""
        await discard_body(request)
        if request.method not in ("GET", "HEAD"):
            return await _text(request, 405, "method not allowed\n", [("allow", "GET, HEAD")])
        found = await trio.to_thread.run_sync(self._find, request.path)
        if found.kind == "redirect":
            location = request.path + "/" + (f"?{request.query}" if request.query else "")
            return await _text(request, 301, "moved\n", [("location", location)])
        if found.kind == "dir":
            return await self._listing(request, found)
        if found.kind != "file" or found.path is None:
            return await _text(request, 404, "not found\n")
        return await self._file(request, found)

    def _find(self, target_path: str) -> _Found:
        """Map a request path to a file or directory inside the root (blocking: run in a thread)."""
        rel = urllib.parse.unquote(target_path, errors="strict") if "%" in target_path else target_path
        if "\0" in rel or not rel.startswith("/"):
            return _Found("missing")
        if not self.dotfiles and any(_hidden(part) for part in rel.split("/")):
            return _Found("missing")
        try:
            path = (self.root / rel.lstrip("/")).resolve(strict=True)
            if not self._servable(path):
                return _Found("missing")
            st = path.stat()
        except (OSError, ValueError, RuntimeError):
            return _Found("missing")
        if stat.S_ISDIR(st.st_mode):
            if not target_path.endswith("/"):
                return _Found("redirect")
            index = path / "index.html"
            with contextlib.suppress(OSError):
                ist = index.stat()
                if stat.S_ISREG(ist.st_mode) and self._servable(index.resolve()):
                    return _Found("file", index, ist.st_size, ist.st_mtime)
            try:
                entries = sorted(self._listed(path))
            except OSError:
                return _Found("missing")
            return _Found("dir", path, listing=tuple(entries))
        if not stat.S_ISREG(st.st_mode) or target_path.endswith("/"):
            return _Found("missing")
        return _Found("file", path, st.st_size, st.st_mtime)

    def _servable(self, resolved: Path) -> bool:
        """Whether a resolved path may be served: inside the root, and no dotfile unless allowed."""
        if not resolved.is_relative_to(self.root):
            return False
        return self.dotfiles or not any(_hidden(part) for part in resolved.relative_to(self.root).parts)

    def _listed(self, directory: Path) -> list[tuple[str, bool]]:
        """The entries of ``directory`` a listing shows: ``(name, is_dir)`` for what a request
        for it would serve (a regular file or a directory inside the root, no hidden dotfile)."""
        entries = []
        for entry in os.scandir(directory):
            if not self.dotfiles and _hidden(entry.name):
                continue
            try:
                if entry.is_symlink() and not self._servable(Path(entry.path).resolve(strict=True)):
                    continue  # leads out of the root (or to a dotfile): it would be 404
                is_dir = entry.is_dir()
                if not is_dir and not entry.is_file():
                    continue  # dangling, a socket, a FIFO...: it would be 404
            except (OSError, RuntimeError):
                continue
            entries.append((entry.name, is_dir))
        return entries

    async def _listing(self, request: http.Request, found: _Found) -> int:
        title = html.escape(urllib.parse.unquote(request.path))
        items = "\n".join(
            f'<li><a href="{urllib.parse.quote(name)}{"/" if is_dir else ""}">'
            f"{html.escape(name)}{'/' if is_dir else ''}</a></li>"
            for name, is_dir in found.listing
        )
        page = (
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h1>Index of {title}</h1>\n<ul>\n{items}\n</ul>\n</body></html>\n"
        ).encode()
        await request.respond(200, [("content-type", "text/html; charset=utf-8")], page)
        return len(page)

    async def _file(self, request: http.Request, found: _Found) -> int:
        assert found.path is not None
        size = found.size
        mtime = int(found.mtime)
        ctype = mimetypes.guess_type(found.path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        headers = [
            ("content-type", ctype),
            ("last-modified", email.utils.formatdate(mtime, usegmt=True)),
            ("etag", etag(size, found.mtime)),
            ("accept-ranges", "bytes"),
        ]
        match = request.headers.get_all("if-none-match")
        if match:  # it takes precedence over If-Modified-Since (RFC 9110 section 13.2.2)
            if _none_match(match, headers[2][1]):
                await request.respond(304, headers[1:])
                return 0
        else:
            since = request.headers.get("if-modified-since")
            if since is not None and _not_modified(since, mtime):
                await request.respond(304, headers[1:])
                return 0
        start, end, status = 0, size, 200
        rng = request.headers.get("range")
        if rng is not None:
            condition = request.headers.get("if-range")
            if condition is not None and not if_range_matches(condition, headers[2][1], headers[1][1]):
                rng = None  # the client's copy is stale: the whole file (RFC 9110 13.1.5)
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed == "unsatisfiable":
                return await _text(request, 416, "range not satisfiable\n", [("content-range", f"bytes */{size}")])
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                headers.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
        length = end - start
        headers.append(("content-length", str(length)))
        if request.method == "HEAD":
            await request.respond(status, headers)
            return 0
        # The file is closed before the response ends: ending it is the last await (see the
        # module docstring), so a client leaving right after the whole response costs nothing.
        async with await trio.open_file(found.path, "rb") as f:
            if start:
                await f.seek(start)
            if length <= SMALL_FILE:
                data = await f.read(length)
                if len(data) != length:  # the file changed under us: do not send a wrong length
                    raise OSError(f"{found.path} changed while being served")
                stream: ByteStream | None = None
            else:
                stream = await request.start_response(status, headers)
                sent = 0
                while sent < length:
                    chunk = await f.read(min(FILE_CHUNK, length - sent))
                    if not chunk:
                        raise OSError(f"{found.path} shrank while being served")
                    await stream.send(chunk)
                    sent += len(chunk)
        if stream is None:
            await request.respond(status, headers, data)
        else:
            await stream.done()
        return length


def etag(size: int, mtime: float) -> str:
    """The entity tag of a file of ``size`` bytes last modified at ``mtime`` (seconds since the
    epoch): it changes whenever either does (to the microsecond)."""
    return f'"{int(mtime * 1_000_000):x}-{size:x}"'


def _none_match(values: Sequence[str], tag: str) -> bool:
    """Whether ``If-None-Match`` (its field values) matches ``tag``: ``*``, or one of its entity
    tags with the weak comparison of RFC 9110 section 8.8.3.2 (``W/`` ignored)."""
    for value in values:
        for candidate in value.split(","):
            candidate = candidate.strip()
            if candidate == "*" or candidate.removeprefix("W/") == tag:
                return True
    return False


def if_range_matches(condition: str, tag: str, last_modified: str) -> bool:
    """Whether an ``If-Range`` field value lets a ``Range`` apply to the file whose entity tag is
    ``tag`` and whose ``Last-Modified`` field is ``last_modified`` (RFC 9110 section 13.1.5).

    An entity tag (it starts with ``"`` or ``W/``) matches by the strong comparison: the same
    opaque tag, and a weak one never matches. A date matches only when it is exactly the
    ``Last-Modified`` date. Anything else (unparsable) does not match: the whole file is sent."""
    condition = condition.strip()
    if condition.startswith(('"', "W/")):
        return condition == tag and not tag.startswith("W/")
    try:
        when = email.utils.parsedate_to_datetime(condition)
        then = email.utils.parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError):
        return False
    return when.tzinfo is not None and when == then


def _hidden(name: str) -> bool:
    """A dotfile's name (``.git``, ``.env``), not ``.`` or ``..``."""
    return name.startswith(".") and name not in (".", "..")


def _not_modified(since: str, mtime: int) -> bool:
    try:
        when = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        return False
    return mtime <= int(when.timestamp())


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range of a ``size``-byte resource as ``(start, end)`` (end exclusive);
    ``"unsatisfiable"`` when it starts past the end; ``None`` to ignore the header (malformed,
    another unit, or several ranges)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())) or (last and not last.isdigit()):
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end
