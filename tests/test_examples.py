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
