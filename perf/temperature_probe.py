"""How often the embedded model's first proposal to one question is right, per temperature.

Round-1 proposals only, with the v2 system and proposing prompts (free-form), the local team's
``frequency_penalty`` and ``max_tokens``, a different seed per sample, parsed and normalised
as a deliberation does (a reply cut off at ``max_tokens`` counts only a complete final). It is
how the demo question and the local team's temperatures were chosen (perf/local_default.md);
``perf/proposal_format.py`` compares formats over many questions.

    python perf/temperature_probe.py --question "What is 2 + 3?" --expect 5 \\
        [--kind math] [--temperatures 0.2,0.4,0.6,1.0] [--samples 16]
"""

from __future__ import annotations

import argparse
import time

import httpx

from nsed.agents import prompts
from nsed.agents.local import get_shared_server
from nsed.agents.parsing import complete_final, normalize_final, parse_free_proposal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", required=True)
    parser.add_argument("--expect", required=True, help="the right final answer")
    parser.add_argument("--kind", default="math")
    parser.add_argument("--temperatures", default="0.2,0.4,0.6,1.0")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=384)
    args = parser.parse_args(argv)

    server = get_shared_server()
    system = prompts.system_prompt(
        persona="a careful verifier who checks every step and distrusts unproven claims",
        kind=args.kind,
        max_rounds=2,
        context=None,
        style="v2",
        proposal_format="free",
    )
    user = prompts.proposal_prompt(
        round_index=1,
        question=args.question,
        state_view=None,
        style="v2",
        proposal_format="free",
        kind=args.kind,
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    expected = normalize_final(args.expect, args.kind)
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        for temperature in (float(t) for t in args.temperatures.split(",")):
            right = cut = tokens = 0
            finals: list[str | None] = []
            started = time.perf_counter()
            for sample in range(args.samples):
                reply = client.post(
                    "/chat/completions",
                    json={
                        "model": server.config.alias,
                        "messages": messages,
                        "temperature": temperature,
                        "seed": 100 + sample,
                        "max_tokens": args.max_tokens,
                        "frequency_penalty": 0.5,
                    },
                ).json()
                choice = reply["choices"][0]
                parsed = parse_free_proposal(choice["message"]["content"], args.kind)
                final = parsed.final
                if choice["finish_reason"] == "length":
                    cut += 1
                    final = complete_final(parsed.answer, args.kind)
                finals.append(final)
                tokens += reply["usage"]["completion_tokens"]
                right += final is not None and normalize_final(final, args.kind) == expected
            print(
                f"temperature {temperature}: right {right}/{args.samples}, cut off {cut}, "
                f"mean tokens {tokens / args.samples:.0f}, "
                f"{time.perf_counter() - started:.0f} s; finals {finals}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
