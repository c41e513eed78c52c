"""What an agent app asks of the council and gets back: tools, tool calls, steps, JSON answers.

An app that plans with tools (LangChain, the OpenAI Agents SDK, LlamaIndex...) asks its model
for the *next step*: the final answer, or tool calls whose results it sends back in the next
turn. An app that feeds typed output to code asks for an answer that is JSON valid against a
schema. ``StepFormat`` says which shape the council's step must take; ``Step`` is one such step
(an agent's proposal, or the council's chosen one). Arguments and answers are checked with a
real JSON-Schema validator (``jsonschema``), so that a step that does not validate is marked as
such (``Step.errors``) and can never be the council's answer.

Ground layer: results, the agents, the orchestrator and the server all use these values.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_type_hints

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from nsed.errors import UnsupportedFormat

ToolChoiceMode = Literal["auto", "none", "required", "function"]
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


# --- Values -----------------------------------------------------------------------------------


class FunctionTool(BaseModel):
    """A function the app can run for the council: its name, purpose and argument schema."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(_EMPTY_PARAMETERS))
    strict: bool = False

    def openai(self) -> dict[str, Any]:
        """The tool as the OpenAI API lists it (``{"type": "function", "function": {...}}``)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}

    @classmethod
    def from_model(cls, model: type[BaseModel]) -> FunctionTool:
        """A tool whose arguments are ``model``'s fields (the LangChain/OpenAI-SDK habit)."""
        return cls(
            name=model.__name__,
            description=inspect.getdoc(model) or "",
            parameters=model.model_json_schema(),
        )

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> FunctionTool:
        """A tool from a Python function: its name, docstring and annotated parameters."""
        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        for name, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise UnsupportedFormat(
                    f"tool {fn.__name__!r} takes *{name}: give it named parameters only",
                    param="tools",
                )
            default = ... if param.default is param.empty else param.default
            fields[name] = (hints.get(name, Any), default)
        schema = create_model(fn.__name__, **fields).model_json_schema()
        schema.pop("title", None)
        return cls(name=fn.__name__, description=inspect.getdoc(fn) or "", parameters=schema)


class ToolCall(BaseModel):
    """One call of a tool, with its arguments parsed (``arguments_json`` is the wire form)."""

    id: str = ""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def openai(self) -> dict[str, Any]:
        """The call as an OpenAI assistant message carries it."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json()},
        }


class Step(BaseModel):
    """The next step of an agent: a final answer (``content``) or ``tool_calls``.

    Under a JSON answer format, ``content`` is the JSON text and ``parsed`` its value.
    ``errors`` says why the step does not satisfy its format; a step with errors never wins.
    """

    content: str | None = None
    parsed: Any = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    formatted: bool = Field(
        default=False, description="restated by one formatting call, not as first proposed"
    )

    @property
    def kind(self) -> Literal["answer", "tool_calls"]:
        return "tool_calls" if self.tool_calls else "answer"

    @property
    def valid(self) -> bool:
        return not self.errors

    def key(self) -> str | None:
        """What equal steps share: the same functions with equal arguments, or equal JSON.

        None for a free-text answer (its checkable ``final`` is extracted as usual).
        """
        if self.tool_calls:
            calls = sorted(f"{c.name}({canonical_json(c.arguments)})" for c in self.tool_calls)
            return "; ".join(calls)
        if self.parsed is not None:
            return canonical_json(self.parsed)
        return None

    def as_message(self) -> dict[str, Any]:
        """The assistant message an app appends to the conversation before its next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.openai() for c in self.tool_calls]
        return message


class AnswerFormat(BaseModel):
    """The JSON shape a final answer must take (``response_format`` json_object/json_schema)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["json_object", "json_schema"]
    name: str = "answer"
    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool = False


class StepFormat(BaseModel):
    """The shape the council's step must take: which tools it may call, and how it answers.

    Built (and checked) by :func:`step_format`; ``None`` there means a plain deliberation.
    """

    model_config = ConfigDict(frozen=True)

    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: ToolChoiceMode = "auto"
    function: str | None = Field(default=None, description="the tool tool_choice names")
    parallel_tool_calls: bool = True
    answer: AnswerFormat | None = None
    _model: type[BaseModel] | None = PrivateAttr(default=None)

    @property
    def response_model(self) -> type[BaseModel] | None:
        """The pydantic model the answer must validate into (``response_model=``), if any."""
        return self._model

    def offered(self) -> list[FunctionTool]:
        """The tools this step may call (all, one named tool, or none)."""
        if self.tool_choice == "none":
            return []
        if self.tool_choice == "function":
            return [t for t in self.tools if t.name == self.function]
        return list(self.tools)

    @property
    def must_call(self) -> bool:
        return self.tool_choice in ("required", "function") and bool(self.offered())

    @property
    def may_answer(self) -> bool:
        return not self.must_call

    def openai_tool_params(self) -> dict[str, Any]:
        """``tools``, ``tool_choice`` and ``parallel_tool_calls`` for native tool calling."""
        params: dict[str, Any] = {"tools": [t.openai() for t in self.offered()]}
        if self.tool_choice == "function":
            params["tool_choice"] = {"type": "function", "function": {"name": self.function}}
        elif self.tool_choice == "required":
            params["tool_choice"] = "required"
        if not self.parallel_tool_calls:
            params["parallel_tool_calls"] = False
        return params

    def check(self, step: Step) -> Step:
        """``step`` with ``errors`` listing every way it breaks this format (none: valid)."""
        errors: list[str] = []
        if step.tool_calls:
            offered = {t.name: t for t in self.offered()}
            if not offered:
                errors.append("no tool may be called in this step")
            if len(step.tool_calls) > 1 and not self.parallel_tool_calls:
                errors.append(f"{len(step.tool_calls)} tool calls, but only one is allowed")
            for call in step.tool_calls:
                tool = offered.get(call.name)
                if tool is None:
                    if offered:
                        names = ", ".join(offered)
                        errors.append(f"unknown tool {call.name!r} (callable: {names})")
                    continue
                errors += [
                    f"{call.name}: {e}" for e in schema_errors(tool.parameters, call.arguments)
                ]
        else:
            if self.must_call:
                errors.append("this step must call a tool")
            errors += self._answer_errors(step)
        return step.model_copy(update={"errors": errors})

    def _answer_errors(self, step: Step) -> list[str]:
        if self.answer is None:
            return [] if (step.content or "").strip() else ["the answer is empty"]
        if step.parsed is None and step.content is None:
            return ["the answer is not JSON"]
        value = step.parsed
        if self.answer.type == "json_object" and not isinstance(value, dict):
            return [f"the answer must be a JSON object, not {_json_type(value)}"]
        errors = schema_errors(self.answer.json_schema, value)
        if not errors and self._model is not None:
            try:
                self._model.model_validate(value)
            except ValidationError as exc:
                errors = [f"{self._model.__name__}: {e['msg']}" for e in exc.errors()[:3]]
        return errors

    def as_object(self, value: Any) -> Any:
        """The answer as the app wants it: an instance of ``response_model``, else the JSON."""
        return value if self._model is None else self._model.model_validate(value)


# --- Building a format from what an app passes ------------------------------------------------

ToolLike = FunctionTool | Mapping[str, Any] | type[BaseModel] | Callable[..., Any]


def as_tool(tool: ToolLike, index: int = 0) -> FunctionTool:
    """A FunctionTool from an OpenAI tool dict, a pydantic model class or a Python function."""
    param = f"tools.{index}"
    if isinstance(tool, FunctionTool):
        built = tool
    elif isinstance(tool, Mapping):
        built = _tool_from_dict(tool, param)
    elif isinstance(tool, type) and issubclass(tool, BaseModel):
        built = FunctionTool.from_model(tool)
    elif callable(tool):
        built = FunctionTool.from_function(tool)
    else:
        raise UnsupportedFormat(
            f"{param} is a {type(tool).__name__}; pass an OpenAI tool dict "
            '({"type": "function", "function": {...}}), a pydantic model class or a function',
            param=param,
        )
    if not _TOOL_NAME.fullmatch(built.name):
        raise UnsupportedFormat(
            f"{param}: the tool name {built.name!r} must be 1-64 letters, digits, _ or -",
            param=f"{param}.function.name",
        )
    check_schema(built.parameters, f"{param}.function.parameters")
    if built.parameters.get("type", "object") != "object":
        raise UnsupportedFormat(
            f"{param}: a tool's parameters must be a JSON Schema of type 'object'",
            param=f"{param}.function.parameters",
        )
    return built


def _tool_from_dict(tool: Mapping[str, Any], param: str) -> FunctionTool:
    kind = tool.get("type", "function")
    if kind != "function":
        raise UnsupportedFormat(
            f"{param} has type {kind!r}; nsed supports function tools only", param=f"{param}.type"
        )
    function = tool.get("function", tool)
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise UnsupportedFormat(
            f'{param} needs "function": {{"name": ..., "parameters": {{...}}}}', param=param
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = dict(_EMPTY_PARAMETERS)
    if not isinstance(parameters, Mapping):
        raise UnsupportedFormat(
            f"{param}.function.parameters must be a JSON Schema object",
            param=f"{param}.function.parameters",
        )
    return FunctionTool(
        name=function["name"],
        description=str(function.get("description") or ""),
        parameters=dict(parameters),
        strict=bool(function.get("strict") or False),
    )


def _answer_format(response_format: Any) -> AnswerFormat | None:
    if response_format is None or isinstance(response_format, AnswerFormat):
        return response_format
    if not isinstance(response_format, Mapping):
        raise UnsupportedFormat(
            "response_format must be an object such as "
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
            param="response_format",
        )
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return AnswerFormat(type="json_object")
    if kind != "json_schema":
        raise UnsupportedFormat(
            f"response_format type {kind!r} is unknown; use text, json_object or json_schema",
            param="response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
        raise UnsupportedFormat(
            'response_format json_schema needs "json_schema": {"name": ..., "schema": {...}}',
            param="response_format.json_schema",
        )
    schema = dict(spec.get("schema") or {})
    check_schema(schema, "response_format.json_schema.schema")
    return AnswerFormat(
        type="json_schema",
        name=str(spec.get("name") or "answer"),
        json_schema=schema,
        strict=bool(spec.get("strict") or False),
    )


def _tool_choice(choice: Any, names: list[str]) -> tuple[ToolChoiceMode, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice in ("auto", "none", "required"):
            if choice == "required" and not names:
                raise UnsupportedFormat(
                    'tool_choice "required" needs tools: list them in tools',
                    param="tool_choice",
                )
            return choice, None  # type: ignore[return-value]
        name: Any = choice
    elif isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    else:
        name = None
    if not isinstance(name, str):
        raise UnsupportedFormat(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in names:
        raise UnsupportedFormat(
            f"tool_choice names the function {name!r}, which is not in tools "
            f"({', '.join(names) or 'none given'})",
            param="tool_choice",
        )
    return "function", name


def step_format(
    *,
    tools: Sequence[ToolLike] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    response_format: Any = None,
    response_model: type[BaseModel] | None = None,
) -> StepFormat | None:
    """The format these agent-app options ask for; None for a plain deliberation.

    ``tool_choice`` is "auto" (default), "none" (behaves as if no tools were given),
    "required", a function name or ``{"type": "function", "function": {"name": ...}}``;
    ``response_format`` is the OpenAI dict (text, json_object, json_schema);
    ``response_model`` a pydantic class whose schema the answer must satisfy (the result's
    ``parsed`` is then an instance). Raises UnsupportedFormat, naming the field, otherwise.
    """
    if tools is not None and (isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence)):
        raise UnsupportedFormat("tools must be a list of tools", param="tools")
    built = [as_tool(t, i) for i, t in enumerate(tools or [])]
    names = [t.name for t in built]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UnsupportedFormat(
            f"tool names must be unique; repeated: {', '.join(repeated)}", param="tools"
        )
    mode, function = _tool_choice(tool_choice, names)
    if response_model is not None:
        if response_format is not None:
            raise UnsupportedFormat(
                "pass either response_model or response_format, not both",
                param="response_format",
            )
        if not (isinstance(response_model, type) and issubclass(response_model, BaseModel)):
            raise UnsupportedFormat(
                "response_model must be a pydantic model class", param="response_model"
            )
        answer: AnswerFormat | None = AnswerFormat(
            type="json_schema",
            name=response_model.__name__,
            json_schema=response_model.model_json_schema(),
        )
    else:
        answer = _answer_format(response_format)
    if mode == "none" or not built:
        built, mode, function = [], "auto", None
    if not built and answer is None:
        return None
    fmt = StepFormat(
        tools=built,
        tool_choice=mode,
        function=function,
        parallel_tool_calls=True if parallel_tool_calls is None else bool(parallel_tool_calls),
        answer=answer,
    )
    fmt._model = response_model
    return fmt


# --- JSON Schema ------------------------------------------------------------------------------


def check_schema(schema: Any, param: str) -> None:
    """Refuse, naming ``param``, a schema nsed cannot check: invalid, or with remote refs."""
    if not isinstance(schema, Mapping):
        raise UnsupportedFormat(f"{param} must be a JSON Schema object", param=param)
    validator = validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise UnsupportedFormat(
            f"{param} is not a valid JSON Schema (at {where}: {exc.message})", param=param
        ) from None
    remote = sorted(_remote_refs(schema))
    if remote:
        raise UnsupportedFormat(
            f"{param} refers to {remote[0]!r}; nsed resolves only local references "
            '("#/$defs/..."): inline that schema',
            param=param,
        )


def _remote_refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            found.add(ref)
        for value in node.values():
            found |= _remote_refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _remote_refs(value)
    return found


def schema_errors(schema: Mapping[str, Any], value: Any, limit: int = 3) -> list[str]:
    """Why ``value`` is not valid against ``schema`` (empty: it is), at most ``limit`` reasons."""
    validator = validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    out = []
    for error in errors[:limit]:
        where = "/".join(str(p) for p in error.absolute_path)
        out.append(f"{where}: {error.message}" if where else error.message)
    return out


def canonical_json(value: Any) -> str:
    """One text per JSON value: sorted keys, no spaces, integral floats as integers."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


__all__ = [
    "AnswerFormat",
    "FunctionTool",
    "Step",
    "StepFormat",
    "ToolCall",
    "ToolLike",
    "as_tool",
    "canonical_json",
    "check_schema",
    "schema_errors",
    "step_format",
]
