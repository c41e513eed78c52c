"""Telemetry from real deliberations (scripted server over HTTP), and the broker's live load."""

from __future__ import annotations

import logging
import math
import sqlite3
import statistics
from pathlib import Path

import anyio
import httpx
import pytest
from sqlmodel import select

from nsed import Council, Finished, deliberate
from nsed.agents.vllm import MetricsCache
from nsed.broker.broker import Broker
from nsed.broker.catalog import Catalog
from nsed.broker.knapsack import BrokerPolicy, model_value
from nsed.broker.telemetry import (
    EWMA_ALPHA,
    fetch_loads,
    load_stats,
    read_telemetry,
    record_deliberation,
)
from nsed.errors import StoreError
from nsed.store import AgentStatusRow, BrokerEventRow, ModelStat, Store
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.helpers import catalog_dict
from tests.scripted_server import Reply

NAMES = ["alpha", "beta", "gamma"]
CONFIG = {"max_rounds": 2, "min_rounds": 2, "embeddings": "off", "seed": 7, "kind": "math"}


def db_url(tmp_path: Path, name: str = "nsed.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def rows(store: Store, table: type) -> list:
    with store.transaction() as session:
        return list(session.exec(select(table)))


@pytest.fixture
def majority(scripted_server):
    judge = judge_by_answer("391")
    for name, final in zip(NAMES, ["391", "391", "392"], strict=True):
        scripted_server.route(name, agent(final, judge=judge, delay_s=0.01))
    return scripted_server


def test_one_deliberation_updates_every_model_in_one_row_each(majority, tmp_path):
    result = deliberate("What is 17 * 23?", team=team_dict(majority.url, NAMES), config=CONFIG)
    store = Store(db_url(tmp_path))
    record_deliberation(store, result, correct=True)

    stats = {r.model_name: r for r in rows(store, ModelStat)}
    assert set(stats) == set(NAMES)
    assert {r.kind for r in stats.values()} == {"math"}
    for name, row in stats.items():
        usage = [rec.agent_usage[name] for rec in result.rounds]
        assert row.calls == 4 and row.failures == 0 and row.timeouts == 0  # 2 rounds × 2 calls
        assert row.prompt_tokens == sum(u.prompt_tokens for u in usage) > 0
        assert row.completion_tokens == sum(u.completion_tokens for u in usage) > 0
        assert row.rounds_played == 2 and row.deliberations == 1 and row.support_n == 2
        assert row.support_sum == pytest.approx(sum(rec.support[name] for rec in result.rounds))
        assert row.round_wins == sum(rec.winner == name for rec in result.rounds)
        assert row.wins == int(result.winner == name)
        latencies = [p.latency_s for rec in result.rounds for p in rec.proposals if p.agent == name]
        expected_ewma = latencies[0] * (1 - EWMA_ALPHA) + latencies[1] * EWMA_ALPHA
        assert row.latency_ewma_s == pytest.approx(expected_ewma, rel=1e-4)
    # Per-agent usage adds up to the deliberation's totals.
    assert sum(r.prompt_tokens for r in stats.values()) == result.usage.prompt_tokens
    assert sum(r.calls for r in stats.values()) == result.usage.calls
    # The answer was right: the agreeing models are graded right, the dissenter wrong.
    assert {n: (r.graded, r.correct) for n, r in stats.items()} == {
        "alpha": (1, 1),
        "beta": (1, 1),
        "gamma": (1, 0),
    }
    assert stats["gamma"].support_sum < 0 < stats["alpha"].support_sum


def test_telemetry_accumulates_and_feeds_the_knapsack(majority, tmp_path):
    store = Store(db_url(tmp_path))
    team = team_dict(majority.url, NAMES)
    results = [deliberate("What is 17 * 23?", team=team, config=CONFIG) for _ in range(2)]
    record_deliberation(store, results[0], correct=True)
    record_deliberation(store, results[1])  # not graded
    view = {t.name: t for t in read_telemetry(store, "math")}
    gamma = view["gamma"]
    assert gamma.deliberations == 2 and gamma.rounds_played == 4 and gamma.graded == 1
    assert gamma.calls == 8 and gamma.success_ratio == 1.0
    lat = [p.latency_s for r in results for rec in r.rounds for p in rec.proposals
           if p.agent == "gamma"]
    assert gamma.latency_p50_s == pytest.approx(statistics.median(lat), rel=1e-4)
    assert gamma.latency_p95_s is not None and gamma.latency_p95_s >= gamma.latency_p50_s

    stats = load_stats(store, "math")
    # Graded models learn from accuracy (gamma: 0 of 1), not from support.
    assert stats["gamma"].skill == {"math": 0.0} and stats["gamma"].n_obs == {"math": 1}
    assert stats["alpha"].skill == {"math": 1.0}
    assert stats["alpha"].latency_s == pytest.approx(view["alpha"].latency_p50_s)
    assert not any(s.benched for s in stats.values())
    catalog = Catalog.model_validate(catalog_dict(majority.url, dict.fromkeys(NAMES, 0.5)))
    values = {e.name: model_value(e, "math", stats[e.name], BrokerPolicy()) for e in catalog.models}
    assert values["gamma"] < 0.5 < values["alpha"]
    # A kind with no telemetry gives no learned skill.
    assert all(not s.skill for s in load_stats(store, "code").values())


def test_support_maps_to_skill_when_nothing_is_graded(majority, tmp_path):
    result = deliberate("What is 17 * 23?", team=team_dict(majority.url, NAMES), config=CONFIG)
    store = Store(db_url(tmp_path))
    record_deliberation(store, result, model_of={"gamma": "gamma-model"})
    stats = load_stats(store, "math")
    assert "gamma" not in stats  # recorded under its catalog name
    mean = sum(rec.support["gamma"] for rec in result.rounds) / 2
    assert stats["gamma-model"].skill["math"] == pytest.approx((mean + 1) / 2)
    assert stats["gamma-model"].n_obs["math"] == 1


def test_failures_and_timeouts_are_counted(scripted_server, tmp_path):
    judge = judge_by_answer("391")
    scripted_server.route("alpha", agent("391", judge=judge))
    scripted_server.route("beta", agent("391", judge=judge))
    scripted_server.route("slow", agent("391", judge=judge, delay_s=2.0))
    scripted_server.route("broken", lambda request: Reply(status=500, content="boom"))
    team = team_dict(scripted_server.url, ["alpha", "beta", "slow", "broken"])
    team["models"][2]["timeout_s"] = 0.3
    result = deliberate("What is 17 * 23?", team=team, config=CONFIG)
    store = Store(db_url(tmp_path))
    record_deliberation(store, result)
    stats = {r.model_name: r for r in rows(store, ModelStat)}
    # Two failed calls in a row take an agent out of the deliberation (loop rule).
    assert (stats["slow"].calls, stats["slow"].failures, stats["slow"].timeouts) == (2, 2, 2)
    assert (stats["broken"].calls, stats["broken"].failures, stats["broken"].timeouts) == (2, 2, 0)
    assert stats["alpha"].failures == 0 and stats["alpha"].calls == 4
    assert load_stats(store, "math")["broken"].success_ratio == 0.0
    assert all(f.timeout == (f.agent == "slow") for rec in result.rounds for f in rec.failures)


def test_locked_database_raises_store_error_and_writes_nothing(majority, tmp_path):
    result = deliberate("What is 17 * 23?", team=team_dict(majority.url, NAMES), config=CONFIG)
    store = Store(db_url(tmp_path))
    locker = sqlite3.connect(tmp_path / "nsed.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            record_deliberation(store, result)
    finally:
        locker.rollback()
        locker.close()
    assert rows(store, ModelStat) == []  # no partial rows
    record_deliberation(store, result)  # works again once the lock is gone
    assert len(rows(store, ModelStat)) == 3


def test_corrupt_database_mid_run_keeps_the_answer(majority, tmp_path, caplog):
    path = tmp_path / "nsed.db"
    store = Store(f"sqlite:///{path}")
    catalog = catalog_dict(majority.url, {"alpha": 0.9, "beta": 0.8, "gamma": 0.7})
    council = Council(catalog=catalog, store=store, config=CONFIG)

    async def corrupt_when_finished(event: object) -> None:
        if isinstance(event, Finished):  # the answer exists; now the database breaks
            store.dispose()
            path.write_bytes(b"this is not a database" * 100)

    with caplog.at_level(logging.WARNING, logger="nsed.broker"):
        result = anyio.run(lambda: council.run("What is 17 * 23?", emit=corrupt_when_finished))
    assert result.final == "391"
    assert any("telemetry not saved" in r.message and "not a database" in r.message
               for r in caplog.records)
    with pytest.raises(StoreError, match="corrupt"):
        Store(f"sqlite:///{path}")


def test_brokered_council_records_telemetry_after_each_question(majority, tmp_path):
    store = Store(db_url(tmp_path))
    catalog = catalog_dict(majority.url, {"alpha": 0.9, "beta": 0.8, "gamma": 0.7})
    result = deliberate("What is 17 * 23?", catalog=catalog, store=store, **CONFIG)
    assert {a.name for a in result.agents} == set(NAMES)
    assert {a.role for a in result.agents} == {"deliberator"}
    stats = {r.model_name: r for r in rows(store, ModelStat)}
    assert {n: r.deliberations for n, r in stats.items()} == dict.fromkeys(NAMES, 1)
    assert {n: r.graded for n, r in stats.items()} == dict.fromkeys(NAMES, 0)
    assert {r.model_name for r in rows(store, AgentStatusRow)} == set(NAMES)
    assert rows(store, BrokerEventRow) == []  # nobody underperformed enough to be benched

    # A benchmark learns the gold answer afterwards and grades the deliberation.
    council = Council(catalog=catalog, store=store)
    assert council.broker is not None and council.broker.grade(result, correct=True)
    stats = {r.model_name: r for r in rows(store, ModelStat)}
    assert {n: (r.graded, r.correct) for n, r in stats.items()} == {
        "alpha": (1, 1), "beta": (1, 1), "gamma": (1, 0),
    }
    status = {r.model_name: r.recent_correct for r in rows(store, AgentStatusRow)}
    assert status == {"alpha": "[true]", "beta": "[true]", "gamma": "[false]"}


# --- Live load from /metrics ---------------------------------------------------------------------


def vllm_metrics(waiting: float, running: float, kv: float, model: str) -> str:
    return (
        "# HELP vllm:num_requests_waiting Requests waiting.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}\n'
        f'vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}\n'
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {kv}\n'
    )


def test_vllm_metrics_load_steers_the_broker(scripted_server_factory, tmp_path):
    busy, idle, plain = (scripted_server_factory() for _ in range(3))
    models = []
    for name, server in (("busy", busy), ("idle", idle), ("plain", plain)):
        models.append({
            "name": name, "base_url": server.url, "model": f"org/{name}", "family": name,
            "capabilities": ["math"], "prior_skill": {"math": 0.6}, "vram_gb": 20,
        })
    models.append({"name": "hosted", "base_url": plain.url, "model": "gpt", "family": "openai",
                   "capabilities": ["math"], "prior_skill": {"math": 0.6}})
    catalog = Catalog.model_validate({"models": models})
    busy.set_metrics(vllm_metrics(6, 2, 0.9, "org/busy"))
    idle.set_metrics(vllm_metrics(0, 1, 0.1, "org/idle"))
    # plain has no /metrics (404): a llama.cpp or hosted server, no load signal.

    async def loads() -> dict[str, float]:
        async with httpx.AsyncClient() as client:
            return await fetch_loads(catalog.models, MetricsCache(), client)

    measured = anyio.run(loads)
    assert set(measured) == {"busy", "idle"}  # hosted models are never scraped
    assert measured["busy"] == pytest.approx(1 - (1 - 0.9) * (1 - 6 / 8))
    assert measured["idle"] == pytest.approx(0.1)

    broker = Broker(catalog, policy=BrokerPolicy(min_team=3, max_team=3), store=db_url(tmp_path))
    chosen = anyio.run(broker.select, "math")
    assert set(chosen.names()) == {"hosted", "plain", "idle"}  # the busiest server is left out
    rejected = {r.name: r for r in chosen.rejected}
    assert rejected["busy"].value == pytest.approx(0.6 * (1 - 0.5 * measured["busy"]))
    # The load changes: after the cache's TTL the broker sees it.
    busy.set_metrics(vllm_metrics(0, 0, 0.0, "org/busy"))
    idle.set_metrics(vllm_metrics(9, 1, 0.95, "org/idle"))
    broker.metrics.clear()
    again = anyio.run(broker.select, "math")
    assert set(again.names()) == {"hosted", "plain", "busy"}
    assert math.isclose(sum(c.value for c in again.team), again.value)


def test_truncated_calls_count_in_telemetry_and_old_databases_gain_the_column(
    scripted_server, tmp_path
):
    judge = judge_by_answer("391")
    cut = agent("392", judge=judge)

    def truncating(request):
        reply = cut(request)
        reply.finish_reason = "length"
        return reply

    for name in ("alpha", "beta"):
        scripted_server.route(name, agent("391", judge=judge))
    scripted_server.route("gamma", truncating)
    result = deliberate("What is 17 * 23?", team=team_dict(scripted_server.url, NAMES),
                        config=CONFIG)
    # A database written before the column existed: revision r0002, no "truncations".
    path = tmp_path / "old.db"
    Store(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE model_stats DROP COLUMN truncations")
        db.execute("UPDATE alembic_version SET version_num = 'r0002'")
        db.execute("INSERT INTO model_stats (model_name, kind, calls, failures, timeouts, "
                   "latency_ewma_s, recent_latencies, prompt_tokens, completion_tokens, "
                   "cost_usd, support_sum, support_n, wins, round_wins, rounds_played, "
                   "deliberations, graded, correct, updated_at) VALUES ('gamma', 'math', 7, "
                   "0, 0, 0, '[]', 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, '2025-01-01 00:00:00')")
    store = Store(f"sqlite:///{path}")
    record_deliberation(store, result)
    telemetry = {t.name: t for t in read_telemetry(store)}
    assert telemetry["gamma"].truncations == 4  # 2 rounds x (proposal + review)
    assert telemetry["alpha"].truncations == 0
    assert telemetry["gamma"].calls == 7 + 4
