"""A tool-using agent whose model is the council: the council deliberates on each step (call a
tool, with which arguments, or answer), the app runs the tools it asks for and sends back their
results, until the council answers.

    NSED_TEAM=examples/team.toml python examples/agent_app.py "What is 12 times 34, plus 5?"
    python examples/agent_app.py        # the local default model (make install first)

The same loop works through ``nsed serve`` with any agent framework (see the README).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from nsed import Council, DeliberationConfig, NsedError


def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly."""
    return a * b


def add(a: int, b: int) -> int:
    """Add two integers exactly."""
    return a + b


TOOLS = {tool.__name__: tool for tool in (multiply, add)}


async def run_agent(question: str, *, max_steps: int = 6) -> str:
    """Ask the council for the next step until it answers; run every tool call it makes."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the tools for arithmetic; never compute by hand."},
        {"role": "user", "content": question},
    ]
    config = DeliberationConfig(max_rounds=2, min_rounds=1)
    async with Council(config=config) as council:  # keeps connections open across steps
        for number in range(1, max_steps + 1):
            result = await council.run(messages, tools=list(TOOLS.values()))
            step = result.step
            assert step is not None  # with tools, every result carries its (valid) step
            if step.kind == "answer":
                print(f"step {number}: answer ({result.usage.total_tokens} tokens)")
                return step.content or ""
            messages.append(step.as_message())
            for call in step.tool_calls:
                output = TOOLS[call.name](**call.arguments)
                print(f"step {number}: {call.name}({call.arguments}) -> {output}")
                messages.append({"role": "tool", "tool_call_id": call.id, "content": str(output)})
    raise RuntimeError(f"no answer after {max_steps} steps")


def main() -> int:
    question = " ".join(sys.argv[1:]) or "What is 12 times 34, plus 5?"
    try:
        answer = anyio.run(run_agent, question)
    except NsedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"answer: {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
