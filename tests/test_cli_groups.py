"""The command groups registered in nsed/cli.py: each loads from the package it drives, and
a group whose optional extra is missing still appears, as a command naming the extra."""

from __future__ import annotations

import subprocess
import sys

import typer

from nsed import cli

# Runs nsed's CLI in a child process in which importing the named packages fails, as it does
# when an optional extra is not installed.
WITHOUT = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.argv = ["nsed", *{args!r}]
from nsed.cli import main
main()
"""


def nsed_without(blocked: set[str], *args: str) -> subprocess.CompletedProcess[str]:
    code = WITHOUT.format(blocked=sorted(blocked), args=list(args))
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )


def command_names(app: typer.Typer) -> list[str]:
    """The names of an app's own commands (a command without a name is its function's)."""
    return [c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands]


def test_every_group_loads_and_adds_the_commands_it_declares():
    seen: list[str] = []
    for load, group, commands, _extra in cli._GROUPS:
        sub = load()
        assert isinstance(sub, typer.Typer)
        names = command_names(sub) if group is None else [group]
        assert tuple(names) == commands
        seen += names
    assert sorted(seen) == [
        "bench", "broker", "db", "down", "models", "runs", "serve", "simulate", "ui", "up",
    ]
    assert len(set(seen)) == len(seen)


def test_a_group_without_its_extra_says_what_to_install():
    listed = nsed_without({"starlette", "uvicorn"}, "--help")
    assert listed.returncode == 0, listed.stderr
    assert "(not installed: needs the optional extra 'serve')" in listed.stdout
    assert "ask" in listed.stdout and "broker" in listed.stdout

    serve = nsed_without({"starlette", "uvicorn"}, "serve", "--port", "1")
    assert serve.returncode == 1
    assert serve.stderr == (
        "error: 'nsed serve' needs the optional package 'starlette': pip install \"nsed[serve]\"\n"
    )

    still = nsed_without({"starlette", "uvicorn"}, "broker", "--help")
    assert still.returncode == 0, still.stderr
