"""A chat as the council's task: earlier turns as context, tool calls and results written out."""

from __future__ import annotations

import pytest

from nsed.agents.conversation import render_conversation
from nsed.errors import InvalidConversation

CALL = {"id": "call_1", "type": "function", "function": {"name": "mul", "arguments": '{"a": 6}'}}


def test_a_single_user_message_is_the_task_and_system_messages_are_context():
    chat = render_conversation(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric units."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "How far "},
                    {"type": "text", "text": "is it?"},
                ],
            },
        ]
    )
    assert chat.task == "How far is it?"
    assert chat.system_context == "Be brief.\n\nUse metric units."


def test_earlier_turns_are_context_before_the_latest_user_message():
    chat = render_conversation(
        [
            {"role": "user", "content": "Hi", "name": "ann"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": " What is 6 times 7? "},
        ]
    )
    assert chat.task == (
        "Conversation so far (context):\nUser (ann): Hi\n\nAssistant: Hello!\n\n"
        "Latest user message (answer this):\nWhat is 6 times 7?"
    )
    assert chat.system_context is None


def test_tool_calls_and_results_are_written_out_and_the_council_continues_from_them():
    chat = render_conversation(
        [
            {"role": "user", "content": "What is 6 times 7?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "function", "name": "legacy", "content": "ok"},
        ]
    )
    assert chat.task == (
        "Conversation so far (context):\nUser: What is 6 times 7?\n\n"
        'Assistant called tools:\n- mul({"a": 6}) [call id call_1]\n\n'
        "Tool result (mul, call id call_1): 42\n\nTool result (legacy): ok\n\n"
        "The tools called in the last assistant turn have returned their results (above). "
        "Continue from them: take the next step for the latest user message:\n"
        "What is 6 times 7?"
    )
    only_tools = render_conversation(
        [
            {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
    )
    assert "Assistant: Let me check.\nAssistant called tools:" in only_tools.task
    assert only_tools.task.endswith("Continue from them: take the next step.")


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([], "messages", "non-empty list"),
        ([{"role": "robot", "content": "hi"}], "messages.0", "role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages.0.content",
            "text only",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c"}]}, {"role": "tool", "content": "1"}],
            "messages.0.tool_calls.0",
            '"function"',
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "messages",
            "last non-system message",
        ),
        ([{"role": "system", "content": "only rules"}], "messages", "last non-system message"),
    ],
)
def test_chats_the_council_cannot_answer_name_the_message(messages, param, words):
    with pytest.raises(InvalidConversation) as info:
        render_conversation(messages)
    assert info.value.param == param and words in str(info.value)
