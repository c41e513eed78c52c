"""The example files in examples/ stay valid as the configuration evolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsed import DeliberationConfig, TeamSpec
from nsed.agents.reasoning import is_reasoning_model
from nsed.launch.gpus import Gpu
from nsed.launch.plan import plan_launch
from tests.council_scripts import TOOL_RESULT, step_agent, step_json
from tests.scripted_server import ChatRequest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEAMS = ["team.toml", "hosted_team.toml", "qwen3_thinking.toml", "gpt_oss_effort.toml",
         "litellm_team.toml"]
ONE_GPU = [Gpu(index=0, device="0", memory_gb=80)]


def ports(n: int) -> list[int]:
    return list(range(8001, 8001 + n))


@pytest.mark.parametrize("name", TEAMS)
def test_example_teams_load(name):
    team = TeamSpec.from_toml(EXAMPLES / name)
    assert len(team.agents()) >= 3
    assert all(seat.spec.base_url.startswith("http") for seat in team.agents())


def test_example_catalog_loads_and_selects_a_team():
    from nsed.broker.catalog import Catalog
    from nsed.broker.knapsack import BrokerPolicy, select_team

    catalog = Catalog.from_toml(EXAMPLES / "catalog.toml")
    selection = select_team(catalog, "math", BrokerPolicy(budget_usd=0.05, vram_gb=48))
    assert 3 <= len(selection.team) <= 5
    assert {r.name for r in selection.rejected} == {"gemma-3-12b"}


def test_qwen3_thinking_on_and_off_share_one_server():
    team = TeamSpec.from_toml(EXAMPLES / "qwen3_thinking.toml")
    think, fast = team.models
    assert is_reasoning_model(think) and not is_reasoning_model(fast)
    config = DeliberationConfig(kind="math")
    assert config.max_tokens_for(reasoning=True) == 38_912
    assert config.max_tokens_for(reasoning=False) == 1024
    (server,) = plan_launch(team.models, ONE_GPU, ports=ports).models
    assert server.serves == ["qwen-think", "qwen-fast"] and server.reasoning_parser == "qwen3"


def test_gpt_oss_efforts_share_one_server():
    team = TeamSpec.from_toml(EXAMPLES / "gpt_oss_effort.toml")
    assert [m.extra_body["reasoning_effort"] for m in team.models] == ["high", "low"]
    (server,) = plan_launch(team.models, ONE_GPU, ports=ports).models
    assert server.reasoning_parser == "openai_gptoss" and len(server.serves) == 2


def test_the_example_team_fits_one_80_gb_gpu_and_gives_reasoning_models_their_budget():
    team = TeamSpec.from_toml(EXAMPLES / "team.toml")
    plan = plan_launch(team.models, ONE_GPU, ports=ports)
    assert [m.name for m in plan.models] == ["gpt-oss", "qwen", "gemma"]
    assert plan.gpus[0].fraction <= 0.95
    reasoning = {m.name: is_reasoning_model(m) for m in team.models}
    assert reasoning == {"gpt-oss": True, "qwen": True, "gemma": False}
    assert [m.max_tokens for m in team.models] == [None, None, 8192]


def test_litellm_team_is_hosted_behind_one_proxy():
    team = TeamSpec.from_toml(EXAMPLES / "litellm_team.toml")
    assert {m.base_url for m in team.models} == {"http://127.0.0.1:4000/v1"}
    assert all(m.vram_gb == 0 and m.api_key_env == "LITELLM_API_KEY" for m in team.models)
    assert [m.name for m in team.models if is_reasoning_model(m)] == ["deepseek"]


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
