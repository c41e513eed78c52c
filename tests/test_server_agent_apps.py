"""``nsed serve`` as the model of agent apps, through real clients: tools and typed output.

The official ``openai`` SDK and LangChain's ``ChatOpenAI`` talk HTTP to a real uvicorn server
(``BackgroundServer``) whose councils are scripted agents on another real server
(``ScriptedServer``): a tool loop (the model asks for a tool, the app runs it and sends the
result, the model answers), typed output on a pydantic model, sync and streaming.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from nsed.config import DeliberationConfig, TeamSpec
from nsed.results import Deliberation
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings
from tests.council_scripts import (
    calls_then_answer,
    has_tool_results,
    is_proposal,
    step_agent,
    step_json,
    team_dict,
)
from tests.scripted_server import ChatRequest, Reply, ScriptedServer

TOOLERS = ["alpha", "beta", "gamma"]
TYPISTS = ["typist-a", "typist-b", "typist-c"]
STUBBORN = ["stubborn-a", "stubborn-b"]
QUESTION = "What is 6 times 7?"
MUL_TOOL = {
    "type": "function",
    "function": {
        "name": "mul",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


class Answer(BaseModel):
    """The product and its unit."""

    value: int
    unit: str


ANSWER = {"value": 42, "unit": "none"}


@tool
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def typist(request: ChatRequest) -> Reply | str:
    """Answers 42 in whatever shape is asked: a forced tool (function_calling) or JSON."""
    schema = json.dumps(request.json_schema or {})
    if '"tool_calls"' in schema:
        forced = schema.split('"enum": ["', 1)[1].split('"', 1)[0]
        return step_json(calls=[(forced, ANSWER)])
    return step_json(answer=ANSWER)


def config() -> DeliberationConfig:
    return DeliberationConfig(max_rounds=1, min_rounds=1, embeddings="off", seed=1)


def council(url: str, names: list[str], native: tuple[str, ...] = ()) -> CouncilSpec:
    spec = team_dict(url, names)
    for model in spec["models"]:
        if model["name"] in native:
            model["tool_calling"] = "native"
    return CouncilSpec(team=TeamSpec.model_validate(spec), config=config())


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        server.route(
            "alpha", step_agent(calls_then_answer([("mul", {"a": 6, "b": 7})], "42", native=True))
        )
        for name in TOOLERS[1:]:
            server.route(name, step_agent(calls_then_answer([("mul", {"a": 6, "b": 7})], "42")))
        for name in TYPISTS:
            server.route(name, step_agent(typist))
        for name in STUBBORN:
            server.route(name, step_agent(lambda r: "forty-two", restate=lambda r: "still prose"))
        yield server


@pytest.fixture(scope="module")
def nsed(agents: ScriptedServer) -> Iterator[BackgroundServer]:
    settings = ServerSettings(
        councils={
            "council": council(agents.url, TOOLERS, native=("alpha",)),
            "typed": council(agents.url, TYPISTS),
            "stubborn": council(agents.url, STUBBORN),
        },
        heartbeat_s=0.2,
    )
    with BackgroundServer(settings) as server:
        yield server


def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30)


def chat_model(server: BackgroundServer, model: str = "nsed/council", **extra: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.url, api_key="unused", model=model, max_retries=0, timeout=30, **extra
    )


def trace(server: BackgroundServer, completion_id: str) -> Deliberation:
    run_id = completion_id.removeprefix("chatcmpl-")
    reply = httpx.get(f"{server.url}/deliberations/{run_id}")
    return Deliberation.model_validate_json(reply.text)


# --- the openai SDK ---------------------------------------------------------------------------


def test_openai_sdk_gets_tool_calls_in_the_standard_shape(nsed):
    completion = client(nsed).chat.completions.create(
        model="nsed/council", messages=[{"role": "user", "content": QUESTION}], tools=[MUL_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "mul"
    assert json.loads(call.function.arguments) == {"a": 6, "b": 7}
    result = trace(nsed, completion.id)
    assert result.step is not None and result.step.tool_calls[0].id == call.id
    assert completion.usage is not None
    assert completion.usage.total_tokens == result.usage.total_tokens > 0


def test_openai_sdk_tool_loop_streamed_with_usage(nsed):
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    stream = client(nsed).chat.completions.create(
        model="nsed/council",
        messages=messages,
        tools=[MUL_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta_call.id or ""
            if delta_call.function is not None:
                entry["name"] += delta_call.function.name or ""
                entry["arguments"] += delta_call.function.arguments or ""
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]
    assert [c["name"] for c in calls.values()] == ["mul"]
    arguments = json.loads(calls[0]["arguments"])
    assert arguments == {"a": 6, "b": 7}
    assert all(c.usage is None for c in chunks[:-1])  # null on every chunk but the last
    body = {"model": "nsed/council", "messages": messages, "tools": [MUL_TOOL], "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{nsed.url}/chat/completions", json=body) as response:
        data = [json.loads(line[6:]) for line in response.iter_lines() if line[6:7] == "{"]
    assert all("usage" in d and d["usage"] is None for d in data[:-1]) and data[-1]["usage"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == trace(nsed, chunks[0].id).usage.total_tokens
    # The app runs the tool and sends the result back; the council answers.
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "mul", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": str(6 * 7)},
    ]
    final = client(nsed).chat.completions.create(
        model="nsed/council", messages=messages, tools=[MUL_TOOL]
    )
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "42" and not final.choices[0].message.tool_calls


def test_openai_sdk_parse_returns_a_pydantic_instance(nsed, agents):
    agents.reset(keep_routes=True)
    completion = client(nsed).chat.completions.parse(
        model="nsed/typed",
        messages=[{"role": "user", "content": QUESTION}],
        response_format=Answer,
    )
    message = completion.choices[0].message
    assert message.parsed == Answer(**ANSWER)
    assert json.loads(message.content or "") == ANSWER
    proposal = next(r for r in agents.requests if is_proposal(r))
    answer_schema = (proposal.json_schema or {})["properties"]["answer"]
    assert answer_schema["required"] == ["value", "unit"]  # the app's schema, embedded
    loose = client(nsed).chat.completions.create(
        model="nsed/typed",
        messages=[{"role": "user", "content": "Answer in JSON: " + QUESTION}],
        response_format={"type": "json_object"},
    )
    assert json.loads(loose.choices[0].message.content or "") == ANSWER


def test_a_schema_the_council_cannot_satisfy_is_a_400_never_invalid_json(nsed):
    with pytest.raises(openai.BadRequestError) as info:
        client(nsed).chat.completions.parse(
            model="nsed/stubborn",
            messages=[{"role": "user", "content": QUESTION}],
            response_format=Answer,
        )
    assert info.value.body["code"] == "invalid_output"
    assert info.value.body["param"] == "response_format"
    assert "not even after one formatting call" in info.value.body["message"]
    # Streaming: the failure arrives as an error event, and no content chunk precedes it.
    with httpx.stream(
        "POST",
        f"{nsed.url}/chat/completions",
        json={
            "model": "nsed/stubborn",
            "messages": [{"role": "user", "content": QUESTION}],
            "response_format": {"type": "json_object"},
            "stream": True,
        },
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    payloads = [json.loads(line.removeprefix("data: ")) for line in events]
    assert payloads[-1]["error"]["code"] == "invalid_output"
    contents = [p["choices"][0]["delta"].get("content") for p in payloads if p.get("choices")]
    assert all(not c for c in contents)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools.0.function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {"tools": [MUL_TOOL], "tool_choice": {"type": "function", "function": {"name": "div"}}},
            "tool_choice",
            "'div', which is not in tools",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "unknown"),
        (
            {"extra_body": {"functions": [{"name": "f"}]}},
            "functions",
            "send the same functions as tools",
        ),
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"extra_body": {"tool_chioce": "auto"}}, "tool_chioce", "unknown field"),
    ],
)
def test_agent_app_requests_nsed_cannot_honour_are_400s_naming_the_field(nsed, extra, param, words):
    with pytest.raises(openai.BadRequestError) as info:
        client(nsed).chat.completions.create(
            model="nsed/council", messages=[{"role": "user", "content": QUESTION}], **extra
        )
    assert info.value.body["param"] == param
    assert words in info.value.body["message"]


def test_openai_conventions_are_accepted_as_the_spec_says(nsed, agents):
    agents.reset(keep_routes=True)
    completion = client(nsed).chat.completions.create(
        model="nsed/council",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[MUL_TOOL],
        tool_choice="none",  # behaves as today: a plain deliberation
        stop=["never"],
        seed=11,
        user="user-1234",
        metadata={"app": "tests"},
        parallel_tool_calls=False,
    )
    assert completion.choices[0].finish_reason == "stop"
    result = trace(nsed, completion.id)
    assert result.step is None and result.config["seed"] == 11
    # plain proposals (free-form under v2: no schema), never steps
    proposals = [r for r in agents.requests if is_proposal(r)]
    assert proposals and all(r.schema_name != "nsed_step" for r in proposals)
    assert all("tools" not in r.body for r in agents.requests)


# --- LangChain --------------------------------------------------------------------------------


def run_tool_loop(llm: ChatOpenAI, *, streaming: bool) -> tuple[AIMessage, AIMessage]:
    """The classic agent loop: ask, run the tools the model calls, send results, answer."""
    bound = llm.bind_tools([mul])

    def step(messages: list) -> AIMessage:
        if not streaming:
            return bound.invoke(messages)
        total = None
        for chunk in bound.stream(messages):
            total = chunk if total is None else total + chunk
        assert total is not None
        return AIMessage(content=total.content, tool_calls=total.tool_calls)

    messages: list = [HumanMessage(QUESTION)]
    asked = step(messages)
    messages.append(asked)
    for call in asked.tool_calls:
        messages.append(mul.invoke(call))
    assert isinstance(messages[-1], ToolMessage) and messages[-1].content == "42"
    return asked, step(messages)


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_langchain_bind_tools_completes_a_tool_loop(nsed, agents, streaming):
    agents.reset(keep_routes=True)
    asked, answered = run_tool_loop(chat_model(nsed), streaming=streaming)
    assert [(c["name"], c["args"]) for c in asked.tool_calls] == [("mul", {"a": 6, "b": 7})]
    assert answered.content == "42" and not answered.tool_calls
    last_proposals = [r for r in agents.requests if is_proposal(r)][-3:]
    assert all(has_tool_results(r) for r in last_proposals)


def test_langchain_with_structured_output_returns_the_model(nsed):
    llm = chat_model(nsed, "nsed/typed")
    assert llm.with_structured_output(Answer).invoke(QUESTION) == Answer(**ANSWER)
    by_tool = llm.with_structured_output(Answer, method="function_calling")
    assert by_tool.invoke(QUESTION) == Answer(**ANSWER)
    streamed = list(
        llm.with_structured_output(Answer, method="json_mode").stream("Reply in JSON: " + QUESTION)
    )
    assert streamed and streamed[-1] == Answer(**ANSWER)


def test_langchain_async_tool_call(nsed):
    async def run() -> AIMessage:
        return await chat_model(nsed).bind_tools([mul]).ainvoke(QUESTION)

    message = asyncio.run(run())
    assert message.tool_calls[0]["args"] == {"a": 6, "b": 7}
