"""Problems: what the agents are asked and what a correct answer is checked against.

Data with gold answers, used alike by the benchmark harness (:mod:`nsed.benchmarks`), which
loads AIME and LiveCodeBench files into :class:`Problem`, and by simulated agents
(:mod:`nsed.agents.simulated`), which need the gold answer to be right with a known
probability. The quick set lives here too: arithmetic and word problems with integer answers,
generated from a seed, so that CI and demos need no data at all, and
:func:`plausible_wrong_answers`, the wrong answers a sloppy solver gives (the simulated agents'
distractors).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nsed.errors import ConfigError, DataError

BenchmarkName = Literal["aime", "lcb", "quick"]
ProblemKind = Literal["math", "code"]
TestType = Literal["stdin", "functional"]
QUICK_DEFAULT_SIZE = 200


class TestCase(BaseModel):
    """One code test. ``stdin``: program input/expected output. ``functional``: one JSON
    argument per input line, and the JSON of the expected return value."""

    __test__ = False  # not a pytest class, despite the name

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    testtype: TestType


class Problem(BaseModel):
    """A question the agents get (``prompt``) and what a correct answer is checked against."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    benchmark: BenchmarkName
    kind: ProblemKind
    prompt: str = Field(min_length=1, description="the full text the agents see")
    answer: str | None = Field(default=None, description="gold answer for math problems")
    tests: list[TestCase] = Field(default_factory=list, description="code tests, public+private")
    func_name: str | None = Field(default=None, description="Solution method for functional")
    starter_code: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def functional(self) -> bool:
        """Graded by calling ``Solution().<func_name>`` rather than through stdin/stdout."""
        return any(t.testtype == "functional" for t in self.tests)


# --- The quick set ----------------------------------------------------------------------------

_NAMES = ("Tom", "Ana", "Ravi", "Mei", "Omar", "Lena", "Kofi", "Sara", "Ivan", "Noor")
_ITEMS = ("apple", "marble", "book", "sticker", "pencil", "coin", "card", "shell")

# Each template: rng -> (prompt, answer, operands). Operands feed plausible_wrong_answers.
_Template = Callable[[random.Random], tuple[str, int, list[int]]]


def _q_add(r: random.Random) -> tuple[str, int, list[int]]:
    a, b = r.randint(2, 99), r.randint(2, 99)
    return f"What is {a} + {b}?", a + b, [a, b]


def _q_sub(r: random.Random) -> tuple[str, int, list[int]]:
    a = r.randint(20, 199)
    b = r.randint(2, a - 1)
    return f"What is {a} - {b}?", a - b, [a, b]


def _q_mul(r: random.Random) -> tuple[str, int, list[int]]:
    a, b = r.randint(3, 29), r.randint(3, 29)
    return f"What is {a} * {b}?", a * b, [a, b]


def _q_buy(r: random.Random) -> tuple[str, int, list[int]]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    a, b = r.randint(2, 40), r.randint(2, 40)
    text = f"{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?"
    return text, a + b, [a, b]


def _q_give(r: random.Random) -> tuple[str, int, list[int]]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    a = r.randint(10, 80)
    b = r.randint(1, a - 1)
    text = f"{name} has {a} {item}s and gives {b} of them to a friend. How many are left?"
    return text, a - b, [a, b]


def _q_boxes(r: random.Random) -> tuple[str, int, list[int]]:
    item = r.choice(_ITEMS)
    a, b = r.randint(4, 36), r.randint(3, 24)
    return f"A box holds {a} {item}s. How many {item}s are in {b} full boxes?", a * b, [a, b]


def _q_share(r: random.Random) -> tuple[str, int, list[int]]:
    item = r.choice(_ITEMS)
    each, kids = r.randint(3, 25), r.randint(2, 12)
    total = each * kids
    text = (
        f"{total} {item}s are shared equally among {kids} children. How many does each child get?"
    )
    return text, each, [total, kids]


def _q_speed(r: random.Random) -> tuple[str, int, list[int]]:
    v, t = r.randint(30, 120), r.randint(2, 9)
    text = f"A train travels at {v} km per hour for {t} hours. How many km does it travel?"
    return text, v * t, [v, t]


def _q_mod(r: random.Random) -> tuple[str, int, list[int]]:
    a, b = r.randint(50, 999), r.randint(3, 19)
    return f"What is the remainder when {a} is divided by {b}?", a % b, [a, b]


def _q_packs(r: random.Random) -> tuple[str, int, list[int]]:
    name = r.choice(_NAMES)
    packs, per = r.randint(3, 15), r.randint(4, 20)
    away = r.randint(1, packs * per - 1)
    text = (
        f"{name} buys {packs} packs of {per} stickers, then gives away {away} stickers. "
        "How many stickers does " + name + " have left?"
    )
    return text, packs * per - away, [packs, per, away]


def _q_expr(r: random.Random) -> tuple[str, int, list[int]]:
    a, b, c, d = r.randint(2, 40), r.randint(2, 40), r.randint(2, 15), r.randint(1, 99)
    return f"What is ({a} + {b}) * {c} - {d}?", (a + b) * c - d, [a, b, c, d]


def _q_range_sum(r: random.Random) -> tuple[str, int, list[int]]:
    n = r.randint(10, 200)
    return f"What is the sum of the integers from 1 to {n}?", n * (n + 1) // 2, [n, n + 1]


def _q_rect(r: random.Random) -> tuple[str, int, list[int]]:
    a, b = r.randint(3, 40), r.randint(3, 40)
    text = (
        f"A rectangle is {a} cm long and {b} cm wide. What is its area in square cm plus "
        "its perimeter in cm?"
    )
    return text, a * b + 2 * (a + b), [a, b]


def _q_square(r: random.Random) -> tuple[str, int, list[int]]:
    a, b = r.randint(11, 99), r.randint(1, 99)
    return f"What is {a} squared minus {b}?", a * a - b, [a, b]


_QUICK_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "easy": (_q_add, _q_sub, _q_mul, _q_buy, _q_give),
    "medium": (_q_boxes, _q_share, _q_speed, _q_mod),
    "hard": (_q_packs, _q_expr, _q_range_sum, _q_rect, _q_square),
}
_DIFFICULTY_CYCLE = ("easy", "medium", "hard", "easy", "medium")


def generate_quick(n: int, seed: int = 0) -> list[Problem]:
    """``n`` distinct arithmetic and word problems with integer answers, the same for the same
    seed (and the first k of n are the k problems a smaller n gives)."""
    if n < 1:
        raise ConfigError(f"the quick set needs n >= 1 (got {n})")
    rng = random.Random(f"nsed-quick-{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(f"cannot generate {n} distinct quick problems; ask for fewer")
        difficulty = _DIFFICULTY_CYCLE[len(problems) % len(_DIFFICULTY_CYCLE)]
        template = rng.choice(_QUICK_TEMPLATES[difficulty])
        text, answer, operands = template(rng)
        if text in seen:
            continue
        seen.add(text)
        problems.append(
            Problem(
                id=f"quick-{seed}-{len(problems):04d}",
                benchmark="quick",
                kind="math",
                prompt=text,
                answer=str(answer),
                metadata={
                    "difficulty": difficulty,
                    "template": template.__name__.removeprefix("_q_"),
                    "operands": operands,
                },
            )
        )
    return problems


def plausible_wrong_answers(problem: Problem, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct wrong integers a sloppy solver might give: off-by-one, digit swaps, a
    dropped or doubled digit, sign and operator slips (using the problem's operands)."""
    try:
        gold = int(str(problem.answer).strip())
    except ValueError:
        raise DataError(
            f"problem {problem.id!r} has no integer answer ({problem.answer!r}); "
            "plausible_wrong_answers needs one"
        ) from None
    pool: list[int] = [gold + 1, gold - 1, gold + 2, gold - 2, gold + 10, gold - 10]
    digits = str(abs(gold))
    sign = -1 if gold < 0 else 1
    for i in range(len(digits) - 1):
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        pool.append(sign * int(swapped))
    if len(digits) > 1:
        pool.append(sign * int(digits[:-1]))
        pool.append(sign * int(digits[1:]))
    pool.append(sign * int(digits + digits[-1]))
    pool.append(-gold)
    operands = [int(x) for x in problem.metadata.get("operands", []) if isinstance(x, int)]
    if len(operands) >= 2:
        a, b = operands[0], operands[1]
        pool += [a + b, a - b, b - a, a * b]
        if b:
            pool.append(a // b)
        if len(operands) >= 3:
            c = operands[2]
            pool += [a * b + c, a + b * c, (a + b) * c, a * b - c]
    wrong = list(dict.fromkeys(x for x in pool if x != gold))
    picked = rng.sample(wrong, min(k, len(wrong)))
    offset = 3
    while len(picked) < k:
        for candidate in (gold + offset, gold - offset):
            if len(picked) < k and candidate not in picked:
                picked.append(candidate)
        offset += 1
    return [str(x) for x in picked]


__all__ = [
    "QUICK_DEFAULT_SIZE",
    "BenchmarkName",
    "Problem",
    "ProblemKind",
    "TestCase",
    "TestType",
    "generate_quick",
    "plausible_wrong_answers",
]
