"""Protocol behaviour of a whole deliberation, against the scripted server over real HTTP."""

from __future__ import annotations

import json
import logging
import math

import anyio
import pytest

from nsed import (
    BackendUnreachable,
    ConfigError,
    Council,
    Finished,
    InvalidQuestion,
    QuorumLost,
    RoundScored,
    RoundStarted,
    TeamSpec,
    deliberate,
)
from tests.council_scripts import agent, is_review, judge_by_answer, own_label, team_dict
from tests.scripted_server import Reply

NAMES = ["alpha", "beta", "gamma"]


def fast_config(**overrides: object) -> dict:
    base = {"max_rounds": 2, "min_rounds": 2, "embeddings": "off", "seed": 7, "kind": "math"}
    base.update(overrides)
    return base


def route_all(server, finals: dict[str, str], correct: str = "391", **kwargs) -> None:
    for name, final in finals.items():
        server.route(name, agent(final, judge=judge_by_answer(correct), **kwargs))


def test_majority_answer_wins_and_trace_is_complete(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "392"})
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=fast_config()
    )
    assert result.final == "391"
    assert result.winner in {"alpha", "beta"}
    assert len(result.rounds) == 2
    first = result.rounds[0]
    assert {p.agent for p in first.proposals} == set(NAMES)
    # N-to-N: every agent reviews the two others.
    counted = [r for r in first.reviews if r.dropped_reason is None]
    assert len(counted) == 6
    assert all(r.reviewer != r.candidate for r in counted)
    assert first.support["gamma"] < 0 < first.support["alpha"]
    # usage sums what the server reported for the 12 successful calls
    assert result.usage.calls == 12
    assert result.usage.prompt_tokens == sum(r.prompt_tokens for r in result.rounds)
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    data = json.loads(result.model_dump_json())
    for key in ("answer", "final", "stopped_because", "usage", "rounds", "agents"):
        assert key in data
    assert data["agents"][0] == {
        "name": "alpha", "model": "alpha", "base_url": scripted_server.url,
        "persona": None, "role": None,
    }


def test_reviewers_see_shuffled_labels_and_no_names(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "392"})
    deliberate(
        "What is 17 * 23?",
        team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=6, min_rounds=6, seed=None),
    )
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert len(reviews) == 18
    for request in reviews:
        shown = request.user + request.system
        for name in NAMES:
            assert name not in shown.lower()
        assert set(request.candidate_enum() or []) == set(request.candidates())
        assert own_label(request) not in request.candidates()
    # The label a given author gets varies across reviewers and rounds.
    mappings = {
        tuple(sorted((label, "392" in text) for label, text in r.candidates().items()))
        for r in reviews
    }
    assert len(mappings) > 1


def test_self_scores_are_dropped_whatever_the_reviewer_does(scripted_server):
    def self_promoter(request):
        label = own_label(request)
        reviews = [{"candidate": lab, "score": -50, "critique": "weak"} for lab in
                   request.candidates()]
        reviews.append({"candidate": label, "score": 100, "critique": "mine is perfect"})
        return json.dumps({"reviews": reviews})

    route_all(scripted_server, {"alpha": "391", "beta": "391"})
    scripted_server.route("gamma", agent("392", review_override=self_promoter))
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=fast_config()
    )
    dropped = [r for r in result.rounds[0].reviews if r.dropped_reason == "self-review"]
    assert len(dropped) == 1 and dropped[0].reviewer == "gamma" == dropped[0].candidate
    assert result.final == "391"


def test_out_of_range_scores_are_clipped(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391"})
    scripted_server.route("gamma", agent("391", judge=lambda text: 500))
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=fast_config()
    )
    by_gamma = [r for r in result.rounds[0].reviews if r.reviewer == "gamma"]
    assert by_gamma and all(r.score == 100 and r.clipped for r in by_gamma)


def test_unparseable_and_unknown_label_reviews_are_dropped_not_guessed(scripted_server):
    route_all(scripted_server, {"alpha": "391"})
    scripted_server.route("beta", agent("391", review_override=lambda r: "I liked all of them!"))
    scripted_server.route(
        "gamma",
        agent("392", review_override=lambda r: json.dumps(
            {"reviews": [{"candidate": "Q", "score": 90, "critique": "?"}]})),
    )
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=fast_config()
    )
    reviews = result.rounds[0].reviews
    beta = [r for r in reviews if r.reviewer == "beta"]
    gamma = [r for r in reviews if r.reviewer == "gamma"]
    assert beta and all(r.dropped_reason and r.score is None for r in beta)
    assert gamma and all("unknown label" in (r.dropped_reason or "") for r in gamma)
    assert [r for r in reviews if r.dropped_reason is None and r.reviewer == "alpha"]


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_known_scores_give_the_documented_quadratic_votes(scripted_server, protocol):
    # alpha scores (beta, gamma) = (60, -20); beta: (alpha, gamma) = (30, 30);
    # gamma: (alpha, beta) = (0, 90). v1, budget_signed: f = w / sum|w|, q = sign(f) sqrt|f|.
    # v2, budget_capped: q = sign(w) sqrt(|w|/100) (no reviewer spends over 100 credits here),
    # S = sum q / (reviews + 1).
    table = {"alpha": {"391": 60, "392": -20}, "beta": {"390": 30, "392": 30},
             "gamma": {"390": 0, "391": 90}}
    finals = {"alpha": "390", "beta": "391", "gamma": "392"}

    def judge_for(reviewer):
        def judge(text):
            for final, score in table[reviewer].items():
                if f"\\boxed{{{final}}}" in text:
                    return score
            raise AssertionError(text)
        return judge

    for name in NAMES:
        scripted_server.route(name, agent(finals[name], judge=judge_for(name)))
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=1, min_rounds=1, protocol=protocol),
    )
    support = result.rounds[0].support
    if protocol == "v1":
        s_alpha = (math.sqrt(0.5) + 0.0) / 2
        s_beta = (math.sqrt(0.75) + 1.0) / 2
        s_gamma = (-math.sqrt(0.25) + math.sqrt(0.5)) / 2
    else:
        s_alpha = (math.sqrt(0.3) + 0.0) / 3
        s_beta = (math.sqrt(0.6) + math.sqrt(0.9)) / 3
        s_gamma = (-math.sqrt(0.2) + math.sqrt(0.3)) / 3
    assert support["alpha"] == pytest.approx(s_alpha)
    assert support["beta"] == pytest.approx(s_beta)
    assert support["gamma"] == pytest.approx(s_gamma)
    assert result.winner == "beta"
    if protocol == "v1":
        total = abs(s_alpha) + abs(s_beta) + abs(s_gamma)
        assert result.rounds[0].conviction == pytest.approx(s_beta / total)
    else:  # agreement: the mean raw score beta's answer received, / 100
        assert result.rounds[0].conviction == pytest.approx((60 + 90) / 2 / 100)


def test_an_agent_that_fails_mid_run_is_skipped(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391"})
    gamma = agent("392")

    def flaky(request):
        if "[Round 1" in request.user:
            return gamma(request)
        return Reply(status=500, error_body={"error": {"message": "model crashed"}})

    scripted_server.route("gamma", flaky)
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=3, min_rounds=3),
    )
    assert len(result.rounds) == 3
    assert [p.agent for p in result.rounds[1].proposals] == ["alpha", "beta"]
    assert any(f.agent == "gamma" and "500" in f.error for f in result.rounds[1].failures)
    # out after two consecutive failures: round 3 does not even call it
    assert [p.agent for p in result.rounds[2].proposals] == ["alpha", "beta"]
    assert result.usage.failed_calls == 2
    assert result.final == "391"


def test_quorum_lost_when_fewer_than_two_agents_answer(scripted_server):
    route_all(scripted_server, {"alpha": "391"})
    for name in ("beta", "gamma"):
        scripted_server.route(name, lambda r: Reply(status=503))
    with pytest.raises(QuorumLost, match="needs 2"):
        deliberate(
            "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=fast_config()
        )


def test_retries_on_429_and_500_then_succeeds(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "391"})
    scripted_server.fail_next("alpha", [429, 500], retry_after=0.05)
    team = team_dict(scripted_server.url, NAMES)
    team["models"][0]["max_retries"] = 3
    result = deliberate("What is 17 * 23?", team=team, config=fast_config())
    assert result.usage.retries == 2
    assert result.usage.failed_calls == 0
    alpha_calls = [r for r in scripted_server.requests if r.model == "alpha"]
    assert len(alpha_calls) == 4 + 2


def test_unanimity_stops_early_after_min_rounds(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "391"})
    config = fast_config(max_rounds=6, min_rounds=2, fatigue_rule=False)
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES), config=config
    )
    assert result.stopped_because == "unanimous"
    assert len(result.rounds) == 2


def test_min_rounds_equal_to_max_runs_exactly_that_many(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "391"})
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=5, min_rounds=5),
    )
    assert len(result.rounds) == 5
    assert result.stopped_because == "max_rounds"


def test_prompt_growth_is_bounded_over_eight_rounds(scripted_server):
    long_reasoning = "Step: multiply tens and units, then add the partial products. " * 60
    route_all(
        scripted_server,
        {"alpha": "391", "beta": "392", "gamma": "393"},
        reasoning=long_reasoning,
    )
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=8, min_rounds=8),
    )
    prompt = [r.prompt_tokens for r in result.rounds]
    assert len(prompt) == 8
    assert max(prompt[1:]) <= 1.25 * prompt[1], prompt
    assert all(r.state_tokens <= 1200 for r in result.rounds)


def test_token_budget_stops_between_rounds(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "392", "gamma": "393"})
    result = deliberate(
        "What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
        config=fast_config(max_rounds=6, min_rounds=1, budget_tokens=2500, fatigue_rule=False),
    )
    assert result.stopped_because == "budget_tokens"
    assert len(result.rounds) < 6


def test_api_key_is_sent_as_bearer_and_never_recorded(scripted_server, monkeypatch, caplog):
    monkeypatch.setenv("NSED_TEST_KEY", "sk-very-secret-123")
    route_all(scripted_server, {"alpha": "391", "beta": "391"})
    team = team_dict(scripted_server.url, ["alpha", "beta"], api_key_env="NSED_TEST_KEY")
    with caplog.at_level(logging.DEBUG):
        result = deliberate("What is 17 * 23?", team=team, config=fast_config())
    assert all(
        r.headers.get("authorization") == "Bearer sk-very-secret-123"
        for r in scripted_server.requests
    )
    assert "sk-very-secret" not in result.model_dump_json()
    assert "sk-very-secret" not in caplog.text
    inline = TeamSpec.model_validate(
        {"models": [{"name": "a", "base_url": "http://x/v1", "model": "m", "api_key": "sk-inl",
                     "replicas": 2}]}
    )
    assert "sk-inl" not in repr(inline) and "sk-inl" not in inline.model_dump_json()


def test_stream_yields_events_in_order(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391", "gamma": "392"})

    async def collect():
        council = Council(team_dict(scripted_server.url, NAMES), fast_config())
        return [event async for event in council.stream("What is 17 * 23?")]

    events = anyio.run(collect)
    assert isinstance(events[0], RoundStarted) and events[0].round == 1
    assert isinstance(events[-1], Finished)
    scored = [e.round for e in events if isinstance(e, RoundScored)]
    assert scored == [1, 2]
    kinds = [e.type for e in events]
    assert kinds.index("proposal") < kinds.index("review") < kinds.index("round_scored")


def test_council_reuses_connections_across_questions(scripted_server):
    route_all(scripted_server, {"alpha": "391", "beta": "391"})

    async def two_questions():
        async with Council(team_dict(scripted_server.url, ["alpha", "beta"]),
                           fast_config()) as council:
            first = await council.run("What is 17 * 23?")
            second = await council.run("What is 23 * 17?")
            return first, second

    first, second = anyio.run(two_questions)
    assert first.final == second.final == "391"
    assert first.id != second.id


@pytest.mark.parametrize(
    ("question", "config", "error", "match"),
    [
        ("   ", {}, InvalidQuestion, "empty"),
        ("x" * 50, {"max_question_chars": 10}, InvalidQuestion, "over the limit of 10"),
        ("ok?", {"kind": "poetry"}, ConfigError, "kind"),
        ("ok?", {"max_rounds": 2, "min_rounds": 3}, ConfigError, "min_rounds"),
        ("ok?", {"budget_usd": -1}, ConfigError, "budget_usd"),
    ],
)
def test_bad_input_gives_typed_errors(scripted_server, question, config, error, match):
    route_all(scripted_server, {"alpha": "391", "beta": "391"})
    with pytest.raises(error, match=match):
        deliberate(question, team=team_dict(scripted_server.url, ["alpha", "beta"]),
                   config=fast_config(**config))


def test_team_validation_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 agents"):
        TeamSpec.model_validate_toml(
            {"models": [{"name": "a", "base_url": "http://x/v1", "model": "m"}]})
    with pytest.raises(ConfigError, match="input_price"):
        TeamSpec.model_validate_toml({"models": [
            {"name": "a", "base_url": "http://x/v1", "model": "m", "input_price": -1},
            {"name": "b", "base_url": "http://x/v1", "model": "m"}]})
    bad = tmp_path / "team.toml"
    bad.write_text("[[models]\nname = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        TeamSpec.from_toml(bad)
    with pytest.raises(ConfigError, match="not found"):
        TeamSpec.from_toml(tmp_path / "missing.toml")


def test_unreachable_endpoint_names_the_url():
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(BackendUnreachable, match=r"127\.0\.0\.1:9"):
        deliberate("What is 2 + 2?", team=team_dict(url, ["a", "b"]), config=fast_config())


def test_replicas_give_diverse_agents_on_one_endpoint(scripted_server):
    scripted_server.route("smol", agent("391", judge=judge_by_answer("391")))
    team = {"models": [{"name": "smol", "base_url": scripted_server.url, "model": "smol",
                        "replicas": 3}]}
    result = deliberate("What is 17 * 23?", team=team, config=fast_config(max_rounds=1,
                                                                          min_rounds=1))
    assert [a.name for a in result.agents] == ["smol-1", "smol-2", "smol-3"]
    systems = {r.system for r in scripted_server.requests}
    assert len(systems) == 3
    temps = {r.body.get("temperature") for r in scripted_server.requests}
    assert len(temps) == 3
