"""What only the cycle collector frees: for the tests that no request leaves a reference cycle.

    with collected_only() as garbage:
        ...  # serve and read some requests
    assert not {type(o).__name__ for o in garbage} & {"Request", ...}

Inside the block the collector is off and saves what it finds (``gc.DEBUG_SAVEALL``); on exit it
runs once and ``garbage`` gets those objects, which reference counting alone did not free (each
would cost a collection every few hundred requests on a server). The collector is restored after.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def collected_only() -> Iterator[list[Any]]:
    garbage: list[Any] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield garbage
        gc.collect()
        garbage.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
