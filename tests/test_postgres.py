"""The whole store on a real PostgreSQL server (tests/postgres_server.py): migrations,
benchmark runs with resume and reports, brokered questions with telemetry and free agency,
and the server's trace lookup, all through ``NSED_DATABASE_URL=postgresql+psycopg://...``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from nsed import migrations
from nsed.broker.telemetry import read_status, read_telemetry
from nsed.errors import StoreError
from nsed.problems import generate_quick
from nsed.store import Store
from tests.helpers import run_nsed
from tests.test_migrations import schema_diff

pytestmark = pytest.mark.postgres

TEAM = """
[[models]]
name = "alpha"
base_url = "sim://alpha?p_g=0.7&p_v=0.8&quick_n=6"
model = "alpha"

[[models]]
name = "beta"
base_url = "sim://beta?p_g=0.5&p_v=0.8&quick_n=6"
model = "beta"

[[models]]
name = "gamma"
base_url = "sim://gamma?p_g=0.4&p_v=0.7&fail_rate=0.1&quick_n=6"
model = "gamma"
"""


def nsed_pg(url: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NSED_HOME": str(tmp_path / "home"), "NSED_DATABASE_URL": url}
    return run_nsed(*args, env=env, columns=160)


def test_migrations_on_postgres(postgres_url):
    store = Store(postgres_url)
    state = store.schema_state()
    assert state.current and state.revision == migrations.head()
    assert schema_diff(store) == []
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'r9999'"))
    with pytest.raises(StoreError, match=r"r9999.*newer nsed wrote it"):
        Store(postgres_url)


def test_many_processes_opening_a_new_postgres_database_migrate_it_once(postgres_url):
    code = (
        "import sys\nfrom nsed.store import Store\n"
        "print(Store(sys.argv[1]).schema_state().revision)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, postgres_url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    assert {out.strip() for out, _ in outs} == {migrations.head()}


def test_a_benchmark_run_on_postgres_stores_resumes_and_reports(postgres_url, tmp_path):
    (tmp_path / "team.toml").write_text(TEAM)
    (tmp_path / "fast.toml").write_text('embeddings = "off"\n')
    args = ("bench", "quick", "--limit", "4", "--team", str(tmp_path / "team.toml"),
            "--methods", "nsed,single,vote", "--rounds", "2", "--run-id", "pg-run",
            "--config", str(tmp_path / "fast.toml"))
    first = nsed_pg(postgres_url, *args, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "complete" in first.stdout
    again = nsed_pg(postgres_url, *args, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(20 resumed)" in again.stdout  # 5 methods x 4 problems, nothing recomputed

    shown = nsed_pg(postgres_url, "runs", "show", "pg-run", "--json", tmp_path=tmp_path)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert all(m["n"] == 4 for m in report["methods"].values())
    assert report["agents"] and report["rounds"]  # traces read back from PostgreSQL
    listed = nsed_pg(postgres_url, "runs", "list", tmp_path=tmp_path)
    assert "pg-run" in listed.stdout and "complete" in listed.stdout
    current = nsed_pg(postgres_url, "db", "current", tmp_path=tmp_path)
    assert current.returncode == 0 and f"revision {migrations.head()} (head)" in current.stdout
    assert "127.0.0.1" in current.stdout and ":" + postgres_url.split(":")[2] not in current.stdout


def test_brokered_questions_on_postgres_keep_telemetry_and_free_agency(postgres_url, tmp_path):
    catalog = tmp_path / "catalog.toml"
    entries = [("alpha", "p_g=0.7&p_v=0.8", 0.7), ("beta", "p_g=0.5&p_v=0.8", 0.6),
               ("gamma", "p_g=0.3&fail_rate=0.9", 0.5)]
    catalog.write_text("".join(
        f'[[models]]\nname = "{n}"\nbase_url = "sim://{n}?{q}"\nmodel = "{n}"\n'
        f'family = "{n}"\ncapabilities = ["math", "text"]\nprior_skill = {{ math = {p} }}\n\n'
        for n, q, p in entries
    ))
    question = generate_quick(1, 0)[0].prompt
    done = nsed_pg(postgres_url, "ask", question, "--catalog", str(catalog), "--kind", "math",
                   "--rounds", "2", "--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    store = Store(postgres_url)
    stats = {t.name: t for t in read_telemetry(store)}
    assert set(stats) == {"alpha", "beta", "gamma"}
    assert stats["gamma"].failures >= 1 and stats["alpha"].deliberations == 1
    assert read_status(store)["gamma"].status == "benched"
