"""The OpenAI chat-completions wire format, as far as a council can honour it.

Requests are validated here, at the boundary, so that what a council cannot do (``n > 1``,
logprobs, the deprecated ``functions``) is refused with a 400 that names the parameter, and
responses are built in one place so the JSON and the SSE shapes stay the same. Tools,
``tool_choice``, ``parallel_tool_calls`` and JSON ``response_format``s are honoured: the council
deliberates on the next step (``nsed.steps``), returned as ``message.tool_calls`` or content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nsed.agents.conversation import ChatMessage
from nsed.config import format_validation_error
from nsed.results import Deliberation
from nsed.server.errors import ApiError
from nsed.steps import Step

# --- The request ------------------------------------------------------------------------------

# Sane ranges for numbers a client sends (finite everywhere: no Infinity or NaN). What the
# server allows on top (rounds) is ServerSettings'; see limits.check_request_limits.
MAX_TOKENS = 1_000_000
MAX_BUDGET_USD = 1_000_000.0
MAX_BUDGET_TOKENS = 1_000_000_000
SEED_RANGE = {"ge": -(2**63), "le": 2**64 - 1}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class NsedOptions(BaseModel):
    """The ``"nsed": {...}`` extension of a chat request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rounds: int | None = Field(default=None, ge=1, le=50, description="max_rounds")
    min_rounds: int | None = Field(default=None, ge=1, le=50)
    kind: Literal["auto", "math", "code", "text"] | None = None
    protocol: Literal["v1", "v2"] | None = None
    budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD)
    budget_tokens: int | None = Field(default=None, ge=1, le=MAX_BUDGET_TOKENS)
    qv_mode: Literal["budget_capped", "budget_signed", "sqrt_raw"] | None = None
    stream_events: bool = False
    stream_reasoning: bool | None = Field(
        default=None,
        description="stream progress as delta.reasoning_content (None: the server's default)",
    )


class ChatCompletionRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body, as far as a council can honour it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, **SEED_RANGE)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    # The next step of an agent app (nsed.steps): checked by translate.build_step_format.
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    nsed: NsedOptions | None = None
    # Accepted and ignored: they tune one model's sampling or the caller's bookkeeping.
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
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
        if self.functions or self.function_call not in (None, "none"):
            raise _Refused(
                "functions" if self.functions else "function_call",
                "functions and function_call are deprecated by OpenAI and not supported; "
                "send the same functions as tools (and tool_choice)",
            )
        if self.logprobs or self.top_logprobs:
            raise _Refused("logprobs", "logprobs are not available for a deliberated answer")
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
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to be a chat request") from None
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
                "protocol, budget_usd, budget_tokens, qv_mode, stream_events, stream_reasoning)"
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
    include_usage: bool = False  # stream_options.include_usage: every chunk has "usage"

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A ``chat.completion.chunk``; choices get the null fields the SDK expects."""
        for choice in choices:
            choice.setdefault("logprobs", None)
            choice.setdefault("finish_reason", None)
        if self.include_usage:
            extra.setdefault("usage", None)  # null on all but the last chunk, as OpenAI does
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
        """A ``chat.completion`` whose message is ``answer`` (the result's, stops applied), or
        the chosen step's tool calls."""
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
        tool_calls = result.step.tool_calls if result.step is not None else []
        if tool_calls:
            message["content"] = None
            message["tool_calls"] = [call.openai() for call in tool_calls]
        return {
            "id": f"chatcmpl-{self.run_id}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason_of(result),
                }
            ],
            "usage": usage_of(result),
            "nsed": summary_of(result),
        }


def finish_reason_of(result: Deliberation) -> str:
    """``tool_calls`` when the council's step calls tools, else ``stop``."""
    return "tool_calls" if result.step is not None and result.step.tool_calls else "stop"


def tool_call_deltas(step: Step, size: int = 80) -> list[dict[str, Any]]:
    """A step's tool calls as standard stream deltas: id and name, then the arguments' text."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(step.tool_calls):
        head = {"name": call.name, "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": head}]}
        )
        text = call.arguments_json()
        for start in range(0, len(text), size):
            piece = {"arguments": text[start : start + size]}
            deltas.append({"tool_calls": [{"index": index, "function": piece}]})
    return deltas
