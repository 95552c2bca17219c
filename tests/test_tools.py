import json
import time

from mlx_ttsi.errors import ToolsError
from mlx_ttsi.tools import Tool, check_call, load_tools, parse_calls, parse_tools

import pytest


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


def test_a_schema_ref_outside_the_schema_is_refused_and_never_fetched(trap, tmp_path):
    (tmp_path / "s.json").write_text('{"type": "string"}')
    for ref in (trap.url, (tmp_path / "s.json").as_uri(), "file:///dev/zero", "other.json"):
        spec = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": ref}}}}
        with pytest.raises(ToolsError, match="points outside the schema"):
            parse_tools([spec])
    remote = Tool("f", "", {"type": "object", "properties": {"x": {"$ref": trap.url}}})  # made without parse_tools
    assert "does not resolve" in check_call({"name": "f", "arguments": {"x": 5}}, [remote])
    assert trap.hits == []


def test_local_schema_refs_resolve_and_bad_ones_get_a_clear_message():
    local = {"type": "object", "$defs": {"city": {"type": "string"}}, "properties": {"city": {"$ref": "#/$defs/city"}}}
    tools = parse_tools([{"name": "f", "parameters": local}])
    assert check_call({"name": "f", "arguments": {"city": "Oslo"}}, tools) is None
    assert "invalid arguments" in check_call({"name": "f", "arguments": {"city": 5}}, tools)
    for unresolved in (
        {"type": "object", "$ref": "#/$defs/nope"},
        {"type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}},
    ):
        with pytest.raises(ToolsError, match="does not resolve"):
            parse_tools([{"name": "f", "parameters": unresolved}])
    anchored = {
        "type": "object",
        "$defs": {"c": {"$anchor": "city", "type": "string"}},
        "properties": {"x": {"$ref": "#city"}},
    }
    assert "invalid arguments" in check_call(
        {"name": "f", "arguments": {"x": 5}}, parse_tools([{"name": "f", "parameters": anchored}])
    )
    with pytest.raises(ToolsError, match="loop"):
        parse_tools([{"name": "f", "parameters": {"type": "object", "$ref": "#"}}])
    looped = parse_tools(
        [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/properties/x"}}}}]
    )
    assert "loop" in check_call({"name": "f", "arguments": {"x": 1}}, looped)


def nested(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_a_schema_or_file_nested_too_deep_is_refused_before_anything_recurses(tmp_path):
    assert parse_tools([{"name": "f", "parameters": nested(20)}])
    with pytest.raises(ToolsError, match="nests over 64 levels"):
        parse_tools([{"name": "f", "parameters": nested(150)}])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ToolsError, match="nests over 64 levels"):
        load_tools(deep)


def test_a_backtracking_pattern_is_checked_in_bounded_time():
    spec = {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^(a|aa)+$"}},
            "patternProperties": {"^(a|aa)+$": {"type": "integer"}},
        },
    }
    tools = parse_tools([spec])
    assert check_call({"name": "f", "arguments": {"code": "aaaa"}}, tools) is None
    started = time.perf_counter()
    assert "does not match" in check_call({"name": "f", "arguments": {"code": "a" * 36 + "b"}}, tools)
    assert check_call({"name": "f", "arguments": {"a" * 36 + "b": "x"}}, tools) is None  # the key is not matched
    assert time.perf_counter() - started < 1
    with pytest.raises(ToolsError, match="invalid parameters schema"):
        parse_tools([{"name": "f", "parameters": {"type": "object", "properties": {"x": {"pattern": "("}}}}])


@pytest.mark.parametrize(
    "schema, value, free",
    [
        ({}, "Paris", False),  # untyped: its value can be anything (see free_value's docstring)
        ({"description": "a date"}, "2020-01-01", False),
        (True, "Paris", False),  # a schema that is not an object: untyped
        ({"type": "string", "const": "celsius"}, "celsius", False),
        ({"const": 3}, 3, False),
        ({"type": "string", "enum": ["celsius"]}, "celsius", False),  # one option: fixed by the schema
        ({"type": "string", "enum": ["celsius", "fahrenheit"]}, "celsius", False),
        ({"type": "string"}, "Paris", True),
        ({"type": ["string", "null"]}, "Paris", True),
        ({"type": ["null", "boolean", "string"]}, "Paris", True),  # any type but null counts
        ({"type": "number"}, 2.5, True),
        ({"type": "integer"}, 3, True),
        ({"type": "boolean"}, True, False),
        ({"type": "integer"}, True, False),  # a boolean value is never free
        ({"type": "array", "items": {"type": "string"}}, ["Paris"], False),
        ({"type": "string"}, ["Paris"], False),  # nor an array or object value
        ({"type": "object"}, {"city": "Paris"}, False),
    ],
)
def test_one_free_value_rule_for_the_self_check_and_the_twins(schema, value, free):
    from mlx_ttsi import self_check, twins
    from mlx_ttsi.tools import free_value

    assert free_value(schema, value) is free
    assert self_check.free_value is free_value and twins.free_value is free_value
