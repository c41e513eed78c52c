"""The body of a 200 chat-completion reply, validated before nsed reads a field of it.

Servers and gateways disagree on the shape of a reply: ``content`` may be a string or a list of
typed parts (``{"type": "text", "text": ...}``, and ``{"type": "thinking", ...}`` from some
providers), the thinking may come as ``message.reasoning`` (vLLM ≥ 0.10) or
``message.reasoning_content`` (older vLLM, llama.cpp, DeepSeek), and ``usage`` may lack
``completion_tokens_details``. All of those are read. Anything else that does not fit (content
an int, usage a string, token counts that are strings, floats, infinite or negative, a
``finish_reason`` that is not a string) raises :class:`MalformedReply`, which the backend turns
into a ``BackendError`` for that one call: the agent misses that phase, the deliberation goes on
with the others.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from nsed.config import format_validation_error

TokenCount = Annotated[StrictInt, Field(ge=0)]
_THINKING_PARTS = frozenset({"thinking", "reasoning", "reasoning_text"})


class MalformedReply(ValueError):
    """A 200 reply that is not a chat completion nsed can read; the message says why."""


class _Part(BaseModel):
    """One content part; unknown part types (images, audio, refusals) carry no answer text."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr = "text"
    text: StrictStr | None = None
    thinking: StrictStr | list[_Part] | None = None

    def answer_text(self) -> str:
        return self.text or "" if self.type == "text" else ""

    def thinking_text(self) -> str:
        if self.type not in _THINKING_PARTS:
            return ""
        if isinstance(self.thinking, list):
            return "".join(part.text or "" for part in self.thinking)
        return self.thinking or self.text or ""


_Part.model_rebuild()


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    content: StrictStr | list[_Part] | None = None
    reasoning: StrictStr | None = None
    reasoning_content: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: _Message
    finish_reason: StrictStr | None = None


class _Details(BaseModel):
    model_config = ConfigDict(extra="allow")

    reasoning_tokens: TokenCount | None = None


class _Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: TokenCount | None = None
    completion_tokens: TokenCount | None = None
    completion_tokens_details: _Details | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow")

    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None
    model: StrictStr | None = None


class ReplyContent(BaseModel):
    """What one reply says, in plain values."""

    texts: list[str]
    reasoning: str = Field(default="", description="the first choice's separate thinking")
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list, description="the first choice's native tool calls, as sent"
    )
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    model: str | None = None


def _text(message: _Message) -> tuple[str, str]:
    """(answer, thinking) of a message's content."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or "", ""
    return (
        "".join(part.answer_text() for part in content),
        "".join(part.thinking_text() for part in content),
    )


def read_reply(data: Any) -> ReplyContent:
    """The content of a parsed reply body; MalformedReply naming the first bad field."""
    if not isinstance(data, dict):
        raise MalformedReply(f"the body is a JSON {type(data).__name__}, not an object")
    try:
        reply = _Reply.model_validate(data)
    except ValidationError as exc:
        raise MalformedReply(format_validation_error(exc)) from None
    texts: list[str] = []
    part_thinking = ""
    for index, choice in enumerate(reply.choices):
        text, thinking = _text(choice.message)
        texts.append(text)
        if index == 0:
            part_thinking = thinking
    first = reply.choices[0].message
    reasoning = first.reasoning or first.reasoning_content or part_thinking
    usage = reply.usage
    details = usage.completion_tokens_details if usage else None
    return ReplyContent(
        texts=texts,
        reasoning=reasoning,
        tool_calls=list(first.tool_calls or []),
        finish_reason=reply.choices[0].finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        reasoning_tokens=details.reasoning_tokens if details else None,
        model=reply.model,
    )


__all__ = ["MalformedReply", "ReplyContent", "read_reply"]
