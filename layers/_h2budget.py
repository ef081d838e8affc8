"""The no-progress budget of an HTTP/2 connection: frames that give the application nothing.

A peer can keep a connection busy without ever asking for anything: PRIORITY, PING, SETTINGS,
WINDOW_UPDATE, empty DATA, unknown frame types, frames on closed streams (CVE-2019-9512, 9515,
9518 and their kin). Each costs h2 a few microseconds and the application nothing, so rate
limits per kind leave the others open. :class:`NoProgressBudget` (a base of
:class:`~layers._h2core.H2Core`) counts them all in one place:

* ``H2Core.receive_step`` hands every received frame's events to :meth:`~NoProgressBudget._count_frame`
  (the fast path for a request's HEADERS takes :data:`PROGRESS_CREDIT` off directly);
* a frame whose first event brings the application a head, non-empty DATA, trailers, a stream's
  end or a reset (:data:`_PROGRESS_EVENTS`) takes :data:`PROGRESS_CREDIT` off ``no_progress``;
* a WINDOW_UPDATE is free while DATA we sent pays for it (:data:`WINDOW_CREDIT` per DATA frame,
  ``H2Core.send_data`` and ``send_response`` bank them, at most ``no_progress_limit``);
* any other frame adds one. Past ``no_progress_limit`` the count first leaks (``no_progress_limit``
  per ``no_progress_period`` seconds since it last leaked: computed only then, so a burst after a
  long quiet spell gets at most about twice the limit); still past it, :class:`NoProgressFlood`
  ends the connection with GOAWAY ENHANCE_YOUR_CALM, the reason as debug data.

Sans-io like the core: the clock is ``time.monotonic``, read only when the count is over.
"""

from __future__ import annotations

import time
from typing import Any

import h2.exceptions
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

__all__ = ["PROGRESS_CREDIT", "WINDOW_CREDIT", "NoProgressBudget", "NoProgressFlood"]

PROGRESS_CREDIT = 16
"""No-progress frames a frame that gives the application something takes off the count
(:meth:`H2Core.receive_step`): a peer keeps its allowance as long as it sends at most this many
frames of nothing per request head, non-empty DATA, trailers or stream end."""

WINDOW_CREDIT = 2
"""WINDOW_UPDATE frames each DATA frame we send pays for (one for the stream, one for the
connection: a peer acknowledging every frame we send is honest); at most ``no_progress_limit``
are banked."""

_PROGRESS_EVENTS = frozenset(
    {
        RequestReceived,
        ResponseReceived,
        InformationalResponseReceived,
        TrailersReceived,
        StreamEnded,
        StreamReset,
        PushedStreamReceived,
    }
)
"""The first event of a frame that gives the application something (a head, trailers, an end;
a reset ends a stream the application holds, and resets are bounded on their own)."""


class NoProgressFlood(h2.exceptions.DenialOfServiceError):
    """The peer sent more frames that give the application nothing than its allowance
    (``no_progress_limit``): the connection ends with GOAWAY ENHANCE_YOUR_CALM, saying why."""


class NoProgressBudget:
    """The count and its accounting; :meth:`_budget_init` sets it up (the limit, the period)."""

    no_progress = 0
    """Frames that gave the application nothing, less the credits (see the module docstring)."""
    window_credit = 0
    """WINDOW_UPDATEs paid for by the DATA frames we sent."""

    def _budget_init(self, limit: int, period: float) -> None:
        self.no_progress = 0
        self.window_credit = 0
        self._np_limit = limit
        self._np_rate = limit / period if period > 0 else 0.0
        self._np_since = time.monotonic()

    def _count_frame(self, events: list[Any]) -> None:
        """Account for one received frame by the events it gave: a frame that gives the
        application nothing adds one to ``no_progress``, one that gives it something takes
        :data:`PROGRESS_CREDIT` off (see the module docstring)."""
        if events:
            first = events[0]
            kind = first.__class__
            if kind in _PROGRESS_EVENTS or (kind is DataReceived and (first.data or len(events) > 1)):
                if self.no_progress:
                    self.no_progress = max(0, self.no_progress - PROGRESS_CREDIT)
                return
            if kind is WindowUpdated and self.window_credit > 0:
                self.window_credit -= 1
                return
        self.no_progress += 1
        if self.no_progress > self._np_limit:
            self._over_budget()

    def _over_budget(self) -> None:
        """``no_progress`` passed the limit: first let it leak (``no_progress_limit`` per
        ``no_progress_period`` seconds since the last time it leaked), then, if it is still
        over, end the connection (ENHANCE_YOUR_CALM)."""
        now = time.monotonic()
        leaked = int((now - self._np_since) * self._np_rate)
        if leaked > 0:
            self._np_since = now
            self.no_progress = max(0, self.no_progress - leaked)
        if self.no_progress > self._np_limit:
            raise NoProgressFlood(
                f"no-progress flood: more than {self._np_limit} frames that carried nothing for the application "
                "(WINDOW_UPDATE, PRIORITY, PING, SETTINGS, empty DATA, frames on closed streams, ...)"
            )
