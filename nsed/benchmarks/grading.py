"""Answer checking: math answers against the gold, code against its tests in the sandbox.

Math: integers (AIME, the quick set) compare exactly after the normalisation the agents'
answers get (:func:`nsed.agents.parsing.normalize_final`: ``\\boxed{070}`` is 70); anything
else goes to math-verify when the ``bench`` extra is installed, with its
signal-based timeouts disabled so grading works in worker threads. Code: every test runs in
its own sandboxed process (:mod:`nsed.benchmarks.sandbox`) and is compared with
LiveCodeBench's rules: stdin/stdout by stripped lines with a numeric fallback, functional
problems by the JSON value of ``Solution().<func_name>(*args)``.

Everything graded here is untrusted (model answers, and whatever model-written programs
print), so a grading error is that test's failure with its reason, never an exception out of
:func:`grade_code` or :func:`grade_math`: a run that meets hostile output records it and goes
on, and so does its resume. Only refusing to run code unsandboxed
(:class:`~nsed.errors.SandboxUnavailable`) and bad limits (:class:`~nsed.errors.ConfigError`)
are raised, before any test runs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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
    require_isolation,
    run_python,
)
from nsed.errors import ConfigError
from nsed.problems import Problem, TestCase

log = logging.getLogger("nsed.grading")
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
    """True when ``predicted`` means the same answer as ``gold``; odd input is no match."""
    if predicted is None or not predicted.strip():
        return False
    try:
        pred, want = normalize_final(predicted, "math"), normalize_final(gold, "math")
    except Exception:  # e.g. an integer too long to print: not a match, never a crash
        log.warning("math answer not comparable (%d characters)", len(predicted))
        return False
    if _INT.fullmatch(want) and _INT.fullmatch(pred):
        return _integer_digits(pred) == _integer_digits(want)
    if pred == want:
        return True
    return _math_verify_equal(pred, want)


def _integer_digits(text: str) -> str:
    """An integer literal as sign + digits without leading zeros (any length: no ``int()``,
    whose string conversion refuses more than 4300 digits)."""
    sign = "-" if text.startswith("-") else ""
    digits = text.lstrip("+-").lstrip("0") or "0"
    return "0" if digits == "0" else sign + digits


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
    plan: str = Field(default="", description="the sandbox plan the tests ran under")
    isolation: list[str] = Field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.total > 0 and self.passed == self.total


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    """The line as finite decimal numbers, or None (NaN and sNaN, which raises when compared,
    and infinities are compared as text only)."""
    try:
        numbers = [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None
    return numbers if all(n.is_finite() for n in numbers) else None


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
    code: str, test: TestCase, timeout_s: float, memory_mb: int, allow_unsandboxed: bool
) -> tuple[str | None, SandboxResult]:
    run = run_python(
        code,
        stdin=test.input,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        allow_unsandboxed=allow_unsandboxed,
    )
    crash = _crash_reason(run)
    if crash:
        return crash, run
    if not stdout_matches(run.stdout, test.output):
        return f"wrong answer: expected {_short(test.output)}, got {_short(run.stdout)}", run
    return None, run


class _LongInt(str):
    """An integer literal too long for ``int()``'s string conversion, kept as its digits."""


def _json_int(text: str) -> int | str:
    limit = sys.get_int_max_str_digits()
    if limit == 0 or len(text.lstrip("-")) <= limit:
        return int(text)
    return _LongInt(_integer_digits(text))


def _json_value(text: str) -> Any:
    """JSON of a returned value or an expected output, integers of any length included."""
    return json.loads(text, parse_int=_json_int)


def _grade_call(
    code: str,
    func_name: str,
    test: TestCase,
    timeout_s: float,
    memory_mb: int,
    allow_unsandboxed: bool,
) -> tuple[str | None, SandboxResult]:
    call = call_function(
        code,
        func_name,
        test.input,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        allow_unsandboxed=allow_unsandboxed,
    )
    if call.error is not None or call.value_json is None:
        reason = call.run.killed_reason or f"runtime error: {call.error}"
        return reason, call.run
    try:
        got = _json_value(call.value_json)
    except (ValueError, RecursionError) as exc:
        return f"the returned value is not readable JSON ({type(exc).__name__})", call.run
    try:
        want: Any = _json_value(test.output)
    except (ValueError, RecursionError):
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
    allow_unsandboxed: bool = False,
) -> CodeGrade:
    """Run ``code`` on every test of ``problem`` (each in its own sandbox process).

    ``fail_fast`` stops at the first failure, which is all LiveCodeBench's pass@1 needs; the
    default runs every test so ``passed`` tells how close a wrong program came. Whatever the
    program does, a test it breaks is a failed test with a reason; SandboxUnavailable (no
    isolation and ``allow_unsandboxed`` False) and ConfigError (bad limits) come first.
    """
    require_isolation(allow_unsandboxed)
    if not timeout_s > 0 or memory_mb < 64:
        raise ConfigError(
            f"grading needs timeout_s > 0 and memory_mb >= 64 (got {timeout_s}, {memory_mb})"
        )
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
        failure, run = _grade_one(code, problem, test, timeout_s, memory_mb, allow_unsandboxed)
        if run is not None:
            grade.plan, grade.isolation = run.plan, run.isolation
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


def _grade_one(
    code: str,
    problem: Problem,
    test: TestCase,
    timeout_s: float,
    memory_mb: int,
    allow_unsandboxed: bool,
) -> tuple[str | None, SandboxResult | None]:
    """One test's failure reason (None: passed); an error while grading it is its failure."""
    try:
        if test.testtype == "functional":
            return _grade_call(
                code, problem.func_name or "", test, timeout_s, memory_mb, allow_unsandboxed
            )
        return _grade_stdin(code, test, timeout_s, memory_mb, allow_unsandboxed)
    except Exception as exc:
        log.warning("grading %s failed: %s", problem.id, type(exc).__name__)
        return f"grading error: {type(exc).__name__}: {str(exc)[:200]}", None


__all__ = ["CodeGrade", "grade_code", "grade_math", "stdout_matches"]
