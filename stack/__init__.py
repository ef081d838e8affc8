"""trio-stack: composable protocol stacks on trio, with deadlines that lose nothing.

Everything a user of the core needs is importable from here; protocol layers live in the
``layers`` package (``layers.tcp``, ``layers.tls``, ``layers.framing``, ``layers.http`` ...).
docs/design.md is the contract and the map of the packages.
"""

from .compose import Stack, StackListener
from .deadlines import FOREVER, after, remaining
from .errors import Broken, Busy, Closed, EndOfStream, MessageTooLarge, ProtocolError, StackError, Timeout
from .passthrough import PassThrough
from .streams import ByteStream, Info, Listener, MessageStream, Stream, require
from .trio_bridge import from_trio, to_trio

__all__ = [
    "FOREVER",
    "Broken",
    "Busy",
    "ByteStream",
    "Closed",
    "EndOfStream",
    "Info",
    "Listener",
    "MessageStream",
    "MessageTooLarge",
    "PassThrough",
    "ProtocolError",
    "Stack",
    "StackError",
    "StackListener",
    "Stream",
    "Timeout",
    "after",
    "from_trio",
    "remaining",
    "require",
    "to_trio",
]

__version__ = "0.1.0"
