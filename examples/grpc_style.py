"""gRPC-style messages over one HTTP/2 stream: length-prefixed framing on a ByteStream.

An HTTP/2 stream is a ByteStream in both directions, so ``framing.prefix(4)`` (a 4-byte length,
then the message) stacks on it with no new code: that is the shape of gRPC's wire format (which
adds a 1-byte compression flag). The server answers ``POST /calc.Calculator/Sum`` with a head at
once (``start_response``) and then reads request messages and writes reply messages on the same
stream, interleaved, until the client ends its side; it finishes with trailers
(``grpc-status``). The client opens the request with ``start_request`` (its body is streamed),
sends numbers one message at a time and reads the running total after each: a full-duplex
exchange on one stream, while other requests could share the connection.

Run it: ``python examples/grpc_style.py``
"""

from __future__ import annotations

import trio

from layers import framing, http, tcp
from stack import Stack, after

HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


async def calculator(request: http.Request) -> None:
    if request.path != "/calc.Calculator/Sum":
        await request.respond(404, [], b"no such method\n")
        return
    stream = await request.start_response(200, [("content-type", "application/grpc")])
    messages = await framing.prefix(4).attach(stream)
    total = 0
    async for msg in messages:  # until the client's END_STREAM
        total += int(msg)
        await messages.send(str(total).encode(), deadline=after(5))
    await stream.done(trailers=[("grpc-status", "0"), ("grpc-message", "OK")])


async def main() -> None:
    async with trio.open_nursery() as nursery:
        (host, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(calculator)).serve)

        client = Stack(tcp.connect(host, port), http.client(prior_knowledge=True))
        async with await client.connect(deadline=after(5)) as conn:
            call = await conn.start_request("POST", "/calc.Calculator/Sum", headers=HEADERS, deadline=after(5))
            messages = await framing.prefix(4).attach(call)
            for n in (5, 10, 27):
                await messages.send(str(n).encode(), deadline=after(5))
                print(f"sent {n:>3}, running total {int(await messages.recv(deadline=after(5)))}")
            await call.done(deadline=after(5))  # END_STREAM: no more requests on this call
            response = await call.response(deadline=after(5))
            leftover = [msg async for msg in messages]
            assert response.status == 200 and not leftover
            print(f"status {response.status}, trailers {dict(response.trailers)}")
            assert response.trailers["grpc-status"] == "0"
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
