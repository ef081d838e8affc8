"""One ASGI ``http`` request on one of our requests: the scope, ``receive`` and ``send``.

Theory of operation. :func:`http_scope` builds the scope dict from the request: a copy of the
connection's template (:mod:`layers._asgi_scope`) with the request's own values set. :class:`HTTPCycle` is
the request's ``receive`` and ``send`` (its bound methods), with no task of its own (nor
``__init__`` frame on the server's path):

* ``receive`` reads the request body from ``request.body`` one ``recv`` per call, so the client
  is held back by the app's pace (nothing is buffered beyond one read); after the body's end it
  waits in ``request.wait_disconnect()`` and returns ``http.disconnect`` when the client goes
  away, at once if the response is already complete.
* ``send`` keeps ``http.response.start`` until the first body message: a response given whole
  (one body message without ``more_body``) goes out with :meth:`Request.respond` (head and body
  in one write); otherwise :meth:`Request.start_response` and ``send`` on its stream, each
  waiting for the layers below (backpressure). Trailers (``trailers: True`` in the start) end
  the stream with ``done(trailers=...)``: on HTTP/2 always, on HTTP/1.1 when the client sent
  ``TE: trailers`` (else they are dropped). ``http.response.pathsend`` streams the file in
  :data:`FILE_CHUNK` reads (our HTTP layers frame or encrypt the body, so the kernel's sendfile
  cannot be used); ``http.response.early_hint`` sends 103 with the request's
  ``send_informational``. A failed send raises :class:`ClientDisconnected` (an OSError).

What is left when the app returns (or raises) is the caller's (:class:`layers.asgi.ASGIApp`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import unquote

import trio

from layers._asgi_scope import ClientDisconnected, ConnectionFacts
from layers._http_model import remember
from layers.http import Request
from stack.errors import StackError
from stack.streams import ByteStream

__all__ = ["FILE_CHUNK", "RECV_SIZE", "TARGETS", "HTTPCycle", "http_scope", "new_cycle", "split_target"]

RECV_SIZE = 65536
"""The largest body chunk one ``receive`` returns."""

FILE_CHUNK = 256 * 1024
"""Bytes read from a file and sent per step for ``http.response.pathsend``."""

# The phases of a response
NEW, STARTED, STREAMING, TRAILERS, DONE = range(5)

new_cycle = object.__new__
"""``new_cycle(HTTPCycle)``: a cycle without running ``__init__`` (set what it sets)."""


TARGETS: dict[str | tuple[str, str], tuple[str, bytes, bytes]] = {}
""":func:`split_target`'s memory, by ``target`` when ``root_path`` is empty, else by ``(target, root_path)``
(no tuple for the usual empty ``root_path``; read directly where a call per request counts)."""
_TARGETS_MAX = 1024
_TARGET_KEPT_LEN = 256
"""Only targets of at most this many characters are remembered: the memory stays under ~1 MiB
whatever clients send (64 KiB targets, 1,024 of them, would hold hundreds of MiB)."""


def split_target(target: str, root_path: str) -> tuple[str, bytes, bytes]:
    """``(path, raw_path, query_string)`` of a request-target: ``path`` percent-decoded (UTF-8)
    with ``root_path`` in front, ``raw_path`` as sent. Remembered (at most :data:`_TARGETS_MAX`
    targets of at most :data:`_TARGET_KEPT_LEN` characters, then forgotten all at once): clients
    repeat their targets."""
    key = (target, root_path) if root_path else target
    split = TARGETS.get(key)
    if split is None:
        split = _split_target(target, root_path)
        if len(target) <= _TARGET_KEPT_LEN:
            remember(TARGETS, key, split, _TARGETS_MAX)
    return split


def _split_target(target: str, root_path: str) -> tuple[str, bytes, bytes]:
    raw, _, query = target.partition("?")
    if raw[:1] != "/" and "://" in raw:  # absolute-form (a proxy's request): its path
        raw = "/" + raw.split("://", 1)[1].partition("/")[2]
    path = unquote(raw) if "%" in raw else raw
    return root_path + path if root_path else path, raw.encode("latin-1"), query.encode("latin-1")


def http_scope(
    request: Request, facts: ConnectionFacts, root_path: str, state: dict[str, Any] | None
) -> dict[str, Any]:
    """The ASGI ``http`` scope of ``request``."""
    target = request.target
    split = TARGETS.get((target, root_path) if root_path else target)  # split_target, inline: per request
    if split is None:
        split = split_target(target, root_path)
    headers = request.raw_headers
    version = request.http_version
    if version == "2" and request.authority:  # ASGI: :authority becomes the host field
        headers = [(b"host", request.authority.encode("latin-1")), *(h for h in headers if h[0] != b"host")]
    if state is None:
        scope = facts.http_scope.copy()  # every key in place: the stores below insert none
    else:  # a shallow copy of the lifespan state for each request
        scope = facts.http_scope_state.copy()
        scope["state"] = state.copy() if state else {}
    scope["http_version"] = version
    scope["method"] = request.method
    scope["scheme"] = request.scheme
    scope["path"], scope["raw_path"], scope["query_string"] = split
    scope["root_path"] = root_path
    scope["headers"] = headers
    return scope


class HTTPCycle:
    """``receive`` and ``send`` of one request (see the module docstring).

    ``HTTPCycle(request)``; per request, :class:`layers.asgi.ASGIApp` makes it with
    ``new_cycle(HTTPCycle)`` and sets the five attributes ``__init__`` sets itself (no
    ``__init__`` frame). Slots: every attribute read and write is a specialized slot access.
    """

    __slots__ = ("body_done", "gone", "headers", "phase", "request", "status", "stream", "trailers", "wants_trailers")

    request: Request
    phase: int
    body_done: bool
    gone: bool
    stream: ByteStream | None
    status: int
    headers: Any
    wants_trailers: Any  # the start message's "trailers" (only its truth counts)
    trailers: list[tuple[bytes, bytes]]

    def __init__(self, request: Request) -> None:
        self.request = request
        self.phase = NEW
        self.body_done = self.gone = False
        self.stream = None

    # ---- receive --------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.body_done:
            try:
                chunk = await self.request.body.recv(RECV_SIZE)
            except StackError:
                self.body_done = self.gone = True
                return {"type": "http.disconnect"}
            if chunk:
                return {"type": "http.request", "body": chunk, "more_body": True}
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.gone and self.phase != DONE:
            with contextlib.suppress(StackError):
                await self.request.wait_disconnect()
        self.gone = True
        return {"type": "http.disconnect"}

    # ---- send -----------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.phase != NEW or self.gone:
                if self.gone:
                    raise ClientDisconnected("the client is gone")
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.status = message["status"]
            self.headers = message.get("headers", ())
            self.wants_trailers = message.get("trailers")
            self.phase = STARTED
            return
        if self.gone:
            raise ClientDisconnected("the client is gone")
        if kind == "http.response.body":
            phase = self.phase
            if phase == STARTED and not message.get("more_body") and not self.wants_trailers:
                self.phase = DONE  # the whole response in one message: head and body in one write
                try:
                    await self.request.respond(self.status, self.headers, message.get("body", b""))
                except StackError as exc:
                    raise self._lost(exc) from exc
                return
            if phase == STARTED:
                await self._start()
            elif phase != STREAMING:
                raise RuntimeError(f"ASGI: http.response.body {self._out_of_order()}")
            await self._body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.trailers":
            if self.phase != TRAILERS:
                raise RuntimeError(f"ASGI: http.response.trailers {self._out_of_order()}")
            self.trailers += list(message.get("headers", ()))
            if not message.get("more_trailers", False):
                await self._end(self.trailers)
        elif kind == "http.response.pathsend":
            if self.phase != STARTED:
                raise RuntimeError(f"ASGI: http.response.pathsend {self._out_of_order()}")
            await self._pathsend(message["path"])
        elif kind == "http.response.early_hint":
            if self.phase != NEW:
                return  # too late for hints: ignored, as the extension allows
            try:
                links = [(b"link", bytes(link)) for link in message.get("links", ())]
                await self.request.send_informational(103, links)
            except StackError as exc:
                raise self._lost(exc) from exc
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} on an http scope")

    def _out_of_order(self) -> str:
        return ("before http.response.start", "", "", "after the last body", "after the response ended")[self.phase]

    def _lost(self, exc: StackError) -> ClientDisconnected:
        self.gone = True
        return ClientDisconnected(f"the client is gone: {exc}")

    async def _start(self) -> None:
        self.phase = STREAMING
        try:
            self.stream = await self.request.start_response(self.status, self.headers)
        except StackError as exc:
            raise self._lost(exc) from exc

    async def _body(self, body: bytes, more: bool) -> None:
        stream = self.stream
        assert stream is not None
        try:
            if body:
                await stream.send(body)
        except StackError as exc:
            raise self._lost(exc) from exc
        if not more:
            if self.wants_trailers:
                self.phase = TRAILERS
                self.trailers = []
            else:
                await self._end(None)

    async def _end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.phase = DONE
        stream = self.stream
        assert stream is not None
        request = self.request
        if trailers and request.http_version != "2":  # HTTP/1.1: only to a client that said TE: trailers
            te = request.headers.get("te") or ""
            if "trailers" not in te.lower():
                trailers = None
        try:
            if trailers:
                await stream.done(trailers=trailers)  # type: ignore[call-arg]  # both versions' body streams take it
            else:
                await stream.done()
        except StackError as exc:
            raise self._lost(exc) from exc

    async def _pathsend(self, path: str) -> None:
        """The file at ``path`` as the response body (see the module docstring)."""
        f = await trio.open_file(path, "rb")
        async with f:
            size = os.fstat(f.fileno()).st_size
            if size <= FILE_CHUNK and not self.wants_trailers:
                await self.send({"type": "http.response.body", "body": await f.read()})
                return
            await self._start()
            while True:
                chunk = await f.read(FILE_CHUNK)
                if not chunk:
                    break
                await self._body(chunk, True)
            await self._body(b"", False)

    async def abandon(self) -> None:
        """Give up a response that started streaming (HTTP/1.1 closes the connection, HTTP/2
        resets the stream)."""
        stream = self.stream
        if stream is not None:
            await stream.aclose()
