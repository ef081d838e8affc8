"""An HTTP GET through a SOCKS5 proxy: ``tcp`` to the proxy, ``socks5`` to the target, ``http`` on top.

The story: the only way out is a SOCKS5 proxy (Dante, ``ssh -D``, Tor...). The client stack is
three layers: ``tcp.connect`` reaches the proxy, ``socks5.connect(host, port)`` asks the proxy
to connect to the target (by name: the proxy resolves it) and hands up a ByteStream that is the
target's, and ``http.client()`` speaks HTTP/1.1 over it. ``info`` tells both sides of the story:
the target (``peer``) and the proxy (``socks_proxy``), and the address the proxy connected from
(``socks_bound``).

Without a URL the program first starts a small HTTP server of its own on 127.0.0.1 and fetches
its page through the proxy, checking every byte (what CI runs, with a Dante it starts)::

    python examples/socks5_get.py 127.0.0.1:1080                        # the built-in page
    python examples/socks5_get.py 127.0.0.1:1080 http://example.org/    # any http:// URL
    python examples/socks5_get.py 127.0.0.1:1080 --user alice --password secret

It exits 0 on a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse

import trio

from layers import http, socks5, tcp
from stack import Stack, after

PAGE = b"<h1>reached through SOCKS5</h1>\n" + b"0123456789abcdef" * 4096


async def page(request: http.Request) -> None:
    await request.respond(200, [("content-type", "text/html")], PAGE)


async def get(proxy: tuple[str, int], url: str, user: str | None, password: str | None) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"only http:// URLs here, not {url!r}")
    target = socks5.connect(parts.hostname, parts.port or 80, username=user, password=password)
    client = Stack(tcp.connect(*proxy), target, http.client())
    async with await client.connect(deadline=after(15)) as conn:
        info = conn.info
        print(f"connected to {info['peer']} through {info['socks_proxy']} (bound {info['socks_bound']})")
        response = await conn.request("GET", parts.path or "/", deadline=after(30))
        body = await response.read(deadline=after(30))
    print(f"{response.status}, {len(body)} bytes")
    return response.status, body


async def main(args: argparse.Namespace) -> int:
    host, _, port = args.proxy.rpartition(":")
    proxy = (host.strip("[]") or "127.0.0.1", int(port))
    if args.url:
        status, _ = await get(proxy, args.url, args.user, args.password)
        return 0 if 200 <= status < 300 else 1
    async with trio.open_nursery() as nursery:
        [(local, local_port)] = await nursery.start(Stack(tcp.listen("127.0.0.1", 0), http.server(page)).serve)
        status, body = await get(proxy, f"http://{local}:{local_port}/", args.user, args.password)
        assert status == 200 and body == PAGE, "the page differs from what the server sent"
        print("every byte arrived as the server sent it")
        nursery.cancel_scope.cancel()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("proxy", metavar="HOST:PORT", help="the SOCKS5 proxy")
    parser.add_argument("url", nargs="?", help="an http:// URL (default: a page this program serves itself)")
    parser.add_argument("--user", help="username (RFC 1929), with --password")
    parser.add_argument("--password", help="password of --user")
    sys.exit(trio.run(main, parser.parse_args()))
