"""The consensus state and its forget gate: decay, summaries, merging, the token cap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nsed.agents.backend import estimate_tokens
from nsed.config import DeliberationConfig
from nsed.orchestrator import forget_gate
from nsed.orchestrator.similarity import LexicalEmbedder
from nsed.results import Proposal, Review, RoundRecord

AGENTS = ["alpha", "beta", "gamma"]


def make_round(index: int, finals: list[str], *, critique: str = "step 2 is wrong",
               answer_len: int = 40) -> RoundRecord:
    proposals = [
        Proposal(agent=a, reasoning=f"work of round {index} " * 5,
                 answer=f"answer {f} " + "x" * answer_len, final=f)
        for a, f in zip(AGENTS, finals, strict=True)
    ]
    reviews = [
        Review(reviewer=r, candidate=c, score=40.0 if c == "alpha" else -30.0, critique=critique)
        for r in AGENTS for c in AGENTS if r != c
    ]
    support = {"alpha": 0.6, "beta": -0.2, "gamma": -0.3}
    return RoundRecord(index=index, proposals=proposals, reviews=reviews, support=support,
                       winner="alpha", conviction=0.55)


def run_rounds(config: DeliberationConfig, n: int, **kwargs) -> forget_gate.ConsensusState:
    state = forget_gate.ConsensusState()
    for i in range(1, n + 1):
        state = forget_gate.update(state, make_round(i, [str(i), "7", "8"], **kwargs), config,
                                   LexicalEmbedder())
    return state


def test_no_view_before_the_first_round():
    assert forget_gate.render_view(forget_gate.ConsensusState(), "alpha",
                                   DeliberationConfig()) is None


def test_old_rounds_are_summarised_then_forgotten():
    config = DeliberationConfig(gamma=0.5, keep_threshold=0.6, drop_threshold=0.2)
    state = run_rounds(config, 5)
    # weights by age: 1 (round 5), .5 (4), .25 (3), .125 (2: forgotten)
    assert [d.round for d in state.digests] == [3, 4, 5]
    view = forget_gate.render_view(state, "beta", config)
    assert "round 4: leading final 4" in view and "round 3: leading final 3" in view
    assert "round 2" not in view
    assert "Council state after round 5" in view


def test_gamma_zero_keeps_only_the_last_round():
    config = DeliberationConfig(gamma=0.0, keep_threshold=0.6, drop_threshold=0.2)
    state = run_rounds(config, 4)
    assert [d.round for d in state.digests] == [4]
    assert "Earlier rounds" not in forget_gate.render_view(state, "beta", config)


def test_identical_critiques_are_merged_with_a_count():
    config = DeliberationConfig()
    state = run_rounds(config, 1)
    view = forget_gate.render_view(state, "beta", config)
    assert "(2 reviewers) score -30: step 2 is wrong" in view


def test_view_names_no_agent_and_marks_the_readers_own_rows():
    config = DeliberationConfig()
    state = run_rounds(config, 2)
    view = forget_gate.render_view(state, "gamma", config)
    assert not any(name in view for name in AGENTS)
    assert "(yours)" in view and "(leading)" in view
    assert "Your previous proposal" in view
    winner_view = forget_gate.render_view(state, "alpha", config)
    assert "Your proposal led the vote" in winner_view


@settings(max_examples=30, deadline=None)
@given(answer_len=st.integers(0, 40_000), cap=st.integers(100, 3000),
       critique=st.text(min_size=0, max_size=5000))
def test_view_never_exceeds_the_token_cap(answer_len, cap, critique):
    config = DeliberationConfig(state_token_cap=cap)
    state = run_rounds(config, 3, critique=critique, answer_len=answer_len)
    for agent in AGENTS:
        assert estimate_tokens(forget_gate.render_view(state, agent, config)) <= cap


# --- protocol v2's context ---------------------------------------------------------------------


def test_clip_middle_keeps_the_head_and_the_longer_tail():
    text = "HEAD " + "x" * 500 + " the final computation: 17 * 23 = 391"
    clipped = forget_gate.clip_middle(text, 120)
    assert len(clipped) <= 120
    assert clipped.startswith("HEAD") and clipped.endswith("17 * 23 = 391") and " … " in clipped
    assert forget_gate.clip_middle("short", 120) == "short"


def test_v2_shows_the_leader_its_own_proposal_and_everyone_the_strongest_dissent():
    config = DeliberationConfig()
    state = run_rounds(config, 1)
    leader = forget_gate.render_view(state, "alpha", config)
    assert "Your proposal led the vote" in leader
    assert "work of round 1" in leader  # the leader's own reasoning, not only "you led"
    # beta (-0.2) is the best-supported proposal with another final than the leader's.
    assert "Strongest proposal with a different final answer (support -0.20)" in leader
    gamma = forget_gate.render_view(state, "gamma", config)
    assert "Strongest proposal with a different final answer" in gamma
    beta = forget_gate.render_view(state, "beta", config)
    assert "Strongest proposal with a different final answer" not in beta  # its own
    v1 = DeliberationConfig(protocol="v1")
    old = forget_gate.render_view(run_rounds(v1, 1), "alpha", v1)
    assert "work of round 1" not in old and "Strongest proposal" not in old


def test_v2_clips_long_reasoning_from_the_middle():
    config = DeliberationConfig(state_token_cap=300)
    state = forget_gate.update(
        forget_gate.ConsensusState(),
        RoundRecord(
            index=1,
            proposals=[
                Proposal(agent="alpha", reasoning="start " + "y" * 3000 + " end: 391",
                         answer="\\boxed{391}", final="391"),
                Proposal(agent="beta", reasoning="b", answer="\\boxed{7}", final="7"),
            ],
            support={"alpha": 0.5, "beta": -0.5},
            winner="alpha",
        ),
        config,
        LexicalEmbedder(),
    )
    view = forget_gate.render_view(state, "beta", config)
    assert "end: 391" in view and "start" in view
