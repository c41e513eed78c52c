"""Quadratic voting: hand-computed arithmetic, every tie rule, weights, and invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsed.errors import ConfigError
from nsed.orchestrator.voting import VoteResult, quadratic_vote

# Three agents review each other (self-scores already removed).
THREE = {
    "a": {"b": 50, "c": -50},
    "b": {"a": 80, "c": 20},
    "c": {"a": 10, "b": 30},
}


def test_budget_signed_hand_computed() -> None:
    vote = quadratic_vote(THREE, ["a", "b", "c"])
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
    vote = quadratic_vote(THREE, ["a", "b", "c"], mode="sqrt_raw")
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
    vote = quadratic_vote({"x": {"a": 50, "ghost": 50}}, ["a"])
    assert vote.support == {"a": 1.0}
    assert vote.n_reviews == {"a": 1}
    assert vote.conviction == 1.0


def test_unreviewed_candidate_gets_zero_support() -> None:
    vote = quadratic_vote({"a": {"b": 40}}, ["a", "b"])
    assert vote.support == {"a": 0.0, "b": 1.0}
    assert vote.n_reviews == {"a": 0, "b": 1}
    assert vote.mean_score["a"] == 0.0
    assert vote.variance["a"] == 0.0


def test_reviewer_with_all_zero_scores_casts_zero_votes_but_counts() -> None:
    # x's budget is 0, so all its f are 0; y gives b a full vote.
    vote = quadratic_vote({"x": {"a": 0, "b": 0}, "y": {"b": 70}}, ["a", "b"])
    assert vote.support == {"a": 0.0, "b": 0.5}  # b: (0 + 1)/2
    assert vote.n_reviews == {"a": 1, "b": 2}


def test_no_candidates() -> None:
    vote = quadratic_vote({"x": {"a": 10}}, [])
    assert vote.winner is None
    assert vote.conviction == 0.0
    assert vote.support == {}


def test_all_support_zero_gives_zero_conviction() -> None:
    vote = quadratic_vote({}, ["a", "b"])
    assert vote.conviction == 0.0
    assert vote.winner == "a"
    assert vote.tie_broken_by == "order"


def test_unanimous_rejection_has_conviction_minus_one() -> None:
    vote = quadratic_vote({"x": {"a": -60}}, ["a"])
    assert vote.support == {"a": -1.0}
    assert vote.conviction == -1.0


# --- tie rules ------------------------------------------------------------------------------


def test_tie_broken_by_mean_score() -> None:
    # x spreads 10/10 over a and c, y spreads 90/90 over b and c: every q is sqrt(.5),
    # so S_a = S_b = S_c = .70711; mean raw scores a = 10, b = 90, c = 50 -> b.
    vote = quadratic_vote({"x": {"a": 10, "c": 10}, "y": {"b": 90, "c": 90}}, ["a", "b", "c"])
    assert vote.support["a"] == pytest.approx(vote.support["b"])
    assert vote.winner == "b"
    assert vote.tie_broken_by == "mean_score"


def test_tie_broken_by_lower_variance() -> None:
    # Each reviewer scores one candidate, so every q is 1 and S_a = S_b = 1.
    # Means are both 50; variances a = (40² + 40²)/2 = 1600, b = 0 -> b.
    scores = {"x": {"a": 10}, "y": {"a": 90}, "z": {"b": 50}, "v": {"b": 50}}
    vote = quadratic_vote(scores, ["a", "b"])
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
    assert quadratic_vote(scores, ["a"]).support["a"] == 0.0
    # (1·1 + 0.5·(-1)) / (1 + 0.5) = 1/3
    damped = quadratic_vote(scores, ["a"], weights={"y": 0.5})
    assert damped.support["a"] == pytest.approx(1 / 3)
    # Raw statistics stay unweighted.
    assert damped.mean_score["a"] == 0.0
    assert damped.n_reviews["a"] == 2


def test_zero_weights_give_zero_support() -> None:
    vote = quadratic_vote({"x": {"a": 100}}, ["a"], weights={"x": 0.0})
    assert vote.support == {"a": 0.0}
    assert vote.n_reviews == {"a": 1}


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


modes = st.sampled_from(["budget_signed", "sqrt_raw"])


@settings(max_examples=200, deadline=None)
@given(rounds(), modes)
def test_support_and_conviction_are_bounded(round_: tuple, mode: str) -> None:
    scores, candidates = round_
    vote = quadratic_vote(scores, candidates, mode=mode)  # type: ignore[arg-type]
    low = 0.0 if mode == "sqrt_raw" else -1.0
    assert all(low <= s <= 1.0 for s in vote.support.values())
    assert -1.0 <= vote.conviction <= 1.0
    if candidates:
        assert vote.winner is not None
        assert vote.support[vote.winner] == pytest.approx(max(vote.support.values()))
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
    before = quadratic_vote(scores, candidates)
    after = quadratic_vote(scaled, candidates)
    for cand in candidates:
        assert after.support[cand] == pytest.approx(before.support[cand], rel=1e-9, abs=1e-12)
    assert after.conviction == pytest.approx(before.conviction, rel=1e-9, abs=1e-12)
    if before.tie_broken_by is None and after.tie_broken_by is None:
        assert after.winner == before.winner
