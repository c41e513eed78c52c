"""Execution feedback for code deliberations: run each candidate on the public sample tests.

The :class:`~nsed.orchestrator.feedback.CandidateChecker` of protocol v2, built on the
benchmark sandbox (:func:`nsed.benchmarks.grading.grade_code`, every test in its own contained
process). The tests are the ones a solver may see: a benchmark problem's
``public_test_cases`` (:meth:`PublicTestChecker.from_problem`), or the "Sample Input N /
Sample Output N" blocks of a statement (:meth:`PublicTestChecker.from_statement`, what
``nsed ask`` uses). Private tests never reach the deliberation: they grade it afterwards.

Identical programs are run once per checker (one deliberation), and at most
``GRADING_THREADS`` sandboxes run at once, so the models keep their CPU.
"""

from __future__ import annotations

import re
from functools import partial

import anyio

from nsed.agents.parsing import normalize_final
from nsed.benchmarks.grading import grade_code
from nsed.benchmarks.sandbox import DEFAULT_MEMORY_MB
from nsed.problems import Problem, TestCase
from nsed.results import ExecutionCheck

GRADING_THREADS = 2
DEFAULT_CHECK_TIMEOUT_S = 4.0
MAX_PUBLIC_TESTS = 5
_HEAD_END = r"[ \t]*:?[ \t]*\r?\n(?:[ \t]*\r?\n)?"  # the header's line, then one blank line
_SAMPLE = re.compile(
    rf"Sample Input[ \t]*(?P<n>\d*){_HEAD_END}(?P<input>.*?)\r?\n\s*"
    rf"Sample Output[ \t]*(?P=n){_HEAD_END}(?P<output>.*?)(?=\r?\n[ \t]*\r?\n|\Z)",
    re.S,
)


def _clean(block: str) -> str:
    text = block.replace("\r", "").strip("\n")
    return text + "\n" if text else ""


def sample_tests(statement: str) -> list[TestCase]:
    """The stdin tests written in a statement as "Sample Input N" / "Sample Output N" blocks."""
    tests = []
    for match in _SAMPLE.finditer(statement):
        stdin, stdout = _clean(match.group("input")), _clean(match.group("output"))
        if stdin.strip():
            tests.append(TestCase(input=stdin, output=stdout, testtype="stdin"))
    return tests


class PublicTestChecker:
    """Runs candidate programs on a fixed list of public tests in the sandbox."""

    def __init__(
        self,
        tests: list[TestCase],
        *,
        func_name: str | None = None,
        timeout_s: float = DEFAULT_CHECK_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
    ) -> None:
        self.tests = list(tests)[:MAX_PUBLIC_TESTS]
        self.func_name = func_name
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._problem = Problem(
            id="public-tests",
            benchmark="lcb",
            kind="code",
            prompt="(public tests)",
            tests=self.tests,
            func_name=func_name,
        )
        self._cache: dict[str, ExecutionCheck] = {}
        self._limiter = anyio.CapacityLimiter(GRADING_THREADS)

    @classmethod
    def from_problem(cls, problem: Problem, **kwargs: float) -> PublicTestChecker | None:
        """The public tests of a benchmark problem (None when it has none)."""
        count = int(problem.metadata.get("public_tests", 0) or 0)
        public = problem.tests[:count]
        if problem.kind != "code" or not public:
            return None
        return cls(public, func_name=problem.func_name, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_statement(cls, statement: str, **kwargs: float) -> PublicTestChecker | None:
        """The sample tests written in a statement (None when it has none)."""
        tests = sample_tests(statement)
        return cls(tests, **kwargs) if tests else None  # type: ignore[arg-type]

    async def check(self, agent: str, code: str) -> ExecutionCheck | None:
        key = normalize_final(code, "code")
        if key not in self._cache:
            grade = await anyio.to_thread.run_sync(
                partial(
                    grade_code,
                    code,
                    self._problem,
                    timeout_s=self.timeout_s,
                    memory_mb=self.memory_mb,
                ),
                limiter=self._limiter,
            )
            failure = grade.first_failure
            if failure is not None and grade.first_failed_test is not None:
                shown = self.tests[grade.first_failed_test].input.strip()
                shown = shown if len(shown) <= 120 else shown[:120] + "…"
                failure = f"{failure} (input {shown!r})"
            self._cache[key] = ExecutionCheck(
                agent=agent, passed=grade.passed, total=grade.total, first_failure=failure
            )
        return self._cache[key].model_copy(update={"agent": agent})


__all__ = ["PublicTestChecker", "sample_tests"]
