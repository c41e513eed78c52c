"""Benchmark of the embedded local server (nsed.agents.local): start time, speed, memory.

Measures what issue 3 asks to report: time from spawn to ``/health`` == 200, tokens/s of one
stream, aggregate tokens/s of 3 concurrent requests (100 output tokens each, a ~40-token prompt,
temperature 0.7), and the server's resident memory. ``ignore_eos`` (a llama.cpp extension) makes
every request generate exactly ``--tokens`` tokens, so runs are comparable.

    python perf/local_server.py [--runs 3] [--concurrency 1,3] [--tokens 100]
                                [--threads N] [--binary PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from nsed.agents.local import LocalServer, LocalServerConfig, local_available

PROMPT = (
    "You are helping a student. Explain in plain words why the sum of two odd numbers is "
    "always even, and give two short examples with small numbers."
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(
    client: httpx.AsyncClient, url: str, tokens: int, seed: int
) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.7,
        "seed": seed,
        "max_tokens": tokens,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    reply = await client.post(f"{url}/chat/completions", json=body)
    reply.raise_for_status()
    usage = reply.json()["usage"]
    return {
        "latency_s": time.perf_counter() - started,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


async def burst(url: str, concurrency: int, tokens: int, seed: int) -> dict[str, Any]:
    """``concurrency`` requests at once; aggregate tokens/s = all tokens / wall time."""
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
        started = time.perf_counter()

        async def run(i: int) -> None:
            results.append(await one_request(client, url, tokens, seed + i))

        async with anyio.create_task_group() as tg:
            for i in range(concurrency):
                tg.start_soon(run, i)
        wall = time.perf_counter() - started
    total = sum(r["completion_tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "aggregate_tok_s": total / wall,
        "per_stream_tok_s": statistics.mean(
            r["completion_tokens"] / r["latency_s"] for r in results
        ),
        "prompt_tokens": results[0]["prompt_tokens"],
        "completion_tokens": total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--concurrency", default="1,3", help="comma-separated burst sizes")
    parser.add_argument("--tokens", type=int, default=100, help="output tokens per request")
    parser.add_argument("--threads", type=int, default=None, help="server -t (default: auto)")
    parser.add_argument(
        "--binary", type=Path, default=None, help="another llama-server (e.g. a native build)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    ok, why = local_available()
    if not ok:
        print(f"local server not available: {why}", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    overrides: dict[str, Any] = {"binary_path": args.binary}
    if args.threads is not None:
        overrides["threads"] = args.threads
    config = LocalServerConfig(**overrides)

    starts: list[float] = []
    for _ in range(args.runs):
        srv = LocalServer(config)
        started = time.perf_counter()
        srv.start()
        starts.append(time.perf_counter() - started)
        srv.stop()

    report: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "start_s": {"median": statistics.median(starts), "all": starts},
    }
    with LocalServer(config) as srv:
        assert srv.pid is not None
        report["rss_idle_mib"] = rss_mib(srv.pid)
        anyio.run(burst, srv.base_url, 1, 8, 0)  # warm-up
        for level in levels:
            runs = [
                anyio.run(burst, srv.base_url, level, args.tokens, 100 * r)
                for r in range(args.runs)
            ]
            report[f"c{level}"] = {
                "aggregate_tok_s_median": statistics.median(r["aggregate_tok_s"] for r in runs),
                "per_stream_tok_s_median": statistics.median(r["per_stream_tok_s"] for r in runs),
                "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                "prompt_tokens": runs[0]["prompt_tokens"],
                "runs": runs,
            }
        report["rss_after_mib"] = rss_mib(srv.pid)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"threads={config.threads} parallel={config.parallel} ctx={config.ctx_size}")
    print(
        f"start (spawn -> /health 200): median {report['start_s']['median']:.2f} s "
        f"over {args.runs} ({', '.join(f'{s:.2f}' for s in starts)})"
    )
    for level in levels:
        r = report[f"c{level}"]
        print(
            f"{level} concurrent x {args.tokens} tokens (prompt {r['prompt_tokens']} tokens): "
            f"aggregate {r['aggregate_tok_s_median']:.1f} tok/s, per stream "
            f"{r['per_stream_tok_s_median']:.1f} tok/s, wall {r['wall_s_median']:.2f} s"
        )
    print(
        f"server RSS: idle {report['rss_idle_mib']:.0f} MiB, "
        f"after load {report['rss_after_mib']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
