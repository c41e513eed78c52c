"""The programs the sandbox copies into each box, tested as code: the launcher's pure helpers,
the runner's prelude and call mode in-process, and the runner as its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsed.benchmarks import sandbox, sandbox_programs
from nsed.benchmarks.sandbox_programs import launcher, runner

SENTINEL = "\x1etest-result\x1e"


@pytest.fixture
def keep_recursion_limit() -> Iterator[None]:
    """The prelude raises the recursion limit (as LiveCodeBench does); undo it for pytest."""
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)


def solution(tmp_path: Path, code: str) -> str:
    path = tmp_path / "solution.py"
    path.write_text(code)
    return str(path)


# --- What goes into the box --------------------------------------------------------------------


def test_the_box_gets_the_modules_exactly():
    for name in sandbox_programs.PROGRAMS:
        module_file = Path(sandbox_programs.__file__).with_name(name)
        assert sandbox._program(name) == module_file.read_text(encoding="utf-8")
    assert {launcher.__name__, runner.__name__} == {
        f"nsed.benchmarks.sandbox_programs.{name.removesuffix('.py')}"
        for name in sandbox_programs.PROGRAMS
    }


def test_the_programs_import_only_the_standard_library():
    for module in (launcher, runner):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        assert "import nsed" not in source and "from nsed" not in source


# --- Launcher helpers ----------------------------------------------------------------------------


def test_mountinfo_paths_and_options():
    lines = [
        "36 35 98:0 / /mnt/with\\040space rw,nosuid,noatime master:1 - ext3 /dev/root rw\n",
        "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n",
    ]
    assert list(launcher.parse_mountinfo(lines)) == [
        ("/mnt/with space", ["rw", "nosuid", "noatime"]),
        ("/proc", ["rw", "nosuid", "nodev", "noexec", "relatime"]),
    ]
    assert launcher.unescape_mount_path("/a\\011b\\134c") == "/a\tb\\c"


def test_remount_flags_keep_the_locked_options_and_add_read_only():
    base = launcher.MS_REMOUNT | launcher.MS_BIND | launcher.MS_RDONLY | launcher.MS_NOSUID
    assert launcher.remount_flags(["rw"]) == base
    flags = launcher.remount_flags(["rw", "nodev", "noexec", "relatime", "unknown"])
    assert flags == base | launcher.MS_NODEV | launcher.MS_NOEXEC | launcher.MS_RELATIME


def test_hidden_ancestor_finds_the_first_directory_nobody_cannot_enter():
    if not os.stat("/tmp").st_mode & 0o001:
        pytest.skip("/tmp is not world-traversable here")
    with tempfile.TemporaryDirectory(dir="/tmp") as root:
        closed = Path(root) / "open" / "closed"
        inner = closed / "inner"
        inner.mkdir(parents=True)
        Path(root).chmod(0o755)
        (Path(root) / "open").chmod(0o755)
        closed.chmod(0o700)
        try:
            assert launcher.hidden_ancestor(str(inner)) == str(closed)
            closed.chmod(0o711)  # traversable (x) without being listable
            assert launcher.hidden_ancestor(str(inner)) is None
            assert launcher.hidden_ancestor(str(Path(root) / "missing" / "dir")) is None
        finally:
            closed.chmod(0o755)


def test_covered_by_matches_whole_path_components():
    tops = ["/root", "/home/ann"]
    assert launcher.covered_by("/root/.pyenv/versions/3.11", tops) == "/root"
    assert launcher.covered_by("/home/ann", tops) == "/home/ann"
    assert launcher.covered_by("/home/anna/x", tops) is None
    assert launcher.covered_by("/usr/lib", tops) is None


def test_id_map_maps_one_inner_id_onto_the_launchers():
    assert launcher.id_map(1000) == "1000 0 1\n"
    assert launcher.id_map(7, 3) == "7 3 1\n"


def test_parent_pid_survives_odd_command_names():
    assert launcher.parent_pid("4242 (python) S 17 4242 4242 0 -1") == 17
    assert launcher.parent_pid("99 (a b) c)) R 5 99 99 0 -1") == 5
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        assert launcher.parent_pid(f.read().decode()) == os.getppid()


# --- Runner, in-process ---------------------------------------------------------------------------


@pytest.mark.usefixtures("keep_recursion_limit")
def test_prelude_gives_the_livecodebench_names():
    scope = runner.prelude_scope()
    for name in ("Counter", "defaultdict", "deque", "heappush", "bisect_left", "gcd", "List"):
        assert name in scope, name
    assert "__builtins__" not in scope
    assert sys.getrecursionlimit() == 50000


@pytest.mark.usefixtures("keep_recursion_limit")
def test_call_solution_returns_json_and_discards_prints(tmp_path, capsys):
    path = solution(
        tmp_path,
        "class Solution:\n"
        "    def pair(self, xs: List[int], k: int):\n"
        "        print('noise')\n"
        "        return (sum(xs), Counter(xs)[k])\n",
    )
    assert runner.call_solution(path, "pair", "[1, 2, 2]\n2\n") == {"ok": True, "value": "[5, 2]"}
    assert "noise" not in capsys.readouterr().out


@pytest.mark.usefixtures("keep_recursion_limit")
@pytest.mark.parametrize(
    ("code", "func", "error"),
    [
        ("x = 1\n", "f", "NameError: the code defines no class Solution"),
        ("class Solution:\n    pass\n", "f", "AttributeError: class Solution has no method 'f'"),
        (
            "class Solution:\n    def f(self):\n        return {1, 2}\n",
            "f",
            "return value is not JSON-serialisable",
        ),
        ("class Solution:\n    def f(self):\n        raise SystemExit(3)\n", "f", "SystemExit: 3"),
    ],
)
def test_call_solution_reports_what_went_wrong(tmp_path, code, func, error):
    payload = runner.call_solution(solution(tmp_path, code), func, "")
    assert payload["ok"] is False and payload["error"].startswith(error)


# --- Runner, as its own process (no launcher, no limits) ---------------------------------------


def run_runner(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-X", "utf8", runner.__file__ or "", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runner_script_mode_reads_stdin_and_keeps_the_exit_status(tmp_path):
    path = solution(tmp_path, "n = int(input())\nprint(gcd(n, 12))\nexit(n % 5)\n")
    done = run_runner("script", path, stdin="18\n")
    assert (done.returncode, done.stdout) == (3, "6\n")


def test_runner_call_mode_prints_the_sentinel_payload(tmp_path):
    path = solution(tmp_path, "class Solution:\n    def f(self, a):\n        return a * 2\n")
    done = run_runner("call", path, "f", SENTINEL, stdin="21\n")
    assert done.returncode == 0
    head, _, result = done.stdout.rpartition(SENTINEL)
    assert head.strip() == "" and json.loads(result) == {"ok": True, "value": "42"}


def test_runner_socket_guard_refuses_sockets(tmp_path):
    code = (
        "import socket\n"
        "for make in (lambda: socket.socket(), lambda: socket.create_connection(('x', 1))):\n"
        "    try:\n"
        "        make()\n"
        "    except PermissionError as exc:\n"
        "        print(exc)\n"
    )
    done = run_runner("--socket-guard", "script", solution(tmp_path, code))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["network access is disabled in the nsed sandbox"] * 2
