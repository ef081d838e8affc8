"""WebSocket (RFC 6455) on wsproto: a :class:`~stack.MessageStream` of text and binary messages.

Three ways to get one::

    # (a) from HTTP: the app accepts the upgrade (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT, RFC 8441)
    async def app(request: http.Request) -> None:
        if websocket.is_websocket(request):
            async with await websocket.accept(request, deadline=after(10)) as ws:
                async for msg in ws:
                    await ws.send(msg)

    async with await Stack(tcp.connect(host, port), http.client()).connect() as conn:   # h1 or h2
        ws = await websocket.connect(conn, "/chat", deadline=after(10))

    # (b) straight over any ByteStream: the spec does the HTTP/1.1 opening handshake itself
    server = Stack(tcp.listen("127.0.0.1", 0), websocket.server())
    client = Stack(tcp.connect(host, port), websocket.client(f"{host}:{port}", "/chat"))

    # (c) already negotiated elsewhere: no handshake, just the frames
    ws = await websocket.raw("client").attach(tunnel)

**Messages.** ``send(str)`` sends a text message (UTF-8), ``send(bytes)`` (or ``bytearray``,
``memoryview``) a binary one; ``recv()`` returns ``str`` for a text message and ``bytes`` for a
binary one, so an echo (``await ws.send(await ws.recv())``) keeps the kind. Code written for byte
MessageStreams works unchanged with a peer that sends binary messages. Fragmented messages are
reassembled; a message over ``max_message`` bytes (default 16 MiB; UTF-8 bytes for text, the
inflated size with permessage-deflate) raises :class:`~stack.MessageTooLarge` before it is
buffered, sends Close 1009 and leaves the WebSocket broken (the rest cannot be parsed).
Invalid frames and invalid UTF-8 raise :class:`~stack.ProtocolError` and send Close 1002 / 1007.

**Deadlines lose nothing.** A ``recv`` that times out or is cancelled consumes nothing: the bytes
of a message that arrived in part stay in this layer for the next call. A ``send`` commits a
message whole or not at all: on deadline :class:`~stack.Timeout` says which (``committed``;
``sent`` is 0 or the message's size in bytes) and a committed message is delivered, its
remaining bytes going first on the next call. With permessage-deflate a message is committed as
soon as it is compressed (the compressor's state already holds it), so a send that times out
after that point reports ``committed=True``.

**Closing** is a half-close, like TCP's FIN. ``done(code=1000, reason="")`` sends a Close frame:
this side sends no more messages, receiving goes on. When the peer's Close arrives, ``recv``
raises :class:`CloseReceived` (an :class:`~stack.EndOfStream`) with the peer's ``code`` and
``reason`` (``1005`` and ``""`` for a Close without a code), and again on every later call;
``ws.close_code`` / ``ws.close_reason`` keep them. We do not answer a Close on our own, so the
application can finish what it sends: ``done()`` or ``aclose()`` sends our Close (``aclose``
echoes the peer's code). ``aclose()`` sends Close if it was not sent, then the end of the stream
below (``done()`` on it: TCP FIN, HTTP/2 END_STREAM) and closes it; it does not wait for the
peer's Close (for a complete closing handshake: ``done()``, then ``recv()`` until
:class:`CloseReceived`, then ``aclose()``). A connection that ends without a Close frame is
:class:`~stack.Broken` (code 1006: the messages may be truncated). A Close that arrives in the
middle of a fragmented message makes ``recv`` raise :class:`~stack.Broken` too (that message is
lost), once our Close has answered it.

**Ping.** Pings from the peer are answered with a Pong automatically: by the receiving task while
it waits for more data (never blocking its reading on the write: two peers that both stopped
reading to write could deadlock), or by the next send, done or aclose; each Ping gets its own
Pong, in order (a peer that piles up more than :data:`MAX_PONGS` unanswered Pings gets answers to
the most recent ones only, as RFC 6455 5.5.3 allows). A peer that sends more than
:data:`PING_FLOOD` Pings within about a second is flooding: the Pongs owed go out, then Close 1008
(policy violation), and ``recv`` raises :class:`~stack.ProtocolError`. ``await ws.ping()`` sends a Ping and returns
the round-trip time in seconds once its Pong was read, which :meth:`WebSocket.recv` does: call it
while another task receives (or give it a deadline). A Ping still waiting when the peer's Close
arrives raises :class:`~stack.Closed`. A message longer than :data:`FRAGMENT` bytes goes out as
several frames, and the Pongs and Pings owed go out between them, so a large message delays a
Pong by one fragment at most; our Close waits for the end of the message being sent.

**Detach** is the closing handshake: ``detach()`` sends Close (1000, unless ``done()`` sent one),
reads until the peer's Close and returns the stream below with every byte the peer sent after its
Close pushed back into it. A message that arrives first is kept for ``recv`` and detach raises
:class:`~stack.StackError` (receive it, then detach again). The stream below is the one the
``server``/``client``/``raw`` spec was attached to; after :func:`accept` or :func:`connect` it is
the HTTP/1.1 tunnel (its own ``detach()`` gives the raw connection) or the HTTP/2 stream.

**permessage-deflate** (RFC 7692) is off unless ``deflate=True``; then it is offered (client) or
accepted when offered (server), with the size limit applied to the inflated bytes as they are
inflated, so a small compressed frame cannot inflate past ``max_message`` in memory.

``info`` adds ``websocket_subprotocol`` (or ``None``) and ``websocket_deflate``; after an HTTP
handshake also ``websocket_path`` and ``http_version`` (``"1.1"`` or ``"2"``).

Over an HTTP/1.1 Upgrade the WebSocket takes the whole connection (closing the HTTP connection
closes it; the HTTP/1.1 client takes no more requests); over HTTP/2 it is one stream and the
connection goes on carrying requests and other WebSockets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from wsproto.extensions import Extension

from stack.deadlines import FOREVER
from stack.errors import ProtocolError
from stack.streams import ByteStream, require

from . import http, http1
from ._ws_deflate import _BoundedDeflate
from ._ws_handshake import UpgradeRefused as UpgradeRefused
from ._ws_handshake import _accept_stream, _connect_stream, _Options
from ._ws_handshake import accept as accept
from ._ws_handshake import connect as connect
from ._ws_handshake import is_websocket as is_websocket
from ._ws_stream import ERROR_CLOSE_TIME as ERROR_CLOSE_TIME
from ._ws_stream import FRAGMENT as FRAGMENT  # a copy: the stream reads _ws_stream.FRAGMENT (patch that one)
from ._ws_stream import MAX_MESSAGE as MAX_MESSAGE
from ._ws_stream import MAX_PONGS as MAX_PONGS
from ._ws_stream import PING_FLOOD as PING_FLOOD
from ._ws_stream import RECV as RECV
from ._ws_stream import CloseReceived as CloseReceived
from ._ws_stream import Message as Message
from ._ws_stream import WebSocket as WebSocket

__all__ = [
    "MAX_MESSAGE",
    "CloseReceived",
    "UpgradeRefused",
    "WebSocket",
    "accept",
    "client",
    "connect",
    "is_websocket",
    "raw",
    "server",
]

log = logging.getLogger("stack.websocket")

# =================================================================================================
# specs


@dataclass(frozen=True)
class server:
    """Spec: the server side of a WebSocket straight on a ByteStream (TCP, TLS...): reads the
    HTTP/1.1 opening handshake (with :mod:`layers.http1`'s limits and defences) and answers it.

    ``paths``: the request paths accepted (empty: any; another path gets 404). A request that
    is not a valid opening handshake gets 400 or 426 and the attach raises
    :class:`~stack.ProtocolError`. ``subprotocols``, ``deflate``, ``max_message``: as for
    :func:`accept`. The WebSocket's lower stream is ``lower`` itself (the bytes after the
    handshake are pushed back into it first). ``info["websocket_path"]`` is the request path.
    """

    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE
    paths: tuple[str, ...] = ()
    limits: http.Limits = http.DEFAULT_LIMITS

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = require(lower, ByteStream, "websocket.server")
        conn = http1.ServerConnection(lower, self.limits, None)
        request = await conn.recv(deadline=deadline)
        if self.paths and request.path not in self.paths:
            await request.respond(404, [("content-type", "text/plain")], b"no WebSocket here\n", deadline=deadline)
            raise ProtocolError(f"websocket: no WebSocket at {request.path!r}")
        opts = _Options(tuple(self.subprotocols), self.deflate, self.max_message)
        tunnel, extensions, info = await _accept_stream(request, opts, (), deadline)
        bottom = await tunnel.detach(deadline=deadline)
        return WebSocket(bottom, client=False, max_message=self.max_message, extensions=extensions, info=info)


@dataclass(frozen=True)
class client:
    """Spec: the client side of a WebSocket straight on a ByteStream: sends the HTTP/1.1 opening
    handshake for ``path`` with ``Host: host`` and checks the answer.

    ``subprotocols``, ``deflate``, ``max_message``, ``headers``: as for :func:`connect`. The
    WebSocket's lower stream is ``lower`` itself.
    """

    host: str
    path: str = "/"
    subprotocols: tuple[str, ...] = ()
    deflate: bool = False
    max_message: int = MAX_MESSAGE
    headers: tuple[tuple[str, str], ...] = ()
    limits: http.Limits = http.DEFAULT_LIMITS

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = require(lower, ByteStream, "websocket.client")
        scheme = "https" if "tls_version" in lower.info else "http"
        conn = await http1.client(self.limits, self.host, scheme).attach(lower, deadline=deadline)
        opts = _Options(tuple(self.subprotocols), self.deflate, self.max_message)
        tunnel, extensions, info = await _connect_stream(conn, self.path, opts, self.headers, deadline)
        bottom = await tunnel.detach(deadline=deadline)
        return WebSocket(bottom, client=True, max_message=self.max_message, extensions=extensions, info=info)


@dataclass(frozen=True)
class raw:
    """Spec: a WebSocket whose opening handshake was done elsewhere: frames only.

    ``role``: ``"client"`` (masks what it sends) or ``"server"``. ``deflate``: the
    ``Sec-WebSocket-Extensions`` value the handshake agreed for permessage-deflate (for example
    ``"permessage-deflate"``), or None. No I/O: attach returns at once.
    """

    role: Literal["client", "server"]
    max_message: int = MAX_MESSAGE
    deflate: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        if self.max_message < 0:
            raise ValueError("max_message must be >= 0")

    async def attach(self, lower: ByteStream, *, deadline: float = FOREVER) -> WebSocket:
        lower = require(lower, ByteStream, "websocket.raw")
        extensions: list[Extension] = []
        if self.deflate is not None:
            ext = _BoundedDeflate(self.max_message)
            ext.finalize(self.deflate)
            extensions.append(ext)
        return WebSocket(lower, client=self.role == "client", max_message=self.max_message, extensions=extensions)
