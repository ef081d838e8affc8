"""httpx on trio-stack: ``httpx.AsyncClient(transport=StackTransport(...))``.

httpx keeps its API (URLs, redirects, cookies, ``client.stream``); our HTTP/1.1 and HTTP/2
clients carry the bytes. The program starts our server (TLS with ALPN ``h2`` and ``http/1.1``) on
127.0.0.1 with a throwaway CA, then uses httpx against it: a GET over HTTP/2, 20 concurrent GETs
multiplexed on that one connection, a streamed upload echoed back and streamed down, and the
same GET forced to HTTP/1.1.

Run it: ``python examples/httpx_client.py``
"""

from __future__ import annotations

import os
import tempfile

import httpx
import trio

from layers import http, tcp, tls
from layers.certs import CA
from layers.httpx_transport import StackTransport
from stack import Stack


async def app(request: http.Request) -> None:
    if request.path == "/echo":  # streams the request body back as it comes
        out = await request.start_response(200, [("content-type", "application/octet-stream")])
        while chunk := await request.body.recv():
            await out.send(chunk)
        await out.done()
    else:
        page = b"hello over HTTP/%s\n" % request.http_version.encode()
        await request.respond(200, [("content-type", "text/plain")], page)


async def main() -> None:
    ca = CA.new("httpx example CA")
    directory = tempfile.mkdtemp(prefix="httpx-example-")
    leaf = ca.issue("localhost", "127.0.0.1").write(directory, "localhost")
    cafile = ca.write(os.path.join(directory, "ca.pem"))
    server = Stack(tcp.listen("127.0.0.1", 0), tls.server(leaf, alpn=["h2", "http/1.1"]), http.server(app))
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        base = f"https://localhost:{port}"
        async with httpx.AsyncClient(transport=StackTransport(verify=cafile), timeout=10) as client:
            r = await client.get(base + "/")
            print(r.http_version, r.status_code, r.text.strip())

            async def get(i: int) -> None:
                assert (await client.get(f"{base}/?n={i}")).status_code == 200

            async with trio.open_nursery() as requests:
                for i in range(20):
                    requests.start_soon(get, i)
            print("20 concurrent GETs done on one HTTP/2 connection")

            async def upload():  # type: ignore[no-untyped-def]
                for i in range(5):
                    yield b"part %d\n" % i

            async with client.stream("POST", base + "/echo", content=upload()) as streamed:
                echoed = b"".join([chunk async for chunk in streamed.aiter_bytes()])
            print("echoed", echoed.count(b"\n"), "lines")
        async with httpx.AsyncClient(transport=StackTransport(verify=cafile, http2=False)) as client:
            r = await client.get(base + "/")
            print(r.http_version, r.status_code, r.text.strip())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
