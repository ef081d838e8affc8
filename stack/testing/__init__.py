"""Public test kit: memory pairs, chaos wrappers, hypothesis strategies, conformance checks.

::

    from stack.testing import check_bytestream, check_detach, check_message_stream, chaos_pair, memory_pair

    async def make_pair():
        return chaos_pair()                  # fragmented by the schedule hypothesis draws

    async def test_my_layer():
        await check_bytestream(make_pair)

Importing this package registers the hypothesis profiles ``ci`` and ``dev`` (see
:mod:`stack.testing._settings`).
"""

from ._chaos import ChaosSchedule, ChaosStream, chaos, chaos_pair, current_schedule
from ._check_bytes import check_bytestream
from ._check_detach import check_detach
from ._check_messages import check_message_stream
from ._memory import MemoryStream, memory_pair
from ._runner import EXAMPLE_TIMEOUT
from ._settings import PROFILE_ENV, check_settings, register_profiles
from ._strategies import (
    CancelPoint,
    cancel_points,
    chaos_schedules,
    chunk_sizes,
    chunkings,
    deadline_schedules,
    messages,
    payloads,
)

__all__ = [
    "EXAMPLE_TIMEOUT",
    "PROFILE_ENV",
    "CancelPoint",
    "ChaosSchedule",
    "ChaosStream",
    "MemoryStream",
    "cancel_points",
    "chaos",
    "chaos_pair",
    "chaos_schedules",
    "check_bytestream",
    "check_detach",
    "check_message_stream",
    "check_settings",
    "chunk_sizes",
    "chunkings",
    "current_schedule",
    "deadline_schedules",
    "memory_pair",
    "messages",
    "payloads",
    "register_profiles",
]
