"""``create_app``: the ASGI app serving the configured councils.

The councils (and their connection pools) open in the app's lifespan and close with it, so all
state lives on the app and two apps in one process never share anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from nsed.server.browse import BROWSE_ROUTES
from nsed.server.errors import ApiError
from nsed.server.metrics import ServerMetrics
from nsed.server.routes import ROUTES
from nsed.server.settings import ServerSettings
from nsed.server.state import Runtime
from nsed.server.webui import UI_ROUTES
from nsed.store import Store

log = logging.getLogger("nsed.server")


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    metrics: ServerMetrics = request.app.state.metrics
    metrics.errors.labels(str(exc.status)).inc()
    return exc.response()


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    return await _api_error_handler(request, ApiError(exc.status_code, message))


async def _unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()


def create_app(settings: ServerSettings) -> Starlette:
    """The ASGI app serving ``settings.councils``; state lives on the app, not in globals.

    Councils open their connection pools in the app's lifespan, so run it under a server that
    runs the lifespan (uvicorn does by default).
    """
    metrics = ServerMetrics()
    store = Store(settings.store_url) if settings.store_url else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(settings, metrics)
        runtime.store = store
        async with AsyncExitStack() as stack:
            for name, spec in settings.councils.items():
                council = spec.council(store)
                runtime.councils[name] = await stack.enter_async_context(council)
            app.state.runtime = runtime
            try:
                yield
            finally:
                app.state.runtime = None
        if store is not None:
            store.dispose()

    app = Starlette(
        routes=[*ROUTES, *BROWSE_ROUTES, *UI_ROUTES],
        exception_handlers={
            ApiError: _api_error_handler,
            HTTPException: _http_error_handler,
            Exception: _unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.created = int(time.time())
    app.state.runtime = None
    return app
