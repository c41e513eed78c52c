"""Steps for agent apps: building a format from what apps pass, checking steps against it, the
``nsed_step`` schema, and reading steps out of model replies.

Schemas are checked with ``jsonschema`` itself: a schema nsed builds must accept the steps it
describes and reject the others, whatever the app's schema looks like (pydantic ``$defs``
included).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, field_validator

from nsed.agents import prompts
from nsed.agents.step_parsing import parse_step
from nsed.errors import ConfigError, UnsupportedFormat
from nsed.results import Deliberation, Usage
from nsed.steps import FunctionTool, Step, ToolCall, canonical_json, step_format

MUL = {
    "type": "function",
    "function": {
        "name": "mul",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def mul(a: int, b: int = 1) -> int:
    """Multiply two integers.

    More detail that is part of the description too.
    """
    return a * b


class Point(BaseModel):
    x: float
    y: float


class Route(BaseModel):
    """A route through points."""

    name: str
    stops: list[Point]

    @field_validator("name")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


# --- building formats -------------------------------------------------------------------------


def test_plain_requests_have_no_step_format():
    assert step_format() is None
    assert step_format(tools=[MUL], tool_choice="none") is None
    assert step_format(response_format={"type": "text"}) is None


def test_tools_come_from_openai_dicts_functions_and_pydantic_classes():
    fmt = step_format(tools=[MUL, Route])
    assert fmt is not None and [t.name for t in fmt.tools] == ["mul", "Route"]
    assert step_format(tools=[mul]).tools[0].parameters["properties"]["a"]["type"] == "integer"
    by_function = FunctionTool.from_function(mul)
    assert by_function.description.startswith("Multiply two integers.")
    assert by_function.parameters["required"] == ["a"]
    assert by_function.parameters["properties"]["b"]["default"] == 1
    by_model = FunctionTool.from_model(Route)
    assert by_model.name == "Route" and "$defs" in by_model.parameters
    assert FunctionTool.from_function(mul).openai()["function"]["name"] == "mul"


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"tools": [MUL, MUL]}, "tools", "unique"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "function tools only"),
        ({"tools": [{"type": "function"}]}, "tools.0", '"function"'),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools.0.function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools.0.function.name",
            "1-64 letters",
        ),
        (
            {"tools": [{"function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools.0.function.parameters",
            "type 'object'",
        ),
        ({"tools": [MUL], "tool_choice": "sometimes"}, "tool_choice", "not in tools"),
        (
            {"tools": [MUL], "tool_choice": {"type": "function", "function": {"name": "add"}}},
            "tool_choice",
            "'add', which is not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "unknown"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "needs"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"$ref": "https://example.com/s.json"}},
                }
            },
            "response_format.json_schema.schema",
            "local references",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "object", "required": "x"}},
                }
            },
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        ({"response_model": dict}, "response_model", "pydantic model class"),
        (
            {"response_model": Point, "response_format": {"type": "json_object"}},
            "response_format",
            "not both",
        ),
        ({"tools": "mul"}, "tools", "list"),
    ],
)
def test_formats_nsed_cannot_honour_name_the_field(kwargs, param, words):
    with pytest.raises(UnsupportedFormat) as info:
        step_format(**kwargs)
    assert info.value.param == param
    assert words in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_tool_choice_narrows_the_tools_on_offer():
    add = {"type": "function", "function": {"name": "add"}}
    auto = step_format(tools=[MUL, add])
    named = step_format(
        tools=[MUL, add], tool_choice={"type": "function", "function": {"name": "add"}}
    )
    required = step_format(tools=[MUL, add], tool_choice="required")
    assert auto and named and required
    assert [t.name for t in auto.offered()] == ["mul", "add"] and auto.may_answer
    assert [t.name for t in named.offered()] == ["add"] and named.must_call
    assert required.must_call and not required.may_answer
    assert named.openai_tool_params()["tool_choice"] == {
        "type": "function",
        "function": {"name": "add"},
    }
    assert step_format(tools=[MUL], tool_choice="mul").function == "mul"
    serial = step_format(tools=[MUL], parallel_tool_calls=False)
    assert serial and serial.openai_tool_params()["parallel_tool_calls"] is False


# --- checking steps ---------------------------------------------------------------------------


def test_arguments_are_checked_against_the_tools_schema():
    fmt = step_format(tools=[MUL])
    assert fmt is not None
    assert fmt.check(Step(tool_calls=[call("mul", a=6, b=7)])).valid
    wrong_type = fmt.check(Step(tool_calls=[call("mul", a="six", b=7)]))
    assert wrong_type.errors == ["mul: a: 'six' is not of type 'integer'"]
    missing = fmt.check(Step(tool_calls=[call("mul", a=6)]))
    assert missing.errors == ["mul: 'b' is a required property"]
    extra = fmt.check(Step(tool_calls=[call("mul", a=6, b=7, c=1)]))
    assert "Additional properties" in extra.errors[0]
    unknown = fmt.check(Step(tool_calls=[call("div", a=6, b=7)]))
    assert unknown.errors == ["unknown tool 'div' (callable: mul)"]


def test_the_format_decides_between_answering_and_calling():
    serial = step_format(tools=[MUL], parallel_tool_calls=False)
    required = step_format(tools=[MUL], tool_choice="required")
    assert serial and required
    two = Step(tool_calls=[call("mul", a=1, b=2), call("mul", a=3, b=4)])
    assert serial.check(two).errors == ["2 tool calls, but only one is allowed"]
    assert required.check(Step(content="42")).errors == ["this step must call a tool"]
    assert serial.check(Step(content="42")).valid
    assert serial.check(Step(content="  ")).errors == ["the answer is empty"]
    no_tools = step_format(response_format={"type": "json_object"})
    assert no_tools is not None
    assert no_tools.check(Step(tool_calls=[call("mul", a=1, b=2)])).errors == [
        "no tool may be called in this step"
    ]


def test_json_answers_are_checked_by_schema_and_by_the_response_model():
    fmt = step_format(response_model=Route)
    assert fmt is not None and fmt.response_model is Route
    good = {"name": "north", "stops": [{"x": 1, "y": 2.5}]}
    assert fmt.check(Step(content=json.dumps(good), parsed=good)).valid
    bad_schema = fmt.check(Step(content="{}", parsed={"name": "north", "stops": [{"x": 1}]}))
    assert bad_schema.errors == ["stops/0: 'y' is a required property"]
    # The schema allows a blank name; the model's validator does not: still invalid.
    blank = {"name": " ", "stops": []}
    assert fmt.check(Step(content=json.dumps(blank), parsed=blank)).errors == [
        "Route: Value error, name must not be blank"
    ]
    obj = step_format(response_format={"type": "json_object"})
    assert obj is not None
    assert obj.check(Step(content="[1]", parsed=[1])).errors == [
        "the answer must be a JSON object, not an array"
    ]
    assert isinstance(fmt.as_object(good), Route)


def test_equal_steps_share_a_key():
    a = Step(tool_calls=[call("mul", a=6, b=7.0)])
    b = Step(tool_calls=[ToolCall(name="mul", arguments={"b": 7, "a": 6.0})])
    c = Step(tool_calls=[call("mul", a=6, b=8)])
    assert a.key() == b.key() == 'mul({"a":6,"b":7})'
    assert a.key() != c.key()
    two = Step(tool_calls=[call("f", x=1), call("g", y=2)])
    assert two.key() == Step(tool_calls=[call("g", y=2), call("f", x=1)]).key()
    assert Step(content="42").key() is None
    assert Step(content='{"b":1,"a":2}', parsed={"b": 1, "a": 2}).key() == '{"a":2,"b":1}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_the_key_ignores_the_order_of_arguments(arguments):
    reordered = dict(reversed(list(arguments.items())))
    assert canonical_json(arguments) == canonical_json(reordered)
    assert json.loads(canonical_json(arguments)) == arguments


def test_a_step_becomes_the_next_assistant_message():
    step = Step(tool_calls=[ToolCall(id="call_1", name="mul", arguments={"a": 6, "b": 7})])
    assert step.as_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "mul", "arguments": '{"a": 6, "b": 7}'},
            }
        ],
    }


def test_parsed_as_returns_the_model_also_from_a_stored_trace():
    result = Deliberation(
        id="r",
        question="q",
        kind="text",
        answer="{}",
        final=None,
        winner=None,
        stopped_because="max_rounds",
        rounds=[],
        usage=Usage(),
        agents=[],
        parsed=Point(x=1, y=2),
    )
    assert result.parsed_as(Point) == Point(x=1, y=2)
    loaded = Deliberation.model_validate_json(result.model_dump_json())
    assert loaded.parsed == {"x": 1.0, "y": 2.0}
    assert loaded.parsed_as(Point) == Point(x=1, y=2)
    with pytest.raises(ConfigError, match="no JSON answer"):
        result.model_copy(update={"parsed": None}).parsed_as(Point)


# --- the nsed_step schema ---------------------------------------------------------------------


def validator(fmt) -> Draft202012Validator:
    schema = prompts.step_schema(fmt)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_step_schema_accepts_exactly_the_steps_the_format_allows():
    both = validator(step_format(tools=[MUL, Route], response_model=Point))
    assert both.is_valid({"reasoning": "r", "answer": {"x": 1, "y": 2}})
    assert both.is_valid(
        {"reasoning": "r", "tool_calls": [{"name": "mul", "arguments": {"a": 1, "b": 2}}]}
    )
    route = {"name": "n", "stops": [{"x": 0, "y": 0}]}
    assert both.is_valid({"reasoning": "r", "tool_calls": [{"name": "Route", "arguments": route}]})
    bad_route = {"name": "n", "stops": [{"x": 0}]}  # Point.y missing: the $ref was followed
    assert not both.is_valid(
        {"reasoning": "r", "tool_calls": [{"name": "Route", "arguments": bad_route}]}
    )
    assert not both.is_valid({"reasoning": "r", "answer": {"x": 1}})
    assert not both.is_valid({"reasoning": "r", "tool_calls": [{"name": "div", "arguments": {}}]})
    forced = validator(step_format(tools=[MUL], tool_choice="required", parallel_tool_calls=False))
    assert not forced.is_valid({"reasoning": "r", "answer": "42"})
    one = {"name": "mul", "arguments": {"a": 1, "b": 2}}
    assert forced.is_valid({"reasoning": "r", "tool_calls": [one]})
    assert not forced.is_valid({"reasoning": "r", "tool_calls": [one, one]})
    text = validator(step_format(tools=[MUL]))
    assert text.is_valid({"reasoning": "r", "answer": "42"})


def test_a_self_referencing_answer_schema_keeps_its_references():
    tree = {
        "type": "object",
        "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
        "required": ["value"],
    }
    fmt = step_format(
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": tree}}
    )
    check = validator(fmt)
    assert check.is_valid({"reasoning": "", "answer": {"value": 1, "children": [{"value": 2}]}})
    assert not check.is_valid({"reasoning": "", "answer": {"value": 1, "children": [{"v": 2}]}})


# --- reading steps from replies ---------------------------------------------------------------


def test_parse_step_reads_nsed_calls_openai_calls_and_native_calls():
    fmt = step_format(tools=[MUL])
    assert fmt is not None
    nsed = parse_step(
        '{"reasoning": "need it", "tool_calls": [{"name": "mul", "arguments": {"a": 6, "b": 7}}]}',
        [],
        fmt,
    )
    assert nsed.reasoning == "need it" and nsed.step.valid
    assert nsed.step.tool_calls[0].arguments == {"a": 6, "b": 7}
    shaped = parse_step(
        'Sure!\n```json\n{"tool_calls": [{"type": "function", "function": {"name": "mul", '
        '"arguments": "{\\"a\\": 6, \\"b\\": 7}"}}]}\n```',
        [],
        fmt,
    )
    assert shaped.step.valid and shaped.step.tool_calls[0].arguments == {"a": 6, "b": 7}
    native = parse_step(
        "",
        [
            {
                "id": "x1",
                "type": "function",
                "function": {"name": "mul", "arguments": '{"a":6,"b":7}'},
            }
        ],
        fmt,
    )
    assert native.step.valid and native.step.tool_calls[0].id == "x1"
    broken = parse_step(
        "", [{"id": "x1", "function": {"name": "mul", "arguments": "not json"}}], fmt
    )
    assert "mul: the arguments are not a JSON object" in broken.step.errors


def test_parse_step_reads_answers_in_every_shape_it_can():
    tools = step_format(tools=[MUL])
    typed = step_format(response_model=Point)
    assert tools and typed
    assert parse_step('{"reasoning": "easy", "answer": "42"}', [], tools).step.content == "42"
    prose = parse_step("It is 42.", [], tools)
    assert prose.step.content == "It is 42." and prose.step.valid and prose.notes
    as_string = parse_step('{"reasoning": "", "answer": "{\\"x\\": 1, \\"y\\": 2}"}', [], typed)
    assert as_string.step.parsed == {"x": 1, "y": 2} and as_string.step.valid
    bare = parse_step('{"x": 1, "y": 2}', [], typed)
    assert bare.step.parsed == {"x": 1, "y": 2} and bare.step.valid
    assert "whole JSON object is the answer" in bare.notes[0]
    nothing = parse_step("I think the point is (1, 2).", [], typed)
    assert not nothing.step.valid and "unreadable step" in nothing.step.errors[0]
    wrong = parse_step('{"reasoning": "", "answer": {"x": "one", "y": 2}}', [], typed)
    assert wrong.step.errors == ["x: 'one' is not of type 'number'"]
