"""Loaders on fixtures written here: AIME-format math, LiveCodeBench rows (one with
base64(zlib(pickle(json))) private tests), the generated quick set, and every error message."""

from __future__ import annotations

import base64
import json
import pickle
import random
import re
import zlib
from pathlib import Path

import pytest

from nsed.benchmarks.loaders import load_problems
from nsed.errors import ConfigError, DataError
from nsed.problems import QUICK_DEFAULT_SIZE, Problem, generate_quick, plausible_wrong_answers


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def encode_private(tests: list[dict[str, str]]) -> str:
    """The upstream LiveCodeBench encoding of private tests."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


STDIN_ROW = {
    "question_title": "Double It",
    "question_content": "Read an integer N and print 2N.",
    "platform": "atcoder",
    "question_id": "abc000_a",
    "contest_id": "abc000",
    "contest_date": "2024-01-01T00:00:00",
    "starter_code": "",
    "difficulty": "easy",
    "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]),
    "private_test_cases": json.dumps(
        [
            {"input": "0\n", "output": "0\n", "testtype": "stdin"},
            {"input": "-4\n", "output": "-8\n", "testtype": "stdin"},
        ]
    ),
    "metadata": "{}",
}

FUNCTIONAL_ROW = {
    "question_title": "Sum Times K",
    "question_content": "Given nums and k, return k times the sum of nums.",
    "platform": "leetcode",
    "question_id": "9001",
    "contest_id": "weekly-1",
    "contest_date": "2024-02-02T00:00:00",
    "starter_code": "class Solution:\n    def sumTimes(self, nums: List[int], k: int) -> int:\n",
    "difficulty": "medium",
    "public_test_cases": json.dumps(
        [{"input": "[1, 2, 3]\n2", "output": "12", "testtype": "functional"}]
    ),
    "private_test_cases": encode_private(
        [
            {"input": "[]\n5", "output": "0", "testtype": "functional"},
            {"input": "[7]\n1", "output": "7", "testtype": "functional"},
            {"input": "[1, 1]\n-1", "output": "-2", "testtype": "functional"},
        ]
    ),
    "metadata": json.dumps({"func_name": "sumTimes"}),
}


# --- AIME format ------------------------------------------------------------------------------


def test_aime_rows_load_with_ids_answers_and_aliases(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "aime.jsonl",
        [
            {"id": "made-up-1", "problem": "Find 2+2.", "answer": "4"},
            {"question": "Find the least prime above 30.", "answer": 31},
            {
                "id": "made-up-3",
                "problem": "Find 10*7. Please reason step by step, and put your final answer "
                "within \\boxed{}.",
                "answer": "070",
                "year": 2025,
            },
        ],
    )
    problems = load_problems("aime", path)
    assert [p.id for p in problems] == ["made-up-1", "aime-2", "made-up-3"]
    assert [p.answer for p in problems] == ["4", "31", "070"]
    assert all(p.kind == "math" and p.benchmark == "aime" and not p.tests for p in problems)
    assert problems[1].prompt == "Find the least prime above 30."
    assert problems[2].prompt == "Find 10*7."  # a mirror's baked-in suffix is removed
    assert problems[2].metadata == {"year": 2025}


def test_limit_keeps_the_first_problems_in_file_order(tmp_path: Path) -> None:
    rows = [{"id": f"p{i}", "problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert [p.id for p in load_problems("aime", path, limit=2)] == ["p0", "p1"]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"id": "a", "problem": "1+1?", "answer": "2"}\n\n   \n', encoding="utf-8")
    assert [p.id for p in load_problems("aime", path)] == ["a"]


def test_a_directory_reads_every_jsonl_in_name_order(tmp_path: Path) -> None:
    data = tmp_path / "lcb"
    data.mkdir()
    write_jsonl(data / "test2.jsonl", [FUNCTIONAL_ROW])
    write_jsonl(data / "test.jsonl", [STDIN_ROW])
    (data / "notes.txt").write_text("not data", encoding="utf-8")
    assert [p.id for p in load_problems("lcb", data)] == ["abc000_a", "9001"]


# --- LiveCodeBench ----------------------------------------------------------------------------


def test_lcb_stdin_row(tmp_path: Path) -> None:
    (problem,) = load_problems("lcb", write_jsonl(tmp_path / "lcb.jsonl", [STDIN_ROW]))
    assert problem.id == "abc000_a"
    assert problem.kind == "code" and problem.benchmark == "lcb"
    assert [t.input for t in problem.tests] == ["3\n", "0\n", "-4\n"]  # public then private
    assert {t.testtype for t in problem.tests} == {"stdin"}
    assert problem.func_name is None and not problem.functional
    assert "Read an integer N and print 2N." in problem.prompt
    assert "Read the inputs from stdin" in problem.prompt
    assert problem.metadata["public_tests"] == 1 and problem.metadata["private_tests"] == 2
    assert problem.metadata["platform"] == "atcoder"


def test_lcb_functional_row_with_compressed_private_tests(tmp_path: Path) -> None:
    (problem,) = load_problems("lcb", write_jsonl(tmp_path / "lcb.jsonl", [FUNCTIONAL_ROW]))
    assert problem.func_name == "sumTimes" and problem.functional
    assert [(t.input, t.output) for t in problem.tests] == [
        ("[1, 2, 3]\n2", "12"),
        ("[]\n5", "0"),
        ("[7]\n1", "7"),
        ("[1, 1]\n-1", "-2"),
    ]
    assert problem.starter_code.startswith("class Solution:")
    assert "def sumTimes(self, nums: List[int], k: int) -> int:" in problem.prompt
    assert "Solution().sumTimes(*args)" in problem.prompt
    assert "return k times the sum of nums" in problem.prompt


def test_lcb_accepts_decoded_lists_dict_metadata_and_missing_private_tests(
    tmp_path: Path,
) -> None:
    row = dict(FUNCTIONAL_ROW)
    row["public_test_cases"] = json.loads(FUNCTIONAL_ROW["public_test_cases"])
    row["metadata"] = {"func_name": "sumTimes"}
    del row["private_test_cases"]
    row["id"] = "lcb-leetcode-9001"
    (problem,) = load_problems("lcb", write_jsonl(tmp_path / "lcb.jsonl", [row]))
    assert problem.id == "lcb-leetcode-9001"
    assert len(problem.tests) == 1 and problem.func_name == "sumTimes"


def test_lcb_private_tests_never_unpickle_objects(tmp_path: Path) -> None:
    """pickle in a data file must not run code: a payload naming a callable is refused."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (open, (str(marker), "w"))

    row = dict(STDIN_ROW)
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Payload()))).decode()
    with pytest.raises(DataError, match=r"problem 'abc000_a': cannot decode private_test_cases"):
        load_problems("lcb", write_jsonl(tmp_path / "evil.jsonl", [row]))
    assert not marker.exists()


# --- The quick set ----------------------------------------------------------------------------


def test_quick_set_is_deterministic_distinct_and_mixed() -> None:
    problems = generate_quick(QUICK_DEFAULT_SIZE, seed=7)
    assert len(problems) == QUICK_DEFAULT_SIZE >= 200
    assert len({p.prompt for p in problems}) == len(problems)
    assert len({p.id for p in problems}) == len(problems)
    assert generate_quick(QUICK_DEFAULT_SIZE, seed=7) == problems
    assert generate_quick(30, seed=7) == problems[:30]  # a smaller run is a prefix
    assert [p.prompt for p in generate_quick(30, seed=8)] != [p.prompt for p in problems[:30]]
    assert {p.metadata["difficulty"] for p in problems} == {"easy", "medium", "hard"}
    assert len({p.metadata["template"] for p in problems}) >= 10
    assert any(p.prompt.startswith(("Tom", "Ana", "Ravi", "Mei", "Omar")) for p in problems)
    for p in problems:
        assert p.benchmark == "quick" and p.kind == "math"
        assert p.answer is not None and re.fullmatch(r"-?\d+", p.answer)


def test_quick_arithmetic_answers_are_right() -> None:
    checked = 0
    for p in generate_quick(QUICK_DEFAULT_SIZE, seed=3):
        expr = re.fullmatch(r"What is ([\d +\-*()]+)\?", p.prompt)
        if expr:
            assert str(eval(expr.group(1))) == p.answer, p.prompt
            checked += 1
        share = re.fullmatch(r"(\d+) \w+ are shared equally among (\d+) children\..*", p.prompt)
        if share:
            assert int(share.group(1)) == int(share.group(2)) * int(p.answer), p.prompt
            checked += 1
    assert checked >= 40


def test_quick_generated_when_no_path_and_read_from_a_file(tmp_path: Path) -> None:
    assert load_problems("quick", None, seed=5, limit=12) == generate_quick(12, seed=5)
    assert len(load_problems("quick", None)) == QUICK_DEFAULT_SIZE
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "problem": "2*21?", "answer": "42"}])
    (problem,) = load_problems("quick", path)
    assert (problem.id, problem.benchmark, problem.answer) == ("q1", "quick", "42")


def test_plausible_wrong_answers_are_near_misses() -> None:
    problem = Problem(
        id="m",
        benchmark="quick",
        kind="math",
        prompt="What is 17 * 23?",
        answer="391",
        metadata={"operands": [17, 23]},
    )
    wrong = plausible_wrong_answers(problem, 6, random.Random(0))
    assert len(wrong) == len(set(wrong)) == 6
    assert "391" not in wrong
    assert all(re.fullmatch(r"-?\d+", w) for w in wrong)
    assert wrong == plausible_wrong_answers(problem, 6, random.Random(0))
    pool = set(plausible_wrong_answers(problem, 40, random.Random(1)))
    assert {"390", "392", "319", "40"} <= pool  # off-by-one, digit swap, operator slip a+b
    assert len(pool) == 40  # topped up with further offsets when slips run out


def test_plausible_wrong_answers_needs_an_integer_answer() -> None:
    problem = Problem(id="x", benchmark="aime", kind="math", prompt="?", answer="\\frac{1}{2}")
    with pytest.raises(DataError, match=r"problem 'x' has no integer answer"):
        plausible_wrong_answers(problem, 3, random.Random(0))


# --- Errors -----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(f"data file not found: {missing}")):
        load_problems("aime", missing)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "problem": "x", "answer": "1"}\n{"id": "b", oops}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: malformed JSON")):
        load_problems("aime", path)


def test_a_line_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        load_problems("quick", path)


def test_missing_field_names_field_and_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"id": "a", "problem": "x", "answer": "1"}, {"id": "b", "problem": "y"}],
    )
    with pytest.raises(DataError, match=re.escape(f"{path}:2: missing required field 'answer'")):
        load_problems("aime", path)
    row = dict(STDIN_ROW)
    del row["question_content"]
    lcb = write_jsonl(tmp_path / "l.jsonl", [row])
    with pytest.raises(DataError, match=re.escape(f"{lcb}:1: missing required field")):
        load_problems("lcb", lcb)


def test_unknown_benchmark_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown benchmark 'gsm8k'.*aime, lcb, quick"):
        load_problems("gsm8k", tmp_path / "x.jsonl")


def test_undecodable_private_tests_name_the_problem(tmp_path: Path) -> None:
    row = dict(STDIN_ROW)
    row["private_test_cases"] = "eJzz not base64 of anything!!"
    with pytest.raises(DataError, match=r"problem 'abc000_a': cannot decode private_test_cases"):
        load_problems("lcb", write_jsonl(tmp_path / "l.jsonl", [row]))


def test_functional_tests_need_a_func_name(tmp_path: Path) -> None:
    row = dict(FUNCTIONAL_ROW)
    row["metadata"] = "{}"
    with pytest.raises(DataError, match=r"problem '9001' has functional tests but metadata"):
        load_problems("lcb", write_jsonl(tmp_path / "l.jsonl", [row]))


def test_invalid_test_case_and_no_tests_are_rejected(tmp_path: Path) -> None:
    row = dict(STDIN_ROW)
    row["public_test_cases"] = json.dumps([{"input": "1", "output": "2", "testtype": "file"}])
    with pytest.raises(DataError, match=r"public_test_cases\[0\] is invalid \(testtype"):
        load_problems("lcb", write_jsonl(tmp_path / "a.jsonl", [row]))
    row = dict(STDIN_ROW, public_test_cases="[]", private_test_cases="[]")
    with pytest.raises(DataError, match=r"has no test cases"):
        load_problems("lcb", write_jsonl(tmp_path / "b.jsonl", [row]))


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    rows = [
        {"id": "same", "problem": "a", "answer": "1"},
        {"id": "same", "problem": "b", "answer": "2"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r":2: duplicate problem id 'same' \(first seen at .*:1\)"):
        load_problems("aime", path)


def test_file_benchmarks_need_a_path_and_limit_must_be_positive() -> None:
    with pytest.raises(DataError, match=r"the lcb benchmark needs a data file: pass --data PATH"):
        load_problems("lcb", None)
    with pytest.raises(ConfigError, match=r"limit must be at least 1"):
        load_problems("quick", None, limit=0)


def test_empty_inputs_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"contains no problems"):
        load_problems("aime", tmp_path / "empty.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=r"no \*\.jsonl files in directory"):
        load_problems("lcb", tmp_path / "dir")
