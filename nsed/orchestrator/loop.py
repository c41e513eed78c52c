"""The synchronous round loop: propose -> review -> vote -> gate -> stop?

Each phase fans out to every live agent at once (an anyio task group), so a round costs the
slowest call of each phase, not the sum. The orchestrator, not the agents, enforces the
protocol's guarantees: reviewers see candidates under labels re-shuffled per reviewer and per
round, with agent and model names redacted; a score a reviewer gives its own proposal is dropped
whatever the reviewer does; scores are clipped to [-100, 100]; an unparseable review is dropped
and recorded, never guessed; a review cut off at the length limit abstains for every candidate
it did not finish (recorded as dropped, reason ``truncated``). An agent whose call fails is
skipped for that phase; an agent that fails the same phase twice in a row (proposing, or
reviewing) is out for the rest of the deliberation, even if its other phase works. When fewer
than two agents are left, ``QuorumLost`` is raised if no round has completed, otherwise the
deliberation ends with the last completed round's winner (``stopped_because = "quorum_lost"``).

Protocol v2 (see ``DeliberationConfig`` and the README's "Protocol defaults"): with
``exploration`` an agent whose proposal had negative support re-solves blind next round (no
carried state, a round-1 prompt); with ``aggregation = "answer"`` the winning answer is the one
the reviews of all rounds support best (:mod:`nsed.orchestrator.aggregation`) and the answer is
the best-supported current proposal carrying it; for code, a :class:`CandidateChecker` runs
every candidate on the public tests before review (:mod:`nsed.orchestrator.feedback`).

An optional ``on_round_end`` hook runs at every round boundary, after the round is scored; it
may change the seats for the next round (``seat``/``unseat``) and ``vote_weights``. This is how
free agency benches an agent and signs on a replacement mid-deliberation.
"""

from __future__ import annotations

import logging
import math
import random
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio

from nsed.agents.agent import Agent
from nsed.agents.backend import Completion
from nsed.agents.parsing import answer_key, extract_final
from nsed.config import DeliberationConfig
from nsed.errors import BackendTimeout, ConfigError, NsedError, QuorumLost
from nsed.orchestrator import forget_gate
from nsed.orchestrator.aggregation import RoundBallots, carrier, tally_answers
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
from nsed.orchestrator.feedback import CandidateChecker, describe
from nsed.orchestrator.similarity import Embedder
from nsed.orchestrator.step_outcome import ballot, settle_step
from nsed.orchestrator.stopping import (
    EvidenceTracker,
    FatigueParams,
    StopInputs,
    UnanimityStreak,
    should_stop,
)
from nsed.orchestrator.voting import Vote, agreement, quadratic_vote, review_votes
from nsed.results import (
    AgentInfo,
    CallRecord,
    Deliberation,
    ExecutionCheck,
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
_PHASES = ("propose", "review")
_ANY = "any"  # consecutive failed calls of an agent, whatever the phase


async def _no_sink(event: Event) -> None:
    return None


def _labels(n: int) -> list[str]:
    letters = list(string.ascii_uppercase)
    return letters[:n] if n <= 26 else [f"C{i + 1}" for i in range(n)]


class _Redactor:
    """Removes agent and model names from text shown to other agents (reviews, state views).

    Names match as whole words only: an agent named ``phi`` leaves ``\\phi`` and ``graphics``
    alone.
    """

    def __init__(self, agents: list[Agent]) -> None:
        words = set()
        for agent in agents:
            words.add(agent.name)
            words.add(agent.seat.spec.name)
            words.add(agent.seat.spec.model)
        words = {w for w in words if len(w) >= 3}
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self._pattern = (
            re.compile(rf"(?<![\w\\])(?:{alternatives})(?!\w)", re.IGNORECASE) if words else None
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
        checker: CandidateChecker | None = None,
    ) -> None:
        self.question = question
        self.agents = list(agents)
        self.seated: list[Agent] = list(agents)  # everyone who ever had a seat, in order
        self.config = config
        self.embedder = embedder
        self.emit = emit or _no_sink
        self.vote_weights = dict(vote_weights or {})  # a copy: the hook may change it
        self.on_round_end = on_round_end
        self.checker = checker
        self.id = deliberation_id or uuid.uuid4().hex
        self.usage = Usage()
        self.rounds: list[RoundRecord] = []
        self.state = forget_gate.ConsensusState()
        # Consecutive failures per (agent, phase) and per (agent, any phase): an agent is out
        # once one phase failed twice in a row (a success in the other phase does not reset
        # it), or twice in a row whatever the phase.
        self._failures: dict[tuple[str, str], int] = {}
        self._rng = random.Random(config.seed) if config.seed is not None else random.Random()
        self._redact = _Redactor(agents)
        self._params = FatigueParams(
            p_g=config.fatigue_p_g,
            p_v=config.fatigue_p_v,
            lam=config.fatigue_lambda,
            beta=config.fatigue_beta,
        )
        self._evidence = EvidenceTracker(self._params)
        self._ballots: list[RoundBallots] = []
        self._explore: set[str] = set()  # agents that re-solve blind next round
        self._leader: Proposal | None = None  # the current answer's proposal

    # --- bookkeeping ----------------------------------------------------------------------

    def live_agents(self) -> list[Agent]:
        return [
            a
            for a in self.agents
            if max(self._failures.get((a.name, p), 0) for p in (*_PHASES, _ANY))
            < MAX_CONSECUTIVE_FAILURES
        ]

    def seat(self, agent: Agent, *, replaces: str | None = None) -> None:
        """Give ``agent`` a seat from the next round on, in ``replaces``' seat if named."""
        if any(a.name == agent.name for a in self.agents):
            raise ConfigError(f"agent {agent.name!r} already has a seat; unseat it first")
        names = [a.name for a in self.agents]
        if replaces is not None and replaces in names:
            self.agents[names.index(replaces)] = agent
        else:
            self.agents.append(agent)
        for phase in (*_PHASES, _ANY):
            self._failures[(agent.name, phase)] = 0
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

    def _succeed(self, agent: Agent, phase: str) -> None:
        self._failures[(agent.name, phase)] = 0
        self._failures[(agent.name, _ANY)] = 0

    async def _fail(self, agent: Agent, phase: str, exc: Exception, record: RoundRecord) -> None:
        for key in ((agent.name, phase), (agent.name, _ANY)):
            self._failures[key] = self._failures.get(key, 0) + 1
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

    def _key(self, final: str | None) -> str | None:
        return answer_key(final, self.config.kind)  # type: ignore[arg-type]

    # --- phases -----------------------------------------------------------------------------

    async def _propose(self, record: RoundRecord) -> dict[str, Proposal]:
        proposals: dict[str, Proposal] = {}
        blind = set(self._explore)

        async def one(agent: Agent) -> None:
            explore = agent.name in blind
            view = None
            if not explore:
                view = forget_gate.render_view(self.state, agent.name, self.config)
                view = self._redact(view) if view else view
            try:
                proposal, completion = await agent.propose(
                    self.question, round_index=record.index, state_view=view
                )
            except NsedError as exc:
                await self._fail(agent, "propose", exc, record)
                return
            self._succeed(agent, "propose")
            call = await self._account(agent, completion, record, "propose")
            if explore:
                proposal.blind = True
            proposals[agent.name] = proposal
            await self.emit(ProposalReceived(round=record.index, proposal=proposal, call=call))

        async with anyio.create_task_group() as tg:
            for agent in self.live_agents():
                tg.start_soon(one, agent)
        record.explorers = [a.name for a in self.agents if a.name in blind and a.name in proposals]
        # Keep the agents' order, not the arrival order, so results are reproducible.
        return {a.name: proposals[a.name] for a in self.agents if a.name in proposals}

    async def _check(self, record: RoundRecord, proposals: dict[str, Proposal]) -> None:
        """Execution feedback: run every code candidate on the public tests, before review."""
        checker = self.checker
        if checker is None or not self.config.execution_feedback:
            return
        results: dict[str, ExecutionCheck] = {}

        async def one(name: str, proposal: Proposal) -> None:
            code = proposal.final if self.config.kind == "code" else None
            if code is None and self.config.kind == "auto":
                code = extract_final(proposal.answer, "code") if "```" in proposal.answer else None
            if not code:
                if self.config.kind == "code":
                    results[name] = ExecutionCheck(agent=name, first_failure="no code found")
                return
            try:
                outcome = await checker.check(name, code)
            except Exception as exc:  # the checker is user code: record, never crash the run
                outcome = ExecutionCheck(agent=name, error=f"{type(exc).__name__}: {exc}")
            if outcome is not None:
                results[name] = outcome.model_copy(update={"agent": name})

        async with anyio.create_task_group() as tg:
            for name, proposal in proposals.items():
                tg.start_soon(one, name, proposal)
        record.checks = [results[name] for name in proposals if name in results]

    def _candidate_text(self, proposal: Proposal, check: ExecutionCheck | None) -> str:
        limit = self.config.candidate_chars
        v2 = self.config.prompts != "v1"
        clip = forget_gate.clip_middle if v2 else _clip_head
        answer = proposal.answer.strip()
        reasoning = proposal.reasoning.strip()
        notes = []
        if proposal.truncated:
            notes.append("(This proposal was cut off at the length limit: it is incomplete.)")
        if check is not None:
            notes.append(describe(check))
        room = max(0, limit - len(answer) - 40 - sum(len(n) + 1 for n in notes))
        parts = []
        if self.config.share_reasoning and proposal.thinking.strip():
            reasoning = f"{proposal.thinking.strip()}\n\n{reasoning}".strip()
        if reasoning and room > 80:
            parts.append(f"Reasoning:\n{clip(reasoning, room)}")
        parts.append(f"Answer:\n{clip(answer, limit) if v2 else answer[:limit]}")
        parts += notes
        return self._redact("\n".join(parts))

    async def _review(self, record: RoundRecord, proposals: dict[str, Proposal]) -> set[str]:
        """Every live agent reviews the others; returns the reviewers whose reply was cut off."""
        checks = {c.agent: c for c in record.checks}
        texts = {name: self._candidate_text(p, checks.get(name)) for name, p in proposals.items()}
        partial: set[str] = set()

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
            self._succeed(agent, "review")
            call = await self._account(agent, completion, record, "review")
            reviews = []
            finished: set[str] = set()
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
                if review.dropped_reason is None and author is not None:
                    finished.add(author)
                reviews.append(review)
            cut = completion.truncated
            for dropped in parsed.dropped:
                author = author_of.get(dropped.candidate) if dropped.candidate else None
                if cut and (author is None or author not in finished):
                    continue  # recorded below as truncated
                reviews.append(
                    Review(
                        reviewer=agent.name,
                        candidate=author,
                        score=None,
                        dropped_reason=dropped.reason,
                    )
                )
            if cut:
                # Cut off by max_tokens: an abstention for every candidate it did not finish.
                partial.add(agent.name)
                for label, _ in candidates:
                    author = author_of[label]
                    if author not in finished:
                        reviews.append(
                            Review(
                                reviewer=agent.name,
                                candidate=author,
                                score=None,
                                dropped_reason="truncated",
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
        return partial

    def _eligible(self, record: RoundRecord, proposals: dict[str, Proposal]) -> set[str]:
        """Proposals that may win: complete (not cut off) and, for code with public tests,
        passing them. Callers fall back to all when none is eligible."""
        checks = {c.agent: c for c in record.checks if c.error is None and c.total > 0}
        return {
            name
            for name, p in proposals.items()
            if not p.truncated and (name not in checks or checks[name].ok)
        }

    def _score(
        self, record: RoundRecord, proposals: dict[str, Proposal], partial: set[str]
    ) -> Proposal | None:
        """Vote, aggregate and fill the round's statistics; returns the winning proposal."""
        cfg = self.config
        scores: dict[str, dict[str, float]] = {}
        for review in record.reviews:
            if review.dropped_reason is None and review.candidate and review.score is not None:
                scores.setdefault(review.reviewer, {})[review.candidate] = review.score
        incumbent = self.rounds[-1].winner if self.rounds else None
        weights = self.vote_weights or None
        eligible = self._eligible(record, proposals)
        vote = quadratic_vote(
            scores,
            list(proposals),
            mode=cfg.qv_mode,
            incumbent=incumbent,
            weights=weights,
            prior=cfg.support_prior,
            conviction=cfg.conviction,
            eligible=eligible,
            partial=partial,
        )
        votes = review_votes(
            scores, list(proposals), mode=cfg.qv_mode, weights=weights, partial=partial
        )
        record.support = vote.support
        record.net_support = vote.support
        record.variance = vote.variance
        record.mean_score = vote.mean_score
        keys = {name: self._key(p.final) for name, p in proposals.items()}
        self._ballots.append(
            RoundBallots(
                round=record.index,
                answers=keys,
                finals={name: p.final for name, p in proposals.items()},
                votes=votes,
                eligible=sorted(eligible),
                fresh=[n for n, p in proposals.items() if p.blind or record.index == 1],
            )
        )
        winner: Proposal | None = None
        if cfg.aggregation == "answer" and any(k is not None for k in keys.values()):
            winner = self._answer_winner(record, proposals, votes)
        if winner is None:
            winner = self._proposal_winner(record, proposals, vote.winner, incumbent)
            if vote.winner is not None:
                record.conviction = vote.conviction
        record.winner = winner.agent if winner else None
        record.winner_final = winner.final if winner else None
        current = [keys[name] for name in proposals]
        record.unanimous = len(current) >= 2 and None not in current and len(set(current)) == 1
        self._explore = self._explorers(record, proposals) if cfg.exploration else set()
        return winner

    def _answer_winner(
        self, record: RoundRecord, proposals: dict[str, Proposal], votes: dict[str, list[Vote]]
    ) -> Proposal | None:
        incumbent_key = self._key(self._leader.final) if self._leader else None
        tally = tally_answers(
            self._ballots, incumbent=incumbent_key, fresh_vote=self.config.fresh_vote
        )
        record.answers = tally.answers
        key = tally.winner
        record.winner_basis = "answer"
        if key is None:  # no counted review at all: the answer most proposals reached
            standings = sorted(
                tally.answers, key=lambda a: (-a.proposals, -a.last_round, a.first_round)
            )
            if not standings:
                return None
            key = standings[0].key
            record.winner_basis = "plurality (no counted reviews)"
        support = {
            b.round: record.support if b.round == record.index else self._support_of(b.round)
            for b in self._ballots
        }
        found = carrier(key, self._ballots, support)
        if found is None:
            return None
        round_index, agent = found
        if round_index == record.index:
            proposal = proposals[agent]
        else:
            proposal = next(
                p
                for r in self.rounds
                if r.index == round_index
                for p in r.proposals
                if p.agent == agent
            )
            record.winner_round = round_index
        if self.config.conviction == "agreement":
            current = [
                v for name, k in self._ballots[-1].answers.items() if k == key
                for v in votes.get(name, [])
            ]
            record.conviction = agreement(current)
        else:
            total = math.fsum(abs(a.support) for a in tally.answers)
            best = next(a.support for a in tally.answers if a.key == key)
            record.conviction = max(-1.0, min(1.0, best / total)) if total > 0 else 0.0
        return proposal

    def _support_of(self, round_index: int) -> dict[str, float]:
        return next((r.support for r in self.rounds if r.index == round_index), {})

    def _proposal_winner(
        self,
        record: RoundRecord,
        proposals: dict[str, Proposal],
        voted: str | None,
        incumbent: str | None,
    ) -> Proposal | None:
        record.winner_basis = "proposal"
        if voted is not None:
            return proposals[voted]
        if not proposals:
            return None
        # Nothing was reviewed: keep the incumbent if it proposed, else the first proposal.
        record.winner_basis = "order (no counted reviews)"
        name = incumbent if incumbent in proposals else next(iter(proposals))
        return proposals[name]

    def _explorers(self, record: RoundRecord, proposals: dict[str, Proposal]) -> set[str]:
        """Agents whose proposal the reviews rejected: they re-solve blind next round.

        Negative support, or (``sqrt_raw``, where votes are never negative) a mean raw score
        below 0; a proposal nobody reviewed is not rejected.
        """
        reviewed = {r.candidate for r in record.reviews if r.dropped_reason is None}
        rejected = set()
        for name in proposals:
            if name not in reviewed:
                continue
            if self.config.qv_mode == "sqrt_raw":
                if record.mean_score.get(name, 0.0) < 0:
                    rejected.add(name)
            elif record.support.get(name, 0.0) < 0:
                rejected.add(name)
        return rejected

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> Deliberation:
        started = time.perf_counter()
        stopped_because = "max_rounds"
        unanimity = UnanimityStreak(self.config.unanimity_conviction)
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
                await self._check(record, candidates)
                partial = await self._review(record, candidates)
                self._leader = self._score(record, candidates, partial)
            du_dt, evidence = self._evidence.add(index, record.conviction)
            record.du_dt, record.evidence = du_dt, evidence
            self.state = await anyio.to_thread.run_sync(
                partial_update, self.state, record, self.config, self.embedder, self._leader
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
            streak = unanimity.add(
                unanimous=record.unanimous,
                conviction=record.conviction,
                key=self._key(record.winner_final),
            )
            decision = should_stop(
                StopInputs.from_config(
                    self.config,
                    round_index=index,
                    unanimous_streak=streak,
                    evidence=evidence,
                    tokens_used=self.usage.total_tokens,
                    cost_usd=self.usage.cost_usd,
                )
            )
            if self.on_round_end is not None:
                await self.on_round_end(self, record, not decision.stop)
            if decision.stop:
                stopped_because = decision.reason or "max_rounds"
                break
        log.info("deliberation stopped after %d round(s): %s", len(self.rounds), stopped_because)
        return self._result(stopped_because, time.perf_counter() - started)

    def _result(self, stopped_because: str, wall_s: float) -> Deliberation:
        last = self.rounds[-1]
        winner = self._leader
        if winner is None or winner.agent != last.winner:
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


def partial_update(
    state: forget_gate.ConsensusState,
    record: RoundRecord,
    config: DeliberationConfig,
    embedder: Embedder,
    leader: Proposal | None,
) -> forget_gate.ConsensusState:
    """``forget_gate.update`` with the round's winning proposal (for a worker thread)."""
    return forget_gate.update(state, record, config, embedder, leader=leader)


def _clip_head(text: str, chars: int) -> str:
    """v1's clipping: the head of ``text``."""
    return text if len(text) <= chars else text[:chars] + "…"


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
    checker: CandidateChecker | None = None,
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
        checker=checker,
    )
    result = await settle_step(run, await run.run())
    await run.emit(Finished(deliberation=result))
    return result
