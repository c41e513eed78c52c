"""The scripted OpenAI-compatible server behaves like an OpenAI endpoint, seen from real clients.

Every protocol test builds on this server, so its own behaviour is pinned here through httpx and
the official ``openai`` client: response shapes, streaming, errors, scripted failures, delays that
overlap, candidate parsing and a clean shutdown.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import anyio
import httpx
import openai
import pytest

from tests.scripted_server import ChatRequest, Reply, ScriptedServer

REVIEW_PROMPT = """[Round 2 · Reviewing]

Task:
What is 2 + 2?

Proposals to review:
=== Candidate A ===
It is 4.
Because 2 + 2 = 4.

=== Candidate B ===
It is 5.
=== End of candidates ===

Score each candidate from -100 to 100."""


def _chat_body(model: str = "m1", user: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": user}], **extra}


def _client(server: ScriptedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=10)


def _echo(req: ChatRequest) -> str:
    return f"echo: {req.user}"


# ---------------------------------------------------------------- response shape


def test_chat_completion_shape_via_httpx(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", _echo)
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body(user="abcd" * 5))
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "m1"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: " + "abcd" * 5},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = data["usage"]
    assert usage["prompt_tokens"] == 5  # 20 characters / 4
    assert usage["completion_tokens"] == 7  # 26 characters / 4, rounded up
    assert usage["total_tokens"] == 12


def test_request_is_recorded_with_parsed_fields(scripted_server: ScriptedServer) -> None:
    scripted_server.route("*", lambda req: "ok")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "model": "judge",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "system", "content": "Use JSON."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "..."},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
        "temperature": 0.3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "nsed_proposal", "schema": schema},
        },
    }
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=body, headers={"X-Trace": "abc"})
    assert r.status_code == 200
    [req] = scripted_server.requests
    assert req.model == "judge"
    assert req.system == "Be terse.\nUse JSON."
    assert req.user == "second"
    assert req.schema_name == "nsed_proposal"
    assert req.json_schema == schema
    assert req.body["temperature"] == 0.3
    assert req.headers["x-trace"] == "abc"
    assert req.candidate_enum() is None


def test_reply_fields_override_usage_and_headers(scripted_server: ScriptedServer) -> None:
    scripted_server.route(
        "m1",
        lambda req: Reply(
            content="x", prompt_tokens=111, completion_tokens=22, headers={"x-served-by": "s1"}
        ),
    )
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    assert r.headers["x-served-by"] == "s1"
    assert r.json()["usage"] == {"prompt_tokens": 111, "completion_tokens": 22, "total_tokens": 133}


def test_dict_reply_is_sent_as_json_content(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", lambda req: {"reasoning": "r", "answer": "4"})
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    content = r.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"reasoning": "r", "answer": "4"}


def test_n_choices_come_from_n_handler_calls(scripted_server: ScriptedServer) -> None:
    calls: list[int] = []

    def handler(req: ChatRequest) -> str:
        calls.append(1)
        return f"sample {len(calls)}"

    scripted_server.route("m1", handler)
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body(n=3))
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["message"]["content"] for c in choices] == ["sample 1", "sample 2", "sample 3"]
    assert len(scripted_server.requests) == 1


def test_openai_client_sync(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", _echo)
    completion = _client(scripted_server).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "echo: ping"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert scripted_server.requests[0].headers["authorization"] == "Bearer x"


def test_openai_client_streaming(scripted_server: ScriptedServer) -> None:
    text = "The answer is \\boxed{4}, because two and two make four."
    scripted_server.route("m1", lambda req: text)
    stream = _client(scripted_server).chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "ping"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage_seen = []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage_seen.append(chunk.usage.completion_tokens)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert "".join(pieces) == text
    assert len(pieces) > 1  # really split into several deltas
    assert finish == ["stop"]
    assert usage_seen == [(len(text) + 3) // 4]


def test_streaming_raw_sse_ends_with_done(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", lambda req: "abcdefgh")
    with httpx.stream(
        "POST", f"{scripted_server.url}/chat/completions", json=_chat_body(stream=True)
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == "abcdefgh"
    assert scripted_server.in_flight == 0


# ---------------------------------------------------------------- other endpoints


def test_models_health_metrics(scripted_server: ScriptedServer) -> None:
    scripted_server.route("alpha", _echo)
    scripted_server.route("beta", _echo)
    scripted_server.route("*", _echo)
    base = scripted_server.root
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    models = httpx.get(f"{base}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
    listed = _client(scripted_server).models.list()
    assert [m.id for m in listed.data] == ["alpha", "beta"]

    scripted_server.set_models(["only-this"])
    assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["only-this"]

    assert httpx.get(f"{base}/metrics").status_code == 404
    scripted_server.set_metrics("vllm:num_requests_running 3\n")
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert metrics.text == "vllm:num_requests_running 3\n"
    assert metrics.headers["content-type"].startswith("text/plain")


# ---------------------------------------------------------------- errors


def test_unknown_model_is_404_openai_error(scripted_server: ScriptedServer) -> None:
    scripted_server.route("known", _echo)
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body(model="nope"))
    assert r.status_code == 404
    error = r.json()["error"]
    assert "nope" in error["message"]
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        _client(scripted_server).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )


def test_malformed_body_is_400(scripted_server: ScriptedServer) -> None:
    scripted_server.route("*", _echo)
    url = f"{scripted_server.url}/chat/completions"
    bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    no_messages = httpx.post(url, json={"model": "m1"})
    assert no_messages.status_code == 400
    assert scripted_server.requests == []


def test_handler_error_status_and_body(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", lambda req: Reply(status=503, headers={"retry-after": "2"}))
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "server_error"

    custom = {"error": {"message": "context too long", "type": "invalid_request_error"}}
    scripted_server.route("m1", lambda req: Reply(status=400, error_body=custom))
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    assert (r.status_code, r.json()) == (400, custom)
    with pytest.raises(openai.BadRequestError, match="context too long"):
        _client(scripted_server).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )


def test_handler_exception_becomes_500_and_is_recorded(scripted_server: ScriptedServer) -> None:
    def broken(req: ChatRequest) -> str:
        raise ValueError("script bug")

    scripted_server.route("m1", broken)
    r = httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    assert r.status_code == 500
    assert "script bug" in r.json()["error"]["message"]
    assert [type(e) for e in scripted_server.handler_errors] == [ValueError]


def test_drop_connection_gives_no_response(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", lambda req: Reply(drop_connection=True))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body())
    with pytest.raises(openai.APIConnectionError):
        _client(scripted_server).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
    # The server keeps serving other connections afterwards.
    scripted_server.route("m1", _echo)
    assert httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body()).is_success
    assert scripted_server.in_flight == 0


# ---------------------------------------------------------------- fail_next


def test_fail_next_sequence_then_handler(scripted_server: ScriptedServer) -> None:
    handled: list[str] = []

    def handler(req: ChatRequest) -> str:
        handled.append(req.user)
        return "fine"

    scripted_server.route("m1", handler)
    scripted_server.route("m2", handler)
    scripted_server.fail_next("m1", [429, 500], retry_after=1.5)
    url = f"{scripted_server.url}/chat/completions"
    with httpx.Client() as client:
        other = client.post(url, json=_chat_body(model="m2", user="other"))
        first = client.post(url, json=_chat_body(user="1"))
        second = client.post(url, json=_chat_body(user="2"))
        third = client.post(url, json=_chat_body(user="3"))
    assert other.status_code == 200  # failures are per model
    assert (first.status_code, second.status_code, third.status_code) == (429, 500, 200)
    assert first.headers["retry-after"] == "1.5"
    assert first.json()["error"]["type"] == "rate_limit_error"
    assert handled == ["other", "3"]  # failed requests never reach the handler
    assert [r.user for r in scripted_server.requests_for("m1")] == ["1", "2", "3"]


def test_fail_next_with_openai_client_retries(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", _echo)
    scripted_server.fail_next("m1", [429, 503], retry_after=0)
    client = openai.OpenAI(base_url=scripted_server.url, api_key="x", max_retries=2)
    completion = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "again"}]
    )
    assert completion.choices[0].message.content == "echo: again"
    assert len(scripted_server.requests) == 3


def test_fail_next_star_applies_to_any_model(scripted_server: ScriptedServer) -> None:
    scripted_server.route("*", _echo)
    scripted_server.fail_next("*", [502])
    url = f"{scripted_server.url}/chat/completions"
    assert httpx.post(url, json=_chat_body(model="a")).status_code == 502
    assert httpx.post(url, json=_chat_body(model="b")).status_code == 200


# ---------------------------------------------------------------- concurrency


def test_delays_overlap_across_parallel_requests(scripted_server: ScriptedServer) -> None:
    scripted_server.route("slow", lambda req: Reply(content="late", delay_s=0.3))
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient) -> None:
        r = await client.post(f"{scripted_server.url}/chat/completions", json=_chat_body("slow"))
        statuses.append(r.status_code)

    async def main() -> float:
        async with httpx.AsyncClient(timeout=10) as client, anyio.create_task_group() as tg:
            start = time.monotonic()
            for _ in range(10):
                tg.start_soon(one, client)
        return time.monotonic() - start

    elapsed = anyio.run(main)
    assert statuses == [200] * 10
    assert elapsed < 2.0  # serial would be >= 3 s
    assert scripted_server.max_in_flight >= 5
    assert scripted_server.in_flight_by_model()["slow"] == scripted_server.max_in_flight
    assert scripted_server.in_flight == 0


def test_in_flight_is_tracked_per_model(scripted_server: ScriptedServer) -> None:
    scripted_server.route("*", lambda req: Reply(content="x", delay_s=0.2))
    models = ["a", "a", "a", "b"]

    def call(model: str) -> None:
        httpx.post(f"{scripted_server.url}/chat/completions", json=_chat_body(model), timeout=10)

    threads = [threading.Thread(target=call, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_model = scripted_server.in_flight_by_model()
    assert per_model["a"] >= 2
    assert per_model["b"] == 1
    assert scripted_server.max_in_flight >= per_model["a"]


def test_keep_alive_reuses_one_connection(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", _echo)
    peers: set[object] = set()

    def remember(response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        if stream is not None:
            peers.add(stream.get_extra_info("socket").getsockname())

    with httpx.Client(event_hooks={"response": [remember]}) as client:
        for i in range(5):
            r = client.post(f"{scripted_server.url}/chat/completions", json=_chat_body(user=str(i)))
            assert r.status_code == 200
    assert len(peers) == 1
    assert len(scripted_server.requests) == 5


# ---------------------------------------------------------------- review prompt helpers


def test_candidates_parsing() -> None:
    req = ChatRequest(
        model="m", messages=[{"role": "user", "content": REVIEW_PROMPT}], body={}, headers={}
    )
    assert req.candidates() == {"A": "It is 4.\nBecause 2 + 2 = 4.", "B": "It is 5."}
    no_end = "intro\n=== Candidate X1 ===\nline one\n\n  indented\n=== Candidate Y ===\nlast\n"
    assert req.candidates(no_end) == {"X1": "line one\n\n  indented", "Y": "last"}
    assert req.candidates("no candidates here") == {}


def test_candidate_enum_found_in_review_schema(scripted_server: ScriptedServer) -> None:
    seen: list[tuple[dict[str, str], list[str] | None]] = []

    def reviewer(req: ChatRequest) -> dict[str, object]:
        seen.append((req.candidates(), req.candidate_enum()))
        return {
            "reviews": [
                {"candidate": label, "score": 10, "critique": "ok"} for label in req.candidates()
            ]
        }

    schema = {
        "type": "object",
        "properties": {
            "reviews": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "candidate": {"type": "string", "enum": ["A", "B"]},
                        "score": {"type": "integer"},
                    },
                },
            }
        },
    }
    scripted_server.route("m1", reviewer)
    completion = _client(scripted_server).chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": REVIEW_PROMPT}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "nsed_review", "schema": schema, "strict": True},
        },
    )
    assert seen == [({"A": "It is 4.\nBecause 2 + 2 = 4.", "B": "It is 5."}, ["A", "B"])]
    reviews = json.loads(completion.choices[0].message.content or "")["reviews"]
    assert [r["candidate"] for r in reviews] == ["A", "B"]
    assert scripted_server.requests[0].schema_name == "nsed_review"


# ---------------------------------------------------------------- lifecycle


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_closes_port_even_with_open_keepalive_connection() -> None:
    server = ScriptedServer().start()
    server.route("m1", _echo)
    port = server.port
    assert _port_open(port)
    with httpx.Client() as client:  # leaves an idle kept-alive connection during stop()
        assert client.post(f"{server.url}/chat/completions", json=_chat_body()).is_success
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
    assert not _port_open(port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")


def test_reset_forgets_state(scripted_server: ScriptedServer) -> None:
    scripted_server.route("m1", _echo)
    scripted_server.fail_next("m1", [500, 500])
    scripted_server.set_metrics("x 1\n")
    url = f"{scripted_server.url}/chat/completions"
    assert httpx.post(url, json=_chat_body()).status_code == 500
    scripted_server.reset(keep_routes=True)
    assert scripted_server.requests == []
    assert scripted_server.max_in_flight == 0
    assert httpx.post(url, json=_chat_body()).status_code == 200  # pending failure forgotten
    assert httpx.get(f"{scripted_server.root}/metrics").status_code == 404
    scripted_server.reset()
    assert httpx.post(url, json=_chat_body()).status_code == 404  # routes forgotten too


def test_factory_starts_independent_servers(
    scripted_server_factory: Callable[[], ScriptedServer],
) -> None:
    first, second = scripted_server_factory(), scripted_server_factory()
    assert first.port != second.port
    first.route("m", lambda req: "from first")
    second.route("m", lambda req: "from second")
    for server, expected in ((first, "from first"), (second, "from second")):
        r = httpx.post(f"{server.url}/chat/completions", json=_chat_body("m"))
        assert r.json()["choices"][0]["message"]["content"] == expected
        assert len(server.requests) == 1


def test_stop_drops_requests_still_waiting_out_their_delay() -> None:
    server = ScriptedServer().start()
    server.route("m1", lambda req: Reply(content="never", delay_s=30))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{server.url}/chat/completions", json=_chat_body(), timeout=10)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == 1
    started = time.monotonic()
    server.stop()
    caller.join()
    assert time.monotonic() - started < 5  # not the 30 s delay
    assert [type(e) for e in outcome] == [httpx.RemoteProtocolError]
    assert not _port_open(server.port)
