"""What a benchmark run showed: accuracy with honest intervals, compute, and who won.

Everything is computed from the store (the answers in ``bench_results``, the deliberation
traces in ``deliberations``), so a report can be rebuilt at any time, also of a run that is
still going or was interrupted. Accuracy counts only sample 0 rows (a method's answer on a
problem); a method that failed on a problem counts as wrong there.

Per-round accuracy is the accuracy of the deliberation's winner after each round. A
deliberation that stopped early keeps its last answer in later rounds (that is the answer it
gave), so every round is over the same problems; ``reached`` says how many really got there.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import select

from nsed.benchmarks.runner import STALE_AFTER_S
from nsed.errors import ConfigError
from nsed.orchestrator.stopping import FatigueFit, fit_fatigue, utility
from nsed.store import BenchResult, BenchRun, BenchWorker, CorruptCell, Store, json_cell

log = logging.getLogger("nsed.bench")

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes in ``n`` trials.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n,
    which small benchmark runs hit all the time. n = 0 gives the uninformative [0, 1].
    """
    if n < 0 or correct < 0 or correct > n:
        raise ConfigError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


class TokenStats(BaseModel):
    prompt: int = 0
    completion: int = 0
    total: int = 0
    per_problem: float = Field(default=0.0, description="mean total tokens per problem")
    prompt_per_problem: float = 0.0
    completion_per_problem: float = 0.0


class MethodStats(BaseModel):
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    tokens: TokenStats
    cost_usd: float
    latency_s: float = Field(description="mean wall seconds per problem")
    errors: int = 0


class RoundStats(BaseModel):
    round: int
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    reached: int = Field(description="deliberations that actually ran this round")


class AgentStats(BaseModel):
    name: str
    wins: int = Field(default=0, description="deliberations whose final answer was its proposal")
    round_wins: int = 0
    rounds: int = Field(default=0, description="rounds in which it proposed")
    mean_support: float = 0.0
    failures: int = 0


class RunReport(BaseModel):
    """The ``nsed runs show --json`` document."""

    run_id: str
    benchmark: str
    sandbox: str | None = Field(
        default=None, description="sandbox plan(s) model code ran under; None: no code run"
    )
    methods: dict[str, MethodStats]
    rounds: list[RoundStats]
    agents: list[AgentStats]


class RunListing(BaseModel):
    run_id: str
    created_at: datetime
    benchmark: str
    methods: list[str]
    status: str = Field(description="complete, running, stale, failed, interrupted, incomplete")
    answers: int
    expected: int | None = None
    workers: int = Field(default=0, description="processes/actors that worked on it")
    last_seen: datetime | None = Field(default=None, description="newest worker heartbeat")


def _readable(text: str | None, where: str, default: Any) -> Any:
    """A JSON cell for a report: an unreadable one is logged (naming it) and left out."""
    try:
        return json_cell(text, where, default)
    except CorruptCell as exc:
        log.warning("%s; the report leaves it out", exc)
        return default


def _get_run(store: Store, run_id: str) -> BenchRun:
    with store.transaction() as session:
        run = session.get(BenchRun, run_id)
    if run is None:
        where = store.url.split("@")[-1]
        raise ConfigError(
            f"no benchmark run {run_id!r} in {where}; `nsed runs list` shows the runs there "
            "(use --db for another database)"
        )
    return run


def _answers(store: Store, run_id: str) -> list[BenchResult]:
    with store.transaction() as session:
        query = select(BenchResult).where(BenchResult.run_id == run_id, BenchResult.sample == 0)
        return list(session.exec(query).all())


def method_stats(rows: list[BenchResult]) -> MethodStats:
    n = len(rows)
    correct = sum(1 for r in rows if r.correct)
    prompt = sum(r.prompt_tokens for r in rows)
    completion = sum(r.completion_tokens for r in rows)
    per = (lambda x: x / n) if n else (lambda x: 0.0)
    return MethodStats(
        n=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        ci95=wilson_interval(correct, n),
        tokens=TokenStats(
            prompt=prompt,
            completion=completion,
            total=prompt + completion,
            per_problem=per(prompt + completion),
            prompt_per_problem=per(prompt),
            completion_per_problem=per(completion),
        ),
        cost_usd=sum(r.cost_usd for r in rows),
        latency_s=per(sum(r.latency_s for r in rows)),
        errors=sum(1 for r in rows if r.error is not None),
    )


def round_stats(nsed_rows: list[BenchResult]) -> list[RoundStats]:
    """Accuracy of the winner after each round (an early stop carries its answer forward)."""
    curves: list[list[bool]] = []
    for row in nsed_rows:
        detail = _readable(row.detail, f"bench_results id {row.id} (detail)", {})
        rounds = (detail.get("rounds") if isinstance(detail, dict) else None) or []
        curves.append([bool(r.get("correct")) for r in rounds])
    depth = max((len(c) for c in curves), default=0)
    stats = []
    for r in range(1, depth + 1):
        correct = sum(1 for c in curves if c and c[min(r, len(c)) - 1])
        n = len(curves)
        stats.append(
            RoundStats(
                round=r,
                n=n,
                correct=correct,
                accuracy=correct / n if n else 0.0,
                ci95=wilson_interval(correct, n),
                reached=sum(1 for c in curves if len(c) >= r),
            )
        )
    return stats


def agent_stats(store: Store, nsed_rows: list[BenchResult]) -> list[AgentStats]:
    """Wins and support per agent, from the stored deliberation traces."""
    stats: dict[str, AgentStats] = {}
    support: dict[str, list[float]] = {}
    for row in nsed_rows:
        if not row.deliberation_id:
            continue
        try:
            trace = store.load_deliberation(row.deliberation_id)
        except CorruptCell as exc:
            log.warning("%s; the report leaves it out", exc)
            continue
        if trace is None:
            continue
        for info in trace.agents:
            stats.setdefault(info.name, AgentStats(name=info.name))
        if trace.winner:
            stats.setdefault(trace.winner, AgentStats(name=trace.winner)).wins += 1
        for record in trace.rounds:
            if record.winner:
                stats.setdefault(record.winner, AgentStats(name=record.winner)).round_wins += 1
            for proposal in record.proposals:
                agent = stats.setdefault(proposal.agent, AgentStats(name=proposal.agent))
                agent.rounds += 1
                if proposal.agent in record.support:
                    support.setdefault(proposal.agent, []).append(record.support[proposal.agent])
            for failure in record.failures:
                stats.setdefault(failure.agent, AgentStats(name=failure.agent)).failures += 1
    for name, values in support.items():
        stats[name].mean_support = sum(values) / len(values)
    return sorted(stats.values(), key=lambda a: (-a.wins, -a.mean_support, a.name))


def build_report(store: Store, run_id: str) -> RunReport:
    """The report of run ``run_id`` from what is stored now."""
    run = _get_run(store, run_id)
    rows = _answers(store, run_id)
    order = [m for m in run.methods.split(",") if m]
    order += sorted({r.method for r in rows} - set(order))
    by_method = {m: [r for r in rows if r.method == m] for m in order}
    nsed_rows = by_method.get("nsed", [])
    return RunReport(
        run_id=run.run_id,
        benchmark=run.benchmark,
        sandbox=run.sandbox,
        methods={m: method_stats(rs) for m, rs in by_method.items()},
        rounds=round_stats(nsed_rows),
        agents=agent_stats(store, nsed_rows),
    )


class MethodAnswer(BaseModel):
    predicted: str | None = None
    correct: bool = False
    error: str | None = None
    deliberation_id: str | None = None


class ProblemRow(BaseModel):
    """One problem of a run: the gold answer and what each method answered (sample 0)."""

    problem_id: str
    gold: str | None = None
    answers: dict[str, MethodAnswer]
    disagree: bool = Field(description="the methods that answered did not all give one answer")


def problem_rows(store: Store, run_id: str) -> list[ProblemRow]:
    """The run's problems in id order, each with every method's answer (the page's table)."""
    _get_run(store, run_id)
    by_problem: dict[str, list[BenchResult]] = {}
    for row in _answers(store, run_id):
        by_problem.setdefault(row.problem_id, []).append(row)
    table = []
    for pid in sorted(by_problem):
        rows = by_problem[pid]
        given = {" ".join(r.predicted.split()) for r in rows if r.predicted is not None}
        table.append(
            ProblemRow(
                problem_id=pid,
                gold=next((r.gold for r in rows if r.gold is not None), None),
                answers={
                    r.method: MethodAnswer(
                        predicted=r.predicted,
                        correct=r.correct,
                        error=r.error,
                        deliberation_id=r.deliberation_id,
                    )
                    for r in rows
                },
                disagree=len(given) > 1,
            )
        )
    return table


def run_status(
    stored: str,
    workers: list[BenchWorker],
    complete: bool,
    now: datetime,
    stale_after_s: float,
) -> str:
    """A run's status from its workers' rows (``stored``: the run row's, for runs older than
    bench_workers): complete once every answer is stored; running while a worker beats;
    otherwise what the last worker to finish said, or ``stale`` when every worker went silent
    without finishing (killed, or unable to write its end status)."""
    if complete:
        return "complete"
    if not workers:
        return stored
    limit = now - timedelta(seconds=stale_after_s)
    if any(w.status == "running" and _utc(w.heartbeat_at) > limit for w in workers):
        return "running"
    finished = [w for w in workers if w.finished_at is not None]
    if finished:
        return max(finished, key=lambda w: _utc(w.finished_at)).status
    return "stale"


def _utc(value: datetime | None) -> datetime:
    value = value or datetime.min.replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def list_runs(store: Store, *, now: datetime | None = None) -> list[RunListing]:
    """Every benchmark run in the store, newest first, with how many answers it has and its
    status derived from its workers (see :func:`run_status`; ``now`` defaults to the clock)."""
    now = now or datetime.now(UTC)
    with store.reading() as session:
        runs = list(session.exec(select(BenchRun)).all())
        answers = list(
            session.exec(
                select(BenchResult.run_id, BenchResult.method).where(BenchResult.sample == 0)
            ).all()
        )
        workers = list(session.exec(select(BenchWorker)).all())
    listing = []
    for run in runs:
        methods = [m for m in run.methods.split(",") if m]
        n = sum(1 for rid, method in answers if rid == run.run_id and method in methods)
        config = _readable(run.config, f"bench_runs {run.run_id!r} (config)", {})
        n_problems = config.get("n_problems") if isinstance(config, dict) else None
        expected = n_problems * len(methods) if n_problems else None
        mine = [w for w in workers if w.run_id == run.run_id]
        complete = expected is not None and n >= expected
        listing.append(
            RunListing(
                run_id=run.run_id,
                created_at=run.created_at,
                benchmark=run.benchmark,
                methods=methods,
                status=run_status(run.status, mine, complete, now, STALE_AFTER_S),
                answers=n,
                expected=expected,
                workers=len(mine),
                last_seen=max((_utc(w.heartbeat_at) for w in mine), default=None),
            )
        )
    return sorted(listing, key=lambda r: r.created_at, reverse=True)


# --- The efficiency-fatigue fit and the plots ---------------------------------------------------


def fatigue_fit(report: RunReport) -> tuple[FatigueFit | None, str]:
    """U(t) fitted to the per-round accuracy, or None and why not (fewer than 3 rounds,
    scipy missing, a fit that does not converge)."""
    if len(report.rounds) < 3:
        return None, f"U(t) fit needs >= 3 rounds (this run has {len(report.rounds)})"
    try:
        with warnings.catch_warnings():  # scipy warns when a flat curve leaves no covariance
            warnings.simplefilter("ignore")
            fit = fit_fatigue([r.round for r in report.rounds], [r.accuracy for r in report.rounds])
    except ImportError:
        return None, 'U(t) fit needs scipy: pip install "nsed[bench]"'
    except ConfigError as exc:
        return None, f"no U(t) fit: {exc}"
    t_opt = "∞" if math.isinf(fit.t_opt) else f"{fit.t_opt:.2f}"
    return fit, f"U(t) fit: R² = {fit.r2:.3f}, T_opt = {t_opt} rounds"


def fitted_curve(fit: FatigueFit, until: float, points: int = 101) -> list[tuple[float, float]]:
    """(t, U(t)) on an even grid from 0 to ``until`` rounds: the fitted curve as drawn."""
    grid = [until * i / (points - 1) for i in range(points)]
    return [(t, utility(t, fit.params)) for t in grid]


def plot_run(report: RunReport, out_dir: str | Path) -> list[Path]:
    """Write ``accuracy_per_round.png`` (with the fitted U(t)) and ``accuracy_vs_tokens.png``.

    matplotlib (extra ``bench``) is imported here, with the Agg backend, so nothing else in
    nsed needs it or a display.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('plots need matplotlib: pip install "nsed[bench]"') from None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}; pass another --out") from None
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if report.rounds:
        xs = [r.round for r in report.rounds]
        ys = [r.accuracy for r in report.rounds]
        lo = [r.accuracy - r.ci95[0] for r in report.rounds]
        hi = [r.ci95[1] - r.accuracy for r in report.rounds]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label="winner accuracy (95% CI)")
        fit, note = fatigue_fit(report)
        if fit is not None:
            curve = fitted_curve(fit, max(xs))
            ax.plot(*zip(*curve, strict=True), "-", label="fitted U(t)")
            if math.isfinite(fit.t_opt) and fit.t_opt <= 2 * max(xs):
                ax.axvline(fit.t_opt, linestyle=":", color="grey", label="T_opt")
        ax.set_xticks(xs)
    else:
        note = "no deliberation results in this run"
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{report.run_id}: accuracy per round\n{note}", fontsize=9)
    if report.rounds:
        ax.legend(fontsize=8, loc="lower right")
    path = out / "accuracy_per_round.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = itertools.cycle("osD^vP*X")
    for name, stats in report.methods.items():
        x = stats.tokens.completion_per_problem
        err = [[stats.accuracy - stats.ci95[0]], [stats.ci95[1] - stats.accuracy]]
        ax.errorbar([x], [stats.accuracy], yerr=err, fmt=next(markers), capsize=3, label=name)
    ax.set_xlabel("completion tokens per problem (what --match-compute equalises)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{report.run_id}: accuracy vs tokens", fontsize=9)
    if report.methods:
        ax.legend(fontsize=7, loc="best")
    path = out / "accuracy_vs_tokens.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


__all__ = [
    "AgentStats",
    "MethodAnswer",
    "MethodStats",
    "ProblemRow",
    "RoundStats",
    "RunListing",
    "RunReport",
    "TokenStats",
    "agent_stats",
    "build_report",
    "fatigue_fit",
    "fitted_curve",
    "list_runs",
    "method_stats",
    "plot_run",
    "problem_rows",
    "round_stats",
    "wilson_interval",
]
