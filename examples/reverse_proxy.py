"""A reverse proxy inside a trio program: :class:`layers.reverse_proxy.ProxyApp` in our own server.

A backend (an HTTP/1.1 app of ours) listens on one port; the proxy listens on another and forwards
every request to it through a pool of kept-alive connections, adding ``Via`` and ``Forwarded``
and dropping hop-by-hop fields. An HTTP/2 client (cleartext, prior knowledge) asks the proxy; the
backend answers with what it saw.
"""

from __future__ import annotations

import trio

from layers import http, reverse_proxy, tcp
from stack import Stack, after


async def backend(request: http.Request) -> None:
    body = await request.read()
    seen = "".join(f"  {name}: {value}\n" for name, value in request.headers if name in ("host", "via", "forwarded"))
    text = f"backend got {request.method} {request.target} (HTTP/{request.http_version}, {len(body)} bytes)\n{seen}"
    await request.respond(200, [("content-type", "text/plain")], text.encode())


async def main() -> None:
    async with trio.open_nursery() as nursery:
        (_, backend_port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(backend)).serve)

        # the proxy: a pool of connections to the backend, the app, a server around it
        pool = reverse_proxy.BackendPool(reverse_proxy.Upstream.parse(f"http://127.0.0.1:{backend_port}").stack())
        nursery.start_soon(pool.run)  # closes backend connections left idle too long
        app = reverse_proxy.ProxyApp(pool, timeout=10)
        (host, port), *_ = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(app)).serve)
        print(f"proxy on {host}:{port} -> backend on 127.0.0.1:{backend_port}")

        client = Stack(tcp.connect(host, port), http.client(prior_knowledge=True))  # HTTP/2 to the proxy
        async with await client.connect(deadline=after(5)) as conn:
            for method, path, body in [("GET", "/", None), ("POST", "/form", b"name=trio"), ("GET", "/again", None)]:
                response = await conn.request(method, path, body=body, deadline=after(5))
                print(response.status, "via", response.headers["via"])
                print((await response.read(deadline=after(5))).decode(), end="")
                assert response.status == 200
        assert pool.open == 1, "the three requests went over one kept-alive backend connection"
        await pool.aclose()
        nursery.cancel_scope.cancel()  # stop both servers: the example is over


if __name__ == "__main__":
    trio.run(main)
