"""`nsed bench lcb` against model-written code that attacks the grader (issue 14, items 2 and
4), through the real CLI in child processes against the scripted server.

The reproduction of item 4: a ``Solution().add`` returning ``10**5000`` (after
``sys.set_int_max_str_digits(0)``), a forged result sentinel, a signalling NaN and a result
nested 100,000 deep used to raise inside nsed, so a run failed part-way and every resume failed
again. Now each is a failed test with its reason, the run completes and a resume finds nothing
left to do. Item 2: without an isolating sandbox the run is refused before any model is
called, unless ``--allow-unsandboxed`` is passed; the plan is recorded and ``nsed runs show``
prints it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from nsed.benchmarks.sandbox import ISOLATED_PLANS, RESULT_SENTINEL
from tests.council_scripts import is_review
from tests.helpers import run_nsed
from tests.scripted_server import ChatRequest, Reply

FORGE = (
    "import os\n"
    "class Solution:\n"
    "    def add(self, a, b):\n"
    f"        os.write(1, {chr(10) + RESULT_SENTINEL!r}.encode() + PAYLOAD + b'\\n')\n"
    "        os._exit(0)\n"
)
HOSTILE = {
    "huge": "import sys\nsys.set_int_max_str_digits(0)\n"
    "class Solution:\n    def add(self, a, b):\n        return 10**5000\n",
    "forged": FORGE.replace("PAYLOAD", "b'[1, 2]'"),
    "deep": FORGE.replace("PAYLOAD", "b'{\"ok\": true, \"value\": \"' + b'[' * 100000 + b'\"}'"),
    "nan": "class Solution:\n    def add(self, a, b):\n        return float('nan')\n",
}
GOOD = "class Solution:\n    def add(self, a, b):\n        return a + b\n"


def lcb_row(n: int) -> dict:
    return {
        "question_title": f"Add {n}",
        "question_content": f"Problem {n}: return a + b.",
        "platform": "leetcode",
        "question_id": f"add{n}",
        "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n",
        "public_test_cases": json.dumps(
            [
                {"input": "1\n2", "output": "3", "testtype": "functional"},
                {"input": "5\n-5", "output": "0", "testtype": "functional"},
            ]
        ),
        "private_test_cases": "[]",
        "metadata": json.dumps({"func_name": "add"}),
    }


def coder(program: str):
    def handler(request: ChatRequest) -> Reply:
        if is_review(request):
            reviews = [
                {"candidate": label, "score": 10, "critique": "ok"}
                for label in request.candidates()
            ]
            return Reply(content=json.dumps({"reviews": reviews}))
        answer = f"Here it is.\n```python\n{program}```"
        return Reply(content=json.dumps({"reasoning": "r", "answer": answer}))

    return handler


def setup(server, tmp_path: Path, programs: dict[str, str]) -> tuple[Path, Path]:
    for name, program in programs.items():
        server.route(name, coder(program))
    data = tmp_path / "lcb.jsonl"
    data.write_text("".join(json.dumps(lcb_row(n)) + "\n" for n in range(2)))
    lines = []
    for name in programs:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'base_url = "{server.url}"',
            f'model = "{name}"',
            "max_retries = 0",
            "",
        ]
    team = tmp_path / "team.toml"
    team.write_text("\n".join(lines))
    return data, team


def bench(data: Path, team: Path, home: Path, *extra: str, path: str = "/usr/bin:/bin"):
    return run_nsed(
        "bench",
        "lcb",
        "--data",
        str(data),
        "--team",
        str(team),
        "--methods",
        "nsed,single",
        "--rounds",
        "1",
        "--run-id",
        "hostile",
        *extra,
        home=home,
        env={"PATH": path},
        columns=160,
        timeout=300,
    )


def stored(home: Path) -> list[tuple[str, str, int, str | None, str]]:
    with sqlite3.connect(home / "nsed.db") as con:
        return con.execute(
            "SELECT method, problem_id, correct, error, detail FROM bench_results "
            "WHERE run_id = 'hostile' AND sample = 0 ORDER BY method, problem_id"
        ).fetchall()


def test_hostile_programs_are_failed_tests_and_the_run_and_its_resume_finish(
    scripted_server, tmp_path
):
    data, team = setup(scripted_server, tmp_path, {**HOSTILE, "good": GOOD})
    home = tmp_path / "home"
    done = bench(data, team, home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hostile: complete" in done.stdout
    rows = stored(home)
    labels = ["nsed", *(f"single:{name}" for name in [*HOSTILE, "good"])]
    assert len(rows) == 2 * len(labels) and all(error is None for _, _, _, error, _ in rows)
    by = {(method, pid): (correct, json.loads(detail)) for method, pid, correct, _, detail in rows}
    for name in HOSTILE:
        for pid in ("add0", "add1"):
            correct, detail = by[(f"single:{name}", pid)]
            assert not correct and detail["first_failure"].startswith("test 1: ")
    assert by[("single:good", "add0")][0] and by[("single:good", "add1")][0]
    assert "forged" in by[("single:forged", "add0")][1]["first_failure"]
    assert "not readable JSON" in by[("single:deep", "add0")][1]["first_failure"]

    requests = len(scripted_server.requests)
    again = bench(data, team, home)
    assert again.returncode == 0, again.stderr
    assert "hostile: complete" in again.stdout and len(scripted_server.requests) == requests

    shown = run_nsed("runs", "show", "hostile", home=home, env={"PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    plan = shown.stdout.split("sandbox: ", 1)[1].split()[0]
    assert plan in ISOLATED_PLANS


def test_without_isolation_the_run_is_refused_unless_allowed_and_the_plan_is_recorded(
    scripted_server, tmp_path
):
    data, team = setup(scripted_server, tmp_path, {"good": GOOD, "other": GOOD})
    home = tmp_path / "home"
    refused = bench(data, team, home, path="/nonexistent")  # no util-linux unshare
    assert refused.returncode == 1
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "without isolation" in error
    assert "--allow-unsandboxed" in error and "apt-get install -y util-linux" in error
    assert scripted_server.requests == []  # refused before any model call

    allowed = bench(data, team, home, "--allow-unsandboxed", path="/nonexistent")
    assert allowed.returncode == 0, allowed.stderr
    assert "WITHOUT isolation" in allowed.stderr
    shown = run_nsed("runs", "show", "hostile", "--json", home=home, env={"PATH": "/usr/bin:/bin"})
    plan = json.loads(shown.stdout)["sandbox"]
    assert plan in ("plain", "plain+uid")

    # Resumed with isolation again, the record keeps both plans in order.
    resumed = bench(data, team, home)
    assert resumed.returncode == 0, resumed.stderr
    shown = run_nsed("runs", "show", "hostile", home=home, env={"PATH": "/usr/bin:/bin"})
    assert f"sandbox: {plan}, then " in shown.stdout
