"""The methods a benchmark compares, all on one team, one connection pool and one prompt set.

* ``nsed``: a full deliberation through :class:`~nsed.council.Council`, exactly what
  ``deliberate()`` runs (team resolution, preflight, agents, the round loop), on the
  benchmark's shared connection pool.
* ``single:<agent>``: one agent alone. Its call is exactly that agent's round-1 proposal (same
  system prompt, same proposing prompt, same parsing), so "deliberation vs its members" compares
  like with like.
* ``vote``: self-consistency. Independent round-1 proposals drawn across the team's agents
  round-robin, each draw of an agent with a fresh seed, majority over the normalised finals;
  ties go to the answer that appeared first.
* ``moa``: Mixture-of-Agents. Every agent proposes once, then one aggregator (the first agent
  unless configured) reads all proposals and writes the final answer
  (:meth:`~nsed.agents.agent.Agent.aggregate`; its prompts are in :mod:`nsed.agents.prompts`).

Compute matching (``--match-compute``): a baseline keeps drawing samples until its cumulative
completion tokens reach what the deliberation spent on the same problem (at least one sample),
so its overshoot is below one sample. ``single:<agent>`` with several samples answers with the
majority of its samples (ties: the first sample), exactly like ``vote`` restricted to one agent;
the first sample's own answer stays in the result detail. ``moa`` has a fixed shape (n
proposals + 1 aggregation) and is not matched.

Every call goes through :class:`~nsed.agents.agent.Agent` on the backends of one
:class:`BenchTeam`. This module only calls models and counts; grading and storing are the
runner's job. ``nsed simulate`` uses the same vote (:func:`draw_samples`, :func:`majority`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from pydantic import BaseModel, Field

from nsed.agents.agent import Agent
from nsed.agents.backend import ChatBackend, Completion, EndpointPool
from nsed.agents.parsing import normalize_final
from nsed.benchmarks.feedback import PublicTestChecker
from nsed.config import AgentSpec, DeliberationConfig, TeamSpec
from nsed.council import Council, make_agent, make_backend, preflight
from nsed.errors import ConfigError, NsedError
from nsed.problems import Problem
from nsed.results import Deliberation, Proposal

METHOD_NAMES: tuple[str, ...] = ("nsed", "single", "vote", "moa")
SINGLE_PREFIX = "single:"
SEED_STRIDE = 100_003  # seed offset between two draws of one agent (a prime, far from 10*round)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"nsed,single,vote"`` -> ``["nsed", "single", "vote"]``, checked, duplicates removed.

    ``single`` expands later to one ``single:<agent>`` per seat; ``single:<agent>`` picks one.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    methods: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        one_agent = name.startswith(SINGLE_PREFIX) and len(name) > len(SINGLE_PREFIX)
        if name not in METHOD_NAMES and not one_agent:
            raise ConfigError(
                f"unknown method {name!r} in --methods; valid methods are "
                f"{', '.join(METHOD_NAMES)} (or single:<agent name>), comma-separated"
            )
        if name not in methods:
            methods.append(name)
    if not methods:
        raise ConfigError("--methods is empty: name at least one of " + ", ".join(METHOD_NAMES))
    return methods


# --- What a method returns ----------------------------------------------------------------------


class Sample(BaseModel):
    """One independent proposal (a baseline's unit of compute)."""

    index: int = Field(ge=1, description="1-based draw number within (method, problem)")
    agent: str
    seed: int | None = None
    final: str | None = None
    answer: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    error: str | None = None


class Vote(BaseModel):
    """The majority over samples: the winning normalised final and who said it first."""

    final: str | None
    first_index: int | None = Field(description="index of the first sample with that final")
    counts: list[int] = Field(default_factory=list, description="votes per distinct final")


def majority(samples: Sequence[Sample], kind: str) -> Vote:
    """Majority over the normalised finals of ``samples`` (in draw order); ties -> the first.

    Samples without a final (unparseable, failed) do not vote.
    """
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for sample in sorted(samples, key=lambda s: s.index):
        if not sample.final:
            continue
        key = normalize_final(sample.final, kind)  # type: ignore[arg-type]
        counts[key] += 1
        first.setdefault(key, sample.index)
    if not counts:
        return Vote(final=None, first_index=None)
    best = max(counts.values())
    winner = min((k for k, c in counts.items() if c == best), key=lambda k: first[k])
    return Vote(final=winner, first_index=first[winner], counts=sorted(counts.values())[::-1])


def next_wave(
    *,
    drawn: int,
    spent: int,
    k: int | None,
    target: int | None,
    bound: int | None,
    max_samples: int,
) -> int:
    """How many samples to draw next (concurrently); 0 means stop.

    With a fixed ``k``: the rest of the k. With a token ``target``: stop once ``spent`` reaches
    it (after at least one sample); otherwise draw ``floor((target - spent) / bound) + 1``
    samples, where ``bound`` is the most completion tokens one sample can take (its
    ``max_tokens``). All but one of them fit below the target even if each hits the bound, so
    the final overshoot is at most the smallest sample of the last wave. Without a bound,
    samples are drawn one at a time.
    """
    room = max_samples - drawn
    if room <= 0:
        return 0
    if target is None:
        return max(0, min((k or 1) - drawn, room))
    if drawn >= 1 and spent >= target:
        return 0
    if not bound or bound <= 0:
        return 1
    return min(room, max(0, target - spent) // bound + 1)


# --- The team, opened once per benchmark run ----------------------------------------------------


class BenchTeam:
    """The team's live seats and backends on one shared pool, and the Council that deliberates.

    Every method gets its agents here, so a baseline's call goes through exactly the backend,
    limiter and prompts that the deliberation's proposals use; the deliberation itself is a
    ``Council.run`` on the same pool, so it is what users get from ``deliberate()``.
    """

    def __init__(
        self,
        team: TeamSpec,
        seats: list[AgentSpec],
        backends: dict[str, ChatBackend],
        config: DeliberationConfig,
        pool: EndpointPool,
    ) -> None:
        self.team = team
        self.seats = seats
        self.backends = backends
        self.config = config
        self.council = Council(team, config, pool=pool)

    @classmethod
    async def open(
        cls, team: TeamSpec, config: DeliberationConfig, pool: EndpointPool
    ) -> BenchTeam:
        """Check every endpoint once and keep the seats that answer (at least two)."""
        seats = team.agents()
        backends = {seat.name: make_backend(seat, pool, config.call_timeout_s) for seat in seats}
        live = await preflight(seats, backends)
        return cls(team, live, {s.name: backends[s.name] for s in live}, config, pool)

    @property
    def names(self) -> list[str]:
        return [seat.name for seat in self.seats]

    def seat(self, name: str) -> AgentSpec:
        for seat in self.seats:
            if seat.name == name:
                return seat
        raise ConfigError(
            f"no agent named {name!r} in the team (agents: {', '.join(self.names)}); "
            "check single:<agent> or the MoA aggregator name"
        )

    def max_tokens(self, seat: AgentSpec) -> int | None:
        """The completion cap of one call of ``seat`` (as the Agent applies it)."""
        return seat.spec.max_tokens or self.config.max_tokens

    def config_for(self, problem: Problem) -> DeliberationConfig:
        return self.config.model_copy(update={"kind": problem.kind})

    def agent(self, seat: AgentSpec, problem: Problem, *, draw: int = 0, seed: int = 0) -> Agent:
        """An agent for ``seat``; draw 0 is the seat itself, draw d > 0 re-seeds it."""
        if draw > 0:
            base = (seat.seed or 0) + seed
            seat = seat.model_copy(update={"seed": base + SEED_STRIDE * draw})
        return make_agent(seat, self.backends[seat.name], self.config_for(problem))


# --- nsed -----------------------------------------------------------------------------------


async def deliberate_problem(team: BenchTeam, problem: Problem) -> Deliberation:
    """One full deliberation on ``problem``: ``Council.run``, as ``deliberate()`` does it,
    with execution feedback on the problem's public tests for code."""
    checker = PublicTestChecker.from_problem(problem)
    return await team.council.run(problem.prompt, config=team.config_for(problem), checker=checker)


def round_one_tokens(result: Deliberation) -> dict[str, int]:
    """Completion tokens of each agent's round-1 proposal: the size of one baseline sample."""
    if not result.rounds:
        return {}
    return {p.agent: p.completion_tokens for p in result.rounds[0].proposals}


# --- Sampling baselines -------------------------------------------------------------------------


async def propose_once(
    team: BenchTeam, seat: AgentSpec, problem: Problem, *, index: int, draw: int, seed: int = 0
) -> Sample:
    """One round-1 proposal of ``seat`` (re-seeded for draw > 0); a failed call is a Sample
    with ``error`` set and no tokens, never an exception."""
    agent = team.agent(seat, problem, draw=draw, seed=seed)
    started = time.perf_counter()
    try:
        proposal, completion = await agent.propose(problem.prompt, round_index=1, state_view=None)
    except NsedError as exc:
        return _failed(index, agent, started, exc)
    return _sample(index, agent, proposal, completion)


def _sample(index: int, agent: Agent, proposal: Proposal, completion: Completion) -> Sample:
    return Sample(
        index=index,
        agent=agent.name,
        seed=agent.seat.seed,
        final=proposal.final,
        answer=proposal.answer,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=completion.cost_usd,
        latency_s=completion.latency_s,
    )


def _failed(index: int, agent: Agent, started: float, exc: NsedError) -> Sample:
    return Sample(
        index=index,
        agent=agent.name,
        seed=agent.seat.seed,
        latency_s=time.perf_counter() - started,
        error=str(exc) or type(exc).__name__,
    )


SampleSink = Callable[[Sample], Awaitable[None]]


async def draw_samples(
    team: BenchTeam,
    problem: Problem,
    seats: Sequence[AgentSpec],
    *,
    existing: Sequence[Sample] = (),
    k: int | None = None,
    target_tokens: int | None = None,
    max_samples: int = 64,
    seed: int = 0,
    on_sample: SampleSink | None = None,
) -> list[Sample]:
    """Draw samples round-robin over ``seats`` (sample i -> seats[(i-1) % n], draw (i-1)//n)
    until ``k`` samples exist or their completion tokens reach ``target_tokens`` (waves sized
    by :func:`next_wave` so the overshoot stays below one sample).

    ``existing`` are samples already stored (a resumed run): they count and are not redrawn.
    Each new sample is handed to ``on_sample`` as soon as it exists. Drawing stops early when a
    whole wave fails (the endpoint is down: more calls would only fail too).
    """
    if not seats:
        raise ConfigError("no agents to sample from")
    samples = sorted(existing, key=lambda s: s.index)
    bounds = [team.max_tokens(seat) for seat in seats]
    bound = None if None in bounds else max(b for b in bounds if b is not None)
    while True:
        wave = next_wave(
            drawn=len(samples),
            spent=sum(s.completion_tokens for s in samples),
            k=k,
            target=target_tokens,
            bound=bound,
            max_samples=max_samples,
        )
        if wave <= 0:
            return samples
        # The lowest free indices: a resumed run fills the gaps left by calls that were in
        # flight when it was killed, so index -> (seat, draw, seed) stays the same.
        taken = {s.index for s in samples}
        indices = [i for i in range(1, len(samples) + wave + 1) if i not in taken][:wave]
        fresh: list[Sample] = []

        async def one(index: int, out: list[Sample]) -> None:
            seat = seats[(index - 1) % len(seats)]
            sample = await propose_once(
                team, seat, problem, index=index, draw=(index - 1) // len(seats), seed=seed
            )
            out.append(sample)
            if on_sample is not None:
                await on_sample(sample)

        async with anyio.create_task_group() as tg:
            for index in indices:
                tg.start_soon(one, index, fresh)
        samples = sorted([*samples, *fresh], key=lambda s: s.index)
        if all(s.error is not None for s in fresh):
            return samples


# --- Mixture-of-Agents ----------------------------------------------------------------------


async def aggregate(
    team: BenchTeam, aggregator: AgentSpec, problem: Problem, proposals: Sequence[Sample]
) -> Sample:
    """The aggregator's one call over the proposals that did not fail."""
    index = len(proposals) + 1
    attempts = [s.answer for s in sorted(proposals, key=lambda s: s.index) if s.error is None]
    if not attempts:
        return Sample(index=index, agent=aggregator.name, error="no proposals")
    agent = team.agent(aggregator, problem)
    limit = team.config_for(problem).candidate_chars
    started = time.perf_counter()
    try:
        proposal, completion = await agent.aggregate(problem.prompt, attempts, limit=limit)
    except NsedError as exc:
        return _failed(index, agent, started, exc)
    return _sample(index, agent, proposal, completion)


def sample_detail(sample: Sample) -> dict[str, Any]:
    """What a stored sample row keeps beyond its columns (enough to resume from it)."""
    return {"agent": sample.agent, "seed": sample.seed, "answer": sample.answer[:8000]}


__all__ = [
    "METHOD_NAMES",
    "SINGLE_PREFIX",
    "BenchTeam",
    "Sample",
    "Vote",
    "aggregate",
    "deliberate_problem",
    "draw_samples",
    "majority",
    "next_wave",
    "parse_methods",
    "propose_once",
    "round_one_tokens",
    "sample_detail",
]
