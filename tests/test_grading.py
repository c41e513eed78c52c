"""Answer checking: LiveCodeBench output comparison, stdin and functional problems with right
and wrong programs, and math answers (integers exactly, the rest through math-verify)."""

from __future__ import annotations

import pytest

from nsed.benchmarks.grading import grade_code, grade_math, stdout_matches
from nsed.problems import Problem, TestCase

STDIN_PROBLEM = Problem(
    id="sum-pairs",
    benchmark="lcb",
    kind="code",
    prompt="For each of T lines with two integers, print their sum.",
    tests=[
        TestCase(input="2\n1 2\n3 4\n", output="3\n7\n", testtype="stdin"),
        TestCase(input="1\n-5 5\n", output="0\n", testtype="stdin"),
        TestCase(input="3\n10 1\n0 0\n7 8\n", output="11\n0\n15\n", testtype="stdin"),
    ],
)

FUNCTIONAL_PROBLEM = Problem(
    id="count-below",
    benchmark="lcb",
    kind="code",
    prompt="Return how many numbers are below k, and the list of them.",
    func_name="countBelow",
    starter_code=(
        "class Solution:\n    def countBelow(self, nums: List[int], k: int) -> List[Any]:\n"
    ),
    tests=[
        TestCase(input="[1, 5, 2]\n3", output="[2, [1, 2]]", testtype="functional"),
        TestCase(input="[]\n3", output="[0, []]", testtype="functional"),
        TestCase(input="[9, 9]\n10", output="[2, [9, 9]]", testtype="functional"),
    ],
)


# --- stdout comparison ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("produced", "expected"),
    [
        ("3\n7\n", "3\n7\n"),
        ("3  \r\n 7\n\n\n", "3\n7"),  # per-line strip, trailing blank lines, CRLF
        ("1.0 2.50\n", "1 2.5\n"),  # numeric tokens compare as decimals
        ("\n\n", "\n"),  # all-empty output
    ],
)
def test_outputs_that_match(produced: str, expected: str) -> None:
    assert stdout_matches(produced, expected)


@pytest.mark.parametrize(
    ("produced", "expected"),
    [
        ("3\n8\n", "3\n7\n"),
        ("3\n", "3\n7\n"),  # missing line
        ("3 7\n", "3\n7\n"),  # same tokens, different lines
        ("1.0001\n", "1\n"),
        ("abc\n", "ABC\n"),
    ],
)
def test_outputs_that_do_not_match(produced: str, expected: str) -> None:
    assert not stdout_matches(produced, expected)


# --- Code problems ----------------------------------------------------------------------------


def test_stdin_problem_correct_solution_passes_every_test() -> None:
    code = (
        "t = int(input())\n"
        "for _ in range(t):\n"
        "    a, b = map(int, input().split())\n"
        "    print(a + b)\n"
    )
    grade = grade_code(code, STDIN_PROBLEM)
    assert grade.correct and (grade.passed, grade.total) == (3, 3)
    assert grade.first_failure is None and grade.first_failed_test is None


def test_stdin_problem_wrong_solution_reports_the_first_failure() -> None:
    code = (
        "t = int(input())\n"
        "for _ in range(t):\n"
        "    a, b = map(int, input().split())\n"
        "    print(a + b if a >= 0 else a - b)\n"
    )
    grade = grade_code(code, STDIN_PROBLEM)
    assert not grade.correct and (grade.passed, grade.total) == (2, 3)
    assert grade.first_failed_test == 1
    assert grade.first_failure == "test 2: wrong answer: expected '0', got '-10'"


def test_fail_fast_stops_at_the_first_failure() -> None:
    grade = grade_code("print(0)", STDIN_PROBLEM, fail_fast=True)
    assert grade.passed == 0 and grade.first_failed_test == 0
    assert grade.first_failure is not None and grade.first_failure.startswith("test 1:")


def test_missing_code_is_a_failure_with_a_reason() -> None:
    for code in (None, "", "   \n"):
        grade = grade_code(code, STDIN_PROBLEM)
        assert (grade.passed, grade.total) == (0, 3)
        assert grade.first_failure == "no code in the answer"


def test_runtime_error_names_the_exception() -> None:
    grade = grade_code("print(1 // 0)", STDIN_PROBLEM)
    assert grade.passed == 0
    assert (
        grade.first_failure
        == "test 1: runtime error: ZeroDivisionError: integer division or modulo by zero"
    )


def test_functional_problem_correct_solution_passes() -> None:
    code = (
        "class Solution:\n"
        "    def countBelow(self, nums: List[int], k: int) -> List[Any]:\n"
        "        below = [x for x in nums if x < k]\n"
        "        print('debugging', below)  # prints must not disturb the result\n"
        "        return (len(below), below)\n"
    )
    grade = grade_code(code, FUNCTIONAL_PROBLEM)
    assert grade.correct and (grade.passed, grade.total) == (3, 3)


def test_functional_problem_wrong_solution_fails() -> None:
    code = (
        "class Solution:\n"
        "    def countBelow(self, nums, k):\n"
        "        below = [x for x in nums if x <= k - 2]\n"
        "        return [len(below), below]\n"
    )
    grade = grade_code(code, FUNCTIONAL_PROBLEM)
    assert (grade.passed, grade.total) == (1, 3)
    assert grade.first_failure == "test 1: wrong answer: expected '[2, [1, 2]]', got '[1, [1]]'"


def test_functional_problem_with_the_wrong_method_name() -> None:
    code = "class Solution:\n    def other(self, nums, k):\n        return [0, []]\n"
    grade = grade_code(code, FUNCTIONAL_PROBLEM)
    assert grade.passed == 0
    assert grade.first_failure == (
        "test 1: runtime error: AttributeError: class Solution has no method 'countBelow'"
    )


# --- Math -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("070", "70"),
        ("70", "070"),
        ("\\boxed{070}", "70"),
        ("$70$", "70"),
        (" 70. ", "70"),
        ("1,000", "1000"),
        ("+5", "5"),
        ("-3", "-3"),
    ],
)
def test_integer_answers_match_after_normalisation(predicted: str, gold: str) -> None:
    assert grade_math(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("71", "70"), ("7", "70"), ("-70", "70"), (None, "70"), ("", "70"), ("seventy", "70")],
)
def test_wrong_or_missing_integer_answers(predicted: str | None, gold: str) -> None:
    assert not grade_math(predicted, gold)


def test_general_math_answers_use_math_verify() -> None:
    import math_verify  # noqa: F401  (extra bench; make install-dev installs it)

    assert grade_math("0.5", "\\frac{1}{2}")
    assert grade_math("\\frac{1}{2}", "0.5")
    assert grade_math("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}")
    assert grade_math("2^{1/2}", "\\sqrt{2}")
    assert not grade_math("\\frac{1}{3}", "0.5")
    assert not grade_math("3.14159", "\\pi")


def test_math_verify_works_off_the_main_thread() -> None:
    """math-verify's default signal timeouts raise in threads; ours are disabled."""
    from concurrent.futures import ThreadPoolExecutor

    import math_verify  # noqa: F401  (extra bench; make install-dev installs it)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: grade_math(p, "\\frac{1}{2}"), ["0.5", "0.25"]))
    assert results == [True, False]


# --- Hostile output is a failed test, never an error in nsed (issue 14, item 4) ---------------

ADD_PROBLEM = Problem(
    id="add",
    benchmark="lcb",
    kind="code",
    prompt="Return a + b.",
    func_name="add",
    tests=[
        TestCase(input="1\n2", output="3", testtype="functional"),
        TestCase(input="2\n2", output="4", testtype="functional"),
    ],
)
SENTINEL = "\\x1ensed-result\\x1e"  # as the harness prints it (see sandbox.RESULT_SENTINEL)


def forging(payload: str) -> str:
    """A solution that prints its own result line to the real stdout and leaves at once."""
    return (
        "import os\n"
        "class Solution:\n"
        "    def add(self, a, b):\n"
        f"        os.write(1, ('\\n{SENTINEL}' + {payload!r} + '\\n').encode())\n"
        "        os._exit(0)\n"
    )


HOSTILE_RESULTS = {
    "10**5000": (
        "import sys\nsys.set_int_max_str_digits(0)\n"
        "class Solution:\n    def add(self, a, b):\n        return 10**5000\n",
        "wrong answer",
    ),
    "forged-list": (forging("[1, 2]"), "forged"),
    "forged-number-value": (forging('{"ok": true, "value": 3}'), "forged"),
    "forged-not-json": (forging('{"ok": tru'), "forged"),
    "forged-deep-value": (
        forging('{"ok": true, "value": "' + "[" * 100_000 + '"}'),
        "not readable",
    ),
    "forged-deep-payload": (forging("[" * 100_000), "forged"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_RESULTS))
def test_a_hostile_result_is_a_failed_test(name: str) -> None:
    code, reason = HOSTILE_RESULTS[name]
    grade = grade_code(code, ADD_PROBLEM)
    assert grade.total == 2 and grade.passed == 0 and not grade.correct
    assert grade.first_failure is not None and grade.first_failure.startswith("test 1: ")
    assert reason in grade.first_failure


def test_an_integer_too_long_for_int_is_still_graded_exactly() -> None:
    huge = "9" * 5000
    problem = ADD_PROBLEM.model_copy(
        update={"tests": [TestCase(input="1\n2", output=huge, testtype="functional")]}
    )
    code = (
        "import sys\nsys.set_int_max_str_digits(0)\n"
        "class Solution:\n    def add(self, a, b):\n        return 10**5000 - 1\n"
    )
    assert grade_code(code, problem).correct
    assert not grade_code(code.replace("- 1", "- 2"), problem).correct


def test_signalling_nan_in_the_output_is_a_wrong_answer() -> None:
    problem = STDIN_PROBLEM.model_copy(
        update={"tests": [TestCase(input="", output="1\n", testtype="stdin")]}
    )
    for printed in ("sNaN", "NaN", "Infinity", "-sNaN123"):
        grade = grade_code(f"print({printed!r})", problem)
        assert grade.first_failure is not None and "wrong answer" in grade.first_failure
    assert stdout_matches("NaN\n", "NaN\n") and not stdout_matches("sNaN", "1")


def test_math_answers_of_any_length_are_compared_without_crashing() -> None:
    long = "1" * 5000
    assert grade_math(long, long) and grade_math(f"\\boxed{{{long}}}", "0" + long)
    assert not grade_math(long, "70") and not grade_math("70", long)
    assert grade_math("-0", "0") and not grade_math("-5", "5")
