"""`nsed broker explain`, `nsed models` and `nsed ask --catalog` as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import typer
from sqlmodel import select
from typer.testing import CliRunner, Result

from nsed import deliberate
from nsed.broker.cli import broker_app, models_app
from nsed.broker.telemetry import record_deliberation
from nsed.cli import ask
from nsed.errors import ConfigError, InfeasibleTeam, StoreError
from nsed.store import ModelStat, Store
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.helpers import run_nsed

CATALOG = """
[[models]]
name = "qwen-7b"
base_url = "http://127.0.0.1:9/v1"
model = "Qwen/Qwen2.5-7B-Instruct"
family = "qwen"
vram_gb = 16
capabilities = ["math", "code", "text"]
prior_skill = { math = 0.6 }

[[models]]
name = "qwen-14b"
base_url = "http://127.0.0.1:9/v1"
model = "Qwen/Qwen2.5-14B-Instruct"
family = "qwen"
vram_gb = 30
capabilities = ["math", "text"]
prior_skill = { math = 0.7 }

[[models]]
name = "llama-8b"
base_url = "http://127.0.0.1:9/v1"
model = "meta-llama/Llama-3.1-8B-Instruct"
family = "llama"
vram_gb = 17
capabilities = ["math", "text"]
prior_skill = { math = 0.5 }

[[models]]
name = "gpt-mini"
base_url = "http://127.0.0.1:9/v1"
model = "gpt-4o-mini"
family = "openai"
input_price = 0.15
output_price = 0.6
capabilities = ["math", "text"]
prior_skill = { math = 0.8 }

[[models]]
name = "big-api"
base_url = "http://127.0.0.1:9/v1"
model = "big"
family = "other"
input_price = 5.0
output_price = 15.0
capabilities = ["math", "text"]
prior_skill = { math = 0.95 }
"""


def nsed(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_nsed(*args, home=home, columns=250)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


def test_explain_json_has_exactly_the_documented_shape(catalog, tmp_path):
    done = nsed("broker", "explain", "--catalog", str(catalog), "--kind", "math",
                "--budget-usd", "0.05", "--vram-gb", "40", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # nothing but the JSON on stdout
    assert set(data) == {"budget_usd", "team", "rejected"}
    assert data["budget_usd"] == 0.05
    for member in data["team"]:
        assert set(member) == {"name", "role", "cost_usd", "vram_gb", "value"}
    for rejected in data["rejected"]:
        assert set(rejected) == {"name", "reason"}
    team = {m["name"]: m for m in data["team"]}
    # qwen-14b (30 GB) fits no 40 GB team with another self-hosted model; big-api, the best
    # on prior skill, costs $0.255 a question.
    assert [m["name"] for m in data["team"]] == ["gpt-mini", "qwen-7b", "llama-8b"]
    assert team["qwen-7b"]["vram_gb"] + team["llama-8b"]["vram_gb"] == 33
    reasons = {r["name"]: r["reason"] for r in data["rejected"]}
    assert reasons == {
        "qwen-14b": "vram: would need 46 GB (budget 40 GB)",
        "big-api": "over budget: would need $0.255 alone, budget $0.05",
    }
    assert sum(m["cost_usd"] for m in data["team"]) <= 0.05
    assert not (tmp_path / "nsed.db").exists()  # a read-only command creates no database


def test_explain_prints_a_decision_table(catalog, tmp_path):
    done = nsed("broker", "explain", "--catalog", str(catalog), "--kind", "math",
                "--budget-usd", "0.05", "--min-team", "2", "--max-team", "3", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "chosen" in done.stdout and "rejected" in done.stdout
    assert "over budget" in done.stdout and "team value" in done.stdout


def run_in_process(*args: str) -> Result:
    """Invoke the command groups in-process (fast); nsed errors surface as the exception."""
    root = typer.Typer()
    root.add_typer(broker_app, name="broker")
    root.add_typer(models_app, name="models")
    root.command()(ask)
    return CliRunner().invoke(root, list(args))


BAD_CATALOG_LINES = {
    "unknown capability": ('capabilities = ["math", "code", "text"]',
                           'capabilities = ["math", "telepathy"]'),
    "duplicate names": ('name = "qwen-14b"', 'name = "qwen-7b"'),
}


@pytest.mark.parametrize(
    ("case", "args", "error", "needle"),
    [
        ("unknown capability", [], ConfigError, "unknown capability 'telepathy'; valid"),
        ("duplicate names", [], ConfigError, "names must be unique; repeated: qwen-7b"),
        (None, ["--budget-usd", "-1"], ConfigError, "budget_usd: Input should be greater"),
        (None, ["--budget-usd", "0.0001", "--min-team", "4"], InfeasibleTeam,
         "budget $0.0001 < cheapest 4-model team $0.009"),
        (None, ["--vram-gb", "10"], InfeasibleTeam, "vram 10 GB < smallest feasible team 16 GB"),
        (None, ["--kind", "poetry"], ConfigError, "unknown task kind 'poetry'"),
        (None, ["--min-team", "1"], ConfigError, "min_team = 1: a team needs at least 2"),
        ("corrupt db", [], StoreError, "file is not a database (the file is corrupt"),
    ],
)
def test_bad_input_raises_a_typed_error(catalog, tmp_path, case, args, error, needle):
    extra: list[str] = []
    if case in BAD_CATALOG_LINES:
        old, new = BAD_CATALOG_LINES[case]
        catalog.write_text(CATALOG.replace(old, new, 1))
    if case == "corrupt db":
        db = tmp_path / "corrupt.db"
        db.write_bytes(b"not a database at all" * 100)
        extra = ["--db", f"sqlite:///{db}"]
    result = run_in_process(
        "broker", "explain", "--catalog", str(catalog), "--kind", "math", *args, *extra
    )
    assert isinstance(result.exception, error), result.output
    assert needle in str(result.exception)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--budget-usd", "0.0001", "--min-team", "4"], "error: no team can be formed: budget"),
        (["--db", "sqlite:///{tmp}/corrupt.db"], "error: database sqlite:///"),
    ],
)
def test_the_cli_prints_one_error_line(catalog, tmp_path, args, needle):
    (tmp_path / "corrupt.db").write_bytes(b"garbage" * 1000)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = nsed("broker", "explain", "--catalog", str(catalog), "--kind", "math", *args,
                home=tmp_path)
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(needle), done.stderr
    assert "Traceback" not in done.stderr


def test_models_list_and_show_include_live_telemetry(scripted_server, catalog, tmp_path):
    judge = judge_by_answer("391")
    for name, final in (("qwen-7b", "391"), ("llama-8b", "391"), ("gpt-mini", "392")):
        scripted_server.route(name, agent(final, judge=judge))
    team = team_dict(scripted_server.url, ["qwen-7b", "llama-8b", "gpt-mini"])
    result = deliberate("What is 17 * 23?", team=team,
                        config={"max_rounds": 2, "min_rounds": 2, "embeddings": "off",
                                "kind": "math"})
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    store = Store(url)
    record_deliberation(store, result, correct=True)
    store.dispose()

    done = nsed("models", "list", "--catalog", str(catalog), "--kind", "math", "--db", url,
                home=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {line.split("│")[1].strip(): line for line in done.stdout.splitlines()
             if line.count("│") > 5 and line.split("│")[1].strip()}
    assert set(lines) >= {"qwen-7b", "qwen-14b", "llama-8b", "gpt-mini", "big-api"}
    assert "100%" in lines["qwen-7b"] and "0%" in lines["gpt-mini"]  # accuracy
    assert " 4 " in lines["qwen-7b"]  # calls: 2 rounds × (propose + review)

    done = nsed("models", "show", "gpt-mini", "--catalog", str(catalog), "--db", url,
                home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "openai" in done.stdout and "telemetry" in done.stdout and "math" in done.stdout
    result = run_in_process("models", "show", "nope", "--catalog", str(catalog), "--db", url)
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("no model named 'nope' in the catalog; known: ")


def test_ask_with_a_catalog_chooses_the_team_and_records_telemetry(scripted_server, tmp_path):
    judge = judge_by_answer("391")
    names = ["m1", "m2", "m3", "m4"]
    for name in names:
        scripted_server.route(name, agent("391", judge=judge))
    lines = []
    for i, name in enumerate(names):
        lines += [
            "[[models]]", f'name = "{name}"', f'base_url = "{scripted_server.url}"',
            f'model = "{name}"', "max_retries = 0", f'family = "f{i}"',
            'capabilities = ["math"]', f"prior_skill = {{ math = {0.9 - 0.1 * i:.1f} }}",
            f"input_price = {0.1 * (i + 1):.1f}", f"vram_gb = {10 * i}", "",
        ]
    path = tmp_path / "catalog.toml"
    path.write_text("\n".join(lines))
    # m1 is hosted; m2, m3, m4 need 10, 20, 30 GB: within 30 GB the best team of 3 or more
    # is m1 + m2 + m3.
    done = nsed("ask", "What is 17 * 23?", "--catalog", str(path), "--budget-usd", "1",
                "--vram-gb", "30", "--kind", "math", "--rounds", "2", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["final"] == "391"
    assert {a["name"] for a in data["agents"]} == {"m1", "m2", "m3"}
    assert data["config"]["budget_usd"] == 1.0
    store = Store(f"sqlite:///{tmp_path / 'nsed.db'}")
    with store.transaction() as session:
        recorded = {row.model_name for row in session.exec(select(ModelStat))}
    assert recorded == {"m1", "m2", "m3"}

    result = run_in_process("ask", "hi", "--catalog", str(path), "--budget-usd", "0.0000001")
    assert isinstance(result.exception, InfeasibleTeam)
    assert str(result.exception).startswith("no team can be formed: budget $1e-07 < cheapest")
    result = run_in_process("ask", "hi", "--catalog", str(path), "--team", str(path))
    assert isinstance(result.exception, ConfigError)
    assert "either team=... or catalog=..." in str(result.exception)
