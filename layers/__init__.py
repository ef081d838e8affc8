"""Protocol layers for trio-stack. Each module has the same shape: specs with ``attach``
(or, for bottom layers, ``connect`` / ``listen``), and a stream class with send/recv, done, detach."""
