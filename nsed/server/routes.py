"""The HTTP endpoints: models, chat completions, stored traces, health and metrics.

``/health`` and ``/metrics`` are open (load balancers and scrapers carry no key); everything
under ``/v1`` needs a bearer key when keys are configured.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nsed.council import Council, validate_question
from nsed.errors import ConfigError, StoreError
from nsed.server.errors import ApiError
from nsed.server.limits import authorize, check_request_limits, may_read, read_body
from nsed.server.metrics import ServerMetrics
from nsed.server.protocol import parse_request
from nsed.server.response import DeliberationResponse
from nsed.server.settings import MODEL_PREFIX
from nsed.server.state import Job, Runtime
from nsed.server.translate import (
    apply_sampling,
    build_step_format,
    build_task,
    deliberation_config,
)

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _runtime(request: Request) -> Runtime:
    """The app's runtime; 503 outside the lifespan (no councils are open then)."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "the server is starting or stopping; retry shortly", code="unavailable")
    return runtime


def _council_for(runtime: Runtime, model: str) -> tuple[str, Council]:
    name = model.removeprefix(MODEL_PREFIX) if model.startswith(MODEL_PREFIX) else None
    if name is None or name not in runtime.councils:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; available: "
            + ", ".join(runtime.settings.model_ids()),
            code="model_not_found",
            param="model",
        )
    return name, runtime.councils[name]


async def _health(request: Request) -> Response:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"status": "starting"}, 503)
    return JSONResponse(
        {
            "status": "ok",
            "models": runtime.settings.model_ids(),
            "in_flight": runtime.admission.running,
            "queued": runtime.admission.waiting,
        }
    )


async def _metrics(request: Request) -> Response:
    metrics: ServerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "nsed"}


async def _list_models(request: Request) -> Response:
    runtime = _runtime(request)
    authorize(request, runtime.settings)
    created = request.app.state.created
    return JSONResponse(
        {"object": "list", "data": [_model_card(m, created) for m in runtime.settings.model_ids()]}
    )


async def _get_model(request: Request) -> Response:
    runtime = _runtime(request)
    authorize(request, runtime.settings)
    model = request.path_params["model"]
    _council_for(runtime, model)
    return JSONResponse(_model_card(model, request.app.state.created))


async def _get_deliberation(request: Request) -> Response:
    runtime = _runtime(request)
    caller = authorize(request, runtime.settings)
    run_id = request.path_params["run_id"]
    found = runtime.recent.get(run_id) if _RUN_ID_RE.match(run_id) else None
    if found is None and runtime.store is not None and _RUN_ID_RE.match(run_id):
        try:
            found = await anyio.to_thread.run_sync(runtime.store.load_owned_deliberation, run_id)
        except StoreError as exc:
            raise ApiError(500, f"cannot read the store: {exc}", code="store_error") from None
    # Another key's trace is answered exactly like an unknown one: its existence is not told.
    result = found[0] if found is not None and may_read(caller, found[1]) else None
    if result is None:
        raise ApiError(
            404,
            f"no deliberation {run_id!r}: it is unknown, or older than the last "
            f"{runtime.settings.keep_deliberations} kept in memory",
            code="deliberation_not_found",
        )
    return Response(result.model_dump_json(), media_type="application/json")


async def _chat_completions(request: Request) -> Response:
    runtime = _runtime(request)
    caller = authorize(request, runtime.settings)
    settings = runtime.settings
    try:
        raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    except ClientDisconnect:
        return Response(status_code=400)
    req = parse_request(raw)
    check_request_limits(req, settings)
    name, council = _council_for(runtime, req.model)
    question, system_context = build_task(req.messages)
    step = build_step_format(req)
    config = deliberation_config(council.config, req, system_context)
    try:
        question = validate_question(question, config)
    except ConfigError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    runner = apply_sampling(
        council, config, temperature=req.temperature, top_p=req.top_p, max_tokens=req.token_cap()
    )
    return DeliberationResponse(
        runtime,
        Job(
            run_id=uuid.uuid4().hex,
            council_name=name,
            model=req.model,
            council=runner,
            question=question,
            config=config,
            request=req,
            step=step,
            owner=caller.key_id,
        ),
    )


ROUTES = [
    Route("/health", _health, methods=["GET"]),
    Route("/metrics", _metrics, methods=["GET"]),
    Route("/v1/models", _list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", _get_model, methods=["GET"]),
    Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
    Route("/v1/deliberations/{run_id}", _get_deliberation, methods=["GET"]),
]
