"""The synchronous round loop: propose -> review -> vote -> gate -> stop?

Each phase fans out to every live agent at once (an anyio task group), so a round costs the
slowest call of each phase, not the sum. The orchestrator, not the agents, enforces the
protocol's guarantees: reviewers see candidates under labels re-shuffled per reviewer and per
round, with agent and model names redacted; a score a reviewer gives its own proposal is dropped
whatever the reviewer does; scores are clipped to [-100, 100]; an unparseable review is dropped
and recorded, never guessed. An agent whose call fails is skipped for that phase; an agent that
fails twice in a row is out for the rest of the deliberation. When fewer than two agents are
left, ``QuorumLost`` is raised if no round has completed, otherwise the deliberation ends with
the last completed round's winner (``stopped_because = "quorum_lost"``).

An optional ``on_round_end`` hook runs at every round boundary, after the round is scored; it
may change the seats for the next round (``seat``/``unseat``) and ``vote_weights``. This is how
free agency benches an agent and signs on a replacement mid-deliberation.
"""

from __future__ import annotations

import logging
import random
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio

from nsed.agents.agent import Agent
from nsed.agents.backend import Completion
from nsed.agents.parsing import normalize_final
from nsed.config import DeliberationConfig
from nsed.errors import BackendTimeout, ConfigError, NsedError, QuorumLost
from nsed.orchestrator import forget_gate
from nsed.orchestrator.events import (
    AgentFailed,
    CallTruncated,
    Event,
    Finished,
    ProposalReceived,
    ReviewReceived,
    RoundScored,
    RoundStarted,
)
from nsed.orchestrator.similarity import Embedder
from nsed.orchestrator.step_outcome import ballot, settle_step
from nsed.orchestrator.stopping import EvidenceTracker, FatigueParams, StopInputs, should_stop
from nsed.orchestrator.voting import quadratic_vote
from nsed.results import (
    AgentInfo,
    CallRecord,
    Deliberation,
    Failure,
    Proposal,
    Review,
    RoundRecord,
    Usage,
)

log = logging.getLogger("nsed.loop")

EventSink = Callable[[Event], Awaitable[None]]
# (run, the round just scored, whether another round follows) -> None
RoundHook = Callable[["DeliberationRun", RoundRecord, bool], Awaitable[None]]
MAX_CONSECUTIVE_FAILURES = 2
SCORE_LIMIT = 100.0


async def _no_sink(event: Event) -> None:
    return None


def _labels(n: int) -> list[str]:
    letters = list(string.ascii_uppercase)
    return letters[:n] if n <= 26 else [f"C{i + 1}" for i in range(n)]


class _Redactor:
    """Removes agent and model names from text shown to reviewers."""

    def __init__(self, agents: list[Agent]) -> None:
        words = set()
        for agent in agents:
            words.add(agent.name)
            words.add(agent.seat.spec.name)
            words.add(agent.seat.spec.model)
        words = {w for w in words if len(w) >= 3}
        self._pattern = (
            re.compile(
                "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE
            )
            if words
            else None
        )

    def __call__(self, text: str) -> str:
        return self._pattern.sub("[redacted]", text) if self._pattern else text


class DeliberationRun:
    """One deliberation of a fixed set of agents on one question."""

    def __init__(
        self,
        question: str,
        agents: list[Agent],
        config: DeliberationConfig,
        *,
        embedder: Embedder,
        emit: EventSink | None = None,
        vote_weights: dict[str, float] | None = None,
        deliberation_id: str | None = None,
        on_round_end: RoundHook | None = None,
    ) -> None:
        self.question = question
        self.agents = list(agents)
        self.seated: list[Agent] = list(agents)  # everyone who ever had a seat, in order
        self.config = config
        self.embedder = embedder
        self.emit = emit or _no_sink
        self.vote_weights = dict(vote_weights or {})  # a copy: the hook may change it
        self.on_round_end = on_round_end
        self.id = deliberation_id or uuid.uuid4().hex
        self.usage = Usage()
        self.rounds: list[RoundRecord] = []
        self.state = forget_gate.ConsensusState()
        self._failures: dict[str, int] = {a.name: 0 for a in agents}
        self._rng = random.Random(config.seed) if config.seed is not None else random.Random()
        self._redact = _Redactor(agents)
        self._evidence = EvidenceTracker(
            FatigueParams(
                p_g=config.fatigue_p_g,
                p_v=config.fatigue_p_v,
                lam=config.fatigue_lambda,
                beta=config.fatigue_beta,
            )
        )

    # --- bookkeeping ----------------------------------------------------------------------

    def live_agents(self) -> list[Agent]:
        return [a for a in self.agents if self._failures[a.name] < MAX_CONSECUTIVE_FAILURES]

    def seat(self, agent: Agent, *, replaces: str | None = None) -> None:
        """Give ``agent`` a seat from the next round on, in ``replaces``' seat if named."""
        if any(a.name == agent.name for a in self.agents):
            raise ConfigError(f"agent {agent.name!r} already has a seat; unseat it first")
        names = [a.name for a in self.agents]
        if replaces is not None and replaces in names:
            self.agents[names.index(replaces)] = agent
        else:
            self.agents.append(agent)
        self._failures[agent.name] = 0
        if all(a.name != agent.name for a in self.seated):
            self.seated.append(agent)
        self._redact = _Redactor(self.seated)

    def unseat(self, name: str) -> None:
        """Remove agent ``name`` from the table from the next round on."""
        self.agents = [a for a in self.agents if a.name != name]

    async def _account(
        self, agent: Agent, completion: Completion, record: RoundRecord, phase: str
    ) -> CallRecord:
        """Count one successful call everywhere; a call cut at max_tokens is also an event."""
        usage = Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            reasoning_tokens=completion.reasoning_tokens,
            cost_usd=completion.cost_usd,
            calls=1,
            retries=completion.retries,
            truncated_calls=int(completion.truncated),
        )
        self.usage.add(usage)
        record.prompt_tokens += completion.prompt_tokens
        record.completion_tokens += completion.completion_tokens
        record.cost_usd += completion.cost_usd
        record.agent_usage.setdefault(agent.name, Usage()).add(usage)
        call = CallRecord(
            agent=agent.name,
            phase=phase,
            finish_reason=completion.finish_reason,
            truncated=completion.truncated,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            reasoning_tokens=completion.reasoning_tokens,
            max_tokens=completion.max_tokens,
            latency_s=completion.latency_s,
        )
        record.calls.append(call)
        if completion.truncated:
            log.warning(
                "round %d: %s's %s call was cut at max_tokens (%d tokens)",
                record.index,
                agent.name,
                phase,
                completion.completion_tokens,
            )
            await self.emit(
                CallTruncated(
                    round=record.index,
                    agent=agent.name,
                    phase=phase,
                    completion_tokens=completion.completion_tokens,
                    max_tokens=completion.max_tokens,
                )
            )
        return call

    async def _fail(self, agent: Agent, phase: str, exc: Exception, record: RoundRecord) -> None:
        self._failures[agent.name] += 1
        self.usage.failed_calls += 1
        error = str(exc) or type(exc).__name__
        record.failures.append(
            Failure(
                agent=agent.name,
                phase=phase,
                error=error,
                timeout=isinstance(exc, BackendTimeout),
            )
        )
        record.agent_usage.setdefault(agent.name, Usage()).failed_calls += 1
        log.warning("round %d: %s failed to %s: %s", record.index, agent.name, phase, error)
        await self.emit(AgentFailed(round=record.index, agent=agent.name, phase=phase, error=error))

    def _check_quorum(self, record: RoundRecord | None = None) -> None:
        live = self.live_agents()
        if len(live) < 2:
            raise QuorumLost(
                f"only {len(live)} agent(s) still answering "
                f"({', '.join(a.name for a in live) or 'none'}); a deliberation needs 2. "
                "Last errors: "
                + ("; ".join(f.error for f in record.failures[-3:]) if record else "none"),
                live_agents=[a.name for a in live],
            )

    # --- phases -----------------------------------------------------------------------------

    async def _propose(self, record: RoundRecord) -> dict[str, Proposal]:
        proposals: dict[str, Proposal] = {}

        async def one(agent: Agent) -> None:
            view = forget_gate.render_view(self.state, agent.name, self.config)
            try:
                proposal, completion = await agent.propose(
                    self.question, round_index=record.index, state_view=view
                )
            except NsedError as exc:
                await self._fail(agent, "propose", exc, record)
                return
            self._failures[agent.name] = 0
            call = await self._account(agent, completion, record, "propose")
            proposals[agent.name] = proposal
            await self.emit(ProposalReceived(round=record.index, proposal=proposal, call=call))

        async with anyio.create_task_group() as tg:
            for agent in self.live_agents():
                tg.start_soon(one, agent)
        # Keep the agents' order, not the arrival order, so results are reproducible.
        return {a.name: proposals[a.name] for a in self.agents if a.name in proposals}

    def _candidate_text(self, proposal: Proposal) -> str:
        limit = self.config.candidate_chars
        answer = proposal.answer.strip()
        reasoning = proposal.reasoning.strip()
        room = max(0, limit - len(answer) - 40)
        parts = []
        if self.config.share_reasoning and proposal.thinking.strip():
            reasoning = f"{proposal.thinking.strip()}\n\n{reasoning}".strip()
        if reasoning and room > 80:
            clipped = reasoning if len(reasoning) <= room else reasoning[:room] + "…"
            parts.append(f"Reasoning:\n{clipped}")
        parts.append(f"Answer:\n{answer[:limit]}")
        return self._redact("\n".join(parts))

    async def _review(self, record: RoundRecord, proposals: dict[str, Proposal]) -> None:
        texts = {name: self._candidate_text(p) for name, p in proposals.items()}

        async def one(agent: Agent) -> None:
            # A fresh random labelling of all proposals for this reviewer and round.
            authors = list(proposals)
            self._rng.shuffle(authors)
            label_of = dict(zip(authors, _labels(len(authors)), strict=True))
            author_of = {label: name for name, label in label_of.items()}
            own_label = label_of.get(agent.name)
            candidates = sorted(
                ((label_of[name], texts[name]) for name in proposals if name != agent.name),
                key=lambda pair: pair[0],
            )
            if not candidates:
                return
            own = proposals.get(agent.name)
            try:
                parsed, completion = await agent.evaluate(
                    self.question,
                    round_index=record.index,
                    own_answer=self._redact(own.answer) if own else None,
                    own_label=own_label,
                    candidates=candidates,
                )
            except NsedError as exc:
                await self._fail(agent, "review", exc, record)
                return
            self._failures[agent.name] = 0
            call = await self._account(agent, completion, record, "review")
            reviews = []
            for item in parsed.items:
                author = author_of.get(item.candidate)
                review = Review(
                    reviewer=agent.name,
                    candidate=author,
                    score=item.score,
                    critique=item.critique,
                )
                if author is None:
                    review.dropped_reason = f"unknown label {item.candidate}"
                elif author == agent.name:
                    review.dropped_reason = "self-review"
                elif item.score is None:
                    review.dropped_reason = "missing score"
                elif abs(item.score) > SCORE_LIMIT:
                    review.score = max(-SCORE_LIMIT, min(SCORE_LIMIT, item.score))
                    review.clipped = True
                reviews.append(review)
            for dropped in parsed.dropped:
                author = author_of.get(dropped.candidate) if dropped.candidate else None
                reviews.append(
                    Review(
                        reviewer=agent.name,
                        candidate=author,
                        score=None,
                        dropped_reason=dropped.reason,
                    )
                )
            record.reviews.extend(reviews)
            await self.emit(
                ReviewReceived(round=record.index, reviewer=agent.name, reviews=reviews, call=call)
            )

        async with anyio.create_task_group() as tg:
            for agent in self.live_agents():
                tg.start_soon(one, agent)
        order = {a.name: i for i, a in enumerate(self.agents)}
        record.reviews.sort(key=lambda r: order.get(r.reviewer, 0))

    def _score(self, record: RoundRecord, proposals: dict[str, Proposal]) -> None:
        scores: dict[str, dict[str, float]] = {}
        for review in record.reviews:
            if review.dropped_reason is None and review.candidate and review.score is not None:
                scores.setdefault(review.reviewer, {})[review.candidate] = review.score
        incumbent = self.rounds[-1].winner if self.rounds else None
        vote = quadratic_vote(
            scores,
            list(proposals),
            mode=self.config.qv_mode,
            incumbent=incumbent,
            weights=self.vote_weights or None,
        )
        record.support = vote.support
        record.net_support = vote.support
        record.variance = vote.variance
        record.mean_score = vote.mean_score
        record.winner = vote.winner
        record.conviction = vote.conviction
        if vote.winner:
            record.winner_final = proposals[vote.winner].final
        finals = [
            normalize_final(p.final, self.config.kind) if p.final else None
            for p in proposals.values()
        ]
        record.unanimous = len(finals) >= 2 and None not in finals and len(set(finals)) == 1

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> Deliberation:
        started = time.perf_counter()
        stopped_because = "max_rounds"
        unanimous_streak = 0
        for index in range(1, self.config.max_rounds + 1):
            record = RoundRecord(index=index)
            round_started = time.perf_counter()
            try:
                self._check_quorum(self.rounds[-1] if self.rounds else None)
            except QuorumLost:
                if not self.rounds:
                    raise
                stopped_because = "quorum_lost"
                break
            await self.emit(RoundStarted(round=index, agents=[a.name for a in self.live_agents()]))
            proposals = await self._propose(record)
            record.proposals = list(proposals.values())
            if len(proposals) < 2:
                if not self.rounds:
                    self._check_quorum(record)
                    raise QuorumLost(
                        f"round {index}: only {len(proposals)} proposal(s) arrived; "
                        "a deliberation needs 2. Errors: "
                        + "; ".join(f.error for f in record.failures[-3:]),
                        live_agents=list(proposals),
                    )
                stopped_because = "quorum_lost"
                break
            candidates = ballot(proposals)  # a step that breaks its format cannot win
            if candidates:
                await self._review(record, candidates)
                self._score(record, candidates)
            du_dt, evidence = self._evidence.add(index, record.conviction)
            record.du_dt, record.evidence = du_dt, evidence
            self.state = await anyio.to_thread.run_sync(
                forget_gate.update, self.state, record, self.config, self.embedder
            )
            record.state_tokens = max(
                (
                    len(forget_gate.render_view(self.state, a.name, self.config) or "") // 4
                    for a in self.live_agents()
                ),
                default=0,
            )
            record.wall_s = time.perf_counter() - round_started
            self.rounds.append(record)
            log.info(
                "round %d: winner %s (final %r), conviction %.2f, %d proposals, %.1f s",
                index,
                record.winner,
                record.winner_final,
                record.conviction,
                len(record.proposals),
                record.wall_s,
            )
            await self.emit(RoundScored(round=index, record=record))
            unanimous_streak = unanimous_streak + 1 if record.unanimous else 0
            decision = should_stop(
                StopInputs(
                    round_index=index,
                    min_rounds=self.config.min_rounds,
                    max_rounds=self.config.max_rounds,
                    unanimous_streak=unanimous_streak
                    if record.conviction >= self.config.unanimity_conviction
                    else 0,
                    unanimity_rounds=self.config.unanimity_rounds,
                    evidence_halt=self.config.fatigue_rule
                    and self._evidence.should_halt(self.config.effort),
                    tokens_used=self.usage.total_tokens,
                    budget_tokens=self.config.budget_tokens,
                    cost_usd=self.usage.cost_usd,
                    budget_usd=self.config.budget_usd,
                )
            )
            if self.on_round_end is not None:
                await self.on_round_end(self, record, not decision.stop)
            if decision.stop:
                stopped_because = decision.reason or "max_rounds"
                break
        log.info("deliberation %s stopped after %d round(s): %s", self.id, len(self.rounds),
                 stopped_because)
        return self._result(stopped_because, time.perf_counter() - started)

    def _result(self, stopped_because: str, wall_s: float) -> Deliberation:
        last = self.rounds[-1]
        winner = next((p for p in last.proposals if p.agent == last.winner), None)
        return Deliberation(
            id=self.id,
            question=self.question,
            kind=self.config.kind,
            answer=winner.answer if winner else "",
            final=winner.final if winner else None,
            winner=last.winner,
            stopped_because=stopped_because,
            rounds=self.rounds,
            usage=self.usage,
            agents=[
                AgentInfo(
                    name=a.name,
                    model=a.seat.spec.model,
                    base_url=a.seat.spec.base_url,
                    persona=a.seat.persona,
                    role=a.seat.role,
                )
                for a in self.seated
            ],
            wall_s=wall_s,
            config=self.config.model_dump(mode="json"),
        )


async def run_deliberation(
    question: str,
    agents: list[Agent],
    config: DeliberationConfig,
    *,
    embedder: Embedder,
    emit: EventSink | None = None,
    vote_weights: dict[str, float] | None = None,
    deliberation_id: str | None = None,
    on_round_end: RoundHook | None = None,
) -> Deliberation:
    """Run one deliberation and emit ``Finished`` with its result (and its step, if any)."""
    run = DeliberationRun(
        question,
        agents,
        config,
        embedder=embedder,
        emit=emit,
        vote_weights=vote_weights,
        deliberation_id=deliberation_id,
        on_round_end=on_round_end,
    )
    result = await settle_step(run, await run.run())
    await run.emit(Finished(deliberation=result))
    return result
