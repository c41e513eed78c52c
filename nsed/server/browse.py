"""The JSON the web page reads beside the chat API: councils, stored runs, benchmark reports.

``GET /v1/councils`` (who sits on each served council and its default rounds),
``GET /v1/deliberations`` (the runs this server remembers or stored, newest first),
``GET /v1/bench/runs`` and ``GET /v1/bench/runs/{id}`` (a benchmark run's report, the fitted
U(t) curve and every problem's answers). Same bearer auth as the rest of ``/v1``.

Why here and not in the page: the statistics come from :mod:`nsed.benchmarks.reports`, the
same code as ``nsed runs show`` and ``nsed runs plot``, so the page draws numbers it never
recomputes. Which traces a key may list is decided in one function, :func:`readable`, by the
server's one ownership rule (:func:`nsed.server.limits.may_read`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nsed.errors import ConfigError, StoreError
from nsed.server.errors import ApiError
from nsed.server.limits import Caller, authorize, may_read
from nsed.server.routes import _runtime
from nsed.server.settings import MODEL_PREFIX
from nsed.server.state import Runtime
from nsed.store import DeliberationSummary, Store

MAX_LIMIT = 500
MAX_OFFSET = 10_000  # the list merges memory and store runs by reading offset + limit rows
T = TypeVar("T")


def _authorized(request: Request) -> Runtime:
    runtime = _runtime(request)
    authorize(request, runtime.settings)
    return runtime


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}", param=name)
    return value


async def _read_store(runtime: Runtime, read: Callable[[Store], T]) -> T:
    """``read(store)`` in a worker thread; a database error is a 500 that says so."""
    store = runtime.store
    assert store is not None
    try:
        return await anyio.to_thread.run_sync(read, store)
    except StoreError as exc:
        raise ApiError(500, f"cannot read the store: {exc}", code="store_error") from None


def _json(payload: Any) -> Response:
    if isinstance(payload, BaseModel):
        return Response(payload.model_dump_json(), media_type="application/json")
    return JSONResponse(payload)


def _started(summary: DeliberationSummary) -> datetime:
    """When it started, comparable whether the database kept the time zone or not (UTC)."""
    when = summary.created_at
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def readable(caller: Caller, summaries: list[DeliberationSummary]) -> list[DeliberationSummary]:
    """The deliberations the caller's key may read, exactly as ``GET /v1/deliberations/{id}``
    decides: its own, or all for an admin key (or with auth off). The one place a per-key rule
    applies to lists."""
    return [s for s in summaries if may_read(caller, s.owner)]


async def _councils(request: Request) -> Response:
    runtime = _authorized(request)
    out = []
    for name, spec in runtime.settings.councils.items():
        agents = (
            [
                {"name": a.name, "model": a.spec.model, "persona": a.persona}
                for a in spec.team.agents()
            ]
            if spec.team is not None
            else []
        )
        out.append(
            {
                "id": MODEL_PREFIX + name,
                "source": "team" if spec.team is not None else "catalog",
                "agents": agents,
                "kind": spec.config.kind,
                "max_rounds": spec.config.max_rounds,
                "min_rounds": spec.config.min_rounds,
            }
        )
    return _json({"object": "list", "data": out, "store": runtime.store is not None})


async def _deliberations(request: Request) -> Response:
    runtime = _runtime(request)
    caller = authorize(request, runtime.settings)
    limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    # The runs kept in memory are listed first so a server without a store still shows them.
    found = {
        r.id: DeliberationSummary.of(r, owner) for r, owner in reversed(runtime.recent.values())
    }
    if runtime.store is not None:
        mine = None if caller.admin else caller.key_id  # the store filters, so pages stay full
        stored = await _read_store(
            runtime, lambda s: s.list_deliberations(offset + limit, 0, owned_by=mine)
        )
        for summary in stored:
            found.setdefault(summary.id, summary)
    ordered = sorted(found.values(), key=_started, reverse=True)
    page = readable(caller, ordered)[offset : offset + limit]
    return _json(
        {
            "object": "list",
            "data": [s.model_dump(mode="json") for s in page],
            "store": runtime.store is not None,
        }
    )


def _no_store() -> ApiError:
    return ApiError(
        404,
        "this server keeps no store, so it has no benchmark runs: start it with `nsed ui` "
        "or `nsed serve --store`",
        code="no_store",
    )


async def _bench_runs(request: Request) -> Response:
    from nsed.benchmarks.reports import list_runs

    runtime = _authorized(request)
    if runtime.store is None:
        return _json({"object": "list", "data": [], "store": False})
    runs = await _read_store(runtime, list_runs)
    return _json(
        {"object": "list", "data": [r.model_dump(mode="json") for r in runs], "store": True}
    )


class BenchRunPage(BaseModel):
    """What the page shows of one benchmark run."""

    run: dict[str, Any]
    report: dict[str, Any]
    fit_note: str
    fit_curve: list[tuple[float, float]] = []
    t_opt: float | None = None
    problems: list[dict[str, Any]]


def bench_run_page(store: Store, run_id: str) -> BenchRunPage:
    """The report, the fitted U(t) and the problem table of one run, all from ``reports``."""
    import math

    from nsed.benchmarks.reports import (
        build_report,
        fatigue_fit,
        fitted_curve,
        list_runs,
        problem_rows,
    )

    report = build_report(store, run_id)
    listing = next(r for r in list_runs(store) if r.run_id == run_id)
    fit, note = fatigue_fit(report)
    curve = fitted_curve(fit, max(r.round for r in report.rounds)) if fit is not None else []
    t_opt = fit.t_opt if fit is not None and math.isfinite(fit.t_opt) else None
    return BenchRunPage(
        run=listing.model_dump(mode="json"),
        report=report.model_dump(mode="json"),
        fit_note=note,
        fit_curve=curve,
        t_opt=t_opt,
        problems=[p.model_dump(mode="json") for p in problem_rows(store, run_id)],
    )


async def _bench_run(request: Request) -> Response:
    runtime = _authorized(request)
    if runtime.store is None:
        raise _no_store()
    run_id = request.path_params["run_id"]
    try:
        page = await _read_store(runtime, lambda s: bench_run_page(s, run_id))
    except ConfigError as exc:
        raise ApiError(404, str(exc), code="bench_run_not_found") from None
    return _json(page)


BROWSE_ROUTES = [
    Route("/v1/councils", _councils, methods=["GET"]),
    Route("/v1/deliberations", _deliberations, methods=["GET"]),
    Route("/v1/bench/runs", _bench_runs, methods=["GET"]),
    Route("/v1/bench/runs/{run_id}", _bench_run, methods=["GET"]),
]

__all__ = ["BROWSE_ROUTES", "BenchRunPage", "bench_run_page", "readable"]
