"""A 200 reply that is not a chat completion nsed can read costs that agent that call, never
the deliberation (issue 14, item 5). Each shape is served by the scripted server to one of three
agents; the other two keep the quorum and the deliberation answers."""

from __future__ import annotations

import json

import pytest

from nsed import deliberate
from tests.council_scripts import agent, is_proposal, judge_by_answer, proposal_json, team_dict
from tests.scripted_server import ChatRequest, Reply

NAMES = ["alpha", "beta", "gamma"]
CONFIG = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "seed": 3, "kind": "math"}
GOOD_MESSAGE = {"role": "assistant", "content": proposal_json("391")}
GOOD_USAGE = {"prompt_tokens": 10, "completion_tokens": 5}


def broken(**fields) -> Reply:
    return Reply(**{"raw_message": GOOD_MESSAGE, "usage": GOOD_USAGE, **fields})


MALFORMED = {
    "content is an int": broken(raw_message={"role": "assistant", "content": 391}),
    "content is an object": broken(raw_message={"role": "assistant", "content": {"text": "391"}}),
    "a content part is a string": broken(
        raw_message={"role": "assistant", "content": ["391"]}),
    "no message": broken(raw_message=None),
    "reasoning is a list": broken(raw_message={**GOOD_MESSAGE, "reasoning_content": ["a", "b"]}),
    "usage is a string": broken(usage="10 prompt, 5 completion"),
    "token count is a string": broken(usage={"prompt_tokens": "10", "completion_tokens": 5}),
    "token count is infinite": broken(usage={"prompt_tokens": 10,
                                             "completion_tokens": float("inf")}),
    "token count is negative": broken(usage={"prompt_tokens": -10, "completion_tokens": 5}),
    "token count is a float": broken(usage={"prompt_tokens": 10.5, "completion_tokens": 5}),
    "reasoning tokens are a string": broken(usage={
        **GOOD_USAGE, "completion_tokens_details": {"reasoning_tokens": "3"}}),
    "finish_reason is an int": broken(finish_reason=1),
}


def routed(server, gamma_proposal: Reply) -> None:
    for name in ("alpha", "beta"):
        server.route(name, agent("391", judge=judge_by_answer("391")))
    good = agent("392", judge=judge_by_answer("391"))
    server.route("gamma", lambda r: gamma_proposal if is_proposal(r) else good(r))


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_a_malformed_reply_is_that_agents_failure_for_that_call(scripted_server, shape):
    routed(scripted_server, MALFORMED[shape])
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=CONFIG)
    assert result.final == "391" and result.winner in {"alpha", "beta"}
    record = result.rounds[0]
    assert [p.agent for p in record.proposals] == ["alpha", "beta"]
    (failure,) = record.failures
    assert failure.agent == "gamma" and failure.phase == "propose"
    assert "not a chat completion" in failure.error
    assert result.usage.failed_calls == 1
    # gamma still reviews: one bad reply costs one call, not the seat
    assert any(r.reviewer == "gamma" and r.dropped_reason is None for r in record.reviews)


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": proposal_json("391")}],
        [{"type": "thinking", "thinking": "PRIVATE 17*23"},
         {"type": "text", "text": proposal_json("391")[:20]},
         {"type": "text", "text": proposal_json("391")[20:]}],
        [{"type": "reasoning", "text": "PRIVATE 17*23"}, {"type": "image_url", "image_url": {}},
         {"type": "text", "text": proposal_json("391")}],
    ],
    ids=["text part", "thinking and split text", "reasoning, image and text"],
)
def test_content_as_a_list_of_parts_is_read(scripted_server, content):
    """The shape some gateways return: the text parts are the answer, thinking parts thinking."""
    routed(scripted_server, Reply(raw_message={"role": "assistant", "content": content}))
    scripted_server.route("gamma", _parts_proposer(content))
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=CONFIG)
    gamma = next(p for p in result.rounds[0].proposals if p.agent == "gamma")
    assert gamma.final == "391" and not result.rounds[0].failures
    assert gamma.thinking == ("PRIVATE 17*23" if len(content) > 1 else "")


def _parts_proposer(content):
    good = agent("391", judge=judge_by_answer("391"))

    def handler(request: ChatRequest) -> Reply:
        if is_proposal(request):
            return Reply(raw_message={"role": "assistant", "content": content})
        return good(request)

    return handler


def test_a_reply_without_usage_is_estimated_not_refused(scripted_server):
    routed(scripted_server, Reply(content=proposal_json("391"), usage=None))
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=CONFIG)
    assert not result.rounds[0].failures
    gamma = next(c for c in result.rounds[0].calls if c.agent == "gamma" and
                 c.phase == "propose")
    assert gamma.prompt_tokens == 0 and gamma.completion_tokens > 0


def test_an_agent_whose_every_reply_is_malformed_costs_only_its_seat(scripted_server):
    routed(scripted_server, Reply())
    scripted_server.route("gamma", lambda r: Reply(raw_message=json.dumps(GOOD_MESSAGE)))
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=CONFIG)
    assert result.final == "391"
    failures = result.rounds[0].failures
    assert [(f.agent, f.phase) for f in failures] == [("gamma", "propose"), ("gamma", "review")]
