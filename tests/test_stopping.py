"""The efficiency-fatigue model, Lambert W, the evidence rule, the fit and the stop rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.special import lambertw

from nsed.config import DeliberationConfig
from nsed.errors import ConfigError
from nsed.orchestrator.stopping import (
    EvidenceTracker,
    FatigueParams,
    StopInputs,
    UnanimityStreak,
    fit_fatigue,
    lambert_w0,
    marginal_gain,
    marginal_stop_round,
    marginal_utility,
    optimal_rounds,
    positive_budget,
    should_stop,
    utility,
)

PAPERISH = FatigueParams(p_g=0.5, p_v=0.9, lam=1.0, beta=0.003)


# --- Lambert W ------------------------------------------------------------------------------


def test_lambert_w0_known_values() -> None:
    assert lambert_w0(0.0) == 0.0
    assert lambert_w0(math.e) == pytest.approx(1.0, rel=1e-15)  # 1·e¹ = e
    assert lambert_w0(-1 / math.e) == -1.0  # the branch point
    assert lambert_w0(2 * math.exp(2)) == pytest.approx(2.0, rel=1e-15)
    assert lambert_w0(math.inf) == math.inf


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=-1 / math.e + 1e-12, max_value=1e300)
    | st.floats(min_value=-0.3678794411714, max_value=-0.36)
    | st.floats(min_value=-1.0, max_value=10.0)
)
def test_lambert_w0_matches_scipy(x: float) -> None:
    if x < -1 / math.e:
        return
    expected = float(lambertw(x).real)
    got = lambert_w0(x)
    if x < -0.35:
        # Near the branch point W has a square-root singularity: both sides lose ~half the digits.
        assert got == pytest.approx(expected, abs=1e-6)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-0.36, max_value=1e300))
def test_lambert_w0_satisfies_its_equation(x: float) -> None:
    w = lambert_w0(x)
    if x > 1e100:
        assert w + math.log(w) == pytest.approx(math.log(x), rel=1e-14)  # log of w·e^w = x
    else:
        assert w * math.exp(w) == pytest.approx(x, rel=1e-12, abs=1e-300)


def test_lambert_w0_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="-1/e"):
        lambert_w0(-0.5)
    with pytest.raises(ConfigError, match="NaN"):
        lambert_w0(math.nan)


# --- U(t) and T_opt -------------------------------------------------------------------------


def test_utility_hand_computed() -> None:
    # k = 1·(0.9 − 0.5) = 0.4. U(0) = 1 − 0.5 = p_g; U(1) = 1 − .5e^{-.4} − .003 = .66184
    assert utility(0, PAPERISH) == pytest.approx(0.5)
    assert utility(1, PAPERISH) == pytest.approx(0.66184, abs=1e-5)
    # U'(1) = .5·.4·e^{-.4} − 2·.003 = .13406 − .006 = .12806
    assert marginal_utility(1, PAPERISH) == pytest.approx(0.12806, abs=1e-5)


def test_optimal_rounds_paper_check() -> None:
    # research notes §3.6: (0.5, 0.9, 1.0, 0.003) -> T_opt ≈ 4.83
    assert optimal_rounds(PAPERISH) == pytest.approx(4.83, abs=0.005)
    # B = U(4.8295) − U(0) = (1 − .5e^{-1.9318} − .003·23.324) − .5 = .35758
    assert positive_budget(PAPERISH) == pytest.approx(0.3576, abs=1e-4)


def test_optimal_rounds_edge_cases() -> None:
    no_gain = FatigueParams(p_g=0.7, p_v=0.7, lam=1.0, beta=0.01)
    worse = FatigueParams(p_g=0.7, p_v=0.4, lam=1.0, beta=0.0)
    no_fatigue = FatigueParams(p_g=0.6, p_v=0.9, lam=1.0, beta=0.0)
    assert optimal_rounds(no_gain) == 0.0
    assert optimal_rounds(worse) == 0.0  # k < 0 wins over beta == 0
    assert optimal_rounds(no_fatigue) == math.inf
    assert positive_budget(no_gain) == 0.0
    assert positive_budget(no_fatigue) == pytest.approx(0.4)  # U(∞) − U(0) = 1 − p_g
    # A tiny beta must not overflow the Lambert-W argument.
    tiny = FatigueParams(p_g=0.5, p_v=0.9, lam=1.0, beta=1e-300)
    assert math.isfinite(optimal_rounds(tiny))
    assert marginal_utility(optimal_rounds(tiny), tiny) == pytest.approx(0.0, abs=1e-250)


fatigue_params = st.builds(
    FatigueParams,
    p_g=st.floats(0.0, 0.99),
    p_v=st.floats(0.0, 1.0),
    lam=st.floats(0.01, 20.0),
    beta=st.floats(1e-6, 1.0),
).filter(lambda p: p.k > 1e-6)


@settings(max_examples=300, deadline=None)
@given(fatigue_params)
def test_t_opt_is_the_maximum_of_u(params: FatigueParams) -> None:
    t_opt = optimal_rounds(params)
    assert t_opt > 0
    scale = (1 - params.p_g) * params.k + 2 * params.beta * t_opt
    assert abs(marginal_utility(t_opt, params)) <= 1e-9 * scale  # a zero of U'
    for dt in (1e-3, 0.1, 1.0):
        assert utility(t_opt, params) >= utility(t_opt + dt, params)
        assert utility(t_opt, params) >= utility(max(0.0, t_opt - dt), params)
    assert positive_budget(params) >= 0.0


def test_fatigue_params_from_config_and_bounds() -> None:
    cfg = DeliberationConfig(
        fatigue_p_g=0.4, fatigue_p_v=0.8, fatigue_lambda=2.0, fatigue_beta=0.01
    )
    params = FatigueParams.from_config(cfg)
    assert params.k == pytest.approx(0.8)
    with pytest.raises(ValidationError):
        FatigueParams(p_g=1.5, p_v=0.9, lam=1.0, beta=0.0)
    with pytest.raises(ValidationError):
        FatigueParams(p_g=0.5, p_v=0.9, lam=0.0, beta=0.0)


# --- evidence rule --------------------------------------------------------------------------


def test_evidence_tracker_hand_computed() -> None:
    tracker = EvidenceTracker(PAPERISH)
    # budget B = .35758, effort .6 -> halt at E >= .21455
    # round 1: U'(1) = .2e^{-.4} − .006 = .12806; E = .12806
    step = tracker.add(1, 1.0)
    assert step.du_dt == pytest.approx(0.12806, abs=1e-5)
    assert step.evidence == pytest.approx(0.12806, abs=1e-5)
    assert not tracker.should_halt(0.6)
    # round 2: U'(2) = .2e^{-.8} − .012 = .07787; E = .20593 < .21455
    assert tracker.add(2, 1.0).evidence == pytest.approx(0.20593, abs=1e-5)
    assert not tracker.should_halt(0.6)
    assert tracker.should_halt(0.5)  # lower effort halts sooner
    # round 3: U'(3) = .2e^{-1.2} − .018 = .04224; E = .24817
    _, evidence = tracker.add(3, 1.0)
    assert evidence == pytest.approx(0.24817, abs=1e-5)
    assert tracker.should_halt(0.6)


def test_evidence_ignores_negative_conviction_and_scales_with_positive() -> None:
    tracker = EvidenceTracker(PAPERISH)
    assert tracker.add(1, -0.8).evidence == 0.0
    # .5 · U'(2) = .5 · .07787
    assert tracker.add(2, 0.5).evidence == pytest.approx(0.038933, abs=1e-5)


def test_evidence_tracker_rejects_bad_input() -> None:
    tracker = EvidenceTracker(PAPERISH)
    tracker.add(1, 0.5)
    with pytest.raises(ConfigError, match="increasing order"):
        tracker.add(1, 0.5)
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        tracker.add(2, 1.5)
    with pytest.raises(ConfigError, match="effort"):
        tracker.should_halt(1.2)


def test_zero_budget_halts_at_once() -> None:
    tracker = EvidenceTracker(FatigueParams(p_g=0.8, p_v=0.8, lam=1.0, beta=0.01))
    assert tracker.budget == 0.0
    assert tracker.should_halt(0.6)


# --- fitting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p_g", "p_v", "lam", "beta", "rounds"),
    [
        (0.5, 0.9, 1.0, 0.003, list(range(0, 8))),
        (0.3, 0.8, 0.6, 0.004, list(range(1, 8))),
        (0.55, 0.75, 3.0, 0.002, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ],
)
def test_fit_recovers_known_parameters(
    p_g: float, p_v: float, lam: float, beta: float, rounds: list[int]
) -> None:
    truth = FatigueParams(p_g=p_g, p_v=p_v, lam=lam, beta=beta)
    accuracy = [utility(t, truth) for t in rounds]
    fit = fit_fatigue(rounds, accuracy, lam=lam)
    assert fit.r2 > 0.99
    assert fit.params.p_g == pytest.approx(p_g, abs=1e-4)
    assert fit.k == pytest.approx(truth.k, rel=1e-3)
    assert fit.params.beta == pytest.approx(beta, rel=1e-2, abs=1e-6)
    assert fit.t_opt == pytest.approx(optimal_rounds(truth), rel=1e-2)
    # With the true Λ given, p_v is recovered too (only k = Λ(p_v − p_g) is identifiable).
    assert fit.params.p_v == pytest.approx(p_v, abs=1e-3)


def test_fit_keeps_p_v_at_most_one() -> None:
    truth = FatigueParams(p_g=0.2, p_v=1.0, lam=3.0, beta=0.005)
    rounds = list(range(8))
    fit = fit_fatigue(rounds, [utility(t, truth) for t in rounds])  # default Λ = 1 is too small
    assert 0.0 <= fit.params.p_g <= fit.params.p_v <= 1.0
    assert fit.params.k == pytest.approx(truth.k, rel=1e-3)


def test_fit_of_noisy_curve() -> None:
    rounds = list(range(1, 8))
    truth = [utility(t, PAPERISH) for t in rounds]
    noisy = [
        y + e for y, e in zip(truth, [0.01, -0.01, 0.005, -0.005, 0.01, -0.01, 0.0], strict=True)
    ]
    fit = fit_fatigue(rounds, noisy)
    assert 0.9 < fit.r2 < 1.0
    assert 3.0 < fit.t_opt < 7.0


def test_fit_of_flat_curve_is_exact() -> None:
    fit = fit_fatigue([1, 2, 3, 4], [0.6, 0.6, 0.6, 0.6])
    assert fit.r2 == 1.0
    assert fit.params.p_g == pytest.approx(0.6, abs=1e-6)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="at least 3 points"):
        fit_fatigue([1, 2], [0.5, 0.6])
    with pytest.raises(ConfigError, match="3 different rounds"):
        fit_fatigue([1, 1, 2], [0.5, 0.6, 0.7])
    with pytest.raises(ConfigError, match="same length"):
        fit_fatigue([1, 2, 3], [0.5, 0.6])
    with pytest.raises(ConfigError, match="divide percentages by 100"):
        fit_fatigue([1, 2, 3], [50, 60, 70])


# --- stop rules -----------------------------------------------------------------------------


def stop(**kw: object) -> tuple[bool, str | None]:
    base: dict[str, object] = {"round_index": 3, "min_rounds": 2, "max_rounds": 6}
    decision = should_stop(StopInputs.model_validate({**base, **kw}))
    return decision.stop, decision.reason


def test_no_rule_met_keeps_going() -> None:
    assert stop() == (False, None)


def test_max_rounds() -> None:
    assert stop(round_index=6) == (True, "max_rounds")


def test_min_rounds_guard_blocks_unanimity_and_fatigue() -> None:
    assert stop(round_index=1, unanimous_streak=2, evidence_halt=True) == (False, None)
    assert stop(round_index=2, unanimous_streak=2) == (True, "unanimous")


def test_unanimity_needs_enough_consecutive_rounds() -> None:
    assert stop(unanimous_streak=1, unanimity_rounds=2) == (False, None)
    assert stop(unanimous_streak=2, unanimity_rounds=2) == (True, "unanimous")
    assert stop(unanimous_streak=1, unanimity_rounds=1) == (True, "unanimous")


def test_unanimity_is_checked_before_fatigue() -> None:
    assert stop(unanimous_streak=2, evidence_halt=True) == (True, "unanimous")
    assert stop(evidence_halt=True) == (True, "efficiency_fatigue")


def test_budgets_come_first_and_override_min_rounds() -> None:
    assert stop(round_index=1, tokens_used=5000, budget_tokens=5000) == (True, "budget_tokens")
    assert stop(round_index=6, cost_usd=0.02, budget_usd=0.01) == (True, "budget_usd")
    both = stop(tokens_used=10, budget_tokens=5, cost_usd=1.0, budget_usd=0.5)
    assert both == (True, "budget_tokens")
    assert stop(tokens_used=4999, budget_tokens=5000) == (False, None)


def test_budget_projection_stops_before_overspending() -> None:
    assert stop(tokens_used=3000, budget_tokens=5000, next_round_tokens=2500) == (
        True,
        "budget_tokens",
    )
    assert stop(tokens_used=3000, budget_tokens=5000, next_round_tokens=1500) == (False, None)
    assert stop(cost_usd=0.4, budget_usd=0.5, next_round_usd=0.2) == (True, "budget_usd")


def test_stop_decision_explains_itself() -> None:
    decision = should_stop(
        StopInputs(round_index=2, min_rounds=1, max_rounds=5, tokens_used=900, budget_tokens=800)
    )
    assert decision.stop
    assert "900 tokens used" in decision.detail
    assert "800" in decision.detail


def test_stop_inputs_reject_min_above_max() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        StopInputs(round_index=1, min_rounds=5, max_rounds=3)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(0, 10),
    st.integers(0, 10),
    st.booleans(),
)
def test_stop_rule_invariants(r: int, min_r: int, extra: int, streak: int, evidence: bool) -> None:
    max_r = min_r + extra
    decision = should_stop(
        StopInputs(
            round_index=r,
            min_rounds=min_r,
            max_rounds=max_r,
            unanimous_streak=streak,
            evidence_halt=evidence,
        )
    )
    if r >= max_r:
        assert (decision.stop, decision.reason) == (True, "max_rounds")
    elif r < min_r:
        assert not decision.stop
    else:
        assert decision.stop == (streak >= 2 or evidence)


# --- The marginal-gain rule (protocol v2) ----------------------------------------------------


def test_marginal_rule_hand_computed_for_the_defaults() -> None:
    params = FatigueParams.from_config(DeliberationConfig())  # p_g .5, p_v .8, Λ 1, β .003
    # U(r+1) - U(r) = .5(e^{-.3r} - e^{-.3(r+1)}) - .003(2r + 1)
    gains = [marginal_gain(r, params) for r in range(1, 6)]
    assert gains == pytest.approx([0.0870, 0.0561, 0.0317, 0.0120, -0.0041], abs=5e-5)
    assert marginal_stop_round(params, 0.02) == 4  # round 5 would add 0.012 < 0.02
    assert marginal_stop_round(params, 0.05) == 3
    assert marginal_stop_round(params, 0.5) == 1
    no_gain = FatigueParams(p_g=0.5, p_v=0.5, lam=1.0, beta=0.0)
    assert marginal_stop_round(no_gain, 0.01) == 1  # verification no better than generation
    with pytest.raises(ConfigError, match="round_cost"):
        marginal_stop_round(params, 0.0)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        FatigueParams,
        p_g=st.floats(0.0, 0.99),
        p_v=st.floats(0.0, 1.0),
        lam=st.floats(0.01, 20.0),
        beta=st.floats(0.0, 1.0),
    ),
    st.floats(1e-4, 0.5),
)
def test_marginal_rule_always_fires_and_only_once_gains_stop_paying(
    params: FatigueParams, cost: float
) -> None:
    """U is concave, so gains never grow; with a positive cost the rule always fires, at the
    first round whose next round would gain less than the cost (by T_opt at the latest)."""
    r = marginal_stop_round(params, cost)
    assert 1 <= r < 10_000
    if params.k > 0:
        assert marginal_gain(r, params) < cost
        assert all(marginal_gain(s, params) >= cost for s in range(1, r))
        for s in range(1, r + 3):
            assert marginal_gain(s + 1, params) <= marginal_gain(s, params) + 1e-12
        t_opt = optimal_rounds(params)
        if params.beta > 0 and t_opt >= 1:
            assert r <= math.ceil(t_opt)


def test_the_marginal_rule_in_should_stop_and_from_config() -> None:
    cfg = DeliberationConfig(max_rounds=8, min_rounds=2)
    assert cfg.stopping == "marginal"
    decisions = [
        should_stop(StopInputs.from_config(cfg, round_index=r)).reason for r in range(1, 6)
    ]
    assert decisions == [None, None, None, "marginal_gain", "marginal_gain"]
    off = cfg.model_copy(update={"fatigue_rule": False})
    assert should_stop(StopInputs.from_config(off, round_index=4)).stop is False
    v1 = DeliberationConfig(protocol="v1", max_rounds=8)
    assert StopInputs.from_config(v1, round_index=4).marginal_halt is False
    assert StopInputs.from_config(v1, round_index=4, evidence=1.0).evidence_halt is True


def test_unanimity_streak_needs_conviction_every_round_and_the_same_answer() -> None:
    streak = UnanimityStreak(0.3)
    assert streak.add(unanimous=True, conviction=0.9, key="391") == 1
    assert streak.add(unanimous=True, conviction=0.1, key="391") == 0  # weak this round
    assert streak.add(unanimous=True, conviction=0.5, key="391") == 1
    assert streak.add(unanimous=True, conviction=0.5, key="391") == 2
    assert streak.add(unanimous=True, conviction=0.5, key="392") == 1  # another answer
    assert streak.add(unanimous=False, conviction=0.9, key="392") == 0
