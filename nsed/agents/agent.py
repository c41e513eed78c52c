"""An agent: one seat at the council, bound to a backend, that proposes and reviews.

The agent only builds prompts, calls its backend and parses; it knows nothing of other agents'
identities. Anonymisation, self-vote masking and scoring are the orchestrator's job, so that a
misbehaving model cannot influence them. An agent can also aggregate other solvers' attempts
(the Mixture-of-Agents baseline of ``nsed bench``), so that every call a baseline makes goes
through the same prompts, sampling and parsing as a deliberation's.
"""

from __future__ import annotations

from nsed.agents import prompts
from nsed.agents.backend import ChatBackend, Completion
from nsed.agents.parsing import (
    ParsedProposal,
    ParsedReviews,
    complete_final,
    extract_final,
    parse_free_proposal,
    parse_proposal,
    parse_reviews,
)
from nsed.agents.step_parsing import parse_step
from nsed.config import AgentSpec
from nsed.results import Proposal
from nsed.steps import StepFormat

REVIEW_RETRY_TOKENS = 2048  # restating a review is short, even with some thinking first


class Agent:
    """Proposer and reviewer for one deliberation."""

    def __init__(
        self,
        seat: AgentSpec,
        backend: ChatBackend,
        *,
        kind: str,
        max_rounds: int,
        max_tokens: int | None = None,
        context: str | None = None,
        proposal_format: str = "free",
        prompt_style: str = "v2",
        step: StepFormat | None = None,
    ) -> None:
        self.seat = seat
        self.step = step  # tools / answer schema: proposals are steps (see propose_step)
        self.name = seat.name
        self.backend = backend
        self.kind = kind
        self.proposal_format = proposal_format
        self.prompt_style = prompt_style
        self._max_tokens = seat.spec.max_tokens or max_tokens
        self._system = prompts.system_prompt(
            persona=seat.persona,
            kind=kind,
            max_rounds=max_rounds,
            context=context,
            style=prompt_style,
            proposal_format=proposal_format,
        )

    def _messages(self, user: str, system: str | None = None) -> list[dict[str, str]]:
        system = self._system if system is None else system
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _seed(self, round_index: int, phase: int) -> int | None:
        # A different seed per round and phase keeps sampling diverse yet reproducible.
        return None if self.seat.seed is None else self.seat.seed + 10 * round_index + phase

    async def propose(
        self, question: str, *, round_index: int, state_view: str | None
    ) -> tuple[Proposal, Completion]:
        """One proposal; ``state_view`` None solves from scratch (round 1, or a blind re-solve)."""
        if self.step is not None:
            return await self.propose_step(question, round_index=round_index, state_view=state_view)
        free = self.proposal_format == "free"
        user = prompts.proposal_prompt(
            round_index=round_index,
            question=question,
            state_view=state_view,
            style=self.prompt_style,
            proposal_format=self.proposal_format,
            kind=self.kind,
        )
        completion = await self.backend.complete(
            self._messages(user),
            temperature=self.seat.temperature,
            max_tokens=self._max_tokens,
            seed=self._seed(round_index, 0),
            schema=None if free else prompts.proposal_schema(),
            schema_name=prompts.PROPOSAL_SCHEMA_NAME,
        )
        return self._proposal(completion, free=free), completion

    def _parse(self, text: str, *, free: bool) -> ParsedProposal:
        kind = self.kind  # one of parsing.AnswerKind, checked by DeliberationConfig
        if free:
            return parse_free_proposal(text, kind)  # type: ignore[arg-type]
        return parse_proposal(text, kind)  # type: ignore[arg-type]

    def _proposal(self, completion: Completion, *, free: bool = False) -> Proposal:
        parsed = self._parse(completion.text, free=free)
        final, error = parsed.final, parsed.error
        if completion.truncated:
            # Cut off by max_tokens: only a final whose end is certain counts.
            final = complete_final(parsed.answer, self.kind)  # type: ignore[arg-type]
            note = "cut off at the length limit" + ("" if final else "; no complete final")
            error = f"{error}; {note}" if error else note
        elif final is None and completion.reasoning:  # the content first, then the thinking
            final = extract_final(completion.reasoning, self.kind)  # type: ignore[arg-type]
        return Proposal(
            agent=self.name,
            reasoning=parsed.reasoning,
            answer=parsed.answer,
            thinking=completion.reasoning,
            final=final,
            parse_error=error,
            finish_reason=completion.finish_reason,
            truncated=completion.truncated,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=completion.latency_s,
        )

    async def aggregate(
        self, question: str, attempts: list[str], *, limit: int
    ) -> tuple[Proposal, Completion]:
        """Write one answer from independent ``attempts`` (each clipped to ``limit`` chars).

        The aggregator has its own system message (a synthesiser, not a council member) and
        samples with the seat's own seed.
        """
        user = prompts.aggregator_prompt(question, attempts, limit=limit)
        completion = await self.backend.complete(
            self._messages(user, system=prompts.aggregator_system_prompt(self.kind)),
            temperature=self.seat.temperature,
            max_tokens=self._max_tokens,
            seed=self.seat.seed,
            schema=prompts.proposal_schema(),
            schema_name=prompts.PROPOSAL_SCHEMA_NAME,
        )
        return self._proposal(completion), completion

    async def evaluate(
        self,
        question: str,
        *,
        round_index: int,
        own_answer: str | None,
        own_label: str | None,
        candidates: list[tuple[str, str]],
    ) -> tuple[ParsedReviews, Completion]:
        """Score the (label, text) candidates; returns parsed items with labels, not names.

        The own label is accepted by the parser (so a self-score is seen and can be dropped by
        the orchestrator as a self-review) but excluded from the schema's enum.
        """
        labels = [label for label, _ in candidates]
        user = prompts.review_prompt(
            round_index=round_index,
            question=question,
            own_answer=own_answer,
            own_label=own_label,
            candidates=candidates,
            style=self.prompt_style,
        )
        completion = await self.backend.complete(
            self._messages(user),
            temperature=self.seat.temperature,
            max_tokens=self._max_tokens,
            seed=self._seed(round_index, 1),
            schema=prompts.review_schema(labels, critique_first=self.prompt_style != "v1"),
            schema_name=prompts.REVIEW_SCHEMA_NAME,
        )
        known = [*labels, own_label] if own_label else labels
        parsed = parse_reviews(completion.text, known)
        if completion.structured != "json_schema" and not any(
            item.score is not None for item in parsed.items
        ):
            # Free text that the tolerant parser could not read: one cheap retry, still
            # without a grammar, that only asks to restate the review in the format.
            retry = await self.backend.complete(
                [
                    *self._messages(user),
                    {"role": "assistant", "content": completion.text[-4000:]},
                    {"role": "user", "content": prompts.review_format_retry_prompt(labels)},
                ],
                temperature=self.seat.temperature,
                max_tokens=min(self._max_tokens or REVIEW_RETRY_TOKENS, REVIEW_RETRY_TOKENS),
                seed=self._seed(round_index, 2),
            )
            completion = completion.followed_by(retry)
            parsed = parse_reviews(retry.text, known)
        return parsed, completion

    # --- steps: tool calls and JSON answers (agent apps) ------------------------------------

    async def propose_step(
        self, question: str, *, round_index: int, state_view: str | None
    ) -> tuple[Proposal, Completion]:
        """Propose the next step: a final answer or tool calls, in this agent's step format.

        A seat with ``tool_calling = "native"`` gets the tools as the request's ``tools``;
        the others are asked for nsed's JSON step format under its schema.
        """
        assert self.step is not None
        native = self.seat.spec.tool_calling == "native" and bool(self.step.offered())
        user = prompts.step_proposal_prompt(
            round_index=round_index,
            question=question,
            state_view=state_view,
            fmt=self.step,
            native=native,
        )
        completion = await self.backend.complete(
            self._messages(user),
            temperature=self.seat.temperature,
            max_tokens=self._max_tokens,
            seed=self._seed(round_index, 0),
            schema=None if native else prompts.step_schema(self.step),
            schema_name=prompts.STEP_SCHEMA_NAME,
            tool_params=self.step.openai_tool_params() if native else None,
        )
        return self._step_proposal(completion), completion

    async def restate_step(self, question: str, proposal: Proposal) -> tuple[Proposal, Completion]:
        """The formatting call: restate ``proposal`` (which does not fit) in the step format."""
        assert self.step is not None
        text = proposal.answer
        if proposal.reasoning.strip():
            text = f"Reasoning:\n{proposal.reasoning.strip()}\n\nAnswer:\n{proposal.answer}"
        errors = proposal.step.errors if proposal.step is not None else []
        user = prompts.formatting_prompt(question, text, errors, self.step)
        completion = await self.backend.complete(
            self._messages(user),
            temperature=0.0,
            max_tokens=self._max_tokens,
            seed=self.seat.seed,
            schema=prompts.step_schema(self.step),
            schema_name=prompts.STEP_SCHEMA_NAME,
        )
        restated = self._step_proposal(completion)
        if restated.step is not None:
            restated.step = restated.step.model_copy(update={"formatted": True})
        return restated, completion

    def _step_proposal(self, completion: Completion) -> Proposal:
        assert self.step is not None
        parsed = parse_step(completion.text, completion.tool_calls, self.step)
        step = parsed.step
        if completion.truncated:  # a cut-off step may parse, but it is not what was meant
            step = step.model_copy(update={"errors": [*step.errors, "cut off at max_tokens"]})
        if step.kind == "answer" and step.parsed is None:
            answer = step.content or ""
            final = extract_final(answer, self.kind)  # type: ignore[arg-type]
        else:
            answer, final = prompts.render_step(step), step.key()
        return Proposal(
            agent=self.name,
            reasoning=parsed.reasoning,
            answer=answer,
            thinking=completion.reasoning,
            final=final,
            parse_error="; ".join(parsed.notes) or None,
            finish_reason=completion.finish_reason,
            truncated=completion.truncated,
            step=step,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=completion.latency_s,
        )
