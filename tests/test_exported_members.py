"""The public surface: ``nsed.__all__`` changes only on purpose (as httpx pins its own)."""

from __future__ import annotations

import types

import nsed

# What a user needs: the entry points, the configuration and result models, the errors and
# the event types of Council.stream(). Everything else is imported from its module.
PUBLIC = {
    "entry points": ["Council", "adeliberate", "deliberate"],
    "configuration": ["DeliberationConfig", "ModelSpec", "TeamSpec"],
    "results": ["Deliberation", "Proposal", "Review", "RoundRecord", "Usage"],
    "agent apps": ["FunctionTool", "Step", "ToolCall"],
    "errors": [
        "BackendError",
        "BackendTimeout",
        "BackendUnreachable",
        "BudgetExceeded",
        "ConfigError",
        "DataError",
        "InfeasibleTeam",
        "InvalidConversation",
        "InvalidOutput",
        "InvalidQuestion",
        "NsedError",
        "QuorumLost",
        "StoreError",
        "UnsupportedFormat",
    ],
    "events": [
        "AgentBenched",
        "AgentFailed",
        "AgentPromoted",
        "AgentReleased",
        "AgentReweighted",
        "AgentSignedOn",
        "CallTruncated",
        "Event",
        "Finished",
        "ProposalReceived",
        "ReviewReceived",
        "RoundScored",
        "RoundStarted",
    ],
    "version": ["__version__"],
}


def test_all_is_exactly_the_pinned_surface():
    pinned = sorted(name for names in PUBLIC.values() for name in names)
    assert sorted(nsed.__all__) == pinned
    assert len(nsed.__all__) == len(set(nsed.__all__))


def test_all_is_everything_the_package_root_defines():
    """No public name at the root that is not exported (modules and logging aside)."""
    defined = {
        name
        for name, value in vars(nsed).items()
        if not isinstance(value, types.ModuleType)
        and (not name.startswith("_") or name == "__version__")
    }
    assert defined == set(nsed.__all__)


def test_every_exported_name_resolves():
    for name in nsed.__all__:
        assert getattr(nsed, name) is not None, name
    assert all(issubclass(getattr(nsed, n), nsed.NsedError) for n in PUBLIC["errors"])
