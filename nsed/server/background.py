"""Serving the app: ``run_server`` (what ``nsed serve`` calls) and ``BackgroundServer``.

``BackgroundServer`` runs a real uvicorn in a daemon thread (:func:`nsed.serving.serve_in_thread`)
so tests, notebooks and benchmarks can talk HTTP to a council in-process.
"""

from __future__ import annotations

import logging

from nsed.server.app import create_app
from nsed.server.connections import AccessLogIdFilter, guarded_protocol
from nsed.server.settings import ServerSettings
from nsed.serving import ThreadedServer, serve_in_thread


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
        self._server: ThreadedServer | None = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The ``base_url`` for an OpenAI client (ends in ``/v1``)."""
        return f"{self.root}/v1"

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        self._server = serve_in_thread(
            self.app,
            host=self.host,
            port=self.port,
            name="nsed-serve",
            timeout_s=timeout_s,
            log_level=self._log_level,
            lifespan="on",
            timeout_graceful_shutdown=2,
            http=guarded_protocol(self.settings.header_timeout_s, self.settings.max_connections),
        )
        self.port = self._server.port
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.stop(timeout_s)
        self._server = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(settings: ServerSettings) -> None:
    """Serve ``settings`` with uvicorn until interrupted (what ``nsed serve`` calls).

    uvicorn configures no logging of its own (``log_config=None``): its records go through
    the handler the caller set up for nsed's logger (``nsed.logs``), at the same level; the
    access log shows trace routes without their run ids. Connections are guarded
    (:mod:`nsed.server.connections`): a header deadline and a connection cap.
    """
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(AccessLogIdFilter())
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=5,
        http=guarded_protocol(settings.header_timeout_s, settings.max_connections),
    )
