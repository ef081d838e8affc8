"""Stack: a list of layer specs that can ``connect()``, ``listen()`` and ``serve()``.

A *spec* is a small immutable config object. The first spec of a stack is a *source* (a bottom
layer such as ``tcp.connect(host, port)`` or ``tcp.listen(host, port)``); every other spec has
``await spec.attach(lower, *, deadline=...)`` returning the stream it builds on ``lower``::

    client = Stack(tcp.connect("example.org", 443), tls.client(alpn=["h2"]), http.client())
    async with await client.connect(deadline=after(10)) as conn:
        ...

    server = Stack(tcp.listen("127.0.0.1", 8443), tls.server(certs), framing.prefix(4))
    await nursery.start(server.serve, handler)

Each spec attaches with the same deadline budget. On the server every accepted connection is
attached under a handshake deadline, so slow or silent peers are dropped, not held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import trio

from .deadlines import FOREVER
from .errors import Closed, StackError, Timeout
from .streams import ByteStream, Listener

__all__ = ["Connector", "Layer", "ListenSource", "Stack", "StackListener"]

log = logging.getLogger("stack.serve")

HANDSHAKE_TIMEOUT = 10.0
"""Default seconds an accepted connection has to complete every attach of a server stack."""


@runtime_checkable
class Layer(Protocol):
    """A spec that builds a stream on top of another: ``await spec.attach(lower, deadline=...)``."""

    async def attach(self, lower: Any, *, deadline: float = FOREVER) -> Any: ...


@runtime_checkable
class Connector(Protocol):
    """A bottom spec that opens an outgoing connection: ``await spec.connect(deadline=...)``."""

    async def connect(self, *, deadline: float = FOREVER) -> ByteStream: ...


@runtime_checkable
class ListenSource(Protocol):
    """A bottom spec that listens: ``await spec.listen()`` returns a :class:`Listener`."""

    async def listen(self) -> Listener: ...


Handler = Callable[[Any], Awaitable[None]]


async def _attach_all(stream: Any, layers: Sequence[Layer], deadline: float) -> Any:
    """Attach ``layers`` in order on ``stream``; on any failure close what was built and re-raise."""
    try:
        for layer in layers:
            stream = await layer.attach(stream, deadline=deadline)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose(deadline=trio.current_time() + 1.0)
        raise
    return stream


class Stack:
    """An ordered list of layer specs, bottom first. Immutable and reusable."""

    def __init__(self, source: Connector | ListenSource, *layers: Layer) -> None:
        for layer in layers:
            if not callable(getattr(layer, "attach", None)):
                raise TypeError(f"{layer!r} is not a layer spec (it has no attach())")
        self.source = source
        self.layers: tuple[Layer, ...] = layers

    def __repr__(self) -> str:
        return "Stack(" + ", ".join(repr(s) for s in (self.source, *self.layers)) + ")"

    async def connect(self, *, deadline: float = FOREVER) -> Any:
        """Open the source and attach every layer, all under ``deadline``; return the top stream.

        On failure every stream already built is closed and the error propagates
        (:class:`~stack.Timeout` if the deadline passed).
        """
        if not isinstance(self.source, Connector):
            raise TypeError(f"{self.source!r} cannot connect (it is not a connecting source)")
        bottom = await self.source.connect(deadline=deadline)
        return await _attach_all(bottom, self.layers, deadline)

    async def listen(self, *, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> StackListener:
        """Open the source's listener. ``accept()`` on the result returns fully attached streams."""
        if not isinstance(self.source, ListenSource):
            raise TypeError(f"{self.source!r} cannot listen (it is not a listening source)")
        return StackListener(await self.source.listen(), self.layers, handshake_timeout)

    async def serve(
        self,
        handler: Handler | None = None,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        shutdown: trio.Event | None = None,
        drain_timeout: float = 10.0,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections, one task per connection, in a nursery this call owns.

        Use it as ``await nursery.start(stack.serve, handler)``: ``start`` returns the list of
        bound addresses (so port 0 works). Each accepted connection's layers are attached under
        ``handshake_timeout`` seconds; a connection that fails or is too slow is logged and
        dropped. Then ``handler(top_stream)`` runs; if ``handler`` is None the top spec must
        have ``handle(stream)`` (for example ``http.server(app)``). The stream is closed when
        the handler returns or raises (a handler's exception is logged, never kills the server).

        Graceful stop: once ``shutdown`` is set, the listener closes and the connections already
        accepted get ``drain_timeout`` seconds to end on their own (a layer given the same
        event, such as ``http.server(app, shutdown=event)``, finishes what is in flight and
        closes); then they are cancelled and ``serve`` returns. Cancelling ``serve`` stops at
        once: listener closed, connection tasks cancelled, each stream closed (its graceful
        close bounded by a short grace period).
        """
        if handler is None:
            top = self.layers[-1] if self.layers else None
            handle = getattr(top, "handle", None)
            if handle is None:
                raise TypeError("serve() needs a handler, or a top spec with handle() (such as http.server)")
            handler = handle
        listener = await self.listen(handshake_timeout=handshake_timeout)
        async with listener, trio.open_nursery() as nursery:
            if shutdown is not None:
                nursery.start_soon(self._stop_on, shutdown, listener, nursery.cancel_scope, drain_timeout)
            task_status.started([listener.address])
            log.info("listening on %s", listener.address)
            while True:
                try:
                    raw = await listener.bottom.accept()
                except Closed:
                    return
                nursery.start_soon(self._serve_one, raw, handler, handshake_timeout)

    @staticmethod
    async def _stop_on(
        shutdown: trio.Event, listener: StackListener, scope: trio.CancelScope, drain_timeout: float
    ) -> None:
        await shutdown.wait()
        log.info("shutting down: no new connections, draining for up to %.1fs", drain_timeout)
        await listener.aclose()
        scope.deadline = min(scope.deadline, trio.current_time() + drain_timeout)

    async def _serve_one(self, raw: ByteStream, handler: Handler, handshake_timeout: float) -> None:
        try:
            stream = await _attach_all(raw, self.layers, trio.current_time() + handshake_timeout)
        except (StackError, OSError) as exc:  # _attach_all closed what it built
            what = "timed out" if isinstance(exc, Timeout) else f"failed: {exc}"
            log.info("handshake with %s %s", raw.info.get("peer"), what)
            return
        try:
            await handler(stream)
        except StackError as exc:
            log.debug("connection from %s ended: %s", raw.info.get("peer"), exc)
        except Exception:
            log.exception("handler failed for the connection from %s", raw.info.get("peer"))
        finally:
            # Shielded: the graceful close (close_notify, a flush) gets its grace period even when
            # the serve nursery is being cancelled (a handler that stops the server as it ends).
            with trio.CancelScope(shield=True):
                await stream.aclose(deadline=trio.current_time() + 2.0)


class StackListener:
    """A listener that returns fully attached streams from :meth:`accept`.

    A connection whose handshake fails or exceeds the handshake timeout is logged, closed and
    skipped; ``accept`` goes on waiting for the next one. Handshakes run one at a time here;
    a server that must not let one slow peer delay others uses :meth:`Stack.serve`.
    """

    def __init__(self, bottom: Listener, layers: Sequence[Layer], handshake_timeout: float) -> None:
        self.bottom = bottom
        self.layers = tuple(layers)
        self.handshake_timeout = handshake_timeout

    @property
    def address(self) -> Any:
        """Where the bottom listener is bound (``(host, port)`` for TCP, a path for Unix)."""
        return self.bottom.address

    async def accept(self, *, deadline: float = FOREVER) -> Any:
        """The next connection, with every layer attached. On deadline: :class:`Timeout`."""
        while True:
            raw = await self.bottom.accept(deadline=deadline)
            hs_deadline = min(deadline, trio.current_time() + self.handshake_timeout)
            try:
                return await _attach_all(raw, self.layers, hs_deadline)
            except (StackError, OSError) as exc:
                if isinstance(exc, Timeout) and deadline <= trio.current_time():
                    raise
                log.info("handshake with %s failed: %s", raw.info.get("peer"), exc)

    async def aclose(self) -> None:
        """Stop listening. Idempotent."""
        await self.bottom.aclose()

    async def __aenter__(self) -> StackListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
