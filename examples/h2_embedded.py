"""An HTTP/2 server embedded in a trio program, beside the program's other tasks.

The program already does its own work: a *sensor* task updates a reading every 20 ms and a
*worker* task takes jobs from a memory channel. The HTTP/2 server (TCP + TLS with ALPN ``h2`` +
HTTP) is one more task in the same nursery, and its handlers talk to the others through
ordinary trio objects: they read the shared reading, put jobs on the channel, wait on events, and
stream ticks as the sensor makes them. Nothing blocks anything else: each HTTP/2 stream is a
task of the server connection, so a slow streamed response does not hold up other requests.

A client (our HTTP/2 client, over one TLS connection) makes its requests concurrently, then the
program stops *gracefully*: one event tells the server to stop accepting, send GOAWAY and let the
requests in flight finish; the sensor and the worker stop when asked too, and the nursery closes
with nothing cancelled.

Run it: ``python examples/h2_embedded.py``
"""

from __future__ import annotations

import functools
import itertools

import trio

from layers import http, tcp, tls
from layers.certs import CA
from stack import Stack, after

ca = CA.new("embedded example CA")
LEAF = ca.issue("localhost", "127.0.0.1")


class App:
    """The program's state, shared by its tasks and by the HTTP handlers."""

    def __init__(self) -> None:
        self.reading = 0
        self.tick = trio.Event()  # set (and replaced) at every new reading
        self.jobs_in, self.jobs_out = trio.open_memory_channel[tuple[int, bytes]](16)
        self.done: dict[int, trio.Event] = {}
        self.results: dict[int, str] = {}
        self.ids = itertools.count(1)
        self.stop = trio.Event()

    async def sensor(self) -> None:
        while not self.stop.is_set():
            await trio.sleep(0.02)
            self.reading += 1
            self.tick.set()
            self.tick = trio.Event()

    async def worker(self) -> None:
        async with self.jobs_out:
            async for job_id, payload in self.jobs_out:
                await trio.sleep(0.01)  # the work
                self.results[job_id] = payload.decode()[::-1]
                self.done[job_id].set()

    async def handle(self, request: http.Request) -> None:
        """The HTTP app: one call per request, each in its own task."""
        if request.path == "/reading":
            await request.respond(200, [("content-type", "text/plain")], f"{self.reading}\n".encode())
        elif request.path == "/jobs" and request.method == "POST":
            job_id = next(self.ids)
            self.done[job_id] = trio.Event()
            await self.jobs_in.send((job_id, await request.read()))
            await self.done[job_id].wait()  # this stream waits; the others go on
            text = f"job {job_id}: {self.results[job_id]}\n"
            await request.respond(200, [("content-type", "text/plain")], text.encode())
        elif request.path == "/ticks":
            body = await request.start_response(200, [("content-type", "text/plain")])
            for _ in range(5):
                await self.tick.wait()
                await body.send(f"tick {self.reading}\n".encode())
            await body.done()
        else:
            await request.respond(404, [], b"not found\n")


async def client(host: str, port: int) -> None:
    stack = Stack(tcp.connect(host, port), tls.client(server_hostname="localhost", ca=ca, alpn=["h2"]), http.client())
    async with await stack.connect(deadline=after(5)) as conn:
        print(f"client: HTTP/{conn.http_version} over {conn.info['tls_version']}")

        async def get(method: str, path: str, body: bytes | None = None) -> None:
            response = await conn.request(method, path, body=body, deadline=after(5))
            text = (await response.read(deadline=after(5))).decode().strip().replace("\n", " | ")
            print(f"  {method} {path} -> {response.status}: {text}")
            assert response.status == 200

        async with trio.open_nursery() as nursery:  # all on one connection, at once
            nursery.start_soon(get, "GET", "/ticks")
            for word in (b"stressed", b"drawer", b"reward"):
                nursery.start_soon(get, "POST", "/jobs", word)
            nursery.start_soon(get, "GET", "/reading")


async def main() -> None:
    app = App()
    shutdown = trio.Event()
    server = Stack(
        tcp.listen("127.0.0.1", 0), tls.server(LEAF, alpn=["h2"]), http.server(app.handle, shutdown=shutdown)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.sensor)
        nursery.start_soon(app.worker)
        (host, port), *_ = await nursery.start(functools.partial(server.serve, shutdown=shutdown, drain_timeout=5))
        print(f"server: HTTP/2 on {host}:{port}, beside a sensor and a worker")
        await client(host, port)
        print(f"stopping: the sensor reads {app.reading}")
        shutdown.set()  # the server drains and serve() returns
        app.stop.set()  # the sensor ends
        await app.jobs_in.aclose()  # the worker ends
    print("all tasks ended: nothing was cancelled")


if __name__ == "__main__":
    trio.run(main)
