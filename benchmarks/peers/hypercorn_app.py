"""The ASGI app hypercorn serves in the benchmarks: the shared one in :mod:`benchmarks.peers.asgi_app`.

    hypercorn --worker-class trio --workers 0 --bind 127.0.0.1:8080 benchmarks.peers.hypercorn_app:app

Kept under this name so the hypercorn command lines stay as they are; uvicorn and granian load
``benchmarks.peers.asgi_app:app``, the very same function.
"""

from __future__ import annotations

from benchmarks.peers.asgi_app import app

__all__ = ["app"]
