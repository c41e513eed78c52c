"""Two costs issue 13 added, measured in one run so contention affects both alike.

* ``nsed up``'s placement search (``nsed.launch.plan.place``): a plan of 12 models on 8 GPUs,
  and near-full random instances, where it works hardest (some have no placement, which the
  search must exhaust or reach its node limit to say);
* reading a reasoning model's 200 reply (``nsed.agents.replies.read_reply``: validation and the
  thinking channel) against ``json.loads`` of the same body alone, for a short reply and for
  one with ~150 kB of thinking (a 38,912-token budget nearly spent).

Prints medians over ``--repeats`` runs (default 20).

    python perf/launch_and_replies.py [--repeats 20] [--instances 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from nsed.agents.replies import read_reply
from nsed.errors import InfeasiblePlacement
from nsed.launch.gpus import Gpu
from nsed.launch.plan import place


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def body(thinking_chars: int) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "qwen3-8b",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": '{"reasoning": "17*23", "answer": "\\\\boxed{391}"}',
                        "reasoning": "Let me think. " * (thinking_chars // 14),
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 900, "completion_tokens": 38000},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    gpus = [Gpu(index=i, device=str(i), memory_gb=80) for i in range(8)]
    feasible = [(f"m{i}", 20 + 4 * i) for i in range(12)]  # 20..64 GB, 504 GB in all
    ok = median_s(lambda: place(feasible, gpus), args.repeats)
    print(f"place, 12 models of 20..64 GB on 8 x 80 GB: median {ok * 1e3:.2f} ms")
    # Near-full random instances (95-100 % of the usable memory) are where the search works
    # hardest; some have no placement and the search must exhaust or reach its node limit.
    rng = random.Random(0)
    times, failed = [], 0
    for _ in range(args.instances):
        needs, total = [], 0.0
        while total < 0.95 * 8 * 76:
            need = rng.choice((8, 12, 16, 20, 24, 30, 40, 48, 60, 70))
            needs.append((f"m{len(needs)}", need))
            total += need
        started = time.perf_counter()
        try:
            place(needs, gpus)
        except InfeasiblePlacement:
            failed += 1
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"place, {args.instances} near-full random instances on 8 x 80 GB ({failed} "
          f"infeasible): median {statistics.median(times) * 1e3:.1f} ms, "
          f"max {times[-1] * 1e3:.0f} ms")
    for label, chars in (("short reply", 0), ("150 kB of thinking", 150_000)):
        text = body(chars)
        plain = median_s(lambda t=text: json.loads(t), args.repeats)
        read = median_s(lambda t=text: read_reply(json.loads(t)), args.repeats)
        print(f"{label}: json.loads {plain * 1e6:.0f} us, + read_reply {read * 1e6:.0f} us "
              f"({read / plain:.2f}x)")


if __name__ == "__main__":
    main()
