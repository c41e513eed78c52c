"""Quadratic voting: turn one round's peer scores into support, a winner and a conviction.

Pure functions, no I/O. Each reviewer's raw scores (−100…100) become votes whose cost grows
quadratically (votes = √credits), so no single extreme grader can dominate, and a candidate's
support is the *mean* vote it received, so proposals reviewed by more agents get no edge.
The formulas and tie rules are in the README's "Protocol defaults" table (``qv_mode``, ties).

Modes (what one reviewer j's raw score w_ji becomes, q_ji ∈ [−1, 1]):

* ``budget_capped`` (v2): a reviewer holds 100 credits per round and a raw score spends |w|
  of them; a reviewer that asks for more (Σ_k |w_jk| > 100) has every score scaled down to
  fit, never up. q = sign(c)·√(|c|/100) with c = w·min(1, 100/Σ_k |w_jk|). The quadratic cost
  stays (spreading conviction is cheaper than concentrating it) and a reviewer's confidence
  still counts: {+90, +90} gives 0.707 each, {+20, +20} 0.447, {+5, 0} 0.224 and 0.
* ``budget_signed`` (v1): f = w / Σ_k |w_jk|, q = sign(f)·√|f|, which discards magnitude.
* ``sqrt_raw``: q = √(max(w, 0)/100); negative scores count as zero votes.

A candidate needs counted reviews (from reviewers of weight > 0) to win: among reviewed
candidates S_i = Σ_j w_j q_ji / (Σ_j w_j + κ), where κ = ``prior`` pseudo-reviews at 0 shrink
the support of a candidate few reviewers saw toward 0. ``eligible`` restricts the winner
further (a code candidate that fails its public tests, a proposal cut off at the length limit)
while any eligible reviewed candidate exists. Conviction is ``share`` (v1: S_win / Σ|S|, the
winner's dominance) or ``agreement`` (v2: the mean raw score the winner received / 100, so
perfect agreement at +80 is 0.8 whatever the team size).

Sums use :func:`math.fsum` (exactly rounded), so the result does not depend on the order in
which reviewers are listed; ties are compared with a tiny tolerance so float noise cannot pick
a winner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from nsed.errors import ConfigError

QVMode = Literal["budget_capped", "budget_signed", "sqrt_raw"]
ConvictionMode = Literal["agreement", "share"]
TieRule = Literal["mean_score", "variance", "incumbent", "order"]
QV_MODES: tuple[str, ...] = ("budget_capped", "budget_signed", "sqrt_raw")
CONVICTION_MODES: tuple[str, ...] = ("agreement", "share")
SCORE_MIN, SCORE_MAX = -100.0, 100.0
CREDITS = 100.0  # a reviewer's credits per round in budget_capped mode


class Vote(BaseModel):
    """One counted review as a vote: the reviewer's weight, its QV vote q and the raw score."""

    reviewer: str
    weight: float
    q: float
    raw: float


class VoteResult(BaseModel):
    """The outcome of one round's vote, keyed by candidate (agent) name."""

    support: dict[str, float] = Field(description="S_i: (weighted, shrunk) mean QV vote, [-1, 1]")
    mean_score: dict[str, float] = Field(description="mean raw score received (0 if none)")
    variance: dict[str, float] = Field(description="population variance of raw scores received")
    n_reviews: dict[str, int] = Field(description="reviews received (any reviewer weight)")
    weighted_reviews: dict[str, float] = Field(
        default_factory=dict, description="Σ reviewer weights: > 0 means counted reviews"
    )
    winner: str | None = Field(
        description="argmax support among reviewed candidates after tie rules; None if none"
    )
    conviction: float = Field(description="share or agreement (see the module), in [-1, 1]")
    tie_broken_by: TieRule | None = Field(
        default=None, description="the tie rule that decided the winner, None if S alone did"
    )

    @property
    def net_support(self) -> dict[str, float]:
        """ns_i; equal to ``support`` because S_i is already a mean in [-1, 1]."""
        return dict(self.support)


def review_votes(
    scores: Mapping[str, Mapping[str, float]],
    candidates: Sequence[str],
    *,
    mode: QVMode = "budget_capped",
    weights: Mapping[str, float] | None = None,
    partial: Collection[str] = (),
) -> dict[str, list[Vote]]:
    """Every counted review of one round as a :class:`Vote`, per candidate.

    ``scores`` maps reviewer -> {candidate -> raw score in [-100, 100]}. Self-scores and scores
    for names not in ``candidates`` are ignored (they are not "counted"), also in the
    budget normalisation. ``partial`` names reviewers whose reply was cut off: their finished
    scores are never scaled *up* (budget_signed normalises them as budget_capped does).
    """
    cand_list = _check_candidates(candidates)
    _check_mode(mode)
    weight_of = _check_weights(weights)
    cand_set = set(cand_list)
    votes: dict[str, list[Vote]] = {c: [] for c in cand_list}
    for reviewer, row in scores.items():
        counted = {
            cand: _check_score(reviewer, cand, raw)
            for cand, raw in row.items()
            if cand in cand_set and cand != reviewer
        }
        if not counted:
            continue
        row_mode: QVMode = "budget_capped" if (
            reviewer in partial and mode == "budget_signed"
        ) else mode
        qs = _qv_row(counted, row_mode)
        w = weight_of(reviewer)
        for cand, raw in counted.items():
            votes[cand].append(Vote(reviewer=reviewer, weight=w, q=qs[cand], raw=raw))
    return votes


def quadratic_vote(
    scores: Mapping[str, Mapping[str, float]],
    candidates: Sequence[str],
    *,
    mode: QVMode = "budget_capped",
    incumbent: str | None = None,
    weights: Mapping[str, float] | None = None,
    prior: float = 1.0,
    conviction: ConvictionMode = "agreement",
    eligible: Collection[str] | None = None,
    partial: Collection[str] = (),
) -> VoteResult:
    """Score one round (the defaults are protocol v2; v1 is ``mode="budget_signed",
    prior=0, conviction="share"``).

    ``weights`` (default 1.0 per reviewer) turns S_i into the weighted mean Σ w_j q_ji / Σ w_j,
    used to damp agents on probation; ``prior`` adds κ pseudo-reviews at 0 to that mean. Ties
    on S are broken by higher mean raw score, then lower variance, then ``incumbent``, then
    ``candidates`` order. Only candidates with counted reviews (Σ w_j > 0) can win, and among
    them only ``eligible`` ones while any exists; ``winner`` is None when nobody was reviewed.
    """
    if not (math.isfinite(prior) and prior >= 0):
        raise ConfigError(f"prior is {prior!r}; it must be a finite number >= 0 (0: no shrink)")
    if conviction not in CONVICTION_MODES:
        raise ConfigError(
            f"conviction {conviction!r} is unknown; use one of {', '.join(CONVICTION_MODES)}"
        )
    votes = review_votes(scores, candidates, mode=mode, weights=weights, partial=partial)
    cand_list = list(votes)

    support: dict[str, float] = {}
    mean_score: dict[str, float] = {}
    variance: dict[str, float] = {}
    n_reviews: dict[str, int] = {}
    weighted: dict[str, float] = {}
    for cand in cand_list:
        received = votes[cand]
        n_reviews[cand] = len(received)
        total_w = math.fsum(v.weight for v in received)
        weighted[cand] = total_w
        support[cand] = (
            _clamp(math.fsum(v.weight * v.q for v in received) / (total_w + prior))
            if total_w > 0
            else 0.0
        )
        mean_score[cand], variance[cand] = _raw_stats([v.raw for v in received])

    reviewed = [c for c in cand_list if weighted[c] > 0]
    allowed = [c for c in reviewed if eligible is None or c in eligible] or reviewed
    winner, tie_rule = _pick_winner(allowed, support, mean_score, variance, incumbent)
    value = 0.0
    if winner is not None:
        if conviction == "share":
            total_abs = math.fsum(abs(s) for s in support.values())
            value = _clamp(support[winner] / total_abs) if total_abs > 0 else 0.0
        else:
            value = agreement(votes[winner])
    return VoteResult(
        support=support,
        mean_score=mean_score,
        variance=variance,
        n_reviews=n_reviews,
        weighted_reviews=weighted,
        winner=winner,
        conviction=value,
        tie_broken_by=tie_rule,
    )


def agreement(votes: Sequence[Vote]) -> float:
    """The weighted mean raw score of ``votes`` / 100, in [-1, 1] (0 without weight)."""
    total_w = math.fsum(v.weight for v in votes)
    if total_w <= 0:
        return 0.0
    return _clamp(math.fsum(v.weight * v.raw for v in votes) / total_w / SCORE_MAX)


def _raw_stats(raws: Sequence[float]) -> tuple[float, float]:
    """(mean, population variance) of raw scores; (0, 0) for none."""
    if not raws:
        return 0.0, 0.0
    mean = math.fsum(raws) / len(raws)
    return mean, max(0.0, math.fsum((r - mean) ** 2 for r in raws) / len(raws))


def _qv_row(counted: dict[str, float], mode: QVMode) -> dict[str, float]:
    """One reviewer's QV votes q_ji for the candidates it scored."""
    if mode == "sqrt_raw":
        return {c: math.sqrt(max(w, 0.0) / SCORE_MAX) for c, w in counted.items()}
    spent = math.fsum(abs(w) for w in counted.values())
    if spent == 0:
        return dict.fromkeys(counted, 0.0)
    # budget_signed: credits are the share of the reviewer's total (magnitude discarded);
    # budget_capped: credits are the raw score, scaled down only past CREDITS in all.
    scale = 1.0 / spent if mode == "budget_signed" else min(1.0, CREDITS / spent) / SCORE_MAX
    out: dict[str, float] = {}
    for cand, w in counted.items():
        f = w * scale
        out[cand] = _clamp(math.copysign(math.sqrt(abs(f)), f)) if f != 0 else 0.0
    return out


def _check_mode(mode: str) -> None:
    if mode not in QV_MODES:
        raise ConfigError(f"qv mode {mode!r} is unknown; use one of {', '.join(QV_MODES)}")


def _pick_winner(
    cands: list[str],
    support: dict[str, float],
    mean_score: dict[str, float],
    variance: dict[str, float],
    incumbent: str | None,
) -> tuple[str | None, TieRule | None]:
    if not cands:
        return None, None
    best = max(support[c] for c in cands)
    tied = [c for c in cands if _close(support[c], best)]
    if len(tied) == 1:
        return tied[0], None
    top_mean = max(mean_score[c] for c in tied)
    tied = [c for c in tied if _close(mean_score[c], top_mean)]
    if len(tied) == 1:
        return tied[0], "mean_score"
    low_var = min(variance[c] for c in tied)
    tied = [c for c in tied if _close(variance[c], low_var)]
    if len(tied) == 1:
        return tied[0], "variance"
    if incumbent is not None and incumbent in tied:
        return incumbent, "incumbent"
    return tied[0], "order"


def _close(a: float, b: float) -> bool:
    """Equal up to float noise (sums of square roots differ in the last bits)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _clamp(x: float) -> float:
    return min(1.0, max(-1.0, x))


def _check_candidates(candidates: Sequence[str]) -> list[str]:
    if isinstance(candidates, str):
        raise ConfigError("candidates must be a list of agent names, not a single string")
    cand_list = list(candidates)
    dupes = sorted({c for c in cand_list if cand_list.count(c) > 1})
    if dupes:
        raise ConfigError(f"candidates must be unique; repeated: {', '.join(dupes)}")
    return cand_list


def _check_score(reviewer: str, candidate: str, raw: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"score from {reviewer!r} for {candidate!r} is {raw!r}; it must be a number"
        ) from None
    if not (SCORE_MIN <= value <= SCORE_MAX):  # also rejects NaN
        raise ConfigError(
            f"score from {reviewer!r} for {candidate!r} is {value}; "
            f"scores must lie in [{SCORE_MIN:g}, {SCORE_MAX:g}] (clamp or drop it when parsing)"
        )
    return value


def _check_weights(weights: Mapping[str, float] | None) -> Callable[[str], float]:
    table = dict(weights or {})
    for name, w in table.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise ConfigError(
                f"vote weight for {name!r} is {w!r}; weights must be finite and >= 0 "
                "(1.0 = full vote, e.g. 0.5 for an agent on probation)"
            )

    def weight_of(reviewer: str) -> float:
        return float(table.get(reviewer, 1.0))

    return weight_of


__all__ = [
    "CONVICTION_MODES",
    "CREDITS",
    "QV_MODES",
    "ConvictionMode",
    "QVMode",
    "TieRule",
    "Vote",
    "VoteResult",
    "agreement",
    "quadratic_vote",
    "review_votes",
]
