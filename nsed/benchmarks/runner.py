"""Running a benchmark: problems in parallel, every result stored the moment it exists.

Results are keyed (run, method, problem, sample). Sample 0 is a method's answer on a problem
(what accuracy is computed from); samples 1.. are the independent proposals a sampling baseline
drew on the way (so a killed ``vote`` resumes mid-problem instead of redrawing). Each row is
written in its own transaction, so a kill loses at most the calls in flight; re-running the
same run id loads what is stored, skips it, and retries only what failed or never finished.
A deliberation is not resumable mid-way: a killed one is run again from round 1.

Grading runs in worker threads (code grading spawns sandboxed processes and waits for them), so
the event loop keeps every model call moving while programs are tested.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, delete, select

from nsed.agents.backend import EndpointPool
from nsed.agents.parsing import normalize_final
from nsed.benchmarks.grading import grade_code, grade_math
from nsed.benchmarks.loaders import BENCHMARKS, load_problems
from nsed.benchmarks.methods import (
    SINGLE_PREFIX,
    BenchTeam,
    Sample,
    aggregate,
    deliberate_problem,
    draw_samples,
    majority,
    parse_methods,
    round_one_tokens,
    sample_detail,
)
from nsed.benchmarks.sandbox import DEFAULT_TIMEOUT_S, require_isolation
from nsed.config import AgentSpec, DeliberationConfig, TeamSpec
from nsed.council import TeamLike, make_config, resolve_team
from nsed.errors import ConfigError, NsedError, redact_url
from nsed.problems import Problem
from nsed.store import BenchResult, BenchRun, Store

GRADING_THREADS = 2  # sandboxed test processes at once; more only fights the models for CPU
# Options that change what a stored result means: a resumed run must use the same values.
_FIXED_OPTIONS = ("seed", "match_compute", "vote_k", "max_samples", "moa_aggregator")


class BenchOptions(BaseModel):
    """What to run: benchmark, data, methods and how; everything a BenchRun row records."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str
    data: str | None = Field(default=None, description="data file or directory")
    methods: list[str] = Field(default_factory=lambda: ["nsed", "single", "vote"])
    rounds: int | None = Field(default=None, ge=1, le=50, description="max rounds of nsed")
    min_rounds: int | None = Field(default=None, ge=1, le=50)
    limit: int | None = Field(default=None, ge=1)
    concurrency: int = Field(default=4, ge=1, le=256, description="problems in flight")
    seed: int = 0
    match_compute: bool = False
    vote_k: int | None = Field(default=None, ge=1, le=1024, description="default: team size")
    max_samples: int = Field(default=64, ge=1, le=1024, description="cap per method, problem")
    moa_aggregator: str | None = Field(default=None, description="default: the first agent")
    code_timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    allow_unsandboxed: bool = Field(
        default=False, description="run model code even where no sandbox plan isolates it"
    )
    deliberation: dict[str, Any] = Field(
        default_factory=dict, description="DeliberationConfig fields (e.g. from --config)"
    )

    def deliberation_config(self) -> DeliberationConfig:
        """The deliberation config: ``deliberation`` plus rounds and seed, as ``nsed ask``."""
        overrides: dict[str, Any] = {"max_rounds": self.rounds, "min_rounds": self.min_rounds}
        if self.rounds is not None and self.min_rounds is None:
            overrides["min_rounds"] = min(self.rounds, self.deliberation.get("min_rounds", 2))
        if self.min_rounds is not None and self.rounds is None:
            overrides["max_rounds"] = max(self.min_rounds, self.deliberation.get("max_rounds", 4))
        if "seed" not in self.deliberation:
            overrides["seed"] = self.seed
        return make_config(self.deliberation, **overrides)


class BenchProgress(BaseModel):
    """Sent after setup and after every stored method answer (sample 0)."""

    run_id: str
    total: int
    done: int
    resumed: int = Field(description="answers already stored when this process started")
    correct: int
    prompt_tokens: int
    completion_tokens: int
    method: str | None = None
    problem_id: str | None = None


class BenchSummary(BaseModel):
    """How a call of :func:`run_benchmark` ended."""

    run_id: str
    total: int
    done: int
    resumed: int
    complete: bool
    wall_s: float


ProgressCallback = Callable[[BenchProgress], None]


def new_run_id(benchmark: str) -> str:
    """A readable, unique id: ``quick-20250101-120000-a1b2``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{benchmark}-{stamp}-{secrets.token_hex(2)}"


def team_record(team: TeamSpec) -> dict[str, Any]:
    """The team as stored: no API keys (excluded by the model), no credentials in URLs.

    ``api_key_env`` holds the *name* of an environment variable, never its value, so it stays.
    """
    data = team.model_dump(mode="json")
    for model in data.get("models", []):
        model["base_url"] = redact_url(str(model.get("base_url", "")))
    return data


def _resolved_data(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _run_config(options: BenchOptions, n_problems: int) -> dict[str, Any]:
    cfg = options.deliberation_config().model_dump(mode="json")
    cfg.pop("kind", None)  # set per problem
    return {
        **{name: getattr(options, name) for name in _FIXED_OPTIONS},
        "rounds": options.rounds,
        "min_rounds": options.min_rounds,
        "limit": options.limit,
        "concurrency": options.concurrency,
        "code_timeout_s": options.code_timeout_s,
        "n_problems": n_problems,
        "deliberation": cfg,
    }


def check_resume(store: Store, run_id: str, options: BenchOptions) -> BenchRun | None:
    """The stored run ``run_id``, after checking it can be resumed with these options."""
    with store.transaction() as session:
        run = session.get(BenchRun, run_id)
    if run is None:
        return None
    hint = "pass the same options to resume it, or use a new --run-id"
    if run.benchmark != options.benchmark:
        raise ConfigError(
            f"run {run_id!r} is a {run.benchmark} run, not {options.benchmark}; "
            f"resume it with `nsed bench {run.benchmark}` or use a new --run-id"
        )
    data = _resolved_data(options.data)
    if run.data_path != data:
        raise ConfigError(
            f"run {run_id!r} used data {run.data_path or '(generated)'}, not "
            f"{data or '(generated)'}; {hint}"
        )
    stored = json.loads(run.config or "{}")
    now = _run_config(options, 0)
    if isinstance(stored.get("deliberation"), dict):  # fields both versions know
        stored["deliberation"] = {
            k: v for k, v in stored["deliberation"].items() if k in now["deliberation"]
        }
        now["deliberation"] = {k: now["deliberation"][k] for k in stored["deliberation"]}
    for name in (*_FIXED_OPTIONS, "deliberation"):
        if name in stored and stored[name] != now[name]:
            what = "deliberation settings (--rounds/--min-rounds/--config)"
            shown = what if name == "deliberation" else f"{name} ({stored[name]!r})"
            raise ConfigError(f"run {run_id!r} was started with different {shown}; {hint}")
    return run


async def run_benchmark(
    options: BenchOptions,
    *,
    store: Store,
    team: TeamLike = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    problems: list[Problem] | None = None,
) -> BenchSummary:
    """Run (or resume) ``options`` as run ``run_id`` (a new id when None).

    Data and options are checked before any model is started; a run id reused for another
    benchmark, data set or option set is a ConfigError.
    """
    started = time.perf_counter()
    if options.benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {options.benchmark!r}; use one of {', '.join(BENCHMARKS)}"
        )
    methods = parse_methods(options.methods)
    if options.match_compute and "nsed" not in methods:
        raise ConfigError(
            "--match-compute matches the deliberation's tokens: add nsed to --methods"
        )
    config = options.deliberation_config()
    if problems is None:
        problems = load_problems(
            options.benchmark, options.data, seed=options.seed, limit=options.limit
        )
    run_id = run_id or new_run_id(options.benchmark)
    check_resume(store, run_id, options)
    # Code is graded in the sandbox: refuse before any model call if it cannot isolate.
    runs_code = any(p.kind == "code" for p in problems)
    plan = require_isolation(options.allow_unsandboxed) if runs_code else None
    spec = resolve_team(team)
    async with EndpointPool() as pool:
        bench_team = await BenchTeam.open(spec, config, pool)
        labels = _labels(methods, bench_team)
        if options.moa_aggregator is not None:
            bench_team.seat(options.moa_aggregator)
        _record_run(store, run_id, options, spec, labels, len(problems), plan)
        runner = _Runner(store, run_id, options, bench_team, labels, problems, progress)
        status = "interrupted"  # Ctrl-C, cancellation
        try:
            await runner.run()
            status = "complete" if runner.done == runner.total else "incomplete"
        except Exception:
            status = "failed"
            raise
        finally:
            _set_status(store, run_id, status)
    return BenchSummary(
        run_id=run_id,
        total=runner.total,
        done=runner.done,
        resumed=runner.resumed,
        complete=status == "complete",
        wall_s=time.perf_counter() - started,
    )


def _labels(methods: list[str], team: BenchTeam) -> list[str]:
    """Method labels in run order (nsed first: the baselines may need its token count)."""
    labels: list[str] = []
    for method in sorted(methods, key=lambda m: m != "nsed"):
        if method == "single":
            labels += [f"{SINGLE_PREFIX}{name}" for name in team.names]
        elif method.startswith(SINGLE_PREFIX):
            labels.append(f"{SINGLE_PREFIX}{team.seat(method.removeprefix(SINGLE_PREFIX)).name}")
        else:
            labels.append(method)
    return list(dict.fromkeys(labels))


def _record_run(
    store: Store,
    run_id: str,
    options: BenchOptions,
    team: TeamSpec,
    labels: list[str],
    n_problems: int,
    plan: str | None,
) -> None:
    config = _run_config(options, n_problems)
    with store.transaction() as session:
        run = session.get(BenchRun, run_id)
        if run is None:
            session.add(
                BenchRun(
                    run_id=run_id,
                    benchmark=options.benchmark,
                    data_path=_resolved_data(options.data),
                    methods=",".join(labels),
                    team=json.dumps(team_record(team)),
                    config=json.dumps(config),
                    status="running",
                    sandbox=plan,
                )
            )
            return
        if plan is not None and run.sandbox != plan:
            # A resume under another plan (e.g. with --allow-unsandboxed) says so: a, then b.
            known = (run.sandbox or "").split(", then ")
            run.sandbox = ", then ".join([p for p in known if p and p != plan] + [plan])
        known = [m for m in run.methods.split(",") if m]
        run.methods = ",".join(dict.fromkeys([*known, *labels]))
        stored = json.loads(run.config or "{}")
        stored.update({k: v for k, v in config.items() if k not in _FIXED_OPTIONS})
        stored["n_problems"] = max(int(stored.get("n_problems") or 0), n_problems)
        run.config = json.dumps(stored)
        run.team = json.dumps(team_record(team))
        run.status = "running"
        session.add(run)


def _set_status(store: Store, run_id: str, status: str) -> None:
    with store.transaction() as session:
        run = session.get(BenchRun, run_id)
        if run is not None:
            run.status = status
            session.add(run)


Key = tuple[str, str, int]


class _Runner:
    """The state of one benchmark process: stored rows, counters and grading cache."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        options: BenchOptions,
        team: BenchTeam,
        labels: list[str],
        problems: list[Problem],
        progress: ProgressCallback | None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.options = options
        self.team = team
        self.labels = labels
        self.problems = problems
        self.progress = progress
        self.rows: dict[Key, BenchResult] = {}
        self._grades: dict[tuple[str, str], tuple[bool, dict[str, Any]]] = {}
        self._grade_limiter = anyio.CapacityLimiter(GRADING_THREADS)
        self.total = len(problems) * len(labels)
        self.done = self.resumed = self.correct = 0
        self.prompt_tokens = self.completion_tokens = 0

    # --- storage --------------------------------------------------------------------------

    def _load(self) -> None:
        """Load stored rows; drop failed answers (and failed samples of unfinished answers),
        so that a resume retries them."""
        with self.store.transaction() as session:
            rows = list(
                session.exec(select(BenchResult).where(BenchResult.run_id == self.run_id)).all()
            )
            answers = {(r.method, r.problem_id): r for r in rows if r.sample == 0}
            retry = {key for key, r in answers.items() if r.error is not None}
            drop = [
                r.id
                for r in rows
                if r.error is not None
                and (
                    r.sample == 0
                    or (r.method, r.problem_id) in retry
                    or (r.method, r.problem_id) not in answers
                )
            ]
            if drop:
                session.exec(delete(BenchResult).where(col(BenchResult.id).in_(drop)))
        dropped = set(drop)
        self.rows = {(r.method, r.problem_id, r.sample): r for r in rows if r.id not in dropped}
        wanted = {p.id for p in self.problems}
        for (method, pid, sample), row in self.rows.items():
            if sample == 0 and method in self.labels and pid in wanted:
                self._count(row)
        self.resumed = self.done

    def _count(self, row: BenchResult) -> None:
        self.done += 1
        self.correct += int(row.correct)
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens

    def _save(self, row: BenchResult) -> BenchResult:
        """Insert one row in its own transaction (a stored key is never written twice)."""
        key = (row.method, row.problem_id, row.sample)
        if key in self.rows:
            return self.rows[key]
        with self.store.transaction() as session:
            found = session.exec(
                select(BenchResult).where(
                    BenchResult.run_id == row.run_id,
                    BenchResult.method == row.method,
                    BenchResult.problem_id == row.problem_id,
                    BenchResult.sample == row.sample,
                )
            ).first()
            if found is None:
                session.add(row)
            else:
                row = found
        self.rows[key] = row
        if row.sample == 0:
            self._count(row)
            self._emit(row.method, row.problem_id)
        return row

    def _emit(self, method: str | None = None, problem_id: str | None = None) -> None:
        if self.progress is None:
            return
        self.progress(
            BenchProgress(
                run_id=self.run_id,
                total=self.total,
                done=self.done,
                resumed=self.resumed,
                correct=self.correct,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                method=method,
                problem_id=problem_id,
            )
        )

    def _row(self, method: str, problem: Problem, sample: int, **fields: Any) -> BenchResult:
        detail = fields.pop("detail", {})
        return BenchResult(
            run_id=self.run_id,
            method=method,
            problem_id=problem.id,
            sample=sample,
            gold=problem.answer if problem.kind == "math" else None,
            detail=json.dumps(detail, default=str),
            **fields,
        )

    # --- grading --------------------------------------------------------------------------

    async def grade(self, problem: Problem, final: str | None) -> tuple[bool, dict[str, Any]]:
        """Whether ``final`` solves ``problem`` (and, for code, how far it got); cached."""
        if not final or not final.strip():
            return False, {"reason": "no final answer"}
        key = (problem.id, normalize_final(final, problem.kind))
        if key in self._grades:
            return self._grades[key]
        try:
            result = await self._grade(problem, final)
        except NsedError:
            raise  # refusing to run code unsandboxed, bad limits: the run must stop
        except Exception as exc:  # hostile output is this answer's failure, never the run's
            result = (False, {"reason": f"grading error: {type(exc).__name__}: {exc}"[:300]})
        self._grades[key] = result
        return result

    async def _grade(self, problem: Problem, final: str) -> tuple[bool, dict[str, Any]]:
        if problem.kind == "math":
            ok = await anyio.to_thread.run_sync(
                grade_math, final, problem.answer or "", limiter=self._grade_limiter
            )
            return bool(ok), {}
        grade = await anyio.to_thread.run_sync(
            partial(
                grade_code,
                final,
                problem,
                timeout_s=self.options.code_timeout_s,
                fail_fast=True,
                allow_unsandboxed=self.options.allow_unsandboxed,
            ),
            limiter=self._grade_limiter,
        )
        info: dict[str, Any] = {"passed": grade.passed, "tests": grade.total}
        if grade.first_failure:
            info["first_failure"] = grade.first_failure
        return grade.correct, info

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._load()
        self._emit()
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def one(problem: Problem) -> None:
            async with limiter:
                await self._problem(problem)

        async with anyio.create_task_group() as tg:
            for problem in self.problems:
                if all((label, problem.id, 0) in self.rows for label in self.labels):
                    continue
                tg.start_soon(one, problem)

    async def _problem(self, problem: Problem) -> None:
        target: int | None = None
        if "nsed" in self.labels:
            row = await self._nsed(problem)
            if self.options.match_compute:
                target = row.completion_tokens
        async with anyio.create_task_group() as tg:
            for label in self.labels:
                if label == "nsed" or (label, problem.id, 0) in self.rows:
                    continue
                if label == "moa":
                    tg.start_soon(self._moa, problem)
                elif label == "vote":
                    k = self.options.vote_k or len(self.team.seats)
                    k = None if target is not None else k
                    tg.start_soon(self._sampled, label, problem, self.team.seats, k, target)
                else:
                    seat = self.team.seat(label.removeprefix(SINGLE_PREFIX))
                    k = None if target is not None else 1
                    tg.start_soon(self._sampled, label, problem, [seat], k, target)

    async def _nsed(self, problem: Problem) -> BenchResult:
        stored = self.rows.get(("nsed", problem.id, 0))
        if stored is not None:
            return stored
        started = time.perf_counter()
        try:
            result = await deliberate_problem(self.team, problem)
        except NsedError as exc:
            return self._save(
                self._row(
                    "nsed",
                    problem,
                    0,
                    latency_s=time.perf_counter() - started,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
        rounds = []
        for record in result.rounds:
            ok, _ = await self.grade(problem, record.winner_final)
            rounds.append(
                {
                    "round": record.index,
                    "winner": record.winner,
                    "final": _short(record.winner_final),
                    "correct": ok,
                    "conviction": round(record.conviction, 4),
                }
            )
        correct, info = await self.grade(problem, result.final)
        self.store.save_deliberation(result)
        return self._save(
            self._row(
                "nsed",
                problem,
                0,
                correct=correct,
                predicted=result.final,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                cost_usd=result.usage.cost_usd,
                latency_s=result.wall_s,
                deliberation_id=result.id,
                detail={
                    "rounds": rounds,
                    "stopped_because": result.stopped_because,
                    "winner": result.winner,
                    "proposal_tokens": round_one_tokens(result),
                    "calls": result.usage.calls,
                    "failed_calls": result.usage.failed_calls,
                    **info,
                },
            )
        )

    def _stored_samples(self, method: str, problem: Problem) -> list[Sample]:
        samples = []
        for (m, pid, index), row in self.rows.items():
            if m != method or pid != problem.id or index == 0:
                continue
            detail = json.loads(row.detail or "{}")
            samples.append(
                Sample(
                    index=index,
                    agent=str(detail.get("agent", "")),
                    seed=detail.get("seed"),
                    final=row.predicted,
                    answer=str(detail.get("answer", row.predicted or "")),
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cost_usd=row.cost_usd,
                    latency_s=row.latency_s,
                    error=row.error,
                )
            )
        return samples

    async def _store_sample(self, method: str, problem: Problem, sample: Sample) -> None:
        correct, info = await self.grade(problem, sample.final)
        self._save(
            self._row(
                method,
                problem,
                sample.index,
                correct=correct,
                predicted=sample.final,
                prompt_tokens=sample.prompt_tokens,
                completion_tokens=sample.completion_tokens,
                cost_usd=sample.cost_usd,
                latency_s=sample.latency_s,
                error=sample.error,
                detail={**sample_detail(sample), **info},
            )
        )

    async def _sampled(
        self,
        method: str,
        problem: Problem,
        seats: list[AgentSpec],
        k: int | None,
        target: int | None,
    ) -> None:
        """``vote`` and ``single:<agent>``: draw samples, answer with their majority."""
        started = time.perf_counter()
        samples = await draw_samples(
            self.team,
            problem,
            seats,
            existing=self._stored_samples(method, problem),
            k=k,
            target_tokens=target,
            max_samples=self.options.max_samples,
            seed=self.options.seed,
            on_sample=partial(self._store_sample, method, problem),
        )
        vote = majority(samples, problem.kind)
        correct, info = await self.grade(problem, vote.final)
        graded = [self.rows[(method, problem.id, s.index)] for s in samples]
        ok = [s for s in samples if s.error is None]
        detail = {
            "samples": len(samples),
            "failed_samples": len(samples) - len(ok),
            "k": k,
            "target_tokens": target,
            "votes": vote.counts,
            "winner_sample": vote.first_index,
            "first_correct": graded[0].correct if graded else None,
            "sample_accuracy": sum(r.correct for r in graded) / len(graded) if graded else None,
            **info,
        }
        self._save(
            self._row(
                method,
                problem,
                0,
                correct=correct,
                predicted=vote.final,
                prompt_tokens=sum(s.prompt_tokens for s in samples),
                completion_tokens=sum(s.completion_tokens for s in samples),
                cost_usd=sum(s.cost_usd for s in samples),
                latency_s=time.perf_counter() - started,
                error=None if ok else f"every sample failed: {samples[0].error}",
                detail=detail,
            )
        )

    async def _moa(self, problem: Problem) -> None:
        """Every agent proposes once (samples 1..n), then the aggregator answers (sample 0)."""
        started = time.perf_counter()
        seats = self.team.seats
        proposals = await draw_samples(
            self.team,
            problem,
            seats,
            existing=self._stored_samples("moa", problem),
            k=len(seats),
            max_samples=len(seats),
            on_sample=partial(self._store_sample, "moa", problem),
        )
        name = self.options.moa_aggregator or seats[0].name
        final = await aggregate(self.team, self.team.seat(name), problem, proposals)
        correct, info = await self.grade(problem, final.final)
        calls = [*proposals, final]
        self._save(
            self._row(
                "moa",
                problem,
                0,
                correct=correct,
                predicted=final.final,
                prompt_tokens=sum(s.prompt_tokens for s in calls),
                completion_tokens=sum(s.completion_tokens for s in calls),
                cost_usd=sum(s.cost_usd for s in calls),
                latency_s=time.perf_counter() - started,
                error=final.error,
                detail={
                    "aggregator": name,
                    "proposals": len(proposals),
                    "failed_proposals": sum(1 for s in proposals if s.error),
                    "answer": final.answer[:8000],
                    **info,
                },
            )
        )


def _short(text: str | None, limit: int = 200) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


__all__ = [
    "BenchOptions",
    "BenchProgress",
    "BenchSummary",
    "ProgressCallback",
    "check_resume",
    "new_run_id",
    "run_benchmark",
    "team_record",
]
