"""One HTTP/2 connection, 100 requests at once: the client multiplexes them as streams.

The server is a Stack (TCP, then ``http.server``, which recognises the HTTP/2 preface in
cleartext); its app takes a little time per request (a sleep), so the requests really are in
flight together. The client attaches with ``http.client(prior_knowledge=True)`` (cleartext
HTTP/2, no ALPN needed) and runs the reader task inside ``async with conn:``. A hundred tasks
then call ``conn.request`` on the one connection; the connection's single writer coalesces their
frames, and the server runs its app for each stream concurrently. The whole batch takes about one
app delay, not a hundred. A PING measures the round trip at the end.

Run it: ``python examples/h2_client_concurrency.py``
"""

from __future__ import annotations

import trio

from layers import http, tcp
from stack import Stack, after

REQUESTS = 100
DELAY = 0.2  # seconds the app takes per request


async def app(request: http.Request) -> None:
    await trio.sleep(DELAY)
    await request.respond(200, [("content-type", "text/plain")], f"answer to {request.path}".encode())


async def main() -> None:
    async with trio.open_nursery() as nursery:
        (host, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)

        client = Stack(tcp.connect(host, port), http.client(prior_knowledge=True))
        async with await client.connect(deadline=after(5)) as conn:
            print(f"connected: HTTP/{conn.http_version}")
            answers: dict[int, str] = {}

            async def one(i: int) -> None:
                response = await conn.request("GET", f"/item/{i}", deadline=after(10))
                assert response.status == 200 and response.http_version == "2"
                answers[i] = (await response.read(deadline=after(10))).decode()

            start = trio.current_time()
            async with trio.open_nursery() as requests:
                for i in range(REQUESTS):
                    requests.start_soon(one, i)
            took = trio.current_time() - start

            assert answers == {i: f"answer to /item/{i}" for i in range(REQUESTS)}
            print(f"{REQUESTS} requests on one connection in {took:.2f}s (each takes {DELAY}s on the server)")
            assert took < DELAY * 10, "the requests did not run concurrently"
            print(f"PING round trip: {await conn.ping(deadline=after(5)) * 1000:.2f} ms")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
