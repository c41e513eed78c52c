"""When more rounds stop paying: the efficiency-fatigue model, optimal stopping, halting rules.

Pure functions, no I/O. The utility of deliberating t rounds is

    U(t) = 1 − (1 − p_g)·exp(−Λ(p_v − p_g)·t) − β·t²

(signal extraction saturating towards 1, minus a quadratic fatigue penalty). With
k = Λ(p_v − p_g) its maximum is at T_opt = W₀(k²(1 − p_g)/(2β))/k. Two online rules use it:

* ``marginal`` (protocol v2): stop after round r once the next round's expected gain
  U(r+1) − U(r) is below ``round_cost``. For k ≥ 0 and β ≥ 0, U is concave, so the gain never
  grows from one round to the next and tends to −∞ (β > 0) or to 0 (β = 0): with
  ``round_cost`` > 0 the rule always fires, at the round :func:`marginal_stop_round` gives
  (at most ⌈T_opt⌉ when β > 0);
* ``evidence`` (v1, the SDK's rule): evidence Δe = max(conviction, 0)·U'(r) accumulates each
  round and the council halts once it reaches ``effort`` times the positive budget
  B = U(T_opt) − U(0). It rarely fires: E is a sum of U' at whole rounds while B is an
  integral from 0, and past T_opt U' < 0 makes E fall exactly when fatigue starts.

The defaults are in the README's "Protocol defaults" table; ``perf/simulate.md`` fits U(t) to
measured accuracy curves and compares the rules with fixed rounds.

scipy is used only by :func:`fit_fatigue` (offline fitting) and is imported there, so the
deliberation loop never needs it; Lambert W is implemented here in pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nsed.errors import ConfigError

if TYPE_CHECKING:
    from nsed.config import DeliberationConfig

_INV_E = math.exp(-1.0)
StopReason = Literal[
    "max_rounds", "unanimous", "marginal_gain", "efficiency_fatigue", "budget_tokens", "budget_usd"
]
_MAX_SCHEDULE = 10_000  # rounds searched by marginal_stop_round (gains are ~0 long before)


# --- The efficiency-fatigue model ---------------------------------------------------------------


class FatigueParams(BaseModel):
    """Parameters of U(t): generator accuracy p_g, verifier accuracy p_v, rate Λ, fatigue β."""

    model_config = ConfigDict(frozen=True)

    p_g: float = Field(ge=0, le=1, description="accuracy of a generator alone (U(0))")
    p_v: float = Field(ge=0, le=1, description="accuracy of peer verification")
    lam: float = Field(gt=0, description="information-extraction rate Λ")
    beta: float = Field(ge=0, description="fatigue coefficient β (quadratic penalty)")

    @property
    def k(self) -> float:
        """The effective rate k = Λ(p_v − p_g); only this product shapes U(t)."""
        return self.lam * (self.p_v - self.p_g)

    @classmethod
    def from_config(cls, config: DeliberationConfig) -> FatigueParams:
        return cls(
            p_g=config.fatigue_p_g,
            p_v=config.fatigue_p_v,
            lam=config.fatigue_lambda,
            beta=config.fatigue_beta,
        )


def utility(t: float, params: FatigueParams) -> float:
    """U(t), the expected accuracy after t rounds net of fatigue."""
    return 1.0 - (1.0 - params.p_g) * math.exp(-params.k * t) - params.beta * t * t


def marginal_utility(t: float, params: FatigueParams) -> float:
    """U'(t) = (1 − p_g)·k·e^{−kt} − 2βt: what one more round is worth at round t."""
    k = params.k
    return (1.0 - params.p_g) * k * math.exp(-k * t) - 2.0 * params.beta * t


def lambert_w0(x: float) -> float:
    """The principal branch W₀ of Lambert W (w·e^w = x) for real x ≥ −1/e.

    Halley iteration from a branch-point series (x near −1/e), log1p (moderate x) or the
    asymptotic ln x − ln ln x (large x, iterated in log space so e^w never overflows).
    """
    x = float(x)
    if math.isnan(x):
        raise ConfigError("lambert_w0 got NaN; pass a real number >= -1/e")
    if x == math.inf:
        return math.inf
    if x < -_INV_E:
        if x >= -_INV_E - 4e-16:  # −1/e itself, rounded to the float just below it
            return -1.0
        raise ConfigError(f"lambert_w0 is defined for x >= -1/e (≈ -0.3679); got {x}")
    if x == 0.0:
        return 0.0
    if x > math.e:
        return _w0_from_log(math.log(x))
    if x < -0.25:
        # Series around the branch point: w = −1 + p − p²/3 + 11p³/72, p = √(2(ex + 1)).
        p = math.sqrt(max(0.0, 2.0 * (math.e * x + 1.0)))
        w = -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p**3
    else:
        w = math.log1p(x)
    for _ in range(100):
        ew = math.exp(w)
        f = w * ew - x
        wp1 = w + 1.0
        if wp1 == 0.0:
            break
        denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1)
        if denom == 0.0:
            break
        step = f / denom
        w -= step
        if abs(step) <= 4e-16 * (1.0 + abs(w)):
            break
    return max(w, -1.0)


def _w0_from_log(log_x: float) -> float:
    """W₀(x) for x > e given ln x: solve w + ln w = ln x by Halley (no overflow for huge x)."""
    if log_x == math.inf:
        return math.inf
    lw = math.log(log_x)
    w = log_x - lw + lw / log_x if log_x > 1.0 else 1.0
    for _ in range(100):
        f = w + math.log(w) - log_x
        d1 = 1.0 + 1.0 / w
        d2 = -1.0 / (w * w)
        step = f / (d1 - f * d2 / (2.0 * d1))
        w -= step
        if abs(step) <= 4e-16 * abs(w):
            break
    return w


def optimal_rounds(params: FatigueParams) -> float:
    """T_opt = W₀(k²(1 − p_g)/(2β))/k, the round where U'(t) = 0.

    Returns 0.0 when k ≤ 0 (verification is no better than generation, so no round pays) and
    math.inf when β = 0 and k > 0 (no fatigue: U only rises, so only max_rounds stops).
    """
    k = params.k
    if k <= 0 or params.p_g >= 1.0:
        return 0.0
    if params.beta == 0:
        return math.inf
    # ln of the argument, so a tiny β cannot overflow it.
    log_arg = 2.0 * math.log(k) + math.log1p(-params.p_g) - math.log(2.0 * params.beta)
    if log_arg > 1.0:
        return _w0_from_log(log_arg) / k
    return lambert_w0(math.exp(log_arg)) / k


def positive_budget(params: FatigueParams) -> float:
    """B = U(T_opt) − U(0), the total signal more rounds can extract (≥ 0).

    With T_opt = ∞ (β = 0) this is the limit 1 − p_g; with T_opt = 0 it is 0.
    """
    t_opt = optimal_rounds(params)
    if t_opt == 0.0:
        return 0.0
    if math.isinf(t_opt):
        return 1.0 - params.p_g
    return max(0.0, utility(t_opt, params) - utility(0.0, params))


def marginal_gain(round_index: int, params: FatigueParams) -> float:
    """U(r+1) − U(r): what one more round after round ``round_index`` is expected to add."""
    return utility(round_index + 1, params) - utility(round_index, params)


def marginal_stop_round(params: FatigueParams, round_cost: float) -> int:
    """The first round r ≥ 1 after which one more round gains less than ``round_cost``.

    With k ≤ 0 no round pays and the answer is 1. The search is bounded, and for
    ``round_cost`` > 0 it always ends: the gains of a concave U fall to 0 or below.
    """
    if not (math.isfinite(round_cost) and round_cost > 0):
        raise ConfigError(f"round_cost must be a finite number > 0, got {round_cost}")
    if params.k <= 0:
        return 1
    for r in range(1, _MAX_SCHEDULE + 1):
        if marginal_gain(r, params) < round_cost:
            return r
    return _MAX_SCHEDULE


class EvidenceStep(NamedTuple):
    """One round's contribution: U'(round) and the accumulated evidence E after it."""

    du_dt: float
    evidence: float


class EvidenceTracker:
    """Accumulates E(r) = Σ_{s≤r} max(conviction_s, 0)·U'(s) for the evidence halting rule."""

    def __init__(self, params: FatigueParams) -> None:
        self.params = params
        self.budget = positive_budget(params)
        self.evidence = 0.0
        self.last_round: int | None = None

    def add(self, round_index: int, conviction: float) -> EvidenceStep:
        """Record one round's conviction; returns (U'(round), accumulated E)."""
        if self.last_round is not None and round_index <= self.last_round:
            raise ConfigError(
                f"round {round_index} added after round {self.last_round}; "
                "add each round once, in increasing order"
            )
        if round_index < 0:
            raise ConfigError(f"round_index must be >= 0, got {round_index}")
        if not (-1.0 <= conviction <= 1.0):
            raise ConfigError(f"conviction must lie in [-1, 1], got {conviction}")
        self.last_round = round_index
        du_dt = marginal_utility(round_index, self.params)
        self.evidence += max(conviction, 0.0) * du_dt
        return EvidenceStep(du_dt, self.evidence)

    def should_halt(self, effort: float) -> bool:
        """E ≥ effort·B. Lower effort halts sooner; B = 0 halts at once (no round pays)."""
        if not (0.0 <= effort <= 1.0):
            raise ConfigError(f"effort must lie in [0, 1], got {effort}")
        return self.evidence >= effort * self.budget


# --- Offline fitting --------------------------------------------------------------------------


class FatigueFit(BaseModel):
    """A fitted U(t). Only k = Λ(p_v − p_g) is identifiable from an accuracy curve, so
    ``params`` splits k with the Λ given to :func:`fit_fatigue` (raising Λ if p_v would pass 1).
    """

    params: FatigueParams
    k: float
    r2: float
    t_opt: float


def fit_fatigue(
    rounds: Sequence[int], accuracy: Sequence[float], *, lam: float = 1.0
) -> FatigueFit:
    """Least-squares fit of U(t) to per-round accuracy (paper reproduction, offline mode).

    Fits p_g ∈ [0, 1], k ≥ 0 and β ≥ 0 (so 0 ≤ p_g ≤ p_v ≤ 1 and Λ > 0 hold) from a few
    starting points and keeps the best. R² = 1 − SS_res/SS_tot; for a constant curve
    (SS_tot = 0) it is 1.0 when the fit is exact (RMS residual ≤ 1e-6), else 0.0.
    """
    ts, ys = _check_fit_input(rounds, accuracy)
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigError(f"lam must be a finite number > 0, got {lam}")
    import numpy as np
    from scipy.optimize import curve_fit

    t_arr = np.asarray(ts, dtype=float)
    y_arr = np.asarray(ys, dtype=float)

    def model(t: np.ndarray, p_g: float, k: float, beta: float) -> np.ndarray:
        return 1.0 - (1.0 - p_g) * np.exp(-k * t) - beta * t * t

    t_max = max(max(ts), 1.0)
    best: tuple[float, tuple[float, float, float]] | None = None
    for k0 in (0.1, 0.5, 2.0):
        for beta0 in (0.0, 1e-3, 1e-2):
            p0 = (min(max(min(ys), 0.0), 1.0), k0, beta0)
            try:
                popt, _ = curve_fit(
                    model,
                    t_arr,
                    y_arr,
                    p0=p0,
                    bounds=([0.0, 0.0, 0.0], [1.0, 100.0, 10.0 / t_max]),
                    method="trf",
                    maxfev=5000,
                    ftol=1e-12,
                    xtol=1e-12,
                    gtol=1e-12,
                )
            except (RuntimeError, ValueError):
                continue
            ss_res = float(np.sum((y_arr - model(t_arr, *popt)) ** 2))
            if best is None or ss_res < best[0]:
                best = (ss_res, (float(popt[0]), float(popt[1]), float(popt[2])))
    if best is None:
        raise ConfigError("could not fit U(t) to the accuracy curve; check the data points")
    ss_res, (p_g, k, beta) = best
    mean_y = math.fsum(ys) / len(ys)
    ss_tot = math.fsum((y - mean_y) ** 2 for y in ys)
    exact = math.sqrt(ss_res / len(ys)) <= 1e-6  # RMS residual below solver noise
    r2 = (1.0 if exact else 0.0) if ss_tot == 0.0 else 1.0 - ss_res / ss_tot
    # Split k = Λ(p_v − p_g) with the given Λ, raising Λ where p_v would exceed 1.
    gap = 1.0 - p_g
    if k == 0.0 or gap <= 0.0:
        p_v, lam_fit = p_g, lam
    elif k / lam <= gap:
        p_v, lam_fit = p_g + k / lam, lam
    else:
        p_v, lam_fit = 1.0, k / gap
    params = FatigueParams(p_g=p_g, p_v=min(p_v, 1.0), lam=lam_fit, beta=beta)
    return FatigueFit(params=params, k=k, r2=r2, t_opt=optimal_rounds(params))


def _check_fit_input(
    rounds: Sequence[int], accuracy: Sequence[float]
) -> tuple[list[float], list[float]]:
    if len(rounds) != len(accuracy):
        raise ConfigError(
            f"rounds ({len(rounds)}) and accuracy ({len(accuracy)}) must have the same length"
        )
    if len(rounds) < 3 or len(set(rounds)) < 3:
        raise ConfigError(
            "fit_fatigue needs at least 3 points at 3 different rounds "
            f"(got {len(rounds)} points at {len(set(rounds))} rounds); run more rounds"
        )
    ts = [float(t) for t in rounds]
    ys = [float(y) for y in accuracy]
    if any(not math.isfinite(t) or t < 0 for t in ts):
        raise ConfigError("rounds must be finite and >= 0")
    if any(not (0.0 <= y <= 1.0) for y in ys):
        raise ConfigError("accuracy values must be fractions in [0, 1] (divide percentages by 100)")
    return ts, ys


# --- Halting rules ----------------------------------------------------------------------------


class StopInputs(BaseModel):
    """Everything :func:`should_stop` looks at after a round: plain values, no live objects.

    The caller tracks ``unanimous_streak`` (consecutive rounds, ending with this one, in which
    every agent's normalised final answer was the same and conviction ≥ the unanimity
    threshold) because only it knows how to normalise finals for the task kind.
    """

    round_index: int = Field(ge=1, description="rounds completed so far (1 after round 1)")
    min_rounds: int = Field(ge=1)
    max_rounds: int = Field(ge=1)
    unanimous_streak: int = Field(default=0, ge=0)
    unanimity_rounds: int = Field(default=2, ge=1)
    evidence_halt: bool = Field(default=False, description="EvidenceTracker.should_halt(effort)")
    marginal_halt: bool = Field(
        default=False, description="U(r+1) - U(r) < round_cost (marginal_stop_round reached)"
    )
    tokens_used: int = Field(default=0, ge=0)
    budget_tokens: int | None = Field(default=None, ge=1)
    cost_usd: float = Field(default=0.0, ge=0)
    budget_usd: float | None = Field(default=None, ge=0)
    next_round_tokens: int = Field(default=0, ge=0, description="estimate; 0 = don't project")
    next_round_usd: float = Field(default=0.0, ge=0, description="estimate; 0 = don't project")

    @model_validator(mode="after")
    def _check_rounds(self) -> StopInputs:
        if self.min_rounds > self.max_rounds:
            raise ValueError(
                f"min_rounds ({self.min_rounds}) must not exceed max_rounds ({self.max_rounds})"
            )
        return self


    @classmethod
    def from_config(
        cls,
        config: DeliberationConfig,
        *,
        round_index: int,
        unanimous_streak: int = 0,
        evidence: float = 0.0,
        tokens_used: int = 0,
        cost_usd: float = 0.0,
    ) -> StopInputs:
        """The inputs after ``round_index`` under ``config``'s rules (``stopping``, budgets);
        ``evidence`` is E(r) of the evidence rule (``EvidenceTracker``)."""
        params = FatigueParams.from_config(config)
        rule_on = config.fatigue_rule
        return cls(
            round_index=round_index,
            min_rounds=config.min_rounds,
            max_rounds=config.max_rounds,
            unanimous_streak=unanimous_streak,
            unanimity_rounds=config.unanimity_rounds,
            evidence_halt=rule_on
            and config.stopping == "evidence"
            and evidence >= config.effort * positive_budget(params),
            marginal_halt=rule_on
            and config.stopping == "marginal"
            and round_index >= marginal_stop_round(params, config.round_cost),
            tokens_used=tokens_used,
            budget_tokens=config.budget_tokens,
            cost_usd=cost_usd,
            budget_usd=config.budget_usd,
        )


class UnanimityStreak:
    """Counts consecutive rounds in which every final answer was the same, with conviction at
    least ``threshold`` in *each* of them, and the same answer as the round before."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.streak = 0
        self._key: str | None = None

    def add(self, *, unanimous: bool, conviction: float, key: str | None) -> int:
        """Record one round; returns the streak after it."""
        if unanimous and key is not None and conviction >= self.threshold:
            self.streak = self.streak + 1 if key == self._key else 1
            self._key = key
        else:
            self.streak, self._key = 0, None
        return self.streak


class StopDecision(BaseModel):
    """Whether to stop, which rule fired (``reason``) and a human-readable why."""

    stop: bool
    reason: StopReason | None = None
    detail: str = ""


def should_stop(inputs: StopInputs) -> StopDecision:
    """Decide whether to stop after round ``inputs.round_index``.

    Checked in this order, first match wins:

    1. token budget, then dollar budget: hard limits, so they override min_rounds. A budget is
       exhausted when used ≥ budget, or when used + the next-round estimate would exceed it;
    2. max_rounds reached;
    3. fewer than min_rounds completed: never stop;
    4. unanimity: ``unanimous_streak`` ≥ ``unanimity_rounds``;
    5. marginal gain: ``marginal_halt`` (one more round is worth less than it costs);
    6. efficiency fatigue: ``evidence_halt`` (evidence ≥ effort·B, see EvidenceTracker).
    """
    i = inputs
    if i.budget_tokens is not None and (
        i.tokens_used >= i.budget_tokens or i.tokens_used + i.next_round_tokens > i.budget_tokens
    ):
        return StopDecision(
            stop=True,
            reason="budget_tokens",
            detail=f"{i.tokens_used} tokens used (+{i.next_round_tokens} expected next round) "
            f"of a budget of {i.budget_tokens}",
        )
    if i.budget_usd is not None and (
        i.cost_usd >= i.budget_usd or i.cost_usd + i.next_round_usd > i.budget_usd
    ):
        return StopDecision(
            stop=True,
            reason="budget_usd",
            detail=f"${i.cost_usd:.4f} spent (+${i.next_round_usd:.4f} expected next round) "
            f"of a budget of ${i.budget_usd:.4f}",
        )
    if i.round_index >= i.max_rounds:
        return StopDecision(
            stop=True, reason="max_rounds", detail=f"{i.round_index} of {i.max_rounds} rounds done"
        )
    if i.round_index < i.min_rounds:
        return StopDecision(
            stop=False, detail=f"{i.round_index} of at least {i.min_rounds} rounds done"
        )
    if i.unanimous_streak >= i.unanimity_rounds:
        return StopDecision(
            stop=True,
            reason="unanimous",
            detail=f"all final answers agreed with enough conviction for {i.unanimous_streak} "
            "consecutive rounds",
        )
    if i.marginal_halt:
        return StopDecision(
            stop=True,
            reason="marginal_gain",
            detail="one more round is expected to gain less than round_cost",
        )
    if i.evidence_halt:
        return StopDecision(
            stop=True,
            reason="efficiency_fatigue",
            detail="accumulated evidence reached effort x positive budget",
        )
    return StopDecision(stop=False, detail=f"{i.round_index} rounds done; no stop rule met")


__all__ = [
    "EvidenceStep",
    "EvidenceTracker",
    "FatigueFit",
    "FatigueParams",
    "StopDecision",
    "StopInputs",
    "StopReason",
    "UnanimityStreak",
    "fit_fatigue",
    "lambert_w0",
    "marginal_gain",
    "marginal_stop_round",
    "marginal_utility",
    "optimal_rounds",
    "positive_budget",
    "should_stop",
    "utility",
]
