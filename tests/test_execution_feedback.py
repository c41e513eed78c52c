"""Execution feedback on the real sandbox: sample tests from a statement, candidates run on
them before review, and the public tests deciding between programs the reviewers cannot tell
apart."""

from __future__ import annotations

import json

import anyio

from nsed import Council
from nsed.benchmarks.feedback import PublicTestChecker, sample_tests
from nsed.problems import Problem, TestCase
from tests.council_scripts import is_review, own_label, team_dict
from tests.scripted_server import ChatRequest, Reply

STATEMENT = """Read N and print N squared.

Input

N

Sample Input 1

3

Sample Output 1

9

Three times three is nine.

Sample Input 2

12

Sample Output 2

144
"""
RIGHT = "n = int(input())\nprint(n * n)\n"
WRONG = "n = int(input())\nprint(n + n)\n"


def test_sample_tests_are_read_from_the_statement():
    assert sample_tests(STATEMENT) == [
        TestCase(input="3\n", output="9\n", testtype="stdin"),
        TestCase(input="12\n", output="144\n", testtype="stdin"),
    ]
    assert sample_tests("No samples here.") == []
    assert PublicTestChecker.from_statement("No samples here.") is None


def test_the_checker_runs_programs_in_the_sandbox_and_says_where_they_fail():
    checker = PublicTestChecker.from_statement(STATEMENT)
    assert checker is not None
    right = anyio.run(checker.check, "a", RIGHT)
    wrong = anyio.run(checker.check, "b", WRONG)
    assert right is not None and right.ok and (right.passed, right.total) == (2, 2)
    assert wrong is not None and not wrong.ok and wrong.passed == 0  # 3 + 3 = 6, 12 + 12 = 24
    assert "test 1: wrong answer" in (wrong.first_failure or "")
    assert "input '3'" in (wrong.first_failure or "")
    again = anyio.run(checker.check, "c", WRONG)  # the same program is not run twice
    assert again is not None and again.agent == "c" and again.passed == 0


def test_only_public_tests_of_a_problem_are_used():
    tests = [
        TestCase(input="3\n", output="9\n", testtype="stdin"),
        TestCase(input="5\n", output="25\n", testtype="stdin"),
    ]
    problem = Problem(
        id="p",
        benchmark="lcb",
        kind="code",
        prompt=STATEMENT,
        tests=tests,
        metadata={"public_tests": 1},
    )
    checker = PublicTestChecker.from_problem(problem)
    assert checker is not None and checker.tests == tests[:1]
    no_public = problem.model_copy(update={"metadata": {}})
    assert PublicTestChecker.from_problem(no_public) is None


def coder(program: str):
    def handler(request: ChatRequest) -> Reply:
        if is_review(request):
            reviews = [
                {"candidate": c, "critique": "plausible", "score": 60}
                for c in request.candidates()
                if c != own_label(request)
            ]
            return Reply(content=json.dumps({"reviews": reviews}))
        return Reply(content=f"Square it.\n\n```python\n{program}```")

    return handler


def test_a_deliberation_picks_the_program_that_passes_and_records_why(scripted_server):
    scripted_server.route("alpha", coder(WRONG))
    scripted_server.route("beta", coder(RIGHT))
    scripted_server.route("gamma", coder(WRONG))
    config = {"kind": "code", "max_rounds": 1, "min_rounds": 1, "embeddings": "off", "seed": 3}

    async def go():
        council = Council(team_dict(scripted_server.url, ["alpha", "beta", "gamma"]), config)
        return await council.run(STATEMENT, checker=PublicTestChecker.from_statement(STATEMENT))

    result = anyio.run(go)
    # Two identical wrong programs outvote the right one on fresh votes and equal reviews;
    # the tests say otherwise, and a failing candidate cannot win while one passes.
    assert result.winner == "beta" and "n * n" in (result.final or "")
    assert [(c.agent, c.ok) for c in result.rounds[0].checks] == [
        ("alpha", False),
        ("beta", True),
        ("gamma", False),
    ]
    shown = next(r.user for r in scripted_server.requests if is_review(r) and r.model == "alpha")
    assert "Public tests (run by the orchestrator): 2 of 2 passed" in shown
    assert "0 of 2 passed, FAILED" in shown
