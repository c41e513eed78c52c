"""Quadratic voting: hand-computed arithmetic, every tie rule, weights, and invariants.

v1's arithmetic (``budget_signed``, no shrinkage, conviction as the winner's share) stays
available and is pinned here through ``v1_vote``; the defaults are protocol v2.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsed.errors import ConfigError
from nsed.orchestrator.voting import VoteResult, quadratic_vote, review_votes

V1 = {"mode": "budget_signed", "prior": 0.0, "conviction": "share"}


def v1_vote(scores, candidates, **kwargs) -> VoteResult:
    return quadratic_vote(scores, candidates, **{**V1, **kwargs})


# Three agents review each other (self-scores already removed).
THREE = {
    "a": {"b": 50, "c": -50},
    "b": {"a": 80, "c": 20},
    "c": {"a": 10, "b": 30},
}


def test_budget_signed_hand_computed() -> None:
    vote = v1_vote(THREE, ["a", "b", "c"])
    # a: budget 100 -> f_ab = .5, f_ac = -.5 -> q = +.70711, -.70711
    # b: budget 100 -> f_ba = .8, f_bc = .2  -> q = .89443, .44721
    # c: budget 40  -> f_ca = .25, f_cb = .75 -> q = .5, .86603
    # S_a = (.89443 + .5)/2 = .69721; S_b = (.70711 + .86603)/2 = .78657
    # S_c = (-.70711 + .44721)/2 = -.12995
    assert vote.support["a"] == pytest.approx(0.69721, abs=1e-5)
    assert vote.support["b"] == pytest.approx(0.78657, abs=1e-5)
    assert vote.support["c"] == pytest.approx(-0.12995, abs=1e-5)
    assert vote.winner == "b"
    assert vote.tie_broken_by is None
    # conviction = .78657 / (.69721 + .78657 + .12995) = .78657 / 1.61373 = .48742
    assert vote.conviction == pytest.approx(0.48742, abs=1e-5)
    # raw statistics: a got 80, 10; b got 50, 30; c got -50, 20
    assert vote.mean_score == {"a": 45.0, "b": 40.0, "c": -15.0}
    assert vote.variance == {"a": 1225.0, "b": 100.0, "c": 1225.0}
    assert vote.n_reviews == {"a": 2, "b": 2, "c": 2}
    assert vote.net_support == vote.support


def test_sqrt_raw_hand_computed() -> None:
    vote = v1_vote(THREE, ["a", "b", "c"], mode="sqrt_raw")
    # q = sqrt(max(w, 0)/100)
    # S_a = (sqrt(.8) + sqrt(.1))/2 = (.89443 + .31623)/2 = .60533
    # S_b = (sqrt(.5) + sqrt(.3))/2 = (.70711 + .54772)/2 = .62741
    # S_c = (0 + sqrt(.2))/2 = .22361  (the -50 counts as a zero vote)
    assert vote.support["a"] == pytest.approx(0.60533, abs=1e-5)
    assert vote.support["b"] == pytest.approx(0.62741, abs=1e-5)
    assert vote.support["c"] == pytest.approx(0.22361, abs=1e-5)
    assert vote.winner == "b"
    # conviction = .62741 / (.60533 + .62741 + .22361) = .43081
    assert vote.conviction == pytest.approx(0.43081, abs=1e-5)


def test_self_scores_are_ignored_everywhere() -> None:
    with_self = {r: {**row, r: 100} for r, row in THREE.items()}
    assert quadratic_vote(with_self, ["a", "b", "c"]) == quadratic_vote(THREE, ["a", "b", "c"])


def test_scores_for_non_candidates_do_not_count_in_the_budget() -> None:
    # x also scored "ghost" (whose proposal failed); only a counts, so f_xa = 1 and S_a = 1.
    vote = v1_vote({"x": {"a": 50, "ghost": 50}}, ["a"])
    assert vote.support == {"a": 1.0}
    assert vote.n_reviews == {"a": 1}
    assert vote.conviction == 1.0


def test_unreviewed_candidate_gets_zero_support() -> None:
    vote = v1_vote({"a": {"b": 40}}, ["a", "b"])
    assert vote.support == {"a": 0.0, "b": 1.0}
    assert vote.n_reviews == {"a": 0, "b": 1}
    assert vote.mean_score["a"] == 0.0
    assert vote.variance["a"] == 0.0


def test_reviewer_with_all_zero_scores_casts_zero_votes_but_counts() -> None:
    # x's budget is 0, so all its f are 0; y gives b a full vote.
    vote = v1_vote({"x": {"a": 0, "b": 0}, "y": {"b": 70}}, ["a", "b"])
    assert vote.support == {"a": 0.0, "b": 0.5}  # b: (0 + 1)/2
    assert vote.n_reviews == {"a": 1, "b": 2}


def test_no_candidates() -> None:
    vote = quadratic_vote({"x": {"a": 10}}, [])
    assert vote.winner is None
    assert vote.conviction == 0.0
    assert vote.support == {}


def test_nobody_reviewed_means_no_winner() -> None:
    # v1 picked "a" by order here; a candidate now needs counted reviews to win.
    for vote in (quadratic_vote({}, ["a", "b"]), v1_vote({}, ["a", "b"])):
        assert vote.conviction == 0.0
        assert vote.winner is None
        assert vote.tie_broken_by is None


def test_unanimous_rejection_has_conviction_minus_one() -> None:
    vote = v1_vote({"x": {"a": -60}}, ["a"])
    assert vote.support == {"a": -1.0}
    assert vote.conviction == -1.0
    # v2: -60 spends 60 of 100 credits (q = -sqrt(.6)), shrunk by one pseudo-review: /2;
    # agreement conviction is the mean raw score / 100.
    vote = quadratic_vote({"x": {"a": -60}}, ["a"])
    assert vote.support["a"] == pytest.approx(-math.sqrt(0.6) / 2)
    assert vote.conviction == pytest.approx(-0.6)


# --- tie rules ------------------------------------------------------------------------------


def test_tie_broken_by_mean_score() -> None:
    # x spreads 10/10 over a and c, y spreads 90/90 over b and c: every q is sqrt(.5),
    # so S_a = S_b = S_c = .70711; mean raw scores a = 10, b = 90, c = 50 -> b.
    vote = v1_vote({"x": {"a": 10, "c": 10}, "y": {"b": 90, "c": 90}}, ["a", "b", "c"])
    assert vote.support["a"] == pytest.approx(vote.support["b"])
    assert vote.winner == "b"
    assert vote.tie_broken_by == "mean_score"


def test_tie_broken_by_lower_variance() -> None:
    # Each reviewer scores one candidate, so every q is 1 and S_a = S_b = 1.
    # Means are both 50; variances a = (40² + 40²)/2 = 1600, b = 0 -> b.
    scores = {"x": {"a": 10}, "y": {"a": 90}, "z": {"b": 50}, "v": {"b": 50}}
    vote = v1_vote(scores, ["a", "b"])
    assert vote.variance == {"a": 1600.0, "b": 0.0}
    assert vote.winner == "b"
    assert vote.tie_broken_by == "variance"


def test_tie_broken_by_incumbent_then_order() -> None:
    scores = {"x": {"a": 50}, "y": {"b": 50}}
    by_incumbent = quadratic_vote(scores, ["a", "b"], incumbent="b")
    assert (by_incumbent.winner, by_incumbent.tie_broken_by) == ("b", "incumbent")
    by_order = quadratic_vote(scores, ["a", "b"])
    assert (by_order.winner, by_order.tie_broken_by) == ("a", "order")
    reversed_order = quadratic_vote(scores, ["b", "a"])
    assert (reversed_order.winner, reversed_order.tie_broken_by) == ("b", "order")
    # An incumbent that did not propose this round cannot win a tie.
    gone = quadratic_vote(scores, ["a", "b"], incumbent="c")
    assert (gone.winner, gone.tie_broken_by) == ("a", "order")


def test_incumbent_does_not_beat_higher_support() -> None:
    vote = quadratic_vote(THREE, ["a", "b", "c"], incumbent="a")
    assert vote.winner == "b"
    assert vote.tie_broken_by is None


# --- weights --------------------------------------------------------------------------------


def test_weights_make_a_weighted_mean() -> None:
    scores = {"x": {"a": 100}, "y": {"a": -100}}  # q_xa = 1, q_ya = -1
    assert v1_vote(scores, ["a"]).support["a"] == 0.0
    # (1·1 + 0.5·(-1)) / (1 + 0.5) = 1/3; v2 adds one pseudo-review at 0: 0.5 / 2.5 = 0.2
    damped = v1_vote(scores, ["a"], weights={"y": 0.5})
    assert damped.support["a"] == pytest.approx(1 / 3)
    assert quadratic_vote(scores, ["a"], weights={"y": 0.5}).support["a"] == pytest.approx(0.2)
    # Raw statistics stay unweighted.
    assert damped.mean_score["a"] == 0.0
    assert damped.n_reviews["a"] == 2


def test_zero_weights_give_zero_support() -> None:
    vote = quadratic_vote({"x": {"a": 100}}, ["a"], weights={"x": 0.0})
    assert vote.support == {"a": 0.0}
    assert vote.n_reviews == {"a": 1}
    assert vote.weighted_reviews == {"a": 0.0}
    assert vote.winner is None  # a weight-0 review is not a counted review


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [101, -100.5, math.nan, math.inf, "high"])
def test_out_of_range_scores_are_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="score from 'x' for 'a'"):
        quadratic_vote({"x": {"a": bad}}, ["a"])  # type: ignore[dict-item]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        quadratic_vote({}, ["a", "a"])
    with pytest.raises(ConfigError, match="qv mode"):
        quadratic_vote({}, ["a"], mode="linear")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="weights must be finite and >= 0"):
        quadratic_vote({}, ["a"], weights={"x": -1.0})
    with pytest.raises(ConfigError, match="weights must be finite"):
        quadratic_vote({}, ["a"], weights={"x": math.nan})
    with pytest.raises(ConfigError, match="not a single string"):
        quadratic_vote({}, "ab")


def test_result_is_json_serialisable() -> None:
    vote = quadratic_vote(THREE, ["a", "b", "c"])
    assert VoteResult.model_validate_json(vote.model_dump_json()) == vote


# --- properties -----------------------------------------------------------------------------

AGENTS = ["a", "b", "c", "d", "e"]
REVIEWERS = [*AGENTS, "x", "y"]
raw_score = st.integers(-100, 100) | st.floats(-100, 100, allow_nan=False)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[dict[str, dict[str, float]], list[str]]:
    candidates = draw(st.lists(st.sampled_from(AGENTS), unique=True, max_size=5))
    reviewers = draw(st.lists(st.sampled_from(REVIEWERS), unique=True, max_size=7))
    scores = {
        r: draw(st.dictionaries(st.sampled_from(AGENTS), raw_score, max_size=5)) for r in reviewers
    }
    return scores, candidates


modes = st.sampled_from(["budget_capped", "budget_signed", "sqrt_raw"])


@settings(max_examples=200, deadline=None)
@given(rounds(), modes)
def test_support_and_conviction_are_bounded(round_: tuple, mode: str) -> None:
    scores, candidates = round_
    vote = quadratic_vote(scores, candidates, mode=mode)  # type: ignore[arg-type]
    low = 0.0 if mode == "sqrt_raw" else -1.0
    assert all(low <= s <= 1.0 for s in vote.support.values())
    assert -1.0 <= vote.conviction <= 1.0
    reviewed = [c for c in candidates if vote.weighted_reviews[c] > 0]
    if reviewed:
        assert vote.winner in reviewed  # only a reviewed candidate can win
        best = max(vote.support[c] for c in reviewed)
        assert vote.support[vote.winner] == pytest.approx(best)
    else:
        assert vote.winner is None
    for cand in candidates:
        if vote.n_reviews[cand] == 0:
            assert vote.support[cand] == 0.0


@settings(max_examples=150, deadline=None)
@given(rounds(), modes, st.data())
def test_reviewer_order_does_not_matter(round_: tuple, mode: str, data: st.DataObject) -> None:
    scores, candidates = round_
    shuffled_reviewers = data.draw(st.permutations(list(scores)))
    shuffled = {r: dict(reversed(list(scores[r].items()))) for r in shuffled_reviewers}
    weights = {r: 0.5 for r in list(scores)[:1]}
    first = quadratic_vote(scores, candidates, mode=mode, weights=weights)  # type: ignore[arg-type]
    second = quadratic_vote(shuffled, candidates, mode=mode, weights=weights)  # type: ignore[arg-type]
    assert first == second


@settings(max_examples=150, deadline=None)
@given(rounds(), st.data())
def test_budget_signed_ignores_a_reviewers_scale(round_: tuple, data: st.DataObject) -> None:
    scores, candidates = round_
    if not scores:
        return
    reviewer = data.draw(st.sampled_from(sorted(scores)))
    row = scores[reviewer]
    largest = max((abs(v) for v in row.values()), default=0.0)
    ceiling = 100.0 / largest if largest > 0 else 10.0
    factor = data.draw(st.floats(min_value=1e-3, max_value=ceiling))
    scaled = {**scores, reviewer: {c: v * factor for c, v in row.items()}}
    before = v1_vote(scores, candidates)
    after = v1_vote(scaled, candidates)
    for cand in candidates:
        assert after.support[cand] == pytest.approx(before.support[cand], rel=1e-9, abs=1e-12)
    assert after.conviction == pytest.approx(before.conviction, rel=1e-9, abs=1e-12)
    if before.tie_broken_by is None and after.tie_broken_by is None:
        assert after.winner == before.winner


# --- protocol v2: the cases -----------------------------------------------------------


def test_an_unreviewed_candidate_never_wins() -> None:
    # A and B pan each other, nobody reviews C: v1's arithmetic gave C (S = 0) the round.
    scores = {"A": {"B": -50}, "B": {"A": -50}}
    for kwargs in ({}, V1, {"mode": "sqrt_raw"}):
        vote = quadratic_vote(scores, ["A", "B", "C"], **kwargs)  # type: ignore[arg-type]
        assert vote.winner in {"A", "B"}, kwargs
        assert vote.n_reviews["C"] == 0
    # ... nor does one reviewed only by a reviewer of weight 0.
    vote = quadratic_vote({"A": {"B": -50, "C": 90}}, ["A", "B", "C"], weights={"A": 0.0})
    assert vote.winner is None


def test_budget_capped_keeps_a_reviewers_confidence() -> None:
    # The numbers, with 3 agents (each reviewer scores 2 candidates), no shrinkage.
    def q(row: dict[str, float]) -> dict[str, float]:
        votes = review_votes({"r": row}, list(row), mode="budget_capped")
        return {c: v[0].q for c, v in votes.items()}

    assert q({"B": 5, "C": 0}) == {"B": pytest.approx(math.sqrt(0.05)), "C": 0.0}
    assert q({"B": 90, "C": 90}) == {
        "B": pytest.approx(math.sqrt(0.5)),
        "C": pytest.approx(math.sqrt(0.5)),
    }
    assert q({"B": 20, "C": 20}) == {
        "B": pytest.approx(math.sqrt(0.2)),
        "C": pytest.approx(math.sqrt(0.2)),
    }
    assert q({"B": 1, "C": -1}) == {"B": pytest.approx(0.1), "C": pytest.approx(-0.1)}
    # Over budget (150 > 100 credits): scaled down to fit, never up.
    assert q({"B": 100, "C": -50}) == {
        "B": pytest.approx(math.sqrt(100 / 150)),
        "C": pytest.approx(-math.sqrt(50 / 150)),
    }
    # v1 discards magnitude: {+90,+90} and {+20,+20} both give 0.707.
    signed = review_votes({"r": {"B": 20, "C": 20}}, ["B", "C"], mode="budget_signed")
    assert signed["B"][0].q == pytest.approx(math.sqrt(0.5))


def test_support_shrinks_toward_zero_by_the_number_of_reviews() -> None:
    # Both candidates get q = sqrt(.6) per review; b has three reviews, a one.
    scores = {"x": {"a": 60, "b": 60}, "y": {"b": 60}, "z": {"b": 60}}
    vote = quadratic_vote(scores, ["a", "b"], mode="sqrt_raw", prior=1.0)
    assert vote.support["a"] == pytest.approx(math.sqrt(0.6) / 2)
    assert vote.support["b"] == pytest.approx(3 * math.sqrt(0.6) / 4)
    assert vote.winner == "b"
    unshrunk = quadratic_vote(scores, ["a", "b"], mode="sqrt_raw", prior=0.0)
    assert unshrunk.support["a"] == pytest.approx(unshrunk.support["b"])


def test_agreement_conviction_does_not_fall_with_team_size() -> None:
    # All agree at +80: v1's share conviction is 1/n, below the 0.3 unanimity threshold at 4.
    for n in (3, 4, 6):
        names = [f"a{i}" for i in range(n)]
        scores = {r: {c: 80 for c in names if c != r} for r in names}
        assert quadratic_vote(scores, names).conviction == pytest.approx(0.8)
        assert v1_vote(scores, names).conviction == pytest.approx(1 / n)


def test_eligible_restricts_the_winner_while_one_is_reviewed() -> None:
    scores = {"x": {"a": 90, "b": 10}, "y": {"a": 90, "b": 10}}
    assert quadratic_vote(scores, ["a", "b"]).winner == "a"
    assert quadratic_vote(scores, ["a", "b"], eligible={"b"}).winner == "b"
    # No eligible candidate was reviewed: the best reviewed one still wins.
    assert quadratic_vote(scores, ["a", "b", "c"], eligible={"c"}).winner == "a"


def test_a_cut_off_reviewers_surviving_scores_are_not_inflated() -> None:
    # The reply was cut after B = +20 (C unfinished): budget_signed would make B's vote 1.0.
    scores = {"r": {"B": 20}}
    assert v1_vote(scores, ["B", "C"]).support["B"] == pytest.approx(1.0)
    cut = v1_vote(scores, ["B", "C"], partial={"r"})
    assert cut.support["B"] == pytest.approx(math.sqrt(0.2))
    assert quadratic_vote(scores, ["B", "C"], prior=0.0).support["B"] == pytest.approx(
        math.sqrt(0.2)
    )


def test_bad_prior_and_conviction_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="prior"):
        quadratic_vote({}, ["a"], prior=-1)
    with pytest.raises(ConfigError, match="conviction"):
        quadratic_vote({}, ["a"], conviction="dominance")  # type: ignore[arg-type]
