"""How close a round gets to "the slowest call per phase", and how flat prompts stay.

Runs against the scripted OpenAI-compatible server over real HTTP on 127.0.0.1:

1. 3 agents x 3 rounds, agents answering after 0.2 / 0.4 / 0.6 s. A fully concurrent round costs
   the slowest call of each phase (0.6 s x 2 phases), so the ideal wall time is 3.6 s. Reports
   wall / sum-of-slowest-calls (1.00 is perfect; a sequential loop would be 2.0).
2. 3 agents x 8 rounds with long proposals: prompt tokens per round, and round 8 / round 2.

    .venv/bin/python perf/round_concurrency.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nsed import deliberate
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.scripted_server import ScriptedServer

NAMES = ["alpha", "beta", "gamma"]


def concurrency(server: ScriptedServer) -> None:
    delays = {"alpha": 0.2, "beta": 0.4, "gamma": 0.6}
    for name, delay in delays.items():
        server.route(name, agent("391", judge=judge_by_answer("391"), delay_s=delay))
    ratios = []
    for _ in range(3):
        started = time.perf_counter()
        result = deliberate(
            "What is 17 * 23?",
            team=team_dict(server.url, NAMES),
            config={"max_rounds": 3, "min_rounds": 3, "embeddings": "off", "kind": "math"},
        )
        wall = time.perf_counter() - started
        ideal = len(result.rounds) * 2 * max(delays.values())
        ratios.append((result.wall_s / ideal, wall / ideal))
    for loop_ratio, call_ratio in ratios:
        print(f"wall / sum(slowest calls): loop {loop_ratio:.3f}, whole call {call_ratio:.3f}")


def prompt_growth(server: ScriptedServer) -> None:
    server.reset()
    long = "Multiply the tens and the units separately, then add the partial products. " * 60
    for name, final in zip(NAMES, ["391", "392", "393"], strict=True):
        server.route(name, agent(final, judge=judge_by_answer("391"), reasoning=long))
    result = deliberate(
        "What is 17 * 23?",
        team=team_dict(server.url, NAMES),
        config={"max_rounds": 8, "min_rounds": 8, "embeddings": "off", "kind": "math"},
    )
    tokens = [r.prompt_tokens for r in result.rounds]
    print("prompt tokens per round:", tokens)
    print(f"round 8 / round 2: {tokens[7] / tokens[1]:.3f}")
    print("state tokens per round:", [r.state_tokens for r in result.rounds])


if __name__ == "__main__":
    with ScriptedServer() as scripted:
        concurrency(scripted)
        prompt_growth(scripted)
