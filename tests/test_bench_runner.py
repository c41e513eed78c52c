"""`nsed bench` as a user runs it: real subprocesses against the scripted server.

The scripted agents solve the generated quick problems for real (they look the problem up in
the same seeded set the CLI generates): alpha and beta answer correctly, gamma is off by one,
and every reviewer scores a candidate by whether it holds the right answer.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from sqlmodel import select

from nsed.agents.backend import EndpointPool
from nsed.benchmarks.methods import (
    SEED_STRIDE,
    BenchTeam,
    Sample,
    draw_samples,
    majority,
    next_wave,
    parse_methods,
)
from nsed.benchmarks.runner import BenchOptions, run_benchmark
from nsed.config import DeliberationConfig, TeamSpec
from nsed.errors import ConfigError
from nsed.problems import generate_quick
from nsed.store import BenchResult, BenchRun, Store
from tests.council_scripts import is_review, proposal_json, team_dict
from tests.helpers import nsed_command, nsed_env, run_nsed
from tests.scripted_server import ChatRequest, Reply

NAMES = ["alpha", "beta", "gamma"]
OFFSETS = {"alpha": 0, "beta": 0, "gamma": 1}
SEEDS = {"alpha": 100, "beta": 200, "gamma": 300}
FAST = 'embeddings = "off"\n'


def quick_gold(limit: int, seed: int = 0) -> dict[str, str]:
    return {p.prompt: p.answer or "" for p in generate_quick(limit, seed)}


def problem_of(request: ChatRequest, gold: dict[str, str]) -> str:
    for text in gold:
        if f"Task:\n{text}" in request.user:
            return text
    raise AssertionError(f"request for an unknown problem: {request.user[:200]}")


def solver(gold: dict[str, str], offset: int, delay_s: float = 0.0) -> Callable:
    """Answers gold + offset; reviews score the candidates that hold the gold answer."""

    def handler(request: ChatRequest) -> Reply:
        answer = gold[problem_of(request, gold)]
        if is_review(request):
            token = f"\\boxed{{{answer}}}"
            reviews = [
                {"candidate": label, "score": 80 if token in text else -60, "critique": "ok"}
                for label, text in request.candidates().items()
            ]
            return Reply(content=json.dumps({"reviews": reviews}), delay_s=delay_s)
        return Reply(content=proposal_json(str(int(answer) + offset)), delay_s=delay_s)

    return handler


def write_team(path: Path, url: str, names: list[str] = NAMES, seeds: bool = False) -> Path:
    lines = []
    for name in names:
        lines += ["[[models]]", f'name = "{name}"', f'base_url = "{url}"', f'model = "{name}"']
        lines += ["max_retries = 0"] + ([f"seed = {SEEDS[name]}"] if seeds else []) + [""]
    path.write_text("\n".join(lines))
    return path


def write_team_dict(url: str) -> dict:
    team = team_dict(url, NAMES)
    for model in team["models"]:
        model["seed"] = SEEDS[model["model"]]
    return team


def run_cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI with a bare environment (no inherited keys or URLs), its data under ``home``."""
    return run_nsed(*args, home=home, env={"PATH": "/usr/bin:/bin"}, columns=120, timeout=timeout)


def answers(db: Path, run_id: str) -> list[tuple[str, str, int]]:
    """The stored keys of a run (none while the CLI is still creating the database)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return con.execute(
                "SELECT method, problem_id, sample FROM bench_results WHERE run_id = ?", (run_id,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(FAST)
    return path


# --- End to end -------------------------------------------------------------------------------


def test_bench_quick_end_to_end_and_report(scripted_server, tmp_path, config_file):
    gold = quick_gold(5)
    for name in NAMES:
        scripted_server.route(name, solver(gold, OFFSETS[name]))
    team = write_team(tmp_path / "team.toml", scripted_server.url)
    home = tmp_path / "home"
    done = run_cli(
        "bench", "quick", "--limit", "5", "--team", str(team), "--rounds", "2",
        "--methods", "nsed,single,vote,moa", "--config", str(config_file), home=home,
    )
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"run id: (\S+)", done.stdout).group(1)
    assert run_id.startswith("quick-")
    assert "single:gamma" in done.stdout and "acc" in done.stdout

    rows = answers(home / "nsed.db", run_id)
    labels = ["nsed", "single:alpha", "single:beta", "single:gamma", "vote", "moa"]
    assert sorted((m, p) for m, p, s in rows if s == 0) == sorted(
        (m, f"quick-0-{i:04d}") for m in labels for i in range(5)
    )
    assert len(rows) == len(set(rows))

    shown = run_cli("runs", "show", run_id, "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert set(report) == {"run_id", "benchmark", "sandbox", "methods", "rounds", "agents"}
    assert report["run_id"] == run_id and report["benchmark"] == "quick"
    assert report["sandbox"] is None  # math: no code ran
    assert list(report["methods"]) == labels
    for stats in report["methods"].values():
        assert {"n", "correct", "accuracy", "ci95", "tokens", "cost_usd"} <= set(stats)
        assert stats["n"] == 5 and len(stats["ci95"]) == 2
        assert stats["tokens"]["completion"] > 0 and stats["tokens"]["prompt"] > 0
    accuracy = {m: s["accuracy"] for m, s in report["methods"].items()}
    # gamma alone is always wrong; the council, the majority (2 of 3) and MoA are right.
    assert accuracy == {
        "nsed": 1.0, "single:alpha": 1.0, "single:beta": 1.0, "single:gamma": 0.0,
        "vote": 1.0, "moa": 1.0,
    }
    assert report["methods"]["single:gamma"]["ci95"] == pytest.approx([0.0, 0.4344825], abs=1e-6)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(r["accuracy"] == 1.0 and r["reached"] == 5 for r in report["rounds"])
    agents = {a["name"]: a for a in report["agents"]}
    assert set(agents) == set(NAMES)
    assert agents["gamma"]["wins"] == 0 and agents["gamma"]["mean_support"] < 0
    assert agents["alpha"]["wins"] + agents["beta"]["wins"] == 5

    listed = run_cli("runs", "list", home=home)
    assert run_id in listed.stdout and "complete" in listed.stdout
    text = run_cli("runs", "show", run_id, home=home)
    assert "winner per round" in text.stdout and "needs >= 3 rounds" in text.stdout
    plotted = run_cli("runs", "plot", run_id, "--out", str(tmp_path / "plots"), home=home)
    assert plotted.returncode == 0, plotted.stderr
    for name in ("accuracy_per_round.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"

    # Re-running the finished run does nothing; another benchmark under its id is refused.
    before = len(scripted_server.requests)
    again = run_cli(
        "bench", "quick", "--limit", "5", "--team", str(team), "--rounds", "2",
        "--methods", "nsed,single,vote,moa", "--config", str(config_file), "--run-id", run_id,
        home=home,
    )
    assert again.returncode == 0, again.stderr
    assert len(scripted_server.requests) == before
    assert sorted(answers(home / "nsed.db", run_id)) == sorted(rows)
    aime = tmp_path / "aime.jsonl"
    aime.write_text('{"id": "a1", "problem": "What is 1 + 1?", "answer": "2"}\n')
    other = run_cli("bench", "aime", "--data", str(aime), "--team", str(team),
                    "--run-id", run_id, home=home)
    assert other.returncode == 1
    assert other.stderr.startswith("error: ") and "is a quick run" in other.stderr


def test_resume_after_kill_redoes_nothing_stored(scripted_server, tmp_path, config_file):
    limit, k = 4, 6
    gold = quick_gold(limit)
    for name in NAMES:
        scripted_server.route(name, solver(gold, OFFSETS[name], delay_s=0.12))
    team = write_team(tmp_path / "team.toml", scripted_server.url, seeds=True)
    home = tmp_path / "home"
    args = ["bench", "quick", "--limit", str(limit), "--team", str(team), "--rounds", "2",
            "--methods", "nsed,vote", "--vote-k", str(k), "--concurrency", "1",
            "--config", str(config_file), "--run-id", "resume-me"]
    env = nsed_env(home, env={"PATH": "/usr/bin:/bin"})
    proc = subprocess.Popen(nsed_command(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    db = home / "nsed.db"
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            if db.exists() and sum(1 for *_, s in answers(db, "resume-me") if s == 0) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    stored = set(answers(db, "resume-me"))
    assert 3 <= sum(1 for *_, s in stored if s == 0) < 2 * limit, "kill landed too late"

    scripted_server.reset(keep_routes=True)
    done = run_cli(*args, home=home)
    assert done.returncode == 0, done.stderr
    final = answers(db, "resume-me")
    assert len(final) == len(set(final))
    assert stored <= set(final)
    assert {(m, p) for m, p, s in final if s == 0} == {
        (m, f"quick-0-{i:04d}") for m in ("nsed", "vote") for i in range(limit)
    }
    assert sorted(s for m, p, s in final if m == "vote" and s > 0) == sorted(
        list(range(1, k + 1)) * limit
    )
    # Nothing stored is asked for again: map every new request back to the key it serves.
    pid_of = {p.prompt: p.id for p in generate_quick(limit)}
    for request in scripted_server.requests:
        pid = pid_of[problem_of(request, gold)]
        round_index = int(re.search(r"\[Round (\d+)", request.user).group(1))
        if is_review(request) or round_index > 1:
            assert ("nsed", pid, 0) not in stored, f"deliberation of {pid} redone"
            continue
        if ("nsed", pid, 0) not in stored:
            continue  # a round-1 proposal of the deliberation being redone
        assert ("vote", pid, 0) not in stored, f"vote on {pid} redone"
        seat = NAMES.index(request.model)
        draw = (request.body["seed"] - SEEDS[request.model] - 10) // SEED_STRIDE
        sample = 1 + seat + len(NAMES) * draw
        assert ("vote", pid, sample) not in stored, f"vote sample {sample} of {pid} redrawn"


def test_resumed_sampling_fills_the_gaps_with_the_same_seeds(scripted_server, tmp_path):
    gold = quick_gold(1)
    for name in NAMES:
        scripted_server.route(name, solver(gold, OFFSETS[name]))
    team = TeamSpec.model_validate(write_team_dict(scripted_server.url))
    problem = generate_quick(1)[0]
    stored = [Sample(index=i, agent=NAMES[(i - 1) % 3], final="1", completion_tokens=5)
              for i in (1, 2, 4, 6)]

    async def draw() -> list[Sample]:
        async with EndpointPool() as pool:
            bench = await BenchTeam.open(team, DeliberationConfig(kind="math"), pool)
            return await draw_samples(bench, problem, bench.seats, existing=stored, k=7, seed=5)

    samples = anyio.run(draw)
    assert [s.index for s in samples] == [1, 2, 3, 4, 5, 6, 7]
    asked = sorted((r.model, r.body["seed"]) for r in scripted_server.requests)
    # index 3 -> gamma, draw 0; 5 -> beta, draw 1; 7 -> alpha, draw 2 (seat seed + 10 + ...).
    assert asked == [
        ("alpha", SEEDS["alpha"] + 5 + 2 * SEED_STRIDE + 10),
        ("beta", SEEDS["beta"] + 5 + SEED_STRIDE + 10),
        ("gamma", SEEDS["gamma"] + 10),
    ]


# --- Compute matching -------------------------------------------------------------------------


def test_match_compute_spends_the_deliberations_tokens(scripted_server, tmp_path):
    gold = quick_gold(3)
    for name in NAMES:
        scripted_server.route(name, solver(gold, OFFSETS[name]))
    team = team_dict(scripted_server.url, NAMES, api_key="sk-not-for-the-store")
    team["models"][0]["api_key_env"] = "MY_KEY_VAR"
    store = Store(f"sqlite:///{tmp_path / 'bench.db'}")
    options = BenchOptions(
        benchmark="quick", limit=3, rounds=3, min_rounds=3, methods=["nsed", "single", "vote"],
        match_compute=True, deliberation={"embeddings": "off"},
    )
    summary = anyio.run(lambda: run_benchmark(options, store=store, team=team, run_id="mc"))
    assert summary.complete and summary.done == 3 * 5
    with store.transaction() as session:
        rows = list(session.exec(select(BenchResult).where(BenchResult.run_id == "mc")).all())
    answer = {(r.method, r.problem_id): r for r in rows if r.sample == 0}
    for problem in generate_quick(3):
        target = answer[("nsed", problem.id)].completion_tokens
        assert target > 0
        for method in ("vote", "single:alpha", "single:gamma"):
            samples = [r for r in rows if (r.method, r.problem_id) == (method, problem.id)
                       and r.sample > 0]
            spent = answer[(method, problem.id)].completion_tokens
            assert spent == sum(s.completion_tokens for s in samples)
            assert target <= spent <= target + max(s.completion_tokens for s in samples)
            assert len(samples) > 3  # a 3-round deliberation costs many single proposals
    with store.transaction() as session:
        recorded = session.get(BenchRun, "mc")
    assert recorded.status == "complete" and "sk-not" not in recorded.team
    assert json.loads(recorded.team)["models"][0]["api_key_env"] == "MY_KEY_VAR"
    assert recorded.methods == "nsed,single:alpha,single:beta,single:gamma,vote"
    detail = json.loads(answer[("single:gamma", "quick-0-0000")].detail)
    assert detail["target_tokens"] == answer[("nsed", "quick-0-0000")].completion_tokens
    assert detail["first_correct"] is False


# --- LiveCodeBench ----------------------------------------------------------------------------

LCB_ROW = {
    "question_title": "Add two",
    "question_content": "Read two integers a and b from one line and print a + b.",
    "platform": "atcoder",
    "question_id": "abc000_a",
    "starter_code": "",
    "public_test_cases": json.dumps([
        {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
        {"input": "10 -4\n", "output": "6\n", "testtype": "stdin"},
    ]),
    "private_test_cases": json.dumps([{"input": "0 0\n", "output": "0\n", "testtype": "stdin"}]),
    "metadata": "{}",
}
GOOD_PROGRAM = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n"


def coder(request: ChatRequest) -> Reply:
    if is_review(request):
        reviews = [
            {"candidate": label, "score": 90 if "sys.stdin" in text else -80, "critique": "c"}
            for label, text in request.candidates().items()
        ]
        return Reply(content=json.dumps({"reviews": reviews}))
    answer = f"Sum the two numbers.\n```python\n{GOOD_PROGRAM}```"
    return Reply(content=json.dumps({"reasoning": "add them", "answer": answer}))


def talker(request: ChatRequest) -> Reply:
    if is_review(request):
        reviews = [{"candidate": label, "score": 0, "critique": "fine"}
                   for label in request.candidates()]
        return Reply(content=json.dumps({"reviews": reviews}))
    return Reply(content=json.dumps({"reasoning": "hmm", "answer": "Just add a and b."}))


def test_lcb_grades_programs_and_records_missing_code(scripted_server, tmp_path):
    scripted_server.route("coder", coder)
    scripted_server.route("talker", talker)
    data = tmp_path / "lcb.jsonl"
    data.write_text(json.dumps(LCB_ROW) + "\n")
    team = write_team(tmp_path / "team.toml", scripted_server.url, ["coder", "talker"])
    store = Store(f"sqlite:///{tmp_path / 'bench.db'}")
    options = BenchOptions(
        benchmark="lcb", data=str(data), rounds=1, methods=["nsed", "single"],
        deliberation={"embeddings": "off"},
    )
    summary = anyio.run(lambda: run_benchmark(options, store=store, team=team, run_id="code"))
    assert summary.complete
    with store.transaction() as session:
        rows = list(session.exec(select(BenchResult).where(BenchResult.sample == 0)).all())
    by = {r.method: r for r in rows}
    assert by["nsed"].correct and by["single:coder"].correct
    assert json.loads(by["single:coder"].detail)["passed"] == 3
    assert not by["single:talker"].correct and by["single:talker"].error is None
    assert by["single:talker"].predicted is None
    assert json.loads(by["single:talker"].detail)["reason"] == "no final answer"
    # Execution feedback: before review, every candidate ran on the 2 public tests (never on
    # the private one), and the trace records it.
    trace = store.load_deliberation(by["nsed"].deliberation_id)
    checks = {c.agent: c for c in trace.rounds[0].checks}
    assert (checks["coder"].passed, checks["coder"].total) == (2, 2)
    assert checks["talker"].first_failure == "no code found" and not checks["talker"].ok
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert any("2 of 2 passed, all passed" in r.user for r in reviews)


# --- Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["aime", "--data", "/nonexistent/aime.jsonl"], "data file not found"),
        (["lcb"], "needs a data file"),
        (["quick", "--methods", "nsed,beam"], "unknown method 'beam'"),
        (["quick", "--methods", "single,vote", "--match-compute"], "add nsed to --methods"),
        (["quick", "--rounds", "2", "--min-rounds", "3"], "min_rounds"),
    ],
)
def test_bad_bench_input_is_one_error_line(tmp_path, args, needle):
    team = write_team(tmp_path / "team.toml", "http://127.0.0.1:9/v1")
    done = run_cli("bench", *args, "--team", str(team), home=tmp_path / "home")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert needle in lines[0]


def test_unknown_run_is_a_clear_error(tmp_path):
    done = run_cli("runs", "show", "nope", home=tmp_path / "home")
    assert done.returncode == 1
    assert "no benchmark run 'nope'" in done.stderr and "nsed runs list" in done.stderr


# --- Pure pieces ------------------------------------------------------------------------------


def test_methods_are_parsed_and_checked():
    assert parse_methods(" nsed, vote ,nsed,single:alpha") == ["nsed", "vote", "single:alpha"]
    for bad in ("", " , ", "single:", "best_of_n"):
        with pytest.raises(ConfigError):
            parse_methods(bad)


def test_majority_ties_go_to_the_first_answer():
    def s(i: int, final: str | None) -> Sample:
        return Sample(index=i, agent="a", final=final)

    vote = majority([s(1, "12"), s(2, "7"), s(3, "7.0"), s(4, "12"), s(5, None)], "math")
    assert (vote.final, vote.first_index, vote.counts) == ("12", 1, [2, 2])
    assert majority([s(1, "3"), s(2, "5"), s(3, "5")], "math").final == "5"
    assert majority([s(1, None)], "math").final is None


def test_waves_stop_within_one_sample_of_the_target():
    def wave(**kw: int | None) -> int:
        return next_wave(**{"k": None, "max_samples": 64, **kw})  # type: ignore[arg-type]

    # All but one sample of a wave fit below the target even at the 100-token bound.
    assert wave(drawn=0, spent=0, target=1000, bound=100) == 11
    assert wave(drawn=11, spent=950, target=1000, bound=100) == 1
    assert wave(drawn=12, spent=1040, target=1000, bound=100) == 0
    assert wave(drawn=0, spent=0, target=0, bound=None) == 1  # at least one sample
    assert wave(drawn=3, spent=10, target=1000, bound=None) == 1  # no bound: one at a time
    assert wave(drawn=60, spent=0, target=10**6, bound=10) == 4  # max_samples caps it
    assert next_wave(drawn=3, spent=0, k=5, target=None, bound=None, max_samples=64) == 2
