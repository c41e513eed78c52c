"""A chat conversation as the task a council deliberates on.

Agent apps send whole conversations: system instructions, earlier user and assistant turns,
assistant turns that called tools and the tools' results. The council answers the latest turn:
the last message must be a user message (the question) or tool results (continue from them).
Earlier turns become context in the task, tool calls and results written out faithfully (name,
arguments, call id); system and developer messages become the agents' system context. Used by
the Python API (``deliberate(messages, ...)``) and the server alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from nsed.agents import prompts
from nsed.config import format_validation_error
from nsed.errors import InvalidConversation


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message; fields beyond these (``refusal``, ``audio``...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class Conversation(BaseModel):
    """The task text and the system context (None: no system message) of a chat."""

    task: str
    system_context: str | None = None


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidConversation(
                f"messages[{index}] has a {part.type!r} content part; nsed accepts text only",
                param=f"messages.{index}.content",
            )
        texts.append(part.text)
    return "".join(texts)


def _calls(message: ChatMessage, index: int) -> list[tuple[str, str, str]]:
    """(id, name, arguments JSON) of an assistant message's tool calls."""
    calls = []
    for j, raw in enumerate(message.tool_calls or []):
        function = raw.get("function") if isinstance(raw, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InvalidConversation(
                f"messages[{index}].tool_calls[{j}] needs "
                '"function": {"name": ..., "arguments": "..."}',
                param=f"messages.{index}.tool_calls.{j}",
            )
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append((str(raw.get("id") or ""), function["name"], arguments))
    return calls


def as_messages(messages: Sequence[ChatMessage | Mapping[str, Any]]) -> list[ChatMessage]:
    """Validated messages; InvalidConversation names the first one at fault."""
    if isinstance(messages, str | bytes) or not messages:
        raise InvalidConversation("messages must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if isinstance(message, ChatMessage):
            out.append(message)
            continue
        try:
            out.append(ChatMessage.model_validate(message))
        except ValidationError as exc:
            raise InvalidConversation(
                f"messages[{i}]: {format_validation_error(exc)}", param=f"messages.{i}"
            ) from None
    return out


def render_conversation(messages: Sequence[ChatMessage | Mapping[str, Any]]) -> Conversation:
    """The task (last user message or tool results, with earlier turns as context) of a chat."""
    chat = as_messages(messages)
    system: list[str] = []
    turns: list[str] = []
    names_by_id: dict[str, str] = {}
    latest_user: str | None = None
    for i, message in enumerate(chat):
        text = _text(message, i)
        if message.role in ("system", "developer"):
            if text.strip():
                system.append(text.strip())
            continue
        if message.role == "assistant" and message.tool_calls:
            calls = _calls(message, i)
            names_by_id.update({cid: name for cid, name, _ in calls if cid})
            turns.append(prompts.tool_calls_turn(text, calls))
        elif message.role in ("tool", "function"):
            name = message.name or names_by_id.get(message.tool_call_id or "")
            turns.append(prompts.tool_result_turn(name, message.tool_call_id, text))
        else:
            turns.append(prompts.conversation_turn(message.role, text, name=message.name))
            if message.role == "user":
                latest_user = text
    last = next((m for m in reversed(chat) if m.role not in ("system", "developer")), None)
    if last is None or last.role not in ("user", "tool", "function"):
        raise InvalidConversation(
            "the last non-system message must be a user message (the question the council "
            "deliberates on) or a tool result (the council continues from it)",
            param="messages",
        )
    context = "\n\n".join(system) or None
    if last.role == "user":
        question = _text(last, len(chat) - 1)
        if len(turns) == 1:
            return Conversation(task=question, system_context=context)
        task = prompts.conversation_task(turns[:-1], question, after_tools=False)
        return Conversation(task=task, system_context=context)
    task = prompts.conversation_task(turns, latest_user, after_tools=True)
    return Conversation(task=task, system_context=context)
