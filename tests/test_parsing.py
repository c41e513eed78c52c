"""Parsing and repair of model replies, and extraction of checkable final answers.

Every test is named after the behaviour it pins. The ``SMOLLM2_*`` fixtures are real replies of
SmolLM2-135M-Instruct (Q4_1, llama-server, temperature 0.7-0.8, fixed seeds), some of them cut
off by ``max_tokens``; long repetitive tails are shortened where the test does not need them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsed.agents.parsing import (
    DroppedReview,
    answer_key,
    complete_final,
    extract_final,
    extract_json,
    normalize_final,
    parse_free_proposal,
    parse_proposal,
    parse_reviews,
)
from nsed.errors import ConfigError

LABELS = ["A", "B", "C"]

# --- Real SmolLM2-135M replies ------------------------------------------------------------------

SMOLLM2_FENCED_PROPOSAL = (
    "In your JSON string, you can simply substitute the JSON format:\n\n```json\n"
    '{"reasoning": "2 + 2 means adding two and two, which gives 4.", "answer": "\\\\boxed{4}"}'
    "\n```"
)
SMOLLM2_CHATTY_PROPOSAL = (
    "The response was incomplete. Please provide the JSON response in the requested format:\n\n"
    '{"reasoning": "2 + 2 means adding two and two, which gives 4. This is the correct answer '
    'based on the rules of mathematics.", "answer": "\\\\boxed{4}"}'
)
SMOLLM2_COLON_LIST = (
    '["Premise 1": "100 - 37 \u2261 56 \u2261 0 (100 - 37 \u2261 56)", "Premise 2": "100 - 37 '
    "\u2261 56 \u2261"
)
SMOLLM2_CODE_WITH_USAGE = (
    '```python\ndef square_of_number(num):\n    """\n    Square of a number using Python.\n'
    '    """\n    return num ** 2\n```\n\nExample usage:\n```python\n'
    "assert square_of_number(16) == 16 ** 2\nassert square_of_number(10) == 10 ** 2\n```"
)
SMOLLM2_SCHEMA_ECHO_REVIEW = (
    "94\n\nThe JSON is as follows:\n\n{\n  \"reviews\": [\n    {\n      \"candidate\": "
    '"<label>",\n      "score": 12,\n      "critique": "The answer is 13"\n    },\n    {\n'
    '      "candidate": "12",\n      "score": 13,\n      "critique": "The answer is 1'
)
SMOLLM2_TRUNCATED_SCHEMA_REVIEW = (
    '{\n  "reviews": [\n    {\n      "candidate": "A",\n      "score": 40,\n      "critique": '
    '"Correct but overly verbose"\n    },\n    {\n      "candidate'
)
SMOLLM2_TRUNCATED_AFTER_SCORE_DIGITS = (
    '{"reviews": [{"candidate": "A", "score": 40, "critique": "A must be in 100!"}, '
    '{"candidate": "B", "score": -60'
)
SMOLLM2_MISMATCHED_BRACKETS = (
    '{"reviews": [{"candidate": "A", "score": 40}, {"candidate": "B", "score": 60}, '
    '{"candidate": "C", "score": 20}, {"candidate": "D", "score": 30}, {"candidate": "I", '
    '"score": 110}, {"candidates": [{"candidate": "E", "score": 90}]}}\n\n{\n  "scores": '
    '[{"candidate": "A", "score": 40}, {"candidate": "B",'
)
SMOLLM2_FENCE_WITH_EXTRA_SCORE = (
    '```\n\n{\n  "score": 40,\n  "reviews": [\n    {\n      "candidate": "A",\n      "score": '
    '40,\n      "critique": "Correct, but wrong sum"\n    },\n    {\n      "candidate": "B",\n'
    '      "score": -60,\n      "critique": "Wrong sum"\n    }\n  ]\n}\n```'
)
SMOLLM2_GARBLED_REVIEW = (
    "The best solution to this problem is to add a second variable to the existing one.\n\n"
    'Here is the JSON solution:\n\n{"reviews": [{"candidate": "<label>", "score": <integer>}, '
    '"description": {\n            "category": "What is 7 + 5?",\n            "rating": "1.5",'
)
SMOLLM2_PROSE_REVIEW = (
    "012.\n\nThe first answer 7 + 5 is an example of the logic fallacy. A more accurate answer "
    "is 12.\n\nThe second answer is 13, which is a bit off.\n\nThe third answer is 12, which is "
    "correct."
)


# --- extract_json -------------------------------------------------------------------------------


def test_strict_json_is_not_marked_repaired() -> None:
    got = extract_json('{"reasoning": "r", "answer": "a"}')
    assert got.value == {"reasoning": "r", "answer": "a"}
    assert got.repaired is False
    assert got.error is None


def test_json_in_code_fence_with_trailing_text() -> None:
    got = extract_json('Sure!\n```json\n{"answer": "12"}\n```\nHope this helps! {not json}')
    assert got.value == {"answer": "12"}
    assert got.repaired is False


def test_text_before_and_after_json() -> None:
    got = extract_json('Here is my reply: {"answer": [1, 2]} Let me know [if] you need more.')
    assert got.value == {"answer": [1, 2]}


def test_single_quotes_and_python_literals() -> None:
    got = extract_json("{'ok': True, 'missing': None, 'no': False, 'note': 'it's fine'}")
    assert got.value == {"ok": True, "missing": None, "no": False, "note": "it's fine"}
    assert got.repaired is True


def test_trailing_commas() -> None:
    got = extract_json('{"a": [1, 2, 3,], "b": {"c": 4,},}')
    assert got.value == {"a": [1, 2, 3], "b": {"c": 4}}
    assert got.repaired is True


def test_unescaped_newlines_inside_strings() -> None:
    got = extract_json('{"reasoning": "Step 1: add.\nStep 2: check.", "answer": "12"}')
    assert got.value == {"reasoning": "Step 1: add.\nStep 2: check.", "answer": "12"}


def test_unquoted_keys_and_bare_words() -> None:
    got = extract_json('{candidate: A, score: +40, critique: "fine"}')
    assert got.value == {"candidate": "A", "score": 40, "critique": "fine"}


def test_unescaped_quotes_inside_a_string_are_kept() -> None:
    got = extract_json('{"critique": "He said "twelve" and stopped", "score": 5}')
    assert got.value == {"critique": 'He said "twelve" and stopped', "score": 5}


def test_truncated_json_closes_open_containers_and_keeps_complete_values() -> None:
    got = extract_json('{"reasoning": "we add", "items": [1, 2, {"x": "unfinished text')
    assert got.repaired is True
    assert got.value == {"reasoning": "we add", "items": [1, 2, {"x": "unfinished text"}]}


def test_truncated_number_is_dropped_not_completed() -> None:
    got = extract_json('{"a": 45, "b": 4')
    assert got.value == {"a": 45}


def test_truncated_key_and_literal_are_dropped() -> None:
    assert extract_json('{"a": 1, "flag": tru').value == {"a": 1}
    assert extract_json('{"a": 1, "fla').value == {"a": 1}


def test_unclosed_fence_with_truncated_json() -> None:
    got = extract_json('```json\n{"reasoning": "long thoughts", "answer": "The answer')
    assert got.value == {"reasoning": "long thoughts", "answer": "The answer"}


def test_brackets_inside_strings_do_not_end_the_span() -> None:
    text = 'Reply: {"answer": "use f(x) = {1, 2]} here", "n": [1]} trailing } ]'
    assert extract_json(text).value == {"answer": "use f(x) = {1, 2]} here", "n": [1]}


def test_latex_braces_in_prose_are_not_mistaken_for_json() -> None:
    text = 'Since \\frac{1}{2} + \\boxed{x} holds, {"answer": "\\\\frac{1}{2}"}'
    assert extract_json(text).value == {"answer": "\\frac{1}{2}"}


def test_bracketed_prose_is_not_a_list_of_words() -> None:
    got = extract_json("[Round 2 \u00b7 Proposing]\nThe answer is 12.")
    assert got.value is None
    assert got.error == "malformed JSON could not be repaired"


def test_object_preferred_over_earlier_bare_list() -> None:
    assert extract_json('See [1] and [2]. {"answer": "3"}').value == {"answer": "3"}


def test_schema_echo_loses_to_a_later_valid_object() -> None:
    text = (
        'Format: {"reviews": [{"candidate": "<label>", "score": <integer>}]}\n'
        'Mine: {"reviews": [{"candidate": "A", "score": 10}]}'
    )
    assert extract_json(text).value == {"reviews": [{"candidate": "A", "score": 10}]}


def test_json_sent_as_a_string_is_decoded() -> None:
    got = extract_json(json.dumps(json.dumps({"answer": "7"})))
    assert got.value == {"answer": "7"}
    assert got.repaired is True


def test_a_plain_json_string_stays_a_string() -> None:
    assert extract_json('"[x] marks the spot"').value == "[x] marks the spot"


def test_mismatched_closing_bracket_is_repaired() -> None:
    got = extract_json('{"reviews": [{"candidate": "A", "score": 1}}')
    assert got.value == {"reviews": [{"candidate": "A", "score": 1}]}


def test_no_json_reports_reason() -> None:
    got = extract_json("The answer is 12.")
    assert got.value is None
    assert got.error == "no JSON object found"


def test_empty_reply_reports_reason() -> None:
    assert extract_json("   \n").error == "empty reply"


def test_unrepairable_truncation_reports_reason() -> None:
    got = extract_json('Sure: {"reaso')
    assert got.value is None
    assert got.error == "truncated JSON could not be repaired"


def test_malformed_json_reports_reason() -> None:
    got = extract_json("We know {x} and {y: } and [a: b].")
    assert got.value is None
    assert got.error == "malformed JSON could not be repaired"


def test_pathological_nesting_does_not_raise() -> None:
    assert extract_json("[" * 5000).error is not None
    deep = "[" * 3000 + "]" * 3000
    assert extract_json(deep).error is None or extract_json(deep).value is None


def test_many_latex_braces_before_the_json_are_skipped() -> None:
    prose = "We use \\frac{1}{2} and \\sqrt{x} here. " * 2000
    got = extract_json(prose + '{"answer": "9"}')
    assert got.value == {"answer": "9"}


# --- extract_final: math ------------------------------------------------------------------------


def test_boxed_nested_braces() -> None:
    assert extract_final("so \\boxed{\\frac{1}{\\sqrt{4}}} done", "math") == "\\frac{1}{\\sqrt{4}}"


def test_last_boxed_wins() -> None:
    assert extract_final("First \\boxed{3}, corrected: \\boxed{5}.", "math") == "5"


def test_unclosed_last_boxed_is_ignored() -> None:
    assert extract_final("\\boxed{7} then \\boxed{4", "math") == "7"


def test_answer_is_phrase() -> None:
    assert extract_final("Adding gives 11 + 1. The answer is 12 because of that.", "math") == "12"


def test_markdown_answer_colon() -> None:
    assert extract_final("**Answer:** $-3$", "math") == "-3"


def test_answer_on_the_next_line() -> None:
    assert extract_final("Final Answer:\n\n**42**", "math") == "42"


def test_answer_phrase_in_words_gives_the_stated_number() -> None:
    assert extract_final("So the answer is that there are 12 ways.", "math") == "12"


def test_earlier_answer_phrase_when_the_last_states_no_number() -> None:
    assert extract_final("The answer is 12. I am sure the answer is correct.", "math") == "12"


def test_answer_phrase_keeps_an_expression() -> None:
    assert extract_final("The answer is x^2 + 1.", "math") == "x^2+1"


def test_last_integer_fallback() -> None:
    assert extract_final("7 + 5 = 12, and 12 * 2 = 24", "math") == "24"


def test_subtraction_is_not_a_negative_sign() -> None:
    assert extract_final("we compute 100-37", "math") == "37"
    assert extract_final("it drops to -5", "math") == "-5"


def test_decimal_and_fraction_fallback() -> None:
    assert extract_final("the ratio is 3/4", "math") == "3/4"
    assert extract_final("about 2.50 units", "math") == "2.5"


def test_no_number_gives_none() -> None:
    assert extract_final("I cannot solve this.", "math") is None
    assert extract_final("", "math") is None


def test_normalize_strips_dollars_text_spaces_and_period() -> None:
    assert normalize_final("$12\\text{ cm}$.", "math") == "12"
    assert normalize_final("\\( 1 \\, 000 \\)", "math") == "1000"
    assert normalize_final("x = 5", "math") == "5"


def test_normalize_thousands_separators_and_leading_zeros() -> None:
    assert normalize_final("1,000", "math") == "1000"
    assert normalize_final("1,234,567.50", "math") == "1234567.5"
    assert normalize_final("070", "math") == "70"
    assert normalize_final("(1,2)", "math") == "(1,2)"


def test_normalize_integer_valued_decimal() -> None:
    assert normalize_final("12.0", "math") == "12"
    assert normalize_final("+12.000", "math") == "12"
    assert normalize_final("-0", "math") == "0"


def test_dfrac_becomes_frac_and_integer_fraction_becomes_ratio() -> None:
    assert normalize_final("\\dfrac{\\pi}{2}", "math") == "\\frac{\\pi}{2}"
    assert normalize_final("\\dfrac{3}{4}", "math") == "3/4"
    assert normalize_final("\\tfrac{06}{8}", "math") == "6/8"


def test_boxed_is_unwrapped_when_normalising() -> None:
    assert normalize_final("\\boxed{070}", "math") == "70"


def test_single_backslash_latex_in_json_is_restored() -> None:
    # "\boxed" and "\frac" in a JSON string decode to a backspace and a form feed.
    got = parse_proposal('{"reasoning": "half of 1", "answer": "\\boxed{\\frac{1}{2}}"}', "math")
    assert got.answer == "\\boxed{\\frac{1}{2}}"
    assert got.final == "1/2"


def test_tab_and_newline_latex_damage_is_restored() -> None:
    got = parse_proposal('{"answer": "x \\neq 2, so \\text{x} = \\boxed{3}"}', "math")
    assert got.answer == "x \\neq 2, so \\text{x} = \\boxed{3}"
    assert got.final == "3"


# --- extract_final: code and text ---------------------------------------------------------------


def test_text_and_raw_replies_keep_real_newlines() -> None:
    got = parse_proposal(json.dumps({"answer": "low\nmid - high"}), "text")
    assert got.answer == "low\nmid - high"
    assert parse_proposal("low\nmid - high", "math").answer == "low\nmid - high"


def test_code_final_prefers_python_block() -> None:
    text = "```python\nprint(1)\n```\nor in shell:\n```bash\necho 1\n```"
    assert extract_final(text, "code") == "print(1)"


def test_code_final_is_the_last_block() -> None:
    text = "```\nx = 1\n```\nBetter:\n```\nx = 2\n```"
    assert extract_final(text, "code") == "x = 2"


def test_code_final_skips_usage_example_block() -> None:
    final = extract_final(SMOLLM2_CODE_WITH_USAGE, "code")
    assert final is not None
    assert final.startswith("def square_of_number(num):")
    assert "assert" not in final


def test_code_final_none_without_fence() -> None:
    assert extract_final("def f(x):\n    return x", "code") is None


def test_unfenced_program_in_answer_field_is_final() -> None:
    got = parse_proposal(
        json.dumps({"reasoning": "square it", "answer": "def sq(n):\n    return n * n\n"}), "code"
    )
    assert got.final == "def sq(n):\n    return n * n"


def test_code_answer_keeps_tab_indentation_and_newlines() -> None:
    code = "```python\nlo, hi = 0, 9\nwhile lo < hi:\n\tmid = (lo + hi) // 2\n\tto = mid\n```"
    got = parse_proposal(json.dumps({"answer": code}), "code")
    assert got.final == "lo, hi = 0, 9\nwhile lo < hi:\n\tmid = (lo + hi) // 2\n\tto = mid"


def test_text_final_answer_phrase() -> None:
    assert extract_final("I think about it.\nAnswer: Paris.", "text") == "Paris"


def test_text_final_keeps_case() -> None:
    assert extract_final("The answer is New York City", "text") == "New York City"


def test_text_final_first_line_truncated_to_200() -> None:
    text = "\n\n  " + "x" * 300 + "\nsecond line"
    assert extract_final(text, "text") == "x" * 200


def test_normalize_text_collapses_whitespace() -> None:
    assert normalize_final('  "Paris   France".  ', "text") == "Paris France"


def test_invalid_kind_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="answer kind"):
        extract_final("1", "number")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="answer kind"):
        parse_proposal("1", "latex")  # type: ignore[arg-type]


# --- parse_proposal -----------------------------------------------------------------------------


def test_proposal_canonical_shape() -> None:
    got = parse_proposal('{"reasoning": "7 + 5 = 12", "answer": "The answer is 12."}', "math")
    assert (got.reasoning, got.answer, got.final, got.error) == (
        "7 + 5 = 12", "The answer is 12.", "12", None,
    )


def test_proposal_aliases() -> None:
    got = parse_proposal('{"Thought Process": "think", "content": "\\\\boxed{9}"}', "math")
    assert (got.reasoning, got.answer, got.final) == ("think", "\\boxed{9}", "9")
    got = parse_proposal('{"analysis": "a", "final_answer": 12.0}', "math")
    assert (got.reasoning, got.answer, got.final) == ("a", "12.0", "12")


def test_proposal_wrapped_one_level_deep() -> None:
    got = parse_proposal('{"proposal": {"reasoning": "r", "answer": "Lyon"}}', "text")
    assert (got.reasoning, got.answer, got.final) == ("r", "Lyon", "Lyon")


def test_proposal_without_json_keeps_whole_text_as_answer() -> None:
    got = parse_proposal("  7 + 5 = 12. The answer is 12.  ", "math")
    assert got.answer == "7 + 5 = 12. The answer is 12."
    assert got.final == "12"
    assert got.error == "no JSON object found; the whole reply is used as the answer"


def test_proposal_json_without_known_keys_falls_back_to_text() -> None:
    got = parse_proposal('{"result": 4}', "math")
    assert got.answer == '{"result": 4}'
    assert got.final == "4"
    assert got.error is not None and got.error.startswith("JSON has neither")


def test_proposal_final_from_reasoning_when_answer_has_none() -> None:
    got = parse_proposal('{"reasoning": "so we get \\\\boxed{8}", "answer": "see above"}', "math")
    assert got.final == "8"


def test_proposal_only_reasoning_is_used_as_answer() -> None:
    got = parse_proposal('{"reasoning": "It is 5."}', "math")
    assert (got.answer, got.reasoning, got.final) == ("It is 5.", "", "5")
    assert got.error == "no answer field; the reasoning is used as the answer"


def test_proposal_cut_off_in_answer_drops_the_partial_token() -> None:
    # The model meant 45; the cut left "4". The final must not be 4, nor a number from reasoning.
    got = parse_proposal('{"reasoning": "40 plus 5", "answer": "The answer is 4', "math")
    assert got.answer == "The answer is 4"
    assert got.final is None
    assert got.error == "the reply was cut off inside the answer"


def test_proposal_cut_off_after_a_complete_boxed_keeps_it() -> None:
    got = parse_proposal('{"answer": "\\\\boxed{45} because we add 40 and', "math")
    assert got.final == "45"


def test_empty_reply_proposal() -> None:
    got = parse_proposal("", "text")
    assert (got.answer, got.final, got.error) == ("", None, "empty reply")


def test_smollm2_fenced_proposal_with_chatter() -> None:
    got = parse_proposal(SMOLLM2_FENCED_PROPOSAL, "math")
    assert got.reasoning == "2 + 2 means adding two and two, which gives 4."
    assert got.answer == "\\boxed{4}"
    assert got.final == "4"
    assert got.error is None


def test_smollm2_proposal_after_apology_text() -> None:
    got = parse_proposal(SMOLLM2_CHATTY_PROPOSAL, "math")
    assert got.answer == "\\boxed{4}"
    assert got.final == "4"


def test_smollm2_colon_list_falls_back_to_text() -> None:
    got = parse_proposal(SMOLLM2_COLON_LIST, "math")
    assert got.answer == SMOLLM2_COLON_LIST
    assert got.error == (
        "truncated JSON could not be repaired; the whole reply is used as the answer"
    )


def test_smollm2_code_proposal_with_usage_block() -> None:
    got = parse_proposal(SMOLLM2_CODE_WITH_USAGE, "code")
    assert got.answer == SMOLLM2_CODE_WITH_USAGE
    assert got.final is not None and got.final.endswith("return num ** 2")


# --- parse_reviews ------------------------------------------------------------------------------


def _pairs(text: str, labels: list[str] = LABELS) -> list[tuple[str, float | None]]:
    return [(i.candidate, i.score) for i in parse_reviews(text, labels).items]


def _dropped(text: str, labels: list[str] = LABELS) -> list[tuple[str | None, str]]:
    return [(d.candidate, d.reason) for d in parse_reviews(text, labels).dropped]


def test_reviews_canonical_shape() -> None:
    got = parse_reviews(
        '{"reviews": [{"candidate": "A", "score": 55, "critique": "solid"}, '
        '{"candidate": "B", "score": -20, "critique": "step 2 is wrong"}]}',
        LABELS,
    )
    assert [(i.candidate, i.score, i.critique) for i in got.items] == [
        ("A", 55.0, "solid"), ("B", -20.0, "step 2 is wrong"),
    ]
    assert got.dropped == []
    assert got.repaired is False


def test_reviews_bare_list() -> None:
    assert _pairs('[{"candidate": "C", "score": 10}, {"candidate": "A", "score": 0}]') == [
        ("C", 10.0), ("A", 0.0),
    ]


def test_reviews_keyed_by_label() -> None:
    text = '{"A": {"score": 30, "critique": "ok"}, "Candidate B": {"score": -5}}'
    assert _pairs(text) == [("A", 30.0), ("B", -5.0)]


def test_reviews_keyed_by_label_with_bare_scores() -> None:
    assert _pairs('{"scores": {"A": 12, "C": "-7"}}') == [("A", 12.0), ("C", -7.0)]


def test_review_aliases_and_candidate_prefix() -> None:
    got = parse_reviews(
        '{"evaluations": [{"candidate_id": "Candidate_A", "endorsement_weight": 70, '
        '"justification": "verified"}, {"label": "candidate b", "weight": 5, "reason": "meh"}, '
        '{"id": "C.", "rating": 1, "comment": "short"}]}',
        LABELS,
    )
    assert [(i.candidate, i.score, i.critique) for i in got.items] == [
        ("A", 70.0, "verified"), ("B", 5.0, "meh"), ("C", 1.0, "short"),
    ]


def test_string_scores_with_sign_and_out_of_100() -> None:
    text = (
        '[{"candidate": "A", "score": "+40"}, {"candidate": "B", "score": "40/100"}, '
        '{"candidate": "C", "score": " \u221212.5 "}]'
    )
    assert _pairs(text) == [("A", 40.0), ("B", 40.0), ("C", -12.5)]


def test_scores_are_not_clipped() -> None:
    assert _pairs('[{"candidate": "A", "score": 250}, {"candidate": "B", "score": -1e3}]') == [
        ("A", 250.0), ("B", -1000.0),
    ]


def test_unknown_label_is_dropped_not_guessed() -> None:
    text = (
        '[{"candidate": "D", "score": 1}, {"candidate": "1", "score": 2}, '
        '{"candidate": "A", "score": 3}]'
    )
    assert _pairs(text) == [("A", 3.0)]
    assert _dropped(text) == [("D", "unknown label D"), ("1", "unknown label 1")]


def test_duplicate_label_keeps_first() -> None:
    text = '[{"candidate": "A", "score": 10}, {"candidate": "a", "score": 90}]'
    assert _pairs(text) == [("A", 10.0)]
    assert _dropped(text) == [("A", "duplicate label A")]


def test_missing_score_is_dropped() -> None:
    text = '[{"candidate": "A", "critique": "no number"}, {"candidate": "B", "score": null}]'
    assert _pairs(text) == []
    assert _dropped(text) == [("A", "missing score"), ("B", "missing score")]


def test_non_numeric_score_is_dropped() -> None:
    text = (
        '[{"candidate": "A", "score": "high"}, {"candidate": "B", "score": NaN}, '
        '{"candidate": "C", "score": true}]'
    )
    assert _dropped(text) == [
        ("A", "non-numeric score"), ("B", "non-numeric score"), ("C", "non-numeric score"),
    ]
    assert _dropped('{"A": Infinity, "B": "8/10"}') == [
        ("A", "non-numeric score"), ("B", "non-numeric score"),
    ]


def test_review_without_candidate_is_dropped() -> None:
    assert _dropped('{"reviews": [{"score": 40}, "A: 50"]}') == [
        (None, "missing candidate"), (None, "not a review object"),
    ]


def test_unparseable_review_gives_one_dropped_entry() -> None:
    got = parse_reviews(SMOLLM2_PROSE_REVIEW, LABELS)
    assert got.items == []
    assert got.dropped == [
        DroppedReview(candidate=None, reason="unparseable: no JSON object found")
    ]


def test_json_without_reviews_is_unparseable() -> None:
    assert _dropped('{"verdict": "all good"}') == [(None, "unparseable: JSON holds no reviews")]


def test_truncated_review_keeps_complete_items() -> None:
    got = parse_reviews(SMOLLM2_TRUNCATED_AFTER_SCORE_DIGITS, LABELS)
    assert [(i.candidate, i.score, i.critique) for i in got.items] == [
        ("A", 40.0, "A must be in 100!"),
    ]
    assert [(d.candidate, d.reason) for d in got.dropped] == [("B", "missing score")]
    assert got.repaired is True


def test_truncated_critique_keeps_the_scored_item() -> None:
    got = parse_reviews('[{"candidate": "A", "score": 15, "critique": "Step 3 div', LABELS)
    assert [(i.candidate, i.score, i.critique) for i in got.items] == [("A", 15.0, "Step 3 div")]


def test_one_object_per_candidate_is_gathered() -> None:
    text = (
        'A: {"candidate": "A", "score": 20, "critique": "ok"}\n'
        "B: {'candidate': 'B', 'score': -30, 'critique': 'wrong'}\n"
    )
    assert _pairs(text) == [("A", 20.0), ("B", -30.0)]


def test_bad_labels_raise_config_error() -> None:
    for labels in ([], ["A", "A"], ["A", " "]):
        with pytest.raises(ConfigError, match="labels"):
            parse_reviews("{}", labels)


def test_smollm2_schema_echo_review_drops_all() -> None:
    got = parse_reviews(SMOLLM2_SCHEMA_ECHO_REVIEW, LABELS)
    assert got.items == []
    assert [(d.candidate, d.reason) for d in got.dropped] == [
        ("<label>", "unknown label <label>"), ("12", "unknown label 12"),
    ]


def test_smollm2_truncated_schema_review_keeps_first() -> None:
    got = parse_reviews(SMOLLM2_TRUNCATED_SCHEMA_REVIEW, LABELS)
    assert [(i.candidate, i.score) for i in got.items] == [("A", 40.0)]
    assert [(d.candidate, d.reason) for d in got.dropped] == [(None, "missing candidate")]


def test_smollm2_mismatched_brackets_review() -> None:
    assert _pairs(SMOLLM2_MISMATCHED_BRACKETS) == [("A", 40.0), ("B", 60.0), ("C", 20.0)]
    assert _dropped(SMOLLM2_MISMATCHED_BRACKETS) == [
        ("D", "unknown label D"), ("I", "unknown label I"), (None, "missing candidate"),
    ]


def test_smollm2_review_with_extra_top_level_score() -> None:
    assert _pairs(SMOLLM2_FENCE_WITH_EXTRA_SCORE) == [("A", 40.0), ("B", -60.0)]


def test_smollm2_garbled_review_invents_nothing() -> None:
    got = parse_reviews(SMOLLM2_GARBLED_REVIEW, LABELS)
    assert got.items == []
    assert got.dropped


# --- Properties ---------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**18), max_value=10**18)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_json_objects = st.dictionaries(st.text(max_size=10), _json_values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(obj=_json_objects, indent=st.sampled_from([None, 2]), ascii_only=st.booleans())
def test_extract_json_round_trips_arbitrary_objects(
    obj: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    dumped = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    got = extract_json(dumped)
    assert got.value == obj
    assert got.repaired is False
    assert extract_json(f"Here is the JSON:\n{dumped}\nDone.").value == obj
    assert extract_json(f"```json\n{dumped}\n```\nThanks").value == obj


@settings(max_examples=300, deadline=None)
@given(
    s=st.text(alphabet="0123456789,.$-+ xy=\\{}fracboxedt/%*'\"", max_size=20),
    kind=st.sampled_from(["math", "code", "text"]),
)
def test_normalize_final_is_idempotent(s: str, kind: str) -> None:
    once = normalize_final(s, kind)  # type: ignore[arg-type]
    assert normalize_final(once, kind) == once  # type: ignore[arg-type]


_critiques = st.text(max_size=25)
_score_values = st.one_of(
    st.integers(min_value=-150, max_value=150),
    st.floats(min_value=-150, max_value=150, allow_nan=False).map(lambda f: round(f, 2)),
    st.integers(min_value=-100, max_value=100).map(lambda n: f"{n:+d}"),
    st.integers(min_value=0, max_value=100).map(lambda n: f"{n}/100"),
)


@st.composite
def _review_replies(draw: st.DrawFn) -> tuple[str, dict[str, float]]:
    labels = draw(st.lists(st.sampled_from(["A", "B", "C", "D"]), min_size=1, unique=True))
    scores = {lab: draw(_score_values) for lab in labels}
    critiques = {lab: draw(_critiques) for lab in labels}
    cand_key = draw(st.sampled_from(["candidate", "label", "candidate_id"]))
    score_key = draw(st.sampled_from(["score", "endorsement_weight", "weight"]))
    shape = draw(st.sampled_from(["wrapped", "list", "keyed"]))
    items = []
    for lab in labels:
        fields = [(cand_key, lab), (score_key, scores[lab]), ("critique", critiques[lab])]
        if shape == "keyed":
            fields = fields[1:]
        items.append(dict(draw(st.permutations(fields))))
    payload: Any
    if shape == "wrapped":
        payload = {"reviews": items}
    elif shape == "list":
        payload = items
    else:
        payload = dict(zip(labels, items, strict=True))
    text = json.dumps(payload, indent=draw(st.sampled_from([None, 2])))
    if draw(st.booleans()):
        text = "Here are my reviews:\n```json\n" + text + "\n```\nThanks!"
    expected = {lab: _as_float(scores[lab]) for lab in labels}
    return text, expected


def _as_float(score: float | str) -> float:
    return float(score.split("/")[0]) if isinstance(score, str) else float(score)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=_review_replies())
def test_truncated_reviews_never_raise_nor_invent_scores(
    reply: tuple[str, dict[str, float]],
) -> None:
    text, expected = reply
    labels = ["A", "B", "C", "D"]
    full = parse_reviews(text, labels)
    assert {i.candidate: i.score for i in full.items} == expected
    assert full.dropped == []
    for cut in range(len(text)):
        got = parse_reviews(text[:cut], labels)
        for item in got.items:
            assert item.score is not None and math.isfinite(item.score)
            assert item.score == expected[item.candidate], (text[:cut], item)


# --- kind "auto", free-form proposals, cut-off replies (protocol v2) ----------------------------


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("17 * 23 = 391, so it is \\boxed{391}.", "391"),
        ("The answer is 391 because 17 * 23 = 391.", "391"),
        ("17 * 23 = 391", "391"),
        ("391", "391"),
        ("Paris is the capital of France, of course.", "Paris is the capital of France"),
        ("Use this:\n```python\nprint(17 * 23)\n```", "print(17 * 23)"),
        ("\\boxed{070}", "70"),
    ],
)
def test_kind_auto_extracts_a_comparable_final(text: str, final: str) -> None:
    assert extract_final(text, "auto") == final


def test_answer_keys_compare_text_without_case_and_numbers_canonically() -> None:
    assert answer_key("Paris", "auto") == answer_key("paris.", "auto") == "paris"
    assert answer_key("\\boxed{070}", "auto") == answer_key("70", "auto") == "70"
    assert answer_key("Paris", "text") == "paris"
    assert answer_key("12.0", "math") == "12"
    assert answer_key(None, "auto") is None and answer_key("  ", "math") is None
    for s in ("\\boxed{391}", "17 apples", "x^2 + 1", "def f():\n    return 1"):
        once = normalize_final(s, "auto")
        assert normalize_final(once, "auto") == once  # a fixed point


def test_free_proposal_splits_the_work_from_the_final_paragraph() -> None:
    text = "Multiply.\n\n17 * 20 = 340 and 17 * 3 = 51.\n\nSo the answer is \\boxed{391}."
    parsed = parse_free_proposal(text, "math")
    assert parsed.reasoning == "Multiply.\n\n17 * 20 = 340 and 17 * 3 = 51."
    assert parsed.answer == "So the answer is \\boxed{391}."
    assert (parsed.final, parsed.error) == ("391", None)
    code = parse_free_proposal("Idea first.\n\n```python\nprint(1)\n```\nDone.", "code")
    assert code.final == "print(1)" and code.reasoning == "Idea first."
    bare = parse_free_proposal("It is 12, I think", "math")
    assert bare.final == "12" and "no final-answer marker" in (bare.error or "")
    # A model that answers JSON anyway is read as JSON.
    as_json = parse_free_proposal('{"reasoning": "r", "answer": "\\\\boxed{5}"}', "math")
    assert (as_json.reasoning, as_json.final) == ("r", "5")
    assert parse_free_proposal("   ", "math").error == "empty reply"


def test_a_cut_off_reply_keeps_only_finals_whose_end_is_certain() -> None:
    assert complete_final("so the answer is 39", "math") is None  # "391" was cut
    assert complete_final("so \\boxed{391} and then I che", "math") == "391"
    assert complete_final("\\boxed{39", "math") is None
    assert complete_final("```python\nprint(1)\n```\nand also", "code") == "print(1)"
    assert complete_final("```python\nprint(1", "code") is None
    assert complete_final("Paris.\nBecause the", "text") == "Paris"
    assert complete_final("Par", "text") is None
    assert complete_final("The answer is 7.\nBecause", "auto") == "7"
