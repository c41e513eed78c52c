"""The Dynamic Expertise Broker: catalog + policy + telemetry + free agency, per question.

A :class:`Broker` is what a :class:`~nsed.council.Council` built with ``catalog=`` asks for a
team. For each question :meth:`Broker.plan` reads the telemetry and the free-agency state from
the store, benches models whose rolling accuracy fell too low, scrapes the live load of
self-hosted vLLM servers, and solves the knapsack; it returns the seats, the probation vote
weights and the round hook that benches and replaces agents mid-deliberation. After the
deliberation :meth:`Broker.finish` writes the telemetry, the free-agency state and every
decision in one transaction.

Failure policy: reading the store before a question raises StoreError (no answer exists yet,
and choosing a team blind to benched models would be wrong); writing after it never loses the
answer: a StoreError is logged and the answer returned.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlmodel import select

from nsed.agents.vllm import MetricsCache
from nsed.broker.catalog import Catalog
from nsed.broker.free_agency import (
    AgentFactory,
    Clock,
    EventSink,
    FreeAgency,
    FreeAgencyPolicy,
    SeatState,
)
from nsed.broker.knapsack import BrokerPolicy, ModelStats, TeamSelection, select_team
from nsed.broker.telemetry import (
    apply_deliberation,
    apply_grades,
    fetch_loads,
    graded_models,
    load_stats,
    utcnow,
)
from nsed.config import AgentSpec
from nsed.errors import ConfigError, StoreError
from nsed.orchestrator.loop import RoundHook
from nsed.results import Deliberation
from nsed.store import AgentStatusRow, Store

log = logging.getLogger("nsed.broker")

CatalogLike = Catalog | str | Path | dict


def load_catalog(catalog: CatalogLike) -> Catalog:
    """A Catalog from a Catalog, a dict (as in TOML) or a path to a catalog TOML."""
    if isinstance(catalog, Catalog):
        return catalog
    if isinstance(catalog, dict):
        return Catalog.model_validate_toml(catalog)
    if isinstance(catalog, str | Path):
        return Catalog.from_toml(catalog)
    raise ConfigError(
        "catalog must be a Catalog, a dict or a path to a catalog TOML, "
        f"not {type(catalog).__name__}"
    )


@dataclass
class Plan:
    """What the broker decided for one question, and the hooks to carry it out."""

    deliberation_id: str
    kind: str
    selection: TeamSelection
    seats: list[AgentSpec]
    vote_weights: dict[str, float] = field(default_factory=dict)
    agency: FreeAgency | None = None

    @property
    def on_round_end(self) -> RoundHook | None:
        return self.agency.on_round_end if self.agency is not None else None


class Broker:
    """Chooses each question's team from a catalog, learns from the result, runs free agency."""

    def __init__(
        self,
        catalog: CatalogLike,
        *,
        policy: BrokerPolicy | None = None,
        agency: FreeAgencyPolicy | None = None,
        free_agency: bool = True,
        store: Store | str | None = None,
        metrics: MetricsCache | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.catalog = load_catalog(catalog)
        self.policy = policy or BrokerPolicy()
        self.agency_policy = agency or FreeAgencyPolicy()
        self.free_agency = free_agency
        self.store = store if isinstance(store, Store) else Store(store)
        self.metrics = metrics or MetricsCache()
        self.clock = clock

    # --- reading ----------------------------------------------------------------------------------

    def states(self) -> dict[str, SeatState]:
        """The stored free-agency state of every model that has one (StoreError if unreadable)."""
        with self.store.transaction() as session:
            rows = list(session.exec(select(AgentStatusRow)))
        return {r.model_name: SeatState.from_row(r) for r in rows}

    def stats(self, kind: str, loads: Mapping[str, float] | None = None) -> dict[str, ModelStats]:
        """The knapsack's inputs from telemetry (and ``loads``), as of the broker's clock."""
        return load_stats(self.store, kind, loads=loads, now=self.clock())

    async def loads(self) -> dict[str, float]:
        """Live load of the self-hosted models, from their vLLM /metrics (cached briefly)."""
        if not any(e.self_hosted for e in self.catalog.models):
            return {}
        async with httpx.AsyncClient() as client:
            return await fetch_loads(self.catalog.models, self.metrics, client)

    def explain(self, kind: str, *, loads: Mapping[str, float] | None = None) -> TeamSelection:
        """The team the broker would pick now, with its reasons; calls no model."""
        return select_team(self.catalog, kind, self.policy, self.stats(kind, loads))

    async def select(self, kind: str) -> TeamSelection:
        """Like :meth:`explain`, with the live load of self-hosted servers."""
        return self.explain(kind, loads=await self.loads())

    # --- one question ---------------------------------------------------------------------------

    async def plan(
        self,
        kind: str,
        *,
        emit: EventSink | None = None,
        make_agent: AgentFactory | None = None,
        deliberation_id: str | None = None,
    ) -> Plan:
        """Choose the team for one question of ``kind``; set up free agency for its rounds.

        ``deliberation_id`` (default: a fresh uuid) is the id the decisions and telemetry are
        stored under; pass the caller's run id so they match the result.
        """
        deliberation_id = deliberation_id or uuid.uuid4().hex
        stats = self.stats(kind, await self.loads())
        agency: FreeAgency | None = None
        if self.free_agency:
            agency = FreeAgency(
                self.catalog,
                kind,
                policy=self.agency_policy,
                broker_policy=self.policy,
                states=self.states(),
                stats=stats,
                make_agent=make_agent,
                clock=self.clock,
                deliberation_id=deliberation_id,
            )
            await agency.check_accuracy(emit)
            for model in agency.benched():
                base = stats.get(model) or ModelStats()
                stats[model] = base.model_copy(update={"benched": True})
            agency.stats = stats
        selection = select_team(self.catalog, kind, self.policy, stats)
        seats = [
            AgentSpec(
                name=chosen.name,
                spec=entry,
                persona=entry.persona,
                temperature=entry.temperature,
                seed=entry.seed,
                role=chosen.role,
            )
            for chosen in selection.team
            for entry in [self.catalog.get(chosen.name)]
        ]
        weights = agency.start(selection.names()) if agency is not None else {}
        return Plan(deliberation_id, kind, selection, seats, weights, agency)

    def finish(
        self, plan: Plan, result: Deliberation | None, *, correct: bool | None = None
    ) -> bool:
        """Store the telemetry and free-agency outcome of ``plan`` in one transaction.

        ``result`` is None when the deliberation failed (only the decisions are stored).
        Returns False, after logging why, when the store could not be written.
        """
        agency = plan.agency
        try:
            with self.store.transaction() as session:
                if result is not None:
                    apply_deliberation(session, result, kind=plan.kind, correct=correct)
                    if agency is not None:
                        agency.record_grades(graded_models(result, correct))
                if agency is not None:
                    agency.write(session)
        except StoreError as exc:
            log.warning("telemetry not saved (the answer is kept): %s", exc)
            return False
        if agency is not None:
            agency.written()
        return True

    def grade(self, result: Deliberation, *, correct: bool) -> bool:
        """Record, after the fact, whether a brokered deliberation's answer was right.

        For callers that learn the gold answer later (benchmarks): updates the accuracy in
        telemetry and the rolling accuracy free agency benches on, in one transaction.
        Returns False, after logging why, when the store could not be written.
        """
        try:
            agency = FreeAgency(
                self.catalog,
                result.kind,
                policy=self.agency_policy,
                states=self.states(),
                clock=self.clock,
            )
            with self.store.transaction() as session:
                agency.record_grades(apply_grades(session, result, correct=correct))
                agency.write(session)
        except StoreError as exc:
            log.warning("grade not saved: %s", exc)
            return False
        agency.written()
        return True


__all__ = ["Broker", "CatalogLike", "Plan", "load_catalog"]
