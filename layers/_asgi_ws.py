"""One ASGI ``websocket`` session on one of our requests, on the WebSocket layer.

Theory of operation. The request asks for a WebSocket (HTTP/1.1 ``Upgrade: websocket`` or an
HTTP/2 extended CONNECT with ``:protocol websocket``, RFC 8441; :func:`layers.websocket.is_websocket`
tells). :func:`websocket_scope` builds the scope; :class:`WebSocketCycle` is its ``receive`` and
``send``:

* the first ``receive`` gives ``websocket.connect``; the app answers ``websocket.accept``
  (:func:`layers.websocket.accept`, with the app's subprotocol, if the client offered it, and
  headers; permessage-deflate when offered), ``websocket.close`` (403), or a denial response,
  ``websocket.http.response.start`` and ``.body`` (sent as an HTTP response);
* once accepted, ``receive`` gives ``websocket.receive`` with ``text`` or ``bytes`` as the
  message's kind, then ``websocket.disconnect`` with the client's close code and reason (1006
  for a connection that ended without a Close);
* ``websocket.send`` sends a message; ``websocket.close`` sends our Close with the app's code
  and reason (receiving goes on until the client's Close). A send once the client has gone
  raises :class:`ClientDisconnected`.

:meth:`WebSocketCycle.finish` ends what the app left: 403 if it never answered, our Close (1000)
if it returned with the WebSocket open, and the stream closed.
"""

from __future__ import annotations

from typing import Any

import trio

from layers._asgi_http import split_target
from layers._asgi_scope import ASGI_VERSION, ClientDisconnected, ConnectionFacts
from layers.http import Request
from layers.websocket import CloseReceived, WebSocket, accept
from stack.errors import StackError
from stack.streams import ByteStream

__all__ = ["CONNECTING", "WebSocketCycle", "websocket_scope"]

# The phases of a session
CONNECTING, DENYING, OPEN, CLOSED = range(4)


def websocket_scope(
    request: Request, facts: ConnectionFacts, root_path: str, state: dict[str, Any] | None
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope of ``request``."""
    path, raw_path, query = split_target(request.target, root_path)
    headers = request.headers.raw
    if request.http_version == "2" and request.authority:
        headers = [(b"host", request.authority.encode("latin-1")), *(h for h in headers if h[0] != b"host")]
    offered = [p.strip() for v in request.headers.get_all("sec-websocket-protocol") for p in v.split(",") if p.strip()]
    scope = {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version,
        "scheme": "wss" if facts.secure else "ws",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": facts.client,
        "server": facts.server,
        "subprotocols": offered,
        "extensions": facts.ws_extensions,
    }
    if state is not None:
        scope["state"] = state.copy()
    return scope


class WebSocketCycle:
    """``receive`` and ``send`` of one WebSocket session (see the module docstring)."""

    def __init__(self, request: Request, max_message: int) -> None:
        self.request = request
        self.max_message = max_message
        self.phase = CONNECTING
        self.connected = False  # websocket.connect was given
        self.ws: WebSocket | None = None
        self.denial: ByteStream | None = None
        self.gone = False
        self.answered = trio.Event()  # the app accepted or refused (a receive may wait for it)

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        if not self.answered.is_set():  # the app receives while it accepts in another task (Quart)
            await self.answered.wait()
        ws = self.ws
        if ws is None or self.gone:
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        try:
            msg = await ws.recv()
        except CloseReceived as exc:
            self.gone = True
            return {"type": "websocket.disconnect", "code": exc.code, "reason": exc.reason}
        except StackError:
            self.gone = True
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        if isinstance(msg, str):
            return {"type": "websocket.receive", "text": msg}
        return {"type": "websocket.receive", "bytes": msg}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        try:
            if kind == "websocket.send":
                if self.phase != OPEN or self.ws is None:
                    raise RuntimeError("ASGI: websocket.send before websocket.accept or after websocket.close")
                text = message.get("text")
                await self.ws.send(text if text is not None else message["bytes"])
            elif kind == "websocket.accept":
                if self.phase != CONNECTING:
                    raise RuntimeError("ASGI: websocket.accept after the session was answered")
                await self._accept(message)
            elif kind == "websocket.close":
                await self._close(int(message.get("code") or 1000), message.get("reason") or "")
            elif kind == "websocket.http.response.start":
                if self.phase != CONNECTING:
                    raise RuntimeError("ASGI: websocket.http.response.start after the session was answered")
                self.phase = DENYING
                self.answered.set()
                self.denial = await self.request.start_response(message["status"], message.get("headers", ()))
            elif kind == "websocket.http.response.body":
                if self.phase != DENYING or self.denial is None:
                    raise RuntimeError("ASGI: websocket.http.response.body without its start")
                body = message.get("body", b"")
                if body:
                    await self.denial.send(body)
                if not message.get("more_body", False):
                    self.phase = CLOSED
                    await self.denial.done()
            else:
                raise RuntimeError(f"ASGI: unexpected message {kind!r} on a websocket scope")
        except StackError as exc:
            self.gone = True
            raise ClientDisconnected(f"the WebSocket client is gone: {exc}") from exc

    async def _accept(self, message: dict[str, Any]) -> None:
        chosen = message.get("subprotocol")
        headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"sec-websocket-protocol"]
        self.phase = OPEN
        try:
            self.ws = await accept(
                self.request,
                subprotocols=(chosen,) if chosen else (),
                deflate=True,
                max_message=self.max_message,
                headers=headers,
            )
        finally:
            self.answered.set()

    async def _close(self, code: int, reason: str) -> None:
        phase, self.phase = self.phase, CLOSED
        self.answered.set()
        if phase == CONNECTING:  # refused before accepting (ASGI: 403)
            await self.request.respond(403, [("content-type", "text/plain")], b"WebSocket refused\n")
        elif phase == OPEN and self.ws is not None and not self.gone:
            await self.ws.done(code, reason)

    async def finish(self) -> None:
        """End what the app left (see the module docstring); never raises a StackError."""
        try:
            if self.phase == CONNECTING:
                await self._close(1000, "")
            elif self.phase == DENYING and self.denial is not None:
                await self.denial.aclose()
        except StackError:
            pass
        if self.ws is not None:
            await self.ws.aclose()
