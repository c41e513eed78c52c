"""Reading a step (a final answer or tool calls) out of what a model returned.

Two sources: native tool calls (``message.tool_calls``, arguments as a JSON string) and nsed's
JSON step format in the content, ``{"reasoning", "answer"}`` or ``{"reasoning", "tool_calls":
[{"name", "arguments"}]}`` (OpenAI-shaped calls and a few aliases are accepted too), found and
repaired by :func:`nsed.agents.parsing.extract_json`. The step is then checked against its
format. Nothing is guessed: what cannot be read becomes an error on the step, which then
cannot win.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from nsed.agents.parsing import extract_json
from nsed.steps import Step, StepFormat, ToolCall

_REASONING_KEYS = ("reasoning", "thinking", "thought", "analysis", "rationale")
_ANSWER_KEYS = ("answer", "final_answer", "content", "response")
_CALLS_KEYS = ("tool_calls", "tool_call", "function_calls", "function_call", "calls")
_ARGUMENT_KEYS = ("arguments", "args", "parameters", "input")


class ParsedStep(BaseModel):
    """A step as read from a reply: the reasoning that came with it, the step (checked), and
    notes on how the reply departed from the format (repairs, aliases)."""

    reasoning: str = ""
    step: Step
    notes: list[str] = Field(default_factory=list)


def _first(obj: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return key, lowered[key]
    return None, None


def _arguments(raw: Any, name: str) -> tuple[dict[str, Any], str | None]:
    """Parsed arguments and the reason they are unusable (None: usable)."""
    if raw is None:
        return {}, None
    if isinstance(raw, str):
        if not raw.strip():
            return {}, None
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = extract_json(raw).value
    if isinstance(raw, dict):
        return raw, None
    return {}, f"{name}: the arguments are not a JSON object"


def _call(item: Any, index: int) -> tuple[ToolCall | None, str | None]:
    if not isinstance(item, Mapping):
        return None, f"tool call {index + 1} is not an object"
    function = item.get("function")
    source = function if isinstance(function, Mapping) else item
    name = source.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"tool call {index + 1} has no tool name"
    _, raw = _first(source, _ARGUMENT_KEYS)
    arguments, error = _arguments(raw, name.strip())
    call_id = item.get("id")
    return ToolCall(
        id=call_id if isinstance(call_id, str) else "", name=name.strip(), arguments=arguments
    ), error


def _calls(raw: Any) -> tuple[list[ToolCall], list[str]]:
    items = [raw] if isinstance(raw, Mapping) else raw if isinstance(raw, list) else None
    if items is None:
        return [], ["tool_calls is not a list of calls"]
    calls: list[ToolCall] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        call, error = _call(item, i)
        if call is not None:
            calls.append(call)
        if error is not None:
            errors.append(error)
    if not calls and not errors:
        errors.append("tool_calls is empty")
    return calls, errors


def _answer(value: Any, fmt: StepFormat) -> Step:
    """The answer step for a value the model wrote as its answer."""
    if fmt.answer is None:
        if value is None:
            return Step(content="")
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return Step(content=text)
    choices = [value]
    if isinstance(value, str):  # JSON sent as a string holding JSON
        with contextlib.suppress(ValueError):
            choices.append(json.loads(value))
    best = next((c for c in choices if fmt.check(_json_step(c)).valid), choices[-1])
    return _json_step(best)


def _json_step(value: Any) -> Step:
    return Step(content=json.dumps(value, ensure_ascii=False), parsed=value)


def _with_errors(fmt: StepFormat, step: Step, errors: list[str]) -> Step:
    checked = fmt.check(step)
    return checked.model_copy(update={"errors": errors + checked.errors}) if errors else checked


def parse_step(text: str, native_calls: list[dict[str, Any]], fmt: StepFormat) -> ParsedStep:
    """The step in a reply: native tool calls first, else nsed's JSON step format."""
    if native_calls:
        calls, errors = _calls(native_calls)
        return ParsedStep(
            reasoning=text.strip(), step=_with_errors(fmt, Step(tool_calls=calls), errors)
        )
    extraction = extract_json(text)
    notes = ["the JSON was repaired"] if extraction.repaired else []
    value = extraction.value
    if isinstance(value, dict):
        _, reasoning_value = _first(value, _REASONING_KEYS)
        reasoning = reasoning_value if isinstance(reasoning_value, str) else ""
        calls_key, raw_calls = _first(value, _CALLS_KEYS)
        if calls_key is not None and raw_calls not in (None, [], {}):
            calls, errors = _calls(raw_calls)
            step = _with_errors(fmt, Step(tool_calls=calls), errors)
            return ParsedStep(reasoning=reasoning, step=step, notes=notes)
        answer_key, answer_value = _first(value, _ANSWER_KEYS)
        if answer_key is not None:
            return ParsedStep(
                reasoning=reasoning, step=fmt.check(_answer(answer_value, fmt)), notes=notes
            )
        if fmt.answer is not None:
            notes.append("no answer field: the whole JSON object is the answer")
            return ParsedStep(step=fmt.check(_json_step(value)), notes=notes)
    body = text.strip()
    if fmt.answer is None and body:
        reason = extraction.error or "no answer or tool_calls field"
        notes.append(f"{reason}; the whole reply is the answer")
        return ParsedStep(step=fmt.check(Step(content=body)), notes=notes)
    if value is not None and fmt.answer is not None:  # a JSON array or scalar as the answer
        return ParsedStep(step=fmt.check(_json_step(value)), notes=notes)
    error = extraction.error or "no JSON step found"
    return ParsedStep(step=Step(content=body or None, errors=[f"unreadable step: {error}"]))
