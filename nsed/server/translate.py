"""How a chat request becomes a deliberation: the question, the config and the council to run.

* the last message must be a user message (the question) or tool results (the council continues
  from them); earlier turns, tool calls and tool results included, are prepended as
  conversation context (``nsed.agents.conversation``); system (and developer) messages become
  ``DeliberationConfig.system_context``, which every agent sees in its system prompt;
* ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` / ``response_format`` become the
  step's format (``nsed.steps.step_format``); a bad tool or schema is a 400 naming the field;
* ``temperature`` / ``top_p`` replace every model's value (replicas keep their diversity
  offset, see ``TeamSpec.agents``); ``max_tokens`` / ``max_completion_tokens`` cap every agent
  call (proposals and reviews), not only the answer; ``seed`` seeds the label shuffling;
* ``"nsed": {...}`` sets rounds, min_rounds, kind, protocol, budget_usd, budget_tokens and
  qv_mode (and ``stream_reasoning``, read by the response);
* ``stop`` is applied to the final answer text: it is cut before the first stop sequence (not
  to tool calls or JSON answers, which would no longer parse).
"""

from __future__ import annotations

from typing import Any

from nsed.agents.conversation import ChatMessage, render_conversation
from nsed.config import DeliberationConfig, ModelSpec, TeamSpec
from nsed.council import Council, make_config
from nsed.errors import ConfigError, InvalidConversation, UnsupportedFormat
from nsed.server.errors import ApiError
from nsed.server.protocol import ChatCompletionRequest, NsedOptions
from nsed.steps import StepFormat, step_format


def build_task(messages: list[ChatMessage]) -> tuple[str, str | None]:
    """(question, system context) from a chat: the latest turn, earlier turns as context."""
    try:
        conversation = render_conversation(messages)
    except InvalidConversation as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    return conversation.task, conversation.system_context


def build_step_format(req: ChatCompletionRequest) -> StepFormat | None:
    """The step's format from the request's tool and response-format fields (None: plain)."""
    try:
        return step_format(
            tools=req.tools,
            tool_choice=req.tool_choice,
            parallel_tool_calls=req.parallel_tool_calls,
            response_format=req.response_format,
        )
    except UnsupportedFormat as exc:
        raise ApiError(400, str(exc), param=exc.param) from None


def deliberation_config(
    base: DeliberationConfig, req: ChatCompletionRequest, system_context: str | None
) -> DeliberationConfig:
    """``base`` with the request's options; rounds and min_rounds are kept consistent."""
    opts = req.nsed or NsedOptions()
    overrides: dict[str, Any] = {
        "max_rounds": opts.rounds,
        "min_rounds": opts.min_rounds,
        "kind": opts.kind,
        "protocol": opts.protocol,
        "qv_mode": opts.qv_mode,
        "budget_usd": opts.budget_usd,
        "budget_tokens": opts.budget_tokens,
        "seed": req.seed,
        "max_tokens": req.token_cap(),
    }
    cap = req.token_cap()
    if cap is not None:  # reasoning models' per-kind budgets are capped too
        overrides["reasoning_max_tokens"] = {
            kind: min(budget, cap) for kind, budget in base.reasoning_max_tokens.items()
        }
    if opts.rounds is not None and opts.min_rounds is None:
        overrides["min_rounds"] = min(opts.rounds, base.min_rounds)
    if opts.min_rounds is not None and opts.rounds is None:
        overrides["max_rounds"] = max(opts.min_rounds, base.max_rounds)
    if system_context:
        parts = [p for p in (base.system_context, system_context) if p]
        overrides["system_context"] = "\n\n".join(parts)
    try:
        return make_config(base, **overrides)
    except ConfigError as exc:
        raise ApiError(400, f"invalid nsed options: {exc}", param="nsed") from None


def _sampled(
    spec: ModelSpec, temperature: float | None, top_p: float | None, max_tokens: int | None
) -> ModelSpec:
    update: dict[str, Any] = {}
    if temperature is not None and spec.temperature != temperature:
        update["temperature"] = temperature
    if top_p is not None and spec.top_p != top_p:
        update["top_p"] = top_p
    if max_tokens is not None and spec.max_tokens is not None and spec.max_tokens > max_tokens:
        update["max_tokens"] = max_tokens
    return spec.model_copy(update=update) if update else spec


def apply_sampling(
    council: Council,
    config: DeliberationConfig,
    *,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
) -> Council:
    """The council to run: ``council`` itself, or a copy whose models use the request's sampling.

    A copy shares the council's open connection pool (so per-request variants neither open
    sockets of their own nor exceed an endpoint's concurrency limit); a catalog copy also shares
    the broker's store, policy and live-load cache.
    """
    broker = council.broker
    if broker is not None:
        entries = broker.catalog.models
        changed = [_sampled(e, temperature, top_p, max_tokens) for e in entries]
        if all(a is b for a, b in zip(changed, entries, strict=True)):
            return council
        from nsed.broker.broker import Broker

        catalog = broker.catalog.model_copy(update={"models": changed})
        variant = Broker(
            catalog,
            policy=broker.policy,
            agency=broker.agency_policy,
            free_agency=broker.free_agency,
            store=broker.store,
            metrics=broker.metrics,
            clock=broker.clock,
        )
        return Council(
            config=config, broker=variant, vote_weights=council.vote_weights, pool=council.pool
        )
    team = council.team
    models = [_sampled(m, temperature, top_p, max_tokens) for m in team.models]
    if all(a is b for a, b in zip(models, team.models, strict=True)):
        return council
    return Council(
        TeamSpec(models=models), config, vote_weights=council.vote_weights, pool=council.pool
    )


def apply_stop(text: str, stops: list[str]) -> str:
    """``text`` cut before the earliest stop sequence (unchanged when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
