"""The typed exceptions a user of nsed can catch.

Every error nsed raises on purpose derives from :class:`NsedError`. Subclasses are grouped by
what the user must do differently: fix the configuration or input, fix or wait for a backend,
add agents, raise a budget, relax the team constraints. Messages say what to change, and never
contain an API key.

:func:`redact_url` is how a URL becomes text anywhere in nsed (error messages, logs, traces,
stored rows): credentials in ``user:password@`` and secret-looking query values become
``***``. ``BackendError`` applies it to its endpoint and to every URL in its message.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAM = re.compile(
    r"key|token|secret|passw|pwd|sig|auth|credential|session|code|cookie", re.IGNORECASE
)
_QUERY_PAIR = re.compile(r"([^&=]+)=([^&]*)")


def redact_url(url: str) -> str:
    """``url`` safe to show: userinfo and the values of secret-looking query parameters
    (``api_key``, ``token``, ``sig``...) and any fragment replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _QUERY_PAIR.sub(
        lambda m: f"{m.group(1)}=***" if _SECRET_PARAM.search(m.group(1)) else m.group(0),
        parts.query,
    )
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class NsedError(Exception):
    """Anything nsed raises on purpose."""


# --- Input and configuration ------------------------------------------------------------------


class ConfigError(NsedError, ValueError):
    """A configuration value, a TOML file or a call argument is invalid; the message says which."""


class InvalidQuestion(ConfigError):
    """The question is empty, whitespace, or longer than the configured limit."""


class InvalidConversation(InvalidQuestion):
    """A chat conversation cannot be deliberated on; ``param`` names the message at fault."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedFormat(ConfigError):
    """Tools, tool_choice or a response format that nsed cannot honour (an invalid schema, an
    unknown tool name); ``param`` names the field to change."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DataError(NsedError, ValueError):
    """A benchmark data file is missing, malformed (names the line) or of unknown format."""


class SandboxUnavailable(ConfigError):
    """Model code would run without isolation here and that was not explicitly allowed; the
    message says what to install or enable (or the flag that runs it anyway)."""


# --- Backends ---------------------------------------------------------------------------------


class BackendError(NsedError):
    """A model endpoint failed after retries, or answered something unusable.

    ``endpoint`` is the base URL (never with credentials: it and every URL in the message pass
    through :func:`redact_url`), ``status`` the last HTTP status (None for connection errors),
    ``attempts`` how many tries were made.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | None = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        super().__init__(redact_urls_in(message))
        self.endpoint = redact_url(endpoint) if endpoint is not None else None
        self.status = status
        self.attempts = attempts
        self.retryable = retryable


class BackendUnreachable(BackendError):
    """The endpoint could not be connected to at all (wrong URL, server down)."""


class BackendTimeout(BackendError):
    """The endpoint did not answer within the per-call timeout."""


# --- Deliberation -----------------------------------------------------------------------------


class QuorumLost(NsedError):
    """Fewer than two agents are still alive, so no cross-review is possible."""

    def __init__(self, message: str, *, live_agents: list[str] | None = None) -> None:
        super().__init__(message)
        self.live_agents = live_agents or []


class BudgetExceeded(NsedError):
    """A token or dollar budget ran out before a single round could complete."""


class InvalidOutput(NsedError):
    """No step the council produced satisfies the tools or answer schema, not even after the
    formatting call; ``param`` is the request field it had to satisfy, ``reasons`` say why."""

    def __init__(self, message: str, *, param: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.reasons = reasons or []


# --- Team selection ---------------------------------------------------------------------------


class InfeasibleTeam(NsedError):
    """No team satisfies the broker's constraints; ``constraints`` names the binding ones."""

    def __init__(self, message: str, *, constraints: list[str] | None = None) -> None:
        super().__init__(message)
        self.constraints = constraints or []


class InfeasiblePlacement(ConfigError):
    """``nsed up`` cannot place a model on the GPUs given; ``model`` and ``gpus`` name them."""

    def __init__(self, message: str, *, model: str, gpus: list[int]) -> None:
        super().__init__(message)
        self.model = model
        self.gpus = gpus


# --- Persistence ------------------------------------------------------------------------------


class StoreError(NsedError):
    """The database could not be opened or written (locked, corrupt, wrong URL)."""


__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnreachable",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "InfeasiblePlacement",
    "InfeasibleTeam",
    "InvalidConversation",
    "InvalidOutput",
    "InvalidQuestion",
    "NsedError",
    "QuorumLost",
    "SandboxUnavailable",
    "StoreError",
    "UnsupportedFormat",
    "redact_url",
    "redact_urls_in",
]
