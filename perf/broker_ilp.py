"""Time the broker's team-selection ILP (nsed.broker.knapsack.select_team).

Two scenarios, each solved ``--repeats`` times (default 20) on a fixed random catalog:

* 100 candidates × 4 roles (each role needs a capability, 1-2 seats), budget and VRAM caps;
* 500 candidates, the default single role (team of 3..5), budget and VRAM caps.

Prints the median and p90 of the whole ``select_team`` call (model building, solving, the
rejection explanations) and of the solver alone (``TeamSelection.solve_s``).

    python perf/broker_ilp.py [--repeats 20] [--solver auto|highs|cbc]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from nsed.broker.catalog import CAPABILITIES, CatalogEntry, RoleSpec
from nsed.broker.knapsack import BrokerPolicy, ModelStats, select_team

FAMILIES = ("qwen", "llama", "gemma", "mistral", "phi", "deepseek", "granite", "olmo")


def make_catalog(n: int, seed: int) -> tuple[list[CatalogEntry], dict[str, ModelStats]]:
    rng = random.Random(seed)
    entries: list[CatalogEntry] = []
    stats: dict[str, ModelStats] = {}
    for i in range(n):
        name = f"m{i:03d}"
        entries.append(
            CatalogEntry(
                name=name,
                base_url=f"http://127.0.0.1:{8000 + i}/v1",
                model=name,
                family=rng.choice(FAMILIES),
                input_price=round(rng.uniform(0, 3), 2),
                output_price=round(rng.uniform(0, 12), 2),
                vram_gb=rng.choice([0, 0, 8, 16, 24, 48]),
                capabilities=rng.sample(CAPABILITIES, rng.randint(1, 4)),
                prior_skill={k: round(rng.random(), 3) for k in ("math", "code", "text")},
                latency_s=round(rng.uniform(0.5, 20), 1),
            )
        )
        if rng.random() < 0.5:
            stats[name] = ModelStats(
                skill={"math": rng.random()},
                n_obs={"math": rng.randint(1, 200)},
                success_ratio=rng.uniform(0.7, 1.0),
                load=rng.random(),
                benched=rng.random() < 0.05,
            )
    return entries, stats


def measure(label: str, entries, stats, policy: BrokerPolicy, repeats: int) -> None:
    totals, solves = [], []
    selection = None
    for _ in range(repeats):
        started = time.perf_counter()
        selection = select_team(entries, "math", policy, stats)
        totals.append(time.perf_counter() - started)
        solves.append(selection.solve_s)
    assert selection is not None
    p90 = statistics.quantiles(totals, n=10)[-1] if len(totals) > 1 else totals[0]
    print(
        f"{label}: select_team median {statistics.median(totals) * 1000:.1f} ms "
        f"(p90 {p90 * 1000:.1f} ms), solver median {statistics.median(solves) * 1000:.1f} ms; "
        f"solver={selection.solver}, team={len(selection.team)}, value={selection.value:.3f}, "
        f"cost=${selection.cost_usd:.4f}, rejected={len(selection.rejected)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--solver", choices=["auto", "highs", "cbc"], default="auto")
    args = parser.parse_args()

    entries, stats = make_catalog(100, seed=1)
    roles = [
        RoleSpec(name="solver", capability="math", count=2),
        RoleSpec(name="coder", capability="code", count=1),
        RoleSpec(name="critic", capability="review", count=1),
        RoleSpec(name="writer", capability="text", count=1),
    ]
    policy = BrokerPolicy(
        min_team=5,
        max_team=6,
        roles=roles,
        budget_usd=0.15,
        vram_gb=48,
        latency_slo_s=15,
        solver=args.solver,
    )
    measure("100 candidates x 4 roles", entries, stats, policy, args.repeats)

    entries, stats = make_catalog(500, seed=2)
    policy = BrokerPolicy(budget_usd=0.1, vram_gb=48, latency_slo_s=15, solver=args.solver)
    measure("500 candidates, 1 role ", entries, stats, policy, args.repeats)


if __name__ == "__main__":
    main()
