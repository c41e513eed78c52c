"""``nsed serve`` through the official OpenAI SDK: the council behaves like any chat model.

Every test talks HTTP to a real uvicorn server on 127.0.0.1 (``BackgroundServer``) whose
councils are scripted agents on another real server (``ScriptedServer``). Clients are built with
``max_retries=0`` so that 429/5xx answers reach the assertions instead of being retried.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nsed.broker.catalog import Catalog
from nsed.config import DeliberationConfig, TeamSpec
from nsed.results import Deliberation
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings, load_api_keys
from nsed.server.cli import build_settings
from tests.council_scripts import agent, is_proposal, judge_by_answer, team_dict
from tests.scripted_server import Reply, ScriptedServer

FAST = ["alpha", "beta", "gamma"]
SLOW = ["slow-a", "slow-b", "slow-c"]
BROKEN = ["broken-a", "broken-b"]
QUESTION = "What is 17 * 23?"
SLOW_DELAY_S = 0.5


def config(**overrides: object) -> DeliberationConfig:
    base: dict[str, object] = {
        "max_rounds": 1,
        "min_rounds": 1,
        "embeddings": "off",
        "kind": "math",
        "seed": 3,
    }
    base.update(overrides)
    return DeliberationConfig.model_validate(base)


def council(url: str, names: list[str], **overrides: object) -> CouncilSpec:
    return CouncilSpec(
        team=TeamSpec.model_validate(team_dict(url, names)), config=config(**overrides)
    )


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedServer]:
    """Scripted agents: fast (majority 391), slow (every reply after a delay), broken (500)."""
    with ScriptedServer() as server:
        for name, final in zip(FAST, ["391", "391", "392"], strict=True):
            server.route(name, agent(final, judge=judge_by_answer("391")))
        for name in SLOW:
            server.route(name, agent("391", delay_s=SLOW_DELAY_S))
        for name in BROKEN:
            server.route(name, lambda request: Reply(status=500))
        yield server


def settings(agents: ScriptedServer, **limits: object) -> ServerSettings:
    return ServerSettings(
        councils={
            "council": council(agents.url, FAST),
            "slow": council(agents.url, SLOW, max_rounds=3, min_rounds=3),
            "broken": council(agents.url, BROKEN),
        },
        **limits,
    )


@pytest.fixture(scope="module")
def nsed(agents: ScriptedServer) -> Iterator[BackgroundServer]:
    """The shared server: default limits, no auth."""
    with BackgroundServer(settings(agents, heartbeat_s=0.2)) as server:
        yield server


@pytest.fixture
def serve(agents: ScriptedServer) -> Iterator[Callable[..., BackgroundServer]]:
    """Start a server with other settings for one test."""
    started: list[BackgroundServer] = []

    def make(**limits: object) -> BackgroundServer:
        server = BackgroundServer(settings(agents, **limits)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def client(server: BackgroundServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=30)


def ask(model: str = "nsed/council", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": QUESTION}], **extra}


def metric(server: BackgroundServer, name: str, **labels: str) -> float:
    """The value of one sample from GET /metrics (0 when absent)."""
    text = httpx.get(f"{server.root}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --- the happy path ---------------------------------------------------------------------------


def test_models_list_health_and_model_lookup(nsed):
    models = client(nsed).models.list()
    assert sorted(m.id for m in models.data) == ["nsed/broken", "nsed/council", "nsed/slow"]
    assert all(m.owned_by == "nsed" for m in models.data)
    assert client(nsed).models.retrieve("nsed/slow").id == "nsed/slow"
    health = httpx.get(f"{nsed.root}/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0


def test_completion_is_the_winning_answer_with_the_deliberations_usage(nsed):
    raw = client(nsed).chat.completions.with_raw_response.create(
        model="nsed/council", messages=[{"role": "user", "content": QUESTION}]
    )
    completion = raw.parse()
    run_id = raw.headers["x-nsed-run-id"]
    trace = httpx.get(f"{nsed.url}/deliberations/{run_id}")
    assert trace.status_code == 200
    result = Deliberation.model_validate_json(trace.text)
    assert result.id == run_id and result.final == "391"
    assert completion.object == "chat.completion" and completion.model == "nsed/council"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == result.answer
    assert "\\boxed{391}" in result.answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == result.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens == result.usage.completion_tokens > 0
    assert completion.usage.total_tokens == result.usage.total_tokens
    missing = httpx.get(f"{nsed.url}/deliberations/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["error"]["code"]


def test_system_message_history_and_sampling_reach_every_agent(nsed, agents):
    agents.reset(keep_routes=True)
    completion = client(nsed).chat.completions.create(
        model="nsed/council",
        messages=[
            {"role": "system", "content": "Answer for a pirate audience."},
            {"role": "user", "content": "Earlier question about parrots"},
            {"role": "assistant", "content": "Earlier answer about parrots"},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0.25,
        max_tokens=300,
        stop=["{391}"],
    )
    # stop is applied to the final answer text
    assert completion.choices[0].message.content == "The answer is \\boxed"
    requests = agents.requests
    assert len(requests) == 6  # 3 proposals + 3 reviews, one round
    for request in requests:
        assert "Answer for a pirate audience." in request.system
        assert request.body["temperature"] == 0.25
        assert request.body["max_tokens"] == 300
    proposals = [r for r in requests if is_proposal(r)]
    assert len(proposals) == 3
    for request in proposals:
        assert "Earlier question about parrots" in request.user
        assert "Earlier answer about parrots" in request.user
        assert QUESTION in request.user


def test_async_client_and_sse_stream_end_with_content_and_done(nsed):
    async def run() -> tuple[list, str]:
        async with openai.AsyncOpenAI(base_url=nsed.url, api_key="x", max_retries=0) as aclient:
            done = await aclient.chat.completions.create(**ask())
            stream = await aclient.chat.completions.create(
                **ask(), stream=True, stream_options={"include_usage": True}
            )
            return [chunk async for chunk in stream], done.choices[0].message.content

    chunks, plain_answer = asyncio.run(run())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain_answer and "\\boxed{391}" in text
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    run_id = chunks[0].id.removeprefix("chatcmpl-")
    result = Deliberation.model_validate_json(httpx.get(f"{nsed.url}/deliberations/{run_id}").text)
    assert chunks[-1].usage.total_tokens == result.usage.total_tokens
    # On the wire: progress as SSE comments, the answer after them, then [DONE].
    with httpx.stream("POST", f"{nsed.url}/chat/completions", json=ask(stream=True)) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-nsed-run-id"]
        lines = [line for line in resp.iter_lines() if line]
    comments = [i for i, line in enumerate(lines) if line.startswith(":")]
    contents = [i for i, line in enumerate(lines) if '"content": "The' in line]
    assert any("round 1 scored" in lines[i] for i in comments)
    assert comments and contents and max(comments) < min(contents)
    assert lines[-1] == "data: [DONE]"


def test_stream_events_chunks_carry_nsed_event(nsed):
    stream = client(nsed).chat.completions.create(
        **ask(), stream=True, extra_body={"nsed": {"stream_events": True}}
    )
    chunks = list(stream)
    events = [(c.model_extra or {}).get("nsed_event") for c in chunks]
    types = [e["type"] for e in events if e]
    assert types[0] == "round_started" and types[-1] == "finished"
    assert types.count("proposal") == 3 and types.count("review") == 3
    assert "round_scored" in types
    assert all(not c.choices for c, e in zip(chunks, events, strict=True) if e)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "\\boxed{391}" in text


def reasoning_stream(server: BackgroundServer, **extra: object) -> list:
    stream = client(server).chat.completions.create(**ask(), stream=True, **extra)
    return [c for c in stream if c.choices]


def thinking_of(chunks: list) -> str:
    return "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                   for c in chunks)


def test_stream_reasoning_sends_progress_to_the_thinking_pane(nsed, serve):
    chunks = reasoning_stream(nsed, extra_body={"nsed": {"stream_reasoning": True}})
    thinking = thinking_of(chunks)
    assert "round 1 started" in thinking and "round 1 scored: winner" in thinking
    assert thinking.count("proposal from") == 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "\\boxed{391}" in text and "round 1" not in text  # the content stays the answer
    last_thinking = max(i for i, c in enumerate(chunks)
                        if (c.choices[0].delta.model_extra or {}).get("reasoning_content"))
    first_content = min(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
    assert last_thinking < first_content
    assert thinking_of(reasoning_stream(nsed)) == ""  # off by default
    on = serve(stream_reasoning=True)
    assert "round 1 scored" in thinking_of(reasoning_stream(on))
    off = reasoning_stream(on, extra_body={"nsed": {"stream_reasoning": False}})
    assert thinking_of(off) == ""


def test_truncated_calls_are_counted_and_a_malformed_reply_still_answers(agents):
    cut = agent("391", judge=judge_by_answer("391"))

    def truncating(request):
        reply = cut(request)
        reply.finish_reason = "length"
        return reply

    agents.route("cut-a", truncating)
    agents.route("bad-b", lambda r: Reply(raw_message={"role": "assistant", "content": 391}))
    agents.route("ok-c", agent("391", judge=judge_by_answer("391")))
    spec = council(agents.url, ["cut-a", "bad-b", "ok-c"])
    with BackgroundServer(ServerSettings(councils={"council": spec})) as server:
        completion = client(server).chat.completions.create(**ask())
        assert "\\boxed{391}" in (completion.choices[0].message.content or "")
        assert metric(server, "nsed_truncated_calls_total", council="council",
                      phase="propose") == 1
        assert metric(server, "nsed_truncated_calls_total", council="council",
                      phase="review") == 1
        assert metric(server, "nsed_failures_total", council="council", kind="agent_call") == 2


def test_nsed_options_set_rounds(nsed, agents):
    agents.reset(keep_routes=True)
    completion = client(nsed).chat.completions.create(
        **ask(), extra_body={"nsed": {"rounds": 2, "min_rounds": 2, "qv_mode": "sqrt_raw"}}
    )
    extra = completion.model_extra or {}
    assert extra["nsed"]["rounds"] == 2
    assert len(agents.requests) == 12


# --- errors -----------------------------------------------------------------------------------


def test_unknown_model_is_404_naming_the_available_ones(nsed):
    with pytest.raises(openai.NotFoundError) as info:
        client(nsed).chat.completions.create(**ask("gpt-4o"))
    error = info.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "nsed/council" in error["message"]
    assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"extra_body": {"nsed": {"roundz": 3}}}, "nsed.roundz", "unknown field"),
        ({"extra_body": {"nsed": {"rounds": 0}}}, "nsed.rounds", "greater than or equal to 1"),
        ({"extra_body": {"nsed": {"kind": "poetry"}}}, "nsed.kind", "math"),
        ({"extra_body": {"nsed": {"rounds": 2, "min_rounds": 3}}}, "nsed", "min_rounds"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown field"),
    ],
)
def test_bad_requests_are_400_with_a_clear_message(nsed, extra, param, words):
    with pytest.raises(openai.BadRequestError) as info:
        client(nsed).chat.completions.create(**ask(), **extra)
    assert info.value.body["param"] == param
    assert words in info.value.body["message"]
    assert info.value.body["type"] == "invalid_request_error"


def test_conversation_must_end_with_a_user_message(nsed):
    with pytest.raises(openai.BadRequestError) as info:
        client(nsed).chat.completions.create(
            model="nsed/council",
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        )
    assert "last non-system message must be a user message" in info.value.body["message"]
    bad_json = httpx.post(f"{nsed.url}/chat/completions", content=b"{nope")
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]


def test_all_backends_failing_is_502(nsed, tmp_path):
    with pytest.raises(openai.InternalServerError) as info:
        client(nsed).chat.completions.create(**ask("nsed/broken"))
    assert info.value.status_code == 502
    assert info.value.body["code"] == "quorum_lost"
    assert metric(nsed, "nsed_failures_total", council="broken", kind="backend_error") >= 1


def test_unreachable_backends_are_502(agents):
    closed = ScriptedServer().start()
    url = closed.url
    closed.stop()
    unreachable = ServerSettings(councils={"council": council(url, ["x", "y"])})
    with BackgroundServer(unreachable) as server, pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(**ask(), stream=True)
    assert info.value.status_code == 502 and info.value.body["code"] == "backend_error"
    assert "cannot connect" in info.value.body["message"]


def test_auth_needs_a_configured_bearer_key(agents, serve, tmp_path, caplog):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# server keys\nsk-right-key\n\n", encoding="utf-8")
    keys = load_api_keys(keys_file, env={"NSED_SERVER_API_KEYS": "sk-other, sk-third"})
    assert [k.get_secret_value() for k in keys] == ["sk-other", "sk-third", "sk-right-key"]
    server = serve(api_keys=keys)
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, "sk-wrong").chat.completions.create(**ask())
    assert info.value.body["code"] == "invalid_api_key"
    no_key = httpx.get(f"{server.url}/models")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.root}/health").status_code == 200
    completion = client(server, "sk-right-key").chat.completions.create(**ask())
    assert "\\boxed{391}" in (completion.choices[0].message.content or "")
    assert next(m.id for m in client(server, "sk-third").models.list()) == "nsed/council"
    assert "sk-right-key" not in caplog.text and "sk-wrong" not in caplog.text
    assert "sk-right-key" not in repr(server.settings)


def test_body_over_the_limit_is_413(serve):
    server = serve(max_body_bytes=4096)
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(
            model="nsed/council", messages=[{"role": "user", "content": "x" * 10_000}]
        )
    assert info.value.status_code == 413 and info.value.body["code"] == "request_too_large"
    # A chunked body without Content-Length is counted as it arrives.
    chunks = iter([b'{"model": "nsed/council", "messages": [', b" " * 5000, b"]}"])
    chunked = httpx.post(f"{server.url}/chat/completions", content=chunks)
    assert chunked.status_code == 413


def test_full_queue_is_429_with_retry_after(serve):
    server = serve(max_concurrent=1, max_queue=1)
    health = f"{server.root}/health"

    async def run() -> openai.RateLimitError:
        async with (
            openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0) as aclient,
            httpx.AsyncClient() as http,
        ):
            running = asyncio.create_task(aclient.chat.completions.create(**ask("nsed/slow")))
            waiting = asyncio.create_task(aclient.chat.completions.create(**ask("nsed/slow")))
            state: dict = {}
            for _ in range(200):
                state = (await http.get(health)).json()
                if state["in_flight"] == 1 and state["queued"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert state["in_flight"] == 1 and state["queued"] == 1, (
                state,
                running.done() and running.exception(),
                waiting.done() and waiting.exception(),
            )
            try:
                await aclient.chat.completions.create(**ask("nsed/slow"))
            except openai.RateLimitError as exc:
                return exc
            finally:
                running.cancel()
                waiting.cancel()
                await asyncio.gather(running, waiting, return_exceptions=True)
            raise AssertionError("the third request was not rejected")

    error = asyncio.run(run())
    assert error.status_code == 429
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.body["code"] == "server_busy"
    wait_for(lambda: metric(server, "nsed_deliberations_in_flight") == 0)
    assert metric(server, "nsed_deliberations_total", council="slow", status="rejected") == 1


def test_request_timeout_is_504(serve):
    server = serve(request_timeout_s=0.3)
    with pytest.raises(openai.InternalServerError) as info:
        client(server).chat.completions.create(**ask("nsed/slow"))
    assert info.value.status_code == 504 and info.value.body["code"] == "timeout"
    # Once streaming has begun, the timeout arrives as an error event the SDK raises.
    with pytest.raises(openai.APIError, match=r"did not finish within 0\.3 s"):
        list(client(server).chat.completions.create(**ask("nsed/slow"), stream=True))
    assert metric(server, "nsed_deliberations_total", council="slow", status="timeout") == 2


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "plain"])
def test_client_disconnect_cancels_the_deliberation(nsed, agents, stream):
    agents.reset(keep_routes=True)
    cancelled = {"council": "slow", "status": "cancelled"}
    before = metric(nsed, "nsed_deliberations_total", **cancelled)

    async def proposals_in_flight() -> None:
        while len(agents.requests) < 3:
            await asyncio.sleep(0.02)

    async def run() -> None:
        async with openai.AsyncOpenAI(base_url=nsed.url, api_key="x", max_retries=0) as aclient:
            if stream:
                chunks = await aclient.chat.completions.create(**ask("nsed/slow"), stream=True)
                first = await chunks.__anext__()
                assert first.choices[0].delta.role == "assistant"
                await proposals_in_flight()
                await chunks.close()
            else:
                task = asyncio.create_task(aclient.chat.completions.create(**ask("nsed/slow")))
                await proposals_in_flight()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    wait_for(lambda: metric(nsed, "nsed_deliberations_in_flight") == 0, timeout_s=3)
    settled = len(agents.requests)
    time.sleep(3 * SLOW_DELAY_S)  # without cancellation the reviews would arrive by now
    assert len(agents.requests) == settled == 3
    assert metric(nsed, "nsed_deliberations_total", **cancelled) == before + 1


def test_metrics_count_deliberations_rounds_tokens_and_latency(nsed):
    before = metric(nsed, "nsed_rounds_total", council="council")
    client(nsed).chat.completions.create(**ask(), extra_body={"nsed": {"rounds": 2}})
    text = httpx.get(f"{nsed.root}/metrics").text
    assert "# TYPE nsed_deliberation_seconds histogram" in text
    assert metric(nsed, "nsed_rounds_total", council="council") == before + 2
    assert metric(nsed, "nsed_deliberations_total", council="council", status="ok") >= 1
    assert metric(nsed, "nsed_tokens_total", council="council", type="prompt") > 0
    assert metric(nsed, "nsed_deliberation_seconds_count", council="council") >= 1
    assert metric(nsed, "nsed_deliberations_queued") == 0
    assert metric(nsed, "nsed_http_errors_total", status="404") >= 0


def test_traces_are_saved_to_the_store_and_read_back_after_restart(agents, tmp_path):
    url = f"sqlite:///{tmp_path / 'nsed.db'}"
    with BackgroundServer(settings(agents, store_url=url)) as first:
        raw = client(first).chat.completions.with_raw_response.create(**ask())
        run_id = raw.headers["x-nsed-run-id"]
    with BackgroundServer(settings(agents, store_url=url)) as second:
        reply = httpx.get(f"{second.url}/deliberations/{run_id}")
    assert reply.status_code == 200
    assert json.loads(reply.text)["id"] == run_id


def test_catalog_council_picks_its_team_per_question(agents, tmp_path):
    catalog = Catalog.model_validate_toml(
        {
            "models": [
                {"name": n, "base_url": agents.url, "model": n, "family": n, "max_retries": 0}
                for n in FAST
            ]
        }
    )
    brokered = ServerSettings(
        councils={"council": CouncilSpec(catalog=catalog, config=config())},
        store_url=f"sqlite:///{tmp_path / 'nsed.db'}",
    )
    agents.reset(keep_routes=True)
    with BackgroundServer(brokered) as server:
        plain = client(server).chat.completions.create(**ask())
        hot = client(server).chat.completions.with_raw_response.create(**ask(), temperature=0.3)
        trace = httpx.get(f"{server.url}/deliberations/{hot.headers['x-nsed-run-id']}").json()
    assert "\\boxed{391}" in (plain.choices[0].message.content or "")
    assert sorted(a["name"] for a in trace["agents"]) == FAST
    assert [r.body.get("temperature") for r in agents.requests[-6:]] == [0.3] * 6


def test_cli_settings_from_team_files_and_councils(agents, tmp_path):
    team = tmp_path / "team.toml"
    lines = []
    for name in FAST:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'base_url = "{agents.url}"',
            f'model = "{name}"',
        ]
    team.write_text("\n".join(lines) + "\n", encoding="utf-8")
    built = build_settings(
        team=team, councils=[f"math={team}"], max_concurrent=3, request_timeout_s=None
    )
    assert built.model_ids() == ["nsed/council", "nsed/math"]
    assert built.max_concurrent == 3 and built.request_timeout_s == 600
    with pytest.raises(ValueError, match="NAME=path"):
        build_settings(team=team, councils=["no-equals-sign"])
    with pytest.raises(ValueError, match="max_concurrent"):
        build_settings(team=Path(team), max_concurrent=0)
