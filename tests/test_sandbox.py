"""The sandbox against hostile programs: loops, endless stdin, forks, memory bombs, writes
outside the box, sockets, output floods. Each is contained, graded as a failed test with a
reason, and the next test still runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from nsed.benchmarks.grading import grade_code
from nsed.benchmarks.sandbox import call_function, run_python, sandbox_plan
from nsed.errors import ConfigError
from nsed.problems import Problem, TestCase

SHORT = 1.5  # wall timeout for the programs that never end


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, seconds: float = 2.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_plain_program_runs_and_reports_its_containment() -> None:
    result = run_python("import sys\nprint(sys.stdin.read().upper())", stdin="hello\n")
    assert result.ok and result.stdout == "HELLO\n\n"
    assert not result.timed_out and result.killed_reason is None
    assert sandbox_plan() in {"ns+nobody", "ns", "userns", "plain+nobody", "plain"}
    assert result.isolation  # always names what was in force


def test_infinite_loop_is_killed_at_the_wall_timeout() -> None:
    result = run_python("while True:\n    pass", timeout_s=SHORT)
    assert result.timed_out
    assert result.killed_reason == f"wall timeout after {SHORT:g}s"
    assert SHORT <= result.wall_s < SHORT + 2.0


def test_stdin_ends_after_the_input_and_reading_forever_times_out() -> None:
    result = run_python("import sys\nprint(len(sys.stdin.read()))", stdin="abc")
    assert result.ok and result.stdout.strip() == "3"
    spinning = run_python("import sys\nwhile True:\n    sys.stdin.read()", timeout_s=SHORT)
    assert spinning.timed_out


@pytest.mark.parametrize("main_waits", [False, True], ids=["parent-exits", "parent-hangs"])
def test_forked_children_do_not_survive(main_waits: bool) -> None:
    marker = str(uuid.uuid4().int)[:15]
    code = f"""
import os, time
for _ in range(50):
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "3600.{marker}"])
print("forked", flush=True)
"""
    if main_waits:
        code += "time.sleep(3600)\n"
    result = run_python(code, timeout_s=SHORT)
    assert result.stdout.startswith("forked")
    assert result.timed_out is main_waits
    assert wait_until_gone(marker) == []


def test_children_that_leave_the_session_do_not_survive() -> None:
    """Grandchildren that call setsid and are orphaned: a PID namespace or the launcher as
    subreaper still gets them."""
    marker = str(uuid.uuid4().int)[:15]
    code = f"""
import os
for _ in range(5):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "3600.{marker}"])
        os._exit(0)
print("escaped?")
"""
    assert run_python(code).stdout.strip() == "escaped?"
    assert wait_until_gone(marker) == []


def test_unbounded_allocation_hits_the_memory_limit() -> None:
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))", memory_mb=256)
    assert not result.ok and not result.timed_out
    assert result.killed_reason is not None and "memory limit" in result.killed_reason


def test_writing_outside_the_working_directory_does_not_land() -> None:
    target = Path(f"/tmp/nsed_escape_{uuid.uuid4().hex}")
    code = f"open({str(target)!r}, 'w').write('x')\nprint('written')"
    result = run_python(code)
    try:
        if "ro_fs" not in result.isolation:
            pytest.skip(f"no read-only root here (plan {sandbox_plan()}); writes can land")
        assert not target.exists()
        assert result.exit_code == 1 and "Read-only file system" in result.stderr
    finally:
        target.unlink(missing_ok=True)


def test_the_working_directory_is_writable_and_private() -> None:
    code = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "print(open('scratch.txt').read(), os.environ['HOME'] == os.getcwd(), "
        "tempfile.gettempdir() == os.getcwd())"
    )
    first = run_python(code)
    assert first.ok and first.stdout.split() == ["ok", "True", "True"]
    second = run_python("import os\nprint(os.listdir('.'))")
    assert second.stdout.strip() == "[]"  # a fresh directory every run


def test_socket_to_localhost_fails() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "print('connected')"
        )
        result = run_python(code)
        assert "connected" not in result.stdout
        assert result.exit_code == 1
        assert "Error" in result.stderr  # unreachable network, or the guard's PermissionError
        with pytest.raises(BlockingIOError):
            server.accept()


def test_huge_output_is_capped_and_the_program_killed() -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    result = run_python(code, output_limit=100_000, timeout_s=5)
    assert result.stdout_truncated and len(result.stdout) == 100_000
    assert result.killed_reason == "output limit exceeded (more than 100000 bytes)"
    assert result.wall_s < 4


def test_the_nsed_environment_does_not_leak_into_the_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NSED_TEST_API_KEY", "sk-not-for-model-code")
    result = run_python("import os\nprint(sorted(os.environ))")
    assert "NSED_TEST_API_KEY" not in result.stdout
    assert "sk-not-for-model-code" not in result.stdout


def test_function_call_harness() -> None:
    code = (
        "class Solution:\n"
        "    def pair(self, nums: List[int], k: int) -> Tuple[int, int]:\n"
        "        print('debug output is not the result')\n"
        "        return (sum(nums), k)\n"
    )
    call = call_function(code, "pair", "[1, 2, 3]\n4\n")
    assert call.error is None and call.value_json == "[6, 4]"  # tuples become lists, like LCB
    missing = call_function("x = 1\n", "pair", "1")
    assert missing.error == "NameError: the code defines no class Solution"
    raising = call_function(
        "class Solution:\n    def pair(self, a):\n        return 1 // a\n", "pair", "0"
    )
    assert raising.error is not None and raising.error.startswith("ZeroDivisionError")


HOSTILE = {
    "loop": ("while True:\n        pass", "wall timeout"),
    "stdin": ("while True:\n        sys.stdin.read()", "wall timeout"),
    "memory": ("x = [bytearray(10**7) for _ in range(10**4)]", "memory limit"),
    "fork": (
        "for _ in range(20):\n        if os.fork() == 0:\n            time.sleep(3600)\n"
        "    time.sleep(3600)",
        "wall timeout",
    ),
    "escape": ("open('/tmp/nsed_escape_' + str(os.getpid()), 'w').write('x')", "runtime error"),
    "socket": ("socket.create_connection(('127.0.0.1', 9), timeout=1)", "runtime error"),
    "flood": ("while True:\n        sys.stdout.write('y' * 65536)", "output limit"),
    "crash": ("raise SystemExit(3)", "runtime error"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_test_is_a_failed_test_and_the_next_test_runs(name: str) -> None:
    behaviour, reason = HOSTILE[name]
    if name == "escape" and "ro_fs" not in run_python("pass").isolation:
        pytest.skip(f"no read-only root here (plan {sandbox_plan()}); writes can land")
    code = (
        "import os, socket, sys, time\n"
        "n = sys.stdin.readline().strip()\n"
        "if n == '1':\n"
        f"    {behaviour}\n"
        "print(n)\n"
    )
    problem = Problem(
        id=f"hostile-{name}",
        benchmark="lcb",
        kind="code",
        prompt="echo",
        tests=[
            TestCase(input="1\n", output="1\n", testtype="stdin"),
            TestCase(input="2\n", output="2\n", testtype="stdin"),
        ],
    )
    grade = grade_code(code, problem, timeout_s=SHORT, memory_mb=256)
    assert grade.total == 2 and grade.passed == 1 and not grade.correct
    assert grade.first_failed_test == 0
    assert grade.first_failure is not None
    assert grade.first_failure.startswith("test 1: ") and reason in grade.first_failure


def test_a_run_dies_with_the_nsed_process_that_started_it() -> None:
    """If nsed is killed mid-test, its watchdog pipe closes and the program goes too."""
    marker = str(uuid.uuid4().int)[:15]
    # The marker is split so that it appears only in the sandboxed program's command line.
    program = f"import os\nos.execv('/bin/sleep', ['sleep', '3600.{marker[:6]}' + '{marker[6:]}'])"
    parent = (
        f"from nsed.benchmarks.sandbox import run_python\nrun_python({program!r}, timeout_s=60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 20
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker), "the sandboxed program never started"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert wait_until_gone(marker, seconds=3.0) == []
    # The killed process could not delete its box; the next nsed process does.
    boxes = list(Path(tempfile.gettempdir()).glob(f"nsed_box_{proc.pid}_*"))
    assert boxes
    cleanup = "from nsed.benchmarks.sandbox import sandbox_plan\nsandbox_plan()"
    subprocess.run([sys.executable, "-c", cleanup], check=True, cwd=Path(__file__).parent.parent)
    assert not any(box.exists() for box in boxes)


def test_bad_limits_are_rejected_with_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"timeout_s must be positive \(got 0\)"):
        run_python("print(1)", timeout_s=0)
    with pytest.raises(ConfigError, match=r"memory_mb must be at least 64 \(got 8\)"):
        run_python("print(1)", memory_mb=8)
