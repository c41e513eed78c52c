"""Provider options (``extra_body``, ``extra_headers``) reach the backend exactly as configured
and never reach a trace, a log, the store or a repr when they carry a secret."""

from __future__ import annotations

import json
import logging

import pytest

from nsed import ConfigError, ModelSpec, TeamSpec, deliberate
from nsed.benchmarks.runner import team_record
from nsed.broker.catalog import Catalog
from nsed.store import Store
from tests.council_scripts import agent, judge_by_answer, team_dict

SECRET = "sk-gateway-very-secret-42"
CONFIG = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "seed": 1, "kind": "math"}
EXTRA_BODY = {
    "chat_template_kwargs": {"enable_thinking": False},
    "top_k": 20,
    "min_p": 0.0,
    "repetition_penalty": 1.05,
}


def test_extra_body_and_headers_reach_the_backend_and_secrets_go_nowhere_else(
    scripted_server, monkeypatch, caplog, tmp_path
):
    monkeypatch.setenv("NSED_TEST_PORTKEY", "pk-from-the-environment")
    for name in ("alpha", "beta"):
        scripted_server.route(name, agent("391", judge=judge_by_answer("391")))
    team = team_dict(scripted_server.url, ["alpha", "beta"], extra_body=EXTRA_BODY,
                     extra_headers={"Authorization": f"Bearer {SECRET}", "X-Title": "nsed"},
                     extra_headers_env={"x-portkey-api-key": "NSED_TEST_PORTKEY"})
    with caplog.at_level(logging.DEBUG):
        result = deliberate("What is 17 * 23?", team=team, config=CONFIG)
    assert result.final == "391"
    requests = scripted_server.requests
    assert len(requests) == 4
    for request in requests:
        for key, value in EXTRA_BODY.items():
            assert request.body[key] == value
        assert request.body["max_tokens"] == 1024 and request.body["messages"]  # nsed's own
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.headers["x-title"] == "nsed"
        assert request.headers["x-portkey-api-key"] == "pk-from-the-environment"
    assert SECRET not in result.model_dump_json()
    assert SECRET not in caplog.text and "pk-from-the-environment" not in caplog.text
    store = Store(f"sqlite:///{tmp_path / 'nsed.db'}")
    store.save_deliberation(result)
    assert SECRET.encode() not in (tmp_path / "nsed.db").read_bytes()
    spec = TeamSpec.model_validate(team)
    for text in (repr(spec), spec.model_dump_json(), json.dumps(team_record(spec)),
                 str(spec.model_dump())):
        assert SECRET not in text and "[redacted]" in text
        assert "X-Title" in text and "enable_thinking" in text  # non-secrets stay visible


def test_an_api_key_and_an_authorization_header_together_send_the_header(scripted_server,
                                                                         monkeypatch):
    monkeypatch.setenv("NSED_TEST_KEY", "sk-plain")
    scripted_server.route("*", agent("391"))
    team = team_dict(scripted_server.url, ["a", "b"], api_key_env="NSED_TEST_KEY",
                     extra_headers={"Authorization": "Bearer sk-override"})
    deliberate("What is 17 * 23?", team=team, config=CONFIG)
    assert {r.headers["authorization"] for r in scripted_server.requests} == {
        "Bearer sk-override"}


def test_a_header_from_an_unset_variable_is_a_config_error(scripted_server, monkeypatch):
    monkeypatch.delenv("NSED_TEST_UNSET", raising=False)
    scripted_server.route("*", agent("391"))
    team = team_dict(scripted_server.url, ["a", "b"],
                     extra_headers_env={"X-Api-Key": "NSED_TEST_UNSET"})
    with pytest.raises(ConfigError, match="NSED_TEST_UNSET"):
        deliberate("What is 17 * 23?", team=team, config=CONFIG)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("extra_body", {"messages": []}, "nsed sets it per call"),
        ("extra_body", {"temperature": 0.1}, "'temperature' field"),
        ("extra_body", {"max_completion_tokens": 5}, "'max_tokens' field"),
        ("extra_body", {"response_format": {}}, "'structured' field"),
        ("extra_headers", {"Content-Type": "text/plain"}, "set by the HTTP client"),
        ("extra_headers", {"bad header": "x"}, "not a valid HTTP header name"),
        ("think_tags", ["<t>", "<t>"], "two different"),
    ],
)
def test_provider_options_are_checked_at_the_edge(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TeamSpec.model_validate_toml({"models": [
            {"name": "a", "base_url": "http://x/v1", "model": "m", "replicas": 2,
             field: value}]})


def test_provider_options_load_from_team_and_catalog_toml(tmp_path):
    text = """
[[models]]
name = "qwen"
base_url = "http://127.0.0.1:8002/v1"
model = "qwen3-8b"
family = "qwen"
extra_headers = { "X-Title" = "nsed" }

[models.extra_body]
chat_template_kwargs = { enable_thinking = false }
top_k = 20

[[models]]
name = "gpt-oss"
base_url = "http://127.0.0.1:8001/v1"
model = "gpt-oss-20b"
family = "gpt-oss"
extra_body = { reasoning_effort = "high" }
"""
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    catalog = Catalog.from_toml(path)
    assert catalog.get("qwen").extra_body == {
        "chat_template_kwargs": {"enable_thinking": False}, "top_k": 20}
    assert catalog.get("gpt-oss").extra_body == {"reasoning_effort": "high"}
    team_path = tmp_path / "team.toml"
    team_path.write_text(text.replace('family = "qwen"\n', "").replace(
        'family = "gpt-oss"\n', ""))
    team = TeamSpec.from_toml(team_path)
    assert team.models[0].extra_headers == {"X-Title": "nsed"}


def test_modelspec_in_the_python_api():
    spec = ModelSpec(name="m", base_url="http://x/v1", model="m",
                     extra_body={"reasoning_effort": "low"},
                     extra_headers={"X-Api-Key": SECRET})
    assert spec.extra_headers["X-Api-Key"] == SECRET  # the value itself is kept for sending
    assert SECRET not in repr(spec) and SECRET not in spec.model_dump_json()
