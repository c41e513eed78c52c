"""Configuration as values: who deliberates (TeamSpec of ModelSpecs) and how (DeliberationConfig).

Everything is a pydantic model, loadable from TOML, rejected at the edge with a ConfigError that
says what to change. API keys are read from the environment (``api_key_env``) or given as a
SecretStr; they never appear in ``repr``, ``model_dump`` or JSON output. Provider options
(``extra_body``, ``extra_headers``) whose names look secret (``Authorization``, ``*key*``,
``*token*``, ...) are redacted the same way wherever a spec becomes text.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from nsed.errors import ConfigError

TaskKind = Literal["auto", "math", "code", "text"]
TASK_KINDS: tuple[str, ...] = ("auto", "math", "code", "text")
StructuredMode = Literal["auto", "json_schema", "json_object", "none"]
QVMode = Literal["budget_capped", "budget_signed", "sqrt_raw"]
ProtocolVersion = Literal["v1", "v2"]
Aggregation = Literal["answer", "proposal"]
ConvictionMode = Literal["agreement", "share"]
ProposalFormat = Literal["free", "json"]
StoppingRule = Literal["marginal", "evidence"]
PromptStyle = Literal["v1", "v2"]
M = TypeVar("M", bound=BaseModel)

# Personas used to make replicas of one endpoint (and the default local team) diverse.
DEFAULT_PERSONAS: tuple[str, ...] = (
    "a careful verifier who checks every step and distrusts unproven claims",
    "a creative problem solver who looks for a different route to the answer",
    "a concise expert who goes straight to the decisive argument",
    "a skeptical critic who hunts for the weakest step in each argument",
    "a systematic analyst who enumerates cases before concluding",
)


# Provider option names whose values are credentials: never shown, logged or stored.
_SECRET_NAME = re.compile(
    r"(?i)(authori[sz]ation|cookie|passw(or)?d|secret|credential|signature|token(?!s|iz)"
    r"|api[-_.]?key|(^|[-_.])key($|[-_.]))"
)
REDACTED = "[redacted]"
# Request fields nsed sets itself (or through a dedicated ModelSpec field): extra_body may not.
_OWNED_BODY_KEYS = {
    "model": "model",
    "messages": None,
    "n": None,
    "stream": None,
    "stream_options": None,
    "response_format": "structured",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "seed": "seed",
    "stop": None,
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "tools": None,
    "tool_choice": None,
    "parallel_tool_calls": None,
}


def is_secret_name(name: str) -> bool:
    """Whether a header or option called ``name`` holds a credential (``Authorization``,
    ``X-Api-Key``, ``x-goog-api-key``, ``*token*``, ``*secret*``, ...)."""
    return bool(_SECRET_NAME.search(str(name)))


def redact_secrets(value: Any) -> Any:
    """``value`` with the values of secret-named keys replaced by ``[redacted]``, recursively."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_name(k) else redact_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    return value


class TomlModel(BaseModel):
    """A model read from a TOML file (``from_toml``) or its parsed dict, as one ConfigError.

    Shared by TeamSpec and the broker's Catalog, which both list ``[[models]]`` tables.
    """

    toml_source: ClassVar[str] = "config"  # what a ConfigError names when no file is given

    @classmethod
    def from_toml(cls, path: str | Path) -> Self:
        """Load and validate a TOML file; I/O, syntax and validation errors are ConfigErrors."""
        return cls.model_validate_toml(load_toml(path), source=str(path))

    @classmethod
    def model_validate_toml(cls, data: dict[str, Any], *, source: str | None = None) -> Self:
        """Validate parsed TOML (or any dict, e.g. from the Python API) into ConfigError."""
        return validate_or_config_error(cls, data, source or cls.toml_source)


class ModelSpec(BaseModel):
    """One model endpoint as listed under ``[[models]]`` in a team TOML."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=64, description="label used in traces")
    kind: Literal["openai", "simulated"] = Field(
        default="openai", description="'simulated': an agent of known competence (nsed simulate)"
    )
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    model: str = Field(min_length=1, description="model id sent to the backend")
    api_key_env: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    input_price: float = Field(default=0.0, ge=0, description="$ per 1M input tokens")
    output_price: float = Field(default=0.0, ge=0, description="$ per 1M output tokens")
    persona: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="OpenAI sampling: penalise repeated tokens"
    )
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="OpenAI sampling: penalise tokens already used"
    )
    structured: StructuredMode = Field(
        default="auto",
        description="'auto': JSON schema unless it would suppress a reasoning model's thinking",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="merged into every request's JSON: chat_template_kwargs, reasoning_effort, "
        "top_k, min_p, repetition_penalty, ...",
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="sent with every request; secret-named ones redacted"
    )
    extra_headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="header -> environment variable holding its value (for credentials)",
    )
    reasoning: bool | None = Field(
        default=None,
        description="the model thinks before it answers (Qwen3, gpt-oss, R1); None: guessed "
        "from the model id and extra_body.chat_template_kwargs",
    )
    think_tags: tuple[str, str] = Field(
        default=("<think>", "</think>"),
        description="the tags around thinking left in the content by servers without a parser",
    )
    # Self-hosting (nsed up): what vllm serve loads and the GPU memory it needs.
    hf_model: str | None = Field(
        default=None, description="what vllm serve loads (a Hugging Face id or a local path)"
    )
    vram_gb: float = Field(
        default=0.0,
        ge=0,
        description="> 0: self-hosted; its whole GPU need (weights + KV cache), for nsed up "
        "and the broker's VRAM budget",
    )
    max_model_len: int | None = Field(
        default=None, ge=256, description="vllm serve --max-model-len (prompt + output tokens)"
    )
    vllm_args: list[str] = Field(
        default_factory=list, description="extra vllm serve arguments, e.g. ['--dtype', 'auto']"
    )
    tool_calling: Literal["prompt", "native"] = Field(
        default="prompt",
        description="how agents propose tool calls: 'prompt' asks for them in nsed's JSON step "
        "format (any backend); 'native' passes the tools to the backend's own tool calling",
    )
    replicas: int = Field(default=1, ge=1, le=16)
    timeout_s: float = Field(
        default=120.0, gt=0, description="deadline of a whole call (retries included)"
    )
    max_reply_bytes: int = Field(
        default=4_000_000, ge=1024, description="larger replies are a failed call, unread"
    )
    max_concurrency: int = Field(default=4, ge=1, description="in-flight calls to this endpoint")
    max_retries: int = Field(default=3, ge=0, le=10)
    simulation: dict[str, float | int | str] = Field(
        default_factory=dict, description="simulated agents only: p_g, p_v, persona, ..."
    )

    @model_validator(mode="before")
    @classmethod
    def _simulated_defaults(cls, data: Any) -> Any:
        # A simulated agent needs no endpoint: it answers in-process at sim://NAME.
        if isinstance(data, dict) and data.get("kind") == "simulated":
            data = {"base_url": f"sim://{data.get('name', 'agent')}", "model": "simulated", **data}
        return data

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://", "sim://")):
            shown = "" if "@" in value else f" {value!r}"  # may hold credentials: not echoed
            raise ValueError(
                f"base_url{shown} must start with http:// or https:// "
                "(for example http://127.0.0.1:8001/v1)"
            )
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value.strip()

    @field_validator("extra_body")
    @classmethod
    def _check_extra_body(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _OWNED_BODY_KEYS:
                field = _OWNED_BODY_KEYS[key]
                where = f"set it with the {field!r} field" if field else "nsed sets it per call"
                raise ValueError(f"extra_body must not set {key!r}: {where}")
        return value

    @field_validator("extra_headers", "extra_headers_env")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in ("content-type", "content-length", "host"):
                raise ValueError(f"header {name!r} is set by the HTTP client; remove it")
        return value

    @field_validator("think_tags")
    @classmethod
    def _check_tags(cls, value: tuple[str, str]) -> tuple[str, str]:
        if not value[0].strip() or not value[1].strip() or value[0] == value[1]:
            raise ValueError("think_tags must be two different, non-blank tags")
        return value

    @field_serializer("extra_body", "extra_headers")
    def _redact(self, value: dict[str, Any]) -> dict[str, Any]:
        return redact_secrets(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_secrets(value) if name in ("extra_body", "extra_headers") else value

    def resolved_headers(self) -> dict[str, str]:
        """``extra_headers`` plus those read from the environment (``extra_headers_env``).

        ConfigError when a named variable is not set: a gateway would only answer 401.
        """
        headers = dict(self.extra_headers)
        for name, env in self.extra_headers_env.items():
            value = os.environ.get(env)
            if not value:
                raise ConfigError(
                    f"{self.name}: environment variable {env} (for header {name}) is not set"
                )
            headers[name] = value
        return headers

    def resolved_api_key(self) -> str | None:
        """The API key to send, from ``api_key`` or the environment variable ``api_key_env``."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class AgentSpec(BaseModel):
    """One seat at the table: a model spec expanded from ``replicas``, with its own persona/seed."""

    model_config = ConfigDict(frozen=True)

    name: str
    spec: ModelSpec
    persona: str | None = None
    temperature: float | None = None
    seed: int | None = None
    role: str | None = None


class TeamSpec(TomlModel):
    """The agents that deliberate: exactly the models listed, replicas expanded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    toml_source: ClassVar[str] = "team"

    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_team(self) -> TeamSpec:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        if sum(m.replicas for m in self.models) < 2:
            raise ValueError(
                "a team needs at least 2 agents for cross-review: list 2+ models "
                "or set replicas = 2 or more"
            )
        return self

    def agents(self) -> list[AgentSpec]:
        """Expand replicas into seats; replicas differ in persona, temperature and seed."""
        seats: list[AgentSpec] = []
        for spec in self.models:
            for i in range(spec.replicas):
                name = spec.name if spec.replicas == 1 else f"{spec.name}-{i + 1}"
                persona = spec.persona
                temperature = spec.temperature
                seed = spec.seed
                if spec.replicas > 1:
                    persona = persona or DEFAULT_PERSONAS[i % len(DEFAULT_PERSONAS)]
                    if i > 0 and persona == spec.persona:
                        persona = DEFAULT_PERSONAS[i % len(DEFAULT_PERSONAS)]
                    base_t = 0.7 if temperature is None else temperature
                    temperature = round(min(2.0, base_t + 0.15 * i), 3)
                    seed = (seed or 0) + 1000 * (i + 1)
                seats.append(
                    AgentSpec(
                        name=name, spec=spec, persona=persona, temperature=temperature, seed=seed
                    )
                )
        return seats


# What each protocol version decides, knob by knob. ``DeliberationConfig(protocol=...)`` fills
# every knob the caller did not set from its version; an explicit value always wins. v1 is the
# protocol as first built (kept so that v1 and v2 can be compared on the same problems); v2 is
# the default, chosen by measurement against compute-matched voting (perf/simulate.md,
# perf/protocol_v2.md).
PROTOCOL_PRESETS: dict[str, dict[str, Any]] = {
    "v1": {
        "max_rounds": 4,
        "qv_mode": "budget_signed",
        "support_prior": 0.0,
        "conviction": "share",
        "aggregation": "proposal",
        "exploration": False,
        "proposal_format": "json",
        "stopping": "evidence",
        "prompts": "v1",
        "execution_feedback": False,
    },
    "v2": {
        "max_rounds": 3,
        "qv_mode": "budget_capped",
        "support_prior": 1.0,
        "conviction": "agreement",
        "aggregation": "answer",
        "exploration": True,
        "proposal_format": "free",
        "stopping": "marginal",
        "prompts": "v2",
        "execution_feedback": True,
    },
}


# Per-kind completion caps for reasoning models: their thinking counts against max_tokens.
# Qwen3's model card recommends 32,768 output tokens for most queries and 38,912 for
# competition maths and programming (also kind "auto", which may be either); 16,384 cuts hard
# AIME items off mid-thought.
REASONING_MAX_TOKENS: dict[str, int] = {
    "auto": 38_912,
    "math": 38_912,
    "code": 38_912,
    "text": 32_768,
}


class DeliberationConfig(BaseModel):
    """How one deliberation runs. The defaults are the README's "Protocol defaults" table;
    every value is overridable.

    ``protocol`` is a preset: it fills the knobs listed in :data:`PROTOCOL_PRESETS` that were
    not given explicitly (``DeliberationConfig(protocol="v1", qv_mode="sqrt_raw")`` is v1 with
    sqrt_raw votes). Which knobs were given is pydantic's ``model_fields_set``, so a config
    dumped with ``exclude_unset=True`` and loaded again keeps following its preset.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    protocol: ProtocolVersion = Field(default="v2", description="preset for the knobs below")
    kind: TaskKind = "auto"
    max_rounds: int = Field(default=3, ge=1, le=50, description="v2: 3, v1: 4")
    min_rounds: int = Field(default=2, ge=1, le=50)
    # --- protocol knobs (defaults: the v2 preset) ---------------------------------------------
    qv_mode: QVMode = "budget_capped"
    support_prior: float = Field(
        default=1.0, ge=0, le=100, description="pseudo-reviews at 0 that shrink S toward 0"
    )
    conviction: ConvictionMode = Field(
        default="agreement", description="agreement: mean raw score of the winner / 100"
    )
    aggregation: Aggregation = Field(
        default="answer", description="answer: group all rounds' proposals by final answer"
    )
    fresh_vote: float = Field(
        default=1.0, ge=0, le=100, description="answer mode: vote of an independent proposal"
    )
    exploration: bool = Field(
        default=True, description="a proposal with negative support re-solves blind next round"
    )
    proposal_format: ProposalFormat = Field(
        default="free", description="free text ending in \\boxed{} / a code block, or JSON"
    )
    stopping: StoppingRule = Field(
        default="marginal", description="marginal: stop once U(r+1) - U(r) < round_cost"
    )
    prompts: PromptStyle = Field(default="v2", description="wording of the prompts and state")
    execution_feedback: bool = Field(
        default=True, description="code: run candidates on the public tests before review"
    )
    round_cost: float = Field(
        default=0.02, gt=0, le=1, description="accuracy one more round must buy (marginal rule)"
    )
    # Unanimity: stop when every final answer agrees with conviction >= threshold for N rounds.
    unanimity_conviction: float = Field(default=0.3, ge=-1, le=1)
    unanimity_rounds: int = Field(default=2, ge=1)
    # Stopping by the utility model U(t) (stopping = "marginal" or "evidence").
    fatigue_rule: bool = True
    effort: float = Field(default=0.6, ge=0, le=1)
    fatigue_p_g: float = Field(default=0.5, ge=0, le=1)
    fatigue_p_v: float = Field(default=0.8, ge=0, le=1)
    fatigue_lambda: float = Field(default=1.0, gt=0)
    fatigue_beta: float = Field(default=0.003, ge=0)
    # Forget gate.
    gamma: float = Field(default=0.5, ge=0, le=1, description="decay of older material per round")
    keep_threshold: float = Field(default=0.6, ge=0, le=1, description="gamma^age >= keep")
    drop_threshold: float = Field(default=0.2, ge=0, le=1, description="gamma^age < this: dropped")
    state_token_cap: int = Field(default=1200, ge=100, description="hard cap on the carried state")
    merge_similarity: float = Field(default=0.85, gt=0, le=1)
    embeddings: Literal["auto", "on", "off"] = "auto"
    # Calls.
    max_tokens: int | None = Field(default=1024, ge=1, description="completion cap per call")
    reasoning_max_tokens: dict[TaskKind, int] = Field(
        default_factory=lambda: dict(REASONING_MAX_TOKENS),
        description="completion cap per call for reasoning models, by task kind",
    )
    share_reasoning: bool = Field(
        default=False, description="reviewers also see each proposal's thinking channel"
    )
    call_timeout_s: float | None = Field(
        default=None, gt=0, description="deadline of every whole call; None: each timeout_s"
    )
    max_question_chars: int = Field(default=20_000, ge=1)
    candidate_chars: int = Field(default=4000, ge=200, description="shown per candidate")
    # Budgets (None = unlimited).
    budget_usd: float | None = Field(default=None, ge=0)
    budget_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, description="seed for label shuffling")
    system_context: str | None = Field(default=None, description="extra context for every agent")

    @model_validator(mode="after")
    def _apply_preset(self) -> DeliberationConfig:
        # Written into __dict__ so the preset's values do not count as set by the caller.
        for name, value in PROTOCOL_PRESETS[self.protocol].items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value
        return self

    @model_validator(mode="after")
    def _check_rounds(self) -> DeliberationConfig:
        if self.min_rounds > self.max_rounds:
            raise ValueError(
                f"min_rounds ({self.min_rounds}) must not exceed max_rounds ({self.max_rounds})"
            )
        if self.drop_threshold > self.keep_threshold:
            raise ValueError("drop_threshold must not exceed keep_threshold")
        if any(cap < 1 for cap in self.reasoning_max_tokens.values()):
            raise ValueError("reasoning_max_tokens values must be >= 1")
        return self

    def max_tokens_for(self, *, reasoning: bool) -> int | None:
        """The completion cap of one call: per kind for a reasoning model, else max_tokens."""
        if reasoning:
            return self.reasoning_max_tokens.get(self.kind, REASONING_MAX_TOKENS[self.kind])
        return self.max_tokens

    @classmethod
    def from_toml(cls, path: str | Path) -> DeliberationConfig:
        data = load_toml(path)
        return validate_or_config_error(cls, data.get("deliberation", data), str(path))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (check the path)")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {p}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None


def validate_or_config_error(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` as ``model``; a failure becomes one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``models.0.input_price: must be >= 0``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
