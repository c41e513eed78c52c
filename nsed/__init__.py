"""nsed: N-Way Self-Evaluating Deliberation.

Several LLMs on OpenAI-compatible endpoints propose, review each other anonymously, vote
quadratically and iterate in rounds; the winner of the last completed round is the answer.

    >>> from nsed import deliberate
    >>> result = deliberate("What is 17 * 23?", kind="math")
    >>> result.final

This module is the public surface (pinned by ``tests/test_exported_members.py``): the entry
points, the configuration and result models, the steps of agent apps (tool calls), the errors
and the event types. Everything else is imported from its own module (e.g.
``nsed.council.resolve_team``, ``nsed.config.AgentSpec``, ``nsed.server.BackgroundServer``).
"""

import logging

from nsed.config import DeliberationConfig, ModelSpec, TeamSpec
from nsed.council import Council, adeliberate, deliberate
from nsed.errors import (
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    BudgetExceeded,
    ConfigError,
    DataError,
    InfeasibleTeam,
    InvalidConversation,
    InvalidOutput,
    InvalidQuestion,
    NsedError,
    QuorumLost,
    StoreError,
    UnsupportedFormat,
)
from nsed.orchestrator.events import (
    AgentBenched,
    AgentFailed,
    AgentPromoted,
    AgentReleased,
    AgentReweighted,
    AgentSignedOn,
    CallTruncated,
    Event,
    Finished,
    ProposalReceived,
    ReviewReceived,
    RoundScored,
    RoundStarted,
)
from nsed.results import Deliberation, Proposal, Review, RoundRecord, Usage
from nsed.steps import FunctionTool, Step, ToolCall

__version__ = "0.1.0"

# A library logs, the application decides where it goes (nothing is printed by default).
logging.getLogger("nsed").addHandler(logging.NullHandler())

__all__ = [
    "AgentBenched",
    "AgentFailed",
    "AgentPromoted",
    "AgentReleased",
    "AgentReweighted",
    "AgentSignedOn",
    "BackendError",
    "BackendTimeout",
    "BackendUnreachable",
    "BudgetExceeded",
    "CallTruncated",
    "ConfigError",
    "Council",
    "DataError",
    "Deliberation",
    "DeliberationConfig",
    "Event",
    "Finished",
    "FunctionTool",
    "InfeasibleTeam",
    "InvalidConversation",
    "InvalidOutput",
    "InvalidQuestion",
    "ModelSpec",
    "NsedError",
    "Proposal",
    "ProposalReceived",
    "QuorumLost",
    "Review",
    "ReviewReceived",
    "RoundRecord",
    "RoundScored",
    "RoundStarted",
    "Step",
    "StoreError",
    "TeamSpec",
    "ToolCall",
    "UnsupportedFormat",
    "Usage",
    "__version__",
    "adeliberate",
    "deliberate",
]
