"""Structured-output parsing and repair for what models actually return.

Small models (SmolLM2-135M and friends) rarely emit clean JSON: they wrap it in code fences,
chat before and after it, use single quotes and Python literals, leave trailing commas, put raw
newlines and un-doubled LaTeX backslashes inside strings, echo the schema back, and get cut off
by ``max_tokens``. This module turns such replies into proposals and reviews without guessing:
every value it returns is one the model wrote, a token cut off by the end of the text is
dropped rather than completed, and whatever cannot be used is reported with a reason.

It also extracts the checkable ``final`` answer (an AIME integer, a code block, a short text)
that the orchestrator compares for unanimity and the benchmarks grade. Pure functions, no I/O,
and never ``eval`` on model text: repairs go through a small tolerant parser.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import textwrap
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, Field

from nsed.errors import ConfigError

AnswerKind = Literal["auto", "math", "code", "text"]
_KINDS = ("auto", "math", "code", "text")


# --- Results ----------------------------------------------------------------------------------


class JsonExtraction(BaseModel):
    """The JSON value found in a reply; ``value`` is None and ``error`` says why if none was."""

    value: Any | None = None
    repaired: bool = Field(
        default=False,
        description="the value came from a repair (quotes, literals, commas, escapes, truncation)",
    )
    error: str | None = None


class ParsedProposal(BaseModel):
    """A proposal as parsed; ``error`` records what was wrong with the format, if anything."""

    reasoning: str = ""
    answer: str
    final: str | None = None
    error: str | None = None


class ReviewItem(BaseModel):
    """One usable score of one candidate, with the label as the orchestrator gave it."""

    candidate: str
    score: float | None
    critique: str = ""


class DroppedReview(BaseModel):
    """A review entry that cannot be used, and why; kept so that nothing is dropped silently."""

    candidate: str | None
    reason: str


class ParsedReviews(BaseModel):
    """All reviews one reviewer gave in one reply: the usable ones and the dropped ones."""

    items: list[ReviewItem] = Field(default_factory=list)
    dropped: list[DroppedReview] = Field(default_factory=list)
    repaired: bool = False


def _check_kind(kind: str) -> AnswerKind:
    if kind not in _KINDS:
        raise ConfigError(
            f"answer kind must be one of 'auto', 'math', 'code', 'text'; got {kind!r}"
        )
    return kind  # type: ignore[return-value]


# --- The tolerant parser ----------------------------------------------------------------------


class _Cut(str):
    """A string the reply ended inside: the repair closed it, so it may be incomplete."""

    __slots__ = ()


class _Malformed(Exception):
    """The text at this position is not JSON-like enough to repair."""


class _EndInsideToken(Exception):
    """The reply ended inside a number, literal or key: the token is dropped, never completed."""


_ESCAPES = {
    '"': '"', "'": "'", "\\": "\\", "/": "/",
    "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
}
_MAX_DEPTH = 100
_WS = re.compile(r"\s*")
_INLINE_WS = re.compile(r"[ \t]*")
_PLAIN_RUN = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{0,3}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER_TOKEN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BARE_KEY = re.compile(r"\w[\w\- ]*")
_VALUE_END = re.compile(r"[,:}\]\r\n]")
_KEY_END = re.compile(r"[:,{}\[\]\"'\r\n]")
_LITERALS: dict[str, Any] = {
    "true": True, "True": True, "false": False, "False": False,
    "null": None, "None": None, "none": None,
    "NaN": math.nan, "nan": math.nan,
    "Infinity": math.inf, "+Infinity": math.inf, "-Infinity": -math.inf,
}


def _join(parts: list[str]) -> str:
    text = "".join(parts)
    if _SURROGATE.search(text):  # \uD83D\uDE00 pairs written as two escapes
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _token_value(token: str) -> Any:
    if token in _LITERALS:
        return _LITERALS[token]
    if _NUMBER_TOKEN.fullmatch(token):
        try:
            return float(token) if any(c in token for c in ".eE") else int(token)
        except ValueError:  # an integer too long for int()
            return token
    return token  # an unquoted word: kept as the string the model wrote


class _Lenient:
    """A forgiving JSON reader: single quotes, Python literals, bare words, missing or extra
    commas, raw newlines in strings, unknown escapes kept as written (LaTeX), and an early end.

    At the end of the text it closes open strings (marked :class:`_Cut`) and containers, and
    drops the unfinished key, number or literal: a cut-off ``45`` must never become ``4``.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.cut = False
        self.bare_words = 0

    def parse_container(self, start: int) -> tuple[Any, int]:
        self.pos = start
        return self._value(0), self.pos

    def _skip_ws(self) -> None:
        match = _WS.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos

    def _value(self, depth: int) -> Any:
        self._skip_ws()
        if self.pos >= self.n:
            raise _EndInsideToken
        c = self.text[self.pos]
        if c == "{":
            return self._object(depth + 1)
        if c == "[":
            return self._array(depth + 1)
        if c in "\"'":
            return self._string(c)
        if c in "}]:":
            raise _Malformed(f"unexpected {c!r}")
        return self._bare()

    def _object(self, depth: int) -> dict[str, Any]:
        if depth > _MAX_DEPTH:
            raise _Malformed("nested too deeply")
        self.pos += 1
        out: dict[str, Any] = {}
        while True:
            self._skip_ws()
            if self.pos >= self.n:
                self.cut = True
                return out
            c = self.text[self.pos]
            if c == "}":
                self.pos += 1
                return out
            if c == "]":  # a mismatched closer ends this object; the parent takes it
                return out
            if c == ",":
                self.pos += 1
                continue
            try:
                key = self._key()
                self._skip_ws()
                if self.pos >= self.n:
                    raise _EndInsideToken
                if self.text[self.pos] != ":":
                    raise _Malformed("expected ':' after a key")
                self.pos += 1
                value = self._value(depth)
            except _EndInsideToken:
                self.cut = True
                return out
            out[key] = value

    def _array(self, depth: int) -> list[Any]:
        if depth > _MAX_DEPTH:
            raise _Malformed("nested too deeply")
        self.pos += 1
        out: list[Any] = []
        while True:
            self._skip_ws()
            if self.pos >= self.n:
                self.cut = True
                return out
            c = self.text[self.pos]
            if c == "]":
                self.pos += 1
                return out
            if c == "}":
                return out
            if c == ",":
                self.pos += 1
                continue
            try:
                out.append(self._value(depth))
            except _EndInsideToken:
                self.cut = True
                return out

    def _key(self) -> str:
        c = self.text[self.pos]
        if c in "\"'":
            key = self._string(c)
            if isinstance(key, _Cut):
                raise _EndInsideToken
            return str(key)
        end = _KEY_END.search(self.text, self.pos)
        if end is None:
            raise _EndInsideToken
        token = self.text[self.pos : end.start()].strip()
        if end.group() != ":" or not _BARE_KEY.fullmatch(token):
            raise _Malformed("expected a key")
        self.pos = end.start()
        return token

    def _string(self, quote: str) -> str:
        text, n, p = self.text, self.n, self.pos + 1
        plain = _PLAIN_RUN[quote]
        parts: list[str] = []
        while True:
            run = plain.match(text, p)
            if run:
                parts.append(run.group())
                p = run.end()
            if p >= n:
                return self._cut_string(parts)
            if text[p] == "\\":
                if p + 1 >= n:
                    return self._cut_string(parts)
                esc = text[p + 1]
                if esc in _ESCAPES:
                    parts.append(_ESCAPES[esc])
                    p += 2
                elif esc == "u":
                    digits = text[p + 2 : p + 6]
                    if _HEX4.fullmatch(digits):
                        parts.append(chr(int(digits, 16)))
                        p += 6
                    elif p + 6 > n and _HEX_PREFIX.fullmatch(digits):
                        return self._cut_string(parts)
                    else:  # \underline and friends
                        parts.append("\\u")
                        p += 2
                else:  # \frac, \( ...: LaTeX written without doubling the backslash
                    parts.append("\\" + esc)
                    p += 2
            elif self._closes(p):
                self.pos = p + 1
                return _join(parts)
            else:  # an unescaped quote inside the string ("it's", 'he said "hi"')
                parts.append(quote)
                p += 1

    def _cut_string(self, parts: list[str]) -> _Cut:
        self.pos = self.n
        self.cut = True
        if parts and "\ud800" <= parts[-1][-1:] <= "\udbff":  # half of a surrogate pair
            parts[-1] = parts[-1][:-1]
        return _Cut(_join(parts))

    def _closes(self, p: int) -> bool:
        """A quote ends the string only where JSON can go on: before , : } ] or the end."""
        q = _INLINE_WS.match(self.text, p + 1).end()  # type: ignore[union-attr]
        if q >= self.n or self.text[q] in ",:}]":
            return True
        if self.text[q] in "\r\n":  # a missing comma at a line end
            q = _WS.match(self.text, q).end()  # type: ignore[union-attr]
            return q >= self.n or self.text[q] in ",:}]\"'"
        return False

    def _bare(self) -> Any:
        end = _VALUE_END.search(self.text, self.pos)
        if end is None:
            raise _EndInsideToken
        token = self.text[self.pos : end.start()].strip()
        if not token:
            raise _Malformed("empty value")
        self.pos = end.start()
        value = _token_value(token)
        if isinstance(value, str):
            self.bare_words += 1
        return value


# --- Finding JSON in a reply ------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    value: Any
    repaired: bool
    start: int
    end: int


class _Budget:
    """Caps the bracket scanning so that a pathological reply costs linear-ish time."""

    def __init__(self, text_len: int) -> None:
        self.steps = 200_000 + 20 * text_len
        self.repairs = 64


_OPENERS = re.compile(r"[{\[]")
_STRUCTURAL = re.compile(r'["\\{}\[\]]')
_CLOSERS = {"{": "}", "[": "]"}
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n`]*\n?(.*?)(```|\Z)", re.S)
_JSON_FENCE_TAGS = {"", "json", "jsonc", "json5", "javascript", "js"}


def _balanced_end(text: str, start: int, budget: _Budget) -> tuple[int | None, bool]:
    """(end, unclosed) of the bracketed span opening at ``start``; strings are respected."""
    stack = [_CLOSERS[text[start]]]
    in_string = False
    skip_to = -1
    for match in _STRUCTURAL.finditer(text, start + 1):
        budget.steps -= 1
        if budget.steps < 0:
            return None, False
        p = match.start()
        if p < skip_to:
            continue
        c = match.group()
        if in_string:
            if c == "\\":
                skip_to = p + 2
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            stack.append(_CLOSERS[c])
        elif c in "}]":
            if c != stack.pop():
                return None, False
            if not stack:
                return p + 1, False
        # a backslash outside strings is plain text (LaTeX in prose)
    return None, True


def _rank(value: Any) -> int:
    """Objects (and lists of objects) are what we asked for; bare lists come after."""
    if isinstance(value, dict):
        return 0 if value else 1
    if isinstance(value, list):
        return 0 if any(isinstance(v, dict) and v for v in value) else 1
    return 2


def _scan(text: str, base: int, budget: _Budget) -> tuple[list[_Found], bool]:
    """Every JSON value in ``text``: strict spans, then repairs; and whether a span was cut.

    A repaired span that contains strict spans replaces them: those are the complete items of
    a reply cut off by ``max_tokens``, and the repair keeps them together.
    """
    starts = [m.start() for m in _OPENERS.finditer(text)]
    strict: list[_Found] = []
    unclosed = False
    covered_until = 0
    for s in starts:
        if s < covered_until or budget.steps < 0:
            continue
        end, cut = _balanced_end(text, s, budget)
        unclosed = unclosed or cut
        if end is None:
            continue
        try:
            value = json.loads(text[s:end])
        except (ValueError, RecursionError):
            continue
        strict.append(_Found(value, False, base + s, base + end))
        covered_until = end
    strict_starts = [f.start - base for f in strict]
    repaired: list[_Found] = []
    repaired_until = 0
    for s in starts:
        if s < repaired_until or budget.repairs <= 0:
            continue
        i = bisect.bisect_right(strict_starts, s) - 1
        if i >= 0 and s < strict[i].end - base:
            continue  # inside a strict span
        budget.repairs -= 1
        parser = _Lenient(text)
        try:
            value, end = parser.parse_container(s)
        except (_Malformed, RecursionError):
            continue
        if parser.cut and not value:
            continue  # nothing complete survived the cut
        if parser.bare_words and _rank(value) > 0:
            continue  # "[see above]" is prose, not a list of unquoted words
        repaired.append(_Found(value, True, base + s, base + end))
        repaired_until = end
    kept = [
        f for f in strict if not any(r.start <= f.start and f.end <= r.end for r in repaired)
    ]
    return kept + repaired, unclosed


def _find_all(text: str) -> tuple[list[_Found], str | None]:
    """All JSON values in a reply, best first, or an error that says why there are none."""
    body = text.strip().lstrip("\ufeff").strip()
    if not body:
        return [], "empty reply"
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):  # JSON sent as a string
            inner, _ = _find_all(value)
            if inner and _rank(inner[0].value) == 0:
                return [replace(f, repaired=True) for f in inner], None
        return [_Found(value, False, 0, len(text))], None
    budget = _Budget(len(text))
    found: list[_Found] = []
    unclosed = False
    for fence in _FENCE.finditer(text):
        if fence.group(1).lower() in _JSON_FENCE_TAGS:
            got, cut = _scan(fence.group(2), fence.start(2), budget)
            found += got
            unclosed = unclosed or cut
    got, cut = _scan(text, 0, budget)
    unclosed = unclosed or cut
    # The same span may come from a fence and from the whole text: keep a strict parse over a
    # repair, and the fence-bounded repair over the unbounded one.
    by_start: dict[int, _Found] = {}
    for f in found + got:
        if f.start not in by_start or (by_start[f.start].repaired and not f.repaired):
            by_start[f.start] = f
    found = sorted(by_start.values(), key=lambda f: (_rank(f.value), f.repaired, f.start))
    if found:
        return found, None
    if not _OPENERS.search(text):
        return [], "no JSON object found"
    if unclosed:
        return [], "truncated JSON could not be repaired"
    return [], "malformed JSON could not be repaired"


def _plain(value: Any) -> Any:
    if isinstance(value, _Cut):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def extract_json(text: str) -> JsonExtraction:
    """The JSON a model meant to send: strict parse, then fenced blocks, then the first
    balanced ``{...}``/``[...]`` span, then repairs (quotes, literals, commas, truncation).

    Objects (and lists of objects) win over bare lists, and a strict span over a repaired one
    unless the repair contains it (the complete items of a cut-off reply). Escapes keep their
    JSON meaning here ("\\b" is a backspace); :func:`parse_proposal` restores damaged LaTeX.
    """
    found, error = _find_all(text)
    if not found:
        return JsonExtraction(error=error)
    return JsonExtraction(value=_plain(found[0].value), repaired=found[0].repaired)


# --- Final answers ----------------------------------------------------------------------------

# LaTeX inside JSON strings is often written with single backslashes: "\boxed" then decodes to
# a backspace + "oxed", "\frac" to a form feed, "\text" to a tab. Undo that where it is clear.
_LATEX_DAMAGE = re.compile(
    r"\x08(?=[A-Za-z])|\x0c(?=[A-Za-z])"
    r"|\t(?=(?:ext|extbf|extit|extrm|imes|heta|an|au|o|op|riangle|frac|ilde|binom|herefore)"
    r"(?![A-Za-z]))"
    r"|\r(?=(?:ight|ightarrow|ho|angle|floor|ceil|m)(?![A-Za-z]))"
    r"|\n(?=(?:eq|eqq|abla|ot|otin|eg|ewline|mid|leq|geq|subseteq|exists|parallel)(?![A-Za-z]))"
)
_DAMAGED = {"\x08": "\\b", "\x0c": "\\f", "\t": "\\t", "\r": "\\r", "\n": "\\n"}
_CONTROL_ONLY = re.compile(r"[\x08\x0c](?=[A-Za-z])")


def _restore_latex(text: str, *, math_text: bool = True) -> str:
    """Undo JSON-escape damage to LaTeX; tabs and newlines only in math, where it is clear."""
    pattern = _LATEX_DAMAGE if math_text else _CONTROL_ONLY
    return pattern.sub(lambda m: _DAMAGED[m.group()], text)


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"(?i)\banswer\b[\s*_]*(?:is\b|:|=)[ \t*_:]*([^\n]*)")
_NUMBER = re.compile(
    r"\\[dt]?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\}"
    r"|(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?!\w)"
)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_SENTENCE_END = re.compile(r"[.;,](?:\s|$)|\s+(?:because|since|which|so|as)\b")
_CODE_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(```|\Z)", re.S)
_PYTHON_TAGS = {"python", "py", "python3"}
_DEFINES = re.compile(
    r"^(?:def |class |async def |import |from \S+ import )|input\(|sys\.stdin", re.M
)
_LOOKS_LIKE_CODE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |async def |if __name__)", re.M
)


def _braced(text: str, open_pos: int) -> str | None:
    """Content of the brace group opening at ``open_pos`` (nested ok, ``\\{`` skipped)."""
    depth = 0
    i = open_pos
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i]
        i += 1
    return None


def _last_boxed(text: str) -> str | None:
    last = None
    for match in _BOXED.finditer(text):
        content = _braced(text, match.end() - 1)
        if content is not None and content.strip():
            last = content
    return last


def _answer_phrases(text: str) -> list[str]:
    """What follows each "answer is" / "Answer:" (or the next line, if empty), last first."""
    phrases = []
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        phrase = match.group(1).strip().strip("*_").strip()
        if not phrase:
            rest = text[match.end() :].strip()
            phrase = rest.splitlines()[0].strip().strip("*_").strip() if rest else ""
        if phrase:
            phrases.append(phrase)
    return phrases


def _math_token(phrase: str) -> str | None:
    phrase = phrase.strip().strip("*_").strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if phrase.startswith(opener):
            end = phrase.find(closer, len(opener))
            if end > len(opener):
                return phrase[len(opener) : end]
    number = _NUMBER.match(phrase)
    if number:
        return number.group()
    sentence = _SENTENCE_END.split(phrase, maxsplit=1)[0].strip()[:100]
    if _WORD.search(sentence):  # words, not an expression: the number they state
        numbers = _NUMBER.findall(sentence)
        return numbers[-1] if numbers else None
    return sentence or None


def _math_final(text: str) -> str | None:
    text = _restore_latex(text).replace("\u2212", "-")
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for phrase in _answer_phrases(text):
        token = _math_token(phrase)
        if token and normalize_final(token, "math"):
            return token
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _code_final(text: str) -> str | None:
    blocks = [
        (m.group(1).lower(), m.group(2), m.group(3) == "```") for m in _CODE_FENCE.finditer(text)
    ]
    blocks = [b for b in blocks if b[1].strip()]
    closed = [b for b in blocks if b[2]] or blocks
    python = [b for b in closed if b[0] in _PYTHON_TAGS] or closed
    if not python:
        return None
    # A usage example often follows the solution; prefer the last block that defines or reads.
    defining = [b for b in python if _DEFINES.search(b[1])]
    return (defining or python)[-1][1]


def _text_final(text: str) -> str | None:
    phrases = _answer_phrases(text)
    if phrases:
        return phrases[0]
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return None


def _auto_final(text: str) -> str | None:
    """kind "auto": a ``\\boxed{}``, else a fenced code block, else a short direct answer."""
    boxed = _last_boxed(_restore_latex(text).replace("\u2212", "-"))
    if boxed is not None:
        return boxed
    if _CODE_FENCE.search(text):
        code = _code_final(text)
        if code is not None:
            return code
    phrases = _answer_phrases(text)
    line = phrases[0] if phrases else next((x.strip() for x in text.splitlines() if x.strip()), "")
    if not line:
        return None
    sentence = _SENTENCE_END.split(line, maxsplit=1)[0].strip()
    if not _WORD.search(sentence) and "=" in sentence:  # "17 * 23 = 391": the result
        return sentence.rsplit("=", 1)[1].strip() or None
    token = _math_token(line)
    if token and not _WORD.search(token):
        return token
    return sentence[:200] or None


def extract_final(text: str, kind: AnswerKind) -> str | None:
    """The checkable final answer in ``text``, normalised with :func:`normalize_final`.

    math: the last ``\\boxed{}``, else "answer is X", else the last number; code: the last fenced
    block (python first); text: "answer is X", else the first non-empty line (200 chars);
    auto: a ``\\boxed{}``, else a fenced code block, else the direct answer ("answer is X" or
    the first line, cut at the end of its first clause; a number when it states one).
    """
    kind = _check_kind(kind)
    if not text or not text.strip():
        return None
    if kind == "math":
        raw = _math_final(text)
    elif kind == "code":
        raw = _code_final(text)
    elif kind == "auto":
        raw = _auto_final(text)
    else:
        raw = _text_final(text)
    if raw is None:
        return None
    return normalize_final(raw, kind) or None


def complete_final(text: str, kind: AnswerKind) -> str | None:
    """The final answer only where its end is certain: what a reply cut off by ``max_tokens``
    may still be credited with.

    math and auto: a closed ``\\boxed{}``; code (and auto without a box): a closed fenced block;
    text (and auto): a direct-answer line that a newline ends. Anything else may be cut
    mid-token ("39" of "391"), so it is None.
    """
    kind = _check_kind(kind)
    if not text or not text.strip():
        return None
    raw: str | None = None
    if kind in ("math", "auto"):
        raw = _last_boxed(_restore_latex(text).replace("\u2212", "-"))
    if raw is None and kind in ("code", "auto"):
        closed = [m for m in _CODE_FENCE.finditer(text) if m.group(3) == "```"]
        if closed:
            raw = _code_final(text[: closed[-1].end()])
    if raw is None and kind in ("text", "auto") and "\n" in text.strip():
        head = text.strip().split("\n", 1)[0]
        raw = _text_final(head) if kind == "text" else _auto_final(head)
    if raw is None:
        return None
    return normalize_final(raw, kind) or None


def answer_key(final: str | None, kind: AnswerKind) -> str | None:
    """What two finals must share to count as the same answer (grouping, unanimity).

    The normal form of :func:`normalize_final`; text answers are also compared without case.
    """
    if final is None or not final.strip():
        return None
    kind = _check_kind(kind)
    norm = normalize_final(final, kind)
    if not norm:
        return None
    if kind == "text" or (kind == "auto" and _auto_kind(norm) == "text"):
        return norm.casefold()
    return norm


def _canonical_number(s: str) -> str:
    if len(s) > 100:
        return s
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _normalize_math(s: str) -> str:
    s = _restore_latex(s).replace("\u2212", "-").strip()
    boxed = _last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    s = re.sub(
        r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}",
        r"\1",
        s,
    )
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;:!> ]", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = re.sub(r"\\?%\s*$", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = s.strip().strip("*_").strip().rstrip(".;:!,").strip()
    assignment = re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)", s)
    if assignment:
        s = assignment.group(1)
    with_unit = re.fullmatch(r"(-?[\d,]*\d(?:\.\d+)?)\s+[A-Za-z][A-Za-z .]*", s)
    if with_unit:
        s = with_unit.group(1)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    fraction = re.fullmatch(r"\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}", s)
    if fraction:
        s = f"{fraction.group(1)}/{fraction.group(2)}"
    if re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", s):
        return _canonical_number(s)
    ratio = re.fullmatch(r"([+-]?\d+)/([+-]?\d+)", s)
    if ratio:
        return f"{_canonical_number(ratio.group(1))}/{_canonical_number(ratio.group(2))}"
    return s


def _auto_kind(s: str) -> AnswerKind:
    """How an "auto" final is compared: code (several lines), math (no words), else text."""
    if "\n" in s.strip() or s.lstrip().startswith("```"):
        return "code"
    if _BOXED.search(s) or not _WORD.search(_BOXED.sub("", s)):
        return "math"
    return "text"


def normalize_final(s: str, kind: AnswerKind) -> str:
    """A canonical form of a final answer, so that equal answers compare equal.

    math: no ``$``/``\\text{}``/spaces/thousands separators/trailing period, ``\\dfrac`` ->
    ``\\frac``, integer fractions as ``a/b``, canonical numbers ("070" -> "70", "12.0" -> "12");
    code: dedented, outer blank lines stripped; text: whitespace collapsed, no trailing period
    (case kept); auto: as code when it spans lines, as math when it has no words (a number, a
    formula, a ``\\boxed{}``), else as text.
    """
    kind = _check_kind(kind)
    if kind == "auto":
        kind = _auto_kind(s)
    if kind == "code":
        return textwrap.dedent(s.replace("\r\n", "\n")).strip("\n").rstrip()
    step = _normalize_math if kind == "math" else _normalize_text
    for _ in range(8):  # to a fixed point, so that normalising twice changes nothing
        nxt = step(s)
        if nxt == s:
            break
        s = nxt
    return s


def _normalize_text(s: str) -> str:
    text = " ".join(s.split()).strip("*_ ").rstrip(".").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text.rstrip(".").strip()


# --- Proposals --------------------------------------------------------------------------------

_REASONING_KEYS = (
    "reasoning", "thought_process", "thinking", "analysis", "thoughts", "thought", "rationale",
    "explanation",
)
_ANSWER_KEYS = (
    "answer", "solution", "content", "final_answer", "response", "final_solution", "final",
    "code",
)


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _pick(obj: dict[Any, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """(alias, value) of the first alias present in ``obj`` (keys compared loosely)."""
    norm: dict[str, Any] = {}
    for k, v in obj.items():
        norm.setdefault(_norm_key(k), v)
    for k in keys:
        if k in norm:
            return k, norm[k]
    return None, None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(_plain(value), ensure_ascii=False, default=str)


def _proposal_dict(value: Any, depth: int = 0) -> dict[Any, Any] | None:
    """The object holding reasoning/answer, also when wrapped one or two levels deep."""
    if isinstance(value, dict):
        if _pick(value, _REASONING_KEYS + _ANSWER_KEYS)[0] is not None:
            return value
        children: list[Any] = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return None
    if depth >= 2:
        return None
    for child in children:
        found = _proposal_dict(child, depth + 1)
        if found is not None:
            return found
    return None


def _final_of(answer: str, reasoning: str, kind: AnswerKind, *, answer_cut: bool) -> str | None:
    # A reply cut off mid-answer may end in half a number ("4" of "45"): drop the last token.
    source = re.sub(r"\S*\s*$", "", answer) if answer_cut and kind != "code" else answer
    final = extract_final(source, kind)
    if final is None and reasoning and not answer_cut:
        final = extract_final(reasoning, kind)
    if final is None and kind == "code" and _LOOKS_LIKE_CODE.search(answer):
        final = normalize_final(answer, "code") or None  # a bare, unfenced program
    return final


def parse_proposal(text: str, kind: AnswerKind) -> ParsedProposal:
    """Reasoning and answer from a ``{"reasoning", "answer"}`` reply (aliases accepted).

    A proposal is never dropped for its format: without usable JSON the whole reply is the
    answer, and ``error`` says why. ``final`` comes from the answer, else from the reasoning.
    """
    kind = _check_kind(kind)
    found, error = _find_all(text)
    math_text = kind in ("math", "auto")
    for candidate in found:
        obj = _proposal_dict(candidate.value)
        if obj is None:
            continue
        _, reasoning_value = _pick(obj, _REASONING_KEYS)
        answer_alias, answer_value = _pick(obj, _ANSWER_KEYS)
        reasoning = _restore_latex(_as_text(reasoning_value), math_text=math_text)
        answer = _restore_latex(_as_text(answer_value), math_text=math_text)
        notes: list[str] = []
        answer_cut = isinstance(answer_value, _Cut)
        if answer_alias is None or not answer.strip():
            if not reasoning.strip():
                continue
            answer, reasoning = reasoning, ""
            answer_cut = isinstance(reasoning_value, _Cut)
            notes.append("no answer field; the reasoning is used as the answer")
        if answer_cut:
            notes.append("the reply was cut off inside the answer")
        final = _final_of(answer, reasoning, kind, answer_cut=answer_cut)
        return ParsedProposal(
            reasoning=reasoning, answer=answer, final=final, error="; ".join(notes) or None
        )
    body = text.strip()
    if not body:
        return ParsedProposal(answer="", error="empty reply")
    reason = error or "JSON has neither a reasoning nor an answer field"
    return ParsedProposal(
        answer=body,
        final=_final_of(body, "", kind, answer_cut=False),
        error=f"{reason}; the whole reply is used as the answer",
    )


_FREE_MARKERS: dict[str, tuple[re.Pattern[str], ...]] = {
    "math": (_BOXED, _ANSWER_IS),
    "code": (_CODE_FENCE,),
    "text": (_ANSWER_IS,),
    "auto": (_BOXED, _CODE_FENCE, _ANSWER_IS),
}


def _final_marker(text: str, kind: AnswerKind) -> int | None:
    """Where the final answer starts: the last ``\\boxed{}`` / code fence / "answer is"."""
    for pattern in _FREE_MARKERS[kind]:
        matches = list(pattern.finditer(text))
        if kind in ("code", "auto") and pattern is _CODE_FENCE:
            python = [m for m in matches if m.group(1).lower() in _PYTHON_TAGS]
            matches = python or matches
        if matches:
            return matches[-1].start()
    return None


def _is_json_reply(text: str) -> bool:
    body = text.strip()
    return body.startswith("{") or bool(re.match(r"```(?:json)?\s*\{", body))


def parse_free_proposal(text: str, kind: AnswerKind) -> ParsedProposal:
    """A free-text proposal: the work, then the final answer (``\\boxed{}``, a fenced code
    block, or "The answer is ...").

    ``answer`` is the paragraph where the final answer starts, to the end; ``reasoning`` is
    what comes before it. A model that answers in JSON anyway is parsed as JSON
    (:func:`parse_proposal`). ``error`` says when no final-answer marker was found (the final,
    if any, then comes from the fallbacks of :func:`extract_final`).
    """
    kind = _check_kind(kind)
    body = _restore_latex(text.strip(), math_text=kind in ("math", "auto"))
    if not body:
        return ParsedProposal(answer="", error="empty reply")
    if _is_json_reply(body):
        parsed = parse_proposal(body, kind)
        if parsed.error is None or "no answer field" in parsed.error:
            return parsed
    marker = _final_marker(body, kind)
    if marker is None:
        return ParsedProposal(
            answer=body,
            final=_final_of(body, "", kind, answer_cut=False),
            error="no final-answer marker (\\boxed{}, code block or 'The answer is')",
        )
    start = body.rfind("\n\n", 0, marker)
    start = 0 if start < 0 else start + 2
    reasoning, answer = body[:start].strip(), body[start:].strip()
    final = _final_of(answer, reasoning, kind, answer_cut=False)
    return ParsedProposal(reasoning=reasoning, answer=answer, final=final)


# --- Reviews ----------------------------------------------------------------------------------

_REVIEWS_KEYS = ("reviews", "evaluations", "review", "evaluation", "scores", "ratings", "results")
_CANDIDATE_KEYS = ("candidate", "label", "id", "candidate_id", "candidate_label")
_SCORE_KEYS = ("score", "endorsement_weight", "weight", "endorsement", "rating", "points")
_CRITIQUE_KEYS = (
    "critique", "justification", "reason", "comment", "comments", "feedback", "rationale",
    "explanation", "reasoning",
)
_LABEL_PREFIX = re.compile(r"(?i)^(?:candidate|response|proposal|option|agent)[\s_\-:#.]*")
_LABEL_LIKE = re.compile(r"(?i)^(?:candidate|response|proposal|option)\b|^[A-Za-z]$")
_SCORE_TEXT = re.compile(
    r"\(?\s*([+-]?\s*\d+(?:\.\d+)?)\s*\)?\s*(?:/\s*100|%|points?|pts)?", re.IGNORECASE
)
_NO_LABEL = object()


def _match_label(raw: Any, labels: list[str]) -> tuple[str | None, str]:
    """(the label in ``labels``, or None; the label as written, normalised)."""
    written = str(raw).strip().strip("\"'*[]() ").strip()
    forms = [written, _LABEL_PREFIX.sub("", written).strip().rstrip(".:)").strip()]
    for form in forms:
        if form in labels:
            return form, form
    for form in forms:
        folded = [lab for lab in labels if lab.casefold() == form.casefold()]
        if len(folded) == 1:
            return folded[0], form
    return None, forms[1] or written


def _label_of(entry: Any) -> Any:
    if isinstance(entry, dict):
        key, value = _pick(entry, _CANDIDATE_KEYS)
        return _NO_LABEL if key is None else value
    return _NO_LABEL


def _is_single_review(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    _, nested = _pick(value, _REVIEWS_KEYS)
    if isinstance(nested, (list, dict)):
        return False
    return (
        _pick(value, _CANDIDATE_KEYS)[0] is not None or _pick(value, _SCORE_KEYS)[0] is not None
    )


def _entries(value: Any, labels: list[str], depth: int = 0) -> list[tuple[Any, Any]] | None:
    """(raw label or _NO_LABEL, payload) pairs if ``value`` has a review shape, else None."""
    if isinstance(value, list):
        if not any(isinstance(v, dict) for v in value):
            return None
        return [(_label_of(v), v) for v in value]
    if not isinstance(value, dict):
        return None
    if _is_single_review(value):
        return [(_label_of(value), value)]
    _, nested = _pick(value, _REVIEWS_KEYS)
    if isinstance(nested, list):
        return [(_label_of(v), v) for v in nested]
    if isinstance(nested, dict):
        got = _entries(nested, labels, depth + 1)
        if got is not None:
            return got
    keyed = [
        (k, v)
        for k, v in value.items()
        if _match_label(k, labels)[0] is not None or _LABEL_LIKE.search(str(k).strip())
    ]
    if keyed:
        return keyed
    if depth < 2:
        for child in value.values():
            if isinstance(child, (dict, list)):
                got = _entries(child, labels, depth + 1)
                if got is not None:
                    return got
    return None


def _coerce_score(value: Any) -> tuple[float | None, str | None]:
    """The score as the model wrote it, or the reason it is unusable. Never clipped here."""
    if value is None or isinstance(value, _Cut):
        return None, "missing score"
    if isinstance(value, bool):
        return None, "non-numeric score"
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None, "non-numeric score"
        return (number, None) if math.isfinite(number) else (None, "non-numeric score")
    if isinstance(value, str):
        s = value.strip().replace("\u2212", "-")
        if not s:
            return None, "missing score"
        match = _SCORE_TEXT.fullmatch(s)
        if match:
            return float(match.group(1).replace(" ", "")), None
    return None, "non-numeric score"


def _check_labels(labels: list[str]) -> None:
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(lab, str) and lab.strip() for lab in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ConfigError(
            f"labels must be a non-empty list of distinct, non-blank strings; got {labels!r}"
        )


def parse_reviews(text: str, labels: list[str]) -> ParsedReviews:
    """The reviews in a reply, checked against the candidate ``labels`` this reviewer was shown.

    Accepts ``{"reviews": [...]}``, a bare list, an object keyed by label, or one object per
    candidate. Anything unusable goes to ``dropped`` with its reason; no score is ever invented,
    and no label is guessed.
    """
    _check_labels(labels)
    found, error = _find_all(text)
    if not found:
        unparseable = DroppedReview(candidate=None, reason=f"unparseable: {error}")
        return ParsedReviews(dropped=[unparseable])
    chosen: tuple[_Found, list[tuple[Any, Any]]] | None = None
    for candidate in found:
        entries = _entries(candidate.value, labels)
        if entries is not None:
            chosen = (candidate, entries)
            break
    if chosen is None:
        return ParsedReviews(
            dropped=[DroppedReview(candidate=None, reason="unparseable: JSON holds no reviews")],
            repaired=found[0].repaired,
        )
    source, entries = chosen
    repaired = source.repaired
    if _is_single_review(source.value):  # one object per candidate, JSON-lines style
        singles = sorted((f for f in found if _is_single_review(f.value)), key=lambda f: f.start)
        entries = [(_label_of(f.value), f.value) for f in singles]
        repaired = any(f.repaired for f in singles)

    result = ParsedReviews(repaired=repaired)
    seen: set[str] = set()
    for raw_label, payload in entries:
        if raw_label is _NO_LABEL and not isinstance(payload, dict):
            result.dropped.append(DroppedReview(candidate=None, reason="not a review object"))
            continue
        if raw_label is _NO_LABEL or raw_label is None or isinstance(raw_label, _Cut):
            result.dropped.append(DroppedReview(candidate=None, reason="missing candidate"))
            continue
        label, written = _match_label(raw_label, labels)
        if label is None:
            if not written:
                result.dropped.append(DroppedReview(candidate=None, reason="missing candidate"))
            else:
                written = written[:40]
                result.dropped.append(
                    DroppedReview(candidate=written, reason=f"unknown label {written}")
                )
            continue
        if label in seen:
            result.dropped.append(DroppedReview(candidate=label, reason=f"duplicate label {label}"))
            continue
        seen.add(label)
        if isinstance(payload, dict):
            _, raw_score = _pick(payload, _SCORE_KEYS)
            critique = _as_text(_pick(payload, _CRITIQUE_KEYS)[1])
        else:  # {"A": 55}
            raw_score, critique = payload, ""
        score, reason = _coerce_score(raw_score)
        if reason is not None:
            result.dropped.append(DroppedReview(candidate=label, reason=reason))
            continue
        result.items.append(ReviewItem(candidate=label, score=score, critique=critique.strip()))
    return result


__all__ = [
    "AnswerKind",
    "DroppedReview",
    "JsonExtraction",
    "ParsedProposal",
    "ParsedReviews",
    "ReviewItem",
    "answer_key",
    "complete_final",
    "extract_final",
    "extract_json",
    "normalize_final",
    "parse_free_proposal",
    "parse_proposal",
    "parse_reviews",
]
