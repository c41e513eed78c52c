"""The chaos suite: a council of 3 on hostile backends, a share of every call faulty.

Three sound council members, each on its own fault server (:mod:`tests.fault_server`), answer
``What is A + B?`` correctly. The suite runs the same deliberations twice:

1. fault-free: the baseline wall times;
2. chaos: each call is faulty with probability ``--fault-rate`` (default 0.3), the fault drawn
   uniformly from ``--faults`` (default: all of ``tests.fault_server.FAULTS``: hangs, a
   byte-a-time drip, 50 MB replies, HTTP 500 and 429, and the malformed 200 replies of issue
   14 item 5), and halfway through one backend is killed for good.

Every deliberation ends in one of four ways: *answered* (a Deliberation came back),
*failed* with a typed nsed error (say QuorumLost, when faults took two of three agents),
*crashed* (any other exception: a bug, must be 0) or *lost* (no outcome within the watchdog:
must be 0). Answered traces are saved to a fresh SQLite store, whose size is printed.

    .venv/bin/python perf/chaos.py                       # 200 deliberations, ~2-4 min
    .venv/bin/python perf/chaos.py --deliberations 20 --faults hang,drip,http_500

Not part of the test suite (a tiny run is: ``tests/test_chaos_smoke.py``). Exit status 1 when
anything crashed or was lost.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from nsed import Council
from nsed.errors import NsedError
from nsed.store import Store
from tests.fault_server import FAULTS, FaultServer
from tests.scripted_server import ChatRequest

NAMES = ("alpha", "beta", "gamma")
CASE = re.compile(r"\(case (\d+)\)")


@dataclass
class Outcome:
    case: int
    kind: str  # answered | failed | crashed | lost
    wall_s: float
    correct: bool = False
    error: str = ""


@dataclass
class Injector:
    """Decides each call's fault (seeded) and remembers which case met which faults."""

    rate: float
    faults: list[str]
    seed: int
    met: dict[int, Counter[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_server(self, name: str) -> Any:
        rng = random.Random(f"{self.seed}-{name}")

        def fault(request: ChatRequest) -> str | None:
            with self._lock:
                chosen = rng.choice(self.faults) if rng.random() < self.rate else None
                match = CASE.search(request.user)
                if chosen and match:
                    self.met.setdefault(int(match.group(1)), Counter())[chosen] += 1
            return chosen

        return fault


def question(case: int) -> tuple[str, str]:
    rng = random.Random(case)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}? (case {case})", str(a + b)


async def run_all(
    servers: dict[str, FaultServer],
    n: int,
    *,
    concurrency: int,
    call_timeout_s: float,
    watchdog_s: float,
    kill_at: int | None,
    store: Store | None,
) -> list[Outcome]:
    team = {
        "models": [
            {"name": name, "base_url": s.url, "model": name, "max_retries": 1}
            for name, s in servers.items()
        ]
    }
    config = {
        "max_rounds": 2,
        "min_rounds": 2,
        "embeddings": "off",
        "kind": "math",
        "call_timeout_s": call_timeout_s,
    }
    outcomes: list[Outcome] = []
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(case: int, council: Council) -> None:
        text, gold = question(case)
        async with limiter:
            started = time.perf_counter()
            outcome = Outcome(case, "lost", 0.0)
            with anyio.move_on_after(watchdog_s):
                try:
                    result = await council.run(text)
                except NsedError as exc:
                    outcome = Outcome(case, "failed", 0.0, error=f"{type(exc).__name__}")
                except Exception as exc:  # the suite exists to find these
                    outcome = Outcome(case, "crashed", 0.0, error=describe(exc))
                else:
                    outcome = Outcome(case, "answered", 0.0, correct=result.final == gold)
                    if store is not None:
                        await anyio.to_thread.run_sync(store.save_deliberation, result)
            outcome.wall_s = time.perf_counter() - started
            outcomes.append(outcome)
            if kill_at is not None and len(outcomes) == kill_at:
                servers[NAMES[-1]].kill()  # a backend dies mid-run and stays dead

    async with Council(team, config) as council, anyio.create_task_group() as tg:
        for case in range(n):
            tg.start_soon(one, case, council)
    return sorted(outcomes, key=lambda o: o.case)


def describe(exc: BaseException) -> str:
    """The innermost exception of a (nested) ExceptionGroup, as ``Type: first line``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"


def probe(faults: list[str], call_timeout_s: float, huge_bytes: int) -> dict[str, str]:
    """Each fault alone: one deliberation whose third agent answers every call with it."""
    found = {}
    for fault in faults:
        servers = {name: FaultServer(huge_bytes=huge_bytes).start() for name in NAMES}
        servers[NAMES[-1]].fault = lambda request, fault=fault: fault
        try:
            outcome = anyio.run(
                partial(
                    run_all,
                    servers,
                    1,
                    concurrency=1,
                    call_timeout_s=call_timeout_s,
                    watchdog_s=20 * call_timeout_s + 30,
                    kill_at=None,
                    store=None,
                )
            )[0]
        finally:
            for server in servers.values():
                server.kill()
        found[fault] = outcome.kind + (f" ({outcome.error})" if outcome.error else "")
    return found


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("chaos.db*"))


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    walls = [o.wall_s for o in outcomes]
    kinds = Counter(o.kind for o in outcomes)
    return {
        "run": len(outcomes),
        "answered": kinds["answered"],
        "correct": sum(o.correct for o in outcomes),
        "failed_typed": kinds["failed"],
        "crashed": kinds["crashed"],
        "lost": kinds["lost"],
        "median_wall_s": round(statistics.median(walls), 3) if walls else 0.0,
        "p99_wall_s": round(percentile(walls, 0.99), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliberations", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--call-timeout", type=float, default=2.0, help="call_timeout_s")
    parser.add_argument("--huge-bytes", type=int, default=50_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    n = args.deliberations
    watchdog_s = 20 * args.call_timeout + 30  # far beyond any bounded deliberation
    common = {
        "concurrency": args.concurrency,
        "call_timeout_s": args.call_timeout,
        "watchdog_s": watchdog_s,
    }

    clean = {name: FaultServer().start() for name in NAMES}
    try:
        started = time.perf_counter()
        baseline = anyio.run(lambda: run_all(clean, n, kill_at=None, store=None, **common))
        baseline_s = time.perf_counter() - started
    finally:
        for server in clean.values():
            server.kill()

    injector = Injector(args.fault_rate, faults, args.seed)
    hostile = {
        name: FaultServer(fault=injector.for_server(name), huge_bytes=args.huge_bytes).start()
        for name in NAMES
    }
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'chaos.db'}")
        try:
            started = time.perf_counter()
            chaos = anyio.run(lambda: run_all(hostile, n, kill_at=n // 2, store=store, **common))
            chaos_s = time.perf_counter() - started
        finally:
            for server in hostile.values():
                server.kill()
            store.dispose()
        size = stored_bytes(Path(folder))

    alone = probe(faults, args.call_timeout, args.huge_bytes)
    injected: Counter[str] = Counter()
    for server in hostile.values():
        injected.update(server.injected)
    calls = sum(injected.values()) + sum(s.answered for s in hostile.values())
    crashes = [
        {"case": o.case, "error": o.error, "faults": dict(injector.met.get(o.case, {}))}
        for o in chaos
        if o.kind == "crashed"
    ]
    crash_faults: Counter[str] = Counter()
    for crash in crashes:
        crash_faults.update(crash["faults"].keys())
    result = {
        "fault_free": {**summary(baseline), "total_s": round(baseline_s, 1)},
        "chaos": {
            **summary(chaos),
            "total_s": round(chaos_s, 1),
            "calls": calls,
            "faulty_calls": sum(injected.values()),
            "fault_share": round(sum(injected.values()) / calls, 3) if calls else 0.0,
            "injected": dict(sorted(injected.items())),
            "backend_killed_after": n // 2,
            "bytes_stored": size,
            "failed_errors": dict(Counter(o.error for o in chaos if o.kind == "failed")),
            "crash_errors": dict(Counter(c["error"] for c in crashes)),
            "faults_met_by_crashed": dict(crash_faults.most_common()),
        },
        "each_fault_alone": alone,
    }
    f, c = result["fault_free"], result["chaos"]
    print(f"deliberations run      {c['run']} (and {f['run']} fault-free)")
    print(
        f"answered               {c['answered']} ({c['correct']} correct); fault-free "
        f"{f['answered']} ({f['correct']} correct)"
    )
    print(f"failed, typed error    {c['failed_typed']} {json.dumps(c['failed_errors'])}")
    print(f"crashed                {c['crashed']}")
    print(f"lost                   {c['lost']}")
    print(
        f"wall median / p99      {c['median_wall_s']:.2f} s / {c['p99_wall_s']:.2f} s "
        f"(fault-free {f['median_wall_s']:.2f} s / {f['p99_wall_s']:.2f} s)"
    )
    print(f"faulty calls           {c['faulty_calls']} of {c['calls']} ({c['fault_share']:.0%})")
    print(f"bytes stored           {size:,} ({c['answered']} traces)")
    print(f"faults injected        {json.dumps(c['injected'])}")
    if crashes:
        print(f"crash errors           {json.dumps(c['crash_errors'])}")
        print(f"faults met by crashed  {json.dumps(c['faults_met_by_crashed'])}")
    print("each fault alone (one agent answers every call with it):")
    for fault, outcome in alone.items():
        print(f"  {fault:<20} {outcome}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if c["crashed"] or c["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
