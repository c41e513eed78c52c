"""The typed benchmark problem: one schema for AIME, LiveCodeBench and the quick set.

Loaders turn each data format into :class:`Problem`; the runner, the baselines and the graders
only ever see this shape, so a new benchmark is a new loader and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BenchmarkName = Literal["aime", "lcb", "quick"]
ProblemKind = Literal["math", "code"]
TestType = Literal["stdin", "functional"]


class TestCase(BaseModel):
    """One code test. ``stdin``: program input/expected output. ``functional``: one JSON
    argument per input line, and the JSON of the expected return value."""

    __test__ = False  # not a pytest class, despite the name

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    testtype: TestType


class Problem(BaseModel):
    """A question the agents get (``prompt``) and what a correct answer is checked against."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    benchmark: BenchmarkName
    kind: ProblemKind
    prompt: str = Field(min_length=1, description="the full text the agents see")
    answer: str | None = Field(default=None, description="gold answer for math problems")
    tests: list[TestCase] = Field(default_factory=list, description="code tests, public+private")
    func_name: str | None = Field(default=None, description="Solution method for functional")
    starter_code: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def functional(self) -> bool:
        """Graded by calling ``Solution().<func_name>`` rather than through stdin/stdout."""
        return any(t.testtype == "functional" for t in self.tests)


__all__ = ["BenchmarkName", "Problem", "ProblemKind", "TestCase", "TestType"]
