"""Answer checking: math answers against the gold, code against its tests in the sandbox.

Math: integers (AIME, the quick set) compare exactly after the normalisation the agents'
answers get (:func:`nsed.agents.parsing.normalize_final`: ``\\boxed{070}`` is 70); anything
else goes to math-verify when the ``bench`` extra is installed, with its
signal-based timeouts disabled so grading works in worker threads. Code: every test runs in
its own sandboxed process (:mod:`nsed.benchmarks.sandbox`) and is compared with
LiveCodeBench's rules: stdin/stdout by stripped lines with a numeric fallback, functional
problems by the JSON value of ``Solution().<func_name>(*args)``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, Field

from nsed.agents.parsing import normalize_final
from nsed.benchmarks.sandbox import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    SandboxResult,
    call_function,
    run_python,
)
from nsed.problems import Problem, TestCase

_INT = re.compile(r"[+-]?\d+")
_MATH_VERIFY_MAX_CHARS = 400  # sympy can take forever on huge expressions, and no timeout runs


# --- Math -------------------------------------------------------------------------------------


class _KnownTimeoutNotice(logging.Filter):
    """Drop math-verify's "timeout is disabled" warning: we disable it on purpose (threads)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_KnownTimeoutNotice())


def grade_math(predicted: str | None, gold: str) -> bool:
    """True when ``predicted`` means the same answer as ``gold``."""
    if predicted is None or not predicted.strip():
        return False
    pred, want = normalize_final(predicted, "math"), normalize_final(gold, "math")
    if _INT.fullmatch(want) and _INT.fullmatch(pred):
        return int(pred) == int(want)
    if pred == want:
        return True
    return _math_verify_equal(pred, want)


def _math_verify_equal(pred: str, gold: str) -> bool:
    if max(len(pred), len(gold)) > _MATH_VERIFY_MAX_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # the bench extra is not installed: exact match only
        return False

    def parsed(text: str) -> list[Any]:
        wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
        return parse(wrapped, parsing_timeout=None) or parse(text, parsing_timeout=None)

    try:
        gold_parsed, pred_parsed = parsed(gold), parsed(pred)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # math-verify raises many kinds on odd input; odd input is not a match
        return False


# --- Code -------------------------------------------------------------------------------------


class CodeGrade(BaseModel):
    """How a program did on a problem's tests; correct only when every test passed."""

    passed: int = 0
    total: int = 0
    first_failure: str | None = Field(default=None, description="'test N: reason' of the first")
    first_failed_test: int | None = None
    wall_s: float = 0.0
    isolation: list[str] = Field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.total > 0 and self.passed == self.total


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def stdout_matches(produced: str, expected: str) -> bool:
    """LiveCodeBench's stdin/stdout check: same number of stripped lines, each equal as text
    or, failing that, as a list of decimal numbers (so ``1.0`` matches ``1``)."""
    got, want = _stripped_lines(produced), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g == w:
            continue
        gd, wd = _as_decimals(g), _as_decimals(w)
        if gd is None or wd is None or gd != wd:
            return False
    return True


def _short(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _crash_reason(run: SandboxResult) -> str | None:
    if run.killed_reason:
        return run.killed_reason
    if run.exit_code != 0:
        lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {run.exit_code}"
        return f"runtime error: {detail}"
    return None


def _grade_stdin(
    code: str, test: TestCase, timeout_s: float, memory_mb: int
) -> tuple[str | None, SandboxResult]:
    run = run_python(code, stdin=test.input, timeout_s=timeout_s, memory_mb=memory_mb)
    crash = _crash_reason(run)
    if crash:
        return crash, run
    if not stdout_matches(run.stdout, test.output):
        return f"wrong answer: expected {_short(test.output)}, got {_short(run.stdout)}", run
    return None, run


def _grade_call(
    code: str, func_name: str, test: TestCase, timeout_s: float, memory_mb: int
) -> tuple[str | None, SandboxResult]:
    call = call_function(code, func_name, test.input, timeout_s=timeout_s, memory_mb=memory_mb)
    if call.error is not None or call.value_json is None:
        reason = call.run.killed_reason or f"runtime error: {call.error}"
        return reason, call.run
    got = json.loads(call.value_json)
    try:
        want: Any = json.loads(test.output)
    except json.JSONDecodeError:
        want = test.output.strip()
    if got != want:
        return f"wrong answer: expected {_short(test.output)}, got {_short(call.value_json)}", (
            call.run
        )
    return None, call.run


def grade_code(
    code: str | None,
    problem: Problem,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    fail_fast: bool = False,
) -> CodeGrade:
    """Run ``code`` on every test of ``problem`` (each in its own sandbox process).

    ``fail_fast`` stops at the first failure, which is all LiveCodeBench's pass@1 needs; the
    default runs every test so ``passed`` tells how close a wrong program came.
    """
    total = len(problem.tests)
    if code is None or not code.strip():
        first = 0 if total else None
        return CodeGrade(
            first_failure="no code in the answer", first_failed_test=first, total=total
        )
    if problem.functional and not problem.func_name:
        return CodeGrade(total=total, first_failure="problem has functional tests but no func_name")
    grade = CodeGrade(total=total)
    started = time.monotonic()
    for index, test in enumerate(problem.tests):
        if test.testtype == "functional":
            failure, run = _grade_call(code, problem.func_name or "", test, timeout_s, memory_mb)
        else:
            failure, run = _grade_stdin(code, test, timeout_s, memory_mb)
        grade.isolation = run.isolation
        if failure is None:
            grade.passed += 1
            continue
        if grade.first_failure is None:
            grade.first_failure = f"test {index + 1}: {failure}"
            grade.first_failed_test = index
        if fail_fast:
            break
    grade.wall_s = round(time.monotonic() - started, 4)
    return grade


__all__ = ["CodeGrade", "grade_code", "grade_math", "stdout_matches"]
