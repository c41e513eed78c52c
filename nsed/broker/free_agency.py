"""Free agency: bench agents that underperform, sign on free agents, try them on probation.

After the RLFA idea (research notes §2.4): a council should not keep paying a model that keeps
losing the vote or whose endpoint keeps failing, and should limit the risk of a newcomer.

* **Bench.** At each round boundary every seated model's evidence is updated. A model is
  benched when ``failure_strikes`` of its calls in a row failed (timeouts included), or
  (checked before a question, once ``min_graded`` graded deliberations are known) when its
  rolling accuracy falls below ``accuracy_threshold``. Each bench is a strike; the cooldown is
  ``base_cooldown_s · 2^(strikes−1)``, capped at ``max_cooldown_s``. One good round (its calls
  succeeded and its support reached the threshold) resets the strikes. ``benched_until`` is
  stored, so the next question's team selection excludes the model until it expires.
* **Low support only lowers a vote.** Peer support is not correctness: the agent that is right
  against a wrong majority has low support exactly when it matters most, so benching on it
  would remove the correct dissenter. When a model's rolling QV support (the last ``window``
  rounds, at least ``min_rounds`` of them) falls below ``support_threshold``, its votes count
  at ``low_support_weight`` for the rest of the deliberation (an ``AgentReweighted`` event);
  its proposals still compete in full, and its weight comes back once its support does.
* **Replace.** The seat is re-filled at once (the next round uses it) by the best free agent:
  the catalog model not seated and not benched with the highest knapsack value that keeps the
  seat's role capability, the family cap, the $ and VRAM budgets and the latency SLO. With the
  other seats fixed the knapsack ILP reduces to this argmax, so it uses the knapsack's own
  ``model_value``/``model_cost_usd``/``fits`` and its tie-break (cheaper, then by name).
* **Probation.** A newcomer's votes count at ``probation_weight`` (via the run's
  ``vote_weights``) until it has played ``probation_rounds`` rounds; then it is promoted if its
  mean support over them reached the threshold, or kept at ``low_support_weight`` otherwise.
  A newcomer whose calls fail is released (benched with a strike).

Every decision is emitted as an event (AgentBenched, AgentSignedOn, AgentPromoted,
AgentReleased, AgentReweighted) and stored (a BrokerEventRow, and the AgentStatusRow of the
model; a reweighting lasts one deliberation and changes no status row).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlmodel import Session

from nsed.agents.agent import Agent
from nsed.broker.catalog import Catalog, CatalogEntry
from nsed.broker.knapsack import (
    DEFAULT_ROLE,
    BrokerPolicy,
    ModelStats,
    fits,
    kind_capability,
    model_cost_usd,
    model_value,
    serves_kind,
)
from nsed.broker.telemetry import as_utc, utcnow
from nsed.config import AgentSpec, format_validation_error
from nsed.errors import ConfigError
from nsed.orchestrator.events import (
    AgentBenched,
    AgentPromoted,
    AgentReleased,
    AgentReweighted,
    AgentSignedOn,
    Event,
)
from nsed.orchestrator.loop import DeliberationRun
from nsed.results import RoundRecord
from nsed.store import AgentStatusRow, BrokerEventRow

log = logging.getLogger("nsed.free_agency")

Clock = Callable[[], datetime]
AgentFactory = Callable[[AgentSpec], Agent]
EventSink = Callable[[Event], Awaitable[None]]
Status = Literal["active", "benched", "probation", "released"]
Decision = AgentBenched | AgentSignedOn | AgentPromoted | AgentReleased | AgentReweighted


class FreeAgencyPolicy(BaseModel):
    """When to bench, how long, and how a newcomer earns its seat. All overridable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    support_threshold: float = Field(default=-0.25, ge=-1, le=1, description="rolling mean QV S")
    window: int = Field(default=4, ge=1, le=1000, description="rounds in the rolling support")
    min_rounds: int = Field(default=3, ge=1, description="rounds of evidence before a bench")
    accuracy_threshold: float = Field(default=0.25, ge=0, le=1)
    accuracy_window: int = Field(default=10, ge=1, le=1000, description="graded deliberations")
    min_graded: int = Field(default=5, ge=1, description="graded deliberations before a bench")
    failure_strikes: int = Field(default=2, ge=1, description="failed calls in a row -> bench")
    base_cooldown_s: float = Field(default=60.0, gt=0)
    max_cooldown_s: float = Field(default=1800.0, gt=0)
    probation_rounds: int = Field(default=2, ge=1)
    probation_weight: float = Field(default=0.5, ge=0, le=1, description="vote weight meanwhile")
    low_support_weight: float = Field(
        default=0.5, ge=0, le=1, description="vote weight while rolling support is low"
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            message = format_validation_error(exc).removeprefix("value: ")
            raise ConfigError(f"free agency policy: {message}") from None

    @model_validator(mode="after")
    def _check(self) -> FreeAgencyPolicy:
        if self.min_rounds > self.window:
            raise ValueError(
                f"min_rounds ({self.min_rounds}) must not exceed window ({self.window})"
            )
        if self.min_graded > self.accuracy_window:
            raise ValueError(
                f"min_graded ({self.min_graded}) must not exceed accuracy_window "
                f"({self.accuracy_window})"
            )
        if self.base_cooldown_s > self.max_cooldown_s:
            raise ValueError(
                f"base_cooldown_s ({self.base_cooldown_s:g}) must not exceed max_cooldown_s "
                f"({self.max_cooldown_s:g})"
            )
        return self

    def cooldown_s(self, strikes: int) -> float:
        """Bench time after ``strikes`` strikes: base · 2^(strikes−1), capped."""
        if strikes <= 0:
            return 0.0
        exponent = min(strikes - 1, 64)  # 2^64 · base is far past any cap
        return min(self.max_cooldown_s, self.base_cooldown_s * 2.0**exponent)


class SeatState(BaseModel):
    """The free-agency state of one catalog model (an AgentStatusRow in memory)."""

    model: str
    status: Status = "active"
    strikes: int = 0
    fail_streak: int = 0
    benched_until: datetime | None = None
    probation_rounds: int = 0
    recent_support: list[float] = Field(default_factory=list)
    recent_correct: list[bool] = Field(default_factory=list)
    low_weight: bool = Field(
        default=False, description="votes at low_support_weight (this deliberation; not stored)"
    )

    def benched_at(self, now: datetime) -> bool:
        until = as_utc(self.benched_until)
        return until is not None and until > now

    @classmethod
    def from_row(cls, row: AgentStatusRow) -> SeatState:
        status = (
            row.status if row.status in ("active", "benched", "probation", "released") else "active"
        )
        return cls(
            model=row.model_name,
            status=status,  # type: ignore[arg-type]
            strikes=row.strikes,
            fail_streak=row.fail_streak,
            benched_until=as_utc(row.benched_until),
            probation_rounds=row.probation_rounds,
            recent_support=_json_list(row.recent_support, float),
            recent_correct=_json_list(row.recent_correct, bool),
        )

    def to_row(self, now: datetime) -> AgentStatusRow:
        return AgentStatusRow(
            model_name=self.model,
            status=self.status,
            strikes=self.strikes,
            fail_streak=self.fail_streak,
            benched_until=self.benched_until,
            probation_rounds=self.probation_rounds,
            recent_support=json.dumps([round(s, 6) for s in self.recent_support]),
            recent_correct=json.dumps(self.recent_correct),
            updated_at=now,
        )


class Verdict(BaseModel):
    action: Literal["bench", "promote", "release", "reweight", "restore"]
    reason: str


def judge_round(
    state: SeatState,
    *,
    support: float | None,
    failed_calls: int,
    policy: FreeAgencyPolicy,
    timeouts: int = 0,
) -> Verdict | None:
    """Fold one round's evidence into ``state``; return what to do with the model, if anything.

    ``support`` is its QV support this round (None if it did not propose), ``failed_calls`` how
    many of its calls failed this round (``timeouts`` of them timed out). Failures bench (or
    release a newcomer); low support only reweights. Pure apart from updating ``state``.
    """
    if state.status in ("benched", "released"):
        return None  # kept seated only to hold a quorum; nothing more to decide
    if failed_calls:
        state.fail_streak += failed_calls
    elif support is not None:
        state.fail_streak = 0
    if support is not None:
        state.recent_support = [*state.recent_support, support][-policy.window :]
        if not failed_calls and support >= policy.support_threshold:
            state.strikes = 0  # one good round resets the strikes
    if state.fail_streak >= policy.failure_strikes:
        action = "release" if state.status == "probation" else "bench"
        detail = f" ({timeouts} timed out)" if timeouts else ""
        return Verdict(action=action, reason=f"{state.fail_streak} failed calls in a row{detail}")
    threshold = policy.support_threshold
    if state.status == "probation":
        if support is not None:
            state.probation_rounds += 1
        if state.probation_rounds < policy.probation_rounds:
            return None
        played = state.recent_support[-policy.probation_rounds :]
        mean = math.fsum(played) / len(played) if played else -1.0
        detail = f"support {mean:+.2f} over {len(played)} probation rounds"
        if mean >= threshold:
            return Verdict(action="promote", reason=f"{detail} >= {threshold:+.2f}")
        return Verdict(action="reweight", reason=f"{detail} < {threshold:+.2f}")
    if len(state.recent_support) >= policy.min_rounds:
        mean = math.fsum(state.recent_support) / len(state.recent_support)
        window = f"over the last {len(state.recent_support)} rounds"
        if mean < threshold and not state.low_weight:
            return Verdict(
                action="reweight", reason=f"rolling support {mean:+.2f} < {threshold:+.2f} {window}"
            )
        if mean >= threshold and state.low_weight:
            return Verdict(
                action="restore", reason=f"rolling support {mean:+.2f} >= {threshold:+.2f} {window}"
            )
    return None


def judge_accuracy(state: SeatState, policy: FreeAgencyPolicy) -> Verdict | None:
    """Bench on rolling accuracy once ``min_graded`` graded deliberations are known."""
    graded = state.recent_correct
    if state.status in ("benched", "released") or len(graded) < policy.min_graded:
        return None
    accuracy = sum(graded) / len(graded)
    if accuracy < policy.accuracy_threshold:
        return Verdict(
            action="bench",
            reason=f"accuracy {accuracy:.0%} < {policy.accuracy_threshold:.0%} over the last "
            f"{len(graded)} graded deliberations",
        )
    return None


class FreeAgency:
    """Free agency for one deliberation: decides, acts on the run, and queues the rows."""

    def __init__(
        self,
        catalog: Catalog,
        kind: str,
        *,
        policy: FreeAgencyPolicy | None = None,
        broker_policy: BrokerPolicy | None = None,
        states: Mapping[str, SeatState] | None = None,
        stats: Mapping[str, ModelStats] | None = None,
        make_agent: AgentFactory | None = None,
        clock: Clock = utcnow,
        deliberation_id: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.kind = kind
        self.policy = policy or FreeAgencyPolicy()
        self.broker_policy = broker_policy or BrokerPolicy()
        self.states: dict[str, SeatState] = {
            k: v.model_copy(deep=True) for k, v in (states or {}).items()
        }
        self.stats = dict(stats or {})
        self.make_agent = make_agent
        self.clock = clock
        self.deliberation_id = deliberation_id
        self.decisions: list[Decision] = []  # every decision, in order
        self._dirty: set[str] = set()
        self._pending: list[Decision] = []

    # --- state ----------------------------------------------------------------------------------

    def state(self, model: str) -> SeatState:
        if model not in self.states:
            self.states[model] = SeatState(model=model)
        return self.states[model]

    def benched(self, now: datetime | None = None) -> set[str]:
        """Models that may not play now (benched or released, cooldown running)."""
        now = now or self.clock()
        return {m for m, s in self.states.items() if s.benched_at(now)}

    def start(self, team: Sequence[str]) -> dict[str, float]:
        """The team of a new question is seated: returns the vote weights of those on probation.

        A model back from an expired bench plays as active again.
        """
        now = self.clock()
        weights: dict[str, float] = {}
        for model in team:
            state = self.state(model)
            if state.status in ("benched", "released") and not state.benched_at(now):
                state.status = "active"
                self._dirty.add(model)
            if state.status == "probation":
                weights[model] = self.policy.probation_weight
        return weights

    def record_grades(self, grades: Mapping[str, bool]) -> None:
        """Add one graded deliberation's per-model results to the rolling accuracy."""
        for model, correct in grades.items():
            state = self.state(model)
            state.recent_correct = [*state.recent_correct, correct][-self.policy.accuracy_window :]
            self._dirty.add(model)

    # --- decisions ------------------------------------------------------------------------------

    async def check_accuracy(self, emit: EventSink | None = None) -> list[str]:
        """Before a question: bench the models whose rolling accuracy is below threshold."""
        benched = []
        for model in sorted(self.states):
            verdict = judge_accuracy(self.states[model], self.policy)
            if verdict is not None:
                await self._bench(model, verdict, round_index=None, emit=emit)
                benched.append(model)
        return benched

    async def on_round_end(self, run: DeliberationRun, record: RoundRecord, more: bool) -> None:
        """The loop's round hook: judge every seated model, then re-fill the vacated seats."""
        failed = Counter(f.agent for f in record.failures)
        timed_out = Counter(f.agent for f in record.failures if f.timeout)
        proposed = {p.agent for p in record.proposals}
        leaving: list[Agent] = []
        for agent in list(run.agents):
            model = agent.seat.spec.name
            state = self.state(model)
            support = record.support.get(agent.name) if agent.name in proposed else None
            if support is None and not failed[agent.name]:
                continue  # sat this round out (e.g. dead endpoint already out of the loop)
            self._dirty.add(model)
            verdict = judge_round(
                state,
                support=support,
                failed_calls=failed[agent.name],
                timeouts=timed_out[agent.name],
                policy=self.policy,
            )
            if verdict is None:
                continue
            if verdict.action == "promote":
                state.status, state.probation_rounds = "active", 0
                run.vote_weights.pop(agent.name, None)
                await self._decide(AgentPromoted(agent=model, reason=verdict.reason), run.emit)
            elif verdict.action in ("reweight", "restore"):
                await self._reweight(run, agent, verdict, record.index)
            else:
                await self._bench(model, verdict, round_index=record.index, emit=run.emit)
                leaving.append(agent)
        if more:
            for agent in leaving:
                await self._refill(run, agent, record.index)

    async def _reweight(
        self, run: DeliberationRun, agent: Agent, verdict: Verdict, round_index: int
    ) -> None:
        """Lower (or restore) the vote weight of a seated agent; its proposals compete as ever."""
        state = self.state(agent.seat.spec.name)
        low = verdict.action == "reweight"
        if state.status == "probation":
            state.status, state.probation_rounds = "active", 0
        state.low_weight = low
        if low:
            weight = self.policy.low_support_weight
            run.vote_weights[agent.name] = weight
        else:
            weight = 1.0
            run.vote_weights.pop(agent.name, None)
        event = AgentReweighted(
            agent=state.model, weight=weight, reason=verdict.reason, round=round_index
        )
        await self._decide(event, run.emit)

    async def _bench(
        self, model: str, verdict: Verdict, *, round_index: int | None, emit: EventSink | None
    ) -> None:
        state = self.state(model)
        release = verdict.action == "release"
        state.strikes += 1
        cooldown = self.policy.cooldown_s(state.strikes)
        state.benched_until = self.clock() + timedelta(seconds=cooldown)
        state.status = "released" if release else "benched"
        state.recent_support, state.recent_correct = [], []
        state.fail_streak = state.probation_rounds = 0
        self._dirty.add(model)
        event: Decision
        if release:
            reason = f"{verdict.reason}; benched {cooldown:g}s (strike {state.strikes})"
            event = AgentReleased(agent=model, reason=reason)
        else:
            event = AgentBenched(
                agent=model, reason=verdict.reason, cooldown_s=cooldown, round=round_index
            )
        await self._decide(event, emit)

    async def _refill(self, run: DeliberationRun, agent: Agent, round_index: int) -> None:
        run.vote_weights.pop(agent.name, None)
        seated = [a.seat.spec.name for a in run.agents]
        entry = (
            self.replacement(seated, agent.seat.spec.name, agent.seat.role)
            if self.make_agent is not None
            else None
        )
        if entry is None:
            if len(run.agents) > 2:
                run.unseat(agent.name)
                log.info("no free agent can replace %s; its seat stays empty", agent.name)
            else:
                log.warning(
                    "no free agent can replace %s; it keeps its seat for quorum", agent.name
                )
            return
        assert self.make_agent is not None
        seat = AgentSpec(
            name=entry.name,
            spec=entry,
            persona=entry.persona,
            temperature=entry.temperature,
            seed=entry.seed,
            role=agent.seat.role,
        )
        newcomer = self.make_agent(seat)
        run.seat(newcomer, replaces=agent.name)
        run.vote_weights[newcomer.name] = self.policy.probation_weight
        state = self.state(entry.name)
        state.status, state.probation_rounds, state.fail_streak = "probation", 0, 0
        state.recent_support = []
        self._dirty.add(entry.name)
        await self._decide(
            AgentSignedOn(
                agent=entry.name, replaces=agent.seat.spec.name, round=round_index, probation=True
            ),
            run.emit,
        )

    def replacement(
        self, seated: Sequence[str], leaving: str, role: str | None = None
    ) -> CatalogEntry | None:
        """The best free agent for ``leaving``'s seat (role ``role``), or None.

        Candidates: catalog models not seated and not benched, able to play the role, within the
        latency SLO, the family cap and the $/VRAM budgets given the seats that stay. Best by
        knapsack value; ties go to the cheaper model, then by name, as in the knapsack.
        """
        bp = self.broker_policy
        now = self.clock()
        benched = self.benched(now)
        by_name = {e.name: e for e in self.catalog.models}
        staying = [by_name[m] for m in seated if m != leaving and m in by_name]
        families = Counter(e.family for e in staying)
        cost = math.fsum(model_cost_usd(e, bp) for e in staying)
        vram = math.fsum(e.vram_gb for e in staying)
        capability = self._capability(role)
        by_kind = role is None or role == DEFAULT_ROLE
        best: tuple[tuple[float, float, str], CatalogEntry] | None = None
        for entry in self.catalog.models:
            if entry.name in seated or entry.name == leaving or entry.name in benched:
                continue
            stats = self.stats.get(entry.name)
            qualified = serves_kind(entry, self.kind) if by_kind else entry.has(capability)
            if not qualified or families[entry.family] + 1 > bp.max_per_family:
                continue
            latency = stats.latency_s if stats is not None and stats.latency_s else entry.latency_s
            if bp.latency_slo_s is not None and latency is not None and latency > bp.latency_slo_s:
                continue
            entry_cost = model_cost_usd(entry, bp)
            if not fits(cost + entry_cost, bp.budget_usd) or not fits(
                vram + entry.vram_gb, bp.vram_gb
            ):
                continue
            key = (-model_value(entry, self.kind, stats, bp), entry_cost, entry.name)
            if best is None or key < best[0]:
                best = (key, entry)
        return best[1] if best else None

    def _capability(self, role: str | None) -> str | None:
        if role is None or role == DEFAULT_ROLE:
            return kind_capability(self.kind)  # no role: the task kind is the capability
        for spec in self.broker_policy.roles or self.catalog.roles:
            if spec.name == role:
                return spec.capability
        return None

    async def _decide(self, event: Decision, emit: EventSink | None) -> None:
        log.info("free agency: %s", event.model_dump_json())
        self.decisions.append(event)
        self._pending.append(event)
        if emit is not None:
            await emit(event)

    # --- persistence ----------------------------------------------------------------------------

    def write(self, session: Session) -> None:
        """Add the changed AgentStatusRows and the pending BrokerEventRows to ``session``.

        Call :meth:`written` once the transaction has committed.
        """
        now = self.clock()
        for model in sorted(self._dirty):
            session.merge(self.states[model].to_row(now))
        for event in self._pending:
            session.add(
                BrokerEventRow(
                    created_at=now,
                    kind=event.type,
                    agent=event.agent,
                    detail=event.model_dump_json(),
                    deliberation_id=self.deliberation_id,
                )
            )

    def written(self) -> None:
        self._dirty.clear()
        self._pending.clear()


def _json_list(text: str, kind: type) -> list[Any]:
    try:
        values = json.loads(text or "[]")
    except ValueError:
        return []
    if not isinstance(values, list):
        return []
    return [kind(v) for v in values if isinstance(v, int | float | bool)]


__all__ = [
    "FreeAgency",
    "FreeAgencyPolicy",
    "SeatState",
    "Verdict",
    "judge_accuracy",
    "judge_round",
]
