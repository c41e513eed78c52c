"""Quadratic voting: turn one round's peer scores into support, a winner and a conviction.

Pure functions, no I/O. Each reviewer's raw scores (−100…100) become votes whose cost grows
quadratically (votes = √credits), so no single extreme grader can dominate, and a candidate's
support is the *mean* vote it received, so proposals reviewed by more agents get no edge.
The formulas and tie rules are in the README's "Protocol defaults" table (``qv_mode``, ties).

Sums use :func:`math.fsum` (exactly rounded), so the result does not depend on the order in
which reviewers are listed; ties are compared with a tiny tolerance so float noise cannot pick
a winner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from nsed.errors import ConfigError

QVMode = Literal["budget_signed", "sqrt_raw"]
TieRule = Literal["mean_score", "variance", "incumbent", "order"]
QV_MODES: tuple[str, ...] = ("budget_signed", "sqrt_raw")
SCORE_MIN, SCORE_MAX = -100.0, 100.0


class VoteResult(BaseModel):
    """The outcome of one round's vote, keyed by candidate (agent) name."""

    support: dict[str, float] = Field(description="S_i: (weighted) mean QV vote, in [-1, 1]")
    mean_score: dict[str, float] = Field(description="mean raw score received (0 if none)")
    variance: dict[str, float] = Field(description="population variance of raw scores received")
    n_reviews: dict[str, int] = Field(description="counted reviews received")
    winner: str | None = Field(description="argmax support after tie rules; None if no candidates")
    conviction: float = Field(description="S_win / Σ|S_i| in [-1, 1]; 0 when all S_i are 0")
    tie_broken_by: TieRule | None = Field(
        default=None, description="the tie rule that decided the winner, None if S alone did"
    )

    @property
    def net_support(self) -> dict[str, float]:
        """ns_i; equal to ``support`` because S_i is already a mean in [-1, 1]."""
        return dict(self.support)


def quadratic_vote(
    scores: Mapping[str, Mapping[str, float]],
    candidates: Sequence[str],
    *,
    mode: QVMode = "budget_signed",
    incumbent: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> VoteResult:
    """Score one round.

    ``scores`` maps reviewer -> {candidate -> raw score in [-100, 100]}. Self-scores and scores
    for names not in ``candidates`` are ignored (they are not "counted"), also in the
    budget normalisation. ``weights`` (default 1.0 per reviewer) turns S_i into the weighted
    mean Σ w_j q_ji / Σ w_j, used to damp agents on probation. Ties on S are broken by higher
    mean raw score, then lower variance, then ``incumbent``, then ``candidates`` order.
    """
    cand_list = _check_candidates(candidates)
    if mode not in QV_MODES:
        raise ConfigError(f"qv mode {mode!r} is unknown; use one of {', '.join(QV_MODES)}")
    weight_of = _check_weights(weights)
    cand_set = set(cand_list)

    # votes[i] = [(weight, q, raw), ...] over the reviewers j != i that scored i.
    votes: dict[str, list[tuple[float, float, float]]] = {c: [] for c in cand_list}
    for reviewer, row in scores.items():
        counted = {
            cand: _check_score(reviewer, cand, raw)
            for cand, raw in row.items()
            if cand in cand_set and cand != reviewer
        }
        if not counted:
            continue
        qs = _qv_row(counted, mode)
        w = weight_of(reviewer)
        for cand, raw in counted.items():
            votes[cand].append((w, qs[cand], raw))

    support: dict[str, float] = {}
    mean_score: dict[str, float] = {}
    variance: dict[str, float] = {}
    n_reviews: dict[str, int] = {}
    for cand in cand_list:
        received = votes[cand]
        n_reviews[cand] = len(received)
        if not received:
            support[cand] = mean_score[cand] = variance[cand] = 0.0
            continue
        total_w = math.fsum(w for w, _, _ in received)
        support[cand] = (
            _clamp(math.fsum(w * q for w, q, _ in received) / total_w) if total_w > 0 else 0.0
        )
        raws = [raw for _, _, raw in received]
        mean = math.fsum(raws) / len(raws)
        mean_score[cand] = mean
        variance[cand] = max(0.0, math.fsum((r - mean) ** 2 for r in raws) / len(raws))

    winner, tie_rule = _pick_winner(cand_list, support, mean_score, variance, incumbent)
    conviction = 0.0
    if winner is not None:
        total_abs = math.fsum(abs(s) for s in support.values())
        conviction = _clamp(support[winner] / total_abs) if total_abs > 0 else 0.0
    return VoteResult(
        support=support,
        mean_score=mean_score,
        variance=variance,
        n_reviews=n_reviews,
        winner=winner,
        conviction=conviction,
        tie_broken_by=tie_rule,
    )


def _qv_row(counted: dict[str, float], mode: QVMode) -> dict[str, float]:
    """One reviewer's QV votes q_ji for the candidates it scored."""
    if mode == "sqrt_raw":
        return {c: math.sqrt(max(w, 0.0) / SCORE_MAX) for c, w in counted.items()}
    budget = math.fsum(abs(w) for w in counted.values())
    if budget == 0:
        return dict.fromkeys(counted, 0.0)
    out: dict[str, float] = {}
    for cand, w in counted.items():
        f = w / budget
        out[cand] = math.copysign(math.sqrt(abs(f)), f) if f != 0 else 0.0
    return out


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


__all__ = ["QV_MODES", "QVMode", "TieRule", "VoteResult", "quadratic_vote"]
