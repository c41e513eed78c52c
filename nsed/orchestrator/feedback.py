"""Execution feedback: facts about a code candidate, gathered before anyone reviews it.

For code tasks a reviewer's opinion of a program is worth less than running it. Before the
review phase the loop hands every code candidate to a :class:`CandidateChecker` (when the
deliberation has one and ``execution_feedback`` is on). The result is recorded in the round
(``RoundRecord.checks``), shown to reviewers next to the candidate (pass/fail and the first
failing case), and a candidate that fails its public tests cannot win while one that passes
exists.

The orchestrator defines only the interface: running model-written code is the sandbox's job,
which lives with the benchmarks (:mod:`nsed.benchmarks.feedback` implements the checker on
the public sample tests of a problem or of a statement). Front ends pass a checker to
``Council.run(..., checker=...)``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from nsed.results import ExecutionCheck


@runtime_checkable
class CandidateChecker(Protocol):
    """Runs one candidate program on the public tests it knows of."""

    async def check(self, agent: str, code: str) -> ExecutionCheck | None:
        """The outcome for ``agent``'s program ``code``; None when there is nothing to run."""
        ...


def describe(check: ExecutionCheck) -> str:
    """The line a reviewer sees under a candidate."""
    if check.error is not None:
        return f"Public tests: could not be run ({check.error})."
    verdict = "all passed" if check.ok else "FAILED"
    line = (
        f"Public tests (run by the orchestrator): {check.passed} of {check.total} passed, "
        f"{verdict}."
    )
    if check.first_failure:
        line += f" First failing case: {check.first_failure}"
    return line


__all__ = ["CandidateChecker", "describe"]
