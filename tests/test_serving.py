"""serve_in_thread: uvicorn in a daemon thread on a socket bound beforehand (the helper the
council server, the simulated endpoint and the scripted test server share)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from nsed.serving import bind_listening_socket, serve_in_thread


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-n", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def broken_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        return
    await hello(scope, receive, send)


def test_the_socket_says_tcp_and_nodelay():
    with bind_listening_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockname()[1] > 0 and not sock.getblocking()


def test_serves_until_stopped_then_frees_the_port():
    with serve_in_thread(hello, lifespan="off", name="test-http") as server:
        assert server.running and server.loop is not None
        reply = httpx.get(f"http://127.0.0.1:{server.port}/anything")
        assert (reply.status_code, reply.text, reply.headers["x-n"]) == (200, "hello", "1")
        port = server.port
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_server_that_cannot_start_says_why():
    with pytest.raises(RuntimeError, match=r"test-http on port \d+ did not start"):
        serve_in_thread(broken_lifespan, lifespan="on", name="test-http", timeout_s=5)
