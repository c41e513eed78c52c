"""Simulated agents: calibration, determinism, personas, and the whole pipeline running on them
(in-process, over HTTP, and through ``nsed simulate``)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from nsed.agents import prompts
from nsed.agents.backend import EndpointPool
from nsed.agents.parsing import parse_proposal, parse_reviews
from nsed.agents.simulated import (
    SimProfile,
    SimulatedAgent,
    SimulatedWorld,
    parse_sim_url,
    sim_query,
    simulated_backend,
)
from nsed.benchmarks.grading import grade_math
from nsed.config import ModelSpec, TeamSpec
from nsed.council import Council
from nsed.errors import BackendError, ConfigError, DataError
from nsed.problems import generate_quick
from nsed.results import Deliberation
from nsed.simulation.experiment import (
    METHODS,
    SimOptions,
    SimSetting,
    expand_grid,
    run_simulation,
)
from nsed.simulation.server import SimulatedServer
from tests.helpers import run_nsed

QUICK_N = 60
PROBLEMS = generate_quick(QUICK_N, 0)
FIXED = {"kind": "math", "embeddings": "off", "max_rounds": 3, "min_rounds": 3}


def sim_team(*queries: str, names: list[str] | None = None) -> TeamSpec:
    """One sim:// seat per query string, named sim1, sim2, ..."""
    names = names or [f"sim{i + 1}" for i in range(len(queries))]
    return TeamSpec.model_validate(
        {
            "models": [
                {
                    "name": name,
                    "base_url": f"sim://{name}?{q}&quick_n={QUICK_N}",
                    "model": name,
                    "max_retries": 0,
                }
                for name, q in zip(names, queries, strict=True)
            ]
        }
    )


def deliberate(team: TeamSpec, question: str, **config: object) -> Deliberation:
    return anyio.run(lambda: Council(team, {**FIXED, **config}).run(question, seed=1))


def proposal_messages(question: str) -> list[dict[str, str]]:
    user = prompts.proposal_prompt(round_index=1, question=question, state_view=None)
    return [{"role": "system", "content": "s"}, {"role": "user", "content": user}]


# --- Calibration ------------------------------------------------------------------------------


def test_generator_accuracy_matches_p_g_over_2000_draws() -> None:
    """p_g = 0.3: right 30% ± 3.5 points (σ ≈ 1.02 points at n = 2000, so ≈ 3.4σ)."""
    problems = generate_quick(2000, 7)
    agent = SimulatedAgent("calib", SimProfile(p_g=0.3), SimulatedWorld(problems))
    right = 0
    for problem in problems:
        reply = agent.respond(proposal_messages(problem.prompt))
        parsed = parse_proposal(reply.texts[0], "math")
        assert parsed.error is None
        right += grade_math(parsed.final, str(problem.answer))
    assert abs(right / 2000 - 0.3) <= 0.035


def test_verifier_accuracy_matches_p_v_over_2000_judgments() -> None:
    """p_v = 0.8: scores on the right side 80% ± 3.5 points (σ ≈ 0.89 points, ≈ 3.9σ)."""
    problems = generate_quick(1000, 8)
    world = SimulatedWorld(problems)
    agent = SimulatedAgent("judge", SimProfile(p_v=0.8), world)
    on_right_side = 0
    for problem in problems:
        wrong = world.distractors(problem, 4)[0]
        candidates = [
            ("A", f"Answer:\nThe answer is \\boxed{{{problem.answer}}}."),
            ("B", f"Answer:\nThe answer is \\boxed{{{wrong}}}."),
        ]
        user = prompts.review_prompt(
            round_index=1,
            question=problem.prompt,
            own_answer=None,
            own_label=None,
            candidates=candidates,
        )
        reply = agent.respond([{"role": "user", "content": user}])
        parsed = parse_reviews(reply.texts[0], ["A", "B"])
        scores = {item.candidate: item.score for item in parsed.items}
        assert set(scores) == {"A", "B"} and not parsed.dropped
        on_right_side += (scores["A"] or 0) > 0
        on_right_side += (scores["B"] or 0) < 0
    assert abs(on_right_side / 2000 - 0.8) <= 0.035


# --- Configuration and errors ------------------------------------------------------------------


def test_sim_url_round_trips_and_bad_parameters_say_what_to_change() -> None:
    profile = SimProfile(p_g=0.3, p_v=0.9, persona="self_promoter", seed=4)
    target = parse_sim_url(f"sim://x?{sim_query(profile, quick_n=50, quick_seed=2)}")
    assert (target.name, target.profile, target.quick_n, target.quick_seed) == (
        "x",
        profile,
        50,
        2,
    )
    assert parse_sim_url("sim://y?persona=always-wrong").profile.persona == "always_wrong"
    with pytest.raises(ConfigError, match="p_g"):
        parse_sim_url("sim://a?p_g=1.5")
    with pytest.raises(ConfigError, match=r"unknown simulation parameter.*p_x"):
        parse_sim_url("sim://a?p_x=1")
    with pytest.raises(ConfigError, match="twice"):
        parse_sim_url("sim://a?p_g=0.1&p_g=0.2")
    with pytest.raises(ConfigError, match="grid key"):
        expand_grid(SimSetting(), "p_q=1")
    with pytest.raises(DataError, match="integer"):
        SimulatedWorld([PROBLEMS[0].model_copy(update={"answer": "1/2"})])


def test_unknown_task_and_simulated_failures_are_backend_errors() -> None:
    async def main() -> None:
        seat = sim_team("p_g=1", "fail_rate=1").agents()
        async with EndpointPool() as pool:
            ok, failing = simulated_backend(seat[0], pool), simulated_backend(seat[1], pool)
            with pytest.raises(BackendError, match="not in its simulated world"):
                await ok.complete(proposal_messages("What is the meaning of life?"))
            with pytest.raises(BackendError, match="simulated failure"):
                await failing.complete(proposal_messages(PROBLEMS[0].prompt))
            completion = await ok.complete(proposal_messages(PROBLEMS[0].prompt))
            chars = sum(len(m["content"]) for m in proposal_messages(PROBLEMS[0].prompt))
            assert completion.prompt_tokens == (chars + 3) // 4
            assert completion.completion_tokens == (len(completion.text) + 3) // 4

    anyio.run(main)


# --- The pipeline -----------------------------------------------------------------------------


def test_whole_pipeline_runs_on_simulated_agents(tmp_path: Path) -> None:
    toml = tmp_path / "team.toml"
    toml.write_text(
        "\n".join(
            f'[[models]]\nname = "sim{i}"\nbase_url = "sim://sim{i}?p_g=0.5&p_v=0.8&quick_n='
            f'{QUICK_N}"\nmodel = "sim{i}"\n'
            for i in (1, 2, 3)
        )
    )
    result = deliberate(TeamSpec.from_toml(toml), PROBLEMS[3].prompt)
    assert len(result.rounds) == 3 and result.stopped_because == "max_rounds"
    for record in result.rounds:
        assert len(record.proposals) == 3
        assert all(p.parse_error is None and p.final for p in record.proposals)
        counted = [r for r in record.reviews if r.dropped_reason is None]
        assert len(counted) == 6 and record.winner is not None
        assert record.evidence is not None and record.prompt_tokens > 0
    assert result.final == result.rounds[-1].winner_final

    perfect = sim_team("p_g=1&p_v=1", "p_g=1&p_v=1", "p_g=1&p_v=1")
    stopped = deliberate(perfect, PROBLEMS[4].prompt, max_rounds=6, min_rounds=2)
    assert stopped.final == PROBLEMS[4].answer and stopped.stopped_because == "unanimous"
    assert len(stopped.rounds) == 2
    capped = deliberate(perfect, PROBLEMS[4].prompt, budget_tokens=1, max_rounds=4, min_rounds=4)
    assert capped.stopped_because == "budget_tokens" and len(capped.rounds) == 1


def test_wrong_agents_revise_to_the_leader_and_can_agree_by_chance() -> None:
    honest, wrong_reviser = "p_g=1&p_v=1&sycophancy=0", "p_g=0&p_v=1&revise=1&sycophancy=0"
    team = sim_team(honest, wrong_reviser, wrong_reviser)
    # v1 shows every agent the state, so a wrong reviser adopts the leader.
    result = deliberate(team, PROBLEMS[5].prompt, protocol="v1")
    gold = PROBLEMS[5].answer
    assert {p.final for p in result.rounds[0].proposals} != {gold}
    assert all(p.final == gold for p in result.rounds[1].proposals)

    # With a single distractor, wrong agents always agree: a confident, wrong unanimity.
    wrong = sim_team(*["p_g=0&p_v=1&distractors=1"] * 3)
    stuck = deliberate(wrong, PROBLEMS[6].prompt)
    assert stuck.final is not None and stuck.final != PROBLEMS[6].answer
    assert all(r.unanimous for r in stuck.rounds)


def test_a_blind_prompt_is_a_fresh_draw_and_free_text_is_answered_in_kind() -> None:
    """v2's exploration: a rejected agent gets no state view and draws afresh with its p_g;
    the simulator sees only the prompt (no state, no schema) and answers as a model would."""
    team = sim_team("p_g=1&p_v=1", "p_g=0.5&p_v=1&revise=1", "p_g=0.5&p_v=1&revise=1")
    explored = 0
    for problem in PROBLEMS[:12]:
        result = deliberate(team, problem.prompt)
        for before, after in zip(result.rounds, result.rounds[1:], strict=False):
            rejected = {a for a, s in before.support.items() if s < 0}
            assert set(after.explorers) == rejected
            for p in after.proposals:
                assert p.blind == (p.agent in rejected)
            explored += len(rejected)
    assert explored > 0
    # No schema in the request (free-form proposals): plain text ending in a boxed final.
    agent = SimulatedAgent("x", SimProfile(p_g=1.0), SimulatedWorld(PROBLEMS))
    text = agent.respond(proposal_messages(PROBLEMS[0].prompt), structured=False).texts[0]
    assert not text.lstrip().startswith("{")
    assert text.endswith(f"\\boxed{{{PROBLEMS[0].answer}}}.")


def test_adversarial_personas_behave_as_specified() -> None:
    team = sim_team("p_g=0.5", "p_g=0.5", "persona=self_promoter", names=["h1", "h2", "sp"])
    for problem in PROBLEMS[:5]:
        result = deliberate(team, problem.prompt)
        for record in result.rounds:
            mine = [r for r in record.reviews if r.reviewer == "sp"]
            selfies = [r for r in mine if r.candidate == "sp"]
            assert len(selfies) == 1 and selfies[0].score == 100
            assert selfies[0].dropped_reason == "self-review"
            counted = [r for r in mine if r.dropped_reason is None]
            assert len(counted) == 2 and all((r.score or 0) <= -60 for r in counted)
    wrong = sim_team("p_g=1", "p_g=1", "persona=always_wrong")
    random_team = sim_team("p_g=1", "p_g=1", "persona=random")
    seen_scores: list[float] = []
    for problem in PROBLEMS[:10]:
        result = deliberate(wrong, problem.prompt)
        for record in result.rounds:
            bad = next(p for p in record.proposals if p.agent == "sim3")
            assert bad.final != problem.answer
        noisy = deliberate(random_team, problem.prompt)
        seen_scores += [
            r.score or 0 for rec in noisy.rounds for r in rec.reviews if r.reviewer == "sim3"
        ]
    assert min(seen_scores) < 0 < max(seen_scores)


def test_over_http_the_agents_give_exactly_the_in_process_replies() -> None:
    query = "p_g=0.5&p_v=0.7&revise=0.5&sycophancy=0.2"
    local = sim_team(query, query, query)
    with SimulatedServer() as server:
        remote = TeamSpec.model_validate(
            {
                "models": [
                    {
                        "name": f"sim{i}",
                        "base_url": server.url,
                        "model": f"sim{i}?{query}&quick_n={QUICK_N}",
                        "max_retries": 0,
                    }
                    for i in (1, 2, 3)
                ]
            }
        )
        for problem in PROBLEMS[10:14]:
            a = deliberate(local, problem.prompt)
            b = deliberate(remote, problem.prompt)
            for ra, rb in zip(a.rounds, b.rounds, strict=True):
                assert [p.final for p in ra.proposals] == [p.final for p in rb.proposals]
                assert ra.support == rb.support and ra.winner == rb.winner


# --- The experiment runner --------------------------------------------------------------------


def _without_timing(report_json: str) -> dict:
    data = json.loads(report_json)
    for setting in data["settings"]:
        setting.pop("throughput")
    return data


def test_simulation_is_deterministic_per_seed_and_transport() -> None:
    settings = expand_grid(SimSetting(rounds=3), "p_v=0.6,0.9")
    options = SimOptions(problems=20, concurrency=10)
    first = run_simulation(settings, options)
    again = run_simulation(settings, options)
    assert _without_timing(first.model_dump_json()) == _without_timing(again.model_dump_json())
    over_http = run_simulation(settings[:1], options.model_copy(update={"http": True}))
    assert over_http.settings[0].throughput.transport == "http"
    assert over_http.settings[0].methods == first.settings[0].methods
    assert over_http.settings[0].accuracy_by_round == first.settings[0].accuracy_by_round
    other = run_simulation(settings[:1], options.model_copy(update={"seed": 1}))
    assert other.settings[0].accuracy_by_round != first.settings[0].accuracy_by_round
    result = first.settings[1]
    assert len(result.accuracy_by_round) == 4 and result.fit is not None
    assert result.vote_k == 18  # 3 agents x 2 calls x 3 rounds
    assert [m.method for m in result.methods] == list(METHODS)
    by_name = {m.method: m for m in result.methods}
    assert by_name["nsed"].tokens_per_problem > by_name["single"].tokens_per_problem > 0
    assert by_name["vote"].tokens_per_problem > 0
    assert by_name["nsed_auto"].calls_per_problem <= by_name["nsed"].calls_per_problem
    assert result.throughput.calls == 20 * 18 and result.throughput.cpu_ms_per_call > 0


def test_cli_simulate_prints_json_only(tmp_path: Path) -> None:
    run = run_nsed(
        *("simulate", "--problems", "12", "--rounds", "3", "--grid", "p_g=0.3,0.6"),
        *("--json", "--plot", str(tmp_path)),
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [s["setting"]["p_g"] for s in report["settings"]] == [0.3, 0.6]
    assert (tmp_path / "accuracy_by_round.png").stat().st_size > 0
    bad = run_nsed("simulate", "--problems", "5", "--p-g", "2", "--json", timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "p_g" in bad.stderr


def test_replicas_of_one_sim_url_are_distinct_agents() -> None:
    spec = ModelSpec(name="m", base_url=f"sim://m?quick_n={QUICK_N}", model="m", replicas=3)
    backends = [
        simulated_backend(seat, EndpointPool()) for seat in TeamSpec(models=[spec]).agents()
    ]
    assert [b.agent.agent_id for b in backends] == ["m-1", "m-2", "m-3"]
    finals = {b.agent.propose_final(problem, 1, "") for problem in PROBLEMS[:20] for b in backends}
    assert len(finals) > 20  # the replicas do not all answer alike


def test_correlated_samples_repeat_the_agents_fixed_answer() -> None:
    world = SimulatedWorld(PROBLEMS)
    fixed = SimulatedAgent("c", SimProfile(correlation=1.0), world)
    free = SimulatedAgent("c", SimProfile(correlation=0.0), world)
    for problem in PROBLEMS[:10]:
        samples = fixed.respond(proposal_messages(problem.prompt), n=6).texts
        assert len({parse_proposal(t, "math").final for t in samples}) == 1
    spread = {
        parse_proposal(t, "math").final
        for problem in PROBLEMS[:10]
        for t in free.respond(proposal_messages(problem.prompt), n=6).texts
    }
    assert len(spread) > 10


def test_kind_simulated_in_a_team_toml(tmp_path):
    """The issue's form: `kind = "simulated"` with a `simulation` table, no endpoint needed."""
    from nsed import TeamSpec, deliberate
    from nsed.problems import generate_quick

    team_file = tmp_path / "team.toml"
    team_file.write_text(
        '[[models]]\nname = "good"\nkind = "simulated"\nsimulation = { p_g = 1.0, p_v = 1.0 }\n'
        '[[models]]\nname = "weak"\nkind = "simulated"\nreplicas = 2\n'
        'simulation = { p_g = 0.0, p_v = 1.0 }\n'
    )
    team = TeamSpec.from_toml(team_file)
    assert [a.spec.base_url for a in team.agents()] == ["sim://good", "sim://weak", "sim://weak"]
    problem = generate_quick(3, seed=0)[0]
    result = deliberate(problem.prompt, team=team, kind="math", embeddings="off",
                        max_rounds=1, min_rounds=1)
    assert {p.agent: p.final == problem.answer for p in result.rounds[0].proposals} == {
        "good": True, "weak-1": False, "weak-2": False}
    assert result.final == problem.answer  # perfect verifiers vote the right answer up
