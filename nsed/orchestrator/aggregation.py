"""Answer-level aggregation: which final answer the council's reviews support, over all rounds.

Proposal-level voting (:func:`~nsed.orchestrator.voting.quadratic_vote`) asks which of this
round's texts is best. Two proposals with the same final answer are then rivals, and the
evidence of earlier rounds is thrown away. Here the proposals of every round so far are grouped
by their normalised final answer (:func:`~nsed.agents.parsing.answer_key`), and each answer's
support is the *sum* of the QV votes its proposals received, plus one vote of weight λ
(``fresh_vote``) per proposal of it that was written independently (round 1, or a blind
re-solve of exploration):

    support(a) = Σ_{proposals i with answer a} ( Σ_{counted reviews j of i} w_j·q_ji
                                                 + λ·[i was written without the state] )

A sum rather than a mean, because each review is evidence: if reviewers are right with
probability p_v > 1/2, the log-likelihood ratio of "a is correct" grows with the number of
positive minus negative reviews, so an answer that reviewers kept endorsing outweighs one lucky
proposal with two friendly reviews, and an answer that is proposed often but judged wrong
sinks. The fresh votes are self-consistency inside the deliberation: an independent solver
reaching an answer is evidence too (when errors are independent, the strongest there is),
while a proposal written after seeing the leader is a copy and adds no vote. λ = 1, one full
vote, was the best compromise on the simulator's grid (perf/simulate.md: a larger λ helps
weak reviewers, a smaller one helps when solvers share their errors). Votes are comparable
across rounds because ``budget_capped`` never rescales a reviewer's scores up.

The winning answer is the best supported one that has counted reviews (and, while one exists,
an eligible proposal: e.g. one that passes its public tests). Ties: more review weight, then the
higher mean raw score, then the answer seen in the later round, then the incumbent answer, then
the one that appeared first. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, Field

from nsed.orchestrator.voting import Vote
from nsed.results import AnswerSupport


class RoundBallots(BaseModel):
    """What one scored round contributes: each proposal's answer key and the votes it got."""

    round: int
    answers: dict[str, str | None] = Field(description="agent -> answer key (None: no final)")
    finals: dict[str, str | None] = Field(default_factory=dict, description="agent -> final")
    votes: dict[str, list[Vote]] = Field(default_factory=dict, description="agent -> votes")
    eligible: list[str] | None = Field(
        default=None, description="agents whose proposals may win (None: all)"
    )
    fresh: list[str] = Field(
        default_factory=list,
        description="agents whose proposal was written independently (round 1, blind re-solve)",
    )


class AnswerVote(BaseModel):
    """The answers of a deliberation so far, best first, and the winning one."""

    answers: list[AnswerSupport]
    winner: str | None = Field(description="key of the winning answer; None: nothing reviewed")
    tie_broken_by: str | None = None


def tally_answers(
    rounds: Sequence[RoundBallots], *, incumbent: str | None = None, fresh_vote: float = 1.0
) -> AnswerVote:
    """Group every proposal of ``rounds`` by answer and pick the best supported answer.

    ``fresh_vote`` is the vote each independently written proposal gives its own answer.
    """
    order: list[str] = []
    votes: dict[str, list[Vote]] = {}
    finals: dict[str, str] = {}
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    eligible: dict[str, bool] = {}
    fresh: dict[str, int] = {}
    for ballot in sorted(rounds, key=lambda b: b.round):
        allowed = None if ballot.eligible is None else set(ballot.eligible)
        for agent, key in ballot.answers.items():
            if key is None:
                continue
            if key not in votes:
                order.append(key)
                votes[key] = []
                counts[key] = 0
                first[key] = ballot.round
                eligible[key] = False
            votes[key].extend(ballot.votes.get(agent, []))
            if agent in ballot.fresh:
                fresh[key] = fresh.get(key, 0) + 1
            counts[key] += 1
            last[key] = ballot.round
            finals[key] = ballot.finals.get(agent) or key
            eligible[key] = eligible[key] or allowed is None or agent in allowed
    tallies = []
    for key in order:
        got = votes[key]
        weight = math.fsum(v.weight for v in got)
        raws = [v.raw for v in got]
        tallies.append(
            AnswerSupport(
                key=key,
                final=finals[key],
                support=math.fsum(v.weight * v.q for v in got) + fresh_vote * fresh.get(key, 0),
                review_weight=weight,
                mean_score=math.fsum(raws) / len(raws) if raws else 0.0,
                proposals=counts[key],
                fresh=fresh.get(key, 0),
                first_round=first[key],
                last_round=last[key],
                eligible=eligible[key],
            )
        )
    reviewed = [t for t in tallies if t.review_weight > 0]
    allowed_tallies = [t for t in reviewed if t.eligible] or reviewed
    winner, rule = _pick(allowed_tallies, incumbent)
    ranked = sorted(tallies, key=lambda t: (-t.support, -t.review_weight, order.index(t.key)))
    return AnswerVote(answers=ranked, winner=winner, tie_broken_by=rule)


def _pick(tallies: list[AnswerSupport], incumbent: str | None) -> tuple[str | None, str | None]:
    if not tallies:
        return None, None
    tied = tallies
    criteria: tuple[tuple[str, Callable[[AnswerSupport], float]], ...] = (
        ("support", lambda t: t.support),
        ("review_weight", lambda t: t.review_weight),
        ("mean_score", lambda t: t.mean_score),
        ("recency", lambda t: float(t.last_round)),
    )
    for name, value in criteria:
        best = max(value(t) for t in tied)
        tied = [t for t in tied if math.isclose(value(t), best, rel_tol=1e-9, abs_tol=1e-12)]
        if len(tied) == 1:
            return tied[0].key, None if name == "support" else name
    if incumbent is not None and any(t.key == incumbent for t in tied):
        return incumbent, "incumbent"
    return tied[0].key, "order"


def carrier(
    key: str,
    rounds: Sequence[RoundBallots],
    support: Mapping[int, Mapping[str, float]],
) -> tuple[int, str] | None:
    """(round, agent) of the proposal to return for answer ``key``: the best supported
    proposal carrying it in the latest round that has one (ties: the agents' order)."""
    for ballot in sorted(rounds, key=lambda b: -b.round):
        agents = [a for a, k in ballot.answers.items() if k == key]
        if agents:
            scores = support.get(ballot.round, {})
            best = max(agents, key=lambda a: (scores.get(a, 0.0), -agents.index(a)))
            return ballot.round, best
    return None


__all__ = ["AnswerVote", "RoundBallots", "carrier", "tally_answers"]
