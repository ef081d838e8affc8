"""Reference peers: hand-written h11 / h2 servers on trio and a hypercorn ASGI app."""
