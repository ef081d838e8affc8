"""The WebSocket opening handshake over HTTP: :func:`accept` (server) and :func:`connect` (client).

Server: :func:`is_websocket` says whether a request asks for a WebSocket; :func:`accept` checks
that it asks properly (HTTP/1.1: ``GET`` with ``Upgrade: websocket``, ``Connection: Upgrade``, a
16-byte ``Sec-WebSocket-Key``, no body; HTTP/2: an extended CONNECT with ``:protocol websocket``;
both: ``Sec-WebSocket-Version: 13``), answering 400 or 426 otherwise, chooses the subprotocol
and permessage-deflate, and answers 101 (HTTP/1.1, with ``Sec-WebSocket-Accept``) or 200
(HTTP/2). Client: :func:`connect` offers version, subprotocols and deflate, opens the tunnel
with the version-agnostic ``conn.open_tunnel("websocket", ...)`` (an HTTP/1.1 Upgrade wanting 101
or an HTTP/2 extended CONNECT wanting 2xx, :class:`layers.http.ClientConnection`), then checks
what the server agreed to: over HTTP/1.1 the 101's ``Upgrade`` / ``Connection`` tokens and
``Sec-WebSocket-Accept``; with both versions the extension and subprotocol (never one not
offered). A refusal is :class:`UpgradeRefused` with the start of the server's answer.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
from wsproto.extensions import Extension
from wsproto.handshake import client_extensions_handshake, server_extensions_handshake
from wsproto.utilities import RemoteProtocolError, generate_accept_token

from stack.deadlines import FOREVER
from stack.errors import ProtocolError, StackError
from stack.streams import ByteStream

from . import http
from ._ws_deflate import _BoundedDeflate
from ._ws_stream import MAX_MESSAGE, WebSocket

log = logging.getLogger("stack.websocket")

_GUID_KEY_BYTES = 16


class UpgradeRefused(StackError):
    """The server answered the opening handshake with something other than a WebSocket.

    ``status`` is its HTTP status, ``body`` the start of its answer (at most 1 KiB).
    """

    def __init__(self, message: str, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _tokens(values: Sequence[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def is_websocket(request: http.Request) -> bool:
    """Does ``request`` ask for a WebSocket? (HTTP/1.1: ``Upgrade: websocket``; HTTP/2: an
    extended CONNECT with ``:protocol websocket``.) Whether it asks properly is for
    :func:`accept` to judge."""
    if request.http_version == "2":
        return request.method == "CONNECT" and getattr(request, "protocol", None) == "websocket"
    return any(t.lower() == "websocket" for t in _tokens(request.headers.get_all("upgrade")))


def _request_problem(request: http.Request) -> tuple[int, str] | None:
    """Why ``request`` is not a valid opening handshake (status, detail), or None."""
    h = request.headers
    if request.http_version == "2":
        if request.method != "CONNECT" or getattr(request, "protocol", None) != "websocket":
            return 400, "not an extended CONNECT with :protocol websocket (RFC 8441)"
    else:
        if request.method != "GET":
            return 400, "a WebSocket upgrade is a GET request"
        if request.http_version != "1.1":
            return 400, "a WebSocket upgrade needs HTTP/1.1"
        if not any(t.lower() == "websocket" for t in _tokens(h.get_all("upgrade"))):
            return 400, "no 'Upgrade: websocket'"
        if not any(t.lower() == "upgrade" for t in _tokens(h.get_all("connection"))):
            return 400, "no 'Connection: Upgrade'"
        key = h.get_all("sec-websocket-key")
        try:
            ok = len(key) == 1 and len(base64.b64decode(key[0].strip(), validate=True)) == _GUID_KEY_BYTES
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            return 400, "Sec-WebSocket-Key is missing or not 16 bytes in base64"
        if (h.get("content-length") or "0") != "0" or "transfer-encoding" in h:
            return 400, "a WebSocket upgrade request has no body"
    if h.get_all("sec-websocket-version") != ["13"]:
        return 426, "Sec-WebSocket-Version must be 13"
    return None


@dataclass(frozen=True)
class _Options:
    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE


async def _accept_stream(
    request: http.Request, opts: _Options, headers: http.HeaderInput, deadline: float
) -> tuple[ByteStream, list[Extension], dict[str, Any]]:
    """Answer the opening handshake of ``request``; the stream, extensions and info."""
    problem = _request_problem(request)
    if problem is not None:
        status, detail = problem
        fields = [("content-type", "text/plain; charset=utf-8")]
        if status == 426:
            fields.append(("sec-websocket-version", "13"))
        await request.respond(status, fields, f"not a WebSocket handshake: {detail}\n".encode(), deadline=deadline)
        raise ProtocolError(f"websocket: refused the opening handshake from {request.info.get('peer')}: {detail}")
    h = request.headers
    offered = _tokens(h.get_all("sec-websocket-protocol"))
    chosen = next((p for p in opts.subprotocols if p in offered), None)
    fields2: list[tuple[str, str]] = []
    if request.http_version != "2":
        token = generate_accept_token(h["sec-websocket-key"].strip().encode("ascii")).decode("ascii")
        fields2 += [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", token)]
    if chosen is not None:
        fields2.append(("sec-websocket-protocol", chosen))
    extensions: list[Extension] = []
    if opts.deflate:
        ext = _BoundedDeflate(opts.max_message)
        accepted = server_extensions_handshake(_tokens(h.get_all("sec-websocket-extensions")), [ext])
        if accepted is not None:
            fields2.append(("sec-websocket-extensions", accepted.decode("ascii")))
            extensions.append(ext)
    fields2 += list(http.Headers(headers))
    status = 200 if request.http_version == "2" else 101
    stream = await request.start_response(status, fields2, deadline=deadline)
    info = {"websocket_path": request.path, "websocket_subprotocol": chosen, "http_version": request.http_version}
    return stream, extensions, info


async def accept(
    request: http.Request,
    *,
    subprotocols: Sequence[str] = (),
    deflate: bool = False,
    max_message: int = MAX_MESSAGE,
    headers: http.HeaderInput = (),
    deadline: float = FOREVER,
) -> WebSocket:
    """Accept the WebSocket ``request`` asks for, over HTTP/1.1 (101) or HTTP/2 (200 to the
    extended CONNECT), and return it. The app must not have responded yet.

    ``subprotocols``: the ones this server speaks, preferred first; the first the client offered
    is chosen (``ws.subprotocol``), else none. ``deflate``: accept permessage-deflate if
    offered. ``headers``: extra response fields. A request that is not a valid opening handshake
    gets 400 (426 for a wrong ``Sec-WebSocket-Version``) and raises :class:`~stack.ProtocolError`.
    On deadline: :class:`~stack.Timeout`. Use the result in ``async with``: the app's request is
    over when it returns.
    """
    opts = _Options(tuple(subprotocols), deflate, max_message)
    stream, extensions, info = await _accept_stream(request, opts, headers, deadline)
    log.debug(
        "websocket %s accepted from %s over HTTP/%s", request.path, request.info.get("peer"), request.http_version
    )
    return WebSocket(stream, client=False, max_message=max_message, extensions=extensions, info=info)


def _offer_fields(opts: _Options) -> tuple[list[tuple[str, str]], list[Extension]]:
    fields: list[tuple[str, str]] = [("sec-websocket-version", "13")]
    if opts.subprotocols:
        fields.append(("sec-websocket-protocol", ", ".join(opts.subprotocols)))
    extensions: list[Extension] = []
    if opts.deflate:
        ext = _BoundedDeflate(opts.max_message)
        extensions.append(ext)
        fields.append(("sec-websocket-extensions", f"permessage-deflate; {ext.offer()}"))
    return fields, extensions


def _agreed(response: http.Response, opts: _Options, offered: list[Extension]) -> tuple[list[Extension], str | None]:
    """The extensions and subprotocol the server's answer agreed to; ProtocolError if it agreed
    to something not offered."""
    h = response.headers
    try:
        extensions = client_extensions_handshake(_tokens(h.get_all("sec-websocket-extensions")), offered)
    except (RemoteProtocolError, ValueError) as exc:
        raise ProtocolError(f"websocket handshake: the server chose an extension not offered: {exc}") from None
    chosen = h.get("sec-websocket-protocol")
    if chosen is not None and chosen not in opts.subprotocols:
        raise ProtocolError(f"websocket handshake: the server chose the subprotocol {chosen!r}, not offered")
    return extensions, chosen


async def _refused(response: http.Response, what: str) -> UpgradeRefused:
    """The :class:`UpgradeRefused` for a refused tunnel: the start of its body (read for at most
    a second), and the response closed whatever happens (HTTP/2 leaves the refused stream open
    for its body to be read; HTTP/1.1, the connection)."""
    body = b""
    try:
        with trio.move_on_after(1.0):
            body = await response.body.recv(1024)
    except StackError:
        pass
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()
    return UpgradeRefused(
        f"websocket: {what} answered {response.status} {response.reason}".rstrip(), response.status, body
    )


async def _connect_stream(
    conn: http.ClientConnection, path: str, opts: _Options, headers: http.HeaderInput, deadline: float
) -> tuple[ByteStream, list[Extension], dict[str, Any]]:
    fields, offered = _offer_fields(opts)
    fields += list(http.Headers(headers))
    h2 = conn.http_version == "2"
    key = b""
    if not h2:  # RFC 8441: no Sec-WebSocket-Key / -Accept over HTTP/2
        key = base64.b64encode(os.urandom(_GUID_KEY_BYTES))
        fields = [("sec-websocket-key", key.decode()), *fields]
    try:
        response = await conn.open_tunnel("websocket", path, headers=fields, deadline=deadline)
    except http.TunnelRefused as exc:
        what = f"the extended CONNECT to {path}" if h2 else f"the upgrade request for {path}"
        raise await _refused(exc.response, what) from None
    if not h2:
        h = response.headers
        problems = []
        if not any(t.lower() == "websocket" for t in _tokens(h.get_all("upgrade"))):
            problems.append("no 'Upgrade: websocket'")
        if not any(t.lower() == "upgrade" for t in _tokens(h.get_all("connection"))):
            problems.append("no 'Connection: Upgrade'")
        if h.get("sec-websocket-accept") != generate_accept_token(key).decode():
            problems.append("a wrong Sec-WebSocket-Accept")
        if problems:
            with trio.CancelScope(shield=True):
                await response.aclose()
            raise ProtocolError(f"websocket handshake: the server's 101 has {', '.join(problems)}")
    lower = response.body
    try:
        extensions, chosen = _agreed(response, opts, offered)
    except ProtocolError:
        with trio.CancelScope(shield=True):
            await lower.aclose()
        raise
    info = {"websocket_path": path, "websocket_subprotocol": chosen, "http_version": conn.http_version}
    return lower, extensions, info


async def connect(
    conn: http.ClientConnection,
    path: str = "/",
    *,
    subprotocols: Sequence[str] = (),
    deflate: bool = False,
    max_message: int = MAX_MESSAGE,
    headers: http.HeaderInput = (),
    deadline: float = FOREVER,
) -> WebSocket:
    """Open a WebSocket to ``path`` over an HTTP client connection: an HTTP/1.1 Upgrade (the
    connection then carries only the WebSocket) or an HTTP/2 extended CONNECT stream (RFC 8441;
    the connection goes on carrying other requests; the server must advertise
    SETTINGS_ENABLE_CONNECT_PROTOCOL, else :class:`~stack.StackError`).

    ``subprotocols``: offered, preferred first (``ws.subprotocol`` is the server's choice).
    ``deflate``: offer permessage-deflate. A server that answers with anything but a WebSocket
    raises :class:`UpgradeRefused`; a bad answer, :class:`~stack.ProtocolError`. On deadline:
    :class:`~stack.Timeout`.
    """
    opts = _Options(tuple(subprotocols), deflate, max_message)
    lower, extensions, info = await _connect_stream(conn, path, opts, headers, deadline)
    return WebSocket(lower, client=True, max_message=max_message, extensions=extensions, info=info)
