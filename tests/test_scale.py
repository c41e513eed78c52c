"""Benchmark runs beyond one process: ``--shard I/N`` and ``--ray`` give the stored results of
the single-process runner, and a Ray run whose driver is killed with -9 resumes with 0 lost and
0 duplicated results; ``nsed serve --ray`` serves from several replicas with trace lookups
from the shared store.

Real processes throughout: the CLI as child processes, simulated agents over HTTP in their own
process (:class:`~nsed.simulation.server.SimulatedServerProcess`), a local Ray cluster
(tests/ray_cluster.py).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from nsed.benchmarks.reports import list_runs
from nsed.benchmarks.runner import STALE_AFTER_S, Shard
from nsed.errors import ConfigError
from nsed.problems import generate_quick
from nsed.simulation.server import SimulatedServerProcess
from nsed.store import Store
from tests.helpers import nsed_command, nsed_env, run_nsed

N_PROBLEMS = 8
METHODS = "nsed,single,vote"
LABELS = ["nsed", "single:alpha", "single:beta", "single:gamma", "vote"]
TIMING = {"latency_s", "id", "created_at", "deliberation_id"}


@pytest.fixture(scope="module")
def sim_server() -> Iterator[SimulatedServerProcess]:
    with SimulatedServerProcess(quick_n=N_PROBLEMS * 2) as server:
        yield server


def write_team(path: Path, url: str, latency_ms: int = 0) -> Path:
    profiles = {"alpha": "p_g=0.7&p_v=0.8", "beta": "p_g=0.5&p_v=0.8",
                "gamma": "p_g=0.4&p_v=0.7&fail_rate=0.1"}
    lines = []
    for name, query in profiles.items():
        model = f"{name}?{query}&quick_n={N_PROBLEMS * 2}&latency_ms={latency_ms}"
        lines += ["[[models]]", f'name = "{name}"', f'base_url = "{url}"', f'model = "{model}"',
                  "max_retries = 0", ""]
    path.write_text("\n".join(lines))
    return path


def bench_args(team: Path, db: Path, run_id: str, *extra: str, limit: int = N_PROBLEMS) -> list:
    config = team.with_name("fast.toml")
    config.write_text('embeddings = "off"\n')
    return ["bench", "quick", "--limit", str(limit), "--team", str(team), "--methods", METHODS,
            "--rounds", "2", "--config", str(config), "--run-id", run_id,
            "--db", f"sqlite:///{db}", *extra]


def results(db: Path, run_id: str) -> list[tuple]:
    """Every stored result of the run without what legitimately differs (timing, ids)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT * FROM bench_results WHERE run_id = ?", (run_id,)).fetchall()
    out = []
    for row in rows:
        values = {k: row[k] for k in row.keys() if k not in TIMING}  # noqa: SIM118
        values["detail"] = json.loads(values["detail"])
        out.append(json.dumps(values, sort_keys=True))
    return sorted(out)


def keys(db: Path, run_id: str) -> list[tuple[str, str, int]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(
            "SELECT method, problem_id, sample FROM bench_results WHERE run_id = ?", (run_id,)
        ).fetchall()


def expected_answers(limit: int = N_PROBLEMS) -> set[tuple[str, str]]:
    return {(m, p.id) for m in LABELS for p in generate_quick(limit, 0)}


def later() -> datetime:
    """A moment when every worker that is not beating any more counts as gone."""
    return datetime.now(UTC) + timedelta(seconds=STALE_AFTER_S + 1)


def test_shard_option_is_checked():
    assert Shard.parse("2/3").select(list(range(7))) == [1, 4]  # type: ignore[arg-type]
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="write it as I/N"):
            Shard.parse(bad)


@pytest.mark.ray
def test_single_process_sharded_and_ray_store_identical_results(sim_server, ray_head, tmp_path):
    team = write_team(tmp_path / "team.toml", sim_server.url)
    single, sharded, on_ray = tmp_path / "single.db", tmp_path / "sharded.db", tmp_path / "ray.db"

    done = run_nsed(*bench_args(team, single, "same"), columns=160, timeout=300)
    assert done.returncode == 0, done.stderr

    shards = [
        subprocess.Popen(nsed_command(*bench_args(team, sharded, "same", "--shard", f"{i}/2")),
                         env=nsed_env(tmp_path / "home"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in (1, 2)
    ]  # both at once, one store
    errors = [proc.communicate(timeout=300)[1] for proc in shards]
    assert [proc.returncode for proc in shards] == [0, 0], errors

    ray_run = run_nsed(*bench_args(team, on_ray, "same", "--ray", ray_head.address,
                                   "--actors", "2"), columns=160, timeout=300)
    assert ray_run.returncode == 0, ray_run.stderr
    assert "complete" in ray_run.stdout

    reference = results(single, "same")
    assert {(m, p) for m, p, s in keys(single, "same") if s == 0} == expected_answers()
    assert results(sharded, "same") == reference
    assert results(on_ray, "same") == reference
    for db in (single, sharded, on_ray):
        (listing,) = list_runs(Store(f"sqlite:///{db}"))
        assert listing.status == "complete" and listing.answers == len(expected_answers())
    roles = {w.workers for w in list_runs(Store(f"sqlite:///{sharded}"))}
    assert roles == {2}  # two shard workers on one run
    assert list_runs(Store(f"sqlite:///{on_ray}"))[0].workers == 3  # driver + 2 actors


@pytest.mark.ray
def test_kill_minus_9_of_the_ray_driver_then_resume_loses_and_duplicates_nothing(
    sim_server, ray_head, tmp_path
):
    limit = 12
    team = write_team(tmp_path / "team.toml", sim_server.url, latency_ms=120)
    db, reference = tmp_path / "ray.db", tmp_path / "reference.db"
    args = bench_args(team, db, "killed", "--ray", ray_head.address, "--actors", "2",
                      "--concurrency", "2", limit=limit)
    driver = subprocess.Popen(nsed_command(*args), env=nsed_env(tmp_path / "home"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    stored: list = []
    while time.monotonic() < deadline and driver.poll() is None:
        with contextlib.suppress(sqlite3.OperationalError):
            stored = [k for k in keys(db, "killed") if k[2] == 0]
        if len(stored) >= 6:
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the run ended before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)

    partial = {(m, p) for m, p, s in keys(db, "killed") if s == 0}
    assert 6 <= len(partial) < len(expected_answers(limit))
    (listing,) = list_runs(Store(f"sqlite:///{db}"), now=later())
    assert listing.status == "stale"  # no worker beats any more, none finished

    resumed = run_nsed(*args, home=tmp_path / "home", columns=160, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "complete" in resumed.stdout and "resumed)" in resumed.stdout

    stored_keys = keys(db, "killed")
    assert len(stored_keys) == len(set(stored_keys))  # 0 duplicated
    assert {(m, p) for m, p, s in stored_keys if s == 0} == expected_answers(limit)  # 0 lost
    done = run_nsed(*bench_args(team, reference, "killed", "--concurrency", "6", limit=limit),
                    columns=160, timeout=300)
    assert done.returncode == 0, done.stderr
    assert results(db, "killed") == results(reference, "killed")
    (listing,) = list_runs(Store(f"sqlite:///{db}"), now=later())
    assert listing.status == "complete"


@pytest.mark.ray
def test_nsed_serve_on_ray_finds_every_trace_from_any_replica(sim_server, ray_head, tmp_path):
    team = write_team(tmp_path / "team.toml", sim_server.url)
    port = 18000 + int(time.time() * 1000) % 2000
    home = tmp_path / "home"
    server = subprocess.Popen(
        nsed_command("serve", "--team", str(team), "--port", str(port), "--ray",
                     ray_head.address, "--replicas", "2"),
        env=nsed_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Ray Serve did not come up"
            time.sleep(0.5)
        run_ids = []
        for problem in generate_quick(4, 0):
            reply = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "nsed/council", "nsed": {"rounds": 2},
                      "messages": [{"role": "user", "content": problem.prompt}]},
                timeout=120,
            )
            assert reply.status_code == 200, reply.text
            run_ids.append(reply.headers["x-nsed-run-id"])
        for run_id in run_ids:  # each lookup may land on either replica
            for _ in range(4):
                trace = httpx.get(f"{base}/v1/deliberations/{run_id}", timeout=30)
                assert trace.status_code == 200, trace.text
                assert trace.json()["id"] == run_id
        store = Store(f"sqlite:///{home / 'nsed.db'}")
        assert all(store.load_deliberation(r) is not None for r in run_ids)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


RAY_GRADING = """
import json, sys
import anyio
from nsed.scale.bench import RayGrader
from nsed.scale.cluster import connect
from tests.test_grading import STDIN_PROBLEM

ray = connect(sys.argv[1])
right = (
    "t = int(input())\\nfor _ in range(t):\\n"
    "    a, b = map(int, input().split())\\n    print(a + b)\\n"
)

async def main():
    grader = RayGrader()
    return [await grader.code(code, STDIN_PROBLEM, 10.0) for code in (right, "print(0)")]

grades = anyio.run(main)
print(json.dumps([g.model_dump() for g in grades]))
"""


@pytest.mark.ray
def test_code_grading_runs_as_ray_tasks_with_the_same_verdicts(ray_head):
    """The sandboxed tests of a code answer run as a Ray task; verdicts equal local grading."""
    from nsed.benchmarks.grading import grade_code
    from tests.test_grading import STDIN_PROBLEM

    done = subprocess.run([sys.executable, "-c", RAY_GRADING, ray_head.address],
                          capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    right, wrong = (without_timing(g) for g in json.loads(done.stdout.strip().splitlines()[-1]))
    local = "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n"
    here = grade_code(local + "    print(a + b)\n", STDIN_PROBLEM, fail_fast=True, timeout_s=10.0)
    assert right == without_timing(here.model_dump())
    assert right["passed"] == right["total"] == 3 and wrong["passed"] == 0
    here = grade_code("print(0)", STDIN_PROBLEM, fail_fast=True, timeout_s=10.0)
    assert wrong == without_timing(here.model_dump())


def without_timing(grade: dict) -> dict:
    return {k: v for k, v in grade.items() if k != "wall_s"}
