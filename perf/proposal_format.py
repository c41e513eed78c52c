"""Free-text vs JSON proposals on the embedded local model: parse rate, accuracy, tokens.

One round-1 proposal per (problem, seat, format, temperature), through the real ``Agent``
(the same system and proposing prompts, sampling, parsing as a deliberation's first round) on
the default local team (SmolLM2-135M on llama-server). Problems are the quick set that
``nsed bench quick`` uses (same seed), optionally plus a few fixed simple questions
(``--simple``). What a row counts:

* ``parsed``: free text has an explicit final-answer marker (``\\boxed{}`` or "The answer is"),
  JSON has no parse error (a reply that needed the whole text as the answer is a failure);
* ``final``: a final answer was extracted at all; ``correct``: it equals the gold answer;
* ``truncated``: the call ended at ``max_tokens``; ``loop``: the reply repeats one short
  pattern (the degenerate ``1.1.1.2.2.2…`` replies of issue 12).

    python perf/proposal_format.py --limit 40 [--formats json,free] [--temperatures seat,0]
        [--kinds math,auto] [--simple] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from typing import Any

import anyio

from nsed.agents.backend import EndpointPool
from nsed.agents.local import default_local_team, get_shared_server
from nsed.benchmarks.grading import grade_math
from nsed.config import DeliberationConfig
from nsed.council import make_agent, make_backend
from nsed.problems import Problem, generate_quick

SIMPLE = (
    ("What is 2 + 3?", "5"),
    ("What is 10 - 4?", "6"),
    ("What is 3 * 4?", "12"),
    ("What is 17 * 23?", "391"),
    ("What is 7 + 8?", "15"),
    ("What is 100 - 1?", "99"),
    ("What is 2 + 2?", "4"),
    ("What is 5 + 5?", "10"),
    ("What is 9 - 3?", "6"),
    ("What is 6 * 7?", "42"),
    ("What is 1 + 1?", "2"),
    ("What is 20 + 30?", "50"),
)
_LOOP = re.compile(r"(.{1,8}?)\1{7,}", re.S)


def load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def problems(limit: int, seed: int, simple: bool) -> list[Problem]:
    chosen = generate_quick(limit, seed) if limit else []
    if simple:
        chosen += [
            Problem(id=f"simple-{i}", benchmark="quick", kind="math", prompt=q, answer=a)
            for i, (q, a) in enumerate(SIMPLE)
        ]
    return chosen


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    server = get_shared_server()
    team = default_local_team(server)
    rows: list[dict[str, Any]] = []
    limiter = anyio.CapacityLimiter(server.config.parallel)
    async with EndpointPool() as pool:

        async def one(problem: Problem, seat: Any, fmt: str, temp: str, kind: str) -> None:
            if temp != "seat":
                seat = seat.model_copy(update={"temperature": float(temp)})
            config = DeliberationConfig(kind=kind, proposal_format=fmt)
            agent = make_agent(seat, make_backend(seat, pool), config)
            async with limiter:
                started = time.perf_counter()
                proposal, completion = await agent.propose(
                    problem.prompt, round_index=1, state_view=None
                )
            error = proposal.parse_error or ""
            parsed = not error or error.startswith("cut off")
            text = completion.text
            right = bool(proposal.final) and grade_math(proposal.final, problem.answer or "")
            rows.append(
                {
                    "problem": problem.id,
                    "seat": seat.name,
                    "format": fmt,
                    "temperature": temp,
                    "kind": kind,
                    "parsed": parsed,
                    "final": proposal.final,
                    "correct": right,
                    "truncated": completion.truncated,
                    "loop": bool(_LOOP.search(text)),
                    "completion_tokens": completion.completion_tokens,
                    "latency_s": time.perf_counter() - started,
                    "text": text[:400],
                }
            )

        async with anyio.create_task_group() as tg:
            for problem in problems(args.limit, args.seed, args.simple):
                for seat in team.agents():
                    for fmt in args.formats.split(","):
                        for temp in args.temperatures.split(","):
                            for kind in args.kinds.split(","):
                                tg.start_soon(one, problem, seat, fmt, temp, kind)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        which = "simple" if row["problem"].startswith("simple-") else "quick"
        key = (which, row["kind"], row["format"], row["temperature"])
        groups.setdefault(key, []).append(row)
    out = []
    for (which, kind, fmt, temp), got in sorted(groups.items()):
        n = len(got)
        out.append(
            {
                "set": which,
                "kind": kind,
                "format": fmt,
                "temperature": temp,
                "n": n,
                "parsed": sum(r["parsed"] for r in got) / n,
                "final": sum(bool(r["final"]) for r in got) / n,
                "correct": sum(r["correct"] for r in got) / n,
                "truncated": sum(r["truncated"] for r in got) / n,
                "loops": sum(r["loop"] for r in got) / n,
                "tokens_median": statistics.median(r["completion_tokens"] for r in got),
                "latency_median_s": statistics.median(r["latency_s"] for r in got),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="quick-set problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="json,free")
    parser.add_argument("--temperatures", default="seat", help="'seat' and/or numbers, e.g. seat,0")
    parser.add_argument("--kinds", default="math", help="task kinds, e.g. math,auto")
    parser.add_argument("--simple", action="store_true", help="add the fixed simple questions")
    parser.add_argument("--json", action="store_true", help="print rows and summary as JSON")
    args = parser.parse_args(argv)
    before, started = load(), time.perf_counter()
    rows = anyio.run(measure, args)
    report = {
        "summary": summarise(rows),
        "load_before": before,
        "load_after": load(),
        "wall_s": time.perf_counter() - started,
    }
    if args.json:
        json.dump({**report, "rows": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for line in report["summary"]:
            print(json.dumps(line))
        print(f"load {before:.2f} -> {report['load_after']:.2f}, wall {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
