"""Scripted agent behaviours for the scripted OpenAI-compatible server.

A behaviour answers both phases of the protocol the way a model would: proposals as JSON with a
``\\boxed{}`` final answer (or, for agent apps, steps: tool calls in nsed's JSON format or as
native ``tool_calls``, and JSON answers), reviews as JSON over the labels it was shown.
Reviewers judge the candidates only from what they see (the candidate text), which is exactly
what the anonymisation guarantees them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from nsed.agents.prompts import (
    FORMATTING_HEADER,
    PROPOSAL_SCHEMA_NAME,
    REVIEW_SCHEMA_NAME,
    STEP_SCHEMA_NAME,
)
from tests.scripted_server import ChatRequest, Reply

OWN_LABEL = re.compile(r"\(label ([A-Z0-9]+): do not score it\)")


def is_review(request: ChatRequest) -> bool:
    return request.schema_name == REVIEW_SCHEMA_NAME or "· Reviewing]" in request.user


def is_proposal(request: ChatRequest) -> bool:
    return request.schema_name in (PROPOSAL_SCHEMA_NAME, STEP_SCHEMA_NAME) or (
        "· Proposing]" in request.user
    )


def own_label(request: ChatRequest) -> str | None:
    match = OWN_LABEL.search(request.user)
    return match.group(1) if match else None


def proposal_json(final: str, reasoning: str = "I computed it step by step.") -> str:
    return json.dumps({"reasoning": reasoning, "answer": f"The answer is \\boxed{{{final}}}."})


def judge_by_answer(correct: str, good: int = 80, bad: int = -60) -> Callable[[str], int]:
    """Score a candidate text high when it contains the boxed correct answer."""
    token = f"\\boxed{{{correct}}}"
    return lambda text: good if token in text else bad


def agent(
    final: str | Callable[[int], str],
    *,
    judge: Callable[[str], int] | None = None,
    reasoning: str = "I computed it step by step.",
    delay_s: float = 0.0,
    review_override: Callable[[ChatRequest], str] | None = None,
) -> Callable[[ChatRequest], Reply]:
    """A scripted agent: proposes ``final`` (or ``final(round)``), reviews with ``judge``."""
    judge = judge or (lambda text: 80)  # a confident endorsement: v2 conviction is agreement

    def handler(request: ChatRequest) -> Reply:
        round_match = re.search(r"\[Round (\d+)", request.user)
        round_index = int(round_match.group(1)) if round_match else 1
        if is_review(request):
            if review_override is not None:
                return Reply(content=review_override(request), delay_s=delay_s)
            reviews = [
                {"candidate": label, "score": judge(text), "critique": f"checked {label}"}
                for label, text in request.candidates().items()
            ]
            return Reply(content=json.dumps({"reviews": reviews}), delay_s=delay_s)
        answer = final(round_index) if callable(final) else final
        return Reply(content=proposal_json(answer, reasoning), delay_s=delay_s)

    return handler


def team_dict(url: str, names: list[str], **extra: object) -> dict:
    """A team of one model per name, all on the scripted server (model id = name)."""
    return {
        "models": [
            {"name": name, "base_url": url, "model": name, "max_retries": 0, **extra}
            for name in names
        ]
    }


# --- Steps: agents of an agent app (tool calls and JSON answers) ------------------------------

TOOL_RESULT = "Tool result ("  # how the task shows a tool's result (prompts.tool_result_turn)


def is_formatting(request: ChatRequest) -> bool:
    return request.user.startswith(FORMATTING_HEADER)


def has_tool_results(request: ChatRequest) -> bool:
    return TOOL_RESULT in request.user


def step_json(
    *, answer: Any = None, calls: list[tuple[str, dict]] | None = None, reasoning: str = "Plan."
) -> str:
    """A step in nsed's JSON format: tool calls (name, arguments) or the answer."""
    if calls is not None:
        items = [{"name": name, "arguments": arguments} for name, arguments in calls]
        return json.dumps({"reasoning": reasoning, "tool_calls": items})
    return json.dumps({"reasoning": reasoning, "answer": answer})


def native_calls(calls: list[tuple[str, dict]]) -> Reply:
    """A reply that calls tools natively (``message.tool_calls``), as vLLM or OpenAI send."""
    return Reply(
        tool_calls=[
            {
                "id": f"native_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for i, (name, arguments) in enumerate(calls)
        ]
    )


def calls_then_answer(
    calls: list[tuple[str, dict]], answer: Any, *, native: bool = False
) -> Callable[[ChatRequest], Reply | str]:
    """Propose ``calls`` until the task shows tool results, then ``answer``."""

    def propose(request: ChatRequest) -> Reply | str:
        if has_tool_results(request):
            return step_json(answer=answer, reasoning="The tool returned what I needed.")
        return native_calls(calls) if native else step_json(calls=calls)

    return propose


def step_agent(
    propose: Callable[[ChatRequest], Reply | str],
    *,
    judge: Callable[[str], int] | None = None,
    restate: Callable[[ChatRequest], Reply | str] | None = None,
) -> Callable[[ChatRequest], Reply]:
    """A scripted agent whose proposals are steps; reviews with ``judge`` (candidate text)."""
    judge = judge or (lambda text: 80)  # a confident endorsement: v2 conviction is agreement

    def handler(request: ChatRequest) -> Reply:
        if is_review(request):
            reviews = [
                {"candidate": label, "score": judge(text), "critique": f"checked {label}"}
                for label, text in request.candidates().items()
            ]
            return Reply(content=json.dumps({"reviews": reviews}))
        if is_formatting(request):
            if restate is None:
                raise AssertionError("this scripted agent expects no formatting call")
            reply = restate(request)
        else:
            reply = propose(request)
        return reply if isinstance(reply, Reply) else Reply(content=reply)

    return handler


def judge_by_text(token: str, good: int = 80, bad: int = -60) -> Callable[[str], int]:
    """Score a candidate high when its text contains ``token``."""
    return lambda text: good if token in text else bad
