"""What ``nsed serve`` costs on top of a deliberation, and how many requests it holds at once.

Setup: 3 zero-latency scripted agents (tests/scripted_server.py, in this process) and
``nsed serve`` in a subprocess (its own interpreter and GIL, as in production), talked to with
the official OpenAI SDK over 127.0.0.1. One round per deliberation (propose + review: 6 calls).

1. Overhead: 50 sequential requests (plain, then streaming). Per request, client-observed
   latency minus the deliberation's own ``wall_s`` (the round loop, reported by the server in
   the response's ``nsed`` field). The same is measured for ``Council.run`` in-process, so the
   difference between the two is the HTTP server's own share (parsing, admission, JSON/SSE,
   uvicorn), the rest being the council's per-run setup (agents, preflight cache, embedder).
2. Concurrency: a fresh server per level with ``--max-concurrent N --max-queue 0`` (so anything
   it cannot hold at once would be a 429), N simultaneous requests; reports successes, errors,
   the peak of the in-flight gauge, wall time and latency percentiles.

    .venv/bin/python perf/server_overhead.py [--requests 50] [--levels 10,50,100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402

from nsed import Council  # noqa: E402
from nsed.config import DeliberationConfig, TeamSpec  # noqa: E402
from tests.council_scripts import agent, judge_by_answer  # noqa: E402
from tests.scripted_server import ScriptedServer  # noqa: E402

NAMES = ["alpha", "beta", "gamma"]
QUESTION = "What is 17 * 23?"
CONFIG = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "kind": "math"}
MESSAGES = [{"role": "user", "content": QUESTION}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_files(folder: Path, url: str) -> tuple[Path, Path]:
    team = folder / "team.toml"
    lines = []
    for name in NAMES:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'base_url = "{url}"',
            f'model = "{name}"',
            "max_retries = 0",
            "max_concurrency = 256",
        ]
    team.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = folder / "deliberation.toml"
    config.write_text(
        "[deliberation]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in CONFIG.items()),
        encoding="utf-8",
    )
    return team, config


class NsedProcess:
    """``nsed serve`` in a subprocess, stopped on exit."""

    def __init__(self, team: Path, config: Path, *, max_concurrent: int, max_queue: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args = [
            sys.executable,
            "-m",
            "nsed.cli",
            "serve",
            "--team",
            str(team),
            "--config",
            str(config),
            "--port",
            str(self.port),
            "--max-concurrent",
            str(max_concurrent),
            "--max-queue",
            str(max_queue),
            "--log-level",
            "warning",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NsedProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(self.args, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("nsed serve did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    median, mean = statistics.median(ms), statistics.mean(ms)
    return f"median {median:6.1f} ms  p90 {p90:6.1f} ms  mean {mean:6.1f} ms"


def minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def overhead(server: NsedProcess, team: Path, requests: int) -> None:
    client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
    for _ in range(3):  # warm-up: connections, preflight cache
        client.chat.completions.create(model="nsed/council", messages=MESSAGES)
    latency, wall = [], []
    for _ in range(requests):
        started = time.perf_counter()
        completion = client.chat.completions.create(model="nsed/council", messages=MESSAGES)
        latency.append(time.perf_counter() - started)
        wall.append((completion.model_extra or {})["nsed"]["wall_s"])
    s_latency, s_wall = [], []
    for _ in range(requests):
        started = time.perf_counter()
        chunks = list(
            client.chat.completions.create(model="nsed/council", messages=MESSAGES, stream=True)
        )
        s_latency.append(time.perf_counter() - started)
        s_wall.append(next(c.model_extra["nsed"]["wall_s"] for c in chunks if c.model_extra))

    async def in_process() -> list[tuple[float, float]]:
        out = []
        async with Council(TeamSpec.from_toml(team), DeliberationConfig(**CONFIG)) as council:
            for _ in range(3):
                await council.run(QUESTION)
            for _ in range(requests):
                started = time.perf_counter()
                result = await council.run(QUESTION)
                out.append((time.perf_counter() - started, result.wall_s))
        return out

    local = anyio.run(in_process)
    raw_latency, raw_wall, health = [], [], []
    with httpx.Client() as http:
        body = {"model": "nsed/council", "messages": MESSAGES}
        for _ in range(requests):
            started = time.perf_counter()
            reply = http.post(f"{server.url}/chat/completions", json=body).json()
            raw_latency.append(time.perf_counter() - started)
            raw_wall.append(reply["nsed"]["wall_s"])
            started = time.perf_counter()
            http.get(f"{server.url.removesuffix('/v1')}/health")
            health.append(time.perf_counter() - started)
    print(f"## overhead over {requests} sequential requests (1 round, 3 agents, 6 calls)")
    print(f"client latency, SDK plain     : {summary(latency)}")
    print(f"deliberation wall_s           : {summary(wall)}")
    print(f"latency - wall_s, SDK plain   : {summary(minus(latency, wall))}")
    print(f"latency - wall_s, SDK stream  : {summary(minus(s_latency, s_wall))}")
    print(f"latency - wall_s, raw httpx   : {summary(minus(raw_latency, raw_wall))}")
    print(f"GET /health round trip        : {summary(health)}")
    local_overhead = [a - b for a, b in local]
    print(f"Council.run - wall_s, in-proc : {summary(local_overhead)}")
    server_only = statistics.median(minus(raw_latency, raw_wall)) - statistics.median(
        local_overhead
    )
    print(f"=> server overhead (raw httpx - in-process, medians): {server_only * 1e3:.1f} ms")


async def burst(url: str, root: str, n: int) -> tuple[Counter[str], float, list[float], int]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    peak = 0
    done = False

    async def watch() -> None:
        nonlocal peak
        async with httpx.AsyncClient() as http:
            while not done:
                peak = max(peak, (await http.get(f"{root}/health")).json()["in_flight"])
                await asyncio.sleep(0.01)

    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120) as c:

        async def one() -> None:
            started = time.perf_counter()
            try:
                await c.chat.completions.create(model="nsed/council", messages=MESSAGES)
            except openai.APIStatusError as exc:
                outcomes[f"HTTP {exc.status_code}"] += 1
            except openai.APIError as exc:
                outcomes[type(exc).__name__] += 1
            else:
                outcomes["ok"] += 1
                latencies.append(time.perf_counter() - started)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - started
        done = True
        await watcher
    return outcomes, elapsed, latencies, peak


def concurrency(team: Path, config: Path, levels: list[int]) -> None:
    print("\n## concurrency (max_concurrent = N, max_queue = 0, N simultaneous requests)")
    for n in levels:
        with NsedProcess(team, config, max_concurrent=n, max_queue=0) as server:
            root = server.url.removesuffix("/v1")
            asyncio.run(burst(server.url, root, 3))  # warm-up
            outcomes, elapsed, latencies, peak = asyncio.run(burst(server.url, root, n))
        lat = summary(latencies) if latencies else "-"
        print(
            f"N={n:4d}: {dict(outcomes)}  peak in-flight {peak:4d}  wall {elapsed:5.2f} s  "
            f"latency {lat}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--levels", default="10,50,100")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    with ScriptedServer() as agents, tempfile.TemporaryDirectory() as tmp:
        for name, final in zip(NAMES, ["391", "391", "392"], strict=True):
            agents.route(name, agent(final, judge=judge_by_answer("391")))
        team, config = write_files(Path(tmp), agents.url)
        with NsedProcess(team, config, max_concurrent=8, max_queue=32) as server:
            overhead(server, team, args.requests)
        concurrency(team, config, levels)


if __name__ == "__main__":
    main()
