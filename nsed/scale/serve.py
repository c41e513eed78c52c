"""``nsed serve --ray``: the OpenAI-compatible server behind Ray Serve, several replicas.

The server is a plain ASGI app (:func:`nsed.server.create_app`); Ray Serve builds it on each
replica (``serve.ingress`` with a builder) and runs its lifespan there, so every replica opens
its own councils and connection pools. A trace is kept in the memory of the replica that ran
it, so ``GET /v1/deliberations/{id}`` on another replica must read it from the store: serving
on Ray therefore always saves traces to the shared store (``--store`` is implied; use
PostgreSQL via ``NSED_DATABASE_URL`` when the replicas run on several machines).
"""

from __future__ import annotations

import signal
import time
from typing import Any

from nsed.errors import ConfigError
from nsed.scale.cluster import connect
from nsed.server import ServerSettings, create_app

APP_NAME = "nsed"
REPLICA_CPUS = 1.0


def deployment(settings: ServerSettings, replicas: int) -> Any:
    """The Ray Serve application: ``replicas`` copies of the app built from ``settings``."""
    from ray import serve

    if settings.store_url is None:
        raise ConfigError(
            "serving on Ray needs the shared store for trace lookups: pass --store "
            "(NSED_DATABASE_URL)"
        )

    def build() -> Any:
        return create_app(settings)

    class NsedServer:
        """One replica: the app's routes, served by Ray Serve's HTTP proxy."""

    ingress = serve.ingress(build)(NsedServer)
    return serve.deployment(
        name="nsed-server",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        max_ongoing_requests=settings.max_concurrent + settings.max_queue,
    )(ingress).bind()


def start(settings: ServerSettings, *, address: str = "auto", replicas: int = 2) -> None:
    """Deploy on the cluster at ``address``; Ray Serve's proxy listens on settings.host:port."""
    connect(address)
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(deployment(settings, replicas), name=APP_NAME, route_prefix="/")


def serve_on_ray(settings: ServerSettings, *, address: str = "auto", replicas: int = 2) -> None:
    """Deploy and serve until interrupted (Ctrl-C or SIGTERM), then take the deployment down."""
    from ray import serve

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    start(settings, address=address, replicas=replicas)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)


__all__ = ["deployment", "serve_on_ray", "start"]
