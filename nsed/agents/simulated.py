"""Simulated agents with known competence: the protocol's mechanism, measured without a model.

A simulated agent is a :class:`ChatBackend` (so every seat goes through the real prompts,
parsing, voting, forget gate and stopping). It reads the prompt it is sent, using the layout
contract of :mod:`nsed.agents.prompts`, and answers in the requested JSON:

* ``[Round R · Proposing]``: the task text (after ``Task:``) is looked up in a
  :class:`SimulatedWorld` for its gold answer. Round 1: right with probability ``p_g``, else a
  distractor drawn from the problem's shared pool of ``plausible_wrong_answers`` (so wrong
  agents can agree by chance). Later rounds read the council state view: the table row tagged
  ``(yours)`` is the agent's previous final, the row tagged ``(leading)`` the winner's. A wrong
  agent adopts, with probability ``revise``, the leading final (``adopt=leader``) or the final
  it scored highest last round (``adopt=best``; its scores are recomputed, not remembered).
  Then, with probability ``sycophancy``, it drifts to the plurality final of the last round
  (if two or more agreed), and with probability ``fatigue·(R−1)`` it loses the thread and
  answers a distractor (context pollution that grows with the round). ``correlation`` makes
  fresh proposals (round 1, and every ``n`` sample) repeat, with that probability, the agent's
  one fixed answer to the problem (itself right with probability p_g): real models' samples
  share their errors, which independent draws would hide from a majority vote. A request's
  ``seed`` makes another independent draw, as with a real model: choice ``j`` of a request
  with seed ``s`` is its own sample (the vote baseline draws each sample with a fresh seed),
  and a request without a seed gives the same proposals as before seeds were read. A prompt
  without a council state view (round 1, or a later round's blind re-solve) is answered as a
  fresh proposal: a new draw, right with probability p_g. The proposal comes as the JSON the
  request's schema asks for, or, when no schema is sent (free-form proposals), as plain text
  ending in ``The answer is \\boxed{X}.``: the same final either way.
* ``[Round R · Reviewing]``: every ``=== Candidate X ===`` block's final is extracted with the
  real parser and graded; with probability ``p_v`` the score lands on the right side (positive
  for a correct candidate, negative for a wrong one), its magnitude drawn from
  N(``score_mean``, ``score_sd``) clipped to [1, 100].
* Personas: ``honest`` (the above); ``self_promoter`` (never changes its answer, scores every
  other candidate −60…−100 and scores its own label, marked ``(label X: do not score it)``,
  +100, which the orchestrator must drop); ``always_wrong`` (always a distractor, reviews
  honestly); ``random`` (a uniform pick among gold and distractors, uniform scores).

Every random draw comes from an RNG seeded by a string of (profile seed, agent id, task, round,
phase, …), so results do not depend on call order or concurrency, and the same agent gives the
same reply in-process and over HTTP (:mod:`nsed.simulation.server`).

Selecting it in a team TOML: ``base_url = "sim://NAME?p_g=0.5&p_v=0.8&revise=0.3"``; every
:class:`SimProfile` field is a query parameter, plus ``quick_n``/``quick_seed`` (the quick set
the agent knows, default 200 problems of seed 0). ``kind = "simulated"`` is not a ModelSpec
field (ModelSpec forbids extras), so a seat is simulated exactly when its URL is ``sim://``.
The gold answers come from the process-wide :func:`default_world`, which holds the quick sets
named by the URLs; :meth:`SimulatedWorld.add` registers other problems (integer answers).
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nsed.agents.backend import Completion, EndpointPool, estimate_tokens
from nsed.agents.parsing import extract_final, normalize_final
from nsed.agents.prompts import CANDIDATES_END
from nsed.config import AgentSpec, ModelSpec, format_validation_error
from nsed.errors import BackendError, ConfigError, DataError
from nsed.problems import QUICK_DEFAULT_SIZE, Problem, generate_quick, plausible_wrong_answers

Persona = Literal["honest", "self_promoter", "always_wrong", "random"]
Adopt = Literal["leader", "best"]
PERSONAS: tuple[str, ...] = ("honest", "self_promoter", "always_wrong", "random")
SIM_SCHEME = "sim://"

_HEADER = re.compile(r"^\[Round (\d+) · (Proposing|Reviewing)\]")
_CANDIDATE = re.compile(r"^=== Candidate (.+?) ===[ \t]*$", re.M)
_OWN_LABEL = re.compile(r"\(label ([^)\s]+): do not score it\)")
_TABLE_ROW = re.compile(
    r"^- final (?P<final>.+): support (?P<support>[+-]?\d+(?:\.\d+)?)"
    r"(?P<tags>(?: \((?:yours|leading)\))*)\s*$",
    re.M,
)
# Where the task text ends: the first of these parts that follows it (see prompts.py).
_TASK_ENDS = (
    "\n\nCouncil state after round ",
    "\n\nSolve the task step by step.",
    "\n\nYour own current proposal",
    "\n\nProposals to review:\n",
)
_NO_FINAL = "no clear final answer"
_STEPS = (
    "I restate what the task gives and what it asks for.",
    "I identify the operation the wording calls for.",
    "I carry out the computation one step at a time.",
    "I double-check the arithmetic with a second method.",
    "I make sure the units and the question asked match the result.",
    "I compare the result with a rough estimate to catch slips.",
)


class SimProfile(BaseModel):
    """What a simulated agent is like. Every field is also a ``sim://`` URL query parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p_g: float = Field(default=0.5, ge=0, le=1, description="P(a round-1 proposal is right)")
    p_v: float = Field(default=0.8, ge=0, le=1, description="P(a score is on the right side)")
    revise: float = Field(default=0.3, ge=0, le=1, description="P(a wrong agent adopts)")
    adopt: Adopt = Field(default="leader", description="adopt the leader or its best-scored")
    sycophancy: float = Field(default=0.05, ge=0, le=1, description="P(drift to plurality)")
    fatigue: float = Field(default=0.0, ge=0, le=1, description="P(lost thread) per round·(R−1)")
    correlation: float = Field(
        default=0.0, ge=0, le=1, description="P(a fresh proposal repeats the agent's fixed one)"
    )
    persona: Persona = "honest"
    distractors: int = Field(default=4, ge=1, le=20, description="size of the wrong-answer pool")
    score_mean: float = Field(default=60.0, ge=0, le=100)
    score_sd: float = Field(default=20.0, ge=0, le=100)
    latency_ms: float = Field(default=0.0, ge=0, description="median latency per call")
    latency_sigma: float = Field(default=0.5, ge=0, le=3, description="log-normal spread")
    fail_rate: float = Field(default=0.0, ge=0, le=1, description="P(a call fails)")
    reasoning_chars: int = Field(default=400, ge=0, le=20_000, description="reasoning length")
    seed: int = 0


class SimTarget(BaseModel):
    """A parsed ``sim://`` URL: the agent's name, its profile and the quick set it knows."""

    model_config = ConfigDict(frozen=True)

    name: str
    profile: SimProfile
    quick_n: int = Field(default=QUICK_DEFAULT_SIZE, ge=1, le=1_000_000)
    quick_seed: int = 0


@lru_cache(maxsize=4096)
def parse_sim_url(url: str) -> SimTarget:
    """``sim://NAME?p_g=0.5&...`` (or ``NAME?p_g=...``, as an HTTP model id) -> SimTarget."""
    text = url.strip()
    rest = text[len(SIM_SCHEME) :] if text.startswith(SIM_SCHEME) else text
    parts = urlsplit("sim://" + rest)
    name = (parts.netloc + parts.path).strip("/") or "agent"
    params: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.strip().replace("-", "_")
        if key in params:
            raise ConfigError(f"{url}: parameter {key!r} is given twice; give it once")
        params[key] = value.strip().replace("-", "_") if key in ("persona", "adopt") else value
    world = {k: params.pop(k) for k in ("quick_n", "quick_seed") if k in params}
    known = set(SimProfile.model_fields)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"{url}: unknown simulation parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known | {'quick_n', 'quick_seed'}))}"
        )
    try:
        return SimTarget(name=name, profile=SimProfile.model_validate(params), **world)
    except ValidationError as exc:
        raise ConfigError(f"{url}: {format_validation_error(exc)}") from None


def sim_query(profile: SimProfile, *, quick_n: int | None = None, quick_seed: int = 0) -> str:
    """The query string for ``profile`` (non-default fields only), inverse of parse_sim_url."""
    defaults = SimProfile()
    pairs = [
        f"{key}={getattr(profile, key)}"
        for key in SimProfile.model_fields
        if getattr(profile, key) != getattr(defaults, key)
    ]
    if quick_n is not None:
        pairs += [f"quick_n={quick_n}", f"quick_seed={quick_seed}"]
    return "&".join(pairs)


# --- Ground truth -----------------------------------------------------------------------------


class SimulatedWorld:
    """The problems simulated agents can "solve": gold answers keyed by the exact task text.

    The simulator needs the truth to be right with probability p_g; it finds the task by the
    text it is sent (stripped, as the orchestrator sends it), never by side channels, so the
    same world serves in-process seats and the HTTP server. Thread-safe.
    """

    def __init__(self, problems: Iterable[Problem] = ()) -> None:
        self._by_text: dict[str, Problem] = {}
        self._quick_loaded: dict[int, int] = {}  # quick seed -> how many loaded
        self._distractors: dict[tuple[str, int], list[str]] = {}
        self._lock = threading.Lock()
        self.add(problems)

    def __len__(self) -> int:
        return len(self._by_text)

    def add(self, problems: Iterable[Problem]) -> None:
        """Register problems; each needs an integer gold answer (for the distractor pool)."""
        with self._lock:
            for problem in problems:
                if problem.answer is None or not re.fullmatch(r"[+-]?\d+", problem.answer.strip()):
                    raise DataError(
                        f"problem {problem.id!r} has no integer answer ({problem.answer!r}); "
                        "simulated agents need integer gold answers"
                    )
                key = problem.prompt.strip()
                known = self._by_text.get(key)
                if known is not None and known.answer != problem.answer:
                    raise DataError(
                        f"problem {problem.id!r} repeats the text of {known.id!r} with another "
                        "answer; task texts must identify problems"
                    )
                self._by_text[key] = problem

    def ensure_quick(self, n: int, seed: int = 0) -> None:
        """Make sure the first ``n`` quick problems of ``seed`` are known (cached)."""
        with self._lock:
            if self._quick_loaded.get(seed, 0) >= n:
                return
        problems = generate_quick(n, seed)
        self.add(problems)
        with self._lock:
            self._quick_loaded[seed] = max(self._quick_loaded.get(seed, 0), n)

    def lookup(self, task: str) -> Problem | None:
        return self._by_text.get(task.strip())

    def distractors(self, problem: Problem, k: int) -> list[str]:
        """The problem's shared pool of ``k`` wrong answers (the same for every agent)."""
        key = (problem.prompt, k)
        pool = self._distractors.get(key)
        if pool is None:
            pool = plausible_wrong_answers(problem, k, random.Random(f"distractors|{key}"))
            with self._lock:
                self._distractors[key] = pool
        return pool


_DEFAULT_WORLD = SimulatedWorld()


def default_world() -> SimulatedWorld:
    """The process-wide world used by ``sim://`` seats (and the HTTP server by default)."""
    return _DEFAULT_WORLD


# --- The agent (pure, synchronous) ------------------------------------------------------------


@dataclass(frozen=True)
class SimReply:
    """One simulated completion: the choices' texts, the latency to wait, whether it fails."""

    texts: list[str]
    latency_s: float
    failed: bool
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class _Row:
    final: str | None
    yours: bool
    leading: bool


@lru_cache(maxsize=65536)
def _gold(answer: str | None) -> str:
    return normalize_final(str(answer), "math")


def _rng(*parts: object) -> random.Random:
    # str seeds are hashed with SHA-512 by random (version 2): stable across processes.
    return random.Random("|".join(map(str, parts)))


def _task_text(user: str) -> str | None:
    start = user.find("Task:\n")
    if start < 0:
        return None
    start += len("Task:\n")
    ends = [i for i in (user.find(marker, start) for marker in _TASK_ENDS) if i >= 0]
    return user[start : min(ends)] if ends else user[start:]


def _candidates(user: str) -> list[tuple[str, str]]:
    """(label, block text) for every ``=== Candidate X ===`` block, in prompt order."""
    end = user.find(CANDIDATES_END)
    body = user if end < 0 else user[:end]
    heads = list(_CANDIDATE.finditer(body))
    return [
        (h.group(1), body[h.end() : heads[i + 1].start() if i + 1 < len(heads) else len(body)])
        for i, h in enumerate(heads)
    ]


def _table(view: str) -> list[_Row]:
    rows = []
    for m in _TABLE_ROW.finditer(view):
        final = m.group("final").strip()
        tags = m.group("tags")
        rows.append(
            _Row(
                final=None if final == _NO_FINAL else final,  # already normalised by the loop
                yours="(yours)" in tags,
                leading="(leading)" in tags,
            )
        )
    return rows


def _plurality(rows: list[_Row]) -> str | None:
    """The final most agents gave last round (2+ agreeing; ties: the better supported)."""
    counts = Counter(r.final for r in rows if r.final is not None)
    if not counts:
        return None
    top = max(counts.values())
    if top < 2:
        return None
    return next(r.final for r in rows if r.final is not None and counts[r.final] == top)


class SimulatedAgent:
    """The behaviour of one simulated agent; ``respond`` is pure and deterministic."""

    def __init__(self, agent_id: str, profile: SimProfile, world: SimulatedWorld) -> None:
        self.agent_id = agent_id
        self.profile = profile
        self.world = world

    def _key(self, problem: Problem, round_index: int, *rest: object) -> random.Random:
        return _rng(self.profile.seed, self.agent_id, problem.prompt, round_index, *rest)

    def _is_right(self, final: str | None, problem: Problem) -> bool:
        return final is not None and final == _gold(problem.answer)

    def respond(
        self,
        messages: list[dict[str, str]],
        *,
        n: int = 1,
        seed: int | None = None,
        structured: bool = True,
    ) -> SimReply:
        """Answer a chat request built by :mod:`nsed.agents.prompts` (``n`` choices).

        ``structured``: the request asked for JSON (a schema / ``response_format``); without
        it a proposal is written as plain text, as a model would.
        """
        user = next(
            (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"),
            "",
        )
        header = _HEADER.match(user)
        task = _task_text(user)
        if header is None or task is None:
            raise BackendError(
                f"simulated agent {self.agent_id}: the prompt does not follow the layout of "
                "nsed.agents.prompts (a '[Round R · Phase]' header and a 'Task:' block)",
                endpoint=SIM_SCHEME + self.agent_id,
            )
        problem = self.world.lookup(task)
        if problem is None:
            raise BackendError(
                f"simulated agent {self.agent_id}: the task {task.strip()[:60]!r} is not in its "
                "simulated world; ask a quick-set problem (sim://...?quick_n=N&quick_seed=S) or "
                "register it with nsed.agents.simulated.default_world().add(...)",
                endpoint=SIM_SCHEME + self.agent_id,
            )
        round_index, phase = int(header.group(1)), header.group(2)
        p = self.profile
        meta = self._key(problem, round_index, phase, "meta")
        failed = meta.random() < p.fail_rate
        latency = 0.0
        if p.latency_ms > 0:
            latency = p.latency_ms / 1000.0 * math.exp(p.latency_sigma * meta.gauss(0.0, 1.0))
        if phase == "Proposing":
            draws = [j if seed is None else f"{seed}:{j}" for j in range(max(1, n))]
            texts = [
                self._proposal(problem, round_index, user, draw, structured=structured)
                for draw in draws
            ]
        else:
            texts = [self._reviews(problem, round_index, user)]
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        return SimReply(
            texts=texts,
            latency_s=latency,
            failed=failed,
            prompt_tokens=(prompt_chars + 3) // 4,
            completion_tokens=sum(estimate_tokens(t) for t in texts),
        )

    # --- proposing ---------------------------------------------------------------------------

    def propose_final(
        self, problem: Problem, round_index: int, view: str, sample: int | str = 0
    ) -> str:
        """The final answer this agent proposes, given the prompt (or state view) it sees.

        ``sample`` names the draw: the choice index, prefixed by the request's seed if any.
        """
        p = self.profile
        gold = _gold(problem.answer)
        wrong = self.world.distractors(problem, p.distractors)
        rng = self._key(problem, round_index, "propose", sample)
        draws = [rng.random() for _ in range(4)]
        pick = rng.choice(wrong)
        rows = _table(view) if round_index > 1 else []
        own = next((r.final for r in rows if r.yours), None)
        if p.persona == "random":
            return rng.choice([gold, *wrong])
        if p.persona == "always_wrong":
            return own if own is not None and own != gold else pick
        if own is None:  # round 1, or no previous proposal of ours in the view
            if p.correlation > 0:
                chooser = self._key(problem, round_index, "correlate", sample)
                if chooser.random() < p.correlation:
                    return self._persistent_final(problem, gold, wrong)
            return gold if draws[0] < p.p_g else pick
        if p.persona == "self_promoter":
            return own
        current = own
        if current != gold and draws[1] < p.revise:
            target = self._adoption(problem, round_index - 1, rows)
            if target is not None:
                current = target
        if draws[2] < p.sycophancy:
            current = _plurality(rows) or current
        if draws[3] < min(1.0, p.fatigue * (round_index - 1)):
            current = pick
        return current

    def _persistent_final(self, problem: Problem, gold: str, wrong: list[str]) -> str:
        """This agent's one fixed answer to the problem (what correlated samples repeat)."""
        rng = _rng(self.profile.seed, self.agent_id, problem.prompt, "persistent")
        right = rng.random() < self.profile.p_g
        pick = rng.choice(wrong)
        return gold if right else pick

    def _adoption(self, problem: Problem, last_round: int, rows: list[_Row]) -> str | None:
        if self.profile.adopt == "leader":
            return next((r.final for r in rows if r.leading and not r.yours), None)
        others = [r.final for r in rows if not r.yours and r.final is not None]
        if not others:
            return None
        best = max(others, key=lambda f: self.score(problem, last_round, f))
        return best if self.score(problem, last_round, best) > 0 else None

    def _reasoning(self, problem: Problem, round_index: int, sample: int | str) -> str:
        rng = self._key(problem, round_index, "words", sample)
        words: list[str] = []
        size = 0
        while size < self.profile.reasoning_chars:
            step = rng.choice(_STEPS)
            words.append(step)
            size += len(step) + 1
        return " ".join(words)

    def _proposal(
        self,
        problem: Problem,
        round_index: int,
        view: str,
        sample: int | str,
        *,
        structured: bool = True,
    ) -> str:
        final = self.propose_final(problem, round_index, view, sample)
        reasoning = self._reasoning(problem, round_index, sample)
        answer = f"The answer is \\boxed{{{final}}}."
        if not structured:
            return f"{reasoning}\n\n{answer}"
        return json.dumps({"reasoning": reasoning, "answer": answer})

    # --- reviewing ---------------------------------------------------------------------------

    def score(self, problem: Problem, round_index: int, final: str | None) -> int:
        """An honest reviewer's score for a candidate whose final is ``final``."""
        p = self.profile
        rng = self._key(problem, round_index, "review", final)
        right_side = rng.random() < p.p_v
        magnitude = min(100.0, max(1.0, rng.gauss(p.score_mean, p.score_sd)))
        positive = self._is_right(final, problem) == right_side
        return round(magnitude) if positive else -round(magnitude)

    def _reviews(self, problem: Problem, round_index: int, user: str) -> str:
        p = self.profile
        reviews = []
        for label, block in _candidates(user):
            final = extract_final(block, "math")
            if p.persona == "random":
                score = self._key(problem, round_index, "random", label).randint(-100, 100)
            elif p.persona == "self_promoter":
                score = -self._key(problem, round_index, "attack", final).randint(60, 100)
            else:
                score = self.score(problem, round_index, final)
            shown = final or "missing"
            critique = (
                f"The final answer {shown} follows from the task; the key step checks out."
                if score > 0
                else f"The final answer {shown} does not hold up; the decisive step is wrong."
            )
            reviews.append({"candidate": label, "score": score, "critique": critique})
        own = _OWN_LABEL.search(user)
        if p.persona == "self_promoter" and own:
            reviews.append(
                {"candidate": own.group(1), "score": 100, "critique": "Clearly the best answer."}
            )
        return json.dumps({"reviews": reviews})


# --- The backend ------------------------------------------------------------------------------


class SimulatedBackend:
    """A :class:`ChatBackend` answered in-process by a :class:`SimulatedAgent` (no sockets)."""

    def __init__(
        self,
        agent: SimulatedAgent,
        *,
        name: str,
        model: str,
        base_url: str,
        spec: ModelSpec | None = None,
    ) -> None:
        self.agent = agent
        self.name = name
        self.model = model
        self.base_url = base_url
        self._spec = spec

    async def preflight(self) -> None:
        return None

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        stop: list[str] | None = None,
        n: int = 1,
        tool_params: dict[str, Any] | None = None,  # simulated agents call no tools
    ) -> Completion:
        if seed is None and self._spec is not None:
            seed = self._spec.seed  # what HTTPBackend sends, so both transports agree
        reply = self.agent.respond(messages, n=n, seed=seed, structured=schema is not None)
        if reply.latency_s > 0:
            await anyio.sleep(reply.latency_s)
        else:
            await anyio.lowlevel.checkpoint()
        if reply.failed:
            raise BackendError(
                f"{self.base_url}: simulated failure (fail_rate={self.agent.profile.fail_rate})",
                endpoint=self.base_url,
            )
        cost = 0.0
        if self._spec is not None:
            cost = (
                reply.prompt_tokens * self._spec.input_price
                + reply.completion_tokens * self._spec.output_price
            ) / 1e6
        return Completion(
            text=reply.texts[0],
            texts=reply.texts,
            finish_reason="stop",
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=cost,
            latency_s=reply.latency_s,
            usage_estimated=True,
            model=self.model,
            max_tokens=max_tokens,
            structured="json_schema" if schema is not None else "none",  # it answers in schema
        )


def simulated_backend(
    seat: AgentSpec, pool: EndpointPool, *, world: SimulatedWorld | None = None
) -> SimulatedBackend:
    """The backend for a simulated seat; the agent's identity is the seat's name.

    Parameters come from the ``sim://`` URL's query and from the spec's ``simulation`` table
    (``kind = "simulated"`` in a team TOML); a key given in both places is an error.
    """
    url = seat.spec.base_url
    if seat.spec.simulation:
        query = urlencode({k: str(v) for k, v in seat.spec.simulation.items()})
        url = f"{url}{'&' if '?' in url else '?'}{query}"
    target = parse_sim_url(url)
    world = world or default_world()
    world.ensure_quick(target.quick_n, target.quick_seed)
    return SimulatedBackend(
        SimulatedAgent(seat.name, target.profile, world),
        name=seat.name,
        model=seat.spec.model,
        base_url=seat.spec.base_url,
        spec=seat.spec,
    )


__all__ = [
    "PERSONAS",
    "Adopt",
    "Persona",
    "SimProfile",
    "SimReply",
    "SimTarget",
    "SimulatedAgent",
    "SimulatedBackend",
    "SimulatedWorld",
    "default_world",
    "parse_sim_url",
    "sim_query",
    "simulated_backend",
]
