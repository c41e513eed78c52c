"""The council's step, for agent apps: a winner that fits the format, or one formatting call.

With tools or an answer schema every proposal is a step, checked against the format when it
is parsed. Only valid steps stand for election (:func:`ballot`), so arguments that do not
validate never win. At the end (:func:`settle_step`) the answer is the winner of the last
round that elected one; when no round did, one formatting call asks an agent to restate the
latest proposal in the format (its tokens are counted in the usage), and if that does not
validate either, :class:`~nsed.errors.InvalidOutput` says why. Never an invalid step.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from nsed.errors import InvalidOutput
from nsed.results import Deliberation, Proposal
from nsed.steps import StepFormat

if TYPE_CHECKING:
    from nsed.orchestrator.loop import DeliberationRun


def ballot(proposals: dict[str, Proposal]) -> dict[str, Proposal]:
    """The proposals that may win: all but the steps that break their format."""
    return {name: p for name, p in proposals.items() if p.step is None or p.step.valid}


def _elected(result: Deliberation) -> Proposal | None:
    """The winner of the last round that elected a valid step.

    Under answer-level aggregation a round's winner may be a proposal of an earlier round
    carrying the winning answer: the newest proposal of that agent with that final.
    """
    proposals = [p for record in reversed(result.rounds) for p in record.proposals]
    for record in reversed(result.rounds):
        winner = next(
            (
                p
                for p in proposals
                if p.agent == record.winner
                and p.final == record.winner_final
                and p.step is not None
                and p.step.valid
            ),
            None,
        )
        if winner is not None:
            return winner
    return None


def _choose(result: Deliberation, proposal: Proposal, fmt: StepFormat) -> Deliberation:
    """``result`` answering with ``proposal``'s step; tool calls get their call ids here."""
    assert proposal.step is not None
    calls = [
        call.model_copy(update={"id": call.id or f"call_{uuid.uuid4().hex[:24]}"})
        for call in proposal.step.tool_calls
    ]
    step = proposal.step.model_copy(update={"tool_calls": calls})
    parsed = None
    if fmt.answer is not None and step.kind == "answer":
        parsed = fmt.as_object(step.parsed)
    return result.model_copy(
        update={
            "answer": proposal.answer,
            "final": proposal.final,
            "winner": proposal.agent,
            "step": step,
            "parsed": parsed,
        }
    )


def _param(fmt: StepFormat, proposal: Proposal | None) -> str:
    """The request field the council failed to satisfy."""
    if fmt.answer is None:
        return "tools"
    if not fmt.offered():
        return "response_format"
    calls = proposal is not None and proposal.step is not None and proposal.step.tool_calls
    return "tools" if calls or fmt.must_call else "response_format"


async def settle_step(run: DeliberationRun, result: Deliberation) -> Deliberation:
    """The result with its step: elected, or restated by one formatting call.

    A plain deliberation (no step format) is returned unchanged.
    """
    fmt = next((a.step for a in run.seated if a.step is not None), None)
    if fmt is None:
        return result
    elected = _elected(result)
    if elected is not None:
        return _choose(result, elected, fmt)
    proposals = [p for record in reversed(result.rounds) for p in record.proposals]
    source = next((p for p in proposals if p.answer.strip() or p.reasoning.strip()), None)
    reasons = [f"{p.agent}: {'; '.join(p.step.errors)}" for p in proposals[:6] if p.step]
    if source is not None:
        live = run.live_agents() or run.agents
        agent = next((a for a in live if a.name == source.agent), live[0])
        restated, completion = await agent.restate_step(run.question, source)
        result.usage.prompt_tokens += completion.prompt_tokens
        result.usage.completion_tokens += completion.completion_tokens
        result.usage.reasoning_tokens += completion.reasoning_tokens
        result.usage.truncated_calls += int(completion.truncated)
        result.usage.cost_usd += completion.cost_usd
        result.usage.calls += 1
        result.usage.retries += completion.retries
        if restated.step is not None and restated.step.valid:
            return _choose(result, restated, fmt)
        if restated.step is not None:
            reasons.append(f"formatting call: {'; '.join(restated.step.errors)}")
    param = _param(fmt, source)
    wanted = "tool calls valid against the tools" if param == "tools" else "an answer valid"
    raise InvalidOutput(
        f"the council produced no step that fits the request's {param} ({wanted}"
        f"{' against the response_format schema' if param == 'response_format' else ''}), "
        "not even after one formatting call. Why: "
        + (" | ".join(reasons[:4]) or "no proposal arrived")
        + ". Simplify the schema, raise max_tokens, or use models with structured output.",
        param=param,
        reasons=reasons,
    )
