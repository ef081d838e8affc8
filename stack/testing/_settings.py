"""Hypothesis settings for the conformance checks, and the ``ci`` / ``dev`` profiles.

Importing :mod:`stack.testing` registers two hypothesis profiles (unless profiles of those names
exist already): ``ci`` (:data:`CI_EXAMPLES`, 120 examples per property) and ``dev`` (30). Both have no per-example
deadline (the checks bound every example with their own timeout) and no example database.
Hypothesis (6.131 and later) registers a ``ci`` profile of its own when it is imported
(derandomized, 100 examples); that one is not "already registered" by anyone here, so ours
replaces it: ``HYPOTHESIS_PROFILE=ci`` means this project's ``ci``.

The checks pick their settings in this order:

1. the ``settings=`` argument of the check;
2. the profile named by the environment variable ``HYPOTHESIS_PROFILE`` (``.ci/test`` sets
   ``ci``);
3. a profile loaded with ``settings.load_profile`` (other than hypothesis' ``default``);
4. ``dev``.

Whatever the source, ``deadline`` is turned off, the health checks that only say "this is slow
or big" are suppressed, and the ``explain`` phase (which traces code and cannot see the trio
thread the examples run in) is skipped.
"""

from __future__ import annotations

import os

import hypothesis._settings
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import InvalidArgument

__all__ = ["CI_EXAMPLES", "PROFILE_ENV", "check_settings", "register_profiles"]

CI_EXAMPLES = 120
"""Random examples per property in the ``ci`` profile. 200 until session 6; lowered to keep the
whole suite under CI's 25 minutes on 2 cores once the standard suites (h2spec, Autobahn), HTTP/3,
ASGI and the hardening tests joined it (the kit's properties are most of the suite's time)."""

PROFILE_ENV = "HYPOTHESIS_PROFILE"

_SUPPRESS = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
)


def _registered(name: str) -> bool:
    """Whether someone registered a profile ``name`` (hypothesis' own built-in ``ci`` does not count)."""
    try:
        profile = settings.get_profile(name)
    except InvalidArgument:
        return False
    return profile is not getattr(hypothesis._settings, name.upper(), None)


def register_profiles() -> None:
    """Register the ``ci`` and ``dev`` profiles (leaving alone profiles already registered)."""
    for name, examples in (("ci", CI_EXAMPLES), ("dev", 30)):
        if not _registered(name):
            settings.register_profile(
                name,
                settings.get_profile("default"),  # not the active one: in CI, hypothesis' own ci
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=_SUPPRESS,
            )


def _base() -> settings:
    name = os.environ.get(PROFILE_ENV)
    if name:
        try:
            return settings.get_profile(name)
        except InvalidArgument:
            raise InvalidArgument(f"{PROFILE_ENV}={name!r} names no registered hypothesis profile") from None
    if getattr(settings, "_current_profile", "default") not in (None, "default"):
        return settings()
    return settings.get_profile("dev")


def check_settings(explicit: settings | None = None, *, scale: float = 1.0, minimum: int = 5) -> settings:
    """The settings one property of a check runs with.

    ``scale`` multiplies ``max_examples`` (edge-case properties, whose examples vary less, run
    fewer), never below ``minimum``.
    """
    base = explicit if explicit is not None else _base()
    examples = max(minimum, round(base.max_examples * scale))
    return settings(
        base,
        max_examples=examples,
        deadline=None,
        suppress_health_check=tuple(set(base.suppress_health_check) | set(_SUPPRESS)),
        phases=tuple(p for p in base.phases if p is not Phase.explain),
    )


register_profiles()
