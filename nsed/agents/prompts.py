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
  ``--- Attempt i ---`` blocks and answers in the proposal schema;
* with tools or an answer schema (agent apps), proposals are steps in the ``nsed_step`` schema
  and the one formatting call's user message starts with ``[Formatting]`` (see "Steps").

No model name or agent name ever appears in what an agent sees about its peers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nsed.steps import Step, StepFormat

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


# --- Steps: tool calls and JSON answers, for agent apps ---------------------------------------
#
# With tools or an answer schema (``nsed.steps.StepFormat``) the task the council deliberates
# on lists the tools and the answer shape (``step_task``), so proposers and reviewers see the
# same thing. A proposal is a *step*: ``{"reasoning", "answer"}`` or ``{"reasoning",
# "tool_calls": [{"name", "arguments"}]}``, asked for with the ``nsed_step`` schema; agents on a
# backend with native tool calling get the tools as ``tools`` instead. When no proposal fits the
# format, one formatting call (its user message starts with ``[Formatting]``) restates one.

STEP_SCHEMA_NAME = "nsed_step"
FORMATTING_HEADER = "[Formatting]"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _answer_shape(fmt: StepFormat) -> str:
    if fmt.answer is None:
        return "as a string"
    if fmt.answer.type == "json_object":
        return "as a JSON object (not a string holding JSON)"
    return "as a JSON value valid against the answer schema (not a string holding JSON)"


def step_task(question: str, fmt: StepFormat) -> str:
    """The task with what an agent app allows: the tools it runs and the answer's shape."""
    parts = [question.strip()]
    offered = fmt.offered()
    if offered:
        lines = [
            "Tools you can call (the application runs them and sends their results back in "
            "the next turn of the conversation):"
        ]
        for tool in offered:
            about = f": {' '.join(tool.description.split())}" if tool.description else ""
            lines.append(f"- {tool.name}{about}")
            lines.append(f"  arguments (JSON Schema): {_compact(tool.parameters)}")
        parts.append("\n".join(lines))
        if fmt.tool_choice == "function":
            policy = f"This step must call the tool {fmt.function}."
        elif fmt.tool_choice == "required":
            policy = "This step must call at least one of these tools."
        else:
            policy = (
                "Call a tool only when the answer needs it (a fact or a result you cannot "
                "know or compute reliably yourself); once the results you need are in the "
                "conversation, give the final answer."
            )
        policy += (
            " You may call several tools at once when the calls are independent."
            if fmt.parallel_tool_calls
            else " Call at most one tool in this step."
        )
        parts.append(policy)
    if fmt.answer is not None and fmt.may_answer:
        if fmt.answer.type == "json_object":
            parts.append("The final answer must be a JSON object.")
        else:
            parts.append(
                f"The final answer must be JSON valid against this schema "
                f"({fmt.answer.name}): {_compact(fmt.answer.json_schema)}"
            )
    review = (
        "A step is either the final answer or tool calls. When reviewing a step, check "
        "whether calling a tool is needed at all, whether it is the right tool, and whether "
        "the arguments are right and complete; for a final answer, check that it is correct."
        if offered
        else "When reviewing, check that the answer is correct and says it in that shape."
    )
    parts.append(review)
    return "\n\n".join(parts)


def step_reply_instructions(fmt: StepFormat, *, native: bool) -> str:
    """How to write a step: nsed's JSON step format, or native tool calls plus JSON answers."""
    shape = _answer_shape(fmt)
    if native and fmt.offered():
        if fmt.must_call:
            return "Make the tool call with your tool-calling interface."
        return (
            "To call a tool, use your tool-calling interface. To give the final answer "
            'instead, reply as a JSON object with two fields: "reasoning" (a string with your '
            f'step-by-step work) and "answer" (your complete final answer, {shape}).'
        )
    calls = (
        '"tool_calls", a list of the tool calls to make now, each an object with "name" (the '
        'tool) and "arguments" (an object valid against that tool\'s schema)'
    )
    answer = f'"answer", your complete final answer {shape}'
    if not fmt.offered():
        rest = f"and {answer}."
    elif fmt.must_call:
        rest = f"and {calls}."
    else:
        rest = f"and then exactly one of: {answer}; or {calls}."
    return (
        'Reply as a JSON object. Its "reasoning" field (a string) holds your step-by-step '
        f"work, {rest}"
    )


def step_proposal_prompt(
    *, round_index: int, question: str, state_view: str | None, fmt: StepFormat, native: bool
) -> str:
    """The user message of the proposing phase when the proposal is a step."""
    parts = [f"[Round {round_index} · Proposing]", f"Task:\n{question}"]
    if state_view:
        parts.append(state_view)
        parts.append(
            "Write a new, improved step: keep what the review showed to be right, fix every "
            "valid critique, and do not simply copy the leading proposal unless you checked it."
        )
    else:
        parts.append("Decide the next step, thinking it through step by step.")
    parts.append(step_reply_instructions(fmt, native=native))
    return "\n\n".join(parts)


def formatting_prompt(question: str, proposal: str, errors: list[str], fmt: StepFormat) -> str:
    """The one formatting call: restate a proposal that does not fit the required format."""
    why = "; ".join(errors) or "it does not match the required format"
    return "\n\n".join(
        [
            FORMATTING_HEADER,
            f"Task:\n{question}",
            f"A proposal for this step, which does not match the required format ({why}):\n"
            f"{proposal.strip()}",
            "Restate this proposal in the required format without changing what it says.",
            step_reply_instructions(fmt, native=False),
        ]
    )


def render_step(step: Step) -> str:
    """A step as text: how reviewers see it and what a result's ``answer`` holds."""
    if step.tool_calls:
        calls = [f"- {c.name}({c.arguments_json()})" for c in step.tool_calls]
        return "Tool calls:\n" + "\n".join(calls)
    if step.parsed is not None:
        return json.dumps(step.parsed, ensure_ascii=False)
    return step.content or ""


def step_schema(fmt: StepFormat) -> dict[str, Any]:
    """The ``nsed_step`` schema: a final answer or tool calls, each tool with its own schema.

    The app's schemas are embedded as they are; one that uses local references (pydantic's
    ``$defs``) is moved under this schema's ``$defs`` with its references rewritten.
    """
    defs: dict[str, Any] = {}
    reasoning = {"type": "string"}
    branches = []
    if fmt.may_answer:
        if fmt.answer is None:
            answer: dict[str, Any] = {"type": "string"}
        elif fmt.answer.type == "json_object":
            answer = {"type": "object"}
        else:
            answer = _embedded(fmt.answer.json_schema, "answer", defs)
        branches.append(_step_branch({"reasoning": reasoning, "answer": answer}))
    items = [
        _step_branch(
            {
                "name": {"type": "string", "enum": [tool.name]},
                "arguments": _embedded(tool.parameters, f"tool_{tool.name}", defs),
            }
        )
        for tool in fmt.offered()
    ]
    if items:
        calls: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": items[0] if len(items) == 1 else {"anyOf": items},
        }
        if not fmt.parallel_tool_calls:
            calls["maxItems"] = 1
        branches.append(_step_branch({"reasoning": reasoning, "tool_calls": calls}))
    schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return {**schema, "$defs": defs} if defs else schema


def _step_branch(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _embedded(schema: dict[str, Any], key: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as a part of a bigger one: inline, or under ``$defs[key]`` if it has refs."""
    body = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    if not _has_ref(body):
        return body
    defs[key] = _rebase_refs(body, f"#/$defs/{key}")
    return {"$ref": f"#/$defs/{key}"}


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False


def _rebase_refs(node: Any, base: str) -> Any:
    """Local references (``#...``) made relative to ``base``, where the schema now lives."""
    if isinstance(node, dict):
        out = {k: _rebase_refs(v, base) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(node, list):
        return [_rebase_refs(v, base) for v in node]
    return node


# --- Conversations: a chat as the task ----------------------------------------------------------


def conversation_task(history: list[str], latest: str | None, *, after_tools: bool) -> str:
    """The task for a chat: earlier turns as context, then what to answer now.

    ``after_tools``: the chat ends with tool results, so the task is to continue from them
    towards the latest user message (None: the chat has none).
    """
    context = "Conversation so far (context):\n" + "\n\n".join(history)
    if after_tools:
        goal = (
            f"take the next step for the latest user message:\n{latest.strip()}"
            if latest and latest.strip()
            else "take the next step."
        )
        return (
            f"{context}\n\nThe tools called in the last assistant turn have returned their "
            f"results (above). Continue from them: {goal}"
        )
    return f"{context}\n\nLatest user message (answer this):\n{(latest or '').strip()}"


def conversation_turn(role: str, text: str, *, name: str | None = None) -> str:
    """One earlier turn of a chat, as the context lists it."""
    who = {"user": "User", "assistant": "Assistant"}.get(role, role.capitalize())
    return f"{who} ({name}): {text.strip()}" if name else f"{who}: {text.strip()}"


def tool_calls_turn(text: str, calls: list[tuple[str, str, str]]) -> str:
    """An assistant turn that called tools; ``calls`` are (id, name, arguments JSON)."""
    lines = [f"Assistant: {text.strip()}"] if text.strip() else []
    lines.append("Assistant called tools:")
    lines += [f"- {name}({arguments}) [call id {cid}]" for cid, name, arguments in calls]
    return "\n".join(lines)


def tool_result_turn(name: str | None, call_id: str | None, text: str) -> str:
    """A tool's result, as the app sent it back."""
    tags = ", ".join(x for x in (name, f"call id {call_id}" if call_id else None) if x)
    return f"Tool result ({tags}): {text.strip()}" if tags else f"Tool result: {text.strip()}"
