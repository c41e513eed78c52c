"""What a server serves and under which limits: ``ServerSettings``, ``CouncilSpec``, API keys.

Plain values (no globals) so that the CLI, tests and benchmarks build a server the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from nsed.broker.catalog import Catalog
from nsed.config import DeliberationConfig, TeamSpec
from nsed.council import Council
from nsed.errors import ConfigError
from nsed.store import Store

MODEL_PREFIX = "nsed/"
DEFAULT_COUNCIL = "council"
API_KEYS_ENV = "NSED_SERVER_API_KEYS"
ADMIN_KEYS_ENV = "NSED_SERVER_ADMIN_KEYS"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CouncilSpec(BaseModel):
    """One served council: a fixed ``team``, or a ``catalog`` the broker picks from per question.

    Request options override ``config``. A catalog council keeps the broker's telemetry in the
    server's store (``store_url``), or in the default nsed database when none is set.
    """

    model_config = ConfigDict(extra="forbid")

    team: TeamSpec | None = None
    catalog: Catalog | None = None
    config: DeliberationConfig = Field(default_factory=DeliberationConfig)

    @model_validator(mode="after")
    def _one_source(self) -> CouncilSpec:
        if (self.team is None) == (self.catalog is None):
            raise ValueError("give a council either a team or a catalog (exactly one)")
        return self

    def council(self, store: Store | None) -> Council:
        if self.catalog is not None:
            return Council(config=self.config, catalog=self.catalog, store=store)
        return Council(self.team, self.config)


class ServerSettings(BaseModel):
    """Everything ``create_app`` needs; the CLI builds it from flags and the environment."""

    model_config = ConfigDict(extra="forbid")

    councils: dict[str, CouncilSpec] = Field(description="name -> council; model id nsed/<name>")
    api_keys: list[SecretStr] = Field(default_factory=list, description="empty: no auth")
    admin_keys: list[SecretStr] = Field(
        default_factory=list, description="keys that may also read every key's traces"
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0, description="request line + headers")
    body_timeout_s: float = Field(default=30.0, gt=0, description="the whole request body")
    max_connections: int = Field(default=512, ge=1, description="open connections at once")
    max_rounds: int = Field(default=10, ge=1, le=50, description="most rounds a request may ask")
    max_concurrent: int = Field(default=8, ge=1, description="deliberations running at once")
    max_queue: int = Field(default=32, ge=0, description="requests waiting for a slot")
    request_timeout_s: float = Field(default=600.0, gt=0, description="queue + deliberation")
    heartbeat_s: float = Field(default=10.0, gt=0, description="SSE keep-alive comment interval")
    stream_reasoning: bool = Field(
        default=False,
        description="streamed progress as delta.reasoning_content (a chat UI's thinking pane)",
    )
    keep_deliberations: int = Field(default=256, ge=1, description="finished traces in memory")
    store_url: str | None = Field(default=None, description="also save traces to this database")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @field_validator("councils")
    @classmethod
    def _check_councils(cls, value: dict[str, CouncilSpec]) -> dict[str, CouncilSpec]:
        if not value:
            raise ValueError("configure at least one council (the default is named 'council')")
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"council name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _check_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not k.get_secret_value().strip() for k in value):
            raise ValueError("API keys must not be blank")
        return value

    def model_ids(self) -> list[str]:
        return [MODEL_PREFIX + name for name in self.councils]


def load_api_keys(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    variable: str = API_KEYS_ENV,
) -> list[SecretStr]:
    """Bearer keys from ``variable`` (``NSED_SERVER_API_KEYS``, comma-separated) and/or a
    file (one a line); ``variable=ADMIN_KEYS_ENV`` reads the admin keys.

    Blank lines and ``#`` comments in the file are skipped. The keys are SecretStr so they never
    show up in a repr, a log or an error message.
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(variable, "").split(",") if k.strip()]
    if file is not None:
        path = Path(file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {path}: {exc.strerror}") from None
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not from_file:
            raise ConfigError(f"the API keys file {path} has no keys: put one key per line")
        keys += from_file
    return [SecretStr(k) for k in dict.fromkeys(keys)]
