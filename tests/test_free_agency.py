"""Free agency: benching with cooldowns, replacement from the pool, probation, persistence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlmodel import select

from nsed import (
    AgentBenched,
    AgentPromoted,
    AgentReleased,
    AgentReweighted,
    AgentSignedOn,
    ConfigError,
    Council,
    Deliberation,
)
from nsed.broker.broker import Broker
from nsed.broker.catalog import Catalog
from nsed.broker.free_agency import FreeAgency, FreeAgencyPolicy, SeatState, judge_round
from nsed.broker.knapsack import BrokerPolicy
from nsed.orchestrator.voting import quadratic_vote
from nsed.results import RoundRecord
from nsed.store import AgentStatusRow, BrokerEventRow, ModelStat, Store
from tests.council_scripts import agent, judge_by_answer
from tests.helpers import catalog_dict
from tests.scripted_server import Reply

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CONFIG = {"max_rounds": 3, "min_rounds": 3, "embeddings": "off", "seed": 7, "kind": "math"}
QUESTION = "What is 17 * 23?"


class Clock:
    """An injectable clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def table(store: Store, model: type) -> list:
    with store.transaction() as session:
        return list(session.exec(select(model)))


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    async def __call__(self, event: object) -> None:
        self.events.append(event)

    def decisions(self) -> list:
        kinds = (AgentBenched, AgentSignedOn, AgentPromoted, AgentReleased, AgentReweighted)
        return [e for e in self.events if isinstance(e, kinds)]


def ask(council: Council, sink: Recorder) -> Deliberation:
    return anyio.run(lambda: council.run(QUESTION, emit=sink))


def counted_scores(record: RoundRecord) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for r in record.reviews:
        if r.dropped_reason is None and r.candidate and r.score is not None:
            scores.setdefault(r.reviewer, {})[r.candidate] = r.score
    return scores


# --- The scenario of the issue --------------------------------------------------------------------


def test_low_support_lowers_a_vote_and_graded_accuracy_benches(scripted_server, tmp_path):
    """The issue's scenario, as protocol v2 decides it: an agent the others vote down keeps its
    seat and proposes in full (it might be the correct dissenter) but votes at half weight;
    it is benched only once graded answers show it wrong, and then the team is re-chosen."""
    judge = judge_by_answer("391")
    scripted_server.route("wrong", agent("392"))  # always wrong, so its peers vote it down
    scripted_server.route("alpha", agent("391", judge=judge, reasoning="route A"))
    scripted_server.route("beta", agent("391", judge=judge, reasoning="route B"))
    scripted_server.route("delta", agent("391", judge=judge))
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'nsed.db'}")
    broker = Broker(
        catalog_dict(
            scripted_server.url, {"wrong": 0.95, "alpha": 0.9, "beta": 0.85, "delta": 0.5}
        ),
        policy=BrokerPolicy(min_team=3, max_team=3),
        agency=FreeAgencyPolicy(
            window=2, min_rounds=2, support_threshold=0.0, min_graded=2, accuracy_window=2
        ),
        store=store,
        clock=clock,
    )
    council = Council(broker=broker, config=CONFIG)

    # Question 1: after 2 rounds of negative support "wrong" votes at weight 0.5; no bench.
    sink = Recorder()
    first = ask(council, sink)
    assert first.final == "391"
    assert [r.support["wrong"] < 0 for r in first.rounds[:2]] == [True, True]
    assert all(set(r.support) == {"wrong", "alpha", "beta"} for r in first.rounds)
    (reweighted,) = sink.decisions()
    assert isinstance(reweighted, AgentReweighted) and reweighted.agent == "wrong"
    assert (reweighted.round, reweighted.weight) == (2, 0.5) and "support" in reweighted.reason
    third = first.rounds[2]
    candidates = [p.agent for p in third.proposals]
    weighted = quadratic_vote(counted_scores(third), candidates, weights={"wrong": 0.5})
    assert third.support == pytest.approx(weighted.support)
    assert {r.model_name: r.status for r in table(store, AgentStatusRow)}["wrong"] == "active"
    assert [(e.kind, e.agent) for e in table(store, BrokerEventRow)] == [
        ("agent_reweighted", "wrong")
    ]
    assert broker.grade(first, correct=True)

    # Question 2: "wrong" is seated again (the prior still favours it); graded wrong twice...
    second = ask(council, Recorder())
    assert "wrong" in {a.name for a in second.agents}
    assert broker.grade(second, correct=True)

    # ... so before question 3 it is benched on accuracy, and the team is chosen without it.
    sink = Recorder()
    third_q = ask(council, sink)
    benched = sink.decisions()[0]
    assert isinstance(benched, AgentBenched) and benched.agent == "wrong"
    assert benched.round is None and "accuracy 0%" in benched.reason
    assert {a.name for a in third_q.agents} == {"alpha", "beta", "delta"}
    wrong = {r.model_name: r for r in table(store, AgentStatusRow)}["wrong"]
    assert wrong.status == "benched" and wrong.strikes == 1
    assert wrong.benched_until.replace(tzinfo=UTC) == clock.now + timedelta(seconds=60)


def test_the_correct_dissenter_is_never_benched_for_low_support(scripted_server, tmp_path):
    # Two agents agree on a wrong answer and score it up; the one right agent is voted down.
    wrong_judge = judge_by_answer("392")
    scripted_server.route("right", agent("391", judge=judge_by_answer("391")))
    for name in ("herd-1", "herd-2"):
        scripted_server.route(name, agent("392", judge=wrong_judge))
    broker = Broker(
        catalog_dict(scripted_server.url, {"right": 0.9, "herd-1": 0.9, "herd-2": 0.9}),
        policy=BrokerPolicy(min_team=3, max_team=3),
        agency=FreeAgencyPolicy(window=2, min_rounds=2, support_threshold=0.0),
        store=f"sqlite:///{tmp_path / 'nsed.db'}",
        clock=Clock(),
    )
    sink = Recorder()
    result = ask(Council(broker=broker, config=CONFIG), sink)
    assert all(r.support["right"] < 0 for r in result.rounds)
    assert all("right" in r.support for r in result.rounds)  # it proposed every round
    assert not [e for e in sink.decisions() if isinstance(e, AgentBenched | AgentReleased)]
    assert [(type(e), e.agent) for e in sink.decisions()] == [(AgentReweighted, "right")]


def test_failing_endpoint_is_benched_and_its_seat_refilled(scripted_server, tmp_path):
    judge = judge_by_answer("391")
    for name in ("alpha", "beta", "delta"):
        scripted_server.route(name, agent("391", judge=judge))
    scripted_server.route("flaky", lambda request: Reply(status=500, content="overloaded"))
    store = Store(f"sqlite:///{tmp_path / 'nsed.db'}")
    broker = Broker(
        catalog_dict(scripted_server.url, {"flaky": 0.9, "alpha": 0.8, "beta": 0.8, "delta": 0.4}),
        policy=BrokerPolicy(min_team=3, max_team=3),
        store=store,
        clock=Clock(),
    )
    sink = Recorder()
    result = ask(Council(broker=broker, config=CONFIG), sink)
    assert result.final == "391"
    benched, signed, promoted = sink.decisions()
    assert benched.agent == "flaky" and benched.round == 1
    assert benched.reason == "2 failed calls in a row"
    assert (signed.agent, signed.replaces) == ("delta", "flaky")
    assert isinstance(promoted, AgentPromoted) and promoted.agent == "delta"  # rounds 2 and 3
    assert set(result.rounds[1].support) == {"alpha", "beta", "delta"}
    stats = {r.model_name: r for r in table(store, ModelStat)}
    assert (stats["flaky"].calls, stats["flaky"].failures) == (2, 2)


def test_without_a_free_agent_the_seat_is_left_empty(scripted_server, tmp_path):
    judge = judge_by_answer("391")
    scripted_server.route("flaky", lambda request: Reply(status=500, content="overloaded"))
    for name in ("alpha", "beta", "gamma"):
        scripted_server.route(name, agent("391", judge=judge))
    broker = Broker(
        catalog_dict(scripted_server.url, {"flaky": 0.9, "alpha": 0.8, "beta": 0.8, "gamma": 0.8}),
        policy=BrokerPolicy(min_team=4, max_team=4),
        store=f"sqlite:///{tmp_path / 'nsed.db'}",
        clock=Clock(),
    )
    sink = Recorder()
    result = ask(Council(broker=broker, config=CONFIG), sink)
    assert [type(e) for e in sink.decisions()] == [AgentBenched]
    assert set(result.rounds[1].support) == {"alpha", "beta", "gamma"}


# --- Cooldowns, strikes, probation (pure state, injectable clock) --------------------------------


def test_cooldown_doubles_per_strike_and_is_capped():
    policy = FreeAgencyPolicy(base_cooldown_s=60, max_cooldown_s=1800)
    assert [policy.cooldown_s(k) for k in range(8)] == [0, 60, 120, 240, 480, 960, 1800, 1800]
    assert policy.cooldown_s(10_000) == 1800


def bad_grades(agency: FreeAgency, model: str, n: int = 5) -> None:
    for _ in range(n):
        agency.record_grades({model: False})


def test_benching_uses_the_clock_doubles_and_one_good_round_resets(tmp_path):
    clock = Clock()
    catalog = Catalog.model_validate(catalog_dict("http://127.0.0.1:9/v1", {"m": 0.5, "n": 0.5}))
    policy = FreeAgencyPolicy(base_cooldown_s=60, max_cooldown_s=200, min_graded=5)
    agency = FreeAgency(catalog, "math", policy=policy, clock=clock)
    sink = Recorder()

    def bench_once() -> float:
        bad_grades(agency, "m")
        assert anyio.run(agency.check_accuracy, sink) == ["m"]
        return sink.events[-1].cooldown_s

    def come_back() -> None:
        clock.advance(1000)
        agency.start(["m"])

    assert bench_once() == 60
    assert agency.benched() == {"m"}
    clock.advance(59)
    assert agency.benched() == {"m"}
    clock.advance(2)
    assert agency.benched() == set()
    assert agency.start(["m", "n"]) == {} and agency.state("m").status == "active"
    assert bench_once() == 120  # strike 2: doubled
    assert anyio.run(agency.check_accuracy, sink) == []  # already benched: no new decision
    come_back()
    assert bench_once() == 200  # 240, capped
    come_back()
    assert bench_once() == 200
    assert "accuracy 0% < 25%" in sink.events[-1].reason
    # One good round (calls fine, support above the threshold) resets the strikes.
    come_back()
    state = agency.state("m")
    assert judge_round(state, support=0.5, failed_calls=0, policy=policy) is None
    assert state.strikes == 0
    assert bench_once() == 60
    # Too little graded evidence: no bench.
    come_back()
    agency.record_grades({"m": False})
    assert anyio.run(agency.check_accuracy, sink) == []


def test_judge_round_support_failures_and_probation():
    policy = FreeAgencyPolicy(window=3, min_rounds=2, support_threshold=0.0, probation_rounds=2)
    state = SeatState(model="m")
    assert judge_round(state, support=-0.5, failed_calls=0, policy=policy) is None  # 1 round
    verdict = judge_round(state, support=0.2, failed_calls=0, policy=policy)
    # Low support (mean -0.15 over 2 rounds) lowers the vote weight; it never benches.
    assert verdict is not None and verdict.action == "reweight"
    state.low_weight = True
    assert judge_round(state, support=-0.1, failed_calls=0, policy=policy) is None  # still low
    verdict = judge_round(state, support=0.9, failed_calls=0, policy=policy)
    assert verdict is not None and verdict.action == "restore"  # mean 0.33 over 3 rounds
    state = SeatState(model="m", recent_support=[0.9, 0.9])
    assert judge_round(state, support=-0.5, failed_calls=0, policy=policy) is None  # mean > 0
    assert state.recent_support == [0.9, 0.9, -0.5]  # window of 3
    # Failed calls in a row; a success in between resets the streak.
    state = SeatState(model="m")
    assert judge_round(state, support=None, failed_calls=1, policy=policy) is None
    assert judge_round(state, support=0.5, failed_calls=0, policy=policy) is None
    assert state.fail_streak == 0
    verdict = judge_round(state, support=None, failed_calls=2, policy=policy)
    assert verdict is not None and verdict.reason == "2 failed calls in a row"
    # Probation: promoted on good support, kept at a lower weight otherwise; released only
    # when its calls fail.
    newcomer = SeatState(model="p", status="probation")
    assert judge_round(newcomer, support=0.3, failed_calls=0, policy=policy) is None
    verdict = judge_round(newcomer, support=0.1, failed_calls=0, policy=policy)
    assert verdict is not None and verdict.action == "promote"
    newcomer = SeatState(model="p", status="probation")
    judge_round(newcomer, support=0.3, failed_calls=0, policy=policy)
    verdict = judge_round(newcomer, support=-0.8, failed_calls=0, policy=policy)
    assert verdict is not None and verdict.action == "reweight" and "-0.25" in verdict.reason
    failing = SeatState(model="p", status="probation")
    verdict = judge_round(failing, support=None, failed_calls=2, policy=policy, timeouts=1)
    assert verdict is not None and verdict.action == "release"
    assert verdict.reason == "2 failed calls in a row (1 timed out)"


def test_replacement_respects_family_cap_budget_role_and_bench():
    def model(name: str, family: str, skill: float, **extra: object) -> dict:
        return {"name": name, "base_url": "http://127.0.0.1:9/v1", "model": name,
                "family": family, "capabilities": ["math"], "prior_skill": {"math": skill},
                **extra}

    catalog = Catalog.model_validate(
        {
            "models": [
                model("a", "qwen", 0.7),
                model("b", "qwen", 0.7),
                model("c", "llama", 0.7),
                model("big-qwen", "qwen", 0.99),
                model("pricey", "gemma", 0.95, input_price=100.0),
                model("benched", "mistral", 0.9),
                model("no-math", "phi", 0.9, capabilities=["text"]),
                model("ok-2", "mistral", 0.6),
                model("ok-1", "llama", 0.6),
            ],
            "roles": [{"name": "solver", "capability": "math", "count": 3}],
        }
    )
    clock = Clock()
    states = {"benched": SeatState(model="benched", status="benched",
                                   benched_until=T0 + timedelta(seconds=60))}
    agency = FreeAgency(
        catalog, "math", broker_policy=BrokerPolicy(budget_usd=1.0), states=states, clock=clock
    )
    # big-qwen: family cap (a and b stay); pricey: budget; benched; no-math: capability.
    # ok-1 and ok-2 tie on value and cost: the name decides, as in the knapsack.
    pick = agency.replacement(["a", "b", "c"], "c", "solver")
    assert pick is not None and pick.name == "ok-1"
    clock.advance(61)
    pick = agency.replacement(["a", "b", "c"], "c", "solver")
    assert pick is not None and pick.name == "benched"  # its cooldown is over
    # With a qwen model leaving, the family cap no longer keeps big-qwen out.
    assert agency.replacement(["a", "b", "c"], "a", "solver").name == "big-qwen"


def test_policy_errors_say_what_to_change():
    with pytest.raises(ConfigError, match=r"min_rounds \(3\) must not exceed window"):
        FreeAgencyPolicy(window=2, min_rounds=3)
    with pytest.raises(ConfigError, match="base_cooldown_s"):
        FreeAgencyPolicy(base_cooldown_s=600, max_cooldown_s=60)
    with pytest.raises(ConfigError, match="probation_weight"):
        FreeAgencyPolicy(probation_weight=2)


def test_benching_persists_across_brokers(tmp_path):
    url = f"sqlite:///{tmp_path / 'nsed.db'}"
    catalog = catalog_dict("http://127.0.0.1:9/v1", {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6})
    clock = Clock()
    broker = Broker(catalog, policy=BrokerPolicy(min_team=3, max_team=3), store=url, clock=clock)
    plan = anyio.run(broker.plan, "math")
    assert plan.selection.names() == ["a", "b", "c"]
    assert plan.agency is not None
    bad_grades(plan.agency, "a")
    anyio.run(plan.agency.check_accuracy)
    assert broker.finish(plan, None)
    # A new process (a new Broker on the same database) sees the bench until it expires.
    again = Broker(catalog, policy=BrokerPolicy(min_team=3, max_team=3), store=url, clock=clock)
    assert again.explain("math").names() == ["b", "c", "d"]
    assert {r.name: r.reason for r in again.explain("math").rejected}["a"] == "benched"
    clock.advance(3600)
    assert again.explain("math").names() == ["a", "b", "c"]


def test_state_rows_survive_a_round_trip(tmp_path: Path):
    state = SeatState(model="m", status="probation", strikes=2, fail_streak=1,
                      benched_until=T0, probation_rounds=1, recent_support=[0.25, -0.5],
                      recent_correct=[True, False])
    store = Store(f"sqlite:///{tmp_path / 'nsed.db'}")
    with store.transaction() as session:
        session.add(state.to_row(T0))
    (row,) = table(store, AgentStatusRow)
    assert SeatState.from_row(row) == state
