import json

import pytest

from mlx_ttsi.errors import ToolsError
from mlx_ttsi.tools import check_call, load_tools, parse_calls, parse_tools


def test_accepts_openai_and_bare_specs(tools):
    assert [t.name for t in tools] == ["get_weather", "set_alarm", "list_alarms"]
    assert tools[0].required == ["city"]
    assert tools[2].parameters == {"type": "object", "properties": {}}
    assert tools[0].as_openai()["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    "specs, message",
    [
        ([], "empty"),
        ("nope", "must be a JSON list"),
        ([42], "not a JSON object"),
        ([{"description": "no name"}], "no valid name"),
        ([{"name": "has space"}], "no valid name"),
        ([{"name": "a"}, {"name": "a"}], "appears twice"),
        ([{"name": "a", "parameters": {"type": 5}}], "invalid parameters schema"),
        ([{"name": "a", "parameters": {"type": "string"}}], "must describe an object"),
        ([{"type": "retrieval"}], "only 'function'"),
    ],
)
def test_rejects_malformed_specs_with_a_clear_message(specs, message):
    with pytest.raises(ToolsError, match=message):
        parse_tools(specs)


def test_load_tools_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(ToolsError, match="not found"):
        load_tools(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x",}]')
    with pytest.raises(ToolsError, match="not valid JSON"):
        load_tools(bad)


def test_check_call_validates_against_the_schema(tools):
    assert check_call({"name": "get_weather", "arguments": {"city": "Paris"}}, tools) is None
    assert "unknown tool" in check_call({"name": "fly", "arguments": {}}, tools)
    assert "invalid arguments" in check_call({"name": "get_weather", "arguments": {}}, tools)
    assert "invalid arguments" in check_call({"name": "get_weather", "arguments": {"city": 3}}, tools)
    assert "invalid arguments" in check_call(
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "kelvin"}}, tools
    )


def test_parse_calls_finds_calls_in_messy_output():
    text = (
        'Sure! <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call> then '
        '```json\n{"function": {"name": "b", "arguments": "{\\"y\\": 2}"}}\n``` and {broken'
        ' [{"name": "c", "parameters": {}}]'
    )
    assert parse_calls(text) == [
        {"name": "a", "arguments": {"x": 1}},
        {"name": "b", "arguments": {"y": 2}},
        {"name": "c", "arguments": {}},
    ]
    assert parse_calls("no calls here") == []
    assert parse_calls(json.dumps({"name": "a", "arguments": "not json"})) == []
