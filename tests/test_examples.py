"""The example files in examples/ stay valid as the configuration evolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsed import TeamSpec
from tests.council_scripts import TOOL_RESULT, step_agent, step_json
from tests.scripted_server import ChatRequest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["team.toml", "hosted_team.toml"])
def test_example_teams_load(name):
    team = TeamSpec.from_toml(EXAMPLES / name)
    assert len(team.agents()) >= 3
    assert all(seat.spec.base_url.startswith("http") for seat in team.agents())


def test_example_catalog_loads_and_selects_a_team():
    from nsed.broker.catalog import Catalog
    from nsed.broker.knapsack import BrokerPolicy, select_team

    catalog = Catalog.from_toml(EXAMPLES / "catalog.toml")
    selection = select_team(catalog, "math", BrokerPolicy(budget_usd=0.05, vram_gb=40))
    assert 3 <= len(selection.team) <= 5
    assert {r.name for r in selection.rejected} == {"gemma-3-12b"}


def test_agent_app_runs_a_tool_loop_on_the_council(scripted_server, tmp_path):
    """examples/agent_app.py, as a user runs it, with NSED_TEAM pointing at scripted agents."""

    def propose(request: ChatRequest) -> str:
        results = request.user.count(TOOL_RESULT)
        if results == 0:
            return step_json(calls=[("multiply", {"a": 12, "b": 34})])
        if results == 1:
            assert "): 408" in request.user  # the app ran multiply and sent its result
            return step_json(calls=[("add", {"a": 408, "b": 5})])
        return step_json(answer="12 times 34, plus 5, is 413.")

    lines = []
    for name in ("alpha", "beta", "gamma"):
        scripted_server.route(name, step_agent(propose))
        lines += ["[[models]]", f'name = "{name}"', f'base_url = "{scripted_server.url}"',
                  f'model = "{name}"', "max_retries = 0"]
    team = tmp_path / "team.toml"
    team.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "NSED_TEAM": str(team), "NSED_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_app.py"), "What is 12 times 34, plus 5?"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "step 1: multiply({'a': 12, 'b': 34}) -> 408" in done.stdout
    assert "step 2: add({'a': 408, 'b': 5}) -> 413" in done.stdout
    assert done.stdout.strip().endswith("answer: 12 times 34, plus 5, is 413.")
