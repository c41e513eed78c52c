"""What a store must survive (issue 14, item 12), each with real files and processes.

* Private files: the database is created 0600 (and its -wal/-shm with it) in a folder created
  0700, whatever the umask; traces hold users' questions on shared hosts.
* An unparsable JSON cell (edited by hand, a disk fault) is named in a warning; ``nsed runs
  show`` still reports, and a resume computes the broken rows again instead of crashing.
* A database locked past the timeout fails the run with one clear line; the run does not stay
  "running" forever: its worker stops beating and the run shows as stale, and resumes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from nsed.benchmarks.reports import list_runs
from nsed.simulation.server import SimulatedServerProcess
from nsed.store import Store
from tests.helpers import nsed_command, nsed_env, run_nsed
from tests.test_scale import bench_args, expected_answers, keys, later, results, write_team

PROBE = """
import os, stat, sys
from nsed.store import Store, DeliberationRow
store = Store(sys.argv[1])
with store.transaction() as session:  # a write, so that SQLite makes its -wal and -shm files
    session.add(DeliberationRow(id="x", question="q", kind="math", answer="a",
                                stopped_because="max_rounds", n_rounds=1, trace="{}"))
path = sys.argv[1].removeprefix("sqlite:///")
for name in (os.path.dirname(path), path, path + "-wal", path + "-shm"):
    print(oct(stat.S_IMODE(os.stat(name).st_mode)))
"""


def modes(url: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, url], capture_output=True, text=True,
                          timeout=60, umask=0o022)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_new_store_is_private_to_its_owner(tmp_path):
    assert modes(f"sqlite:///{tmp_path / 'new' / 'home' / 'nsed.db'}") == [
        "0o700", "0o600", "0o600", "0o600",
    ]
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_an_existing_folder_keeps_its_mode_and_the_file_is_still_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert modes(f"sqlite:///{shared / 'nsed.db'}") == ["0o755", "0o600", "0o600", "0o600"]


# --- Unparsable JSON cells ---------------------------------------------------------------------


SIM_TEAM = "".join(
    f'[[models]]\nname = "{n}"\nbase_url = "sim://{n}?{q}&quick_n=4"\nmodel = "{n}"\n\n'
    for n, q in (("alpha", "p_g=0.7&p_v=0.8"), ("beta", "p_g=0.5&p_v=0.8"),
                 ("gamma", "p_g=0.4&p_v=0.7"))
)


def corrupt(db: Path, sql: str, *args: object) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute(sql, args).rowcount >= 1, sql
        con.commit()


def test_unparsable_json_cells_are_named_reported_around_and_recomputed(tmp_path):
    team = tmp_path / "team.toml"
    team.write_text(SIM_TEAM)
    db, home = tmp_path / "nsed.db", tmp_path / "home"
    args = bench_args(team, db, "broken", limit=4)
    first = run_nsed(*args, home=home, columns=160)
    assert first.returncode == 0, first.stderr
    before = results(db, "broken")
    p0, p1, p2 = (f"quick-0-{i:04d}" for i in range(3))
    corrupt(db, "UPDATE bench_results SET detail = '{not json' "
                "WHERE run_id = 'broken' AND method = 'nsed' AND problem_id = ? AND sample = 0", p0)
    corrupt(db, "UPDATE bench_results SET detail = '[1, 2' "
                "WHERE run_id = 'broken' AND method = 'vote' AND problem_id = ? AND sample = 1", p1)
    corrupt(db, "UPDATE deliberations SET trace = 'garbage' WHERE id = (SELECT deliberation_id "
                "FROM bench_results WHERE run_id = 'broken' AND method = 'nsed' "
                "AND problem_id = ? AND sample = 0)", p2)
    corrupt(db, "UPDATE bench_runs SET config = '{\"n_problems\": 4,' WHERE run_id = 'broken'")

    shown = run_nsed("runs", "show", "broken", "--db", f"sqlite:///{db}", columns=160)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    assert "bench_results id" in shown.stderr
    assert "(detail) holds text that is not JSON" in shown.stderr
    assert "deliberations id" in shown.stderr and "not a readable trace" in shown.stderr
    listed = run_nsed("runs", "list", "--db", f"sqlite:///{db}", columns=160)
    assert listed.returncode == 0 and "broken" in listed.stdout, listed.stderr
    assert "bench_runs 'broken' (config)" in listed.stderr

    resumed = run_nsed(*args, home=home, columns=160)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "a resume computes it again" in resumed.stderr
    assert results(db, "broken") == before  # the two broken rows, computed again, identically
    again = run_nsed(*args, home=home, columns=160)
    assert again.returncode == 0 and "(20 resumed)" in again.stdout, again.stderr


# --- A locked database ---------------------------------------------------------------------------


def test_a_locked_database_fails_the_run_cleanly_and_the_run_shows_stale_not_running(tmp_path):
    with SimulatedServerProcess(quick_n=16) as sim:
        team = write_team(tmp_path / "team.toml", sim.url, latency_ms=150)
        db = tmp_path / "nsed.db"
        args = bench_args(team, db, "locked", "--concurrency", "2")
        env = nsed_env(tmp_path / "home", columns=160)
        env["NSED_DB_LOCK_TIMEOUT_S"] = "1"
        run = subprocess.Popen(nsed_command(*args), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len([k for k in _keys(db) if k[2] == 0]) < 2:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock, and keeps it
        try:
            out, err = run.communicate(timeout=120)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert run.returncode == 1, (out, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and "locked (another process holds a write lock" in lines[0], err
        assert "Traceback" not in err

        with contextlib.closing(sqlite3.connect(db)) as con:
            query = "SELECT status FROM bench_runs WHERE run_id = 'locked'"
            (stored,) = con.execute(query).fetchone()
        assert stored == "running"  # the end status could not be written...
        (listing,) = list_runs(Store(f"sqlite:///{db}"), now=later())
        assert listing.status == "stale"  # ...but the run does not claim to be running

        resumed = run_nsed(*args, home=tmp_path / "home", columns=160, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert {(m, p) for m, p, s in keys(db, "locked") if s == 0} == expected_answers()
        (listing,) = list_runs(Store(f"sqlite:///{db}"))
        assert listing.status == "complete"


def _keys(db: Path) -> list:
    try:
        return keys(db, "locked")
    except sqlite3.OperationalError:
        return []  # the CLI is still creating the database
