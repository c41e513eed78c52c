"""The candidate models the broker may pick from, loaded from a catalog TOML.

A catalog lists the same ``[[models]]`` entries as a team, plus what the broker needs to choose
among them: the model family (for the diversity cap), self-hosted VRAM, capabilities (matched
against the roles a team must fill), context window, a prior skill per task kind for cold start,
and an expected latency for the latency SLO. Optional ``[[roles]]`` name the functional roles a
team must fill. Everything is validated at the edge: typos in capability names, duplicate model
names or negative prices are a ConfigError that says what to change.

```toml
[[models]]
name = "qwen-7b"
base_url = "http://127.0.0.1:8001/v1"
model = "Qwen/Qwen2.5-7B-Instruct"
family = "qwen"
params_b = 7.6
vram_gb = 16            # > 0: self-hosted, counts against --vram-gb
capabilities = ["math", "code", "text"]
prior_skill = { math = 0.6, code = 0.55 }
latency_s = 4.0

[[roles]]
name = "coder"
capability = "code"
count = 2
```
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nsed.config import ModelSpec, TomlModel
from nsed.errors import ConfigError

# Capabilities a model may declare and a role may require. Task kinds (math, code, text) are a
# subset, so ``prior_skill`` is keyed by the same names.
CAPABILITIES: tuple[str, ...] = (
    "math",
    "code",
    "text",
    "reasoning",
    "review",
    "long_context",
    "tools",
)


def check_capability(name: str) -> str:
    """Return ``name`` normalised (stripped, lower case), or raise naming the valid ones."""
    norm = name.strip().lower()
    if norm not in CAPABILITIES:
        raise ConfigError(
            f"unknown capability {name!r}; valid capabilities are: {', '.join(CAPABILITIES)}"
        )
    return norm


def _check_names(values: list[str]) -> list[str]:
    """Validator body: normalise capability names, reject unknown ones, drop duplicates."""
    out: list[str] = []
    for value in values:
        try:
            norm = check_capability(value)
        except ConfigError as exc:  # pydantic wants ValueError; ConfigError is one, keep text
            raise ValueError(str(exc)) from None
        if norm not in out:
            out.append(norm)
    return out


class CatalogEntry(ModelSpec):
    """One candidate: a ModelSpec plus what the broker weighs (family, VRAM, skills, latency).

    Each entry is one seat at most; ``replicas`` is not allowed here (list copies of a model
    under different names instead, so the broker can weigh them separately).
    """

    family: str = Field(min_length=1, description="model family, for the per-family cap")
    params_b: float | None = Field(default=None, gt=0, description="parameters, billions")
    capabilities: list[str] = Field(default_factory=list)
    context_window: int | None = Field(default=None, ge=1)
    prior_skill: dict[str, float] = Field(
        default_factory=dict, description="task kind -> prior skill in [0, 1] for cold start"
    )
    latency_s: float | None = Field(
        default=None, gt=0, description="expected seconds per call, checked against the SLO"
    )

    @field_validator("family")
    @classmethod
    def _norm_family(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("family must not be blank")
        return value

    @field_validator("capabilities")
    @classmethod
    def _check_capabilities(cls, value: list[str]) -> list[str]:
        return _check_names(value)

    @field_validator("prior_skill")
    @classmethod
    def _check_prior(cls, value: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, skill in value.items():
            (norm,) = _check_names([kind])
            if not 0.0 <= skill <= 1.0:
                raise ValueError(f"prior_skill.{kind} = {skill} must be within [0, 1]")
            out[norm] = float(skill)
        return out

    @field_validator("replicas")
    @classmethod
    def _one_seat(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                "replicas is not supported in a catalog: each [[models]] entry is one "
                "candidate; list copies under different names instead"
            )
        return value

    @property
    def self_hosted(self) -> bool:
        """Whether this model counts against the VRAM budget."""
        return self.vram_gb > 0

    def has(self, capability: str | None) -> bool:
        """Whether this model can fill a role that requires ``capability`` (None: any)."""
        return capability is None or capability in self.capabilities


class RoleSpec(BaseModel):
    """A functional role a team must fill ``count`` times, optionally requiring a capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    capability: str | None = None
    count: int = Field(default=1, ge=1, le=64)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("role name must not be blank")
        return value.strip()

    @field_validator("capability")
    @classmethod
    def _check_capability(cls, value: str | None) -> str | None:
        return None if value is None else _check_names([value])[0]


class Catalog(TomlModel):
    """The free-agent pool: every candidate model, and optionally the roles a team fills.

    ``Catalog.from_toml(path)`` loads ``[[models]]`` (and optional ``[[roles]]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    toml_source: ClassVar[str] = "catalog"

    models: list[CatalogEntry] = Field(min_length=1)
    roles: list[RoleSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        for what, names in (
            ("model", [m.name for m in self.models]),
            ("role", [r.name for r in self.roles]),
        ):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")
        return self

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> CatalogEntry:
        """The entry called ``name``; ConfigError listing the known names otherwise."""
        for entry in self.models:
            if entry.name == name:
                return entry
        raise ConfigError(
            f"no model named {name!r} in the catalog; known: {', '.join(self.names())}"
        )


__all__ = ["CAPABILITIES", "Catalog", "CatalogEntry", "RoleSpec", "check_capability"]
