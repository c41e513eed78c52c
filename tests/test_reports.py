"""Benchmark reports: Wilson intervals, per-round accuracy, and plots from a real store."""

from __future__ import annotations

import json

import pytest

from nsed.benchmarks.reports import (
    build_report,
    fatigue_fit,
    method_stats,
    plot_run,
    round_stats,
    wilson_interval,
)
from nsed.errors import ConfigError
from nsed.store import BenchResult, BenchRun, Store


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        # p = 0.7, z = 1.96: centre (0.7 + 0.19207) / 1.38415 = 0.64449,
        # half-width 1.41601 * sqrt(0.021 + 0.0096037) = 0.24772.
        (7, 10, 0.39677, 0.89220),
        (0, 10, 0.0, 0.27753),  # upper = z² / (n + z²) = 3.84146 / 13.84146
        (10, 10, 0.72247, 1.0),  # lower = n / (n + z²)
        (5, 5, 0.56552, 1.0),
        (1, 2, 0.09453, 0.90547),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ConfigError, match="correct <= n"):
        wilson_interval(3, 2)


def row(method: str, pid: str, correct: bool, **fields) -> BenchResult:
    detail = fields.pop("detail", {})
    return BenchResult(
        run_id="r", method=method, problem_id=pid, correct=correct, detail=json.dumps(detail),
        **fields,
    )


def nsed_row(pid: str, curve: list[bool], **fields) -> BenchResult:
    rounds = [{"round": i + 1, "correct": ok} for i, ok in enumerate(curve)]
    return row("nsed", pid, curve[-1] if curve else False, detail={"rounds": rounds}, **fields)


def test_round_accuracy_carries_an_early_stop_forward():
    rows = [
        nsed_row("p1", [True, False, True]),
        nsed_row("p2", [False]),  # stopped after round 1
        nsed_row("p3", [False, True]),  # stopped after round 2
        nsed_row("p4", [], error="QuorumLost: ..."),  # failed: wrong in every round
    ]
    stats = round_stats(rows)
    assert [(r.round, r.correct, r.n, r.reached) for r in stats] == [
        (1, 1, 4, 3),
        (2, 1, 4, 2),
        (3, 2, 4, 1),
    ]
    assert stats[2].accuracy == 0.5
    assert stats[2].ci95 == pytest.approx(wilson_interval(2, 4))


def test_method_stats_sum_tokens_and_average_per_problem():
    stats = method_stats(
        [
            row("vote", "p1", True, prompt_tokens=100, completion_tokens=30, latency_s=2.0,
                cost_usd=0.5),
            row("vote", "p2", False, prompt_tokens=300, completion_tokens=10, latency_s=4.0,
                error="every sample failed: boom"),
        ]
    )
    assert (stats.n, stats.correct, stats.accuracy, stats.errors) == (2, 1, 0.5, 1)
    assert (stats.tokens.prompt, stats.tokens.completion, stats.tokens.total) == (400, 40, 440)
    assert stats.tokens.per_problem == 220.0 and stats.tokens.completion_per_problem == 20.0
    assert stats.latency_s == 3.0 and stats.cost_usd == 0.5


def stored_run(tmp_path, curves: list[list[bool]]) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with store.transaction() as session:
        session.add(BenchRun(run_id="r", benchmark="quick", methods="nsed,vote"))
    with store.transaction() as session:
        for i, curve in enumerate(curves):
            session.add(nsed_row(f"p{i}", curve, completion_tokens=100))
            session.add(row("vote", f"p{i}", i % 2 == 0, completion_tokens=105))
            session.add(row("vote", f"p{i}", True, sample=1, completion_tokens=105))
    return store


def test_report_counts_answers_only_and_plots_with_two_rounds(tmp_path):
    store = stored_run(tmp_path, [[False, True], [True, True], [False, False]])
    report = build_report(store, "r")
    assert list(report.methods) == ["nsed", "vote"]
    assert (report.methods["vote"].n, report.methods["vote"].correct) == (3, 2)
    assert [r.accuracy for r in report.rounds] == pytest.approx([1 / 3, 2 / 3])
    assert report.agents == []  # no deliberation traces stored in this run
    fit, note = fatigue_fit(report)
    assert fit is None and "needs >= 3 rounds" in note
    paths = plot_run(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy_per_round.png", "accuracy_vs_tokens.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_fatigue_fit_on_a_saturating_curve(tmp_path):
    curves = [[True] * 4] * 5 + [[False, True, True, True]] * 2 + [[False, False, True, True]]
    curves += [[False] * 4] * 2
    report = build_report(stored_run(tmp_path, curves), "r")
    assert [r.accuracy for r in report.rounds] == pytest.approx([0.5, 0.7, 0.8, 0.8])
    fit, note = fatigue_fit(report)
    assert fit is not None and fit.r2 > 0.99 and 3 < fit.t_opt < 4.5
    assert note == f"U(t) fit: R² = {fit.r2:.3f}, T_opt = {fit.t_opt:.2f} rounds"
    plot_run(report, tmp_path / "plots")
    assert (tmp_path / "plots" / "accuracy_per_round.png").stat().st_size > 1000


def test_unknown_run_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="nsed runs list"):
        build_report(Store(f"sqlite:///{tmp_path / 'r.db'}"), "missing")
