"""Hostile backends over real HTTP (issue 14, items 6-8): a slow drip meets the whole call's
deadline, a huge reply meets the size cap, and credentials in a ``base_url`` never reach a
trace, a stored row, a log line or the server's trace endpoint."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from nsed import deliberate
from nsed.agents.backend import EndpointPool, HTTPBackend
from nsed.agents.http_limits import ReplyTooLarge
from nsed.benchmarks.runner import BenchOptions, run_benchmark
from nsed.config import ModelSpec
from nsed.errors import BackendError, BackendTimeout, redact_url
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings
from nsed.store import Store
from tests.fault_server import FaultServer
from tests.scripted_server import Reply

QUESTION = "What is 20 + 22?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def servers() -> Iterator[dict[str, FaultServer]]:
    """Three sound council members, each on its own server (alpha, beta, gamma)."""
    started = {name: FaultServer().start() for name in ("alpha", "beta", "gamma")}
    yield started
    for server in started.values():
        server.kill()


def team(servers: dict[str, FaultServer], **extra: object) -> dict:
    return {
        "models": [
            {"name": name, "base_url": s.url, "model": name, "max_retries": 0, **extra}
            for name, s in servers.items()
        ]
    }


def complete(model_spec: ModelSpec):
    async def go():
        async with EndpointPool() as pool:
            return await HTTPBackend(model_spec, pool).complete(MESSAGES)

    return anyio.run(go)


CONFIG = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "kind": "math"}


# --- Item 6: a deadline for the whole call ------------------------------------------------------


def test_a_slow_drip_is_cut_at_the_deadline_of_the_whole_call():
    with FaultServer(fault=lambda r: "drip") as server:  # a 300-byte reply over a minute
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"within 1 s \(the deadline of the whole call"):
            complete(ModelSpec(name="m", base_url=server.url, model="m", timeout_s=1.0))
        assert time.monotonic() - started < 10  # bounded by the deadline, not by the drip


def test_a_dripping_agent_cannot_hold_the_deliberation(servers):
    """The reproduction: one byte a second kept a deliberation running past 90 s with
    ``timeout_s = 3``. Now the dripper fails its calls at 3 s and the other two answer."""
    servers["gamma"].fault = lambda r: "drip"
    servers["gamma"].drip_interval_s = 1.0
    started = time.monotonic()
    result = deliberate(QUESTION, team=team(servers, timeout_s=3), config=CONFIG)
    assert time.monotonic() - started < 30
    assert result.final == "42" and result.winner in ("alpha", "beta")
    failures = [f for r in result.rounds for f in r.failures]
    assert failures and all(f.agent == "gamma" and f.timeout for f in failures)


def test_call_timeout_s_of_the_config_is_every_calls_deadline(servers):
    servers["gamma"].fault = lambda r: "hang"
    config = {**CONFIG, "call_timeout_s": 1.0}
    result = deliberate(QUESTION, team=team(servers, timeout_s=600), config=config)
    failures = [f for r in result.rounds for f in r.failures]
    assert result.final == "42"
    assert failures and all("within 1 s" in f.error and f.timeout for f in failures)


def test_retries_stop_before_the_deadline_with_the_real_error():
    """A backoff that would sleep past the deadline is not taken: the error is the 503."""
    with FaultServer(fault=lambda r: "http_500") as server:
        spec = ModelSpec(name="m", base_url=server.url, model="m", timeout_s=0.6, max_retries=5)
        with pytest.raises(Exception, match="HTTP 500") as info:
            complete(spec)
        assert not isinstance(info.value, BackendTimeout)
        assert server.injected["http_500"] < 6


# --- Item 7: a cap on the reply ------------------------------------------------------------------


def test_a_reply_over_the_cap_is_a_failed_call_and_never_read_whole():
    with FaultServer(fault=lambda r: "huge") as server:
        with pytest.raises(ReplyTooLarge, match="larger than 4000000 bytes"):
            complete(ModelSpec(name="m", base_url=server.url, model="m", max_retries=3))
        assert server.injected["huge"] == 1  # not retried: it would only come again
        small = ModelSpec(name="m", base_url=server.url, model="m", max_reply_bytes=2048)
        server.fault = lambda r: None
        with pytest.raises(ReplyTooLarge, match="larger than 2048 bytes"):
            server.answer = lambda q: "9" * 5000
            complete(small)
        server.answer = lambda q: "42"
        assert "42" in complete(small).text


def test_a_50_mb_reply_stays_out_of_the_trace_and_the_store(servers, tmp_path):
    """The reproduction: a 50 MB reply became a 50,000,000-character proposal, a 100 MB trace
    and 201 MB in the database."""
    servers["gamma"].fault = lambda r: "huge"
    db = tmp_path / "nsed.db"
    result = deliberate(QUESTION, team=team(servers), config=CONFIG)
    Store(f"sqlite:///{db}").save_deliberation(result)
    assert result.final == "42"
    failures = [f for r in result.rounds for f in r.failures]
    assert failures and {f.agent for f in failures} == {"gamma"}
    assert "larger than 4000000 bytes" in failures[0].error
    assert len(result.model_dump_json()) < 100_000
    assert db.stat().st_size + sum(p.stat().st_size for p in tmp_path.glob("nsed.db-*")) < 2e6


def test_a_reply_nested_100000_deep_is_a_failed_call_and_a_quiet_preflight():
    with FaultServer(fault=lambda r: "deep_json") as server:
        server.models_body = b'{"data": ' + b"[" * 100_000
        spec = ModelSpec(name="m", base_url=server.url, model="m", max_retries=0)
        with pytest.raises(BackendError, match="not a chat completion"):
            complete(spec)

        async def preflight():
            async with EndpointPool() as pool:
                await HTTPBackend(spec, pool).preflight()  # a list it cannot read: no warning

        anyio.run(preflight)


# --- Item 8: credentials in a base_url -----------------------------------------------------------

PASSWORD = "PASSWORD-4f1c9"


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://alice:{PASSWORD}@")


def test_redact_url_removes_userinfo_query_secrets_and_fragments():
    assert redact_url(f"http://alice:{PASSWORD}@host:8001/v1") == "http://***@host:8001/v1"
    assert redact_url("https://tok@h/v1?api-version=1&api_key=s&sig=x#t") == (
        "https://***@h/v1?api-version=1&api_key=***&sig=***#***"
    )
    assert redact_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"


def test_credentials_in_base_url_reach_no_trace_row_log_or_endpoint(servers, tmp_path, caplog):
    """The reproduction: ``http://alice:PASSWORD@host/v1`` was stripped from bench_runs.team
    but appeared in traces, bench_results rows and GET /v1/deliberations/{id} through
    BackendError messages (and in the traces' agent list)."""
    caplog.set_level(logging.INFO, logger="nsed")
    servers["gamma"].fault = lambda r: "http_500"
    leaky = team(servers, max_retries=1)
    for model in leaky["models"]:
        model["base_url"] = with_credentials(model["base_url"])

    result = deliberate(QUESTION, team=leaky, config=CONFIG)
    assert result.rounds[0].failures and "HTTP 500" in result.rounds[0].failures[0].error
    assert PASSWORD not in result.model_dump_json()

    store = Store(f"sqlite:///{tmp_path / 'bench.db'}")
    options = BenchOptions(
        benchmark="quick",
        limit=2,
        rounds=1,
        methods=["nsed", "single"],
        deliberation={"embeddings": "off"},
    )
    anyio.run(lambda: run_benchmark(options, store=store, team=leaky, run_id="leak"))
    store.dispose()
    with sqlite3.connect(tmp_path / "bench.db") as con:
        dumped = "\n".join(con.iterdump())
    assert "HTTP 500" in dumped and PASSWORD not in dumped

    settings = ServerSettings(councils={"council": CouncilSpec(team=leaky, config=CONFIG)})
    with BackgroundServer(settings) as server:
        reply = httpx.post(
            f"{server.url}/chat/completions",
            json={"model": "nsed/council", "messages": MESSAGES},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        run_id = reply.json()["nsed"]["deliberation_id"]
        trace = httpx.get(f"{server.url}/deliberations/{run_id}", timeout=10)
    assert trace.status_code == 200 and "HTTP 500" in trace.text
    assert PASSWORD not in trace.text and PASSWORD not in reply.text
    assert PASSWORD not in caplog.text and "***@127.0.0.1" in caplog.text
    assert json.loads(trace.text)["agents"][0]["base_url"].startswith("http://***@")


def test_an_error_body_that_echoes_the_api_key_is_masked(scripted_server, monkeypatch):
    key = "sk-echo-0f3b2a"
    monkeypatch.setenv("ECHO_KEY", key)

    def echo(request):
        said = request.headers.get("authorization", "")
        return Reply(status=401, error_body={"error": {"message": f"bad key: {said}"}})

    scripted_server.route("m", echo)
    spec = ModelSpec(name="m", base_url=scripted_server.url, model="m", api_key_env="ECHO_KEY")
    with pytest.raises(BackendError, match=r"HTTP 401: bad key: Bearer \*\*\*") as info:
        complete(spec)
    assert key not in str(info.value)
