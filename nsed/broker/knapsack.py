"""The Dynamic Expertise Broker's integer program: pick the team, and say why.

Team selection is a 0-1 knapsack with role coverage (research notes §2.3): binary ``x[m, role]``
binds candidate ``m`` to a role, and we

    maximise   Σ value_m · x[m, role]
    subject to Σ cost_usd_m · x ≤ budget_usd            (if a budget is set)
               Σ vram_gb_m · x ≤ vram_gb                 (self-hosted models only, if set)
               each role filled (exactly ``count`` times, or min_team..max_team for the
               default single role "deliberator"); one role per model; at most
               max_per_family models per family; capability required by the role (with
               no roles, the task kind is the capability every seat needs: a math question
               is not given to a code-only model; kind "auto" needs none, and a model that
               lists no capabilities counts as general);
               latency ≤ SLO and benched models excluded (both as pre-filters).

``value_m = skill × success_ratio × (1 − load_discount · load)`` where skill is the learned
skill for the task kind smoothed towards the catalog prior with ``prior_weight``
pseudo-observations (the prior alone at cold start). ``cost_usd_m = expected_rounds × 2 calls ×
(est_input_tokens × input_price + est_output_tokens × output_price) / 1e6``.

Determinism: equal inputs give the same team, whatever the catalog order. Among teams whose
value is within 1e-9 of the best, a second solve picks the one whose members come earliest in
(cost, name) order (least sum of ranks): cheaper members first, then alphabetical. Budget and
VRAM caps are met with a relative tolerance of 1e-9 (:func:`fits`); a solver answer outside it
is cut off and the model re-solved.

Everything here is pure (no I/O): the callers feed in the catalog, the live stats and the
policy, and get a :class:`TeamSelection` with one reason per rejected model, or an
:class:`~nsed.errors.InfeasibleTeam` whose ``constraints`` name what cannot be met, computed
directly (cheapest feasible team, capability counts, ...) rather than read from the solver.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pulp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nsed.broker.catalog import CAPABILITIES, Catalog, CatalogEntry, RoleSpec, check_capability
from nsed.config import format_validation_error
from nsed.errors import ConfigError, InfeasibleTeam

DEFAULT_ROLE = "deliberator"
AUTO_KIND = "auto"  # a question of unknown kind: no capability needed, valued at "text" skill
TIE_TOLERANCE = 1e-9
CAP_RTOL = 1e-9
_MAX_RESOLVES = 20
SolverChoice = Literal["auto", "highs", "cbc"]


# --- Inputs -------------------------------------------------------------------------------------


class BrokerPolicy(BaseModel):
    """What the broker optimises under. Every default is overridable (CLI flags, config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_team: int = Field(default=3, le=64)
    max_team: int = Field(default=5, le=64)
    max_per_family: int = Field(default=2, ge=1, description="diversity cap")
    budget_usd: float | None = Field(default=None, ge=0, description="$ per question")
    vram_gb: float | None = Field(default=None, ge=0, description="for self-hosted models")
    latency_slo_s: float | None = Field(default=None, gt=0, description="max expected s/call")
    expected_rounds: float = Field(default=3, gt=0)
    est_input_tokens: int = Field(default=4000, ge=0, description="per agent per call")
    est_output_tokens: int = Field(default=1500, ge=0, description="per agent per call")
    roles: list[RoleSpec] | None = Field(
        default=None, description="None: one role 'deliberator' of min_team..max_team seats"
    )
    load_discount: float = Field(default=0.5, ge=0, le=1, description="value × (1 − d·load)")
    prior_weight: float = Field(default=5.0, ge=0, description="pseudo-observations of prior")
    default_prior: float = Field(default=0.5, ge=0, le=1, description="prior without a prior_skill")
    solver: SolverChoice = "auto"

    def __init__(self, **data: Any) -> None:
        # CLI flags build a policy directly; give them the same ConfigError as TOML input.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"broker policy: {_describe(exc)}") from None

    @model_validator(mode="after")
    def _check(self) -> BrokerPolicy:
        for field in ("min_team", "max_team"):
            if getattr(self, field) < 2:
                raise ValueError(
                    f"{field} = {getattr(self, field)}: a team needs at least 2 models for "
                    "cross-review; set it to 2 or more"
                )
        if self.min_team > self.max_team:
            raise ValueError(
                f"min_team ({self.min_team}) must not exceed max_team ({self.max_team})"
            )
        if self.roles is not None:
            _check_roles(self.roles, self.min_team, self.max_team)
        return self


def _describe(exc: ValidationError) -> str:
    """Like config.format_validation_error, without the ``value:`` of whole-model checks."""
    return format_validation_error(exc).removeprefix("value: ").replace("; value: ", "; ")


def _check_roles(roles: Sequence[RoleSpec], min_team: int, max_team: int) -> None:
    """Roles must be non-empty, uniquely named, and their seats must fit min..max team size."""
    if not roles:
        raise ValueError("roles must not be empty; omit it for one generic role")
    names = [r.name for r in roles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"role names must be unique; repeated: {', '.join(repeated)}")
    seats = sum(r.count for r in roles)
    if not min_team <= seats <= max_team:
        detail = " + ".join(f"{r.name} {r.count}" for r in roles)
        raise ValueError(
            f"the roles need {seats} seats ({detail}) but the team size must be within "
            f"{min_team}..{max_team}: change a role's count or min_team/max_team"
        )


class ModelStats(BaseModel):
    """Live evidence about one candidate, from telemetry and the free-agency state.

    ``skill[kind]`` is a learned skill in [0, 1] resting on ``n_obs[kind]`` observations (an int
    for ``n_obs`` applies to every kind in ``skill``). ``load`` is the live load in [0, 1] (e.g.
    from vLLM's /metrics); ``latency_s``, when known, is the observed per-call latency and
    replaces the catalog's expectation for the SLO.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    skill: dict[str, float] = Field(default_factory=dict)
    n_obs: dict[str, int] = Field(default_factory=dict)
    success_ratio: float = Field(default=1.0, ge=0, le=1)
    load: float | None = Field(default=None, ge=0, le=1)
    latency_s: float | None = Field(default=None, gt=0)
    benched: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"model stats: {_describe(exc)}") from None

    @model_validator(mode="before")
    @classmethod
    def _expand_n_obs(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("n_obs"), int):
            data = {**data, "n_obs": dict.fromkeys(data.get("skill") or {}, data["n_obs"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelStats:
        for kind, value in self.skill.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"skill.{kind} = {value} must be within [0, 1]")
            if kind not in self.n_obs:
                raise ValueError(f"skill.{kind} needs n_obs.{kind} (observations behind it)")
        for kind, n in self.n_obs.items():
            if n < 0:
                raise ValueError(f"n_obs.{kind} = {n} must be >= 0")
        return self


# --- Outputs ------------------------------------------------------------------------------------


class Chosen(BaseModel):
    """A model on the team, with the numbers that got it there."""

    name: str
    role: str
    value: float
    cost_usd: float
    vram_gb: float


class Rejected(BaseModel):
    """A candidate left out, and the constraint or value comparison that kept it out."""

    name: str
    reason: str
    value: float | None = None
    cost_usd: float | None = None
    vram_gb: float | None = None


class TeamSelection(BaseModel):
    """The broker's decision: the team, every rejection with its reason, and the totals."""

    kind: str
    team: list[Chosen]
    rejected: list[Rejected]
    value: float
    cost_usd: float
    vram_gb: float
    budget_usd: float | None = None
    vram_budget_gb: float | None = None
    solver: str
    solve_s: float

    def names(self) -> list[str]:
        return [c.name for c in self.team]


# --- Per-model numbers --------------------------------------------------------------------------


def fits(total: float, cap: float | None) -> bool:
    """``total ≤ cap`` up to a relative 1e-9 (so a sum equal to the cap, in any order, fits)."""
    return cap is None or total <= cap * (1 + CAP_RTOL) + 1e-12


def smoothed_skill(
    entry: CatalogEntry, kind: str, stats: ModelStats | None, policy: BrokerPolicy
) -> float:
    """Learned skill shrunk towards the prior: (w·prior + n·learned) / (w + n)."""
    prior = entry.prior_skill.get(kind)
    if prior is None and kind == AUTO_KIND:
        prior = entry.prior_skill.get("text")
    prior = policy.default_prior if prior is None else prior
    if stats is None or kind not in stats.skill:
        return prior
    n = stats.n_obs.get(kind, 0)
    if n <= 0:
        return prior
    w = policy.prior_weight
    return (w * prior + n * stats.skill[kind]) / (w + n)


def model_value(
    entry: CatalogEntry, kind: str, stats: ModelStats | None, policy: BrokerPolicy
) -> float:
    """Expected contribution: skill × success ratio × (1 − load_discount · load)."""
    value = smoothed_skill(entry, kind, stats, policy)
    if stats is not None:
        value *= stats.success_ratio
        if stats.load is not None:
            value *= 1.0 - policy.load_discount * stats.load
    return value


def model_cost_usd(entry: CatalogEntry, policy: BrokerPolicy) -> float:
    """Expected $ per question: rounds × 2 calls × (tokens in × price in + out × out) / 1e6."""
    per_call = (
        policy.est_input_tokens * entry.input_price + policy.est_output_tokens * entry.output_price
    )
    return policy.expected_rounds * 2 * per_call / 1e6


# --- Internals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Role:
    name: str
    capability: str | None
    lo: int
    hi: int
    from_kind: bool = False  # the task kind's capability (no roles): general models qualify

    def admits(self, entry: CatalogEntry) -> bool:
        return entry.has(self.capability) or (self.from_kind and not entry.capabilities)


@dataclass(frozen=True)
class _Cand:
    name: str
    family: str
    value: float
    cost: float
    vram: float  # counted against the VRAM budget (0 for hosted models)
    latency: float | None
    benched: bool
    roles: tuple[int, ...]  # indices of the roles this model can fill


def _usd(x: float) -> str:
    return "$" + (f"{x:.4g}" if x < 1000 else f"{x:,.0f}")


def _gb(x: float) -> str:
    return f"{x:.4g} GB"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def kind_capability(kind: str) -> str | None:
    """The capability a seat needs for a task of ``kind`` when no role says otherwise."""
    return None if kind == AUTO_KIND else kind


def serves_kind(entry: CatalogEntry, kind: str) -> bool:
    """Whether ``entry`` may take a seat for a task of ``kind`` when no role says otherwise:
    it lists the kind as a capability, or lists no capabilities at all (a general model)."""
    return entry.has(kind_capability(kind)) or not entry.capabilities


def _role_plan(
    policy: BrokerPolicy, catalog_roles: Sequence[RoleSpec], kind: str
) -> list[_Role]:
    roles = policy.roles if policy.roles is not None else (list(catalog_roles) or None)
    if roles is None:
        capability = kind_capability(kind)
        return [_Role(DEFAULT_ROLE, capability, policy.min_team, policy.max_team, from_kind=True)]
    try:
        _check_roles(roles, policy.min_team, policy.max_team)
    except ValueError as exc:
        raise ConfigError(f"broker roles: {exc}") from None
    return [_Role(r.name, r.capability, r.count, r.count) for r in roles]


@functools.cache
def _available_solvers() -> tuple[str, ...]:
    return tuple(pulp.listSolvers(onlyAvailable=True))


def _solver_name(choice: SolverChoice) -> str:
    available = _available_solvers()
    if choice in ("auto", "highs"):
        for name in ("HiGHS", "HiGHS_CMD"):
            if name in available:
                return name
        if choice == "highs":
            raise ConfigError("solver 'highs' is not available: install highspy, or use 'cbc'")
    if "PULP_CBC_CMD" in available:
        return "PULP_CBC_CMD"
    raise ConfigError(f"no MILP solver available to PuLP (found: {', '.join(available) or '-'})")


@functools.cache
def _silence_highs_banner() -> None:
    """HiGHS prints a banner from C to fd 1 on its first instance, which would corrupt
    ``--json`` output; create that first instance with fd 1 pointed at /dev/null."""
    import highspy  # PuLP's HiGHS interface is only listed as available when this imports

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
        with contextlib.suppress(Exception):  # flush C stdio while fd 1 is still /dev/null
            ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _make_solver(name: str) -> Any:
    # Gaps of 0: the answer must be the exact optimum (tests compare with brute force).
    if name == "HiGHS":
        _silence_highs_banner()
        return pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0)
    if name == "HiGHS_CMD":
        return pulp.HiGHS_CMD(msg=False, gapRel=0.0, gapAbs=0.0)
    return pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, threads=1)


Objective = Literal["value", "rank", "cost", "vram"]


@dataclass
class _Solved:
    team: list[tuple[_Cand, int]]  # (candidate, role index)
    seconds: float


def _best_team(
    pool: Sequence[_Cand], roles: Sequence[_Role], policy: BrokerPolicy, solver: str
) -> _Solved | None:
    """Lexicographic optimum: the highest total value, then the lowest sum of ranks in
    (cost, name) order among the teams of that value (the deterministic tie-break).

    The tie-break is a second solve with ``Σ value ≥ best − TIE_TOLERANCE`` so it works with
    integer objective coefficients the solver compares exactly; a floating epsilon in one
    objective would be below the solver's optimality tolerance. Its answer is kept only if its
    value, summed here, really is that close to the first solve's.
    """
    budget, vram = policy.budget_usd, policy.vram_gb
    first = _solve(pool, roles, policy, solver, objective="value", budget=budget, vram=vram)
    if first is None:
        return None
    best = sum(c.value for c, _ in first.team)
    floor = best - TIE_TOLERANCE
    second = _solve(
        pool, roles, policy, solver, objective="rank", budget=budget, vram=vram, floor=floor
    )
    seconds = first.seconds + (second.seconds if second else 0.0)
    if second is not None and sum(c.value for c, _ in second.team) >= floor:
        return _Solved(second.team, seconds)
    return _Solved(first.team, seconds)


def _solve(
    pool: Sequence[_Cand],
    roles: Sequence[_Role],
    policy: BrokerPolicy,
    solver: str,
    *,
    objective: Objective,
    budget: float | None,
    vram: float | None,
    floor: float | None = None,
) -> _Solved | None:
    """Solve the ILP over ``pool``; None when infeasible. Caps are re-checked exactly."""
    cuts: list[frozenset[int]] = []
    seconds = 0.0
    for _ in range(_MAX_RESOLVES):
        prob, x = _build(pool, roles, policy, objective, budget, vram, floor, cuts)
        started = time.perf_counter()
        prob.solve(_make_solver(solver))
        seconds += time.perf_counter() - started
        if pulp.LpStatus[prob.status] != "Optimal":
            return None
        picked = [(i, r) for (i, r), var in x.items() if (var.varValue or 0.0) > 0.5]
        members = frozenset(i for i, _ in picked)
        if fits(sum(pool[i].cost for i in members), budget) and fits(
            sum(pool[i].vram for i in members), vram
        ):
            return _Solved([(pool[i], r) for i, r in sorted(picked)], seconds)
        cuts.append(members)  # met the cap only within solver tolerance: exclude, re-solve
    return None


def _build(
    pool: Sequence[_Cand],
    roles: Sequence[_Role],
    policy: BrokerPolicy,
    objective: Objective,
    budget: float | None,
    vram: float | None,
    floor: float | None,
    cuts: Iterable[frozenset[int]],
) -> tuple[pulp.LpProblem, dict[tuple[int, int], pulp.LpVariable]]:
    sense = pulp.LpMaximize if objective == "value" else pulp.LpMinimize
    prob = pulp.LpProblem("nsed_team", sense)
    # A model over a cap on its own gets no variable: it could never be chosen, and its
    # weight / cap coefficient could be huge enough for the solver to reject the model.
    x = {
        (i, r): pulp.LpVariable(f"x_{i}_{r}", cat=pulp.LpBinary)
        for i, cand in enumerate(pool)
        if fits(cand.cost, budget) and fits(cand.vram, vram)
        for r in cand.roles
    }
    chosen: dict[int, list[pulp.LpVariable]] = {}
    for (i, _r), var in x.items():
        chosen.setdefault(i, []).append(var)
    y = {i: pulp.lpSum(vs) for i, vs in chosen.items()}

    if objective == "value":
        prob += pulp.lpSum(pool[i].value * y[i] for i in y)
    elif objective == "rank":
        order = sorted(y, key=lambda i: (pool[i].cost, pool[i].name))
        prob += pulp.lpSum((rank + 1) * y[i] for rank, i in enumerate(order))
    else:  # minimise cost or VRAM, normalised to at most 1 per model for the solver
        weight = {i: getattr(pool[i], objective) for i in y}
        top = max(weight.values(), default=0.0) or 1.0
        prob += pulp.lpSum((weight[i] / top) * y[i] for i in y)
    if floor is not None:
        prob += pulp.lpSum(pool[i].value * y[i] for i in y) >= floor

    for r, role in enumerate(roles):
        filled = pulp.lpSum(var for (_i, rr), var in x.items() if rr == r)
        if role.lo == role.hi:
            prob += filled == role.lo
        else:
            prob += filled >= role.lo
            prob += filled <= role.hi
    if len(roles) > 1:
        for vs in chosen.values():
            if len(vs) > 1:
                prob += pulp.lpSum(vs) <= 1
    families: dict[str, list[int]] = {}
    for i in y:
        families.setdefault(pool[i].family, []).append(i)
    for members in families.values():
        if len(members) > policy.max_per_family:
            prob += pulp.lpSum(y[i] for i in members) <= policy.max_per_family
    # Caps are scaled to a right-hand side of 1 so the solver's tolerance is relative.
    for cap, weight in ((budget, "cost"), (vram, "vram")):
        if cap is None:
            continue
        terms = [(getattr(pool[i], weight), i) for i in y if getattr(pool[i], weight) > 0]
        if terms:
            scale = cap if cap > 0 else 1.0
            prob += pulp.lpSum((w / scale) * y[i] for w, i in terms) <= (1.0 if cap > 0 else 0.0)
    for members in cuts:
        outside = [y[i] for i in y if i not in members]
        prob += pulp.lpSum(y[i] for i in members) - pulp.lpSum(outside) <= len(members) - 1
    return prob, x


# --- Selection ----------------------------------------------------------------------------------


def select_team(
    catalog_entries: Catalog | Sequence[CatalogEntry],
    kind: str,
    policy: BrokerPolicy | None = None,
    stats: dict[str, ModelStats] | None = None,
) -> TeamSelection:
    """Choose the highest-value team for a task of ``kind`` under ``policy``; explain it.

    ``catalog_entries`` may be a :class:`Catalog` (whose ``roles`` apply when the policy sets
    none) or a list of entries. ``stats`` maps model names to live evidence; a model without
    stats is valued at its prior. Raises ConfigError for bad input and InfeasibleTeam when no
    team can meet the constraints.
    """
    policy = policy or BrokerPolicy()
    stats = stats or {}
    try:
        kind = AUTO_KIND if kind.strip().lower() == AUTO_KIND else check_capability(kind)
    except ConfigError:
        raise ConfigError(
            f"unknown task kind {kind!r}; valid kinds are: {AUTO_KIND}, {', '.join(CAPABILITIES)}"
        ) from None
    if isinstance(catalog_entries, Catalog):
        entries, catalog_roles = list(catalog_entries.models), catalog_entries.roles
    else:
        entries, catalog_roles = list(catalog_entries), []
    if not entries:
        raise ConfigError("the catalog is empty: list at least 2 candidate models")
    names = [e.name for e in entries]
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ConfigError(f"catalog model names must be unique; repeated: {', '.join(repeated)}")
    roles = _role_plan(policy, catalog_roles, kind)
    solver = _solver_name(policy.solver)

    cands = [_candidate(e, kind, stats.get(e.name), policy, roles) for e in entries]
    rejected: dict[str, str] = {}
    pool: list[_Cand] = []
    for cand in cands:
        reason = _prefilter_reason(cand, roles, policy)
        if reason:
            rejected[cand.name] = reason
        else:
            pool.append(cand)

    _check_counts(cands, pool, roles, policy)
    solved = _best_team(pool, roles, policy, solver)
    if solved is None:
        problems = _diagnose(pool, roles, policy, solver)
        raise InfeasibleTeam(
            "no team can be formed: " + "; ".join(problems) + _hints(problems),
            constraints=problems,
        )

    # The solver's role assignment among equally valid ones depends on the catalog's order;
    # re-derive it canonically so the team's roles and every explanation do not.
    assigned = _assign_roles([c for c, _ in solved.team], roles)
    assert assigned is not None  # the solver's own assignment proves one exists
    team = sorted(assigned, key=lambda cr: (cr[1], -cr[0].value, cr[0].name))
    chosen_names = {c.name for c, _ in team}
    for cand in pool:
        if cand.name not in chosen_names:
            rejected[cand.name] = _why_not(cand, team, roles, policy)
    by_name = {c.name: c for c in cands}
    return TeamSelection(
        kind=kind,
        team=[
            Chosen(name=c.name, role=roles[r].name, value=c.value, cost_usd=c.cost, vram_gb=c.vram)
            for c, r in team
        ],
        rejected=[
            Rejected(
                name=n,
                reason=rejected[n],
                value=by_name[n].value,
                cost_usd=by_name[n].cost,
                vram_gb=by_name[n].vram,
            )
            for n in names
            if n in rejected
        ],
        value=sum(c.value for c, _ in team),
        cost_usd=sum(c.cost for c, _ in team),
        vram_gb=sum(c.vram for c, _ in team),
        budget_usd=policy.budget_usd,
        vram_budget_gb=policy.vram_gb,
        solver=solver,
        solve_s=solved.seconds,
    )


def _candidate(
    entry: CatalogEntry,
    kind: str,
    stats: ModelStats | None,
    policy: BrokerPolicy,
    roles: Sequence[_Role],
) -> _Cand:
    latency = stats.latency_s if stats is not None and stats.latency_s else entry.latency_s
    return _Cand(
        name=entry.name,
        family=entry.family,
        value=model_value(entry, kind, stats, policy),
        cost=model_cost_usd(entry, policy),
        vram=entry.vram_gb,
        latency=latency,
        benched=bool(stats and stats.benched),
        roles=tuple(r for r, role in enumerate(roles) if role.admits(entry)),
    )


def _over_slo(cand: _Cand, policy: BrokerPolicy) -> bool:
    slo = policy.latency_slo_s
    return slo is not None and cand.latency is not None and cand.latency > slo


def _prefilter_reason(cand: _Cand, roles: Sequence[_Role], policy: BrokerPolicy) -> str | None:
    if cand.benched:
        return "benched"
    if _over_slo(cand, policy):
        return f"latency {cand.latency:g}s > SLO {policy.latency_slo_s:g}s"
    if not cand.roles:
        return "; ".join(f"lacks capability {r.capability} for role {r.name}" for r in roles)
    return None


def _check_counts(
    cands: Sequence[_Cand], pool: Sequence[_Cand], roles: Sequence[_Role], policy: BrokerPolicy
) -> None:
    """Cheap structural checks, stated in the user's terms: enough models, enough per role."""
    need = sum(r.lo for r in roles)
    live = [c for c in cands if not c.benched and not _over_slo(c, policy)]
    problems: list[str] = []
    if len(live) < need:
        live_names = {c.name for c in live}
        others = Counter(
            "benched" if c.benched else f"over SLO {policy.latency_slo_s:g}s"
            for c in cands
            if c.name not in live_names
        )
        detail = ", ".join(f"{n} {what}" for what, n in sorted(others.items()))
        problems.append(
            f"only {_plural(len(live), 'eligible model')}"
            + (f" (others: {detail})" if detail else "")
            + f" but a team needs at least {need}"
        )
    else:
        for r, role in enumerate(roles):
            capable = sum(1 for c in pool if r in c.roles)
            if role.capability is not None and capable < role.lo:
                verb = "has" if capable == 1 else "have"
                problems.append(
                    f"only {_plural(capable, 'model')} {verb} capability {role.capability} "
                    f"but role {role.name} needs {role.lo}"
                )
        if not problems and 1 < len(roles) <= 10:
            problems.extend(_hall_violations(pool, roles))
    if problems:
        raise InfeasibleTeam(
            "no team can be formed: " + "; ".join(problems) + _hints(problems),
            constraints=problems,
        )


def _hall_violations(pool: Sequence[_Cand], roles: Sequence[_Role]) -> list[str]:
    """Roles that share too few capable models between them (one model plays one role)."""
    for size in range(2, len(roles) + 1):
        for group in itertools.combinations(range(len(roles)), size):
            capable = {c.name for c in pool if any(r in c.roles for r in group)}
            seats = sum(roles[r].lo for r in group)
            if len(capable) < seats:
                label = ", ".join(roles[r].name for r in group)
                return [
                    f"roles {label} need {seats} distinct models between them but only "
                    f"{_plural(len(capable), 'model')} can fill them"
                ]
    return []


def _diagnose(
    pool: Sequence[_Cand], roles: Sequence[_Role], policy: BrokerPolicy, solver: str
) -> list[str]:
    """Name what cannot be met, from the cheapest / smallest teams that ignore the caps."""
    cheapest = _solve(pool, roles, policy, solver, objective="cost", budget=None, vram=None)
    if cheapest is None:
        return [_family_problem(pool, roles, policy)]
    problems: list[str] = []
    budget, vram = policy.budget_usd, policy.vram_gb
    if budget is not None:
        cost = sum(c.cost for c, _ in cheapest.team)
        if not fits(cost, budget):
            size = len(cheapest.team)
            problems.append(f"budget {_usd(budget)} < cheapest {size}-model team {_usd(cost)}")
    if vram is not None:
        smallest = _solve(pool, roles, policy, solver, objective="vram", budget=None, vram=None)
        gb = sum(c.vram for c, _ in smallest.team) if smallest else 0.0
        if not fits(gb, vram):
            problems.append(f"vram {_gb(vram)} < smallest feasible team {_gb(gb)}")
    if not problems and budget is not None and vram is not None:
        within = _solve(pool, roles, policy, solver, objective="cost", budget=None, vram=vram)
        cost = sum(c.cost for c, _ in within.team) if within else float("inf")
        problems.append(
            f"budget {_usd(budget)} and vram {_gb(vram)} cannot both be met: the cheapest "
            f"team within {_gb(vram)} costs {_usd(cost)}"
        )
    return problems or ["no team satisfies all constraints together"]


def _family_problem(pool: Sequence[_Cand], roles: Sequence[_Role], policy: BrokerPolicy) -> str:
    k = policy.max_per_family
    per_family = Counter(c.family for c in pool)
    seats = sum(min(n, k) for n in per_family.values())
    need = sum(r.lo for r in roles)
    if seats < need:
        return (
            f"at most {k} per family: the {_plural(len(pool), 'eligible model')} come from "
            f"{len(per_family)} {'family' if len(per_family) == 1 else 'families'}, which fill "
            f"at most {seats} seats but a team needs {need}"
        )
    return (
        f"roles {', '.join(r.name for r in roles)} cannot all be filled by distinct eligible "
        f"models with at most {k} per family"
    )


def _hints(problems: Sequence[str]) -> str:
    text = " ".join(problems)
    hints = []
    if "budget" in text:
        hints.append("raise the budget or add cheaper models")
    if "vram" in text:
        hints.append("raise the VRAM budget or add hosted/smaller models")
    if "per family" in text:
        hints.append("raise max_per_family or add models from other families")
    if "capability" in text or "can fill" in text:
        hints.append("add models with the required capabilities or change the roles")
    if "eligible" in text:
        hints.append("wait for benched models, relax the latency SLO, or lower min_team")
    return f" (to fix: {'; '.join(hints)})" if hints else ""


def _assign_roles(
    members: Sequence[_Cand], roles: Sequence[_Role]
) -> list[tuple[_Cand, int]] | None:
    """A role for each member that fills every role within its bounds, or None if none does.

    Canonical: members are placed strongest first (value, then name), each in the lowest-index
    role that still leads to a full assignment, so the result depends only on the set of
    members, never on the order they came in. Teams are small (≤ a dozen seats), so a
    depth-first search is instant.
    """
    order = sorted(members, key=lambda c: (-c.value, c.name))
    counts = [0] * len(roles)
    placed: list[int] = []
    still_needed = sum(role.lo for role in roles)

    def place(k: int, needed: int) -> bool:
        if needed > len(order) - k:
            return False  # too few members left to reach every role's minimum
        if k == len(order):
            return True
        for r in order[k].roles:
            if counts[r] >= roles[r].hi:
                continue
            counts[r] += 1
            placed.append(r)
            if place(k + 1, needed - (1 if counts[r] <= roles[r].lo else 0)):
                return True
            counts[r] -= 1
            placed.pop()
        return False

    if not place(0, still_needed):
        return None
    return list(zip(order, placed, strict=True))


def _why_not(
    cand: _Cand, team: Sequence[tuple[_Cand, int]], roles: Sequence[_Role], policy: BrokerPolicy
) -> str:
    """The constraint or value comparison that keeps ``cand`` out of ``team``.

    Alone over a cap: that cap. Otherwise consider swapping it in for each chosen member whose
    role it can play, weakest first, and adding it when the team may still grow. A move that
    would raise the team's value must break a constraint (the team is optimal): the first such
    move names the reason. If no move would raise the value, it lost on value (or on the
    tie-break, when a swap of equal value is feasible).
    """
    budget, vram = policy.budget_usd, policy.vram_gb
    if not fits(cand.cost, budget):
        return f"over budget: would need {_usd(cand.cost)} alone, budget {_usd(budget or 0)}"
    if not fits(cand.vram, vram):
        return f"vram: needs {_gb(cand.vram)} alone, budget {_gb(vram or 0)}"

    members = [c for c, _ in team]
    # A swap is possible when the new team can fill every role under some assignment: which
    # role the solver happened to give each member must not change the explanation.
    swaps: list[tuple[_Cand, list[_Cand]]] = []
    for old in sorted(members, key=lambda c: (c.value, c.name)):
        new_team = [*(c for c in members if c is not old), cand]
        if _assign_roles(new_team, roles) is not None:
            swaps.append((old, new_team))
    grown = [*members, cand]
    added = grown if _assign_roles(grown, roles) is not None else None

    improving = [new for old, new in swaps if cand.value > old.value + TIE_TOLERANCE]
    if added is not None and cand.value > TIE_TOLERANCE:
        improving.append(added)
    for new_team in improving:
        violations = _violations(cand, new_team, policy)
        if violations:
            return "; ".join(violations)
    for old, new_team in swaps:
        if not _violations(cand, new_team, policy):
            if cand.value < old.value - TIE_TOLERANCE:
                return (
                    f"lower value ({cand.value:.3f}) than chosen members "
                    f"({old.name}: {old.value:.3f})"
                )
            return (
                f"tied on value ({cand.value:.3f}) with {old.name}; ties go to the "
                "cheaper model, then name order"
            )
    if added is not None and not _violations(cand, added, policy):
        return f"adds no value ({cand.value:.3f})"
    if swaps:  # every swap breaks something, but none would have raised the value anyway
        old = swaps[0][0]
        return f"lower value ({cand.value:.3f}) than chosen members ({old.name}: {old.value:.3f})"
    return "no seat it can fill"  # unreachable: every role it can play has a member


def _violations(cand: _Cand, new_team: Sequence[_Cand], policy: BrokerPolicy) -> list[str]:
    out = []
    same_family = sum(1 for c in new_team if c.family == cand.family)
    if same_family > policy.max_per_family:
        out.append(f"family {cand.family} already has {policy.max_per_family} members")
    cost = sum(c.cost for c in new_team)
    if not fits(cost, policy.budget_usd):
        out.append(f"over budget: would need {_usd(cost)} (budget {_usd(policy.budget_usd or 0)})")
    gb = sum(c.vram for c in new_team)
    if not fits(gb, policy.vram_gb):
        out.append(f"vram: would need {_gb(gb)} (budget {_gb(policy.vram_gb or 0)})")
    return out


def explain_table(selection: TeamSelection) -> list[dict[str, Any]]:
    """Rows for a CLI decision table: chosen models first, then the rejected by value."""
    rows: list[dict[str, Any]] = [
        {
            "model": c.name,
            "status": "chosen",
            "role": c.role,
            "value": c.value,
            "cost_usd": c.cost_usd,
            "vram_gb": c.vram_gb,
            "reason": "",
        }
        for c in selection.team
    ]
    rest = sorted(selection.rejected, key=lambda r: (-(r.value or 0.0), r.name))
    rows.extend(
        {
            "model": r.name,
            "status": "rejected",
            "role": "",
            "value": r.value,
            "cost_usd": r.cost_usd,
            "vram_gb": r.vram_gb,
            "reason": r.reason,
        }
        for r in rest
    )
    return rows


__all__ = [
    "AUTO_KIND",
    "DEFAULT_ROLE",
    "BrokerPolicy",
    "Chosen",
    "ModelStats",
    "Rejected",
    "TeamSelection",
    "explain_table",
    "fits",
    "kind_capability",
    "model_cost_usd",
    "model_value",
    "select_team",
    "serves_kind",
    "smoothed_skill",
]
