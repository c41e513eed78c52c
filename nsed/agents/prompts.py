"""Every prompt nsed sends, in one place, in our own words.

Layout contract (tests and the simulated backend rely on it):

* the system message is static for an agent across rounds (prompt-cache friendly);
* each user message starts with a header line ``[Round R · Proposing]`` or
  ``[Round R · Reviewing]``;
* in review prompts every candidate is a block that starts with ``=== Candidate X ===`` and the
  list ends with ``=== End of candidates ===``;
* structured output is requested with the JSON schemas below, named ``nsed_proposal`` and
  ``nsed_review``;
* the Mixture-of-Agents baseline's aggregator (``nsed bench --methods moa``) gets its own
  system message and a user message that starts with ``[Aggregating]``, lists the attempts as
  ``--- Attempt i ---`` blocks and answers in the proposal schema.

No model name or agent name ever appears in what an agent sees about its peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROPOSAL_SCHEMA_NAME = "nsed_proposal"
REVIEW_SCHEMA_NAME = "nsed_review"
CANDIDATE_HEADER = "=== Candidate {label} ==="
CANDIDATES_END = "=== End of candidates ==="
AGGREGATOR_HEADER = "[Aggregating]"

_KIND_RULES = {
    "math": (
        "This is a mathematics problem. Work it out step by step and check each step. "
        "Your answer must end with the final result written as \\boxed{...}."
    ),
    "code": (
        "This is a programming problem. Think about the algorithm and edge cases first. "
        "Your answer must contain the complete solution as one fenced ```python code block."
    ),
    "text": (
        "Answer the question accurately and completely. Start your answer with the direct "
        "answer in one sentence, then support it briefly."
    ),
}


def system_prompt(*, persona: str | None, kind: str, max_rounds: int, context: str | None) -> str:
    """The static system message of one agent."""
    lines = [
        "You are one member of a small council of independent experts who solve a task "
        "together through rounds of proposals and anonymous peer review.",
        "If the council's final answer is wrong, every member fails; the member whose proposal "
        "wins gets the most credit, and so does accurate reviewing. Cooperate to find the "
        "truth, and compete to be the one who finds it.",
    ]
    if persona:
        lines.append(f"Your working style: you are {persona}.")
    lines += [
        f"The deliberation lasts up to {max_rounds} rounds. Each round has two phases: "
        "in Proposing you write your best complete solution; in Reviewing you score the other "
        "members' proposals, which you see under neutral labels.",
        "When reviewing, be skeptical: find the decisive claims, check them yourself, and do "
        "not reward agreement that nobody verified. If everyone agrees on something wrong, say "
        "so.",
        _KIND_RULES.get(kind, _KIND_RULES["text"]),
        "Always reply with a single JSON object and nothing else.",
    ]
    if context:
        lines.append(f"Context from the user:\n{context}")
    return "\n\n".join(lines)


def proposal_prompt(*, round_index: int, question: str, state_view: str | None) -> str:
    """The user message of the proposing phase."""
    parts = [f"[Round {round_index} · Proposing]", f"Task:\n{question}"]
    if state_view:
        parts.append(state_view)
        parts.append(
            "Write a new, improved solution: keep what the review showed to be right, fix every "
            "valid critique, and do not simply copy the leading proposal unless you checked it."
        )
    else:
        parts.append("Solve the task step by step.")
    # Fields are described in words, not with a template: small models copy placeholders.
    parts.append(
        'Reply as a JSON object with two string fields: "reasoning" holds your step-by-step '
        'work, and "answer" holds your complete final answer.'
    )
    return "\n\n".join(parts)


def review_prompt(
    *,
    round_index: int,
    question: str,
    own_answer: str | None,
    own_label: str | None,
    candidates: list[tuple[str, str]],
) -> str:
    """The user message of the reviewing phase; ``candidates`` are (label, text) pairs.

    The reviewer's own proposal has a label too (``own_label``) but is shown only as a baseline
    and must not be scored; the orchestrator drops any score given to it.
    """
    labels = [label for label, _ in candidates]
    parts = [f"[Round {round_index} · Reviewing]", f"Task:\n{question}"]
    if own_answer:
        tag = f" (label {own_label}: do not score it)" if own_label else ""
        parts.append(f"Your own current proposal{tag}, as a baseline:\n{own_answer}")
    blocks = [f"{CANDIDATE_HEADER.format(label=label)}\n{text}" for label, text in candidates]
    parts.append("Proposals to review:\n" + "\n\n".join(blocks) + f"\n{CANDIDATES_END}")
    parts.append(
        "Score each candidate from -100 to 100: -100..-50 demonstrably wrong; -50..-10 major "
        "flaws; around 0 uncertain; 10..50 solid; 50..85 strong; 85..100 verified beyond doubt. "
        "Give a short critique that names the exact step that is wrong or missing."
    )
    parts.append(
        "Review every candidate exactly once: "
        + ", ".join(labels)
        + '. Reply as a JSON object {"reviews": [...]} with one entry per candidate, each with '
        'the fields "candidate" (its label), "score" (an integer) and "critique" (why).'
    )
    return "\n\n".join(parts)


def review_format_retry_prompt(labels: list[str]) -> str:
    """The follow-up when a free-text review could not be read: restate it, nothing new."""
    return (
        "Your review could not be read. Restate it now, without re-checking anything, as one "
        'JSON object {"reviews": [...]} with one entry per candidate ('
        + ", ".join(labels)
        + '), each with the fields "candidate" (its label), "score" (an integer from -100 '
        'to 100) and "critique" (why). Reply with the JSON object only.'
    )


# --- The Mixture-of-Agents aggregator (a benchmark baseline, not part of the protocol) ------

_AGGREGATOR_KIND_RULES = {
    "math": "End your answer with the final result written as \\boxed{...}.",
    "code": "Your answer must contain the complete program as one fenced ```python code block.",
    "text": "Start your answer with the direct answer in one sentence.",
}


def aggregator_system_prompt(kind: str) -> str:
    """The aggregator's system message: a synthesiser, not a voter."""
    return "\n\n".join(
        [
            "You receive a task and several independent attempts at it, written by other "
            "solvers. Your job is to produce the single best answer.",
            "The attempts may disagree and any of them, or all of them, may be wrong. Check "
            "the key steps yourself; do not side with the majority without verifying, and "
            "do not copy an attempt blindly. Combine the correct parts and fix the errors.",
            _AGGREGATOR_KIND_RULES.get(kind, _AGGREGATOR_KIND_RULES["text"]),
            "Always reply with a single JSON object and nothing else.",
        ]
    )


def aggregator_prompt(question: str, attempts: Sequence[str], *, limit: int = 4000) -> str:
    """The aggregator's user message: the task, then the attempts as numbered blocks."""
    blocks = []
    for i, text in enumerate(attempts, start=1):
        clipped = text if len(text) <= limit else text[:limit] + "…"
        blocks.append(f"--- Attempt {i} ---\n{clipped.strip()}")
    return "\n\n".join(
        [
            AGGREGATOR_HEADER,
            f"Task:\n{question}",
            "Independent attempts:\n" + "\n\n".join(blocks) + "\n--- End of attempts ---",
            "Write the best final solution to the task.",
            'Reply as a JSON object with two string fields: "reasoning" holds your check of the '
            'attempts and your own work, and "answer" holds your complete final answer.',
        ]
    )


def proposal_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "answer": {"type": "string"},
        },
        "required": ["reasoning", "answer"],
        "additionalProperties": False,
    }


def review_schema(labels: list[str]) -> dict[str, Any]:
    """The review schema; ``candidate`` is an enum of this reviewer's labels."""
    return {
        "type": "object",
        "properties": {
            "reviews": {
                "type": "array",
                "minItems": len(labels),
                "maxItems": len(labels),
                "items": {
                    "type": "object",
                    "properties": {
                        "candidate": {"type": "string", "enum": labels},
                        "score": {"type": "integer", "minimum": -100, "maximum": 100},
                        # no maxLength: llama.cpp expands it into a grammar that samples slowly
                        "critique": {"type": "string"},
                    },
                    "required": ["candidate", "score", "critique"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["reviews"],
        "additionalProperties": False,
    }
