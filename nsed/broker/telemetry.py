"""Live per-model telemetry: what every deliberation teaches the broker about each model.

After each deliberation :func:`record_deliberation` folds its trace into one ``ModelStat`` row
per (catalog model, task kind), all in one transaction: calls, failures and timeouts, latency
(an EWMA and a capped window of recent values for p50/p95), tokens and dollars, QV support,
wins, rounds played, and accuracy when the caller knows whether the answer was right.
:func:`load_stats` turns those rows (and the free-agency state) into the knapsack's
:class:`~nsed.broker.knapsack.ModelStats`; :func:`fetch_loads` adds the live load of
self-hosted vLLM servers from their ``/metrics``.

Definitions (the numbers ``nsed models list`` shows):

* ``calls`` are attempted calls (proposals and reviews), ``failures`` those that failed after
  retries, ``timeouts`` those failures that were timeouts; success ratio = 1 − failures/calls.
  ``truncations`` are successful calls cut at max_tokens (a budget too small for the model).
* latency is per proposal call (reviews carry no latency in the trace).
* support is the agent's QV support S in [-1, 1] in each round it proposed in.
* ``round_wins`` counts rounds the model's proposal won; ``wins`` counts deliberations whose
  answer was the model's (the last round's winner).
* accuracy (``graded``/``correct``): with ``correct`` given, a model whose latest final answer
  equals the deliberation's final is graded like the deliberation; when the deliberation was
  right, a model that disagreed is graded wrong; when it was wrong, a model that disagreed is
  not graded (its answer may or may not have been right).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from pydantic import BaseModel
from sqlalchemy import update
from sqlmodel import Session, select

from nsed.agents.parsing import normalize_final
from nsed.agents.vllm import MetricsCache
from nsed.broker.catalog import CatalogEntry
from nsed.broker.knapsack import ModelStats
from nsed.results import Deliberation, Proposal, Usage
from nsed.store import AgentStatusRow, ModelStat, Store, insert_or_ignore

log = logging.getLogger("nsed.telemetry")

EWMA_ALPHA = 0.2  # weight of the newest latency in the moving average
RECENT_LATENCIES = 100  # latencies kept for p50/p95


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; everything nsed stores is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- Reading a trace ----------------------------------------------------------------------------


class _Tally:
    """What one deliberation says about one model."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.timeouts = 0
        self.latencies: list[float] = []
        self.supports: list[float] = []
        self.round_wins = 0
        self.rounds_played = 0
        self.won = False


def _tallies(result: Deliberation, model_of: Mapping[str, str]) -> dict[str, _Tally]:
    def model(agent: str) -> str:
        return model_of.get(agent, agent)

    tallies: dict[str, _Tally] = {model(a.name): _Tally() for a in result.agents}
    for record in result.rounds:
        for agent, usage in record.agent_usage.items():
            tallies.setdefault(model(agent), _Tally()).usage.add(usage)
        for failure in record.failures:
            tally = tallies.setdefault(model(failure.agent), _Tally())
            tally.timeouts += int(failure.timeout)
            if failure.agent not in record.agent_usage:  # a trace without per-agent usage
                tally.usage.failed_calls += 1
        for proposal in record.proposals:
            tally = tallies.setdefault(model(proposal.agent), _Tally())
            tally.rounds_played += 1
            if proposal.latency_s > 0:
                tally.latencies.append(proposal.latency_s)
            if proposal.agent in record.support:
                tally.supports.append(record.support[proposal.agent])
            if proposal.agent == record.winner:
                tally.round_wins += 1
    if result.winner is not None:
        tallies.setdefault(model(result.winner), _Tally()).won = True
    return tallies


def graded_models(
    result: Deliberation, correct: bool | None, model_of: Mapping[str, str] | None = None
) -> dict[str, bool]:
    """Per model, whether its latest final answer was right (see the module docstring)."""
    if correct is None or not result.rounds:
        return {}
    model_of = model_of or {}
    latest: dict[str, Proposal] = {}
    for record in result.rounds:
        for proposal in record.proposals:
            latest[proposal.agent] = proposal
    answer = _norm(result.final, result.kind)
    out: dict[str, bool] = {}
    for agent, proposal in latest.items():
        agrees = answer is not None and _norm(proposal.final, result.kind) == answer
        name = model_of.get(agent, agent)
        if agrees:
            out[name] = correct
        elif correct:
            out[name] = False
    return out


def _norm(final: str | None, kind: str) -> str | None:
    if final is None:
        return None
    try:
        return normalize_final(final, kind)  # type: ignore[arg-type]
    except ValueError:
        return final.strip()


# --- Writing ------------------------------------------------------------------------------------


def apply_deliberation(
    session: Session,
    result: Deliberation,
    *,
    kind: str | None = None,
    correct: bool | None = None,
    model_of: Mapping[str, str] | None = None,
) -> list[ModelStat]:
    """Fold ``result`` into the ModelStat rows of ``session`` (the caller commits).

    Safe with any number of processes writing at once (see :func:`_add`): no increment is lost.
    """
    kind = kind or result.kind
    model_of = dict(model_of or {})
    grades = graded_models(result, correct, model_of)
    now = utcnow()
    rows = []
    for name, tally in sorted(_tallies(result, model_of).items()):
        grade = grades.get(name)
        usage = tally.usage
        row = _add(
            session,
            name,
            kind,
            now,
            calls=usage.calls + usage.failed_calls,
            failures=usage.failed_calls,
            timeouts=tally.timeouts,
            truncations=usage.truncated_calls,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            support_sum=math.fsum(tally.supports),
            support_n=len(tally.supports),
            round_wins=tally.round_wins,
            wins=int(tally.won),
            rounds_played=tally.rounds_played,
            deliberations=1,
            graded=int(grade is not None),
            correct=int(bool(grade)),
        )
        if tally.latencies:
            _fold_latencies(row, tally.latencies)
        rows.append(row)
    return rows


def _add(session: Session, name: str, kind: str, now: datetime, **deltas: float) -> ModelStat:
    """Add ``deltas`` to the counters of the (name, kind) row and return it, locked.

    The row is created if missing (INSERT ... ON CONFLICT DO NOTHING, so two processes that both
    see it missing do not collide), the counters are incremented in SQL (``calls = calls + n``:
    the database adds to the value it holds, not to one read earlier), and the row is read back
    after that UPDATE, which holds its lock (PostgreSQL's row lock, SQLite's write lock) until
    commit, so values that depend on the old ones (the latency EWMA and window) are computed
    from the current row and written before anyone else can change it.
    """
    key = (ModelStat.model_name == name, ModelStat.kind == kind)
    insert_or_ignore(
        session,
        ModelStat,
        {"model_name": name, "kind": kind, "updated_at": now},
        ["model_name", "kind"],
    )
    values: dict[str, Any] = {
        field: getattr(ModelStat, field) + delta for field, delta in deltas.items() if delta
    }
    session.execute(update(ModelStat).where(*key).values(updated_at=now, **values))
    query = select(ModelStat).where(*key).with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).one()


def _fold_latencies(row: ModelStat, latencies: list[float]) -> None:
    """The EWMA and the capped window of recent latencies, updated on a locked row."""
    recent = _floats(row.recent_latencies)
    for latency in latencies:
        first = not recent and row.latency_ewma_s == 0.0
        row.latency_ewma_s = (
            latency if first else EWMA_ALPHA * latency + (1 - EWMA_ALPHA) * row.latency_ewma_s
        )
        recent.append(latency)
    row.recent_latencies = json.dumps([round(x, 6) for x in recent[-RECENT_LATENCIES:]])


def apply_grades(
    session: Session,
    result: Deliberation,
    *,
    correct: bool,
    kind: str | None = None,
    model_of: Mapping[str, str] | None = None,
) -> dict[str, bool]:
    """Add a verdict known only after the fact (a benchmark grading the answer) to the rows of a
    deliberation already recorded without one; returns the per-model grades."""
    kind = kind or result.kind
    grades = graded_models(result, correct, model_of)
    now = utcnow()
    for name, grade in sorted(grades.items()):
        _add(session, name, kind, now, graded=1, correct=int(grade))
    return grades


def record_deliberation(
    store: Store,
    result: Deliberation,
    *,
    kind: str | None = None,
    correct: bool | None = None,
    model_of: Mapping[str, str] | None = None,
) -> None:
    """Update the telemetry of every model in ``result`` in one transaction.

    ``kind`` defaults to the deliberation's; ``correct`` is whether its answer matched a known
    gold answer (None: not graded); ``model_of`` maps agent names to catalog model names
    (identity by default). Raises StoreError when the database cannot be written, in which
    case nothing was written; the caller keeps the answer (the Broker logs and carries on).
    """
    with store.transaction() as session:
        apply_deliberation(session, result, kind=kind, correct=correct, model_of=model_of)


# --- Reading ------------------------------------------------------------------------------------


class ModelTelemetry(BaseModel):
    """A ModelStat row in the user's terms (for ``nsed models``)."""

    name: str
    kind: str
    calls: int
    failures: int
    timeouts: int
    truncations: int
    success_ratio: float
    latency_ewma_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    mean_support: float | None
    wins: int
    round_wins: int
    rounds_played: int
    deliberations: int
    graded: int
    accuracy: float | None
    learned_skill: float | None
    n_obs: int


def telemetry_of(row: ModelStat) -> ModelTelemetry:
    recent = _floats(row.recent_latencies)
    mean_support = row.support_sum / row.support_n if row.support_n else None
    skill, n_obs = _learned(row)
    return ModelTelemetry(
        name=row.model_name,
        kind=row.kind,
        calls=row.calls,
        failures=row.failures,
        timeouts=row.timeouts,
        truncations=row.truncations,
        success_ratio=_success_ratio(row),
        latency_ewma_s=row.latency_ewma_s if recent else None,
        latency_p50_s=_percentile(recent, 50),
        latency_p95_s=_percentile(recent, 95),
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        mean_support=mean_support,
        wins=row.wins,
        round_wins=row.round_wins,
        rounds_played=row.rounds_played,
        deliberations=row.deliberations,
        graded=row.graded,
        accuracy=row.correct / row.graded if row.graded else None,
        learned_skill=skill,
        n_obs=n_obs,
    )


def read_telemetry(store: Store, kind: str | None = None) -> list[ModelTelemetry]:
    """Every ModelStat row (of ``kind``, if given), by model name then kind."""
    with store.transaction() as session:
        query = select(ModelStat)
        if kind is not None:
            query = query.where(ModelStat.kind == kind)
        rows = list(session.exec(query))
    return [telemetry_of(r) for r in sorted(rows, key=lambda r: (r.model_name, r.kind))]


def read_status(store: Store) -> dict[str, AgentStatusRow]:
    """The free-agency state of every model that has one."""
    with store.transaction() as session:
        return {r.model_name: r for r in session.exec(select(AgentStatusRow))}


def load_stats(
    store: Store,
    kind: str,
    *,
    loads: Mapping[str, float] | None = None,
    now: datetime | None = None,
) -> dict[str, ModelStats]:
    """The knapsack's inputs from telemetry: learned skill, success ratio, latency, benched.

    Skill for ``kind`` is the accuracy when the model has graded deliberations, otherwise its
    mean QV support mapped from [-1, 1] to [0, 1]; ``n_obs`` is the number of graded
    (respectively played) deliberations behind it, so the knapsack shrinks it towards the prior.
    ``loads`` (model name -> load in [0, 1], see :func:`fetch_loads`) is passed through.
    """
    now = now or utcnow()
    with store.transaction() as session:
        rows = {
            r.model_name: r for r in session.exec(select(ModelStat).where(ModelStat.kind == kind))
        }
        status = {r.model_name: r for r in session.exec(select(AgentStatusRow))}
    loads = loads or {}
    out: dict[str, ModelStats] = {}
    for name in sorted(set(rows) | set(status) | set(loads)):
        row, state = rows.get(name), status.get(name)
        skill: dict[str, float] = {}
        n_obs: dict[str, int] = {}
        success, latency = 1.0, None
        if row is not None:
            learned, n = _learned(row)
            if learned is not None:
                skill[kind], n_obs[kind] = learned, n
            success = _success_ratio(row)
            latency = _percentile(_floats(row.recent_latencies), 50)
        until = as_utc(state.benched_until) if state is not None else None
        out[name] = ModelStats(
            skill=skill,
            n_obs=n_obs,
            success_ratio=success,
            load=loads.get(name),
            latency_s=latency if latency and latency > 0 else None,
            benched=until is not None and until > now,
        )
    return out


async def fetch_loads(
    entries: Iterable[CatalogEntry],
    cache: MetricsCache,
    client: httpx.AsyncClient,
) -> dict[str, float]:
    """Live load of self-hosted models (``vram_gb`` > 0) from their servers' vLLM /metrics.

    A server without vLLM metrics gives no entry (no load signal), never an error.
    """
    hosted = [e for e in entries if e.self_hosted and e.base_url.startswith("http")]
    out: dict[str, float] = {}

    async def one(entry: CatalogEntry) -> None:
        signal = await cache.get(client, entry.base_url, model=entry.model)
        if signal is not None:
            out[entry.name] = signal.load

    async with anyio.create_task_group() as tg:
        for entry in hosted:
            tg.start_soon(one, entry)
    return {e.name: out[e.name] for e in hosted if e.name in out}


# --- Helpers ------------------------------------------------------------------------------------


def _learned(row: ModelStat) -> tuple[float | None, int]:
    if row.graded:
        return row.correct / row.graded, row.graded
    if row.support_n:
        mean = row.support_sum / row.support_n
        return min(1.0, max(0.0, (mean + 1.0) / 2.0)), max(1, row.deliberations)
    return None, 0


def _success_ratio(row: ModelStat) -> float:
    if row.calls <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - row.failures / row.calls))


def _floats(text: str) -> list[float]:
    try:
        values = json.loads(text or "[]")
    except ValueError:
        return []
    return (
        [float(v) for v in values if isinstance(v, int | float)] if isinstance(values, list) else []
    )


def _percentile(values: list[float], q: int) -> float | None:
    """Nearest-rank style percentile (statistics' inclusive method); None without data."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


__all__ = [
    "ModelTelemetry",
    "apply_deliberation",
    "apply_grades",
    "as_utc",
    "fetch_loads",
    "graded_models",
    "load_stats",
    "read_status",
    "read_telemetry",
    "record_deliberation",
    "telemetry_of",
    "utcnow",
]
