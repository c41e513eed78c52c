"""The OpenAI-compatible client against a real HTTP server: retries, quirks, limits, accounting."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from nsed.agents.backend import EndpointPool, HTTPBackend, parse_retry_after
from nsed.config import ModelSpec
from nsed.errors import BackendError, BackendTimeout, BackendUnreachable
from tests.scripted_server import Reply

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


def spec(url: str, **extra) -> ModelSpec:
    return ModelSpec(name="m", base_url=url, model="m", **extra)


def complete(model_spec: ModelSpec, **kwargs):
    async def go():
        async with EndpointPool() as pool:
            return await HTTPBackend(model_spec, pool).complete(MESSAGES, **kwargs)

    return anyio.run(go)


def test_usage_and_cost_accounting(scripted_server):
    scripted_server.route("m", lambda r: Reply(content="4", prompt_tokens=1000,
                                               completion_tokens=500))
    result = complete(spec(scripted_server.url, input_price=2.0, output_price=10.0))
    assert (result.prompt_tokens, result.completion_tokens) == (1000, 500)
    assert result.cost_usd == pytest.approx((1000 * 2.0 + 500 * 10.0) / 1e6)
    assert result.retries == 0


def test_retry_after_is_honoured(scripted_server):
    scripted_server.route("m", lambda r: "4")
    scripted_server.fail_next("m", [429], retry_after=0.6)
    started = time.perf_counter()
    result = complete(spec(scripted_server.url, max_retries=2))
    assert time.perf_counter() - started >= 0.6
    assert result.retries == 1 and result.text == "4"


def test_retries_exhausted_raise_backend_error_with_status(scripted_server):
    scripted_server.route("m", lambda r: Reply(status=503))
    with pytest.raises(BackendError) as info:
        complete(spec(scripted_server.url, max_retries=1))
    assert info.value.status == 503 and info.value.attempts == 2
    assert len(scripted_server.requests) == 2


def test_client_errors_are_not_retried(scripted_server):
    scripted_server.route("m", lambda r: Reply(status=401, error_body={
        "error": {"message": "invalid api key"}}))
    with pytest.raises(BackendError, match="invalid api key"):
        complete(spec(scripted_server.url, max_retries=3))
    assert len(scripted_server.requests) == 1


def test_dropped_connection_is_retried_once_on_a_fresh_connection(scripted_server):
    calls = []

    def handler(request):
        calls.append(1)
        return Reply(drop_connection=True) if len(calls) == 1 else Reply(content="4")

    scripted_server.route("m", handler)
    result = complete(spec(scripted_server.url, max_retries=0))
    assert result.text == "4" and result.retries == 1


def test_timeout_raises_backend_timeout(scripted_server):
    scripted_server.route("m", lambda r: Reply(content="4", delay_s=2.0))
    with pytest.raises(BackendTimeout, match=r"did not answer within 0\.3"):
        complete(spec(scripted_server.url, timeout_s=0.3))


def test_unreachable_endpoint():
    with pytest.raises(BackendUnreachable, match=r"127\.0\.0\.1:9"):
        complete(spec("http://127.0.0.1:9/v1", max_retries=0))


def test_json_schema_rejection_falls_back_to_json_object(scripted_server):
    def handler(request):
        if (request.response_format or {}).get("type") == "json_schema":
            return Reply(status=400, error_body={
                "error": {"message": "response_format json_schema is not supported"}})
        return Reply(content='{"answer": "4"}')

    scripted_server.route("m", handler)
    result = complete(spec(scripted_server.url), schema={"type": "object"})
    assert result.text == '{"answer": "4"}'
    kinds = [(r.response_format or {}).get("type") for r in scripted_server.requests]
    assert kinds == ["json_schema", "json_object"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("json_schema", "json_schema"), ("json_object", "json_object"), ("none", None)],
)
def test_structured_mode_per_model(scripted_server, mode, expected):
    scripted_server.route("m", lambda r: "{}")
    complete(spec(scripted_server.url, structured=mode), schema={"type": "object"})
    sent = scripted_server.requests[0].response_format
    assert (sent or {}).get("type") == expected


def test_n_choices_usage_counting_one_choice_is_scaled(scripted_server):
    # llama.cpp's quirk: usage counts the first choice only (the server sums per-choice
    # counts, so the later choices report 0 here).
    calls = []

    def handler(request):
        calls.append(1)
        return Reply(content="four " * 20, completion_tokens=25 if len(calls) == 1 else 0)

    scripted_server.route("m", handler)
    result = complete(spec(scripted_server.url), n=3)
    assert len(result.texts) == 3
    assert result.completion_tokens == 75 and result.usage_estimated


def test_per_endpoint_concurrency_limit(scripted_server):
    scripted_server.route("m", lambda r: Reply(content="4", delay_s=0.2))
    model_spec = spec(scripted_server.url, max_concurrency=2)

    async def go():
        async with EndpointPool() as pool:
            backend = HTTPBackend(model_spec, pool)
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(backend.complete, MESSAGES)

    anyio.run(go)
    assert scripted_server.max_in_flight == 2


def test_preflight_warns_about_an_unknown_model_id(scripted_server, caplog):
    scripted_server.set_models(["other-model"])

    async def go():
        async with EndpointPool() as pool:
            await HTTPBackend(spec(scripted_server.url), pool).preflight()

    with caplog.at_level(logging.WARNING, logger="nsed.backend"):
        anyio.run(go)
    assert "'m' is not listed" in caplog.text


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0.5", 0.5), (None, None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_parse_retry_after(header, expected):
    assert parse_retry_after(header) == expected


def test_native_tool_params_are_sent_and_tool_calls_come_back(scripted_server):
    call = {"id": "c1", "type": "function", "function": {"name": "mul", "arguments": '{"a": 6}'}}
    scripted_server.route("m", lambda r: Reply(tool_calls=[call]))
    params = {"tools": [{"type": "function", "function": {"name": "mul"}}], "tool_choice": "auto"}
    result = complete(spec(scripted_server.url), tool_params=params)
    assert result.tool_calls == [call] and result.text == ""
    assert result.finish_reason == "tool_calls" and not result.truncated
    body = scripted_server.requests[0].body
    assert body["tools"] == params["tools"] and body["tool_choice"] == "auto"
    plain = complete(spec(scripted_server.url))
    assert "tools" not in scripted_server.requests[-1].body and plain.tool_calls == [call]
