"""The typed result of a deliberation: what went in, what every agent said, how it was scored.

All models are pydantic and JSON-serialisable; ``Deliberation.model_dump_json()`` is the trace
that ``nsed ask --json`` prints, the server returns and the store keeps. Agents appear by their
public names; the anonymous labels used during review stay internal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, Field, computed_field, field_validator

from nsed.errors import ConfigError, redact_url
from nsed.steps import Step

M = TypeVar("M", bound=BaseModel)


class Usage(BaseModel):
    """Token and dollar accounting, summed over successful HTTP calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = Field(default=0, description="of completion_tokens: the thinking")
    cost_usd: float = 0.0
    calls: int = 0
    retries: int = 0
    failed_calls: int = 0
    truncated_calls: int = Field(default=0, description="calls cut at max_tokens")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls
        self.retries += other.retries
        self.failed_calls += other.failed_calls
        self.truncated_calls += other.truncated_calls


class Proposal(BaseModel):
    """One agent's answer in one round."""

    agent: str
    reasoning: str = ""
    answer: str
    thinking: str = Field(
        default="", description="the model's thinking channel: trace only, unless shared"
    )
    final: str | None = None
    parse_error: str | None = Field(default=None, description="what could not be parsed, if any")
    finish_reason: str | None = Field(default=None, description="as the backend reported it")
    truncated: bool = Field(default=False, description="cut at max_tokens: not a complete answer")
    blind: bool = Field(
        default=False, description="written without the council state (exploration re-solve)"
    )
    step: Step | None = Field(
        default=None, description="with tools or an answer schema: the step, checked"
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


class Review(BaseModel):
    """One reviewer's score of one candidate. Dropped reviews are kept, with the reason."""

    reviewer: str
    candidate: str | None
    score: float | None
    critique: str = ""
    dropped_reason: str | None = None
    clipped: bool = Field(default=False, description="score was outside [-100, 100]")


class CallRecord(BaseModel):
    """One successful model call: how it ended and how much of its token budget it used."""

    agent: str
    phase: str = Field(description="propose or review")
    finish_reason: str | None = None
    truncated: bool = Field(default=False, description="cut at max_tokens")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    max_tokens: int | None = Field(default=None, description="the completion cap sent")
    latency_s: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def budget_used(self) -> float | None:
        """completion_tokens / max_tokens (None without a cap)."""
        return self.completion_tokens / self.max_tokens if self.max_tokens else None


class Failure(BaseModel):
    """A call that failed after retries; the agent was skipped for that phase."""

    agent: str
    phase: str
    error: str
    timeout: bool = Field(default=False, description="the call timed out (BackendTimeout)")


class ExecutionCheck(BaseModel):
    """A code candidate run on the problem's public sample tests before review."""

    agent: str
    passed: int = 0
    total: int = 0
    first_failure: str | None = Field(default=None, description="the first failing test, why")
    error: str | None = Field(default=None, description="why the check itself could not run")

    @property
    def ok(self) -> bool:
        return self.error is None and self.total > 0 and self.passed == self.total


class AnswerSupport(BaseModel):
    """One distinct final answer of a deliberation so far and the evidence for it
    (answer-level aggregation, :mod:`nsed.orchestrator.aggregation`)."""

    key: str = Field(description="the normalised answer proposals are grouped by")
    final: str
    support: float = Field(
        description="Σ w·q over the counted reviews of its proposals + fresh_vote per fresh one"
    )
    fresh: int = Field(default=0, description="its proposals written without the state")
    review_weight: float = Field(default=0.0, description="Σ reviewer weight of those reviews")
    mean_score: float = Field(default=0.0, description="mean raw score of those reviews")
    proposals: int = Field(default=0, description="proposals that carried it, all rounds")
    first_round: int = 0
    last_round: int = 0
    eligible: bool = Field(default=True, description="False: no proposal may win with it")


class RoundRecord(BaseModel):
    """Everything about one round: proposals, reviews, the vote and the stop statistics."""

    index: int
    proposals: list[Proposal] = Field(default_factory=list)
    reviews: list[Review] = Field(default_factory=list)
    support: dict[str, float] = Field(default_factory=dict, description="S_i per agent")
    net_support: dict[str, float] = Field(default_factory=dict)
    variance: dict[str, float] = Field(default_factory=dict, description="of raw scores received")
    mean_score: dict[str, float] = Field(default_factory=dict)
    winner: str | None = None
    winner_final: str | None = None
    conviction: float = 0.0
    unanimous: bool = False
    du_dt: float | None = None
    evidence: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    state_tokens: int = 0
    failures: list[Failure] = Field(default_factory=list)
    calls: list[CallRecord] = Field(
        default_factory=list, description="every successful call: finish reason, budget used"
    )
    agent_usage: dict[str, Usage] = Field(
        default_factory=dict, description="per agent: tokens, cost, calls, failed calls"
    )
    # Protocol v2 (optional: absent from v1 traces).
    winner_round: int | None = Field(
        default=None, description="round of the winning proposal, when an earlier round's"
    )
    winner_basis: str | None = Field(
        default=None,
        description="how the winner was chosen: answer, proposal, or a fallback without reviews",
    )
    answers: list[AnswerSupport] = Field(
        default_factory=list, description="answer-level standings after this round, best first"
    )
    checks: list[ExecutionCheck] = Field(
        default_factory=list, description="code candidates run on the public tests"
    )
    explorers: list[str] = Field(
        default_factory=list, description="agents that re-solved blind this round"
    )


class AgentInfo(BaseModel):
    """Who took part (no secrets: credentials in ``base_url`` are redacted)."""

    name: str
    model: str
    base_url: str
    persona: str | None = None
    role: str | None = None

    @field_validator("base_url")
    @classmethod
    def _redacted(cls, value: str) -> str:
        return redact_url(value)


class Deliberation(BaseModel):
    """The outcome: the last completed round's winner, plus the full trace."""

    id: str
    question: str
    kind: str
    answer: str
    final: str | None
    winner: str | None
    stopped_because: str
    rounds: list[RoundRecord]
    usage: Usage
    agents: list[AgentInfo]
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    wall_s: float = 0.0
    config: dict = Field(default_factory=dict)
    step: Step | None = Field(
        default=None, description="with tools or an answer schema: the chosen step (valid)"
    )
    parsed: Any = Field(
        default=None,
        description="the JSON answer; an instance of response_model when one was given",
    )

    def parsed_as(self, model: type[M]) -> M:
        """The JSON answer as an instance of ``model`` (also for a trace read back from JSON)."""
        if isinstance(self.parsed, model):
            return self.parsed
        if self.parsed is None:
            raise ConfigError(
                "this deliberation has no JSON answer: ask with response_model=... or "
                "response_format=..."
            )
        return model.model_validate(self.parsed)
