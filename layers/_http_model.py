"""The HTTP model every version shares: :class:`Headers`, :class:`Limits`, :class:`Request`,
:class:`Response`, the connection interfaces, ``App`` and ``Body``.

Theory of operation: a version (``http1``, ``http2``) subclasses :class:`Request` and
:class:`ServerConnection` / :class:`ClientConnection` and fills in the primitives
(``Request._respond``, ``Request._start_response``); everything a user calls is written here once,
so the versions cannot drift apart. This module knows no version and imports none: ``layers.http``
re-exports it beside the specs that pick a version, and the versions import it from here, so no
HTTP module imports another in a circle.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from stack.deadlines import FOREVER
from stack.errors import Closed, EndOfStream, MessageTooLarge, StackError
from stack.streams import ByteStream, Info

log = logging.getLogger("stack.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

HeaderInput = Union["Headers", Mapping[str, str], Iterable[tuple[str | bytes, str | bytes]]]
Body = bytes | bytearray | memoryview | AsyncIterable[bytes] | None


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("latin-1")


class Headers:
    """An ordered, immutable multi-map of header fields; names are case-insensitive.

    Built from a mapping or from ``(name, value)`` pairs of ``str`` or ``bytes``. Names are kept
    lower-cased. ``headers["content-type"]`` and ``get`` return the first value as ``str``
    (latin-1); ``get_all`` every value; iterating yields ``(name, value)`` ``str`` pairs;
    ``raw`` is the list of ``(bytes, bytes)`` pairs as on the wire.
    """

    __slots__ = ("raw",)

    raw: list[tuple[bytes, bytes]]

    def __init__(self, items: HeaderInput = ()) -> None:
        if type(items) is Headers:  # first: ``==`` on a Headers would be a call of __eq__
            self.raw = list(items.raw)
            return
        if items == ():  # the common empty case, without the Mapping check below
            self.raw = []
            return
        cls = items.__class__
        if cls is list or cls is tuple:  # pairs: no Mapping check (an ABC isinstance is slow)
            pairs: Iterable[tuple[str | bytes, str | bytes]] = items  # type: ignore[assignment]
        elif isinstance(items, Headers):
            self.raw = list(items.raw)
            return
        else:
            pairs = items.items() if isinstance(items, Mapping) else items
        self.raw = [
            (k.lower() if k.__class__ is bytes else _b(k).lower(), v if v.__class__ is bytes else _b(v))
            for k, v in pairs
        ]

    @classmethod
    def _wire(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Headers over ``raw`` as is: pairs a parser produced, names already lower-case bytes."""
        headers = cls.__new__(cls)
        headers.raw = raw
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for k, v in self.raw:
            yield k.decode("latin-1"), v.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self.raw == other.raw

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass(frozen=True)
class Limits:
    """Every HTTP limit, with a safe default. One object configures both versions.

    HTTP/1.1 and shared:
      ``max_header_bytes``: a request's (or response's) head, 64 KiB; over it: 431 (server) or
      :class:`~stack.MessageTooLarge` (client).
      ``header_timeout``: seconds for a request's head to arrive once it started, and for the
      first request on a new connection (slowloris); then the connection is closed (408).
      ``keepalive_timeout``: seconds an idle keep-alive connection is kept.
      ``max_body``: default limit of :meth:`Request.read` / :meth:`Response.read`.
      ``drain_timeout``: seconds in-flight requests get to finish on graceful shutdown.
    HTTP/2:
      ``max_concurrent_streams``, ``max_header_list_size``, ``stream_window`` and
      ``connection_window`` (receive windows; data is acknowledged as the app consumes it),
      ``max_frame_size``, ``rapid_reset_limit`` resets per ``flood_period`` seconds before
      GOAWAY ENHANCE_YOUR_CALM (CVE-2023-44487), ``ping_flood_limit`` and
      ``settings_flood_limit`` per ``flood_period``, ``no_progress_limit``: frames that give
      the application nothing (WINDOW_UPDATE not paid for by DATA we sent, PRIORITY, PING,
      SETTINGS, empty DATA, frames on closed streams, unknown types, ...) beyond what the
      allowance regains (``no_progress_limit`` per ``flood_period``, and 16 per frame that
      delivers a head, data, trailers or an end), ``max_continuation_frames`` per header
      block, ``send_timeout`` (a peer that never opens its window loses the stream),
      ``idle_timeout`` (a connection with no streams).
    """

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_body: int = 16 * 1024 * 1024
    drain_timeout: float = 10.0
    max_concurrent_streams: int = 100
    max_header_list_size: int = 64 * 1024
    stream_window: int = 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    max_frame_size: int = 16384
    rapid_reset_limit: int = 200
    ping_flood_limit: int = 100
    settings_flood_limit: int = 100
    flood_period: float = 10.0
    no_progress_limit: int = 1000
    max_continuation_frames: int = 32
    send_timeout: float = 30.0
    idle_timeout: float = 300.0


DEFAULT_LIMITS = Limits()


async def _read_all(body: ByteStream, limit: int, declared: str | None, deadline: float) -> bytes:
    """Read ``body`` to its end; :class:`MessageTooLarge` past ``limit`` (checked against a
    declared Content-Length first, so nothing is read for an oversized body)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MessageTooLarge(f"body of {declared} bytes is over the limit of {limit}", limit=limit, size=int(declared))
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await body.recv(65536, deadline=deadline)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise MessageTooLarge(f"body is over the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)


class Request:
    """One request as the server sees it. Version modules subclass it.

    Attributes: ``method`` (str), ``target`` (the raw request-target), ``path`` and ``query``
    (the target split at ``?``; not percent-decoded), ``headers`` (:class:`Headers`),
    ``http_version`` (``"1.0"``, ``"1.1"`` or ``"2"``), ``scheme`` and ``authority`` (from
    ``:scheme``/``:authority`` or the Host header), ``body`` (a :class:`~stack.ByteStream` of
    the request body: ``b""`` at its end), ``info`` (the connection's :class:`~stack.Info`),
    ``trailers`` (a :class:`Headers`, filled once the body has ended; empty if none).

    Respond exactly once, with :meth:`respond` or :meth:`start_response`. If the app returns
    without responding, the server answers 500 (and logs it).
    """

    method: str
    target: str
    headers: Headers
    http_version: str
    scheme: str
    authority: str
    body: ByteStream
    info: Info
    limits: Limits

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        http_version: str,
        body: ByteStream,
        info: Info,
        *,
        scheme: str = "http",
        authority: str = "",
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.body = body
        self.info = info
        self.scheme = scheme
        self.authority = authority or (headers.get("host") or "")
        self.limits = limits
        self.responded = False
        self.status: int | None = None
        self.trailers = Headers()

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The header fields as received: lower-cased ``(name, value)`` byte pairs, the list
        ``headers.raw`` starts from (do not change it). HTTP/1.1 gives it without building
        ``headers``."""
        return self.headers.raw

    @property
    def path(self) -> str:
        """The target up to ``?`` (``"*"`` for ``OPTIONS *``; the authority for CONNECT)."""
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        """The target after ``?`` (``""`` if none)."""
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"

    async def read(self, max_bytes: int | None = None, *, deadline: float = FOREVER) -> bytes:
        """The whole request body. Over ``max_bytes`` (default ``limits.max_body``):
        :class:`~stack.MessageTooLarge` (checked against Content-Length before reading).
        On deadline: :class:`~stack.Timeout`; what was read so far is lost to this call, so
        use ``body.recv`` directly for resumable reads."""
        limit = self.limits.max_body if max_bytes is None else max_bytes
        return await _read_all(self.body, limit, self.headers.get("content-length"), deadline)

    async def respond(
        self, status: int, headers: HeaderInput = (), body: bytes = b"", *, deadline: float = FOREVER
    ) -> None:
        """Send a whole response: head and body together (one write where the version allows).

        Content-Length is set from ``body`` unless given. For HEAD the body is not sent.
        Raises :class:`~stack.StackError` if a response was already started.
        """
        self._claim(status)
        await self._respond(status, Headers(headers), bytes(body), deadline)

    async def start_response(self, status: int, headers: HeaderInput = (), *, deadline: float = FOREVER) -> ByteStream:
        """Start a streamed response and return its body stream.

        ``send`` writes body bytes (chunked in HTTP/1.1 unless a Content-Length was given);
        ``done(trailers=[...])`` ends the response, with trailers where the version allows;
        ``recv`` reads what is left of the request body (for CONNECT: the tunnel's bytes).
        ``aclose`` before ``done`` abandons the response (HTTP/1.1 closes the connection,
        HTTP/2 resets the stream).
        """
        self._claim(status)
        return await self._start_response(status, Headers(headers), deadline)

    async def send_informational(self, status: int, headers: HeaderInput = (), *, deadline: float = FOREVER) -> None:
        """Send an informational response (1xx but 101: ``103 Early Hints`` with ``Link`` fields)
        before the final one; any number of them. Nothing is sent to an HTTP/1.0 client (which
        does not know 1xx). ValueError for another status; :class:`~stack.StackError` once the
        final response started."""
        if not 100 <= status < 200 or status == 101:
            raise ValueError(f"not an informational status: {status}")
        if self.responded:
            raise StackError(f"{self!r}: the final response already started")
        await self._informational(status, Headers(headers), deadline)

    async def wait_disconnect(self) -> None:
        """Return once the client has gone away: HTTP/1.1, the connection ended (closed, reset);
        HTTP/2, the stream was reset or the connection ended. Call it once the request body was
        read to its end (it reads what comes next on the connection to notice the end, and gives
        back any byte of a next request). Cancel it when the response is done: after that the
        client going away no longer concerns this request."""
        raise NotImplementedError

    def _claim(self, status: int) -> None:
        if self.responded:
            raise StackError(f"{self!r}: a response was already sent ({self.status})")
        if not 100 <= status <= 599 or (100 <= status < 200 and status != 101):
            raise ValueError(f"bad response status {status}")
        self.responded = True
        self.status = status

    async def _respond(self, status: int, headers: Headers, body: bytes, deadline: float) -> None:
        raise NotImplementedError

    async def _start_response(self, status: int, headers: Headers, deadline: float) -> ByteStream:
        raise NotImplementedError

    async def _informational(self, status: int, headers: Headers, deadline: float) -> None:
        raise NotImplementedError


class BodyTrailers:
    """``trailers`` kept by the message's body stream (``body.trailers``), for a version whose body
    receives them (an HTTP/2 or HTTP/3 stream, the HTTP/1.1 request body): the message reads and
    sets them there, so the message and its body hold no reference cycle (one per request would
    make every request garbage for the cycle collector)."""

    def __get__(self, message: Any, owner: type | None = None) -> Headers:
        if message is None:  # on the class (introspection)
            return self  # type: ignore[return-value]
        trailers: Headers = message.body.trailers
        return trailers

    def __set__(self, message: Any, value: Headers) -> None:
        message.body.trailers = value


class TunnelRefused(StackError):
    """A CONNECT or an Upgrade got an answer other than the tunnel (not 2xx to CONNECT, not 101 to
    an Upgrade). ``response`` is that answer (its body may explain why; close it when done)."""

    def __init__(self, message: str, response: Response) -> None:
        super().__init__(message)
        self.response = response


class Response:
    """A response as the client sees it. Version modules subclass it.

    ``status`` (int), ``reason`` (str, empty in HTTP/2), ``headers``, ``http_version``,
    ``body`` (a :class:`~stack.ByteStream`; for a CONNECT tunnel it sends too), ``trailers``
    (a :class:`Headers`, filled once the body has ended; empty if none).
    ``async with response:`` closes it; closing before the body ended abandons the rest
    (HTTP/1.1 closes the connection unless the rest is small enough to drain; HTTP/2 resets
    the stream).
    """

    status: int
    reason: str
    headers: Headers
    http_version: str
    body: ByteStream

    def __init__(self, status: int, headers: Headers, http_version: str, body: ByteStream, reason: str = "") -> None:
        self.status = status
        self.headers = headers
        self.http_version = http_version
        self.body = body
        self.reason = reason
        self.trailers = Headers()

    def __repr__(self) -> str:
        return f"<Response {self.status} HTTP/{self.http_version}>"

    async def read(self, max_bytes: int = DEFAULT_LIMITS.max_body, *, deadline: float = FOREVER) -> bytes:
        """The whole body; :class:`~stack.MessageTooLarge` past ``max_bytes``."""
        return await _read_all(self.body, max_bytes, self.headers.get("content-length"), deadline)

    async def aclose(self) -> None:
        """Release the response (see the class docstring). Idempotent."""
        await self.body.aclose()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


App = Callable[[Request], Awaitable[None]]


class ServerConnection:
    """What both versions' server connections offer (a message stream of requests).

    ``await conn.recv(deadline=)`` returns the next :class:`Request` (raises
    :class:`~stack.EndOfStream` when the client is done); ``async for request in conn``;
    ``await conn.serve(app)`` runs ``app`` for every request (HTTP/1.1 one at a time, HTTP/2
    concurrently) until the connection ends, answering 500 for an app that raises or does not
    respond; ``info``; ``aclose()``; ``detach()`` where the version allows (HTTP/1.1 after an
    Upgrade or CONNECT).
    """

    http_version: str
    info: Info

    async def recv(self, *, deadline: float = FOREVER) -> Request:
        raise NotImplementedError

    async def serve(self, app: App) -> None:
        raise NotImplementedError

    async def aclose(self, *, deadline: float | None = None) -> None:
        raise NotImplementedError

    def __aiter__(self) -> ServerConnection:
        return self

    async def __anext__(self) -> Request:
        try:
            return await self.recv()
        except (EndOfStream, Closed):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> ServerConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ClientConnection:
    """What both versions' client connections offer.

    ``await conn.request(method, target, headers=, body=, deadline=)`` returns a
    :class:`Response` once its head has arrived (the body streams). ``body`` is bytes or an
    async iterable of bytes (streamed; chunked in HTTP/1.1 without a Content-Length). The
    deadline covers sending the request and receiving the head; pass deadlines to
    ``response.read`` / ``body.recv`` for the rest. Concurrent requests: HTTP/2 multiplexes,
    HTTP/1.1 queues them on the one connection. ``info``, ``http_version``, ``aclose()``.
    """

    http_version: str
    info: Info

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeaderInput = (),
        body: Body = None,
        deadline: float = FOREVER,
    ) -> Response:
        raise NotImplementedError

    async def open_tunnel(
        self, protocol: str, path: str, *, headers: HeaderInput = (), deadline: float = FOREVER
    ) -> Response:
        """Open a tunnel for ``protocol`` (``"websocket"``, ...) at ``path``, whatever the version:
        HTTP/1.1 sends ``GET path`` with ``Upgrade: protocol`` and ``Connection: Upgrade`` and
        wants 101; HTTP/2 sends an extended CONNECT with ``:protocol`` (RFC 8441) and wants 2xx.
        ``headers`` are added as given. Returns the response; its ``body`` is the tunnel, a
        :class:`~stack.ByteStream` both ways. Any other answer raises :class:`TunnelRefused`
        carrying the response (read its body for the reason, then close it). On deadline:
        :class:`~stack.Timeout`, nothing is left open.
        """
        raise NotImplementedError

    async def aclose(self, *, deadline: float | None = None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> ClientConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


REMEMBERED_FIELDS_MAX = 4096
"""The caches that remember a head by its fields (response heads built once per shape, request
heads checked once per connection or kept built by a client, a proxy's forwarded fields) take
only heads whose fields come to at most this many bytes: what a peer sends can be 64 KiB a head,
and a few hundred of those kept would be megabytes."""


def small_fields(fields: Iterable[Sequence[str | bytes]], extra: int = 0) -> bool:
    """Whether ``fields`` (and ``extra`` bytes more) fit :data:`REMEMBERED_FIELDS_MAX`: called
    when a cache misses, never on a hit."""
    size = extra
    for name, value in fields:
        size += len(name) + len(value)
    return size <= REMEMBERED_FIELDS_MAX


_K = TypeVar("_K")
_V = TypeVar("_V")


def remember(table: dict[_K, _V], key: _K, value: _V, limit: int) -> _V:
    """Store ``value`` under ``key`` in a cache of at most ``limit`` entries, all forgotten at once
    when it is full (a miss costs one ``clear`` in ``limit``, no eviction order is kept); returns
    ``value``. The policy of every cache on our request paths; called on a miss only."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value


_date_cache: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """The current time as an HTTP-date (for the Date header); formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def authority_of(info: Mapping[str, Any]) -> str:
    """The default Host / ``:authority`` for a connection: the TLS server name, else the peer address."""
    name = info.get("server_name")
    peer = info.get("peer")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), int(peer[1])
        host = name or (f"[{host}]" if ":" in host else host)
        return f"{host}:{port}"
    return name or "localhost"


def request_pseudo(
    method: str, scheme: str, authority: str, path: str, protocol: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The pseudo-header fields of an HTTP/2 or HTTP/3 request, in the order both send them:
    ``:method`` (ASCII, else ``UnicodeEncodeError``), ``:protocol`` for an extended CONNECT
    (RFC 8441 / RFC 9220), ``:scheme``, ``:authority`` and ``:path`` (latin-1)."""
    fields = [
        (b":method", method.encode("ascii")),
        (b":scheme", scheme.encode("ascii")),
        (b":authority", authority.encode("latin-1")),
        (b":path", path.encode("latin-1")),
    ]
    if protocol is not None:
        fields.insert(1, (b":protocol", protocol.encode("ascii")))
    return fields


def request_fields(
    method: str,
    target: str,
    headers: HeaderInput,
    scheme: str,
    authority: str,
    regular: Callable[[Headers], list[tuple[bytes, bytes]]],
) -> list[tuple[bytes, bytes]]:
    """The whole field list of an HTTP/2 or HTTP/3 request: :func:`request_pseudo` (the
    ``:authority`` is the ``host`` header if given, else ``authority``, the connection's), then
    ``regular(headers)`` (the version's check of the regular fields, which drops ``host``).
    The pseudo-fields are written out here rather than through :func:`request_pseudo`: this runs
    once per request, and one call is all it costs."""
    given = Headers(headers)
    fields = [
        (b":method", method.encode("ascii")),
        (b":scheme", scheme.encode("ascii")),
        (b":authority", (given.get("host") or authority).encode("latin-1")),
        (b":path", target.encode("latin-1")),
    ]
    fields += regular(given)
    return fields


_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")  # what HTTP/1.1 or HTTP/2 refuse
_WRITER_FIELDS = frozenset(
    [b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"date"]
)


def response_fields(headers: HeaderInput) -> tuple[tuple[bytes, bytes], ...]:
    """The ``response_headers`` option of the HTTP server specs as wire pairs (names lower-cased),
    made once per spec: fields every response of the server carries, added by the response
    writers after the application's own (``Alt-Svc``, ``Server``...). ValueError for a field the
    writers own (framing, connection management, ``Date``) or a pseudo-field."""
    raw = tuple(Headers(headers).raw)
    for name, value in raw:
        if name in _WRITER_FIELDS or name.startswith(b":"):
            raise ValueError(f"response_headers cannot hold {name.decode('latin-1')!r}: the response writers set it")
        if _FIELD_NAME.fullmatch(name) is None or _FIELD_VALUE_BAD.search(value) is not None:
            raise ValueError(f"response_headers: invalid field {name!r}: {value[:40]!r}")
    return raw
