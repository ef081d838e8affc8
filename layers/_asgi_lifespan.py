"""The ASGI ``lifespan`` protocol: startup before serving, shutdown after, and the state between.

Theory of operation. :func:`run_lifespan` is an async context manager. It starts the app once
with a ``lifespan`` scope in a task of its own nursery and sends ``lifespan.startup``; the
block runs once the app answered ``lifespan.startup.complete`` and gets the scope's ``state``
dict (what the app put there; each request's scope gets a shallow copy). On leaving the block it
sends ``lifespan.shutdown`` and waits (up to ``grace`` seconds) for
``lifespan.shutdown.complete``. An app that answers ``lifespan.startup.failed`` (or raises
before answering, after having received the startup event, or does not answer within
``grace``) stops everything with :class:`LifespanFailure`, carrying the app's message. An app
that raises at once, or returns, without receiving anything does not support lifespan: logged
at debug, the block runs with ``state`` ``None`` (no state in the scopes), and nothing is sent
at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from layers._asgi_scope import ASGI_VERSION
from stack.errors import StackError

__all__ = ["LifespanFailure", "run_lifespan"]

log = logging.getLogger("stack.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApplication = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application: ``async def app(scope, receive, send)``."""


class LifespanFailure(StackError):
    """The app's lifespan startup (or shutdown) failed; the message is the app's."""


class _Lifespan:
    def __init__(self) -> None:
        self.to_app: trio.MemorySendChannel[dict[str, Any]]
        self.to_app, self.from_server = trio.open_memory_channel[dict[str, Any]](1)
        self.answers: trio.MemorySendChannel[dict[str, Any]]
        self.answers, self.from_app = trio.open_memory_channel[dict[str, Any]](1)
        self.received = False  # the app asked for an event: it speaks lifespan
        self.ended = trio.Event()
        self.error: BaseException | None = None

    async def receive(self) -> dict[str, Any]:
        self.received = True
        return await self.from_server.receive()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type", "")
        if not kind.startswith("lifespan."):  # an app that ignored the scope's type
            raise RuntimeError(f"ASGI: {kind!r} sent on a lifespan scope")
        await self.answers.send(message)

    async def run(self, app: ASGIApplication, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            self.error = exc
            if self.received:
                log.error("ASGI lifespan: the app failed", exc_info=exc)
            else:
                log.debug("ASGI lifespan not supported by the app: %r", exc)
        finally:
            self.ended.set()
            self.answers.close()

    async def ask(self, event: str, grace: float) -> dict[str, Any] | None:
        """Send ``event``; the app's answer, or None if the app ended without one."""
        with trio.move_on_after(grace) as scope:
            await self.to_app.send({"type": event})
            try:
                return await self.from_app.receive()
            except trio.EndOfChannel:
                return None
        if scope.cancelled_caught:
            raise LifespanFailure(f"ASGI lifespan: no answer to {event} within {grace:g}s")
        return None  # pragma: no cover - unreachable


@asynccontextmanager
async def run_lifespan(app: ASGIApplication, *, grace: float = 60.0) -> AsyncIterator[dict[str, Any] | None]:
    """Run the app's lifespan around the block (see the module docstring); yields the state.
    :class:`LifespanFailure` is raised outside the lifespan's nursery (not in an exception group)."""
    lifespan = _Lifespan()
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": state}
    failure: str | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifespan.run, app, scope, name="asgi lifespan")
        try:
            answer = await lifespan.ask("lifespan.startup", grace)
        except LifespanFailure as exc:
            answer, failure = None, str(exc)
        if answer is None:
            if lifespan.received and failure is None:
                failure = f"ASGI lifespan startup failed: {lifespan.error!r}"
            if failure is None:
                yield None  # the app does not speak lifespan
        elif answer["type"] == "lifespan.startup.failed":
            failure = f"ASGI lifespan startup failed: {answer.get('message') or 'no message'}"
        elif answer["type"] != "lifespan.startup.complete":
            failure = f"ASGI lifespan: unexpected answer to startup: {answer['type']!r}"
        else:
            try:
                yield state
            finally:
                with trio.CancelScope(shield=True):
                    await _shut_down(lifespan, grace)
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise LifespanFailure(failure)


async def _shut_down(lifespan: _Lifespan, grace: float) -> None:
    try:
        answer = await lifespan.ask("lifespan.shutdown", grace)
    except LifespanFailure as exc:
        log.error("%s", exc)
        return
    if answer is not None and answer["type"] == "lifespan.shutdown.failed":
        log.error("ASGI lifespan shutdown failed: %s", answer.get("message") or "no message")
    with trio.move_on_after(grace):
        await lifespan.ended.wait()
