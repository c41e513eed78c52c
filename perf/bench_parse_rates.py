"""Parse rates of a stored benchmark run: how often proposals and reviews were usable.

Reads the run's rows and the deliberation traces from the database ``nsed bench`` wrote:

* proposals (every round of every deliberation): parsed without a format error, with a final
  answer, cut off at ``max_tokens``;
* reviews: counted, dropped (by reason: unparseable, truncated, missing score, ...);
* baseline samples (``single:*``, ``vote``): with a final answer;
* accuracy per method with a Wilson 95 % interval and, against nsed, the discordant problems
  (right by only one of the two: the pairs a paired test reads), only on the problems every
  method finished (a bounded run stops part-way); with ``--against DB RUN`` only on the
  problems both runs finished, so two protocols are compared on the same problems (parse rates
  still count every deliberation of each run).

    python perf/bench_parse_rates.py sqlite:////tmp/bench/v2.db quick-v2 [--json]
    python perf/bench_parse_rates.py sqlite:////tmp/bench/v1.db quick-v1 \
        --against sqlite:////tmp/bench/v2.db quick-v2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from sqlmodel import select

from nsed.benchmarks.reports import wilson_interval
from nsed.store import BenchResult, BenchRun, Store


def _load(url: str, run_id: str) -> tuple[Store, list[BenchResult], list[str]]:
    store = Store(url)
    with store.transaction() as session:
        rows = list(session.exec(select(BenchResult).where(BenchResult.run_id == run_id)))
        run = session.get(BenchRun, run_id)
    methods = run.methods.split(",") if run is not None else sorted({r.method for r in rows})
    return store, rows, methods


def _complete(rows: list[BenchResult], methods: list[str]) -> set[str]:
    """Problems on which every method of the run has its answer row."""
    by_problem: dict[str, set[str]] = {}
    for r in rows:
        if r.sample == 0:
            by_problem.setdefault(r.problem_id, set()).add(r.method)
    return {p for p, got in by_problem.items() if got >= set(methods)}


def complete_problems(url: str, run_id: str) -> set[str]:
    _, rows, methods = _load(url, run_id)
    return _complete(rows, methods)


def summarise(url: str, run_id: str, only: set[str] | None = None) -> dict[str, Any]:
    store, rows, methods = _load(url, run_id)
    answers = [r for r in rows if r.sample == 0]
    complete = _complete(rows, methods)
    if only is not None:
        complete &= only
    accuracy = {}
    for method in methods:
        got = [r for r in answers if r.method == method and r.problem_id in complete]
        k = sum(bool(r.correct) for r in got)
        low, high = wilson_interval(k, len(got))
        accuracy[method] = {
            "correct": k,
            "n": len(got),
            "accuracy": k / len(got) if got else 0.0,
            "ci95": [round(low, 3), round(high, 3)],
            "completion_tokens": sum(r.completion_tokens for r in got) / max(1, len(got)),
        }
    right = {(r.method, r.problem_id) for r in answers if r.correct and r.problem_id in complete}
    paired = {  # discordant problems: which of the two got it right, on the same problems
        method: {
            "nsed_only": sum(("nsed", q) in right and (method, q) not in right for q in complete),
            "method_only": sum((method, q) in right and ("nsed", q) not in right for q in complete),
        }
        for method in methods
        if method != "nsed" and "nsed" in methods
    }
    proposals = Counter()
    reviews: Counter[str] = Counter()
    rounds, stops = [], Counter()
    for r in answers:
        if r.method != "nsed" or not r.deliberation_id:
            continue
        trace = store.load_deliberation(r.deliberation_id)
        if trace is None:
            continue
        rounds.append(len(trace.rounds))
        stops[trace.stopped_because] += 1
        for record in trace.rounds:
            for p in record.proposals:
                proposals["all"] += 1
                proposals["parsed"] += p.parse_error is None
                proposals["final"] += p.final is not None
                proposals["truncated"] += p.truncated
            for review in record.reviews:
                reason = review.dropped_reason or "counted"
                reviews[reason.split(":")[0] if reason.startswith("unparseable") else reason] += 1
    samples = [r for r in rows if r.sample > 0]
    sample_final = sum(r.predicted is not None for r in samples)
    return {
        "run": run_id,
        "problems_complete": len(complete),
        "accuracy": accuracy,
        "paired_with_nsed": paired,
        "proposals": dict(proposals),
        "proposal_parse_rate": proposals["parsed"] / max(1, proposals["all"]),
        "proposal_final_rate": proposals["final"] / max(1, proposals["all"]),
        "reviews": dict(reviews),
        "review_counted_rate": reviews["counted"] / max(1, sum(reviews.values())),
        "samples": len(samples),
        "sample_final_rate": sample_final / max(1, len(samples)),
        "mean_rounds": sum(rounds) / max(1, len(rounds)),
        "stopped_because": dict(stops),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("run_id")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--against",
        nargs=2,
        metavar=("DB", "RUN_ID"),
        help="a second run: accuracy of both on the problems both finished",
    )
    args = parser.parse_args(argv)
    indent = 1 if args.json else None
    if args.against is None:
        print(json.dumps(summarise(args.db, args.run_id), indent=indent))
        return 0
    other_db, other_run = args.against
    common = complete_problems(args.db, args.run_id) & complete_problems(other_db, other_run)
    reports = [summarise(args.db, args.run_id, common), summarise(other_db, other_run, common)]
    print(json.dumps({"common_problems": sorted(common), "runs": reports}, indent=indent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
