"""The consensus state carried between rounds, and the semantic forget gate that bounds it.

What is carried (the protocol's "hidden state"): the last round's leading proposal, the
anonymous table of every proposal's final answer and support, each agent's own last proposal and
the critiques addressed to it. Older rounds decay by ``gamma ** age``: kept verbatim while the
weight is at least ``keep_threshold``, reduced to a one-line summary while it is at least
``drop_threshold``, forgotten below. Near-duplicate critiques (by embedding similarity) are
merged before they are carried, and the rendered view is hard-capped at ``state_token_cap``
tokens, so the prompt of round 10 is about as long as the prompt of round 2.

Agent names never appear in a view: peers are described only by their answers and support.
(The loop also passes every view through its redactor, so a name quoted inside a proposal
does not leak either.)

With ``prompts = "v2"`` the view also carries what v1 lost: the leader sees its own proposal
(it is told it led and then gets critiques of that text), the best-supported proposal with a
different final answer (the minority's reasoning), and the answer-level standings over all
rounds. Long reasoning is clipped in the middle, keeping its head and its tail: the end of a
derivation holds the final computation, where most errors are.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from nsed.agents.backend import estimate_tokens
from nsed.agents.parsing import answer_key
from nsed.config import DeliberationConfig
from nsed.orchestrator.similarity import Embedder, cluster_near_duplicates
from nsed.results import AnswerSupport, Proposal, RoundRecord


class TableRow(BaseModel):
    agent: str
    final: str | None
    support: float


class OwnProposal(BaseModel):
    final: str | None
    answer: str
    reasoning: str = ""
    support: float


class Dissent(BaseModel):
    """The best-supported proposal whose final answer differs from the leader's."""

    agent: str
    final: str | None
    answer: str
    reasoning: str = ""
    support: float


class RoundDigest(BaseModel):
    """What one completed round leaves behind for the next ones."""

    round: int
    winner: str | None
    winner_answer: str = ""
    winner_reasoning: str = ""
    winner_final: str | None = None
    winner_support: float = 0.0
    conviction: float = 0.0
    table: list[TableRow] = Field(default_factory=list)
    own: dict[str, OwnProposal] = Field(default_factory=dict)
    critiques: dict[str, list[str]] = Field(default_factory=dict)
    dissent: Dissent | None = None
    answers: list[AnswerSupport] = Field(default_factory=list)
    leading_key: str | None = None


class ConsensusState(BaseModel):
    """The bounded memory of a deliberation; ``digests`` holds only rounds not yet forgotten."""

    digests: list[RoundDigest] = Field(default_factory=list)

    @property
    def last(self) -> RoundDigest | None:
        return self.digests[-1] if self.digests else None


def _merge_critiques(
    items: list[tuple[float, str]], embedder: Embedder, threshold: float
) -> list[str]:
    """Merge near-duplicate critiques into one line that says how many reviewers made it."""
    texts = [text for _, text in items if text.strip()]
    scores = [score for score, text in items if text.strip()]
    if not texts:
        return []
    merged = []
    for cluster in cluster_near_duplicates(texts, embedder, threshold):
        first = cluster[0]
        mean = sum(scores[i] for i in cluster) / len(cluster)
        prefix = f"({len(cluster)} reviewers) " if len(cluster) > 1 else ""
        merged.append(f"{prefix}score {mean:+.0f}: {texts[first]}")
    return merged


def update(
    state: ConsensusState,
    record: RoundRecord,
    config: DeliberationConfig,
    embedder: Embedder,
    *,
    leader: Proposal | None = None,
) -> ConsensusState:
    """Fold a scored round into the state and forget what has decayed below the drop threshold.

    ``leader`` is the winning proposal when it is not one of this round's (answer-level
    aggregation may return an earlier round's proposal); by default it is the round's winner's.
    """
    by_agent = {p.agent: p for p in record.proposals}
    winner = leader or (by_agent.get(record.winner) if record.winner else None)
    critiques: dict[str, list[tuple[float, str]]] = {}
    for review in record.reviews:
        if review.dropped_reason is None and review.candidate and review.score is not None:
            critiques.setdefault(review.candidate, []).append((review.score, review.critique))
    kind = config.kind
    leading_key = answer_key(winner.final, kind) if winner else None  # type: ignore[arg-type]
    others = [
        p
        for p in record.proposals
        if p.final and answer_key(p.final, kind) != leading_key  # type: ignore[arg-type]
    ]
    best_other = max(others, key=lambda p: record.support.get(p.agent, 0.0), default=None)
    digest = RoundDigest(
        round=record.index,
        winner=record.winner,
        winner_answer=winner.answer if winner else "",
        winner_reasoning=winner.reasoning if winner else "",
        winner_final=winner.final if winner else None,
        winner_support=record.support.get(record.winner or "", 0.0),
        conviction=record.conviction,
        table=[
            TableRow(agent=p.agent, final=p.final, support=record.support.get(p.agent, 0.0))
            for p in sorted(record.proposals, key=lambda p: -record.support.get(p.agent, 0.0))
        ],
        own={
            p.agent: OwnProposal(
                final=p.final,
                answer=p.answer,
                reasoning=p.reasoning,
                support=record.support.get(p.agent, 0.0),
            )
            for p in record.proposals
        },
        critiques={
            agent: _merge_critiques(items, embedder, config.merge_similarity)
            for agent, items in critiques.items()
        },
        dissent=None
        if best_other is None
        else Dissent(
            agent=best_other.agent,
            final=best_other.final,
            answer=best_other.answer,
            reasoning=best_other.reasoning,
            support=record.support.get(best_other.agent, 0.0),
        ),
        answers=list(record.answers),
        leading_key=leading_key,
    )
    digests = [*state.digests, digest]
    # Forget: keep only rounds whose weight gamma**age is still at or above the drop threshold.
    kept = [
        d for d in digests if _weight(config.gamma, digest.round - d.round) >= config.drop_threshold
    ]
    return ConsensusState(digests=kept)


def _weight(gamma: float, age: int) -> float:
    return 1.0 if age == 0 else gamma**age


def _clip(text: str, chars: int) -> str:
    text = text.strip()
    return text if len(text) <= chars else text[: max(0, chars - 1)].rstrip() + "…"


def clip_middle(text: str, chars: int) -> str:
    """``text`` within ``chars``: its head and its tail, the middle replaced by " … ".

    The tail is the larger part: the end of a derivation holds the final computation.
    """
    text = text.strip()
    if len(text) <= chars:
        return text
    if chars < 40:
        return _clip(text, chars)
    room = chars - 3
    head = room // 3
    tail = room - head
    return text[:head].rstrip() + " … " + text[len(text) - tail :].lstrip()


def _proposal_text(reasoning: str, answer: str, chars: int, *, keep_tail: bool = False) -> str:
    """A proposal within ``chars``: the answer in full if it fits, then a reasoning excerpt
    (its head, or with ``keep_tail`` its head and tail)."""
    clip = clip_middle if keep_tail else _clip
    answer = clip(answer, chars)
    room = chars - len(answer)
    if reasoning.strip() and room > 120:
        return f"Reasoning (excerpt): {clip(reasoning, room)}\nAnswer: {answer}"
    return answer


def _band(support: float) -> str:
    score = (support + 1) / 2
    if score < 0.5:
        return f"{score:.2f}/1.0: low support, rethink your approach"
    if score < 0.8:
        return f"{score:.2f}/1.0: moderate support, strengthen the weak steps"
    return f"{score:.2f}/1.0: high support, make it airtight"


def render_view(state: ConsensusState, agent: str, config: DeliberationConfig) -> str | None:
    """The state as one agent sees it, within ``state_token_cap`` tokens; None before round 2."""
    last = state.last
    if last is None:
        return None
    budget_chars = config.state_token_cap * 4
    answer_chars = max(200, budget_chars // 3)
    critique_chars = max(80, budget_chars // 12)
    for _ in range(8):
        text = _render(state, agent, config, answer_chars, critique_chars)
        if estimate_tokens(text) <= config.state_token_cap:
            return text
        answer_chars = max(60, answer_chars // 2)
        critique_chars = max(40, critique_chars // 2)
    return _clip(text, budget_chars)


def _render(
    state: ConsensusState,
    agent: str,
    config: DeliberationConfig,
    answer_chars: int,
    critique_chars: int,
) -> str:
    last = state.last
    assert last is not None
    v2 = config.prompts != "v1"
    lines = [f"Council state after round {last.round} (authors are anonymous):"]
    own = last.own.get(agent)
    if last.winner == agent:
        lines.append(
            f"Your proposal led the vote (support {last.winner_support:+.2f}, conviction "
            f"{last.conviction:.2f})."
            + (
                "\n" + _proposal_text(own.reasoning, own.answer, answer_chars, keep_tail=True)
                if v2 and own is not None
                else ""
            )
        )
    elif last.winner is not None:
        lines.append(
            f"Leading proposal (support {last.winner_support:+.2f}, conviction "
            f"{last.conviction:.2f}):\n"
            + _proposal_text(last.winner_reasoning, last.winner_answer, answer_chars, keep_tail=v2)
        )
    dissent = last.dissent
    if v2 and dissent is not None and dissent.agent != agent:
        lines.append(
            f"Strongest proposal with a different final answer (support {dissent.support:+.2f}):"
            "\n" + _proposal_text(dissent.reasoning, dissent.answer, answer_chars // 2,
                                  keep_tail=True)
        )
    if len(last.table) > 1:
        lines.append("All proposals of that round, by support:")
        for row in last.table:
            tag = " (yours)" if row.agent == agent else ""
            leading = row.agent == last.winner
            if v2 and last.leading_key is not None and row.final:
                leading = answer_key(row.final, config.kind) == last.leading_key  # type: ignore[arg-type]
            tag += " (leading)" if leading else ""
            final = _clip(row.final, 80) if row.final else "no clear final answer"
            lines.append(f"- final {final}: support {row.support:+.2f}{tag}")
    if v2 and len(last.answers) > 1:
        lines.append("Answers across all rounds so far (net review support, reviews):")
        for standing in last.answers[:5]:
            lines.append(
                f"  answer {_clip(standing.final, 80)}: {standing.support:+.2f} "
                f"({standing.review_weight:g} reviews, {standing.proposals} proposals)"
            )
    if own is not None and last.winner != agent:
        lines.append(
            f"Your previous proposal ({_band(own.support)}):\n"
            + _proposal_text(own.reasoning, own.answer, answer_chars, keep_tail=v2)
        )
    mine = last.critiques.get(agent, [])
    if mine:
        lines.append("Critiques of your proposal:")
        lines += [f"- {_clip(c, critique_chars)}" for c in mine]
    older = []
    for digest in state.digests[:-1]:
        weight = _weight(config.gamma, last.round - digest.round)
        if weight < config.drop_threshold:
            continue
        mine_then = digest.own.get(agent)
        if weight >= config.keep_threshold:
            older.append(
                f"- round {digest.round}: leading proposal (conviction {digest.conviction:.2f}):"
                f" {_clip(digest.winner_answer, answer_chars // 2)}"
            )
        else:
            leading = _clip(digest.winner_final or "unclear", 60)
            yours = (
                f"; your final {_clip(mine_then.final or 'unclear', 60)} "
                f"(support {mine_then.support:+.2f})"
                if mine_then
                else ""
            )
            older.append(
                f"- round {digest.round}: leading final {leading} "
                f"(conviction {digest.conviction:.2f}){yours}"
            )
    if older:
        lines.append("Earlier rounds:")
        lines += older
    return "\n".join(lines)
