"""The council as the model of an agent app, through the Python API: tool calls and typed output.

Scripted agents on a real HTTP server (``ScriptedServer``) propose steps in nsed's JSON format
or as native ``tool_calls``; the council deliberates and returns the chosen step. Arguments or
answers that do not validate never win, however well reviewers score them.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from nsed import Council, deliberate
from nsed.agents.prompts import STEP_SCHEMA_NAME
from nsed.errors import InvalidConversation, InvalidOutput, UnsupportedFormat
from nsed.orchestrator.events import Finished, ProposalReceived
from nsed.store import Store
from tests.council_scripts import (
    calls_then_answer,
    has_tool_results,
    is_formatting,
    is_proposal,
    is_review,
    judge_by_text,
    step_agent,
    step_json,
    team_dict,
)
from tests.helpers import catalog_dict
from tests.scripted_server import ChatRequest, ScriptedServer

NAMES = ["alpha", "beta", "gamma"]
ONE_ROUND = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "seed": 5}
SIX_BY_SEVEN = [("mul", {"a": 6, "b": 7})]


def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Answer(BaseModel):
    """The product and its unit."""

    value: int
    unit: str


def team(server: ScriptedServer, native: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = team_dict(server.url, NAMES)
    for model in spec["models"]:
        if model["name"] in native:
            model["tool_calling"] = "native"
    return spec


def proposals_of(server: ScriptedServer, model: str) -> list[ChatRequest]:
    return [r for r in server.requests_for(model) if is_proposal(r)]


# --- tool calls -------------------------------------------------------------------------------


def test_the_council_returns_the_tool_call_it_chose(scripted_server):
    right = calls_then_answer(SIX_BY_SEVEN, "42")
    scripted_server.route("alpha", step_agent(right, judge=judge_by_text('"a": 6')))
    scripted_server.route("beta", step_agent(calls_then_answer([("mul", {"a": 6, "b": 8})], "48")))
    scripted_server.route("gamma", step_agent(right, judge=judge_by_text('"a": 6, "b": 7')))
    result = deliberate("What is 6 times 7?", team=team(scripted_server), tools=[mul], **ONE_ROUND)
    assert result.step is not None and result.step.valid and result.step.kind == "tool_calls"
    [call] = result.step.tool_calls
    assert (call.name, call.arguments) == ("mul", {"a": 6, "b": 7})
    assert call.id.startswith("call_")
    assert result.final == 'mul({"a":6,"b":7})'
    assert result.answer == 'Tool calls:\n- mul({"a": 6, "b": 7})'
    # Every proposer saw the tool and was asked for a step under the nsed_step schema ...
    for request in proposals_of(scripted_server, "alpha"):
        assert request.schema_name == STEP_SCHEMA_NAME
        assert "- mul: Multiply two integers." in request.user
        schema = request.json_schema or {}
        assert "tool_calls" in json.dumps(schema) and '"enum": ["mul"]' in json.dumps(schema)
    # ... and every reviewer saw the tools and the steps to judge.
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert reviews and all("arguments (JSON Schema)" in r.user for r in reviews)
    assert all("whether it is the right tool" in r.user for r in reviews)


def test_arguments_that_do_not_validate_never_win(scripted_server):
    # Everyone loves the call with a string argument; it is not even on the ballot.
    fond_of_strings = judge_by_text('"a": "six"', good=95, bad=-90)
    bad = calls_then_answer([("mul", {"a": "six", "b": 7})], "42")
    good = calls_then_answer(SIX_BY_SEVEN, "42")
    scripted_server.route("alpha", step_agent(bad, judge=fond_of_strings))
    scripted_server.route("beta", step_agent(good, judge=fond_of_strings))
    scripted_server.route("gamma", step_agent(good, judge=fond_of_strings))
    result = deliberate(
        "What is 6 times 7?",
        team=team(scripted_server),
        tools=[mul],
        max_rounds=2,
        min_rounds=2,
        embeddings="off",
    )
    assert result.step is not None and result.step.tool_calls[0].arguments == {"a": 6, "b": 7}
    for record in result.rounds:
        invalid = next(p for p in record.proposals if p.agent == "alpha")
        assert invalid.step is not None
        assert invalid.step.errors == ["mul: a: 'six' is not of type 'integer'"]
        assert "alpha" not in record.support and record.winner in ("beta", "gamma")
        assert all(r.candidate != "alpha" for r in record.reviews)


def test_native_tool_calling_and_nsed_format_agree_on_equal_calls(scripted_server):
    # alpha calls natively; beta and gamma write the same call in nsed's format, with the
    # arguments in another order and 6.0 for 6: equal calls, so the council is unanimous.
    scripted_server.route("alpha", step_agent(calls_then_answer(SIX_BY_SEVEN, "42", native=True)))
    scripted_server.route("beta", step_agent(calls_then_answer([("mul", {"b": 7, "a": 6})], "42")))
    scripted_server.route(
        "gamma", step_agent(calls_then_answer([("mul", {"a": 6.0, "b": 7})], "42"))
    )
    result = deliberate(
        "What is 6 times 7?",
        team=team(scripted_server, native=("alpha",)),
        tools=[mul],
        max_rounds=4,
        min_rounds=1,
        embeddings="off",
    )
    assert result.stopped_because == "unanimous" and len(result.rounds) == 2
    assert all(record.unanimous for record in result.rounds)
    native = proposals_of(scripted_server, "alpha")[0]
    assert native.body["tools"][0]["function"]["name"] == "mul"
    assert "response_format" not in native.body  # the native way: tools, free content
    assert "tool-calling interface" in native.user
    assert proposals_of(scripted_server, "beta")[0].body.get("tools") is None
    assert {p.final for p in result.rounds[0].proposals} == {'mul({"a":6,"b":7})'}


def test_a_full_tool_loop_through_the_python_api(scripted_server):
    for name in NAMES:
        scripted_server.route(name, step_agent(calls_then_answer(SIX_BY_SEVEN, "6 times 7 is 42.")))
    spec = team(scripted_server)
    question = [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 6 times 7?"},
    ]
    first = deliberate(question, team=spec, tools=[mul], **ONE_ROUND)
    assert first.step is not None and first.step.kind == "tool_calls"
    messages = [*question, first.step.as_message()]
    for call in first.step.tool_calls:  # the app runs the tool it was asked for
        messages.append(
            {"role": "tool", "tool_call_id": call.id, "content": str(mul(**call.arguments))}
        )
    scripted_server.reset(keep_routes=True)
    second = deliberate(messages, team=spec, tools=[mul], **ONE_ROUND)
    assert second.step is not None and second.step.kind == "answer"
    assert second.answer == "6 times 7 is 42." and second.step.content == second.answer
    seen = proposals_of(scripted_server, "beta")[0]
    assert has_tool_results(seen)
    call_id = first.step.tool_calls[0].id
    assert f"Tool result (mul, call id {call_id}): 42" in seen.user
    assert f'- mul({{"a": 6, "b": 7}}) [call id {call_id}]' in seen.user
    assert "You are a calculator." in seen.system


def test_tool_choice_required_and_one_call_at_a_time(scripted_server):
    two = [("mul", {"a": 6, "b": 7}), ("mul", {"a": 1, "b": 2})]
    scripted_server.route("alpha", step_agent(lambda r: step_json(calls=two)))
    scripted_server.route("beta", step_agent(lambda r: step_json(answer="42")))
    scripted_server.route("gamma", step_agent(lambda r: step_json(calls=SIX_BY_SEVEN)))
    result = deliberate(
        "What is 6 times 7?",
        team=team(scripted_server),
        tools=[mul],
        tool_choice="required",
        parallel_tool_calls=False,
        **ONE_ROUND,
    )
    assert result.winner == "gamma" and result.step is not None
    errors = {p.agent: p.step.errors for p in result.rounds[0].proposals if p.step}
    assert errors == {
        "alpha": ["2 tool calls, but only one is allowed"],
        "beta": ["this step must call a tool"],
        "gamma": [],
    }
    request = proposals_of(scripted_server, "gamma")[0]
    assert "This step must call at least one of these tools." in request.user
    assert request.json_schema and request.json_schema["properties"]["tool_calls"]["maxItems"] == 1


def test_council_stream_carries_steps_and_ends_with_the_chosen_one(scripted_server):
    for name in NAMES:
        scripted_server.route(name, step_agent(calls_then_answer(SIX_BY_SEVEN, "42")))

    async def run() -> list:
        async with Council(team(scripted_server), ONE_ROUND) as council:
            return [e async for e in council.stream("What is 6 times 7?", tools=[mul])]

    events = anyio.run(run)
    proposals = [e for e in events if isinstance(e, ProposalReceived)]
    assert len(proposals) == 3
    assert all(e.proposal.step and e.proposal.step.tool_calls for e in proposals)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.deliberation.step is not None
    assert finished.deliberation.step.tool_calls[0].name == "mul"


def test_a_brokered_council_gives_replacement_seats_the_step_format(scripted_server, tmp_path):
    for name in NAMES:
        scripted_server.route(name, step_agent(calls_then_answer(SIX_BY_SEVEN, "42")))
    catalog = catalog_dict(scripted_server.url, {"alpha": 0.9, "beta": 0.8, "gamma": 0.7})
    council = Council(catalog=catalog, config=ONE_ROUND, store=Store(f"sqlite:///{tmp_path}/d.db"))
    result = anyio.run(lambda: council.run("What is 6 times 7?", tools=[mul]))
    assert result.step is not None and result.step.tool_calls[0].arguments == {"a": 6, "b": 7}


def test_bad_tools_and_chats_are_refused_before_any_call(scripted_server):
    scripted_server.route("*", step_agent(calls_then_answer(SIX_BY_SEVEN, "42")))
    broken = {"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}
    with pytest.raises(UnsupportedFormat, match="not a valid JSON Schema") as info:
        deliberate("q", team=team(scripted_server), tools=[broken], **ONE_ROUND)
    assert info.value.param == "tools.0.function.parameters"
    with pytest.raises(InvalidConversation, match="last non-system message") as chat:
        deliberate(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            team=team(scripted_server),
            **ONE_ROUND,
        )
    assert chat.value.param == "messages"
    assert scripted_server.requests == []


# --- typed answers ----------------------------------------------------------------------------


def test_response_model_returns_an_instance_and_invalid_answers_never_win(scripted_server):
    fond_of_strings = judge_by_text('"value": "391"', good=95, bad=-90)
    typed = step_json(answer={"value": 391, "unit": "none"})
    scripted_server.route(
        "alpha", step_agent(lambda r: step_json(answer={"value": "391"}), judge=fond_of_strings)
    )
    scripted_server.route("beta", step_agent(lambda r: typed, judge=fond_of_strings))
    scripted_server.route("gamma", step_agent(lambda r: typed, judge=fond_of_strings))
    result = deliberate(
        "What is 17 * 23?", team=team(scripted_server), response_model=Answer, **ONE_ROUND
    )
    assert isinstance(result.parsed, Answer) and result.parsed == Answer(value=391, unit="none")
    assert result.parsed_as(Answer) is result.parsed
    assert json.loads(result.answer) == {"value": 391, "unit": "none"}
    assert result.winner in ("beta", "gamma")
    alpha = result.rounds[0].proposals[0]
    assert alpha.step is not None and not alpha.step.valid
    # The proposal schema embeds the model's schema as the answer.
    schema = proposals_of(scripted_server, "beta")[0].json_schema or {}
    assert schema["properties"]["answer"]["required"] == ["value", "unit"]


def test_one_formatting_call_restates_an_answer_and_is_counted(scripted_server):
    prose = "The product is 391, no unit."
    restated = step_json(answer={"value": 391, "unit": "none"})
    for name in NAMES:
        scripted_server.route(name, step_agent(lambda r: prose, restate=lambda r: restated))
    result = deliberate(
        "What is 17 * 23?",
        team=team(scripted_server),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": Answer.model_json_schema(), "strict": True},
        },
        **ONE_ROUND,
    )
    assert result.parsed == {"value": 391, "unit": "none"}  # response_format: plain JSON
    assert result.step is not None and result.step.formatted
    formatting = [r for r in scripted_server.requests if is_formatting(r)]
    assert len(formatting) == 1 and prose in formatting[0].user
    assert "the answer is not JSON" in formatting[0].user or "unreadable" in formatting[0].user
    # 3 proposals (none valid, so no review) + the formatting call, all counted.
    assert result.usage.calls == 4 == len(scripted_server.requests)
    assert result.usage.total_tokens > sum(
        r.prompt_tokens + r.completion_tokens for r in result.rounds
    )


def test_an_answer_nobody_can_shape_is_a_typed_error(scripted_server):
    for name in NAMES:
        scripted_server.route(name, step_agent(lambda r: "391", restate=lambda r: "still 391"))
    with pytest.raises(InvalidOutput) as info:
        deliberate(
            "What is 17 * 23?", team=team(scripted_server), response_model=Answer, **ONE_ROUND
        )
    assert info.value.param == "response_format"
    assert "not even after one formatting call" in str(info.value)
    assert any(reason.startswith("formatting call") for reason in info.value.reasons)
    with pytest.raises(InvalidOutput) as tools_info:
        deliberate(
            "What is 6 times 7?",
            team=team(scripted_server),
            tools=[mul],
            tool_choice="mul",
            **ONE_ROUND,
        )
    assert tools_info.value.param == "tools"
