"""`nsed ask` as a user runs it: a real subprocess against the scripted server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.council_scripts import agent, judge_by_answer
from tests.helpers import run_nsed

NAMES = ["alpha", "beta", "gamma"]


def write_team(path: Path, url: str, names: list[str] = NAMES) -> Path:
    lines = []
    for name in names:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'base_url = "{url}"',
            f'model = "{name}"',
            "max_retries = 0",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def team_file(scripted_server, tmp_path):
    for name, final in zip(NAMES, ["391", "391", "392"], strict=True):
        scripted_server.route(name, agent(final, judge=judge_by_answer("391")))
    return write_team(tmp_path / "team.toml", scripted_server.url)


def test_ask_json_prints_only_the_deliberation(team_file):
    done = run_nsed("ask", "What is 17 * 23?", "--team", str(team_file), "--kind", "math",
                "--rounds", "3", "--min-rounds", "3", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["final"] == "391"
    assert data["stopped_because"] == "max_rounds"
    assert len(data["rounds"]) == 3
    assert set(data["usage"]) >= {"prompt_tokens", "completion_tokens", "cost_usd", "calls"}
    round_one = data["rounds"][0]
    assert set(round_one) >= {"index", "proposals", "reviews", "support", "winner",
                              "conviction", "prompt_tokens"}
    assert set(round_one["support"]) == set(NAMES)
    assert all(r["dropped_reason"] is None for r in round_one["reviews"])
    assert {a["name"] for a in data["agents"]} == set(NAMES)


def test_ask_live_view_shows_rounds_and_answer(team_file):
    done = run_nsed("ask", "What is 17 * 23?", "--team", str(team_file), "--kind", "math",
                "--rounds", "2")
    assert done.returncode == 0, done.stderr
    assert "Round 1" in done.stdout and "Round 2" in done.stdout
    assert "391" in done.stdout and "winner" in done.stdout


def test_ask_live_view_shows_truncation_and_token_budgets(scripted_server, tmp_path):
    cut = agent("392", judge=judge_by_answer("391"))

    def truncated(request):
        reply = cut(request)
        reply.finish_reason, reply.completion_tokens = "length", 1024
        return reply

    for name in ("alpha", "beta"):
        scripted_server.route(name, agent("391", judge=judge_by_answer("391")))
    scripted_server.route("gamma", truncated)
    team = write_team(tmp_path / "team.toml", scripted_server.url)
    done = run_nsed("ask", "What is 17 * 23?", "--team", str(team), "--kind", "math",
                    "--rounds", "1", columns=200)
    assert done.returncode == 0, done.stderr
    assert "gamma's propose was cut at max_tokens (1024 of 1024 tokens)" in done.stdout
    assert "/1024 tokens" in done.stdout  # every proposal shows its share of the cap
    assert "call(s) cut at max_tokens" in done.stdout
    assert "of its max_tokens" in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["   "], "empty"),
        (["hi", "--kind", "poetry"], "kind"),
        (["hi", "--rounds", "2", "--min-rounds", "5"], "min_rounds"),
    ],
)
def test_ask_bad_input_is_one_error_line(team_file, args, needle):
    done = run_nsed("ask", *args, "--team", str(team_file))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr


def test_ask_unreachable_endpoint_names_url(tmp_path):
    team = write_team(tmp_path / "team.toml", "http://127.0.0.1:9/v1", ["a", "b"])
    done = run_nsed("ask", "What is 2 + 2?", "--team", str(team))
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "http://127.0.0.1:9/v1" in done.stderr
    assert "Traceback" not in done.stderr


def test_ask_invalid_toml_is_one_error_line(tmp_path):
    bad = tmp_path / "team.toml"
    bad.write_text("[[models]\n")
    done = run_nsed("ask", "hi", "--team", str(bad))
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid TOML")


# --- Conventions a Python user expects ----------------------------------------------------------


def test_python_dash_m_nsed_and_version_match_the_installed_package():
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", "nsed", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"nsed {version('nsed')}"


def test_shell_completion_script_is_offered():
    script = Path(sys.executable).with_name("nsed")
    done = subprocess.run(
        [str(script), "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "_NSED_COMPLETE" in done.stdout and "complete" in done.stdout


def test_package_is_marked_typed():
    from importlib.resources import files

    assert files("nsed").joinpath("py.typed").is_file()


def test_every_command_takes_verbose_and_log_level():
    import typer

    from nsed.cli import build_app

    def walk(command, path):
        names = {p.name for p in command.params}
        if getattr(command, "callback", None) is not None:
            assert {"verbose", "log_level"} <= names, f"nsed {' '.join(path)} lacks them"
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])
        yield path

    paths = list(walk(typer.main.get_command(build_app()), []))
    assert ["ask"] in paths and ["serve"] in paths and len(paths) > 8


def test_warnings_reach_stderr_by_default_and_log_level_silences_them(team_file, scripted_server):
    scripted_server.set_models(["some-other-model"])  # preflight warns: our ids are not listed
    args = ["ask", "What is 17 * 23?", "--team", str(team_file), "--rounds", "1", "--json"]
    done = run_nsed(*args)
    assert done.returncode == 0, done.stderr
    assert "is not listed by" in done.stderr
    json.loads(done.stdout)  # stdout stays pure JSON
    quiet = run_nsed(*args, "--log-level", "error")
    assert quiet.returncode == 0 and "is not listed by" not in quiet.stderr
    # -v before the command name lowers the level to INFO: the round-by-round log appears.
    chatty = run_nsed("-v", *args)
    assert chatty.returncode == 0 and "INFO" in chatty.stderr


def test_unknown_log_level_is_one_error_line(team_file):
    done = run_nsed("ask", "hi", "--team", str(team_file), "--log-level", "loud")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: unknown log level 'loud': use one of debug, info, warning, error, critical"
    )
