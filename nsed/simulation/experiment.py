"""Simulation experiments: aggregation methods on simulated agents of known competence.

For each setting of a grid (protocol, team size, p_g, p_v, revise, sycophancy, fatigue,
correlation, adversary, rounds, qv_mode, γ) every problem of a quick set is deliberated by a team of
simulated agents (:mod:`nsed.agents.simulated`) through the real
:class:`~nsed.council.Council`, in-process or over HTTP (:mod:`nsed.simulation.server`).
Deliberations run a fixed R rounds (``min_rounds = max_rounds = R``) so that the winner of
every round gives the accuracy curve.

Methods, all graded against the gold answer:

* ``nsed``: the deliberation's answer after R rounds; ``nsed_auto``: the answer the
  protocol's online stopping rules (min 2 rounds, unanimity, and the ``stopping`` rule of its
  ``protocol``: v2 marginal gain, v1 efficiency-fatigue evidence) would have returned, replayed
  on the same rounds (the rounds before a stop never depend on later ones), with the mean
  rounds it used;
* ``single``: the first seat's round-1 proposal (every honest seat has the same p_g);
* ``vote``: compute-matched majority vote of k independent round-1 proposals, k = the
  deliberation's mean number of calls (``match="calls"``) or its mean completion tokens over
  the mean completion tokens of one proposal (``match="tokens"``). It is the benchmark's own
  vote baseline (:func:`nsed.benchmarks.methods.draw_samples` and ``majority``): sample i is
  drawn from seat (i − 1) mod n with a fresh seed per draw, ties go to the answer sampled
  first; ``vote_auto``: the same vote matched to ``nsed_auto``'s mean calls (its samples are
  the first k of the same draws);
* aggregators on the same round-1 proposals and reviews: ``majority_r1`` (the same
  ``majority`` over the round-1 finals, in seat order), ``mean_rank`` (llm-council: each
  reviewer ranks what it scored, lowest mean rank wins) and ``conf_vote`` (ReConcile-style
  confidence-weighted vote, with the mean peer score mapped to [0, 1] as the confidence,
  because the protocol asks for no self-confidence).

The accuracy curve is fitted with U(t) (:func:`nsed.orchestrator.stopping.fit_fatigue`) twice:
``fit`` over t = 0..R, where t = 0 is a generator alone (mean accuracy of all round-1
proposals, so U(0) = p_g is pinned by data), and ``fit_rounds`` over the rounds t = 1..R only
(the paper's way, which lets p_g float); each with R² and T_opt. Throughput is measured over
the deliberations only: deliberations/s, calls/s and this process's CPU time per call (with
``http`` the agents run in a child process, so that is the orchestrator's own CPU).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nsed.agents.backend import EndpointPool
from nsed.agents.parsing import answer_key
from nsed.agents.simulated import Persona, SimProfile, sim_query
from nsed.benchmarks.grading import grade_math
from nsed.benchmarks.methods import BenchTeam, Sample, draw_samples, majority
from nsed.config import (
    DeliberationConfig,
    ProtocolVersion,
    QVMode,
    TeamSpec,
    format_validation_error,
)
from nsed.council import Council
from nsed.errors import ConfigError
from nsed.orchestrator.stopping import (
    FatigueParams,
    StopInputs,
    UnanimityStreak,
    fit_fatigue,
    should_stop,
)
from nsed.problems import Problem, generate_quick
from nsed.results import Deliberation, RoundRecord

METHODS: tuple[str, ...] = (
    "single",
    "majority_r1",
    "mean_rank",
    "conf_vote",
    "vote",
    "nsed",
    "vote_auto",
    "nsed_auto",
)
GRID_KEYS: tuple[str, ...] = (
    "protocol",
    "agents",
    "p_g",
    "p_v",
    "revise",
    "sycophancy",
    "fatigue",
    "correlation",
    "adversary",
    "rounds",
    "qv_mode",
    "gamma",
)
ProgressFn = Callable[[int, int, int], None]  # (setting index, done, total)


# --- Inputs -----------------------------------------------------------------------------------


class SimSetting(BaseModel):
    """One point of the grid: the team and the protocol settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: ProtocolVersion = "v2"
    agents: int = Field(default=3, ge=2, le=26)
    p_g: float = Field(default=0.5, ge=0, le=1)
    p_v: float = Field(default=0.8, ge=0, le=1)
    revise: float = Field(default=0.3, ge=0, le=1)
    sycophancy: float = Field(default=0.05, ge=0, le=1)
    fatigue: float = Field(default=0.0, ge=0, le=1)
    correlation: float = Field(default=0.0, ge=0, le=1)
    adversary: Persona = Field(default="honest", description="persona of the last seat")
    rounds: int = Field(default=6, ge=1, le=50)
    qv_mode: QVMode | None = Field(default=None, description="None: the protocol's")
    gamma: float = Field(default=0.5, ge=0, le=1)
    latency_ms: float = Field(default=0.0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)

    def profile(self, seat: int, seed: int) -> SimProfile:
        persona = self.adversary if seat == self.agents - 1 else "honest"
        return SimProfile(
            p_g=self.p_g,
            p_v=self.p_v,
            revise=self.revise,
            sycophancy=self.sycophancy,
            fatigue=self.fatigue,
            correlation=self.correlation,
            persona=persona,
            latency_ms=self.latency_ms,
            fail_rate=self.fail_rate,
            seed=seed,
        )


class SimOptions(BaseModel):
    """How to run: how many problems, the seed, the transport and the concurrency."""

    model_config = ConfigDict(extra="forbid")

    problems: int = Field(default=1000, ge=1, le=200_000)
    seed: int = 0
    http: bool = False
    concurrency: int = Field(default=100, ge=1, le=10_000, description="deliberations at once")
    match: Literal["calls", "tokens"] = "calls"
    http_connections: int = Field(
        default=16, ge=1, le=4096, description="max_concurrency of the HTTP endpoint"
    )


def parse_grid(text: str | None) -> dict[str, list[str]]:
    """``"p_g=0.3,0.5;p_v=0.6,0.8"`` -> {"p_g": ["0.3", "0.5"], "p_v": ["0.6", "0.8"]}."""
    grid: dict[str, list[str]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"grid entry {part.strip()!r} must look like key=v1,v2")
        if key not in GRID_KEYS:
            raise ConfigError(f"grid key {key!r} is unknown; use one of {', '.join(GRID_KEYS)}")
        if key in grid:
            raise ConfigError(f"grid key {key!r} is given twice; list all its values once")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def expand_grid(base: SimSetting, grid: dict[str, Sequence[Any]] | str | None) -> list[SimSetting]:
    """Every combination of the grid's values, the other fields taken from ``base``."""
    table = parse_grid(grid) if isinstance(grid, str) or grid is None else dict(grid)
    keys = list(table)
    settings = []
    for values in itertools.product(*(table[k] for k in keys)):
        data = {**base.model_dump(), **dict(zip(keys, values, strict=True))}
        try:
            settings.append(SimSetting.model_validate(data))
        except ValidationError as exc:
            raise ConfigError(f"grid: {format_validation_error(exc)}") from None
    return settings


# --- Results ----------------------------------------------------------------------------------


class MethodResult(BaseModel):
    method: str
    accuracy: float
    correct: int
    problems: int
    calls_per_problem: float = Field(description="model calls (n samples count n)")
    tokens_per_problem: float = Field(default=0.0, description="prompt + completion tokens")
    completion_tokens_per_problem: float = 0.0
    rounds: float | None = Field(default=None, description="mean rounds (nsed methods)")


class FitResult(BaseModel):
    """U(t) fitted to the accuracy curve; ``t_opt`` is None when U never turns down."""

    p_g: float
    p_v: float
    lam: float
    beta: float
    k: float
    r2: float
    t_opt: float | None


class Throughput(BaseModel):
    transport: Literal["in-process", "http"]
    concurrency: int
    deliberations: int
    calls: int
    failed_calls: int
    wall_s: float
    deliberations_per_s: float
    calls_per_s: float
    cpu_s: float = Field(description="this process's CPU time during the deliberations")
    cpu_ms_per_call: float


class SettingResult(BaseModel):
    setting: SimSetting
    problems: int
    methods: list[MethodResult]
    accuracy_by_round: list[float] = Field(description="t = 0 (a generator alone), 1..R")
    calls_by_round: list[float] = Field(
        default_factory=list, description="mean calls of rounds 1..t, t = 1..R"
    )
    vote_by_round: list[float] = Field(
        default_factory=list,
        description="vote accuracy with k = calls_by_round[t] samples (the same draws), t = 1..R",
    )
    fit: FitResult | None = Field(description="U(t) fitted over t = 0..R")
    fit_rounds: FitResult | None = Field(description="U(t) fitted over the rounds t = 1..R")
    fit_error: str | None = None
    vote_k: int
    vote_k_calls: float
    vote_k_tokens: float
    vote_k_auto: int = 0
    throughput: Throughput

    def accuracy(self, method: str) -> float:
        return next(m.accuracy for m in self.methods if m.method == method)


class SimulationReport(BaseModel):
    seed: int
    problems: int
    http: bool
    match: str
    settings: list[SettingResult]


# --- One problem ------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What the methods need from one deliberation (the Deliberation itself is not kept)."""

    by_round: list[bool]
    r1_correct: list[bool]
    single: bool
    majority_r1: bool
    mean_rank: bool
    conf_vote: bool
    auto: bool
    auto_rounds: int
    calls: int
    failed_calls: int
    completion_tokens: int
    prompt_tokens: int
    auto_calls: int
    auto_tokens: int
    auto_completion_tokens: int
    proposal_tokens: list[int] = field(default_factory=list)
    single_tokens: int = 0
    calls_by_round: list[int] = field(default_factory=list)


def _plurality(finals: Sequence[str | None]) -> str | None:
    """The vote baseline's majority over ``finals`` in this order (ties: the first)."""
    samples = [Sample(index=i, agent="", final=f) for i, f in enumerate(finals, start=1)]
    return majority(samples, "math").final


def _mean_rank_winner(scores: dict[str, dict[str, float]], seats: list[str]) -> str | None:
    ranks: dict[str, list[float]] = {s: [] for s in seats}
    raw: dict[str, list[float]] = {s: [] for s in seats}
    for row in scores.values():
        ordered = sorted(row.values(), reverse=True)
        for cand, score in row.items():
            first = ordered.index(score) + 1
            ties = ordered.count(score)
            ranks[cand].append(first + (ties - 1) / 2)
            raw[cand].append(score)
    ranked = [s for s in seats if ranks[s]]
    if not ranked:
        return None
    return min(
        ranked,
        key=lambda s: (sum(ranks[s]) / len(ranks[s]), -sum(raw[s]) / len(raw[s]), seats.index(s)),
    )


def _conf_vote(finals: dict[str, str | None], mean_score: dict[str, float]) -> str | None:
    weight: dict[str, float] = {}
    for seat, final in finals.items():
        if final is not None:
            confidence = (mean_score.get(seat, 0.0) + 100.0) / 200.0
            weight[final] = weight.get(final, 0.0) + confidence
    if not weight:
        return None
    best = max(weight.values())
    return next(f for f in weight if math.isclose(weight[f], best))


def _auto_stop(result: Deliberation, config: DeliberationConfig) -> RoundRecord:
    """The round the protocol's online stopping rules would have stopped at, replayed.

    The config's own rules with min_rounds 2 (as the defaults), on rounds that ran to a
    fixed R: a stop after round r depends only on rounds 1..r.
    """
    rounds = len(result.rounds)
    cfg = config.model_copy(
        update={"min_rounds": min(DeliberationConfig().min_rounds, rounds), "max_rounds": rounds}
    )
    unanimity = UnanimityStreak(cfg.unanimity_conviction)
    tokens = cost = 0
    for record in result.rounds:
        tokens += record.prompt_tokens + record.completion_tokens
        streak = unanimity.add(
            unanimous=record.unanimous,
            conviction=record.conviction,
            key=answer_key(record.winner_final, cfg.kind),
        )
        inputs = StopInputs.from_config(
            cfg,
            round_index=record.index,
            unanimous_streak=streak,
            evidence=record.evidence or 0.0,
            tokens_used=tokens,
            cost_usd=cost,
        )
        if should_stop(inputs).stop:
            return record
    return result.rounds[-1]


def _outcome(
    result: Deliberation,
    problem: Problem,
    seats: list[str],
    rounds: int,
    config: DeliberationConfig,
) -> _Outcome:
    gold = str(problem.answer)

    def right(final: str | None) -> bool:
        return grade_math(final, gold)

    by_round = [right(r.winner_final) for r in result.rounds]
    by_round += [by_round[-1]] * (rounds - len(by_round))  # quorum lost: the answer stands
    first = result.rounds[0]
    finals = {p.agent: p.final for p in first.proposals}
    scores: dict[str, dict[str, float]] = {}
    for review in first.reviews:
        if review.dropped_reason is None and review.candidate and review.score is not None:
            scores.setdefault(review.reviewer, {})[review.candidate] = review.score
    stop = _auto_stop(result, config)
    upto = [r for r in result.rounds if r.index <= stop.index]
    ordered = [finals.get(s) for s in seats if s in finals]
    winner = _mean_rank_winner(scores, [s for s in seats if s in finals])
    return _Outcome(
        by_round=by_round,
        r1_correct=[right(f) for f in ordered],
        single=right(finals.get(seats[0])),
        majority_r1=right(_plurality(ordered)),
        mean_rank=right(finals.get(winner)) if winner else False,
        conf_vote=right(_conf_vote(finals, first.mean_score)),
        auto=right(stop.winner_final),
        auto_rounds=stop.index,
        calls=result.usage.calls,
        failed_calls=result.usage.failed_calls,
        completion_tokens=result.usage.completion_tokens,
        prompt_tokens=result.usage.prompt_tokens,
        auto_calls=sum(u.calls for r in upto for u in r.agent_usage.values()),
        auto_tokens=sum(r.prompt_tokens + r.completion_tokens for r in upto),
        auto_completion_tokens=sum(r.completion_tokens for r in upto),
        proposal_tokens=[p.completion_tokens for p in first.proposals],
        calls_by_round=[sum(u.calls for u in r.agent_usage.values()) for r in result.rounds],
        single_tokens=next(
            (p.prompt_tokens + p.completion_tokens for p in first.proposals if p.agent == seats[0]),
            0,
        ),
    )


# --- One setting ------------------------------------------------------------------------------


def team_for(setting: SimSetting, options: SimOptions, http_url: str | None = None) -> TeamSpec:
    """The team of simulated seats; each seat is named after its model's NAME, so in-process
    and HTTP runs of the same setting give the same replies."""
    models = []
    for i in range(setting.agents):
        name = f"sim{i + 1}"
        query = sim_query(
            setting.profile(i, options.seed), quick_n=options.problems, quick_seed=options.seed
        )
        if http_url is None:
            models.append(
                {"name": name, "base_url": f"sim://{name}?{query}", "model": name, "max_retries": 0}
            )
        else:
            models.append(
                {
                    "name": name,
                    "base_url": http_url,
                    "model": f"{name}?{query}",
                    "max_retries": 0,
                    "max_concurrency": options.http_connections,
                    "timeout_s": 300.0,
                }
            )
    return TeamSpec.model_validate({"models": models})


def config_for(setting: SimSetting) -> DeliberationConfig:
    """The setting's protocol run for exactly ``rounds`` rounds (the accuracy curve)."""
    fields: dict[str, Any] = {
        "protocol": setting.protocol,
        "kind": "math",
        "max_rounds": setting.rounds,
        "min_rounds": setting.rounds,
        "gamma": setting.gamma,
        "embeddings": "off",
    }
    if setting.qv_mode is not None:
        fields["qv_mode"] = setting.qv_mode
    return DeliberationConfig(**fields)


@dataclass
class _VoteOutcome:
    """The vote at two budgets, from one draw: the first k samples are the k-sample vote."""

    correct: dict[int, bool]
    tokens: dict[int, int]
    completion_tokens: dict[int, int]


async def _vote(bench: BenchTeam, problem: Problem, ks: Sequence[int]) -> _VoteOutcome:
    """The benchmark's vote: majority of ``k`` round-1 samples drawn round-robin over the seats,
    for each k in ``ks`` (prefixes of one draw of max(ks) samples)."""
    top = max(ks)
    samples = await draw_samples(bench, problem, bench.seats, k=top, max_samples=top)
    samples = sorted(samples, key=lambda s: s.index)
    out = _VoteOutcome({}, {}, {})
    for k in ks:
        first = samples[:k]
        out.correct[k] = grade_math(majority(first, "math").final, str(problem.answer))
        out.tokens[k] = sum(s.prompt_tokens + s.completion_tokens for s in first)
        out.completion_tokens[k] = sum(s.completion_tokens for s in first)
    return out


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


async def arun_setting(
    setting: SimSetting,
    problems: list[Problem],
    options: SimOptions,
    *,
    http_url: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SettingResult:
    """Deliberate every problem under ``setting``, then run the vote baseline; score all."""
    team = team_for(setting, options, http_url)
    seats = [s.name for s in team.agents()]
    config = config_for(setting)
    limiter = anyio.CapacityLimiter(options.concurrency)
    outcomes: list[_Outcome | None] = [None] * len(problems)
    done = 0

    async with Council(team, config) as council:

        async def deliberate(i: int, problem: Problem) -> None:
            nonlocal done
            async with limiter:
                result = await council.run(problem.prompt, seed=options.seed * 1_000_003 + i)
            outcomes[i] = _outcome(result, problem, seats, setting.rounds, config)
            done += 1
            if on_progress is not None:
                on_progress(done, len(problems))

        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, problem in enumerate(problems):
                tg.start_soon(deliberate, i, problem)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    got = [o for o in outcomes if o is not None]
    n = len(got)
    calls = sum(o.calls for o in got)
    k_calls = _ratio(calls, n)
    proposal_tokens = [t for o in got for t in o.proposal_tokens]
    k_tokens = _ratio(
        _ratio(sum(o.completion_tokens for o in got), n),
        _ratio(sum(proposal_tokens), len(proposal_tokens)),
    )
    k = max(1, round(k_calls if options.match == "calls" else k_tokens))
    auto_calls = _ratio(sum(o.auto_calls for o in got), n)
    auto_k_tokens = _ratio(
        _ratio(sum(o.auto_completion_tokens for o in got), n),
        _ratio(sum(proposal_tokens), len(proposal_tokens)),
    )
    k_auto = max(1, round(auto_calls if options.match == "calls" else auto_k_tokens))
    cumulative = [
        _ratio(sum(sum(o.calls_by_round[: t + 1]) for o in got), n) for t in range(setting.rounds)
    ]
    k_rounds = [max(1, round(c)) for c in cumulative] if options.match == "calls" else []

    votes: list[_VoteOutcome | None] = [None] * len(problems)
    async with EndpointPool() as pool:
        bench = await BenchTeam.open(team, config, pool)

        async def vote(i: int, problem: Problem) -> None:
            async with limiter:
                votes[i] = await _vote(bench, problem, (k, k_auto, *k_rounds))

        async with anyio.create_task_group() as tg:
            for i, problem in enumerate(problems):
                tg.start_soon(vote, i, problem)

    def method(
        name: str,
        hits: Sequence[bool],
        cost: float,
        rounds: float | None = None,
        tokens: float = 0.0,
        completion: float = 0.0,
    ) -> MethodResult:
        return MethodResult(
            method=name,
            accuracy=_ratio(sum(hits), len(hits)),
            correct=sum(hits),
            problems=len(hits),
            calls_per_problem=cost,
            tokens_per_problem=tokens,
            completion_tokens_per_problem=completion,
            rounds=rounds,
        )

    done_votes = [v for v in votes if v is not None]

    def vote_method(name: str, kk: int) -> MethodResult:
        return method(
            name,
            [v.correct[kk] for v in done_votes],
            float(kk),
            tokens=_ratio(sum(v.tokens[kk] for v in done_votes), len(done_votes)),
            completion=_ratio(sum(v.completion_tokens[kk] for v in done_votes), len(done_votes)),
        )

    def mean(values: Sequence[float]) -> float:
        return _ratio(sum(values), len(values))

    r1_calls = _ratio(sum(len(o.proposal_tokens) for o in got), n) * 2  # propose + review
    r1_flat = [c for o in got for c in o.r1_correct]
    curve = [_ratio(sum(r1_flat), len(r1_flat))]
    curve += [_ratio(sum(o.by_round[t] for o in got), n) for t in range(setting.rounds)]
    auto_rounds = _ratio(sum(o.auto_rounds for o in got), n)
    methods = [
        method("single", [o.single for o in got], 1.0, tokens=mean([o.single_tokens for o in got])),
        method("majority_r1", [o.majority_r1 for o in got], _ratio(r1_calls, 2)),
        method("mean_rank", [o.mean_rank for o in got], r1_calls),
        method("conf_vote", [o.conf_vote for o in got], r1_calls),
        vote_method("vote", k),
        method(
            "nsed",
            [o.by_round[-1] for o in got],
            k_calls,
            float(setting.rounds),
            tokens=mean([o.prompt_tokens + o.completion_tokens for o in got]),
            completion=mean([o.completion_tokens for o in got]),
        ),
        vote_method("vote_auto", k_auto),
        method(
            "nsed_auto",
            [o.auto for o in got],
            auto_calls,
            auto_rounds,
            tokens=mean([o.auto_tokens for o in got]),
            completion=mean([o.auto_completion_tokens for o in got]),
        ),
    ]
    fit, fit_error = _fit(list(range(len(curve))), curve)
    fit_rounds, _ = _fit(list(range(1, len(curve))), curve[1:])
    return SettingResult(
        setting=setting,
        problems=n,
        methods=methods,
        accuracy_by_round=curve,
        calls_by_round=cumulative,
        vote_by_round=[
            _ratio(sum(v.correct[kk] for v in done_votes), len(done_votes)) for kk in k_rounds
        ],
        fit=fit,
        fit_rounds=fit_rounds,
        fit_error=fit_error,
        vote_k=k,
        vote_k_calls=k_calls,
        vote_k_tokens=k_tokens,
        vote_k_auto=k_auto,
        throughput=Throughput(
            transport="http" if http_url else "in-process",
            concurrency=options.concurrency,
            deliberations=n,
            calls=calls,
            failed_calls=sum(o.failed_calls for o in got),
            wall_s=wall,
            deliberations_per_s=_ratio(n, wall),
            calls_per_s=_ratio(calls, wall),
            cpu_s=cpu,
            cpu_ms_per_call=1000 * _ratio(cpu, calls),
        ),
    )


def _fit(ts: list[int], curve: list[float]) -> tuple[FitResult | None, str | None]:
    if len(curve) < 3:
        return None, "U(t) needs 3 points: run at least 2 rounds (3 for the rounds-only fit)"
    try:
        with warnings.catch_warnings():  # 3 points for 3 parameters: no covariance, expected
            warnings.simplefilter("ignore")
            fit = fit_fatigue(ts, curve)
    except ImportError:
        return None, 'fitting U(t) needs scipy: pip install "nsed[bench]"'
    except ConfigError as exc:
        return None, str(exc)
    p = fit.params
    return (
        FitResult(
            p_g=p.p_g,
            p_v=p.p_v,
            lam=p.lam,
            beta=p.beta,
            k=fit.k,
            r2=fit.r2,
            t_opt=fit.t_opt if math.isfinite(fit.t_opt) else None,
        ),
        None,
    )


# --- The whole grid ---------------------------------------------------------------------------


async def arun_simulation(
    settings: Sequence[SimSetting],
    options: SimOptions,
    *,
    http_url: str | None = None,
    on_progress: ProgressFn | None = None,
) -> SimulationReport:
    """Run every setting on the same quick problems (generated from ``options.seed``).

    With ``options.http`` the caller passes the URL of a running simulated server
    (:func:`run_simulation` starts one in a child process).
    """
    if not settings:
        raise ConfigError("no settings to simulate: give at least one")
    if options.http and http_url is None:
        raise ConfigError("http=True needs http_url (or use run_simulation, which starts a server)")
    problems = generate_quick(options.problems, options.seed)
    results = []
    for index, setting in enumerate(settings):

        def progress(done: int, total: int, index: int = index) -> None:
            if on_progress is not None:
                on_progress(index, done, total)

        results.append(
            await arun_setting(
                setting,
                problems,
                options,
                http_url=http_url if options.http else None,
                on_progress=progress,
            )
        )
    return SimulationReport(
        seed=options.seed,
        problems=options.problems,
        http=options.http,
        match=options.match,
        settings=results,
    )


def run_simulation(
    settings: Sequence[SimSetting],
    options: SimOptions,
    *,
    on_progress: ProgressFn | None = None,
) -> SimulationReport:
    """Blocking :func:`arun_simulation`; with ``http`` it serves the agents from a child process."""
    if not options.http:
        return anyio.run(lambda: arun_simulation(settings, options, on_progress=on_progress))
    from nsed.simulation.server import SimulatedServerProcess

    with SimulatedServerProcess(quick_n=options.problems, quick_seed=options.seed) as server:
        return anyio.run(
            lambda: arun_simulation(settings, options, http_url=server.url, on_progress=on_progress)
        )


# --- Plots ------------------------------------------------------------------------------------


def write_plots(report: SimulationReport, out_dir: str | Path) -> list[Path]:
    """``accuracy_by_round.png`` (curve + fitted U(t)) and ``accuracy_vs_gap.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('--plot needs matplotlib: pip install "nsed[bench]"') from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    titles = []
    for result in report.settings:
        s = result.setting
        ts = list(range(len(result.accuracy_by_round)))
        label = f"n={s.agents} p_g={s.p_g:g} p_v={s.p_v:g}"
        line = ax.plot(ts, result.accuracy_by_round, "o", label=label)[0]
        if result.fit is not None:
            params = FatigueParams(
                p_g=result.fit.p_g, p_v=result.fit.p_v, lam=result.fit.lam, beta=result.fit.beta
            )
            dense = [t / 20 for t in range(20 * ts[-1] + 1)]
            curve = [
                1 - (1 - params.p_g) * math.exp(-params.k * t) - params.beta * t * t for t in dense
            ]
            ax.plot(dense, curve, "-", color=line.get_color(), alpha=0.7)
            t_opt = "∞" if result.fit.t_opt is None else f"{result.fit.t_opt:.1f}"
            titles.append(f"R²={result.fit.r2:.3f}, T_opt={t_opt}")
    ax.set_xlabel("round t (0 = a generator alone)")
    ax.set_ylabel("accuracy of the round's winner")
    ax.set_title("nsed accuracy by round, fitted U(t)" + (f"\n{'; '.join(titles[:3])}"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "accuracy_by_round.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # One panel per setting group that differs in more than p_v (usually: per p_g), so that
    # each line joins settings that differ only in the verification advantage.
    groups: dict[str, list[SettingResult]] = {}
    varying = [
        k
        for k in SimSetting.model_fields
        if k != "p_v" and len({getattr(r.setting, k) for r in report.settings}) > 1
    ]
    for result in report.settings:
        key = ", ".join(f"{k}={getattr(result.setting, k)}" for k in varying) or "all settings"
        groups.setdefault(key, []).append(result)
    panels = list(groups.items())[:6]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 1, 4.2), sharey=True, squeeze=False
    )
    for ax, (key, results) in zip(axes[0], panels, strict=True):
        for name in METHODS:
            points = sorted((r.setting.p_v - r.setting.p_g, r.accuracy(name)) for r in results)
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=name)
        ax.set_xlabel("p_v − p_g")
        ax.set_title(key, fontsize=9)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("accuracy against the verification advantage, per method")
    fig.tight_layout()
    paths.append(out / "accuracy_vs_gap.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


__all__ = [
    "GRID_KEYS",
    "METHODS",
    "FitResult",
    "MethodResult",
    "SettingResult",
    "SimOptions",
    "SimSetting",
    "SimulationReport",
    "Throughput",
    "arun_setting",
    "arun_simulation",
    "config_for",
    "expand_grid",
    "parse_grid",
    "run_simulation",
    "team_for",
    "write_plots",
]
