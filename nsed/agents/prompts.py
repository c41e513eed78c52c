"""Every prompt nsed sends, in one place, in our own words.

Layout contract (tests and the simulated backend rely on it):

* the system message is static for an agent across rounds (prompt-cache friendly);
* each user message starts with a header line ``[Round R · Proposing]`` or
  ``[Round R · Reviewing]``;
* in review prompts every candidate is a block that starts with ``=== Candidate X ===`` and the
  list ends with ``=== End of candidates ===``;
* the task text follows ``Task:`` and is followed by a blank line and one of: ``Council state
  after round``, ``Solve the task step by step.``, ``Your own current proposal`` or
  ``Proposals to review:`` (where a reader of the prompt can tell where the task ends);
* structured output is requested with the JSON schemas below, named ``nsed_proposal`` and
  ``nsed_review``; free-form proposals (``proposal_format = "free"``) ask for no schema and end
  with the final answer as ``\\boxed{...}`` or a fenced code block;
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
    "auto": (
        "If the task has one short answer (a number, a word, a name, a formula), your answer "
        "must end with it written as \\boxed{...}. If it asks for a program, your answer must "
        "contain the complete program as one fenced ```python code block. Otherwise start your "
        "answer with the direct answer in one sentence, then support it briefly."
    ),
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


def system_prompt(
    *,
    persona: str | None,
    kind: str,
    max_rounds: int,
    context: str | None,
    style: str = "v2",
    proposal_format: str = "free",
) -> str:
    """The static system message of one agent (``style`` "v1" is the first protocol's)."""
    lines = [
        "You are one member of a small council of independent experts who solve a task "
        "together through rounds of proposals and anonymous peer review.",
        "If the council's final answer is wrong, every member fails; the member whose proposal "
        "wins gets the most credit, and so does accurate reviewing. Cooperate to find the "
        "truth, and compete to be the one who finds it.",
    ]
    if persona:
        lines.append(f"Your working style: you are {persona}.")
    lines.append(
        f"The deliberation lasts up to {max_rounds} rounds. Each round has two phases: "
        "in Proposing you write your best complete solution; in Reviewing you score the other "
        "members' proposals, which you see under neutral labels."
    )
    if style == "v1":
        lines.append(
            "When reviewing, be skeptical: find the decisive claims, check them yourself, and "
            "do not reward agreement that nobody verified. If everyone agrees on something "
            "wrong, say so."
        )
    else:
        lines.append(
            "When reviewing, verify instead of judging style: compare each candidate's final "
            "answer with your own and recompute the step where they part. Peers' agreement is "
            "not proof; a majority can be wrong together."
        )
    lines.append(_KIND_RULES.get(kind, _KIND_RULES["text"]))
    if proposal_format == "free":
        lines.append(
            "When proposing, write plain text (no JSON). When reviewing, reply with a single "
            "JSON object and nothing else."
        )
    else:
        lines.append("Always reply with a single JSON object and nothing else.")
    if context:
        lines.append(f"Context from the user:\n{context}")
    return "\n\n".join(lines)


_FREE_ENDINGS = {
    "math": "End with the final answer on its own line, written as \\boxed{...}.",
    "code": "End with the complete program in one fenced ```python code block.",
    "text": "Start with the direct answer in one sentence, then support it briefly.",
    "auto": (
        "End with the final answer: a short answer on its own line as \\boxed{...}, or a "
        "program as one fenced ```python code block."
    ),
}


def proposal_prompt(
    *,
    round_index: int,
    question: str,
    state_view: str | None,
    style: str = "v2",
    proposal_format: str = "free",
    kind: str = "auto",
) -> str:
    """The user message of the proposing phase.

    Without ``state_view`` (round 1, or a blind re-solve in a later round) the agent solves
    the task from scratch; the prompt is then as short as round 1's.
    """
    parts = [f"[Round {round_index} · Proposing]", f"Task:\n{question}"]
    if state_view:
        parts.append(state_view)
        if style == "v1":
            parts.append(
                "Write a new, improved solution: keep what the review showed to be right, fix "
                "every valid critique, and do not simply copy the leading proposal unless you "
                "checked it."
            )
        else:
            parts.append(
                "Write your best solution now. Support is not evidence: a high score says what "
                "the others believe, not what is true. Before you switch to the leading answer, "
                "find the exact step where your own derivation goes wrong; if you cannot find "
                "one, keep your answer. Fix every critique that points at a real error."
            )
    else:
        parts.append("Solve the task step by step.")
    if proposal_format == "free":
        ending = _FREE_ENDINGS.get(kind, _FREE_ENDINGS["auto"])
        parts.append(f"Show your work step by step in plain text. {ending}")
    else:
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
    style: str = "v2",
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
    if style == "v1":
        parts.append(
            "Score each candidate from -100 to 100: -100..-50 demonstrably wrong; -50..-10 "
            "major flaws; around 0 uncertain; 10..50 solid; 50..85 strong; 85..100 verified "
            "beyond doubt. Give a short critique that names the exact step that is wrong or "
            "missing."
        )
        parts.append(
            "Review every candidate exactly once: "
            + ", ".join(labels)
            + '. Reply as a JSON object {"reviews": [...]} with one entry per candidate, each '
            'with the fields "candidate" (its label), "score" (an integer) and "critique" (why).'
        )
    else:
        parts.append(
            "For each candidate: compare its final answer with your own. If they differ, find "
            "the first step where the two derivations diverge and recompute that step yourself. "
            "Score whether the final answer is correct, not its style or length: -100..-50 the "
            "final is wrong (you found the error); -50..-10 probably wrong; near 0 you cannot "
            "verify it either way; 10..50 probably right; 50..100 you checked it and it is "
            "right. Results of running the code, when shown, are facts: a program that fails "
            "a test is wrong."
        )
        parts.append(
            "Review every candidate exactly once: "
            + ", ".join(labels)
            + '. Reply as a JSON object {"reviews": [...]} with one entry per candidate, each '
            'with the fields, in this order: "candidate" (its label), "critique" (the step you '
            'checked and what you found) and "score" (an integer).'
        )
    return "\n\n".join(parts)


# --- The Mixture-of-Agents aggregator (a benchmark baseline, not part of the protocol) ------

_AGGREGATOR_KIND_RULES = {
    "auto": (
        "End your answer with the final result written as \\boxed{...} when it is short, or "
        "with the complete program as one fenced ```python code block."
    ),
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


def review_schema(labels: list[str], *, critique_first: bool = True) -> dict[str, Any]:
    """The review schema; ``candidate`` is an enum of this reviewer's labels.

    ``critique_first`` puts the critique before the score: under strict JSON decoding the
    model writes fields in schema order, so it reasons before it commits to a number (v2).
    """
    critique = {"type": "string"}  # no maxLength: llama.cpp expands it into a slow grammar
    score = {"type": "integer", "minimum": -100, "maximum": 100}
    fields: dict[str, Any] = {"candidate": {"type": "string", "enum": labels}}
    if critique_first:
        fields |= {"critique": critique, "score": score}
    else:
        fields |= {"score": score, "critique": critique}
    return {
        "type": "object",
        "properties": {
            "reviews": {
                "type": "array",
                "minItems": len(labels),
                "maxItems": len(labels),
                "items": {
                    "type": "object",
                    "properties": fields,
                    "required": list(fields),
                    "additionalProperties": False,
                },
            }
        },
        "required": ["reviews"],
        "additionalProperties": False,
    }
