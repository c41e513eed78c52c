"""The embedded local default end to end: a real deliberation of real (tiny) models.

With no team and no environment configuration, ``deliberate()`` starts llama.cpp's server on the
bundled SmolLM2-135M and deliberates with three local agents. These tests check what must hold
whatever the model says: the protocol completes, every phase yields parseable output or a
recorded drop, events stream in order, the server is reused, and a server that dies
mid-deliberation ends it quickly with a typed error. They never assert on correctness.

The team-precedence tests (``NSED_TEAM``, ``OPENAI_BASE_URL``) need no model: they point nsed at
a scripted server and check that the requests really arrive there.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import BaseModel

from nsed import (
    Council,
    Deliberation,
    Event,
    Finished,
    ProposalReceived,
    QuorumLost,
    ReviewReceived,
    RoundScored,
    RoundStarted,
    deliberate,
)
from nsed.agents import prompts
from nsed.agents.local import (
    LocalServer,
    LocalServerConfig,
    get_shared_server,
    shutdown_shared_server,
)
from nsed.agents.step_parsing import parse_step
from nsed.errors import BackendError, ConfigError, InvalidOutput
from nsed.orchestrator.events import AgentFailed, CallTruncated
from nsed.steps import step_format
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.scripted_server import ScriptedServer

QUESTION = "What is 17 * 23?"
TEAM_ENV = ("NSED_TEAM", "OPENAI_BASE_URL", "OPENAI_API_KEY", "NSED_MODEL")


# --- Precedence of the team sources (no model needed) -------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in TEAM_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def scripted_agent(server: ScriptedServer, model: str) -> None:
    server.route(model, agent("391", judge=judge_by_answer("391")))


def write_team_toml(path: Path, url: str, names: list[str]) -> Path:
    blocks = [
        f'[[models]]\nname = "{name}"\nbase_url = "{url}"\nmodel = "{name}"\nmax_retries = 0\n'
        for name in names
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def test_openai_base_url_switches_to_that_endpoint(
    clean_env: pytest.MonkeyPatch, scripted_server: ScriptedServer
) -> None:
    scripted_agent(scripted_server, "remote-model")
    clean_env.setenv("OPENAI_BASE_URL", scripted_server.url)
    clean_env.setenv("OPENAI_API_KEY", "sk-integration-test")
    clean_env.setenv("NSED_MODEL", "remote-model")

    result = deliberate(QUESTION, kind="math", max_rounds=1, min_rounds=1)

    assert len(result.agents) == 5  # five diverse replicas of the one remote model
    assert {a.base_url for a in result.agents} == {scripted_server.url}
    requests = scripted_server.requests
    assert len(requests) == 10  # 5 proposals + 5 reviews
    assert {r.model for r in requests} == {"remote-model"}
    assert {r.headers.get("authorization") for r in requests} == {"Bearer sk-integration-test"}
    assert result.final == "391"  # the scripted agents' answer: it came from this endpoint


def test_nsed_team_wins_over_openai_base_url(
    clean_env: pytest.MonkeyPatch,
    scripted_server_factory: Callable[[], ScriptedServer],
    tmp_path: Path,
) -> None:
    team_server, other = scripted_server_factory(), scripted_server_factory()
    for name in ("alpha", "beta"):
        scripted_agent(team_server, name)
    scripted_agent(other, "remote-model")
    toml = write_team_toml(tmp_path / "team.toml", team_server.url, ["alpha", "beta"])
    clean_env.setenv("NSED_TEAM", str(toml))
    clean_env.setenv("OPENAI_BASE_URL", other.url)
    clean_env.setenv("NSED_MODEL", "remote-model")

    result = deliberate(QUESTION, kind="math", max_rounds=1, min_rounds=1)

    assert [a.name for a in result.agents] == ["alpha", "beta"]
    assert {r.model for r in team_server.requests} == {"alpha", "beta"}
    assert len(team_server.requests) == 4
    assert other.requests == []


def test_team_argument_wins_over_nsed_team(
    clean_env: pytest.MonkeyPatch,
    scripted_server_factory: Callable[[], ScriptedServer],
    tmp_path: Path,
) -> None:
    chosen, env_server = scripted_server_factory(), scripted_server_factory()
    for name in ("alpha", "beta"):
        scripted_agent(chosen, name)
        scripted_agent(env_server, name)
    clean_env.setenv(
        "NSED_TEAM", str(write_team_toml(tmp_path / "t.toml", env_server.url, ["alpha", "beta"]))
    )

    result = deliberate(
        QUESTION, team=team_dict(chosen.url, ["alpha", "beta"]), max_rounds=1, min_rounds=1
    )

    assert {a.base_url for a in result.agents} == {chosen.url}
    assert len(chosen.requests) == 4
    assert env_server.requests == []


def test_broken_nsed_team_is_an_error_not_a_silent_fallback(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-team.toml"
    clean_env.setenv("NSED_TEAM", str(missing))
    with pytest.raises(ConfigError, match=r"no-such-team\.toml"):
        deliberate(QUESTION, max_rounds=1, min_rounds=1)


# --- The local default (real model) -------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    """The process-wide shared server, stopped when this module is done.

    One thread (``-t 1``): the test process itself (embeddings, scoring) and, on a developer
    machine, other work compete for the 2 cores, and llama.cpp's spinning worker threads
    collapse under oversubscription (measured: 3-12 tok/s with -t 2 versus 30-42 tok/s with
    -t 1 at load 6; see perf/local_default.md). A server left running by another test
    module is shut down first so the config below is the one in use.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in TEAM_ENV:  # the default must be what resolves, not a developer's remote
            mp.delenv(name, raising=False)
        shutdown_shared_server()
        server = get_shared_server(LocalServerConfig(threads=1))
        try:
            yield server
        finally:
            shutdown_shared_server()


def prompt_tokens_served(server: LocalServer) -> float:
    """``llamacpp:prompt_tokens_total`` from the server's /metrics: proof requests reached it."""
    text = httpx.get(f"{server.root_url}/metrics", timeout=5.0, trust_env=False).text
    for line in text.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return float(line.split()[-1])
    raise AssertionError(f"no llamacpp:prompt_tokens_total in /metrics:\n{text[:500]}")


async def collect_events(**overrides: object) -> list[Event]:
    events: list[Event] = []
    async for event in Council().stream(QUESTION, kind="math", **overrides):
        events.append(event)
    return events


@dataclass
class TwoCalls:
    """Two deliberations in a row on the default team: one blocking, one streamed."""

    result: Deliberation
    events: list[Event]
    pids: tuple[int | None, int | None, int | None]
    served: tuple[float, float, float]


@pytest.fixture(scope="module")
def two_calls(local_server: LocalServer) -> TwoCalls:
    pid0, served0 = local_server.pid, prompt_tokens_served(local_server)
    result = deliberate(QUESTION, kind="math", max_rounds=2, min_rounds=2)
    pid1, served1 = get_shared_server().pid, prompt_tokens_served(get_shared_server())
    events = anyio.run(lambda: collect_events(max_rounds=1, min_rounds=1))
    pid2, served2 = get_shared_server().pid, prompt_tokens_served(get_shared_server())
    return TwoCalls(result, events, (pid0, pid1, pid2), (served0, served1, served2))


@pytest.mark.integration
def test_default_team_deliberates_three_agents_two_rounds(
    two_calls: TwoCalls, local_server: LocalServer
) -> None:
    d = two_calls.result
    agents = [a.name for a in d.agents]
    assert len(agents) == 3 and len(set(agents)) == 3
    assert {a.base_url for a in d.agents} == {local_server.base_url}
    assert len(d.rounds) == 2
    for record in d.rounds:
        proposers = {p.agent for p in record.proposals}
        failed = {(f.agent, f.phase) for f in record.failures}
        # Every seat answered the proposing phase or has a recorded failure.
        assert proposers | {a for a, phase in failed if phase == "propose"} == set(agents)
        assert len(proposers) >= 2
        for p in record.proposals:
            assert isinstance(p.answer, str)
            assert p.answer.strip() or p.parse_error, f"{p.agent} gave an empty, unflagged answer"
            assert p.completion_tokens > 0
        for review in record.reviews:
            if review.dropped_reason is None:
                assert review.score is not None and -100 <= review.score <= 100
                assert review.candidate in proposers and review.candidate != review.reviewer
            else:
                assert review.dropped_reason.strip()
        reviewers = {r.reviewer for r in record.reviews}
        assert reviewers <= set(agents)
        if record.winner is not None and record.winner_round is None:
            assert record.winner in proposers
    assert d.usage.calls > 0 and d.usage.completion_tokens > 0
    # The answer is the winning proposal: of the last round, or of the earlier round whose
    # proposal carries the winning answer (answer-level aggregation).
    last = d.rounds[-1]
    source = d.rounds[(last.winner_round or last.index) - 1]
    assert d.answer == next((p.answer for p in source.proposals if p.agent == d.winner), "")


@pytest.mark.integration
def test_streamed_events_arrive_in_protocol_order(two_calls: TwoCalls) -> None:
    events = two_calls.events
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished) for e in events) == 1
    final = events[-1].deliberation
    current: int | None = None
    phase = "done"  # started -> proposing -> reviewing -> done
    for event in events[:-1]:
        if isinstance(event, RoundStarted):
            assert phase == "done", f"round {event.round} started before the last was scored"
            current, phase = event.round, "started"
            continue
        assert current is not None, f"{event.type} before any RoundStarted"
        assert event.round == current, f"{event.type} of round {event.round} in round {current}"
        if isinstance(event, ProposalReceived):
            assert phase in ("started", "proposing"), "a proposal arrived after reviewing began"
            phase = "proposing"
        elif isinstance(event, ReviewReceived):
            assert phase in ("proposing", "reviewing"), "a review arrived before any proposal"
            phase = "reviewing"
        elif isinstance(event, RoundScored):
            assert phase in ("proposing", "reviewing")
            phase = "done"
        elif isinstance(event, CallTruncated):  # a call cut at max_tokens, just before its event
            allowed = ("started", "proposing") if event.phase == "propose" else (
                "proposing", "reviewing")
            assert phase in allowed, f"a truncated {event.phase} call in phase {phase}"
        else:
            assert isinstance(event, AgentFailed), f"unexpected event {event.type}"
    assert phase == "done"
    scored = [e for e in events if isinstance(e, RoundScored)]
    assert [e.round for e in scored] == [r.index for r in final.rounds] == [1]
    streamed = sorted(e.proposal.agent for e in events if isinstance(e, ProposalReceived))
    assert streamed == sorted(p.agent for p in final.rounds[0].proposals)


@pytest.mark.integration
def test_server_is_reused_across_deliberate_calls(
    two_calls: TwoCalls, local_server: LocalServer
) -> None:
    pid0, pid1, pid2 = two_calls.pids
    assert pid0 is not None and pid0 == pid1 == pid2
    assert get_shared_server() is local_server and local_server.is_alive()
    served0, served1, served2 = two_calls.served
    assert served0 < served1 < served2  # both calls were answered by this very process


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Product(BaseModel):
    value: int
    unit: str


@pytest.mark.integration
def test_llama_cpp_decodes_under_the_nsed_step_schema(local_server: LocalServer) -> None:
    """llama.cpp accepts the step schemas (tools with $defs, a forced tool, an answer model) as
    grammars: a reply that finishes is a valid step, whatever the tiny model means by it."""
    formats = [
        step_format(tools=[multiply, Product]),
        step_format(tools=[multiply], tool_choice="required", parallel_tool_calls=False),
        step_format(response_model=Product),
    ]
    for fmt in formats:
        assert fmt is not None
        user = prompts.step_proposal_prompt(
            round_index=1,
            question=prompts.step_task("What is 6 times 7?", fmt),
            state_view=None,
            fmt=fmt,
            native=False,
        )
        schema = {"name": prompts.STEP_SCHEMA_NAME, "schema": prompts.step_schema(fmt)}
        reply = httpx.post(
            f"{local_server.base_url}/chat/completions",
            json={
                "model": "local",
                "messages": [{"role": "user", "content": user}],
                "max_tokens": 300,
                "temperature": 0.2,
                "seed": 1,
                "response_format": {"type": "json_schema", "json_schema": schema},
            },
            timeout=300,
            trust_env=False,
        )
        assert reply.status_code == 200, reply.text[:300]  # the grammar was built
        choice = reply.json()["choices"][0]
        if choice["finish_reason"] == "stop":
            step = parse_step(choice["message"]["content"], [], fmt).step
            assert step.valid, (step.errors, choice["message"]["content"][:300])


@pytest.mark.integration
def test_default_team_returns_a_valid_step_or_a_typed_error(local_server: LocalServer) -> None:
    try:
        result = deliberate(QUESTION, tools=[multiply], max_rounds=1, min_rounds=1, max_tokens=300)
    except InvalidOutput as exc:  # a tiny model may never fit the format: typed, with reasons
        assert exc.param == "tools" and exc.reasons
        return
    assert result.step is not None and result.step.valid
    for p in result.rounds[0].proposals:
        assert p.step is not None and (p.step.valid or p.step.errors)
        assert p.agent not in result.rounds[0].support or p.step.valid


@pytest.mark.integration
def test_killing_the_server_mid_deliberation_fails_fast(local_server: LocalServer) -> None:
    """SIGKILL the server once the first proposal is in: a typed error in seconds, no hang.

    If the other proposals had already arrived, round 1 may still complete (with every review
    failed) and the deliberation then ends as ``quorum_lost`` instead of raising.
    """
    server = get_shared_server()
    pid = server.pid
    assert pid is not None
    killed_at: list[float] = []
    outcome: list[object] = []

    async def run() -> None:
        with anyio.fail_after(90):
            async for event in Council().stream(QUESTION, kind="math", max_rounds=2):
                if isinstance(event, ProposalReceived) and not killed_at:
                    os.kill(pid, signal.SIGKILL)
                    killed_at.append(time.monotonic())
                if isinstance(event, Finished):
                    outcome.append(event.deliberation)

    try:
        anyio.run(run)
    except (QuorumLost, BackendError) as exc:
        outcome.append(exc)
    ended = time.monotonic()

    assert killed_at, "no proposal arrived before the deadline"
    assert ended - killed_at[0] < 30, f"took {ended - killed_at[0]:.1f} s to give up"
    assert len(outcome) == 1
    if isinstance(outcome[0], Deliberation):
        d = outcome[0]
        assert d.stopped_because == "quorum_lost"
        assert any(r.failures for r in d.rounds) or len(d.rounds) < 2
    else:
        assert isinstance(outcome[0], QuorumLost | BackendError)
    assert not server.is_alive()
    # The next user of the shared server gets a fresh one instead of a dead handle.
    fresh = get_shared_server()
    assert fresh.is_alive() and fresh.pid != pid
