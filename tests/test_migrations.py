"""The versioned schema: a store made by nsed 0.1.0 is upgraded in place with nothing lost,
the migrated schema is exactly the tables in ``nsed.store``, a newer database is refused, and
``nsed db`` says where a database stands. PostgreSQL runs the same (tests/test_postgres.py).

``tests/fixtures/release-0.1.0.db`` was made by nsed 0.1.0 itself (tests/fixtures/
make_release_db.sh): a benchmark run with results and deliberations on simulated agents, and
the telemetry, agent status and broker event of a brokered question.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from nsed import migrations
from nsed.broker.telemetry import read_status, read_telemetry
from nsed.errors import StoreError
from nsed.store import Store
from tests.helpers import run_nsed

RELEASE_DB = Path(__file__).parent / "fixtures" / "release-0.1.0.db"
RELEASE_RUN = "release-fixture-run"


def snapshot(
    db: Path,
    tables: frozenset[str] = migrations.RELEASE_0_1_0_TABLES,
    like: dict | None = None,
) -> dict:
    """Every row of ``tables``, in a stable order: {table: (columns, rows)}. With ``like`` (an
    earlier snapshot), only the columns that one had, so columns added since are left out."""
    out = {}
    with contextlib.closing(sqlite3.connect(db)) as con:
        for table in sorted(tables):
            if like is None:
                columns = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            else:
                columns = like[table][0]
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            out[table] = (columns, sorted(rows, key=repr))
    return out


def tables_of(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def revision_of(db: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        except sqlite3.OperationalError:
            return None


@pytest.fixture
def release_db(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 store (the fixture itself is never written)."""
    target = tmp_path / "home" / "nsed.db"
    target.parent.mkdir()
    shutil.copy(RELEASE_DB, target)
    return target


def schema_diff(store: Store) -> list:
    with store.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)


# --- 0.1.0 -> head ------------------------------------------------------------------------------


def test_a_release_database_is_upgraded_in_place_with_nothing_lost(release_db):
    before = snapshot(release_db)
    assert revision_of(release_db) is None  # 0.1.0 kept no version
    assert all(before[t][1] for t in before), "the fixture has rows in every 0.1.0 table"

    store = Store(f"sqlite:///{release_db}")
    assert store.schema_state().current and store.schema_state().revision == migrations.head()
    store.dispose()

    assert snapshot(release_db, like=before) == before  # every row of every table, unchanged
    with contextlib.closing(sqlite3.connect(release_db)) as con:  # added columns: defaults
        assert con.execute("SELECT DISTINCT truncations FROM model_stats").fetchall() == [(0,)]
    assert revision_of(release_db) == migrations.head()
    assert "bench_workers" in tables_of(release_db)
    assert schema_diff(Store(f"sqlite:///{release_db}")) == []


def test_the_upgraded_store_works_with_the_cli(release_db):
    home = release_db.parent
    shown = run_nsed("runs", "show", RELEASE_RUN, "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert list(report["methods"]) == [
        "nsed", "single:alpha", "single:beta", "single:gamma", "vote",
    ]
    assert all(m["n"] == 6 for m in report["methods"].values())
    assert report["rounds"] and report["agents"]  # per-round details and traces still read

    listed = run_nsed("runs", "list", home=home, columns=200)
    assert listed.returncode == 0, listed.stderr
    assert RELEASE_RUN in listed.stdout and "30/30" in listed.stdout

    stats = {t.name: t for t in read_telemetry(Store(f"sqlite:///{release_db}"))}
    assert set(stats) == {"alpha", "beta", "gamma"} and stats["gamma"].failures >= 1
    status = read_status(Store(f"sqlite:///{release_db}"))
    assert status["gamma"].status == "benched"


def test_a_release_run_resumes_on_the_upgraded_store_without_recomputing(release_db, tmp_path):
    """The 0.1.0 run was complete: resuming it with the same options adds nothing."""
    script = (RELEASE_DB.parent / "make_release_db.sh").read_text()
    team = script.split("cat > \"$work/team.toml\" <<'TOML'\n")[1].split("TOML\n")[0]
    (tmp_path / "team.toml").write_text(team)
    # 0.1.0 ran protocol v1; resuming under today's default (v2) is refused with that hint.
    (tmp_path / "fast.toml").write_text('embeddings = "off"\n')
    args = ["bench", "quick", "--limit", "6", "--team", str(tmp_path / "team.toml"),
            "--methods", "nsed,single,vote", "--rounds", "2", "--run-id", RELEASE_RUN,
            "--config", str(tmp_path / "fast.toml")]
    refused = run_nsed(*args, home=release_db.parent, columns=160)
    assert refused.returncode == 1 and 'protocol = "v1"' in refused.stderr, refused.stderr
    (tmp_path / "fast.toml").write_text('embeddings = "off"\nprotocol = "v1"\n')
    before = snapshot(release_db, frozenset({"bench_results"}))
    done = run_nsed(*args, home=release_db.parent, columns=160)
    assert done.returncode == 0, done.stderr
    assert "(30 resumed)" in done.stdout
    assert snapshot(release_db, frozenset({"bench_results"})) == before


# --- The schema is the models -------------------------------------------------------------------


def test_a_fresh_database_gets_exactly_the_tables_of_nsed_store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert schema_diff(store) == []
    assert revision_of(tmp_path / "fresh.db") == migrations.head()


def test_the_revisions_form_one_line_from_release_0_1_0():
    history = migrations.history()
    assert history[0][0] == "r0001"
    assert [r for r, _ in history][-1] == migrations.head()
    assert all(summary for _, summary in history)


def test_the_migrations_ship_in_the_wheel(tmp_path):
    """Package data: the revisions and Alembic's env/template are in the built wheel."""
    import zipfile

    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(Path(__file__).parent.parent)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("nsed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for revision in migrations.history():
        assert any(n.startswith(f"nsed/migrations/versions/{revision[0]}_") for n in names)
    assert {"nsed/migrations/env.py", "nsed/migrations/script.py.mako"} <= names


# --- Refusals and failures ----------------------------------------------------------------------


def test_a_database_newer_than_the_code_is_refused(release_db):
    Store(f"sqlite:///{release_db}").dispose()
    with contextlib.closing(sqlite3.connect(release_db)) as con:
        con.execute("UPDATE alembic_version SET version_num = 'r9999'")
        con.commit()
    before = snapshot(release_db)
    with pytest.raises(StoreError, match=r"revision r9999.*newer nsed wrote it.*pip install -U"):
        Store(f"sqlite:///{release_db}")
    listed = run_nsed("runs", "list", home=release_db.parent)
    assert listed.returncode == 1
    assert listed.stderr.startswith("error: database ") and "r9999" in listed.stderr
    assert "Traceback" not in listed.stderr
    current = run_nsed("db", "current", home=release_db.parent)
    assert current.returncode == 1 and "newer than this nsed knows" in current.stdout
    assert snapshot(release_db) == before


def test_a_failed_upgrade_changes_nothing(tmp_path):
    """A table 0.1.0 would have made differently: the upgrade refuses, the file is as it was."""
    db = tmp_path / "odd.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE bench_runs (run_id VARCHAR PRIMARY KEY, note VARCHAR)")
        con.execute("INSERT INTO bench_runs VALUES ('r1', 'kept')")
        con.commit()
    with pytest.raises(StoreError, match=r"lacks the columns .*not made by nsed 0\.1\.0"):
        Store(f"sqlite:///{db}")
    assert tables_of(db) == {"bench_runs"}
    kept = snapshot(db, frozenset({"bench_runs"}))["bench_runs"]
    assert kept == (["run_id", "note"], [("r1", "kept")])


def test_many_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path):
    """Eight processes, imports done, released together onto each of three new files: the
    first statement on a new file (the switch to WAL) upgrades a lock without SQLite's busy
    handler, which once failed all but one of them with "database is locked"."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom nsed.store import Store\n"
        "Path(sys.argv[2]).touch()\n"
        "while not Path(sys.argv[3]).exists(): time.sleep(0.001)\n"
        "s = Store(sys.argv[1]); print(s.schema_state().revision)\n"
    )
    for round_ in range(3):
        db, go = tmp_path / f"race{round_}.db", tmp_path / f"go{round_}"
        ready = [tmp_path / f"p{round_}-{i}.ready" for i in range(8)]
        procs = [
            subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{db}", str(mark), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for mark in ready
        ]
        deadline = time.monotonic() + 120
        while not all(mark.exists() for mark in ready):
            assert time.monotonic() < deadline, "the processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]
        assert {out.strip() for out, _ in outs} == {migrations.head()}
        assert schema_diff(Store(f"sqlite:///{db}")) == []


# --- nsed db ------------------------------------------------------------------------------------


def test_nsed_db_current_and_upgrade(release_db):
    home = release_db.parent
    before = run_nsed("db", "current", home=home, columns=200)
    assert before.returncode == 0, before.stderr
    assert "nsed 0.1.0 schema (no version recorded)" in before.stdout
    assert revision_of(release_db) is None  # current only reads

    upgraded = run_nsed("db", "upgrade", home=home, columns=200)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from the 0.1.0 schema to {migrations.head()} (head)" in upgraded.stdout

    again = run_nsed("db", "upgrade", home=home, columns=200)
    assert f"already at {migrations.head()} (head)" in again.stdout
    after = run_nsed("db", "current", home=home, columns=200)
    assert f"revision {migrations.head()} (head)" in after.stdout

    history = run_nsed("db", "history", home=home, columns=200)
    assert history.returncode == 0 and history.stdout.splitlines()[0].startswith("r0001  ")
