"""Shared test setup: the hypothesis profile (``HYPOTHESIS_PROFILE``: ``dev`` by default, ``ci`` in CI)."""

from __future__ import annotations

import os

from hypothesis import settings

import stack.testing  # registers the "ci" and "dev" profiles

settings.load_profile(os.environ.get(stack.testing.PROFILE_ENV, "dev"))
