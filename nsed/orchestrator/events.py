"""The typed event stream a host application can consume while a council deliberates.

``Council.stream(question)`` yields these in order; each has a ``type`` tag so that a JSON
consumer (the SSE server, a UI) can tell them apart. The last event is always ``Finished``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from nsed.results import CallRecord, Deliberation, Proposal, Review, RoundRecord


class RoundStarted(BaseModel):
    type: Literal["round_started"] = "round_started"
    round: int
    agents: list[str]


class ProposalReceived(BaseModel):
    type: Literal["proposal"] = "proposal"
    round: int
    proposal: Proposal
    call: CallRecord | None = None


class ReviewReceived(BaseModel):
    type: Literal["review"] = "review"
    round: int
    reviewer: str
    reviews: list[Review]
    call: CallRecord | None = None


class CallTruncated(BaseModel):
    """A call stopped at max_tokens: its reply is not complete."""

    type: Literal["truncated"] = "truncated"
    round: int
    agent: str
    phase: str
    completion_tokens: int = 0
    max_tokens: int | None = None


class AgentFailed(BaseModel):
    type: Literal["agent_failed"] = "agent_failed"
    round: int
    agent: str
    phase: str
    error: str


class RoundScored(BaseModel):
    type: Literal["round_scored"] = "round_scored"
    round: int
    record: RoundRecord


class AgentBenched(BaseModel):
    type: Literal["agent_benched"] = "agent_benched"
    agent: str
    reason: str
    cooldown_s: float = 0.0
    round: int | None = None


class AgentSignedOn(BaseModel):
    type: Literal["agent_signed_on"] = "agent_signed_on"
    agent: str
    replaces: str | None = None
    round: int | None = None
    probation: bool = True


class AgentPromoted(BaseModel):
    type: Literal["agent_promoted"] = "agent_promoted"
    agent: str
    reason: str = ""


class AgentReweighted(BaseModel):
    """Free agency changed how much an agent's votes count (low support lowers, never benches)."""

    type: Literal["agent_reweighted"] = "agent_reweighted"
    agent: str
    weight: float
    reason: str = ""
    round: int | None = None


class AgentReleased(BaseModel):
    type: Literal["agent_released"] = "agent_released"
    agent: str
    reason: str = ""


class Finished(BaseModel):
    type: Literal["finished"] = "finished"
    deliberation: Deliberation


Event = Annotated[
    RoundStarted
    | ProposalReceived
    | ReviewReceived
    | CallTruncated
    | AgentFailed
    | RoundScored
    | AgentBenched
    | AgentSignedOn
    | AgentPromoted
    | AgentReleased
    | AgentReweighted
    | Finished,
    Field(discriminator="type"),
]
