"""A raw HTTP/2 server for tests that need a peer doing what ours never would.

Theory of operation: h2's ``H2Connection`` (server side, header validation of what it sends
optional) over one of our byte streams; each event h2 reports goes to the test's ``on_event``,
which may act on the core (send headers, data, trailers) and returns extra raw bytes to send after
what the core queued (a flood of hand-made frames). Ends when the peer closes or the stream fails.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

import stack

OnEvent = Callable[[h2.connection.H2Connection, h2.events.Event], bytes]


async def raw_h2_server(lower: stack.ByteStream, on_event: OnEvent, *, validate_outbound: bool = True) -> None:
    """Serve ``lower`` with h2, calling ``on_event(core, event)`` for each event (see above)."""
    config = h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_outbound_headers=validate_outbound
    )
    core = h2.connection.H2Connection(config)
    core.initiate_connection()
    await lower.send(core.data_to_send())
    while True:
        try:
            data = await lower.recv()
        except stack.StackError:
            return
        if not data:
            return
        extra = b"".join([on_event(core, ev) for ev in core.receive_data(data)])
        out = core.data_to_send() + extra
        if out:
            try:
                await lower.send(out)
            except stack.StackError:
                return
