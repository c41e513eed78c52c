"""The example files in examples/ stay valid as the configuration evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsed import TeamSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["team.toml", "hosted_team.toml"])
def test_example_teams_load(name):
    team = TeamSpec.from_toml(EXAMPLES / name)
    assert len(team.agents()) >= 3
    assert all(seat.spec.base_url.startswith("http") for seat in team.agents())


def test_example_catalog_loads_and_selects_a_team():
    from nsed.broker.catalog import Catalog
    from nsed.broker.knapsack import BrokerPolicy, select_team

    catalog = Catalog.from_toml(EXAMPLES / "catalog.toml")
    selection = select_team(catalog, "math", BrokerPolicy(budget_usd=0.05, vram_gb=48))
    assert 3 <= len(selection.team) <= 5
    assert {r.name for r in selection.rejected} == {"gemma-3-12b"}
