"""Throughput of ``nsed bench`` on a local Ray cluster against the single-process runner.

Setup: a Ray cluster on this machine's loopback (tests/ray_cluster.py: a head on 127.0.0.2
and 2 workers on 127.0.0.3/4, 2 logical CPUs each, so 4 one-CPU actors fit), three simulated
agents over HTTP in their own process (nsed.simulation.server), a SQLite store per run. Each
configuration is the ``nsed bench quick --methods nsed --rounds 2`` CLI as a user runs it
(``--ray HEAD --actors K`` for the Ray ones), on the same N problems, with a fresh database.

Reported per configuration: end-to-end wall time of the command, deliberations/s over it, the
steady rate (between the first and the last stored answer, which leaves out interpreter start,
ray.init, actor start and team opening), the fixed start cost (wall minus that window), and
the overhead per problem against the single process at the same per-worker concurrency.
Two agent latencies: 200 ms per call (waiting on models, as with real endpoints) and 0 ms (the
orchestrator's own CPU cost per deliberation is all there is).

    .venv/bin/python perf/scaling.py [--problems 48] [--latencies 200,0] [--actors 1,2,4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsed.simulation.server import SimulatedServerProcess  # noqa: E402
from tests.ray_cluster import RayCluster  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def write_team(path: Path, url: str, n: int, latency_ms: int) -> Path:
    profiles = {"alpha": "p_g=0.7&p_v=0.8", "beta": "p_g=0.5&p_v=0.8", "gamma": "p_g=0.4&p_v=0.7"}
    text = ""
    for name, query in profiles.items():
        model = f"{name}?{query}&quick_n={n}&latency_ms={latency_ms}&latency_sigma=0.1"
        text += f'[[models]]\nname = "{name}"\nbase_url = "{url}"\nmodel = "{model}"\n\n'
    path.write_text(text)
    return path


def answer_window(db: Path) -> tuple[int, float]:
    """(answers stored, seconds between the first and the last)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        stamps = [
            datetime.fromisoformat(t)
            for (t,) in con.execute("SELECT created_at FROM bench_results WHERE sample = 0")
        ]
    if len(stamps) < 2:
        return len(stamps), 0.0
    return len(stamps), (max(stamps) - min(stamps)).total_seconds()


def run_one(work: Path, team: Path, n: int, concurrency: int, extra: list[str]) -> dict:
    db = work / f"run-{time.monotonic_ns()}.db"
    config = work / "fast.toml"
    config.write_text('embeddings = "off"\n')
    argv = [
        sys.executable, "-m", "nsed.cli", "bench", "quick", "--limit", str(n), "--team",
        str(team), "--methods", "nsed", "--rounds", "2", "--min-rounds", "2", "--config",
        str(config), "--concurrency", str(concurrency), "--db", f"sqlite:///{db}", *extra,
    ]
    before = load()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "NSED_HOME": str(work / "home")})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    answers, window = answer_window(db)
    assert answers == n, (answers, n)
    return {
        "wall": wall,
        "rate": n / wall,
        "steady": (n - 1) / window if window > 0 else float("nan"),
        "start": wall - window,
        "load": f"{before} -> {load()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--latencies", default="200,0")
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=4, help="problems in flight per worker")
    args = parser.parse_args()
    n, c = args.problems, args.concurrency
    actor_counts = [int(x) for x in args.actors.split(",")]
    print(f"# {os.cpu_count()} CPUs, load {load()}, N={n} problems, concurrency {c}/worker\n")
    with tempfile.TemporaryDirectory(prefix="nsed-scaling-") as tmp, SimulatedServerProcess(
        quick_n=n
    ) as sim, RayCluster(workers=2, cpus=2, worker_cpus=2) as cluster:
        work = Path(tmp)
        print(f"cluster: head {cluster.address} + 2 workers, load {load()}\n")
        print("| latency/call | runner | wall s | delib/s | steady delib/s | start s "
              "| overhead/problem | load (1/5/15 min, before -> after) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for latency in (int(x) for x in args.latencies.split(",")):
            team = write_team(work / f"team-{latency}.toml", sim.url, n, latency)
            configs: list[tuple[str, int, list[str]]] = [
                ("single process", c, []),
                (f"single process, concurrency {c * max(actor_counts)}",
                 c * max(actor_counts), []),
            ]
            configs += [(f"ray, {k} actor{'s' if k > 1 else ''}", c,
                         ["--ray", cluster.address, "--actors", str(k)]) for k in actor_counts]
            base: float | None = None
            for label, conc, extra in configs:
                r = run_one(work, team, n, conc, extra)
                if base is None:
                    base = r["wall"]
                over = "" if "ray" not in label or "1 actor" not in label else (
                    f"{(r['wall'] - base) / n * 1000:+.0f} ms"
                )
                print(f"| {latency} ms | {label} | {r['wall']:.1f} | {r['rate']:.2f} | "
                      f"{r['steady']:.2f} | {r['start']:.1f} | {over} | {r['load']} |",
                      flush=True)


if __name__ == "__main__":
    main()
