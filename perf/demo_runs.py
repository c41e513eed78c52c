"""How often the README's demo is right, and how long it takes, on the embedded local model.

Two measurements, because the local team's seeds are fixed (the demo is reproducible):

* ``--mode cli``: the demo exactly as a user runs it, ``nsed ask QUESTION --kind K --rounds R
  --json`` in a fresh process each time (server start and embedder load included). With fixed
  seeds the runs differ only through llama.cpp's batching, so this measures wall time more than
  luck.
* ``--mode seeds``: the same team and config through ``deliberate()`` in one process, each run
  with every seat's seed shifted by ``1000 * run``: how often the mechanism gets it right on
  draws the demo did not pick.

    python perf/demo_runs.py --question "What is 2 + 3?" --kind math --expect 5 \\
        [--runs 10] [--rounds 2] [--mode cli|seeds|both] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from nsed.agents.local import LocalServerConfig, default_local_team, get_shared_server
from nsed.agents.parsing import normalize_final


def load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def cli_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSED_TEAM", "OPENAI_BASE_URL")}
    if args.threads is not None:
        env["NSED_LOCAL_THREADS"] = str(args.threads)
    runs = []
    for i in range(args.runs):
        before = load()
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "nsed",
                "ask",
                args.question,
                "--kind",
                args.kind,
                "--rounds",
                str(args.rounds),
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        wall = time.perf_counter() - started
        row: dict[str, Any] = {
            "run": i,
            "wall_s": wall,
            "load_before": before,
            "load_after": load(),
        }
        if done.returncode != 0:
            row["error"] = done.stderr.strip()[-300:]
        else:
            data = json.loads(done.stdout)
            row |= {
                "final": data["final"],
                "rounds": len(data["rounds"]),
                "stopped_because": data["stopped_because"],
                "deliberation_s": data["wall_s"],
                "tokens": data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"],
            }
        runs.append(row)
        print(json.dumps(row), file=sys.stderr)
    return runs


def seed_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nsed import deliberate

    config = (
        LocalServerConfig() if args.threads is None else LocalServerConfig(threads=args.threads)
    )
    server = get_shared_server(config)
    base = default_local_team(server)
    runs = []
    for i in range(args.runs):
        models = [m.model_copy(update={"seed": (m.seed or 0) + 1000 * i}) for m in base.models]
        team = base.model_copy(update={"models": models})
        before = load()
        result = deliberate(
            args.question,
            team=team,
            kind=args.kind,
            max_rounds=args.rounds,
            min_rounds=min(2, args.rounds),
        )
        row = {
            "run": i,
            "final": result.final,
            "rounds": len(result.rounds),
            "stopped_because": result.stopped_because,
            "deliberation_s": result.wall_s,
            "tokens": result.usage.total_tokens,
            "load_before": before,
            "load_after": load(),
        }
        runs.append(row)
        print(json.dumps(row), file=sys.stderr)
    return runs


def summary(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    want = normalize_final(args.expect, args.kind)
    right = sum(
        1 for r in runs if r.get("final") and normalize_final(r["final"], args.kind) == want
    )
    walls = [r["wall_s"] for r in runs if "wall_s" in r]
    delib = [r["deliberation_s"] for r in runs if "deliberation_s" in r]
    return {
        "correct": right,
        "runs": len(runs),
        "errors": sum(1 for r in runs if "error" in r),
        "wall_s_median": statistics.median(walls) if walls else None,
        "wall_s_max": max(walls) if walls else None,
        "deliberation_s_median": statistics.median(delib) if delib else None,
        "deliberation_s_max": max(delib) if delib else None,
        "finals": [r.get("final") for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", required=True)
    parser.add_argument("--kind", default="math")
    parser.add_argument("--expect", required=True, help="the right final answer")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=["cli", "seeds", "both"], default="both")
    parser.add_argument("--threads", type=int, default=None, help="llama-server -t")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "question": args.question,
        "kind": args.kind,
        "expect": args.expect,
        "rounds": args.rounds,
        "threads": args.threads,
    }
    if args.mode in ("cli", "both"):
        report["cli"] = summary(cli_runs(args), args)
    if args.mode in ("seeds", "both"):
        report["seeds"] = summary(seed_runs(args), args)
    print(json.dumps(report, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
