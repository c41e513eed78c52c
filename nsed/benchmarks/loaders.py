"""Benchmark loaders: a data path (or a seed) in, a list of :class:`Problem` out.

Nothing is downloaded: AIME and LiveCodeBench come from files the user points at (``--data``),
the quick set is generated from a seed so that CI and demos need no data at all. Every problem
in a file is validated here, so a bad line fails the run before any model is called, with the
file, the line and the field in the message.

Formats:

* ``aime`` / ``quick`` files: JSONL ``{"id", "problem", "answer"}`` (``question`` is accepted for
  ``problem``; a missing ``id`` becomes ``<file stem>-<line>``).
* ``lcb``: the official LiveCodeBench code-generation rows (``question_id``,
  ``question_content``, ``public_test_cases``, optional ``private_test_cases`` as JSON or
  base64(zlib(pickle(json))), ``metadata`` with ``func_name`` for LeetCode-style problems).

A directory path reads every ``*.jsonl`` in it, in name order (upstream ships ``test*.jsonl``).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nsed.errors import ConfigError, DataError
from nsed.problems import QUICK_DEFAULT_SIZE, Problem, TestCase, generate_quick

BENCHMARKS: tuple[str, ...] = ("aime", "lcb", "quick")
_REASONING_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def load_problems(
    benchmark: str,
    path: str | Path | None,
    *,
    seed: int = 0,
    limit: int | None = None,
) -> list[Problem]:
    """Load ``benchmark`` from ``path`` (file order kept), or generate the quick set from
    ``seed`` when ``path`` is None. ``limit`` keeps the first N problems."""
    if benchmark not in BENCHMARKS:
        raise DataError(
            f"unknown benchmark {benchmark!r}; valid benchmarks are: {', '.join(BENCHMARKS)}"
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1 (got {limit}); leave it unset for all")
    if path is None:
        if benchmark != "quick":
            raise DataError(
                f"the {benchmark} benchmark needs a data file: pass --data PATH "
                "(nothing is downloaded; see the README for the expected JSONL format)"
            )
        return generate_quick(limit or QUICK_DEFAULT_SIZE, seed)
    rows = _read_rows(Path(path))
    loader = _lcb_problem if benchmark == "lcb" else _math_loader(benchmark)
    problems: list[Problem] = []
    first_line: dict[str, str] = {}
    for where, stem, row in rows:
        problem = loader(row, where, stem)
        if problem.id in first_line:
            raise DataError(
                f"{where}: duplicate problem id {problem.id!r} (first seen at "
                f"{first_line[problem.id]}); ids must be unique because results are keyed by them"
            )
        first_line[problem.id] = where
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{path} contains no problems (every line is empty)")
    return problems


# --- Reading JSONL ----------------------------------------------------------------------------


def _read_rows(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (``file:line``, file stem, row) for every non-empty line; errors name the line."""
    if not path.exists():
        raise DataError(f"data file not found: {path} (check the --data path)")
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"no *.jsonl files in directory {path}")
    else:
        files = [path]
    return _iter_files(files)


def _iter_files(files: list[Path]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for file in files:
        try:
            handle = file.open(encoding="utf-8-sig")
        except OSError as exc:
            raise DataError(f"cannot read data file {file}: {exc.strerror}") from exc
        with handle:
            try:
                for lineno, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    where = f"{file}:{lineno}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"{file}, line {lineno}: malformed JSON ({exc.msg} at column "
                            f"{exc.colno}); each line must be one JSON object"
                        ) from exc
                    if not isinstance(row, dict):
                        raise DataError(
                            f"{file}, line {lineno}: expected a JSON object, got "
                            f"{type(row).__name__}"
                        )
                    yield where, file.stem, row
            except UnicodeDecodeError as exc:
                raise DataError(f"{file} is not UTF-8 text ({exc.reason})") from exc


def _required(row: dict[str, Any], where: str, *names: str) -> Any:
    """The first of ``names`` present and non-empty in ``row``, else a DataError naming it."""
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    also = f" (also accepted: {', '.join(repr(n) for n in names[1:])})" if names[1:] else ""
    raise DataError(f"{where}: missing required field {names[0]!r}{also}")


# --- AIME-format math -------------------------------------------------------------------------


def _math_loader(benchmark: str) -> Callable[[dict[str, Any], str, str], Problem]:
    def load(row: dict[str, Any], where: str, stem: str) -> Problem:
        text = str(_required(row, where, "problem", "question")).strip()
        if text.endswith(_REASONING_SUFFIX):  # some mirrors bake a prompt suffix in
            text = text[: -len(_REASONING_SUFFIX)].rstrip()
        answer = str(_required(row, where, "answer")).strip()
        pid = str(row.get("id") or f"{stem}-{where.rsplit(':', 1)[1]}")
        extra = {k: v for k, v in row.items() if k not in ("id", "problem", "question", "answer")}
        return Problem(
            id=pid, benchmark=benchmark, kind="math", prompt=text, answer=answer, metadata=extra
        )

    return load


# --- LiveCodeBench ----------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles strings, bytes and containers only: a data file must never run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _decode_tests(raw: Any, pid: str, field: str, where: str) -> list[TestCase]:
    """Parse a test list given as a list, a JSON string, or base64(zlib(pickle(json)))."""
    if raw is None or raw == "":
        return []
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            try:
                packed = zlib.decompress(base64.b64decode(raw.encode("ascii"), validate=False))
                inner = _PlainUnpickler(io.BytesIO(packed)).load()
                value = json.loads(inner) if isinstance(inner, str | bytes) else inner
            except Exception as exc:
                raise DataError(
                    f"{where}: problem {pid!r}: cannot decode {field} (neither JSON nor "
                    f"base64(zlib(pickle(json))): {type(exc).__name__}: {exc})"
                ) from exc
    if not isinstance(value, list):
        raise DataError(f"{where}: problem {pid!r}: {field} must be a list of test cases")
    tests: list[TestCase] = []
    for i, item in enumerate(value):
        try:
            tests.append(TestCase.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "test"
            raise DataError(
                f"{where}: problem {pid!r}: {field}[{i}] is invalid ({loc}: {first['msg']}); "
                'each test needs "input", "output" and "testtype" ("stdin" or "functional")'
            ) from exc
    return tests


def _lcb_metadata(raw: Any, pid: str, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: problem {pid!r}: metadata is not valid JSON") from exc
        if isinstance(value, dict):
            return value
    raise DataError(f"{where}: problem {pid!r}: metadata must be a JSON object")


def _lcb_problem(row: dict[str, Any], where: str, stem: str) -> Problem:
    qid = str(_required(row, where, "question_id"))
    pid = str(row.get("id") or qid)
    content = str(_required(row, where, "question_content"))
    if "public_test_cases" not in row:
        raise DataError(f"{where}: missing required field 'public_test_cases'")
    public = _decode_tests(row["public_test_cases"], pid, "public_test_cases", where)
    private = _decode_tests(row.get("private_test_cases"), pid, "private_test_cases", where)
    tests = public + private
    if not tests:
        raise DataError(f"{where}: problem {pid!r} has no test cases, so it cannot be graded")
    meta = _lcb_metadata(row.get("metadata"), pid, where)
    func_name = meta.get("func_name") or None
    functional = any(t.testtype == "functional" for t in tests)
    if functional and any(t.testtype == "stdin" for t in tests):
        raise DataError(f"{where}: problem {pid!r} mixes stdin and functional tests")
    if functional and not func_name:
        raise DataError(
            f"{where}: problem {pid!r} has functional tests but metadata has no 'func_name'"
        )
    starter = str(row.get("starter_code") or "")
    return Problem(
        id=pid,
        benchmark="lcb",
        kind="code",
        prompt=lcb_prompt(content, starter, func_name if functional else None),
        tests=tests,
        func_name=func_name if functional else None,
        starter_code=starter,
        metadata={
            "title": row.get("question_title", ""),
            "platform": row.get("platform", ""),
            "question_id": qid,
            "contest_id": row.get("contest_id", ""),
            "contest_date": row.get("contest_date", ""),
            "difficulty": row.get("difficulty", ""),
            "public_tests": len(public),
            "private_tests": len(private),
        },
    )


def lcb_prompt(content: str, starter_code: str, func_name: str | None) -> str:
    """The official LiveCodeBench question prompt, plus an explicit I/O contract."""
    head = (
        "You will be given a question (problem specification) and will generate a correct "
        "Python program that matches the specification and passes all tests.\n\n"
        f"### Question:\n{content.strip()}\n\n"
    )
    if func_name:
        fmt = (
            "### Format: You will use the following starter code to write the solution to the "
            "problem and enclose your code within delimiters.\n"
            f"```python\n{starter_code.rstrip()}\n```\n"
            f"Implement the method `{func_name}` of `class Solution`. It is called as "
            f"`Solution().{func_name}(*args)` with the test's arguments and its return value "
            "is compared with the expected value; do not read stdin or print the answer.\n\n"
        )
    else:
        starter = f"```python\n{starter_code.rstrip()}\n```\n" if starter_code.strip() else ""
        fmt = (
            "### Format: Read the inputs from stdin solve the problem and write the answer to "
            "stdout (do not directly test on the sample inputs). Enclose your code within "
            "delimiters as follows. Ensure that when the python program runs, it reads the "
            "inputs, runs the algorithm and writes output to STDOUT.\n"
            f"{starter}```python\n# YOUR CODE HERE\n```\n\n"
        )
    return head + fmt + "### Answer: (use the provided format with backticks)\n"


__all__ = [
    "BENCHMARKS",
    "lcb_prompt",
    "load_problems",
]
