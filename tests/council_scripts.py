"""Scripted agent behaviours for the scripted OpenAI-compatible server.

A behaviour answers both phases of the protocol the way a model would: proposals as JSON with a
``\\boxed{}`` final answer, reviews as JSON over the labels it was shown. Reviewers judge the
candidates only from what they see (the candidate text), which is exactly what the anonymisation
guarantees them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from nsed.agents.prompts import PROPOSAL_SCHEMA_NAME, REVIEW_SCHEMA_NAME
from tests.scripted_server import ChatRequest, Reply

OWN_LABEL = re.compile(r"\(label ([A-Z0-9]+): do not score it\)")


def is_review(request: ChatRequest) -> bool:
    return request.schema_name == REVIEW_SCHEMA_NAME or "· Reviewing]" in request.user


def is_proposal(request: ChatRequest) -> bool:
    return request.schema_name == PROPOSAL_SCHEMA_NAME or "· Proposing]" in request.user


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
    judge = judge or (lambda text: 10)

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
