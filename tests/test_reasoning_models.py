"""Reasoning models over real HTTP: the thinking channel, truncation, token budgets, structured
output that coexists with thinking. The scripted server answers like vLLM with a reasoning
parser (``reasoning`` / ``reasoning_content``), like a server without one (``<think>`` in the
content) and like a reply cut at ``max_tokens`` (``finish_reason: "length"``)."""

from __future__ import annotations

import json

import anyio
import pytest

from nsed import CallTruncated, Council, DeliberationConfig, deliberate
from nsed.agents.backend import EndpointPool, HTTPBackend
from nsed.agents.reasoning import is_reasoning_model, reasoning_parser_for, split_thinking
from nsed.config import ModelSpec
from tests.council_scripts import agent, is_proposal, is_review, judge_by_answer, team_dict
from tests.scripted_server import ChatRequest, Reply

NAMES = ["alpha", "beta", "gamma"]
THOUGHT = "PRIVATE-THOUGHT: 17*23 = 17*20 + 17*3 = 340 + 51"


def fast_config(**overrides: object) -> dict:
    base = {"max_rounds": 2, "min_rounds": 2, "embeddings": "off", "seed": 7, "kind": "math"}
    base.update(overrides)
    return base


def thinker(final: str, *, style: str = "reasoning_content", tokens: int | None = 40,
            finish: str = "stop", thought: str = THOUGHT, **kwargs):
    """A scripted reasoning model: ``agent(final)`` with its thinking sent the way ``style``
    says (a message field, ``<think>`` tags, or a lone closing tag)."""
    base = agent(final, judge=judge_by_answer("391"), **kwargs)

    def handler(request: ChatRequest) -> Reply:
        reply = base(request)
        if style in ("reasoning_content", "reasoning"):
            reply.reasoning, reply.reasoning_field = thought, style
        elif style == "tags":
            reply.content = f"<think>\n{thought}\n</think>\n\n{reply.content}"
        elif style == "lone":
            reply.content = f"{thought}\n</think>\n{reply.content}"
        if tokens is not None:
            reply.reasoning_tokens, reply.completion_tokens = tokens, tokens + 60
        if is_proposal(request):
            reply.finish_reason = finish
        return reply

    return handler


def route(server, finals: dict[str, str], **kwargs) -> None:
    for name, final in finals.items():
        server.route(name, thinker(final, **kwargs))


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "tags"])
def test_thinking_is_kept_apart_counted_and_never_shown_to_reviewers(scripted_server, style):
    route(scripted_server, {"alpha": "391", "beta": "391", "gamma": "392"}, style=style,
          tokens=40 if style != "tags" else None)
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=fast_config())
    assert result.final == "391"
    proposals = [p for r in result.rounds for p in r.proposals]
    assert all(THOUGHT in p.thinking for p in proposals)
    assert all(THOUGHT not in p.answer and "<think>" not in p.answer for p in proposals)
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert reviews and all("PRIVATE-THOUGHT" not in r.user for r in reviews)
    assert "PRIVATE-THOUGHT" not in result.answer
    calls = [c for r in result.rounds for c in r.calls]
    assert len(calls) == result.usage.calls == 12
    if style == "tags":  # not reported: estimated from the thinking's share of the text
        assert 0 < result.usage.reasoning_tokens < result.usage.completion_tokens
    else:
        assert result.usage.reasoning_tokens == 40 * 12
    assert result.usage.reasoning_tokens == sum(c.reasoning_tokens for c in calls)


def test_share_reasoning_shows_reviewers_the_thinking(scripted_server):
    route(scripted_server, {"alpha": "391", "beta": "391", "gamma": "392"})
    deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
               config=fast_config(share_reasoning=True))
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert reviews and all("PRIVATE-THOUGHT" in r.user for r in reviews)


def test_a_lone_closing_tag_ends_the_thinking_of_a_reasoning_model(scripted_server):
    # R1 distills (and Qwen3 thinking-2507) open the block in the chat template.
    models = {"deepseek-r1-distill-qwen-7b": "391", "deepseek-r1-distill-llama-8b": "391"}
    route(scripted_server, models, style="lone", tokens=None)
    team = team_dict(scripted_server.url, list(models))
    result = deliberate("What is 17 * 23?", team=team, config=fast_config(max_rounds=1,
                                                                           min_rounds=1))
    assert result.final == "391"
    assert all(THOUGHT in p.thinking and "</think>" not in p.answer
               for p in result.rounds[0].proposals)


def test_final_comes_from_the_content_first_then_the_thinking(scripted_server):
    def boxed_in_thinking_only(request: ChatRequest) -> Reply:
        reply = agent("391", judge=judge_by_answer("391"))(request)
        if is_proposal(request):
            reply.content = '{"reasoning": "done", "answer": "see my thinking"}'
            reply.reasoning = "So the product is \\boxed{391}."
        return reply

    scripted_server.route("alpha", boxed_in_thinking_only)
    route(scripted_server, {"beta": "390"})
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url,
                                                           ["alpha", "beta"]),
                        config=fast_config(max_rounds=1, min_rounds=1))
    finals = {p.agent: p.final for p in result.rounds[0].proposals}
    assert finals == {"alpha": "391", "beta": "390"}


def test_a_reply_cut_at_max_tokens_is_marked_everywhere(scripted_server):
    route(scripted_server, {"alpha": "391", "beta": "391"})
    route(scripted_server, {"gamma": "392"}, finish="length")

    async def run():
        council = Council(team_dict(scripted_server.url, NAMES), fast_config())
        return [event async for event in council.stream("What is 17 * 23?")]

    events = anyio.run(run)
    result = events[-1].deliberation
    cut = [e for e in events if isinstance(e, CallTruncated)]
    assert [(e.round, e.agent, e.phase) for e in cut] == [(1, "gamma", "propose"),
                                                        (2, "gamma", "propose")]
    assert all(e.max_tokens == 1024 for e in cut)  # gamma is not a reasoning model
    gamma = [p for r in result.rounds for p in r.proposals if p.agent == "gamma"]
    assert all(p.truncated and p.finish_reason == "length" for p in gamma)
    assert result.usage.truncated_calls == 2
    assert sum(r.agent_usage["gamma"].truncated_calls for r in result.rounds) == 2
    calls = [c for r in result.rounds for c in r.calls]
    assert {c.finish_reason for c in calls} == {"stop", "length"}
    assert all(c.max_tokens == 1024 and 0 < c.budget_used < 1 for c in calls)


def test_reasoning_models_get_the_per_kind_budget(scripted_server):
    route(scripted_server, {"qwen3-8b": "391", "gpt-oss-20b": "391", "plain": "391"})
    team = team_dict(scripted_server.url, ["qwen3-8b", "gpt-oss-20b", "plain"])
    team["models"][1]["max_tokens"] = 20_000  # a model's own cap wins
    deliberate("What is 17 * 23?", team=team, config=fast_config(max_rounds=1, min_rounds=1))
    caps = {r.model: r.body["max_tokens"] for r in scripted_server.requests}
    assert caps == {"qwen3-8b": 38_912, "gpt-oss-20b": 20_000, "plain": 1024}
    scripted_server.reset(keep_routes=True)
    deliberate("What is 17 * 23?", team=team,
               config=fast_config(max_rounds=1, min_rounds=1, kind="text",
                                  reasoning_max_tokens={"text": 4000}))
    assert {r.body["max_tokens"] for r in scripted_server.requests_for("qwen3-8b")} == {4000}


def test_a_cap_that_does_not_fit_the_context_is_lowered_once(scripted_server):
    def vllm_like(request: ChatRequest) -> Reply:
        if request.body["max_tokens"] + 500 > 32_768:
            message = (
                "This model's maximum context length is 32768 tokens. However, you requested "
                f"{request.body['max_tokens'] + 500} tokens (500 in the messages, "
                f"{request.body['max_tokens']} in the completion). Please reduce the length."
            )
            return Reply(status=400, error_body={"error": {"message": message}})
        return Reply(content="4", finish_reason="stop")

    scripted_server.route("m", vllm_like)

    async def go():
        async with EndpointPool() as pool:
            spec = ModelSpec(name="m", base_url=scripted_server.url, model="m")
            return await HTTPBackend(spec, pool).complete([{"role": "user", "content": "?"}],
                                                          max_tokens=38_912)

    completion = anyio.run(go)
    assert completion.text == "4" and completion.max_tokens == 32_268
    assert [r.body["max_tokens"] for r in scripted_server.requests] == [38_912, 32_268]


# --- structured = "auto" -----------------------------------------------------------------------


def formats(server, model: str) -> list[str | None]:
    return [(r.response_format or {}).get("type") for r in server.requests_for(model)]


def test_auto_sends_a_schema_to_plain_models_and_free_text_to_thinkers_until_it_is_safe(
    scripted_server,
):
    route(scripted_server, {"qwen3-8b": "391", "plain": "391"})
    route(scripted_server, {"qwen3-4b": "391"}, style="tags")
    team = team_dict(scripted_server.url, ["qwen3-8b", "plain", "qwen3-4b"])
    # JSON proposals, so that every call asks for a schema (v2's free-form proposals ask none).
    result = deliberate("What is 17 * 23?", team=team, config=fast_config(proposal_format="json"))
    assert result.final == "391"
    assert set(formats(scripted_server, "plain")) == {"json_schema"}
    # qwen3-8b's server returns the thinking apart (vLLM --reasoning-parser): the first call
    # goes out as free text, every later one with the grammar.
    assert formats(scripted_server, "qwen3-8b") == [None, "json_schema", "json_schema",
                                                    "json_schema"]
    # qwen3-4b's server leaves <think> in the content: a grammar would suppress it.
    assert formats(scripted_server, "qwen3-4b") == [None] * 4


def test_auto_falls_back_to_free_text_when_the_grammar_suppressed_the_thinking(
    scripted_server,
):
    def grammar_kills_thinking(request: ChatRequest) -> Reply:
        reply = thinker("391")(request)
        if request.response_format is not None:
            reply.reasoning = None
        return reply

    scripted_server.route("qwen3-8b", grammar_kills_thinking)
    route(scripted_server, {"plain": "391"})
    team = team_dict(scripted_server.url, ["qwen3-8b", "plain"])
    deliberate("What is 17 * 23?", team=team, config=fast_config(max_rounds=3, min_rounds=3))
    assert formats(scripted_server, "qwen3-8b") == [None, "json_schema"] + [None] * 4


def test_auto_treats_qwen3_with_thinking_off_as_a_plain_model(scripted_server):
    route(scripted_server, {"qwen3-8b": "391", "plain": "391"})
    team = team_dict(scripted_server.url, ["qwen3-8b", "plain"])
    team["models"][0]["extra_body"] = {"chat_template_kwargs": {"enable_thinking": False}}
    config = fast_config(max_rounds=1, min_rounds=1, proposal_format="json")
    deliberate("What is 17 * 23?", team=team, config=config)
    assert set(formats(scripted_server, "qwen3-8b")) == {"json_schema"}
    assert {r.body["max_tokens"] for r in scripted_server.requests_for("qwen3-8b")} == {1024}
    assert all(r.body["chat_template_kwargs"] == {"enable_thinking": False}
               for r in scripted_server.requests_for("qwen3-8b"))


def reviewing(request: ChatRequest) -> bool:
    """A review call, or the follow-up of one (its first user message is the review prompt)."""
    return any("· Reviewing]" in str(m.get("content")) for m in request.messages)


def test_a_free_text_review_that_cannot_be_read_gets_one_cheap_retry(scripted_server):
    def sloppy_reviewer(request: ChatRequest) -> Reply:
        if "could not be read" in request.user:  # the retry: now it answers in the format
            shown = request.candidates(str(request.messages[1]["content"]))
            reviews = [{"candidate": label, "score": 50, "critique": "ok"} for label in shown]
            return Reply(content=json.dumps({"reviews": reviews}))
        if is_review(request):
            return Reply(content="<think>hmm</think>All fine, B is best.")
        return thinker("391", style="tags", tokens=None)(request)

    scripted_server.route("qwen3-8b", sloppy_reviewer)
    route(scripted_server, {"plain": "391", "other": "392"})
    team = team_dict(scripted_server.url, ["qwen3-8b", "plain", "other"])
    result = deliberate("What is 17 * 23?", team=team, config=fast_config(max_rounds=1,
                                                                           min_rounds=1))
    reviews = [r for r in scripted_server.requests_for("qwen3-8b") if reviewing(r)]
    assert len(reviews) == 2
    retry = reviews[1]
    assert retry.response_format is None and retry.body["max_tokens"] <= 2048
    assert [m["role"] for m in retry.messages] == ["system", "user", "assistant", "user"]
    assert "hmm" not in retry.messages[2]["content"]  # the thinking is not sent back
    counted = [r for r in result.rounds[0].reviews
               if r.reviewer == "qwen3-8b" and r.dropped_reason is None]
    assert len(counted) == 2
    # the retry is paid for: its tokens are in the review call's record and the usage
    usage = result.rounds[0].agent_usage["qwen3-8b"]
    assert usage.calls == 2 and usage.completion_tokens == sum(
        c.completion_tokens for c in result.rounds[0].calls if c.agent == "qwen3-8b")


# --- the reasoning table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "parser"),
    [
        ("Qwen/Qwen3-8B", "qwen3"),
        ("Qwen/Qwen3-30B-A3B-Thinking-2507", "qwen3"),
        ("Qwen/Qwen3-30B-A3B-Instruct-2507", None),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", None),
        ("openai/gpt-oss-20b", "openai_gptoss"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek_r1"),
        ("Qwen/QwQ-32B", "deepseek_r1"),
        ("google/gemma-3-12b-it", None),
        ("meta-llama/Llama-3.1-8B-Instruct", None),
    ],
)
def test_reasoning_families(model, parser):
    spec = ModelSpec(name="x", base_url="http://x/v1", model="served", hf_model=model)
    assert reasoning_parser_for(spec) == parser
    assert is_reasoning_model(spec) == (parser is not None)
    assert is_reasoning_model(spec.model_copy(update={"reasoning": True}))
    assert not is_reasoning_model(spec.model_copy(update={"reasoning": False}))


@pytest.mark.parametrize(
    ("content", "opened", "expected"),
    [
        ("<think>a</think>b", False, ("a", "b")),
        ("  <think>\na\n</think>\n\nb", False, ("a", "b")),
        ("<think>cut in the middle", False, ("cut in the middle", "")),
        ("a</think>b", True, ("a", "b")),
        ("a</think>b", False, ("", "a</think>b")),
        ("plain answer", True, ("", "plain answer")),
        ("answer then <think>x</think>", True, ("", "answer then <think>x</think>")),
    ],
)
def test_split_thinking(content, opened, expected):
    assert split_thinking(content, ("<think>", "</think>"), opened=opened) == expected


def test_custom_think_tags(scripted_server):
    scripted_server.route("m", lambda r: "[[t]]ponder[[/t]]42")

    async def go():
        async with EndpointPool() as pool:
            spec = ModelSpec(name="m", base_url=scripted_server.url, model="m",
                             think_tags=("[[t]]", "[[/t]]"))
            return await HTTPBackend(spec, pool).complete([{"role": "user", "content": "?"}])

    completion = anyio.run(go)
    assert (completion.reasoning, completion.text) == ("ponder", "42")


def test_config_defaults_are_documented_values():
    config = DeliberationConfig()
    assert config.reasoning_max_tokens == {
        "auto": 38_912, "math": 38_912, "code": 38_912, "text": 32_768
    }
    assert config.share_reasoning is False
    assert ModelSpec(name="x", base_url="http://x/v1", model="m").structured == "auto"


def test_a_servers_request_max_tokens_caps_the_reasoning_budgets_too():
    from nsed.server.protocol import ChatCompletionRequest
    from nsed.server.translate import deliberation_config

    request = ChatCompletionRequest.model_validate(
        {"model": "nsed/council", "messages": [{"role": "user", "content": "?"}],
         "max_tokens": 5000})
    config = deliberation_config(DeliberationConfig(), request, None)
    assert config.max_tokens == 5000
    assert config.reasoning_max_tokens == {"auto": 5000, "math": 5000, "code": 5000, "text": 5000}
