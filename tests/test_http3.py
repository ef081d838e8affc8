"""layers.http3: our client against our server (the Request/Response API of every version), one
app on HTTP/1.1, HTTP/2 and HTTP/3 at once, and interop with an independent peer both ways
(aioquic's own asyncio API and H3Connection, run in a subprocess: tests/_h3_peer.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _garbage import collected_only
from _peers import hypercorn
from _servers import running, serve_h3, serve_http

from layers import http, http3, quic, tcp, tls
from layers.certs import CA, Leaf
from stack import Broken, Stack, after

TIMEOUT = 15.0
PEER = str(Path(__file__).with_name("_h3_peer.py"))


async def app(request: http.Request) -> None:
    """/ -> which version; /echo -> the body back with a trailer; /stream?n -> n chunks and
    trailers; /boom -> raises; /forget -> returns without answering; /slow -> waits for ever."""
    path, query = request.path, request.query
    if path == "/echo":
        body = await request.read()
        out = await request.start_response(200, [("content-type", "application/octet-stream")])
        await out.send(body)
        await out.done(trailers=[("x-length", str(len(body)))])
    elif path == "/stream":
        out = await request.start_response(200, [("content-type", "text/plain")])
        for i in range(int(query or 3)):
            await out.send(b"chunk %d\n" % i)
        await out.done(trailers=[("x-checksum", "abc")])
    elif path == "/boom":
        raise RuntimeError("the app failed")
    elif path == "/forget":
        return
    elif path == "/slow":
        await trio.sleep_forever()
    else:
        text = f"hello over HTTP/{request.http_version} ({request.info['http_version']}) {request.method}"
        await request.respond(200, [("content-type", "text/plain")], text.encode())


@asynccontextmanager
async def h3_server(leaf: Leaf, **kw: object) -> AsyncIterator[int]:
    async with running(serve_h3(app, leaf, **kw)) as port:
        yield port


async def test_requests_responses_trailers_and_errors(ca: CA, leaf: Leaf) -> None:
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            response = await h3.request("GET", "/")
            assert response.status == 200 and response.http_version == "3"
            assert await response.read() == b"hello over HTTP/3 (3) GET"
            assert response.headers["content-length"] == "25" and "date" in response.headers
            assert response.body.info["http_version"] == "3"

            response = await h3.request("HEAD", "/")
            assert response.status == 200 and await response.read() == b""

            body = bytes(range(256)) * 1000
            response = await h3.request("POST", "/echo", body=body)
            assert await response.read() == body
            assert response.trailers.get("x-length") == str(len(body))

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(5):
                    yield b"part %d;" % i

            response = await h3.request("PUT", "/echo", body=chunks())
            assert await response.read() == b"part 0;part 1;part 2;part 3;part 4;"

            response = await h3.request("GET", "/stream?4")
            assert await response.read() == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
            assert response.trailers.get("x-checksum") == "abc"

            for path in ("/boom", "/forget"):
                response = await h3.request("GET", path)
                assert response.status == 500
                await response.read()


async def test_a_request_ended_with_its_headers_is_ended_when_the_app_gets_it(ca: CA, leaf: Leaf) -> None:
    """``request.body.ended`` (what the reverse proxy's bodiless path asks): True for a GET whose
    HEADERS carried the FIN, False for a POST whose body is still to be read, True once read."""
    seen: list[tuple[str, bool, bool]] = []

    async def app(request: http.Request) -> None:
        before = bool(getattr(request.body, "ended", None))
        while await request.body.recv():
            pass
        seen.append((request.method, before, bool(getattr(request.body, "ended", None))))
        await request.respond(204)

    with trio.fail_after(TIMEOUT):
        async with running(serve_h3(app, leaf)) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            for method, body in (("GET", None), ("POST", b"x" * 100_000)):
                response = await h3.request(method, "/", body=body)
                assert response.status == 204
                await response.read()
    assert seen[0] == ("GET", True, True)
    assert seen[1][0] == "POST" and seen[1][2] is True


async def test_concurrent_requests_and_an_abandoned_one(ca: CA, leaf: Leaf) -> None:
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            results: list[bytes] = []

            async def one(i: int) -> None:
                response = await h3.request("POST", "/echo", body=b"%d" % i * 1000)
                results.append(await response.read())

            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, i)
            assert sorted(results) == sorted(b"%d" % i * 1000 for i in range(30))

            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.3):
                    await h3.request("GET", "/slow")  # abandoned: its stream is reset
            response = await h3.request("GET", "/stream?2")  # the connection goes on
            async with response:
                assert await response.body.recv_exactly(8) == b"chunk 0\n"
            # closed early: the rest is abandoned, the connection still works
            response = await h3.request("GET", "/")
            assert (await response.read()).startswith(b"hello over HTTP/3")


async def test_one_app_serves_http1_http2_and_http3_on_one_port(ca: CA, leaf: Leaf) -> None:
    tcp_server = serve_http(app, tls.server(leaf, alpn=["h2", "http/1.1"]))
    with trio.fail_after(TIMEOUT):
        async with running(tcp_server) as port, running(serve_h3(app, leaf, port)):  # HTTP/3 on the same port
            seen = []
            for alpn in (["http/1.1"], ["h2"]):
                client = Stack(tcp.connect("127.0.0.1", port), tls.client(alpn=alpn, ca=ca), http.client())
                async with await client.connect(deadline=after(5)) as conn:
                    response = await conn.request("GET", "/")
                    seen.append(await response.read())
            async with http3.open_client("127.0.0.1", port, ca=ca) as h3:
                response = await h3.request("GET", "/")
                seen.append(await response.read())
            assert seen == [
                b"hello over HTTP/1.1 (1.1) GET",
                b"hello over HTTP/2 (2) GET",
                b"hello over HTTP/3 (3) GET",
            ]


async def test_graceful_shutdown_finishes_requests_in_flight(ca: CA, leaf: Leaf) -> None:
    shutdown = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf, shutdown=shutdown) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            response = await h3.request("GET", "/stream?1")
            shutdown.set()
            assert await response.read() == b"chunk 0\n"
            with trio.fail_after(5):
                await h3.quic.ended.wait()
            with pytest.raises(Broken):
                await h3.request("GET", "/")


# ------------------------------------------------------------------------ interop with aioquic


async def test_aioquic_client_against_our_server(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    cafile = ca.write(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT * 2):
        async with h3_server(leaf) as port:
            result = await trio.run_process(
                [sys.executable, PEER, "client", str(port), cafile], capture_stdout=True, capture_stderr=True
            )
    out = result.stdout.decode()
    assert "STATUS 200\nBODY b'hello over HTTP/3 (3) GET' 25\nTRAILERS None" in out, out
    assert "STATUS 200\nBODY b'xxxxxxxx" in out and " 100000\nTRAILERS [(b'x-length', b'100000')]" in out, out


async def test_our_client_against_aioquic_server(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    certfile, keyfile = leaf.write(tmp_path, "leaf")
    with trio.fail_after(TIMEOUT * 2):
        process = await trio.lowlevel.open_process(
            [sys.executable, PEER, "server", certfile, keyfile], stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(100)
            port = int(line.split()[1])
            async with http3.open_client("127.0.0.1", port, ca=ca, server_hostname="localhost") as h3:
                response = await h3.request("GET", "/where")
                assert response.status == 200 and response.http_version == "3"
                assert await response.read() == b"aioquic saw HTTP/3 /where"
                assert response.trailers.get("x-peer") == "aioquic"
                response = await h3.request("POST", "/echo", body=b"q" * 70_000)
                assert await response.read() == b"q" * 70_000
        finally:
            process.kill()
            await process.wait()


@pytest.mark.interop
async def test_our_client_against_hypercorn_http3(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    """hypercorn 0.18's trio worker (aioquic inside) with an echoing app, one request at a time:
    with several requests at once hypercorn loses a response's end now and then (the stream's
    FIN never comes until the idle timeout; aioquic's own client sees it too with 50 at once):
    we suspect its per-connection send and timer tasks (hypercorn/protocol/quic.py, send_all
    restarting the timer task) and did not chase it further."""
    certfile, keyfile = leaf.write(tmp_path, "leaf")
    with trio.fail_after(TIMEOUT * 3):
        async with (
            hypercorn(tmp_path, quic=(certfile, keyfile)) as port,
            http3.open_client("127.0.0.1", port, ca=ca, server_hostname="localhost") as h3,
        ):
            response = await h3.request("GET", "/")
            assert response.status == 200 and response.http_version == "3"
            assert await response.read() == b""
            body = bytes(range(256)) * 400
            response = await h3.request("POST", "/echo", body=body)
            assert response.status == 200 and await response.read() == body
            for i in range(5):
                response = await h3.request("PUT", "/", body=b"%d;" % i * 500)
                assert await response.read() == b"%d;" % i * 500
            response = await h3.request("GET", "/")
            assert response.status == 200 and await response.read() == b""


def test_quic_is_importable_without_the_cli() -> None:
    assert quic.QuicStream.kind == "quic-stream"


async def test_finished_requests_leave_no_cyclic_garbage(ca: CA, leaf: Leaf) -> None:
    """As over HTTP/1.1 and HTTP/2: a request and its stream are freed by reference counting
    once done (the trailers are the stream's)."""
    with trio.fail_after(TIMEOUT):
        async with h3_server(leaf) as port, http3.open_client("127.0.0.1", port, ca=ca) as h3:
            with collected_only() as garbage:
                for _ in range(3):
                    response = await h3.request("GET", "/")
                    assert await response.read() == b"hello over HTTP/3 (3) GET"
                    response = await h3.request("POST", "/echo", body=b"abc")
                    assert await response.read() == b"abc" and response.trailers.get("x-length") == "3"
                del response
                await trio.sleep(0.1)  # the server's side of the last stream ends
    assert "H3Request" not in {type(o).__name__ for o in garbage}
