"""Reasoning models: which models think before they answer, and where their thinking is.

Open reasoning models (Qwen3, gpt-oss, the DeepSeek-R1 distills, QwQ, ...) write a thinking
channel before the answer. A server with a reasoning parser (``vllm serve --reasoning-parser``,
llama.cpp's ``--reasoning-format``) returns it apart, as ``message.reasoning`` (newer vLLM) or
``message.reasoning_content``; a server without one leaves it at the start of ``content``
between ``<think>`` tags, or, when the chat template already opened the block, before a lone
``</think>``. nsed keeps that thinking out of what reviewers and the final answer see.

The family table is the one place that knows model families: the backend uses it to decide
whether a JSON grammar would suppress the thinking (``structured = "auto"``), the agent to pick
a reasoning model's token budget, and ``nsed up`` to pass vLLM the right ``--reasoning-parser``
(parser names as vLLM 0.11/0.12 register them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nsed.config import ModelSpec


@dataclass(frozen=True)
class ReasoningFamily:
    """Models whose id matches ``pattern`` think by default; vLLM parses them with ``parser``."""

    name: str
    pattern: re.Pattern[str]
    parser: str


def _family(name: str, pattern: str, parser: str) -> ReasoningFamily:
    return ReasoningFamily(name, re.compile(pattern, re.IGNORECASE), parser)


REASONING_FAMILIES: tuple[ReasoningFamily, ...] = (
    _family("gpt-oss", r"gpt-oss", "openai_gptoss"),
    _family("deepseek-r1", r"deepseek-r1|r1-distill", "deepseek_r1"),
    _family("qwq", r"qwq", "deepseek_r1"),
    # Qwen3's hybrid models think by default; its -Instruct and -Coder releases do not.
    _family("qwen3", r"qwen3(?!.*(instruct|coder))", "qwen3"),
    _family("glm-4.5", r"glm-4\.[5-9]", "glm45"),
    _family("hunyuan-a13b", r"hunyuan-a13b", "hunyuan_a13b"),
    _family("ernie-4.5-thinking", r"ernie-4\.5.*thinking", "ernie45"),
    _family("minimax-m2", r"minimax-m2", "minimax_m2_append_think"),
)


def family_of(model_id: str | None) -> ReasoningFamily | None:
    """The reasoning family a model id (or Hugging Face id) belongs to, if any."""
    if not model_id:
        return None
    return next((f for f in REASONING_FAMILIES if f.pattern.search(model_id)), None)


def reasoning_parser_for(spec: ModelSpec) -> str | None:
    """The ``--reasoning-parser`` vLLM needs to serve ``spec`` (None: not a reasoning model)."""
    family = family_of(spec.hf_model) or family_of(spec.model)
    return family.parser if family else None


def thinking_disabled(spec: ModelSpec) -> bool:
    """The request turns thinking off (Qwen3's ``enable_thinking``, Granite's ``thinking``)."""
    kwargs = spec.extra_body.get("chat_template_kwargs")
    if not isinstance(kwargs, dict):
        return False
    return kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False


def is_reasoning_model(spec: ModelSpec) -> bool:
    """Whether calls to ``spec`` think first: ``spec.reasoning`` if set, else a guess from the
    model family, unless ``extra_body`` turns thinking off."""
    if spec.reasoning is not None:
        return spec.reasoning
    if thinking_disabled(spec):
        return False
    return reasoning_parser_for(spec) is not None


def split_thinking(content: str, tags: tuple[str, str], *, opened: bool) -> tuple[str, str]:
    """(thinking, answer) of a reply whose thinking was left in ``content``.

    A leading ``<think>…</think>`` block is thinking; an open block without its end (a reply cut
    inside its thinking) is all thinking. With ``opened`` (a reasoning model, whose chat
    template may open the block in the prompt), text before a lone closing tag is thinking too.
    Anything else is all answer.
    """
    start, end = tags
    stripped = content.lstrip()
    if stripped.startswith(start):
        rest = stripped[len(start) :]
        cut = rest.find(end)
        if cut < 0:
            return rest.strip(), ""
        return rest[:cut].strip(), rest[cut + len(end) :].lstrip()
    if opened and start not in content:
        cut = content.find(end)
        if cut >= 0:
            return content[:cut].strip(), content[cut + len(end) :].lstrip()
    return "", content


__all__ = [
    "REASONING_FAMILIES",
    "ReasoningFamily",
    "family_of",
    "is_reasoning_model",
    "reasoning_parser_for",
    "split_thinking",
    "thinking_disabled",
]
