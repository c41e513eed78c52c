"""Running a benchmark: problems in parallel, every result stored the moment it exists.

Results are keyed (run, method, problem, sample). Sample 0 is a method's answer on a problem
(what accuracy is computed from); samples 1.. are the independent proposals a sampling baseline
drew on the way (so a killed ``vote`` resumes mid-problem instead of redrawing). Each row is
written in its own transaction, so a kill loses at most the calls in flight; re-running the
same run id loads what is stored, skips it, and retries only what failed or never finished.
A deliberation is not resumable mid-way: a killed one is run again from round 1.

Several workers may share one run: ``--shard I/N`` processes (each takes every N-th problem),
or the Ray actors of :mod:`nsed.scale`. A row is inserted only if its key is not stored yet (ON
CONFLICT DO NOTHING), so two workers never store one result twice. Each worker has a
``bench_workers`` row that it beats every few seconds and closes with its own status; the
run's status is derived from them (:func:`nsed.benchmarks.reports.list_runs`), so a worker that
was killed, or could not write its end status, shows as stale instead of "running" forever.

Grading goes through a :class:`Grader`: by default worker threads (code grading spawns
sandboxed processes and waits for them), so the event loop keeps every model call moving while
programs are tested; on Ray, code grading runs as Ray tasks (:mod:`nsed.scale`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, delete, func, select

from nsed.agents.backend import EndpointPool
from nsed.agents.parsing import normalize_final
from nsed.benchmarks.grading import CodeGrade, grade_code, grade_math
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
from nsed.errors import ConfigError, NsedError, StoreError, redact_url
from nsed.problems import Problem
from nsed.store import (
    BenchResult,
    BenchRun,
    BenchWorker,
    CorruptCell,
    Store,
    insert_or_ignore,
    json_cell,
)

log = logging.getLogger("nsed.bench")

GRADING_THREADS = 2  # sandboxed test processes at once; more only fights the models for CPU
HEARTBEAT_S = 5.0  # a worker beats its bench_workers row this often
STALE_AFTER_S = 4 * HEARTBEAT_S  # a "running" worker silent this long is gone
RESULT_KEY = ["run_id", "method", "problem_id", "sample"]
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


class Shard(BaseModel):
    """``--shard I/N``: this process runs problems I-1, I-1+N, I-1+2N, ... of the run."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=1, description="1-based")
    count: int = Field(ge=1)

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        try:
            shard = cls(index=int(index), count=int(count)) if sep else None
        except ValueError:
            shard = None
        if shard is None or shard.index > shard.count:
            raise ConfigError(
                f"--shard {text!r}: write it as I/N with 1 <= I <= N, e.g. --shard 1/2"
            )
        return shard

    def select(self, problems: list[Problem]) -> list[Problem]:
        return problems[self.index - 1 :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class Grader(Protocol):
    """Checks answers; where the checking runs (threads, a cluster) is the grader's business."""

    async def math(self, final: str, gold: str) -> bool: ...

    async def code(self, final: str, problem: Problem, timeout_s: float) -> CodeGrade: ...


class ThreadGrader:
    """Grading in this process's worker threads, ``threads`` at a time; code only in an
    isolating sandbox unless ``allow_unsandboxed`` (``nsed bench --allow-unsandboxed``)."""

    def __init__(self, threads: int = GRADING_THREADS, *, allow_unsandboxed: bool = False) -> None:
        self._limiter = anyio.CapacityLimiter(threads)
        self._allow_unsandboxed = allow_unsandboxed

    async def math(self, final: str, gold: str) -> bool:
        return await anyio.to_thread.run_sync(grade_math, final, gold, limiter=self._limiter)

    async def code(self, final: str, problem: Problem, timeout_s: float) -> CodeGrade:
        run = partial(
            grade_code,
            final,
            problem,
            timeout_s=timeout_s,
            fail_fast=True,
            allow_unsandboxed=self._allow_unsandboxed,
        )
        return await anyio.to_thread.run_sync(run, limiter=self._limiter)


class RunPlan(BaseModel):
    """A checked run: what every worker of it (process, shard, Ray actor) needs to join it."""

    run_id: str
    options: BenchOptions
    team: TeamSpec
    problems: list[Problem]
    sandbox: str | None = Field(
        default=None, description="the sandbox plan code is graded under; None: no code"
    )


def plan_run(
    options: BenchOptions,
    *,
    store: Store,
    team: TeamLike = None,
    run_id: str | None = None,
    problems: list[Problem] | None = None,
) -> RunPlan:
    """Check ``options`` and the stored run (if resuming), load the problems; no model call."""
    if options.benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {options.benchmark!r}; use one of {', '.join(BENCHMARKS)}"
        )
    methods = parse_methods(options.methods)
    if options.match_compute and "nsed" not in methods:
        raise ConfigError(
            "--match-compute matches the deliberation's tokens: add nsed to --methods"
        )
    options.deliberation_config()  # a bad --config fails here, before anything starts
    if problems is None:
        problems = load_problems(
            options.benchmark, options.data, seed=options.seed, limit=options.limit
        )
    run_id = run_id or new_run_id(options.benchmark)
    check_resume(store, run_id, options)
    # Code is graded in the sandbox: refuse before any model call if it cannot isolate.
    runs_code = any(p.kind == "code" for p in problems)
    sandbox = require_isolation(options.allow_unsandboxed) if runs_code else None
    return RunPlan(
        run_id=run_id,
        options=options,
        team=resolve_team(team),
        problems=problems,
        sandbox=sandbox,
    )


class WorkerBeat:
    """This worker's ``bench_workers`` row, beaten from a daemon thread while it works.

    A beat that cannot be written (a locked database) is logged and skipped: the work goes on,
    and a worker whose beats stop for good shows as stale.
    """

    def __init__(self, store: Store, run_id: str, role: str, problems: int) -> None:
        self.store = store
        self.worker_id = uuid.uuid4().hex
        self.done: Callable[[], int] = lambda: 0
        self._stop = threading.Event()
        with store.transaction() as session:
            session.add(
                BenchWorker(
                    worker_id=self.worker_id,
                    run_id=run_id,
                    role=role,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    problems=problems,
                )
            )
        self._thread = threading.Thread(target=self._beat, name="nsed-bench-beat", daemon=True)
        self._thread.start()

    def _write(self, **fields: Any) -> None:
        with self.store.transaction() as session:
            row = session.get(BenchWorker, self.worker_id)
            if row is not None:
                for name, value in {"heartbeat_at": datetime.now(UTC), **fields}.items():
                    setattr(row, name, value)
                row.done = self.done()
                session.add(row)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except StoreError as exc:
                log.warning("bench worker heartbeat not written: %s", exc)

    def finish(self, status: str, error: str | None = None) -> None:
        """Stop beating and write the end status (StoreError if the database refuses)."""
        self._stop.set()
        self._thread.join(HEARTBEAT_S + 1)
        self._write(status=status, error=error, finished_at=datetime.now(UTC))


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


def _stored_config(run: BenchRun) -> dict[str, Any]:
    """The run's stored options; an unreadable cell is logged and treated as none stored (the
    resume goes on with the options given now, which are written back)."""
    try:
        stored = json_cell(run.config, f"bench_runs {run.run_id!r} (config)", {})
    except CorruptCell as exc:
        log.warning("%s; its options cannot be checked and are replaced by these", exc)
        return {}
    return stored if isinstance(stored, dict) else {}


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
    stored = _stored_config(run)
    now = _run_config(options, 0)
    if isinstance(stored.get("deliberation"), dict):
        # A run stored before protocol presets existed (nsed 0.1) ran protocol v1.
        stored["deliberation"].setdefault("protocol", "v1")
        was = stored["deliberation"]["protocol"]
        if was != now["deliberation"]["protocol"]:
            raise ConfigError(
                f"run {run_id!r} was started with protocol {was}, not "
                f"{now['deliberation']['protocol']}; resume it with protocol = \"{was}\" in "
                "--config, or use a new --run-id"
            )
        # Compare only the fields both versions know.
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
    shard: Shard | None = None,
    grader: Grader | None = None,
) -> BenchSummary:
    """Run (or resume) ``options`` as run ``run_id`` (a new id when None).

    Data and options are checked before any model is started; a run id reused for another
    benchmark, data set or option set is a ConfigError. With ``shard``, only that slice of the
    problems runs here (the other slices: other processes on the same store).
    """
    started = time.perf_counter()
    plan = plan_run(options, store=store, team=team, run_id=run_id, problems=problems)
    mine = shard.select(plan.problems) if shard is not None else plan.problems
    role = f"shard {shard}" if shard is not None else "process"
    async with EndpointPool() as pool:
        bench_team = await open_team(plan, pool)
        labels = record_run(store, plan, bench_team)
        beat = WorkerBeat(store, plan.run_id, role, len(mine))
        runner = _Runner(
            store, plan.run_id, options, bench_team, labels, mine, progress, grader=grader
        )
        beat.done = lambda: runner.done - runner.resumed
        status = "interrupted"  # Ctrl-C, cancellation
        error: str | None = None
        try:
            await runner.run()
            status = "complete" if runner.done == runner.total else "incomplete"
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            close_run(store, plan, labels, beat, status, error)
    return BenchSummary(
        run_id=plan.run_id,
        total=runner.total,
        done=runner.done,
        resumed=runner.resumed,
        complete=status == "complete",
        wall_s=time.perf_counter() - started,
    )


async def open_team(plan: RunPlan, pool: EndpointPool) -> BenchTeam:
    """The run's team on ``pool``: every endpoint checked once, the MoA aggregator seated."""
    bench_team = await BenchTeam.open(plan.team, plan.options.deliberation_config(), pool)
    if plan.options.moa_aggregator is not None:
        bench_team.seat(plan.options.moa_aggregator)
    return bench_team


def record_run(store: Store, plan: RunPlan, bench_team: BenchTeam) -> list[str]:
    """Create or update the run's row; returns the method labels in run order."""
    methods = parse_methods(plan.options.methods)
    labels = _labels(methods, bench_team)
    _record_run(
        store, plan.run_id, plan.options, plan.team, labels, len(plan.problems), plan.sandbox
    )
    return labels


def stored_answers(store: Store, plan: RunPlan, labels: list[str]) -> int:
    """How many of the run's answers (sample 0, these labels and problems) are stored."""
    ids = [p.id for p in plan.problems]
    with store.reading() as session:
        query = select(func.count()).where(
            BenchResult.run_id == plan.run_id,
            BenchResult.sample == 0,
            col(BenchResult.method).in_(labels),
            col(BenchResult.problem_id).in_(ids),
        )
        return int(session.exec(query).one())


def close_run(
    store: Store,
    plan: RunPlan,
    labels: list[str],
    beat: WorkerBeat | None,
    status: str,
    error: str | None = None,
) -> None:
    """Write this worker's end status, and the run's: complete once every answer of the whole
    run is stored (whichever worker stored it), else this worker's status.

    A database that refuses (locked past the busy timeout) is logged, not raised over the
    run's own outcome: the worker's row then stays stale, which is what it shows.
    """
    try:
        if beat is not None:
            beat.finish(status, error)
        whole = stored_answers(store, plan, labels) == len(plan.problems) * len(labels)
        _set_status(store, plan.run_id, "complete" if whole else status)
    except StoreError as exc:
        log.warning("the end status of run %s was not written: %s", plan.run_id, exc)


class SliceOutcome(BaseModel):
    """What :func:`run_problems` did with its problems."""

    total: int = Field(description="answers the slice asks for (problems x methods)")
    done: int = Field(description="answers stored at the end, resumed ones included")
    resumed: int
    correct: int
    prompt_tokens: int
    completion_tokens: int


async def run_problems(
    store: Store,
    plan: RunPlan,
    bench_team: BenchTeam,
    labels: list[str],
    problems: list[Problem],
    *,
    grader: Grader | None = None,
    limiter: anyio.CapacityLimiter | None = None,
    progress: ProgressCallback | None = None,
) -> SliceOutcome:
    """Run (or resume) ``problems``, a part of ``plan``, on an open team: what a Ray actor
    does with each batch it is handed (``limiter`` caps its problems in flight across batches).
    """
    runner = _Runner(
        store,
        plan.run_id,
        plan.options,
        bench_team,
        labels,
        problems,
        progress,
        grader=grader,
        limiter=limiter,
    )
    await runner.run()
    return SliceOutcome(
        total=runner.total,
        done=runner.done,
        resumed=runner.resumed,
        correct=runner.correct,
        prompt_tokens=runner.prompt_tokens,
        completion_tokens=runner.completion_tokens,
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
        stored = _stored_config(run)
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
        *,
        grader: Grader | None = None,
        limiter: anyio.CapacityLimiter | None = None,
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
        self.grader: Grader = grader or ThreadGrader(allow_unsandboxed=options.allow_unsandboxed)
        self.limiter = limiter or anyio.CapacityLimiter(options.concurrency)
        self.total = len(problems) * len(labels)
        self.done = self.resumed = self.correct = 0
        self.prompt_tokens = self.completion_tokens = 0

    # --- storage --------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the stored rows of this worker's problems; drop failed answers (and failed
        samples of unfinished answers), and rows whose JSON detail no longer parses (with the
        answer built on them), so that a resume computes them again."""
        ids = [p.id for p in self.problems]
        with self.store.transaction() as session:
            query = select(BenchResult).where(
                BenchResult.run_id == self.run_id, col(BenchResult.problem_id).in_(ids)
            )
            rows = list(session.exec(query).all())
            unreadable = {r.id for r in rows if not _readable(r)}
            answers = {(r.method, r.problem_id): r for r in rows if r.sample == 0}
            retry = {k for k, r in answers.items() if r.error is not None}
            retry |= {(r.method, r.problem_id) for r in rows if r.id in unreadable}

            def dropped(r: BenchResult) -> bool:
                key = (r.method, r.problem_id)
                if r.id in unreadable or (r.sample == 0 and key in retry):
                    return True
                return r.error is not None and (key in retry or key not in answers)

            drop = [r.id for r in rows if dropped(r)]
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
            values = row.model_dump(exclude={"id"})
            insert_or_ignore(session, BenchResult, values, RESULT_KEY)
            where = [getattr(BenchResult, k) == values[k] for k in RESULT_KEY]
            row = session.exec(select(BenchResult).where(*where)).one()
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
            ok = await self.grader.math(final, problem.answer or "")
            return bool(ok), {}
        grade = await self.grader.code(final, problem, self.options.code_timeout_s)
        info: dict[str, Any] = {"passed": grade.passed, "tests": grade.total}
        if grade.first_failure:
            info["first_failure"] = grade.first_failure
        return grade.correct, info

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._load()
        self._emit()

        async def one(problem: Problem) -> None:
            async with self.limiter:
                await self._problem(problem)

        try:
            async with anyio.create_task_group() as tg:
                for problem in self.problems:
                    if all((label, problem.id, 0) in self.rows for label in self.labels):
                        continue
                    tg.start_soon(one, problem)
        except BaseExceptionGroup as group:  # the first nsed error, as the user should see it
            first = _first_error(group)
            if isinstance(first, NsedError):
                raise first from None
            raise

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
            detail = json_cell(row.detail, "", {})  # parsed in _load
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


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf of nested task-group errors."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


def _readable(row: BenchResult) -> bool:
    try:
        json_cell(row.detail, f"bench_results id {row.id} (detail)", {})
    except CorruptCell as exc:
        log.warning("%s; a resume computes it again", exc)
        return False
    return True


def _short(text: str | None, limit: int = 200) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


__all__ = [
    "HEARTBEAT_S",
    "STALE_AFTER_S",
    "BenchOptions",
    "BenchProgress",
    "BenchSummary",
    "Grader",
    "ProgressCallback",
    "RunPlan",
    "Shard",
    "SliceOutcome",
    "ThreadGrader",
    "WorkerBeat",
    "check_resume",
    "close_run",
    "new_run_id",
    "open_team",
    "plan_run",
    "record_run",
    "run_benchmark",
    "run_problems",
    "stored_answers",
    "team_record",
]
