"""How often the embedded model's first proposal to one question is right, per temperature.

Round-1 proposals through the real ``Agent`` of the local team's first seat (its persona,
``frequency_penalty`` and ``max_tokens``; the v2 prompts, free-form), one seed per sample,
parsed as a deliberation parses them (a reply cut off at ``max_tokens`` counts only a complete
final). It is how the demo question and the local team's temperatures were chosen
(perf/local_default.md); ``perf/proposal_format.py`` compares formats over many questions.

    python perf/temperature_probe.py --question "What is 2 + 3?" --expect 5 \\
        [--kind math] [--temperatures 0.2,0.4,0.6,1.0] [--samples 16]
"""

from __future__ import annotations

import argparse
import time

import anyio

from nsed.agents.backend import EndpointPool
from nsed.agents.local import default_local_team, get_shared_server
from nsed.agents.parsing import normalize_final
from nsed.config import DeliberationConfig
from nsed.council import make_agent, make_backend


async def probe(args: argparse.Namespace) -> None:
    seat = default_local_team(get_shared_server()).agents()[0]
    config = DeliberationConfig(kind=args.kind, max_rounds=2)
    expected = normalize_final(args.expect, args.kind)
    async with EndpointPool() as pool:
        for temperature in (float(t) for t in args.temperatures.split(",")):
            right = cut = tokens = 0
            finals: list[str | None] = []
            started = time.perf_counter()
            for sample in range(args.samples):
                drawn = seat.model_copy(update={"temperature": temperature, "seed": 100 + sample})
                agent = make_agent(drawn, make_backend(drawn, pool), config)
                proposal, _ = await agent.propose(args.question, round_index=1, state_view=None)
                finals.append(proposal.final)
                cut += proposal.truncated
                tokens += proposal.completion_tokens
                final = proposal.final
                right += final is not None and normalize_final(final, args.kind) == expected
            print(
                f"temperature {temperature}: right {right}/{args.samples}, cut off {cut}, "
                f"mean tokens {tokens / args.samples:.0f}, "
                f"{time.perf_counter() - started:.0f} s; finals {finals}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", required=True)
    parser.add_argument("--expect", required=True, help="the right final answer")
    parser.add_argument("--kind", default="math")
    parser.add_argument("--temperatures", default="0.2,0.4,0.6,1.0")
    parser.add_argument("--samples", type=int, default=16)
    anyio.run(probe, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
