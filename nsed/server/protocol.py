"""The OpenAI chat-completions wire format, as far as a council can honour it.

Requests are validated here, at the boundary, so that what a council cannot do (``n > 1``,
tools, logprobs, JSON response formats) is refused with a 400 that names the parameter, and
responses are built in one place so the JSON and the SSE shapes stay the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nsed.config import format_validation_error
from nsed.results import Deliberation
from nsed.server.errors import ApiError

# --- The request ------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message; fields beyond these (``refusal``, ``audio``...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class NsedOptions(BaseModel):
    """The ``"nsed": {...}`` extension of a chat request."""

    model_config = ConfigDict(extra="forbid")

    rounds: int | None = Field(default=None, ge=1, le=50, description="max_rounds")
    min_rounds: int | None = Field(default=None, ge=1, le=50)
    kind: Literal["math", "code", "text"] | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    budget_tokens: int | None = Field(default=None, ge=1)
    qv_mode: Literal["budget_signed", "sqrt_raw"] | None = None
    stream_events: bool = False
    stream_reasoning: bool | None = Field(
        default=None,
        description="stream progress as delta.reasoning_content (None: the server's default)",
    )


class ChatCompletionRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body, as far as a council can honour it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    nsed: NsedOptions | None = None
    # Accepted and ignored: they tune one model's sampling or the caller's bookkeeping.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        if self.n is not None and self.n != 1:
            raise _Refused(
                "n",
                f"n={self.n} is not supported: a council returns one deliberated answer; "
                "use n=1 (or send separate requests)",
            )
        if self.tools or self.functions or self.tool_choice not in (None, "none"):
            raise _Refused("tools", "tool calling is not supported by nsed; remove tools")
        if self.function_call not in (None, "none"):
            raise _Refused("function_call", "function calling is not supported; remove it")
        if self.logprobs or self.top_logprobs:
            raise _Refused("logprobs", "logprobs are not available for a deliberated answer")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _Refused(
                "response_format",
                "only response_format {'type': 'text'} is supported; ask for the format in the "
                "messages instead",
            )
        stops = self.stop_sequences()
        if len(stops) > 4 or any(not s for s in stops):
            raise _Refused("stop", "stop takes up to 4 non-empty strings")
        return self

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class _Refused(ValueError):
    """A well-formed request asks for something a council cannot do."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """The validated request from a raw body; ApiError 400 naming the offending field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, _Refused):
                raise ApiError(400, str(cause), param=cause.param) from None
        first = exc.errors()[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        message = format_validation_error(exc)
        if first["type"] == "extra_forbidden":
            message += (
                ' (unknown field; nsed options go under "nsed": rounds, min_rounds, kind, '
                "budget_usd, budget_tokens, qv_mode, stream_events, stream_reasoning)"
            )
        raise ApiError(400, message, param=param) from None


# --- The response -----------------------------------------------------------------------------


def usage_of(result: Deliberation) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def summary_of(result: Deliberation) -> dict[str, Any]:
    """The ``nsed`` field of a response: enough to find and judge the run."""
    return {
        "deliberation_id": result.id,
        "rounds": len(result.rounds),
        "stopped_because": result.stopped_because,
        "winner": result.winner,
        "final": result.final,
        "cost_usd": result.usage.cost_usd,
        "wall_s": result.wall_s,
    }


@dataclass(frozen=True)
class Envelope:
    """The fields every object of one response shares (id, created, model)."""

    run_id: str
    created: int
    model: str

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A ``chat.completion.chunk``; choices get the null fields the SDK expects."""
        for choice in choices:
            choice.setdefault("logprobs", None)
            choice.setdefault("finish_reason", None)
        return {
            "id": f"chatcmpl-{self.run_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def completion(self, answer: str, result: Deliberation) -> dict[str, Any]:
        """A ``chat.completion`` whose message is ``answer`` (the result's, stops applied)."""
        return {
            "id": f"chatcmpl-{self.run_id}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage_of(result),
            "nsed": summary_of(result),
        }
