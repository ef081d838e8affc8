"""The two kinds of stream every layer speaks, and where to import them from.

:class:`ByteStream` (``stack/bytestream.py``) carries bytes; :class:`MessageStream`
(``stack/messagestream.py``) carries whole messages; both are a :class:`Stream`
(``stack/stream.py``: state, ``info``, ``done``, ``aclose``, ``detach``, and :func:`require`).
:class:`Listener` (here) is a source of accepted bottom streams. Every name is importable from
this module and from ``stack``; the contract they keep, and how to write a layer on them, is
docs/design.md.
"""

from __future__ import annotations

from typing import Any

from .bytestream import DEFAULT_RECV, ByteStream
from .deadlines import FOREVER
from .messagestream import MessageStream
from .stream import CLOSE_GRACE, Info, Stream, require

__all__ = ["CLOSE_GRACE", "DEFAULT_RECV", "ByteStream", "Info", "Listener", "MessageStream", "Stream", "require"]


class Listener:
    """A source of accepted bottom streams (what ``tcp.listen`` and ``unix.listen`` open).

    ``await accept(deadline=)`` returns the next connection; ``address`` is where it listens;
    ``aclose()`` stops listening (a task blocked in ``accept`` gets :class:`Closed`).
    """

    address: Any = None

    async def accept(self, *, deadline: float = FOREVER) -> ByteStream:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
