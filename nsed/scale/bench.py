"""``nsed bench ... --ray``: a benchmark run spread over Ray actors, stored as if run in one.

The driver (the ``nsed bench`` process) checks the run exactly like the single-process runner
(:func:`~nsed.benchmarks.runner.plan_run`: options, data, the stored run when resuming), opens
the team once to learn the live seats, records the run, and computes which problems still lack
an answer. It then starts ``actors`` :class:`BenchActor` actors and keeps each busy with two
batches of up to ``concurrency`` problems at a time (one running, one queued), handed out
round-robin first, so a slow problem holds up nothing but its own batch slot.

Each actor, for the whole run, has its own :class:`~nsed.agents.backend.EndpointPool` and
team, its own database connection, its own ``bench_workers`` row and heartbeat, and a limit of
``concurrency`` problems in flight; it runs each batch with
:func:`~nsed.benchmarks.runner.run_problems`, the very code of the single-process runner, so
every result is written the moment it exists, in its own transaction, keyed and never twice.
Code grading is a Ray task with ``num_cpus`` (:class:`RayGrader`), scheduled anywhere in the
cluster.

Failure: actors belong to the driver. If the driver dies (Ctrl-C, kill -9), Ray ends its
actors; what they stored stays stored, calls in flight are lost, and running the same command
again resumes: 0 lost, 0 duplicated. An actor that dies ends the run with an error that says
to resume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import anyio
from sqlmodel import select

from nsed.agents.backend import EndpointPool
from nsed.benchmarks.grading import CodeGrade, grade_code
from nsed.benchmarks.methods import BenchTeam
from nsed.benchmarks.runner import (
    BenchOptions,
    BenchProgress,
    BenchSummary,
    ProgressCallback,
    RunPlan,
    SliceOutcome,
    ThreadGrader,
    WorkerBeat,
    close_run,
    open_team,
    plan_run,
    record_run,
    run_problems,
)
from nsed.council import TeamLike
from nsed.errors import BackendError
from nsed.problems import Problem
from nsed.scale.cluster import connect
from nsed.store import BenchResult, Store

ACTOR_CPUS = 1.0  # what one actor reserves: its event loop, prompts, parsing, voting
GRADING_CPUS = 1.0  # what one code-grading task reserves (one sandboxed process at a time)
BATCHES_IN_FLIGHT = 2  # per actor: one running, one queued


def _grade_code(
    final: str, problem: Problem, timeout_s: float, allow_unsandboxed: bool
) -> CodeGrade:
    return grade_code(
        final, problem, timeout_s=timeout_s, fail_fast=True, allow_unsandboxed=allow_unsandboxed
    )


class RayGrader:
    """Code grading as Ray tasks (``GRADING_CPUS`` each); math stays in the actor's threads
    (it takes microseconds, a task would cost more than it saves). Each task's node must
    isolate the code unless ``allow_unsandboxed``."""

    def __init__(self, cpus: float = GRADING_CPUS, *, allow_unsandboxed: bool = False) -> None:
        import ray

        self._task = ray.remote(num_cpus=cpus, max_retries=1)(_grade_code)
        self._threads = ThreadGrader()
        self._allow_unsandboxed = allow_unsandboxed

    async def math(self, final: str, gold: str) -> bool:
        return await self._threads.math(final, gold)

    async def code(self, final: str, problem: Problem, timeout_s: float) -> CodeGrade:
        return await self._task.remote(final, problem, timeout_s, self._allow_unsandboxed)


class BenchActor:
    """One Ray actor of a run: a team, a pool and a store connection for the whole run."""

    def __init__(self, plan_json: str, store_url: str, role: str) -> None:
        self.plan = RunPlan.model_validate_json(plan_json)
        self.by_id = {p.id: p for p in self.plan.problems}
        self.store = Store(store_url)
        self.role = role
        self.pool: EndpointPool | None = None
        self.team: BenchTeam | None = None
        self.labels: list[str] = []
        self.beat: WorkerBeat | None = None
        self.limiter = anyio.CapacityLimiter(self.plan.options.concurrency)
        self.grader = RayGrader(allow_unsandboxed=self.plan.options.allow_unsandboxed)
        self.stored = 0
        self._opening = anyio.Lock()

    async def _open(self) -> BenchTeam:
        async with self._opening:
            if self.team is None:
                self.pool = EndpointPool()
                await self.pool.__aenter__()
                self.team = await open_team(self.plan, self.pool)
                self.labels = record_run(self.store, self.plan, self.team)
                self.beat = WorkerBeat(self.store, self.plan.run_id, self.role, 0)
                self.beat.done = lambda: self.stored
        return self.team

    async def run(self, problem_ids: list[str]) -> SliceOutcome:
        team = await self._open()
        problems = [self.by_id[pid] for pid in problem_ids]
        outcome = await run_problems(
            self.store,
            self.plan,
            team,
            self.labels,
            problems,
            grader=self.grader,
            limiter=self.limiter,
        )
        self.stored += outcome.done - outcome.resumed
        return outcome

    async def close(self, status: str) -> None:
        """Write this actor's end status and close its pool (the driver calls it last)."""
        if self.beat is not None:
            self.beat.finish(status)
        if self.pool is not None:
            await self.pool.aclose()
        self.store.dispose()


def _pending(store: Store, plan: RunPlan, labels: list[str]) -> tuple[list[Problem], int]:
    """Problems that still lack an answer (or whose answer failed), and answers stored."""
    wanted = {p.id for p in plan.problems}
    with store.reading() as session:
        rows = session.exec(
            select(BenchResult.method, BenchResult.problem_id, BenchResult.error).where(
                BenchResult.run_id == plan.run_id, BenchResult.sample == 0
            )
        ).all()
    good = {(m, pid) for m, pid, error in rows if error is None and pid in wanted}
    pending = [p for p in plan.problems if any((m, p.id) not in good for m in labels)]
    return pending, sum(1 for m, _ in good if m in labels)


def _batches(problems: list[Problem], size: int) -> Iterator[list[str]]:
    for start in range(0, len(problems), size):
        yield [p.id for p in problems[start : start + size]]


async def run_on_ray(
    options: BenchOptions,
    *,
    store: Store,
    team: TeamLike = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    problems: list[Problem] | None = None,
    address: str = "auto",
    actors: int = 2,
) -> BenchSummary:
    """Run (or resume) ``options`` as run ``run_id`` on the Ray cluster at ``address``."""
    started = time.perf_counter()
    plan = plan_run(options, store=store, team=team, run_id=run_id, problems=problems)
    ray = connect(address)
    async with EndpointPool() as pool:  # the live seats decide the method labels
        labels = record_run(store, plan, await open_team(plan, pool))
    pending, resumed = _pending(store, plan, labels)
    total = len(plan.problems) * len(labels)
    beat = WorkerBeat(store, plan.run_id, "ray driver", len(pending))
    tally: dict[str, int] = {"done": resumed, "correct": 0, "prompt": 0, "completion": 0}
    beat.done = lambda: tally["done"] - resumed

    def emit() -> None:
        if progress is not None:
            progress(
                BenchProgress(
                    run_id=plan.run_id,
                    total=total,
                    done=tally["done"],
                    resumed=resumed,
                    correct=tally["correct"],
                    prompt_tokens=tally["prompt"],
                    completion_tokens=tally["completion"],
                )
            )

    emit()
    n = max(1, min(actors, len(pending)))
    actor_class = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=0)(BenchActor)
    plan_ref = ray.put(plan.model_dump_json())  # in the object store once, not once per actor
    handles: list[Any] = [
        actor_class.remote(plan_ref, store.url, f"ray actor {i + 1}/{n}") for i in range(n)
    ]
    size = max(1, min(options.concurrency, -(-len(pending) // n)))  # every actor gets work
    batches = _batches(pending, size)

    async def feed(actor: Any) -> None:
        for batch in batches:  # one shared iterator: every batch goes to exactly one actor
            outcome: SliceOutcome = await _result(actor.run.remote(batch))
            tally["done"] += outcome.done - outcome.resumed
            tally["correct"] += outcome.correct
            tally["prompt"] += outcome.prompt_tokens
            tally["completion"] += outcome.completion_tokens
            emit()

    status, error = "interrupted", None
    try:
        if pending:
            async with anyio.create_task_group() as tg:
                for _ in range(BATCHES_IN_FLIGHT):
                    for actor in handles:  # round-robin: the first batches go to every actor
                        tg.start_soon(feed, actor)
        status = "complete" if tally["done"] == total else "incomplete"
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        with anyio.CancelScope(shield=True):
            for actor in handles:
                with contextlib.suppress(BackendError):  # a dead actor's row stays stale
                    await _result(actor.close.remote(status))
                ray.kill(actor)
        close_run(store, plan, labels, beat, status, error)
    return BenchSummary(
        run_id=plan.run_id,
        total=total,
        done=tally["done"],
        resumed=resumed,
        complete=status == "complete",
        wall_s=time.perf_counter() - started,
    )


async def _result(ref: Any) -> Any:
    """The value of an actor call; a dead actor becomes a BackendError that says to resume."""
    from ray.exceptions import RayActorError

    try:
        return await ref
    except RayActorError as exc:
        raise BackendError(
            f"a Ray actor of the run died ({str(exc).splitlines()[0][:200]}); what it stored "
            "is kept: run the same command again to resume"
        ) from None


__all__ = ["ACTOR_CPUS", "GRADING_CPUS", "BenchActor", "RayGrader", "run_on_ray"]
