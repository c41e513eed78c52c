"""Answer-level aggregation: hand-computed sums, fresh votes, eligibility, ties, the carrier."""

from __future__ import annotations

import pytest

from nsed.orchestrator.aggregation import RoundBallots, carrier, tally_answers
from nsed.orchestrator.voting import Vote


def vote(reviewer: str, q: float, raw: float | None = None, weight: float = 1.0) -> Vote:
    return Vote(reviewer=reviewer, weight=weight, q=q, raw=raw if raw is not None else 100 * q)


def ballot(round_: int, answers: dict, votes: dict, fresh=(), eligible=None) -> RoundBallots:
    return RoundBallots(
        round=round_,
        answers=answers,
        finals={a: k for a, k in answers.items()},
        votes=votes,
        fresh=list(fresh),
        eligible=eligible,
    )


def test_support_is_the_sum_of_votes_plus_a_vote_per_fresh_proposal() -> None:
    r1 = ballot(
        1,
        {"a": "7", "b": "7", "c": "9"},
        {"a": [vote("b", 0.5), vote("c", -0.2)], "b": [vote("a", 0.4)], "c": [vote("a", 0.9)]},
        fresh=["a", "b", "c"],
    )
    r2 = ballot(2, {"a": "7", "b": "9", "c": None}, {"b": [vote("a", 0.3)]}, fresh=["b"])
    tally = tally_answers([r1, r2], fresh_vote=1.0)
    by = {t.key: t for t in tally.answers}
    # 7: votes .5 - .2 + .4 and two fresh proposals; 9: votes .9 + .3 and two fresh ones.
    assert by["7"].support == pytest.approx(0.7 + 2.0)
    assert by["9"].support == pytest.approx(1.2 + 2.0)
    assert (by["7"].proposals, by["7"].fresh, by["9"].proposals) == (3, 2, 2)
    assert (by["9"].first_round, by["9"].last_round) == (1, 2)
    assert tally.winner == "9" and [t.key for t in tally.answers] == ["9", "7"]
    # Without fresh votes only the reviews count.
    assert tally_answers([r1, r2], fresh_vote=0.0).winner == "9"
    assert tally_answers([r1], fresh_vote=0.0).winner == "9"
    assert tally_answers([r1], fresh_vote=1.0).winner == "7"  # two fresh proposals beat one


def test_an_answer_nobody_reviewed_cannot_win() -> None:
    r1 = ballot(
        1,
        {"a": "7", "b": "8", "c": "9"},
        {"a": [vote("b", -0.3)], "b": [vote("a", -0.3)]},
        fresh=["a", "b", "c", "c"],
    )
    tally = tally_answers([r1])
    assert tally.winner in {"7", "8"}
    assert {t.key: t.review_weight for t in tally.answers}["9"] == 0.0
    assert tally_answers([ballot(1, {"a": "7"}, {})]).winner is None


def test_an_ineligible_answer_loses_while_an_eligible_one_is_reviewed() -> None:
    r1 = ballot(
        1, {"a": "7", "b": "8"}, {"a": [vote("b", 0.9)], "b": [vote("a", 0.1)]}, eligible=["b"]
    )
    tally = tally_answers([r1])
    assert tally.winner == "8"
    assert {t.key: t.eligible for t in tally.answers} == {"7": False, "8": True}
    # An answer is eligible when any of its proposals is.
    r2 = ballot(2, {"c": "7"}, {"c": [vote("b", 0.1)]}, eligible=["c"])
    assert tally_answers([r1, r2]).winner == "7"


def test_ties_go_to_review_weight_then_mean_score_then_recency_then_the_incumbent() -> None:
    base = {"a": [vote("x", 0.5, raw=40)], "b": [vote("x", 0.25, raw=40), vote("y", 0.25, raw=40)]}
    tally = tally_answers([ballot(1, {"a": "7", "b": "8"}, base)], fresh_vote=0.0)
    assert (tally.winner, tally.tie_broken_by) == ("8", "review_weight")
    raw = {"a": [vote("x", 0.5, raw=60)], "b": [vote("x", 0.5, raw=40)]}
    tally = tally_answers([ballot(1, {"a": "7", "b": "8"}, raw)], fresh_vote=0.0)
    assert (tally.winner, tally.tie_broken_by) == ("7", "mean_score")
    older = ballot(1, {"a": "7"}, {"a": [vote("x", 0.5)]})
    newer = ballot(2, {"b": "8"}, {"b": [vote("x", 0.5)]})
    tally = tally_answers([older, newer], fresh_vote=0.0)
    assert (tally.winner, tally.tie_broken_by) == ("8", "recency")
    same = ballot(1, {"a": "7", "b": "8"}, {"a": [vote("x", 0.5)], "b": [vote("y", 0.5)]})
    assert tally_answers([same], fresh_vote=0.0, incumbent="8").tie_broken_by == "incumbent"
    assert tally_answers([same], fresh_vote=0.0).winner == "7"  # order of appearance


def test_the_carrier_is_the_best_supported_latest_proposal_of_the_answer() -> None:
    r1 = ballot(1, {"a": "7", "b": "7", "c": "9"}, {})
    r2 = ballot(2, {"a": "9", "b": "7", "c": "7"}, {})
    support = {1: {"a": 0.9, "b": 0.1}, 2: {"b": 0.2, "c": 0.4}}
    assert carrier("7", [r1, r2], support) == (2, "c")
    assert carrier("9", [r1, r2], support) == (2, "a")
    assert carrier("5", [r1, r2], support) is None
    only_old = ballot(2, {"a": "9", "b": "9"}, {})
    assert carrier("7", [r1, only_old], support) == (1, "a")
