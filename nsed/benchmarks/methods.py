"""The methods a benchmark compares, all on one team, one connection pool and one prompt set.

* ``nsed``: a full deliberation (:func:`nsed.orchestrator.loop.run_deliberation`).
* ``single:<agent>``: one agent alone. Its call is exactly that agent's round-1 proposal (same
  system prompt, same proposing prompt, same parsing), so "deliberation vs its members" compares
  like with like.
* ``vote``: self-consistency. Independent round-1 proposals drawn across the team's agents
  round-robin, each draw of an agent with a fresh seed, majority over the normalised finals;
  ties go to the answer that appeared first.
* ``moa``: Mixture-of-Agents. Every agent proposes once, then one aggregator (the first agent
  unless configured) reads all proposals and writes the final answer.

Compute matching (``--match-compute``): a baseline keeps drawing samples until its cumulative
completion tokens reach what the deliberation spent on the same problem (at least one sample),
so its overshoot is below one sample. ``single:<agent>`` with several samples answers with the
majority of its samples (ties: the first sample), exactly like ``vote`` restricted to one agent;
the first sample's own answer stays in the result detail. ``moa`` has a fixed shape (n
proposals + 1 aggregation) and is not matched.

This module only calls models and counts; grading and storing are the runner's job.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from pydantic import BaseModel, Field

from nsed.agents import prompts
from nsed.agents.agent import Agent
from nsed.agents.backend import ChatBackend, EndpointPool
from nsed.agents.parsing import normalize_final, parse_proposal
from nsed.config import AgentSpec, DeliberationConfig, TeamSpec
from nsed.council import _preflight, make_backend, validate_question
from nsed.errors import ConfigError, NsedError
from nsed.orchestrator.loop import run_deliberation
from nsed.orchestrator.similarity import Embedder, get_embedder
from nsed.problems import Problem
from nsed.results import Deliberation

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
    """The team's live seats and backends on one shared pool, plus one embedder.

    Every method gets its agents here, so a baseline's call goes through exactly the backend,
    limiter and prompts that the deliberation's proposals use.
    """

    def __init__(
        self,
        team: TeamSpec,
        seats: list[AgentSpec],
        backends: dict[str, ChatBackend],
        config: DeliberationConfig,
        embedder: Embedder,
    ) -> None:
        self.team = team
        self.seats = seats
        self.backends = backends
        self.config = config
        self.embedder = embedder

    @classmethod
    async def open(
        cls, team: TeamSpec, config: DeliberationConfig, pool: EndpointPool
    ) -> BenchTeam:
        """Check every endpoint once and keep the seats that answer (at least two)."""
        seats = team.agents()
        backends = {seat.name: make_backend(seat, pool) for seat in seats}
        live = await _preflight(seats, backends)
        embedder = await anyio.to_thread.run_sync(get_embedder, config.embeddings)
        return cls(team, live, {s.name: backends[s.name] for s in live}, config, embedder)

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
        cfg = self.config_for(problem)
        return Agent(
            seat,
            self.backends[seat.name],
            kind=cfg.kind,
            max_rounds=cfg.max_rounds,
            max_tokens=cfg.max_tokens,
            context=cfg.system_context,
        )


# --- nsed -----------------------------------------------------------------------------------


async def deliberate_problem(team: BenchTeam, problem: Problem) -> Deliberation:
    """One full deliberation of the whole live team on ``problem``."""
    cfg = team.config_for(problem)
    question = validate_question(problem.prompt, cfg)
    agents = [team.agent(seat, problem) for seat in team.seats]
    return await run_deliberation(question, agents, cfg, embedder=team.embedder)


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
        return Sample(
            index=index,
            agent=seat.name,
            seed=agent.seat.seed,
            latency_s=time.perf_counter() - started,
            error=str(exc) or type(exc).__name__,
        )
    return Sample(
        index=index,
        agent=seat.name,
        seed=agent.seat.seed,
        final=proposal.final,
        answer=proposal.answer,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=completion.cost_usd,
        latency_s=completion.latency_s,
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

AGGREGATOR_HEADER = "[Aggregating]"

_AGGREGATOR_KIND_RULES = {
    "math": "End your answer with the final result written as \\boxed{...}.",
    "code": "Your answer must contain the complete program as one fenced ```python code block.",
    "text": "Start your answer with the direct answer in one sentence.",
}


def aggregator_system_prompt(kind: str) -> str:
    """The aggregator's system message: a synthesiser, not a voter."""
    return "\n\n".join(
        [
            "You receive a task and several independent attempts at it, written by other "
            "solvers. Your job is to produce the single best answer.",
            "The attempts may disagree and any of them, or all of them, may be wrong. Check "
            "the key steps yourself; do not side with the majority without verifying, and "
            "do not copy an attempt blindly. Combine the correct parts and fix the errors.",
            _AGGREGATOR_KIND_RULES.get(kind, _AGGREGATOR_KIND_RULES["text"]),
            "Always reply with a single JSON object and nothing else.",
        ]
    )


def aggregator_prompt(question: str, attempts: Sequence[str], *, limit: int = 4000) -> str:
    """The aggregator's user message: the task, then the attempts as numbered blocks."""
    blocks = []
    for i, text in enumerate(attempts, start=1):
        clipped = text if len(text) <= limit else text[:limit] + "…"
        blocks.append(f"--- Attempt {i} ---\n{clipped.strip()}")
    return "\n\n".join(
        [
            AGGREGATOR_HEADER,
            f"Task:\n{question}",
            "Independent attempts:\n" + "\n\n".join(blocks) + "\n--- End of attempts ---",
            "Write the best final solution to the task.",
            'Reply as a JSON object with two string fields: "reasoning" holds your check of the '
            'attempts and your own work, and "answer" holds your complete final answer.',
        ]
    )


async def aggregate(
    team: BenchTeam, aggregator: AgentSpec, problem: Problem, proposals: Sequence[Sample]
) -> Sample:
    """The aggregator's one call over the proposals that did not fail."""
    cfg = team.config_for(problem)
    attempts = [s.answer for s in sorted(proposals, key=lambda s: s.index) if s.error is None]
    if not attempts:
        return Sample(index=len(proposals) + 1, agent=aggregator.name, error="no proposals")
    messages = [
        {"role": "system", "content": aggregator_system_prompt(cfg.kind)},
        {
            "role": "user",
            "content": aggregator_prompt(problem.prompt, attempts, limit=cfg.candidate_chars),
        },
    ]
    backend = team.backends[aggregator.name]
    started = time.perf_counter()
    try:
        completion = await backend.complete(
            messages,
            temperature=aggregator.temperature,
            max_tokens=aggregator.spec.max_tokens or cfg.max_tokens,
            seed=aggregator.seed,
            schema=prompts.proposal_schema(),
            schema_name=prompts.PROPOSAL_SCHEMA_NAME,
        )
    except NsedError as exc:
        return Sample(
            index=len(proposals) + 1,
            agent=aggregator.name,
            latency_s=time.perf_counter() - started,
            error=str(exc) or type(exc).__name__,
        )
    parsed = parse_proposal(completion.text, cfg.kind)
    return Sample(
        index=len(proposals) + 1,
        agent=aggregator.name,
        seed=aggregator.seed,
        final=parsed.final,
        answer=parsed.answer,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=completion.cost_usd,
        latency_s=completion.latency_s,
    )


def sample_detail(sample: Sample) -> dict[str, Any]:
    """What a stored sample row keeps beyond its columns (enough to resume from it)."""
    return {"agent": sample.agent, "seed": sample.seed, "answer": sample.answer[:8000]}


__all__ = [
    "AGGREGATOR_HEADER",
    "METHOD_NAMES",
    "SINGLE_PREFIX",
    "BenchTeam",
    "Sample",
    "Vote",
    "aggregate",
    "aggregator_prompt",
    "aggregator_system_prompt",
    "deliberate_problem",
    "draw_samples",
    "majority",
    "next_wave",
    "parse_methods",
    "propose_once",
    "round_one_tokens",
    "sample_detail",
]
