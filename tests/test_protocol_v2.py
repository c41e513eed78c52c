"""Protocol v2 against the scripted server over real HTTP: the issue's "Done when" cases and
each fix and addition (exploration, answer-level aggregation, truncation, context, formats)."""

from __future__ import annotations

import json
import math
import re

import anyio
import pytest

from nsed import Council, DeliberationConfig, deliberate
from nsed.agents.prompts import PROPOSAL_SCHEMA_NAME
from nsed.orchestrator.voting import quadratic_vote, review_votes
from nsed.results import ExecutionCheck
from tests.council_scripts import (
    agent,
    is_proposal,
    is_review,
    judge_by_answer,
    own_label,
    team_dict,
)
from tests.scripted_server import ChatRequest, Reply

NAMES = ["alpha", "beta", "gamma"]
QUESTION = "What is 17 * 23?"


def config(**overrides: object) -> dict:
    base = {"max_rounds": 2, "min_rounds": 2, "embeddings": "off", "seed": 7, "kind": "math"}
    return {**base, **overrides}


def run(server, names: list[str], **overrides: object):
    return deliberate(QUESTION, team=team_dict(server.url, names), config=config(**overrides))


def round_of(request: ChatRequest) -> int:
    match = re.search(r"\[Round (\d+)", request.user)
    return int(match.group(1)) if match else 0


# --- Done when: the four scripted cases -------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_correct_minority_wins_with_fair_reviewers(scripted_server, protocol):
    """One agent right, two agreeing on the same wrong answer; every reviewer judges fairly."""
    fair = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=fair))
    scripted_server.route("beta", agent("392", judge=fair))
    scripted_server.route("gamma", agent("392", judge=fair))
    result = run(scripted_server, NAMES, protocol=protocol, max_rounds=3, min_rounds=3)
    assert result.final == "391"
    assert result.winner == "alpha"
    if protocol == "v2":
        standings = {a.final: a for a in result.rounds[-1].answers}
        assert standings["391"].support > 0 > standings["392"].support
        assert standings["392"].proposals == 6  # proposed more often, and still lost


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_an_unreviewed_candidate_never_wins(scripted_server, protocol):
    """alpha and beta pan each other and say nothing of gamma; gamma's reviews are unusable."""

    def pan_one_peer(request: ChatRequest) -> str:
        reviews = [
            {"candidate": label, "score": -50, "critique": "wrong"}
            for label, text in request.candidates().items()
            if "393" not in text
        ]
        return json.dumps({"reviews": reviews})

    scripted_server.route("alpha", agent("391", review_override=pan_one_peer))
    scripted_server.route("beta", agent("392", review_override=pan_one_peer))
    scripted_server.route("gamma", agent("393", review_override=lambda r: "no idea"))
    result = run(scripted_server, NAMES, protocol=protocol, max_rounds=1, min_rounds=1)
    first = result.rounds[0]
    assert not [r for r in first.reviews if r.candidate == "gamma" and r.dropped_reason is None]
    assert result.winner in {"alpha", "beta"}
    assert result.final != "393"


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_truncated_review_counts_nothing_it_did_not_finish(scripted_server, protocol):
    """The issue's reply: cut off at ``"C","score": -8`` (finish_reason "length")."""

    def cut_off(request: ChatRequest) -> Reply:
        labels = sorted(request.candidates())
        first, second = labels
        text = (
            f'{{"reviews": [{{"candidate": "{first}", "critique": "fine", "score": 20}}, '
            f'{{"candidate": "{second}", "critique": "the last step", "score": -8'
        )
        return Reply(content=text, finish_reason="length")

    honest = judge_by_answer("391")
    proposer = agent("391")
    scripted_server.route("alpha", agent("391", judge=honest))
    scripted_server.route("beta", agent("392", judge=honest))
    scripted_server.route("gamma", lambda r: cut_off(r) if is_review(r) else proposer(r))
    result = run(scripted_server, NAMES, protocol=protocol, max_rounds=1, min_rounds=1)
    by_gamma = [r for r in result.rounds[0].reviews if r.reviewer == "gamma"]
    counted = [r for r in by_gamma if r.dropped_reason is None]
    cut = [r for r in by_gamma if r.dropped_reason == "truncated"]
    assert len(counted) == 1 and counted[0].score == 20
    assert len(cut) == 1 and cut[0].score is None and cut[0].candidate != counted[0].candidate
    # The surviving +20 is not inflated to a full vote: q = sqrt(20/100) in both protocols
    # (v1's budget_signed alone would have made it 20/20 = 1.0).
    record = result.rounds[0]
    scores: dict[str, dict[str, float]] = {}
    for r in record.reviews:
        if r.dropped_reason is None and r.candidate and r.score is not None:
            scores.setdefault(r.reviewer, {})[r.candidate] = r.score
    cfg = DeliberationConfig(protocol=protocol)
    votes = review_votes(scores, list(record.support), mode=cfg.qv_mode, partial={"gamma"})
    (by_cut_reviewer,) = [v for v in votes[counted[0].candidate] if v.reviewer == "gamma"]
    assert by_cut_reviewer.q == pytest.approx(math.sqrt(0.2))
    expected = quadratic_vote(
        scores,
        list(record.support),
        mode=cfg.qv_mode,
        prior=cfg.support_prior,
        conviction=cfg.conviction,
        partial={"gamma"},
    )
    assert record.support == pytest.approx(expected.support)


@pytest.mark.parametrize(("protocol", "stops"), [("v2", True), ("v1", False)])
def test_unanimity_at_plus_80_stops_the_run(scripted_server, protocol, stops):
    names = ["a1", "a2", "a3", "a4"]
    for name in names:
        scripted_server.route(name, agent("391", judge=lambda text: 80))
    result = run(scripted_server, names, protocol=protocol, max_rounds=5, fatigue_rule=False)
    if stops:
        assert result.stopped_because == "unanimous" and len(result.rounds) == 2
        assert result.rounds[-1].conviction == pytest.approx(0.8)
    else:  # v1's share conviction is 1/4 < 0.3: perfect agreement never stopped it
        assert result.stopped_because == "max_rounds" and len(result.rounds) == 5
        assert result.rounds[-1].conviction == pytest.approx(0.25)


# --- Additions ----------------------------------------------------------------------------------


def test_a_rejected_agent_re_solves_blind_and_the_answer_is_the_best_supported(scripted_server):
    """gamma is voted down in round 1, so round 2 asks it afresh: no state, a round-1 prompt."""
    fair = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=fair))
    scripted_server.route("beta", agent("391", judge=fair))
    scripted_server.route("gamma", agent(lambda r: "392" if r == 1 else "391", judge=fair))
    result = run(scripted_server, NAMES)
    first, second = result.rounds
    assert first.support["gamma"] < 0 and second.explorers == ["gamma"]
    assert [p.blind for p in second.proposals] == [False, False, True]
    prompts = {r.model: r for r in scripted_server.requests if is_proposal(r) and round_of(r) == 2}
    assert "Council state after round" not in prompts["gamma"].user
    assert "Council state after round 1" in prompts["alpha"].user
    assert len(prompts["gamma"].user) < len(prompts["alpha"].user)
    # Answer-level: 391 was proposed 5 times, by 3 agents; the answer is a current proposal.
    assert result.final == "391" and result.rounds[-1].winner_basis == "answer"
    assert result.winner in {p.agent for p in second.proposals if p.final == "391"}
    assert result.rounds[-1].answers[0].final == "391"


def test_exploration_and_aggregation_are_knobs(scripted_server):
    fair = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=fair))
    scripted_server.route("beta", agent("391", judge=fair))
    scripted_server.route("gamma", agent("392", judge=fair))
    result = run(scripted_server, NAMES, exploration=False, aggregation="proposal")
    assert result.rounds[1].explorers == [] and not any(p.blind for p in result.rounds[1].proposals)
    assert result.rounds[1].answers == [] and result.rounds[1].winner_basis == "proposal"


def test_free_form_proposals_ask_for_no_schema_and_reviews_keep_theirs(scripted_server):
    def free_text(request: ChatRequest) -> str:
        if is_review(request):
            reviews = [
                {"candidate": c, "critique": "checked", "score": 50} for c in request.candidates()
            ]
            return json.dumps({"reviews": reviews})
        return "17 * 23 = 17 * 20 + 17 * 3 = 340 + 51.\n\nSo the answer is \\boxed{391}."

    for name in NAMES:
        scripted_server.route(name, free_text)
    result = run(scripted_server, NAMES, max_rounds=1, min_rounds=1)
    proposals = [r for r in scripted_server.requests if is_proposal(r)]
    reviews = [r for r in scripted_server.requests if is_review(r)]
    assert proposals and all(r.response_format is None for r in proposals)
    assert "\\boxed{...}" in proposals[0].user and "JSON" not in proposals[0].user
    assert all(r.schema_name != PROPOSAL_SCHEMA_NAME for r in reviews)
    # The review schema puts the critique before the score (strict decoding writes in order).
    item = reviews[0].json_schema["properties"]["reviews"]["items"]["properties"]
    assert list(item) == ["candidate", "critique", "score"]
    first = result.rounds[0].proposals[0]
    assert first.final == "391" and first.parse_error is None
    assert first.answer == "So the answer is \\boxed{391}." and "340 + 51" in first.reasoning
    assert "compare its final answer with your own" in reviews[0].user


def test_a_truncated_proposal_is_marked_and_cannot_win_over_a_complete_one(scripted_server):
    def cut_proposal(request: ChatRequest) -> Reply:
        if is_review(request):
            reviews = [
                {"candidate": c, "critique": "ok", "score": 90} for c in request.candidates()
            ]
            return Reply(content=json.dumps({"reviews": reviews}))
        return Reply(content="17 * 23 = 391, and then the answer is 3", finish_reason="length")

    fair = judge_by_answer("391", good=30, bad=-30)
    scripted_server.route("alpha", cut_proposal)
    scripted_server.route("beta", agent("392", judge=fair))
    scripted_server.route("gamma", agent("393", judge=fair))
    result = run(scripted_server, NAMES, max_rounds=1, min_rounds=1)
    alpha = result.rounds[0].proposals[0]
    assert alpha.truncated and alpha.final is None and "length limit" in (alpha.parse_error or "")
    assert result.winner != "alpha"
    shown = next(r for r in scripted_server.requests if is_review(r) and r.model == "beta")
    assert "cut off at the length limit" in shown.user


def test_the_leader_sees_its_own_proposal_and_everyone_the_strongest_dissent(scripted_server):
    fair = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=fair, reasoning="route A: 17 * 23"))
    scripted_server.route("beta", agent("392", judge=fair, reasoning="route B"))
    scripted_server.route("gamma", agent("393", judge=fair, reasoning="route C"))
    result = run(scripted_server, NAMES, exploration=False)
    assert result.rounds[0].winner == "alpha"
    second = {
        r.model: r.user for r in scripted_server.requests if is_proposal(r) and round_of(r) == 2
    }
    assert "Your proposal led the vote" in second["alpha"]
    assert "route A: 17 * 23" in second["alpha"]  # its own text, not only "you led"
    assert "Strongest proposal with a different final answer" in second["alpha"]
    assert "Support is not evidence" in second["beta"]


def test_names_are_redacted_as_whole_words_in_reviews_and_state_views(scripted_server):
    # An agent named "phi" must not turn LaTeX's \phi into \[redacted]; a name quoted in a
    # proposal never reaches the other agents, neither in reviews nor in the next state view.
    team = team_dict(scripted_server.url, ["phi", "beta", "gamma"])
    fair = judge_by_answer("391")
    scripted_server.route(
        "phi", agent("391", judge=fair, reasoning="with \\phi = 2 I agree with beta")
    )
    scripted_server.route("beta", agent("391", judge=fair, reasoning="beta checked it"))
    scripted_server.route("gamma", agent("391", judge=fair))
    deliberate(QUESTION, team=team, config=config(exploration=False))
    for request in scripted_server.requests:
        if request.model == "phi":
            continue
        peers = request.user.split("Task:", 1)[1]
        if "\\phi" in request.user or "[redacted]" in request.user:
            assert "\\phi = 2" in peers and "\\[redacted]" not in peers
    views = [
        r.user
        for r in scripted_server.requests
        if is_proposal(r) and round_of(r) == 2 and r.model == "gamma"
    ]
    assert views and "beta" not in views[0].split("Task:", 1)[1].replace(QUESTION, "")


def test_an_agent_that_always_fails_to_propose_is_removed_even_if_it_reviews(scripted_server):
    fair = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=fair))
    scripted_server.route("beta", agent("391", judge=fair))
    reviewer_only = agent("391", judge=fair)

    def broken_proposer(request: ChatRequest) -> Reply:
        if is_review(request):
            return reviewer_only(request)
        return Reply(status=500, error_body={"error": {"message": "proposer down"}})

    names = ["alpha", "beta", "gamma", "delta"]
    scripted_server.route("gamma", broken_proposer)
    scripted_server.route("delta", agent("391", judge=fair))
    result = run(scripted_server, names, max_rounds=4, min_rounds=4)
    calls = [round_of(r) for r in scripted_server.requests if r.model == "gamma" and is_proposal(r)]
    assert calls == [1, 2]  # out after two failed proposals in a row, though it reviewed fine
    assert all("gamma" not in {r.reviewer for r in rec.reviews} for rec in result.rounds[2:])


def test_kind_auto_compares_boxed_finals_and_stops_on_unanimity(scripted_server):
    scripted_server.route("alpha", agent("391", judge=lambda text: 70))
    scripted_server.route("beta", agent("391", judge=lambda text: 70))
    result = deliberate(
        QUESTION,
        team=team_dict(scripted_server.url, ["alpha", "beta"]),
        config={"embeddings": "off", "max_rounds": 4, "min_rounds": 2, "fatigue_rule": False},
    )
    assert result.kind == "auto"
    assert result.final == "391"  # not "\\boxed{391}"
    assert result.stopped_because == "unanimous"


# --- Execution feedback (a checker written here: the orchestrator only knows the interface) ----


class FakeTests:
    """Passes programs that print 391, fails others; records what it ran."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def check(self, agent: str, code: str) -> ExecutionCheck:
        self.seen.append(agent)
        ok = "391" in code
        return ExecutionCheck(
            agent=agent,
            passed=1 if ok else 0,
            total=1,
            first_failure=None if ok else "test 1: wrong answer: expected '391', got '392'",
        )


def code_agent(value: int, *, score: int):
    def handler(request: ChatRequest) -> Reply:
        if is_review(request):
            reviews = [
                {"candidate": c, "critique": "looks fine", "score": score}
                for c in request.candidates()
                if c != own_label(request)
            ]
            return Reply(content=json.dumps({"reviews": reviews}))
        return Reply(content=f"Print it.\n\n```python\nprint({value})\n```")

    return handler


def test_a_candidate_failing_its_public_tests_cannot_win_while_one_passes(scripted_server):
    # Every reviewer loves the wrong programs (+90) and is lukewarm about the right one: the
    # tests decide anyway, and the reviewers were shown the failing case.
    scripted_server.route("alpha", code_agent(391, score=90))
    scripted_server.route("beta", code_agent(392, score=90))
    scripted_server.route("gamma", code_agent(393, score=90))
    checker = FakeTests()

    async def go():
        council = Council(
            team_dict(scripted_server.url, NAMES), config(kind="code", max_rounds=1, min_rounds=1)
        )
        return await council.run("Print 17 * 23.", checker=checker)

    result = anyio.run(go)
    assert sorted(checker.seen) == NAMES
    record = result.rounds[0]
    assert [c.ok for c in record.checks] == [True, False, False]
    assert result.winner == "alpha" and "print(391)" in (result.final or "")
    shown = next(r.user for r in scripted_server.requests if is_review(r) and r.model == "beta")
    assert "Public tests (run by the orchestrator): 0 of 1 passed, FAILED." in shown
    assert "expected '391', got '392'" in shown
    off = anyio.run(
        lambda: Council(
            team_dict(scripted_server.url, NAMES),
            config(kind="code", max_rounds=1, min_rounds=1, execution_feedback=False),
        ).run("Print 17 * 23.", checker=checker)
    )
    assert off.rounds[0].checks == []


# --- The presets --------------------------------------------------------------------------------


def test_protocol_presets_fill_only_the_knobs_left_unset():
    v1 = DeliberationConfig(protocol="v1")
    assert (v1.qv_mode, v1.aggregation, v1.exploration, v1.stopping, v1.proposal_format) == (
        "budget_signed",
        "proposal",
        False,
        "evidence",
        "json",
    )
    v2 = DeliberationConfig()
    assert (v2.protocol, v2.qv_mode, v2.aggregation, v2.exploration, v2.stopping) == (
        "v2",
        "budget_capped",
        "answer",
        True,
        "marginal",
    )
    mixed = DeliberationConfig(protocol="v1", qv_mode="sqrt_raw", exploration=True)
    assert (mixed.qv_mode, mixed.exploration, mixed.aggregation) == ("sqrt_raw", True, "proposal")
    # A dump of only what was set reloads to the same config, and follows a protocol switch.
    again = DeliberationConfig.model_validate(mixed.model_dump(exclude_unset=True))
    assert again == mixed
    from nsed.council import make_config

    switched = make_config(mixed, protocol="v2")
    assert (switched.qv_mode, switched.exploration, switched.aggregation) == (
        "sqrt_raw",
        True,
        "answer",
    )


def test_a_chat_request_can_choose_the_protocol():
    from nsed.server.protocol import ChatCompletionRequest
    from nsed.server.translate import deliberation_config

    def request(**nsed: object) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {"model": "nsed/council", "messages": [{"role": "user", "content": "hi"}],
             "nsed": nsed}
        )

    base = DeliberationConfig()
    assert deliberation_config(base, request(), None).kind == "auto"
    v1 = deliberation_config(base, request(protocol="v1"), None)
    assert (v1.qv_mode, v1.aggregation, v1.max_rounds) == ("budget_signed", "proposal", 4)
    capped = deliberation_config(base, request(protocol="v1", qv_mode="budget_capped"), None)
    assert capped.qv_mode == "budget_capped"
