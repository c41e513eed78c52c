"""Embedding a council in an async application and following the deliberation live.

    python examples/embed_in_app.py            # local default model (make install first)
    NSED_TEAM=examples/team.toml python examples/embed_in_app.py
"""

from __future__ import annotations

import anyio

from nsed import Council, DeliberationConfig, Finished, ProposalReceived, RoundScored


async def main() -> None:
    config = DeliberationConfig(kind="math", max_rounds=3, min_rounds=2)
    async with Council(config=config) as council:  # keeps connections open across questions
        async for event in council.stream("What is 17 * 23?"):
            if isinstance(event, ProposalReceived):
                print(f"round {event.round}: {event.proposal.agent} -> {event.proposal.final}")
            elif isinstance(event, RoundScored):
                print(f"round {event.round}: winner {event.record.winner}, "
                      f"conviction {event.record.conviction:.2f}")
            elif isinstance(event, Finished):
                result = event.deliberation
                print(f"answer: {result.final} ({result.stopped_because}, "
                      f"{result.usage.total_tokens} tokens)")


if __name__ == "__main__":
    anyio.run(main)
