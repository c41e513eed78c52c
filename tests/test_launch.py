"""``nsed up`` / ``nsed down``: placement on GPUs, the vllm serve argv checked against vLLM's
documented flags, and the whole launcher run against a stand-in vLLM (``tests/fake_vllm.py``)
as a real child process: started, health-checked, used by ``nsed ask``, and stopped with no
process left behind after ``nsed down``, SIGTERM or SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from nsed.config import ModelSpec, TeamSpec
from nsed.errors import ConfigError, InfeasiblePlacement
from nsed.launch.gpus import Gpu, parse_nvidia_smi, resolve_gpus
from nsed.launch.plan import USABLE_FRACTION, place, plan_launch
from nsed.launch.supervisor import read_state
from nsed.launch.team_file import dumps_toml
from tests.helpers import nsed_command, nsed_env, run_nsed
from tests.vllm_cli import REASONING_PARSERS, VLLM_VERSION, parse_serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FAKE_VLLM = f"{sys.executable} {ROOT / 'tests' / 'fake_vllm.py'}"


def gpus(n: int, memory_gb: float = 80.0) -> list[Gpu]:
    return [Gpu(index=i, device=str(i), memory_gb=memory_gb) for i in range(n)]


# --- placement -----------------------------------------------------------------------------------


def test_models_share_a_gpu_by_fractions_that_sum_to_at_most_095():
    placed = place([("a", 30), ("b", 24), ("c", 20)], gpus(1))
    assert {name: g for name, (g, _) in placed.items()} == {"a": [0], "b": [0], "c": [0]}
    assert {name: f for name, (_, f) in placed.items()} == {"a": 0.375, "b": 0.3, "c": 0.25}
    assert sum(f for _, f in placed.values()) <= USABLE_FRACTION


def test_a_model_bigger_than_one_gpu_gets_tensor_parallelism():
    placed = place([("big", 140), ("small", 4)], gpus(2))
    assert placed["big"] == ([0, 1], 0.875)
    assert len(placed["small"][0]) == 1


def test_the_search_backtracks_and_splits_a_model_to_make_room():
    # Three 40 GB models on two 80 GB GPUs (76 GB usable each): two fit whole, the third only
    # split over both GPUs (20 GB each).
    placed = place([("a", 40), ("b", 40), ("c", 40)], gpus(2))
    sizes = sorted(len(g) for g, _ in placed.values())
    assert sizes == [1, 1, 2]
    for index in (0, 1):
        assert sum(f for g, f in placed.values() if index in g) <= USABLE_FRACTION


def test_gpus_of_different_sizes():
    mixed = [Gpu(index=0, device="0", memory_gb=24), Gpu(index=1, device="1", memory_gb=80)]
    placed = place([("a", 60), ("b", 20)], mixed)
    assert placed["a"] == ([1], 0.75) and placed["b"] == ([0], 0.834)


@pytest.mark.parametrize(
    ("needs", "n", "model", "words"),
    [
        ([("huge", 700)], 4, "huge", "more than all of them give (304 GB at 95%)"),
        ([("a", 50), ("b", 50)], 1, "b", "after a, free: GPU 0 26.0 GB"),
    ],
)
def test_an_infeasible_placement_names_the_model_and_the_gpus(needs, n, model, words):
    with pytest.raises(InfeasiblePlacement) as info:
        place(needs, gpus(n))
    assert info.value.model == model and info.value.gpus == list(range(n))
    message = str(info.value)
    assert f"cannot place model {model!r}" in message and words in message
    assert all(f"GPU {i} 80 GB" in message for i in range(n))


# --- the plan and vLLM's flags -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4])
def test_dry_run_json_plans_the_example_catalog_on_1_2_and_4_gpus(n):
    done = run_nsed("up", "--catalog", str(EXAMPLES / "catalog.toml"), "--gpus",
                    ",".join(map(str, range(n))), "--gpu-memory-gb", "80", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    models = plan["models"]
    assert {m["name"] for m in models} == {"gpt-oss-20b", "qwen3-8b", "gemma-3-12b"}
    assert [g["index"] for g in plan["gpus"]] == list(range(n))
    for gpu in plan["gpus"]:
        on = [m for m in models if gpu["index"] in m["gpus"]]
        assert gpu["fraction"] == pytest.approx(sum(m["gpu_memory_utilization"] for m in on))
        assert gpu["fraction"] <= USABLE_FRACTION
    ports = [m["port"] for m in models]
    assert len(set(ports)) == 3
    for m in models:
        assert set(m) >= {"name", "gpus", "port", "argv", "env_keys"}
        assert m["argv"][0] == "vllm" and len(m["gpus"]) == m["tensor_parallel_size"]
        model, flags = parse_serve(m["argv"][1:])  # what vLLM would accept
        assert model == m["hf_model"] and flags["--served-model-name"] == m["served_model_name"]
        assert flags["--port"] == str(m["port"]) and flags["--enable-prefix-caching"] is True
        assert flags["--max-model-len"] == str(m["max_model_len"])
        assert float(flags["--gpu-memory-utilization"]) == m["gpu_memory_utilization"]
        assert "CUDA_VISIBLE_DEVICES" in m["env_keys"]
    parsers = {m["name"]: m["reasoning_parser"] for m in models}
    assert parsers == {"gpt-oss-20b": "openai_gptoss", "qwen3-8b": "qwen3", "gemma-3-12b": None}


def test_dry_run_of_a_catalog_that_cannot_fit_is_one_error_line(tmp_path):
    done = run_nsed("up", "--catalog", str(EXAMPLES / "catalog.toml"), "--gpus", "0",
                    "--gpu-memory-gb", "24", "--dry-run", "--json")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: cannot place model 'gemma-3-12b' (30 GB) on GPU 0 24")


def test_the_argv_uses_only_flags_vllm_documents_and_keeps_the_key_off_it(monkeypatch):
    monkeypatch.setenv("NSED_TEST_VLLM_KEY", "sk-never-in-argv")
    team = TeamSpec.from_toml(EXAMPLES / "team.toml")
    plan = plan_launch(team.models, gpus(4), ports=lambda n: list(range(8001, 8001 + n)),
                       api_key_env="NSED_TEST_VLLM_KEY")
    assert VLLM_VERSION == "0.12.0"
    for m in plan.models:
        parse_serve(m.argv[1:])
        assert "sk-never-in-argv" not in " ".join(m.argv)
        assert m.env_keys == ["CUDA_VISIBLE_DEVICES", "VLLM_API_KEY"]
        assert m.api_key_env == "NSED_TEST_VLLM_KEY"


def test_every_reasoning_parser_nsed_picks_is_one_vllm_has():
    from nsed.agents.reasoning import REASONING_FAMILIES

    assert {f.parser for f in REASONING_FAMILIES} <= REASONING_PARSERS


def test_models_that_differ_only_in_request_options_share_one_server():
    think = ModelSpec(name="think", base_url="http://x/v1", model="qwen3-8b",
                      hf_model="Qwen/Qwen3-8B", vram_gb=30)
    fast = think.model_copy(update={"name": "fast", "extra_body": {
        "chat_template_kwargs": {"enable_thinking": False}}})
    plan = plan_launch([think, fast], gpus(1), ports=lambda n: [9000] * n)
    (server,) = plan.models
    assert server.serves == ["think", "fast"] and plan.gpus[0].fraction == 0.375


def test_the_users_own_vllm_args_win():
    spec = ModelSpec(name="q", base_url="http://x/v1", model="qwen3-8b", hf_model="Qwen/Qwen3-8B",
                     vram_gb=30, vllm_args=["--reasoning-parser", "deepseek_r1",
                                            "--max-model-len", "16384", "--dtype", "bfloat16"])
    (m,) = plan_launch([spec], gpus(1), ports=lambda n: [9000]).models
    _, flags = parse_serve(m.argv[1:])
    assert flags["--reasoning-parser"] == "deepseek_r1" and flags["--max-model-len"] == "16384"
    assert m.argv.count("--reasoning-parser") == 1 and flags["--dtype"] == "bfloat16"


# --- GPUs ----------------------------------------------------------------------------------------

SMI = "0, GPU-aaa, 81559\n1, GPU-bbb, 81559\n2, GPU-ccc, 24576\n"


def test_gpus_from_nvidia_smi_and_cuda_visible_devices():
    listed = parse_nvidia_smi(SMI)
    assert [(g.index, round(g.memory_gb, 1)) for g in listed] == [(0, 79.6), (1, 79.6), (2, 24.0)]
    every = resolve_gpus(None, None, smi=lambda: listed, environ={})
    assert [(g.index, g.device) for g in every] == [(0, "0"), (1, "1"), (2, "2")]
    # With CUDA_VISIBLE_DEVICES=2,0 nsed's GPU 0 is physical 2, and children are told so.
    visible = resolve_gpus(None, None, smi=lambda: listed,
                           environ={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [(g.index, g.device, round(g.memory_gb)) for g in visible] == [(0, "2", 24),
                                                                          (1, "0", 80)]
    assert resolve_gpus("1", 40, smi=lambda: listed, environ={})[0].memory_gb == 40


@pytest.mark.parametrize(
    ("selection", "memory", "smi", "environ", "words"),
    [
        (None, None, None, {}, "no GPUs are visible"),
        ("0,1", None, None, {}, "pass --gpu-memory-gb"),
        ("0,0", 80, None, {}, "names a GPU twice"),
        ("a", 80, None, {}, "list GPU numbers"),
        ("3", 80, None, {"CUDA_VISIBLE_DEVICES": "0,1"}, "GPU 3 is not visible"),
    ],
)
def test_gpu_errors_say_what_to_pass(selection, memory, smi, environ, words):
    with pytest.raises(ConfigError, match=words):
        resolve_gpus(selection, memory, smi=lambda: smi, environ=environ)


def test_team_toml_writer_round_trips():
    data = {"models": [{"name": "a", "base_url": "http://x/v1", "temperature": 0.6,
                        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
                        "think_tags": ["<t>", "</t>"], "odd key": 'quote " and \\ and é',
                        "replicas": 2, "reasoning": True}], "x": 1e-5}
    assert tomllib.loads(dumps_toml(data)) == data


# --- the launcher against the stand-in ------------------------------------------------------------

TEAM = """
[[models]]
name = "qwen"
base_url = "http://filled-in-by-nsed-up/v1"
model = "qwen3-8b"
hf_model = "Qwen/Qwen3-8B"
vram_gb = 30
max_retries = 0

[[models]]
name = "oss"
base_url = "http://filled-in-by-nsed-up/v1"
model = "gpt-oss-20b"
hf_model = "openai/gpt-oss-20b"
vram_gb = 24
max_retries = 0
extra_body = { reasoning_effort = "low" }

[[models]]
name = "gemma"
base_url = "http://filled-in-by-nsed-up/v1"
model = "gemma-3-12b"
hf_model = "google/gemma-3-12b-it"
vram_gb = 70
max_retries = 0
"""


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], within_s: float = 15) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if running(p)]


class Up:
    """``nsed up`` as a child process, with the stand-in recording what it was given."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 team: str = TEAM) -> None:
        self.state = tmp_path / "state"
        self.record = tmp_path / "record"
        self.record.mkdir()
        (tmp_path / "team.toml").write_text(team)
        self.env = nsed_env(tmp_path / "home", env={
            **os.environ, "NSED_FAKE_VLLM_RECORD": str(self.record), **(env or {})})
        self.args = ["up", "--team", str(tmp_path / "team.toml"), "--gpus", "0,1",
                     "--gpu-memory-gb", "80", "--port", "0", "--vllm-cmd", FAKE_VLLM,
                     "--state-dir", str(self.state), "--timeout", "60", *args]
        self.proc = subprocess.Popen(nsed_command(*self.args), env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, within_s: float = 90) -> dict:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            state = read_state(self.state)
            if state is not None and state.ready and state.outputs:
                return state.model_dump()
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                pytest.fail(f"nsed up exited {self.proc.returncode}: {err}")
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail("nsed up was not ready in time")

    def recorded(self) -> dict[str, dict]:
        return {p.stem: json.loads(p.read_text()) for p in self.record.glob("*.json")}

    def pids(self) -> list[int]:
        got = self.recorded().values()
        return [r["pid"] for r in got] + [r["child_pid"] for r in got if r["child_pid"]]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def test_up_starts_checks_and_writes_a_usable_team_then_down_leaves_nothing(tmp_path):
    up = Up(tmp_path, "--api-key-env", "NSED_TEST_UP_KEY",
            env={"NSED_TEST_UP_KEY": "sk-up-secret", "NSED_FAKE_VLLM_CHILD": "1"})
    state = up.wait_ready()
    team_path = Path(state["outputs"][0])
    assert team_path == up.state / "team.toml"
    team = TeamSpec.from_toml(team_path)
    urls = {m.name: m.base_url for m in team.models}
    assert len(set(urls.values())) == 3 and all(u.startswith("http://127.0.0.1:") for u in
                                                 urls.values())
    assert {m.name: m.api_key_env for m in team.models} == dict.fromkeys(urls, "NSED_TEST_UP_KEY")
    by_name = {m.name: m for m in team.models}
    assert by_name["qwen"].structured == "json_schema"  # launched with its reasoning parser
    assert by_name["gemma"].structured == "auto"
    assert by_name["oss"].extra_body == {"reasoning_effort": "low"}  # the user's fields stay
    recorded = up.recorded()
    assert set(recorded) == {"qwen3-8b", "gpt-oss-20b", "gemma-3-12b"}
    for served, seen in recorded.items():
        assert seen["api_key"] == "sk-up-secret"  # from the environment...
        assert "sk-up-secret" not in " ".join(seen["argv"])  # ...never the command line
        _, flags = parse_serve(seen["argv"])
        assert flags["--served-model-name"] == served
    # gemma (70 GB) needs a GPU of its own; the other two share the other one.
    devices = {s: r["cuda_visible_devices"] for s, r in recorded.items()}
    assert devices["qwen3-8b"] == devices["gpt-oss-20b"] != devices["gemma-3-12b"]
    # The team deliberates through the launched servers, with the key they require.
    asked = run_nsed("ask", "What is 17 * 23?", "--team", str(team_path), "--kind", "math",
                     "--rounds", "1", "--json", env={**up.env, "NSED_TEST_UP_KEY": "sk-up-secret"})
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["final"] == "391"
    pids = up.pids()
    assert len(pids) == 6 and all(running(p) for p in pids)
    down = run_nsed("down", "--state-dir", str(up.state), env=up.env)
    assert down.returncode == 0, down.stderr
    assert "stopped 3 server(s)" in down.stderr
    code, _ = up.finish()
    assert code == 128 + signal.SIGTERM
    assert wait_gone(pids) == []  # the stand-ins' children too: their groups were stopped
    assert not (up.state / "up.json").exists()
    again = run_nsed("down", "--state-dir", str(up.state), env=up.env)
    assert again.returncode == 0 and "nothing to stop" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_nsed_up_stops_every_server(tmp_path, signum):
    up = Up(tmp_path, env={"NSED_FAKE_VLLM_CHILD": "1"})
    up.wait_ready()
    pids = up.pids()
    up.proc.send_signal(signum)
    code, err = up.finish()
    assert code == (128 + signum if signum == signal.SIGTERM else 130), err
    assert wait_gone(pids) == []
    assert not (up.state / "up.json").exists()


def test_sigkill_of_nsed_up_leaves_no_server(tmp_path):
    up = Up(tmp_path)
    up.wait_ready()
    servers = up.pids()
    assert len(servers) == 3
    up.proc.kill()
    up.finish()
    assert wait_gone(servers) == [], "a server outlived its SIGKILLed nsed up"
    # nsed down still cleans up after a supervisor that was killed
    down = run_nsed("down", "--state-dir", str(up.state), env=up.env)
    assert down.returncode == 0 and not (up.state / "up.json").exists()


def test_a_server_that_fails_to_start_stops_the_others_and_shows_its_log(tmp_path):
    up = Up(tmp_path, env={"NSED_FAKE_VLLM_FAIL": "gpt-oss-20b"})
    code, err = up.finish(timeout=90)
    assert code == 1
    message = " ".join(err.split())
    assert "error: oss (pid" in message and "exited with code 1" in message
    assert "CUDA out of memory" in message  # the server's own log line
    assert wait_gone(up.pids()) == []
    assert not (up.state / "up.json").exists()


def test_a_server_that_never_gets_healthy_is_a_timeout(tmp_path):
    up = Up(tmp_path, "--timeout", "1", env={"NSED_FAKE_VLLM_DELAY_S": "30"})
    code, err = up.finish(timeout=90)
    assert code == 1 and "was not healthy" in err and "within 1 s" in err
    assert wait_gone(up.pids()) == []


def test_an_argv_vllm_refuses_fails_like_vllm(tmp_path):
    bad = TEAM.replace('vram_gb = 70\n', 'vram_gb = 70\nvllm_args = ["--no-such-flag"]\n')
    up = Up(tmp_path, team=bad)
    code, err = up.finish(timeout=90)
    assert code == 1 and "unrecognized arguments: --no-such-flag" in err


def test_detach_returns_when_ready_and_down_stops_it(tmp_path):
    up = Up(tmp_path, "--detach")
    code, err = up.finish(timeout=120)
    assert code == 0, err
    assert "ready in the background" in err
    state = read_state(up.state)
    assert state is not None and state.ready and running(state.supervisor_pid)
    pids = [*up.pids(), state.supervisor_pid]
    second = run_nsed(*up.args[:-1], env=up.env)  # the same state dir: refused
    assert second.returncode == 1 and "already running" in second.stderr
    down = run_nsed("down", "--state-dir", str(up.state), env=up.env)
    assert down.returncode == 0, down.stderr
    assert wait_gone(pids) == []


def test_up_needs_a_team_or_a_catalog(tmp_path):
    done = run_nsed("up", "--gpus", "0", "--gpu-memory-gb", "80", "--dry-run")
    assert done.returncode == 1 and "--team team.toml or --catalog" in done.stderr
    plain = tmp_path / "hosted.toml"
    plain.write_text((EXAMPLES / "hosted_team.toml").read_text())
    done = run_nsed("up", "--team", str(plain), "--gpus", "0", "--gpu-memory-gb", "80",
                    "--dry-run")
    assert done.returncode == 1 and "no model to launch" in done.stderr
