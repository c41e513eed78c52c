"""Several processes writing one store at once lose nothing (SQLite and PostgreSQL).

Telemetry was a read-modify-write: two processes that read a row before either wrote it both
added to the same old value, and one deliberation's counts vanished. Now counters are SQL
increments on a locked row (nsed.broker.telemetry._add). Here 4 real processes, released at
the same instant, each fold the same 25 deliberations into the same rows; every counter must
equal what 100 sequential updates give.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from nsed import deliberate
from nsed.broker.telemetry import RECENT_LATENCIES, record_deliberation
from nsed.problems import generate_quick
from nsed.results import Deliberation
from nsed.store import ModelStat, Store

WRITERS = 4
PER_WRITER = 25
COUNTERS = (
    "calls", "failures", "timeouts", "prompt_tokens", "completion_tokens", "support_n", "wins",
    "round_wins", "rounds_played", "deliberations", "graded", "correct",
)
WRITER = """
import pathlib, sys, time
from nsed.broker.telemetry import record_deliberation
from nsed.results import Deliberation
from nsed.store import Store
url, trace, go, n = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])
result = Deliberation.model_validate_json(pathlib.Path(trace).read_text())
store = Store(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
for i in range(n):
    record_deliberation(store, result, correct=i % 2 == 0)
"""


def team() -> dict:
    """Three simulated agents (in-process sim://): a real trace with usage, latency, support."""
    url = "sim://{}?p_g=0.6&p_v=0.8&latency_ms=20&fail_rate=0.2&quick_n=4"
    return {
        "models": [
            {"name": n, "base_url": url.format(n), "model": n, "max_retries": 0}
            for n in ("alpha", "beta", "gamma")
        ]
    }


@pytest.fixture(scope="module")
def trace() -> Deliberation:
    problem = generate_quick(4, 0)[1]
    config = {"max_rounds": 3, "min_rounds": 3, "embeddings": "off", "kind": "math"}
    return deliberate(problem.prompt, team=team(), config=config)


def stats(store: Store) -> dict[str, ModelStat]:
    with store.reading() as session:
        return {r.model_name: r for r in session.exec(select(ModelStat))}


def run_writers(url: str, trace: Deliberation, tmp_path: Path) -> None:
    path, go = tmp_path / "trace.json", tmp_path / "go"
    path.write_text(trace.model_dump_json())
    Store(url).dispose()  # migrate first, so the race is about the rows, not the schema
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(path), str(go), str(PER_WRITER)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(WRITERS)
    ]
    for proc in procs:  # every writer is connected and waiting before any starts
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    started = time.monotonic()
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, errors
    assert time.monotonic() - started < 240


def expected(trace: Deliberation, tmp_path: Path) -> dict[str, ModelStat]:
    """The same 100 updates, one after another, in a private store."""
    store = Store(f"sqlite:///{tmp_path / 'sequential.db'}")
    for _ in range(WRITERS):
        for i in range(PER_WRITER):
            record_deliberation(store, trace, correct=i % 2 == 0)
    return stats(store)


def check_nothing_lost(url: str, trace: Deliberation, tmp_path: Path) -> None:
    run_writers(url, trace, tmp_path)
    got, want = stats(Store(url)), expected(trace, tmp_path)
    assert set(got) == set(want) == {"alpha", "beta", "gamma"}
    for name in want:
        for counter in COUNTERS:
            assert getattr(got[name], counter) == getattr(want[name], counter), (name, counter)
        assert got[name].deliberations == WRITERS * PER_WRITER
        assert got[name].cost_usd == pytest.approx(want[name].cost_usd)
        assert got[name].support_sum == pytest.approx(want[name].support_sum)
        window = len(want[name].recent_latencies.split(","))
        assert len(got[name].recent_latencies.split(",")) == window <= RECENT_LATENCIES


def test_four_processes_writing_telemetry_to_sqlite_lose_nothing(trace, tmp_path):
    check_nothing_lost(f"sqlite:///{tmp_path / 'shared.db'}", trace, tmp_path)


@pytest.mark.postgres
def test_four_processes_writing_telemetry_to_postgres_lose_nothing(
    trace, tmp_path, postgres_url
):
    check_nothing_lost(postgres_url, trace, tmp_path)
