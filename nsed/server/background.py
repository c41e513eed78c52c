"""Serving the app: ``run_server`` (what ``nsed serve`` calls) and ``BackgroundServer``.

``BackgroundServer`` runs a real uvicorn in a daemon thread so tests, notebooks and benchmarks
can talk HTTP to a council in-process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from nsed.server.app import create_app
from nsed.server.settings import ServerSettings


def bind_listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening, non-blocking TCP socket for uvicorn's ``serve(sockets=[...])``.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY on accepted connections only when
    the listening socket says TCP; without it Nagle + delayed ACK add ~40 ms to every reply.
    Binding before serving also makes a port-0 server's port known at once.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class BackgroundServer:
    """``create_app(settings)`` under uvicorn in a daemon thread, on a free port by default.

    For tests, notebooks and benchmarks that want a real server in-process:
    ``with BackgroundServer(settings) as server: OpenAI(base_url=server.url, ...)``.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.app = create_app(settings)
        self._log_level = log_level
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The ``base_url`` for an OpenAI client (ends in ``/v1``)."""
        return f"{self.root}/v1"

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        import uvicorn

        sock = bind_listening_socket(self.host, self.port)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            backlog=1024,
        )
        self._server = uvicorn.Server(config)

        def serve() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start()
                self._error = exc

        self._thread = threading.Thread(target=serve, name=f"nsed-serve-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the nsed server did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(settings: ServerSettings) -> None:
    """Serve ``settings`` with uvicorn until interrupted (what ``nsed serve`` calls).

    uvicorn configures no logging of its own (``log_config=None``): its records go through
    the handler the caller set up for nsed's logger (``nsed.logs``), at the same level.
    """
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
