"""A value another tool returns: that tool is called first (dependencies.py, Turn.provided_first)."""

from dataclasses import replace

from mlx_ttsi.dependencies import needed_provider, supplies
from mlx_ttsi.errors import ToolsError
from mlx_ttsi.tools import parse_tools

import pytest
from conftest import SCRIPTED_CALLS

GET_TOKEN = {
    "name": "get_user_token",
    "description": "Get the user's token.",
    "parameters": {
        "type": "object",
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        "required": ["username", "password"],
    },
    "x-returns": {"token": {"type": "str", "description": "The token of the user."}},
}
ADD_ALARM = {
    "name": "add_alarm",
    "description": "Add an alarm.",
    "parameters": {
        "type": "object",
        "properties": {"token": {"type": "string"}, "time": {"type": "string"}},
        "required": ["token", "time"],
    },
    "x-returns": {"status": {"type": "str"}},
}
REGISTER = {
    "name": "register_user",
    "description": "Register an account.",
    "parameters": {"type": "object", "properties": {"username": {"type": "string"}}},
    "outputSchema": {"type": "object", "properties": {"token": {"type": "string"}}},
}
DELETE = {"name": "DeleteAccount", "description": "Delete an account.", "x-returns": {"status": {"type": "str"}}}
RESET = {
    "name": "ForgotPassword",
    "parameters": {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]},
}
CONTEXT = "My username is foo and my password is bar42. Add an alarm at 7 am."
TOKEN_CALL = [{"name": "get_user_token", "arguments": {"username": "foo", "password": "bar42"}}]


def alarm(token):
    return [{"name": "add_alarm", "arguments": {"token": token, "time": "07:00"}}]


def test_a_tool_says_what_it_returns_by_x_returns_or_an_mcp_output_schema():
    tools = parse_tools([GET_TOKEN, ADD_ALARM, REGISTER, {"name": "ping"}])
    assert [tool.returns for tool in tools] == [("token",), ("status",), ("token",), ()]
    assert parse_tools(tools) == tools  # parsed Tools read again keep what they return
    assert "x-returns" not in tools[0].as_plain()  # the model's prompt is unchanged


@pytest.mark.parametrize(
    "field, value, message",
    [("x-returns", ["token"], "x-returns must be an object"), ("outputSchema", "token", "outputSchema must be")],
)
def test_a_malformed_returns_field_is_a_one_line_tools_error(field, value, message):
    with pytest.raises(ToolsError, match=message):
        parse_tools([{**GET_TOKEN, field: value}])


def test_the_provider_of_a_required_value_is_needed_until_a_tool_returning_it_was_called():
    tools = parse_tools([GET_TOKEN, ADD_ALARM, REGISTER])
    key, provider = needed_provider(alarm("foo"), tools, made=[])
    assert key == "token" and provider.name == "get_user_token"  # the first tool returning it
    assert needed_provider(alarm("foo"), tools, made=TOKEN_CALL) is None
    assert needed_provider(alarm("foo"), tools, made=[{"name": "register_user", "arguments": {}}]) is None
    assert needed_provider(TOKEN_CALL, tools, made=[]) is None  # its own inputs come from no tool
    assert needed_provider([], tools, made=[]) is None
    key, provider = needed_provider(alarm("foo"), parse_tools([REGISTER, ADD_ALARM, GET_TOKEN]), made=[])
    assert provider.name == "get_user_token"  # register_user returns a token too, but is not for getting one


def test_a_tool_that_returns_a_value_without_naming_it_is_no_provider():
    # DeleteAccount returns a `status`, ForgotPassword takes one ("Forgot Password"): never delete first
    tools = parse_tools([DELETE, RESET])
    assert needed_provider([{"name": "ForgotPassword", "arguments": {"status": "x"}}], tools, made=[]) is None


@pytest.mark.parametrize(
    "token, context, provider_call, expected",
    [
        ("foo", CONTEXT, TOKEN_CALL, True),  # the username passed as a token
        ("your_token", CONTEXT, TOKEN_CALL, True),  # a token no one gave
        ("abc123", CONTEXT + " My token is abc123.", TOKEN_CALL, False),  # the user gave the token
        ("foo", CONTEXT, [{"name": "get_user_token", "arguments": {"username": "foo", "password": "x"}}], False),
        ("foo", CONTEXT, [{"name": "add_alarm", "arguments": {"token": "foo", "time": "07:00"}}], False),
    ],
)
def test_the_provider_stands_for_the_call_only_when_the_conversation_holds_its_values(
    token, context, provider_call, expected
):
    provider = parse_tools([GET_TOKEN])[0]
    messages = [{"role": "user", "content": context}]
    assert supplies(provider_call, alarm(token), "token", provider, messages) is expected


def test_a_value_only_the_assistant_said_was_given_by_no_one():
    provider = parse_tools([GET_TOKEN])[0]
    asked = [{"role": "user", "content": CONTEXT}, {"role": "assistant", "content": "To do that I need your token."}]
    assert supplies(TOKEN_CALL, alarm("your-token"), "token", provider, asked)
    given = [*asked, {"role": "tool", "content": '{"token": "your-token"}'}]  # a tool did give it
    assert not supplies(TOKEN_CALL, alarm("your-token"), "token", provider, given)


@pytest.fixture
def consumer_first(monkeypatch):
    """The tiny model's name choice set to add_alarm, so the self-check meets a call that needs a token."""
    from mlx_ttsi.decoding import CallDecoder

    original = CallDecoder.name_choice

    def name_choice(self, prompt, tools):
        choice, scores = original(self, prompt, tools)
        return replace(choice, index=[t.name for t in tools].index("add_alarm")), scores

    monkeypatch.setattr(CallDecoder, "name_choice", name_choice)


@pytest.mark.parametrize(
    "made, supplied, first", [(False, True, "get_user_token"), (True, True, "add_alarm"), (False, False, "add_alarm")]
)
def test_the_self_check_answers_with_the_providers_call_when_it_supplies_the_value(
    tiny, monkeypatch, consumer_first, made, supplied, first
):
    from mlx_ttsi import turn
    from mlx_ttsi.agent import Agent

    monkeypatch.setattr(turn, "supplies", lambda *args: supplied)  # the tiny model's values are random
    messages = [{"role": "user", "content": CONTEXT}]
    if made:
        messages += [
            {"role": "assistant", "content": "", "tool_calls": TOKEN_CALL},
            {"role": "tool", "content": "{'token': 'z9x8'}"},
            {"role": "user", "content": "Go on."},
        ]
    heard = []
    answer = Agent(tiny).ask(
        messages=messages,
        tools=[GET_TOKEN, ADD_ALARM],
        mode="check",
        check_odds=0,
        progress=lambda phase, seconds, detail="": heard.append((phase, detail)),
    )
    assert [call["name"] for call in answer.label] == [first]
    assert answer.tool_calls == answer.label
    said = [detail for phase, detail in heard if phase == "first"]
    if first == "get_user_token":
        assert set(answer.label[0]["arguments"]) == {"username", "password"}  # decoded to its schema
        assert said == ["get_user_token, which returns the token that add_alarm takes"]  # told on stderr
    else:
        assert said == []


def test_the_readmes_account_tools_file_sends_add_alarm_to_get_user_token_first():
    from pathlib import Path

    from mlx_ttsi.tools import load_tools

    tools = load_tools(Path(__file__).resolve().parents[1] / "mlx_ttsi" / "examples" / "account_tools.json")
    add_alarm = [{"name": "AddAlarm", "arguments": {"token": "kim", "time": "2024-03-02 07:30:00"}}]
    key, provider = needed_provider(add_alarm, tools, made=[])
    assert (key, provider.name) == ("token", "GetUserToken")


def test_a_ttsi_answer_also_calls_the_provider_first(tiny, monkeypatch, consumer_first):
    from mlx_ttsi import turn
    from mlx_ttsi.agent import Agent

    monkeypatch.setattr(turn, "supplies", lambda *args: True)
    # the scripted writer's example calls of these tools (conftest.scripted_writer)
    monkeypatch.setitem(SCRIPTED_CALLS, "get_user_token", ['username": "kim", "password": "kim2024"}'])
    monkeypatch.setitem(SCRIPTED_CALLS, "add_alarm", ['token": "t8k2m9", "time": "07:30"}'])
    answer = Agent(tiny).ask(
        messages=[{"role": "user", "content": CONTEXT}],
        tools=[GET_TOKEN, ADD_ALARM],
        mode="ttsi",
        force=True,
        examples=1,
        epochs=1,
    )
    # trained or not, the adapted answer is checked (--check-after) and the dependency holds
    assert [call["name"] for call in answer.tool_calls] == ["get_user_token"]
