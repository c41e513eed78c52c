"""Markdown tables for perf/simulate.md from ``nsed simulate --json`` reports.

    python perf/simulate_tables.py grid REPORT.json [REPORT.json ...]   # v1 vs v2 vs vote
    python perf/simulate_tables.py rounds REPORT.json                   # fixed R vs the rule

``grid`` prints one row per setting (the protocol varies within a row): accuracy of nsed
(fixed rounds), of the protocol's stopping rule (``auto``) and of the vote matched to each,
with calls and tokens per problem. ``rounds`` prints, per setting, nsed after each fixed round
t against the vote with the same calls, and the stopping rule's point.
"""

from __future__ import annotations

import json
import sys
from typing import Any

KEYS = ("agents", "p_g", "p_v", "correlation")


def _load(paths: list[str]) -> list[dict[str, Any]]:
    settings: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            settings += json.load(handle)["settings"]
    return settings


def _methods(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["method"]: m for m in result["methods"]}


def grid(paths: list[str]) -> None:
    rows: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for result in _load(paths):
        setting = result["setting"]
        key = tuple(setting[k] for k in KEYS)
        rows.setdefault(key, {})[setting["protocol"]] = result
    print(
        "| n | p_g | p_v | corr | single | vote | v1 | v2 | v2 − vote | v2 auto (rounds) "
        "| vote @auto | calls v1/v2/auto | tokens vote/v1/v2/auto |"
    )
    print("|" + "---|" * 13)
    for key in sorted(rows):
        by = rows[key]
        if "v1" not in by or "v2" not in by:
            continue
        v1, v2 = _methods(by["v1"]), _methods(by["v2"])
        n, p_g, p_v, corr = key
        print(
            f"| {n} | {p_g:g} | {p_v:g} | {corr:g} | {v2['single']['accuracy']:.3f} "
            f"| {v2['vote']['accuracy']:.3f} | {v1['nsed']['accuracy']:.3f} "
            f"| **{v2['nsed']['accuracy']:.3f}** "
            f"| {v2['nsed']['accuracy'] - v2['vote']['accuracy']:+.3f} "
            f"| {v2['nsed_auto']['accuracy']:.3f} ({v2['nsed_auto']['rounds']:.1f}) "
            f"| {v2['vote_auto']['accuracy']:.3f} "
            f"| {v1['nsed']['calls_per_problem']:.0f} / {v2['nsed']['calls_per_problem']:.0f} / "
            f"{v2['nsed_auto']['calls_per_problem']:.1f} "
            f"| {v2['vote']['tokens_per_problem'] / 1000:.1f}k / "
            f"{v1['nsed']['tokens_per_problem'] / 1000:.1f}k / "
            f"{v2['nsed']['tokens_per_problem'] / 1000:.1f}k / "
            f"{v2['nsed_auto']['tokens_per_problem'] / 1000:.1f}k |"
        )


def rounds(paths: list[str]) -> None:
    for result in _load(paths):
        setting = result["setting"]
        label = ", ".join(f"{k} {setting[k]}" for k in ("protocol", *KEYS))
        by = _methods(result)
        print(f"\n{label}\n")
        print("| rounds | calls | nsed | vote (same calls) |")
        print("|---|---|---|---|")
        for t, (calls, vote) in enumerate(
            zip(result["calls_by_round"], result["vote_by_round"], strict=True), start=1
        ):
            print(f"| {t} | {calls:.1f} | {result['accuracy_by_round'][t]:.3f} | {vote:.3f} |")
        auto = by["nsed_auto"]
        print(
            f"| stopping rule: {auto['rounds']:.2f} | {auto['calls_per_problem']:.1f} "
            f"| {auto['accuracy']:.3f} | {by['vote_auto']['accuracy']:.3f} |"
        )


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("grid", "rounds"):
        print(__doc__, file=sys.stderr)
        return 2
    (grid if argv[0] == "grid" else rounds)(argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
