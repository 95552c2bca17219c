"""Tool specs: reading them, showing them to the model, and checking calls against them.

A schema is the client's: checking it, or a call against it, never fetches anything (only local
`#...` references, resolved in an empty registry), never recurses without bound (nesting is
limited before anything recurses) and never backtracks without bound (`pattern` and
`patternProperties` are searched under a time limit).
"""

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from .errors import ToolsError
from .files import read_json

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
MAX_NESTING = 64  # levels of objects and lists in a schema, a call's arguments or a JSON text
PATTERN_SECONDS = 0.05  # a schema pattern's search of one value; one that backtracks longer fails it
_REFS = ("$ref", "$dynamicRef")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')  # a string, or what is left of an unclosed one
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: dict(EMPTY_PARAMETERS))
    returns: tuple = ()  # the names of the values a call of it returns (returns_of), when the spec says

    @property
    def properties(self):
        return self.parameters.get("properties") or {}

    @property
    def required(self):
        return [name for name in self.parameters.get("required") or [] if name in self.properties]

    def as_openai(self):
        return {"type": "function", "function": self.as_plain()}

    def as_plain(self):
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def parse_tools(specs):
    """Accept OpenAI-style `{"type": "function", "function": {...}}` or bare `{name, ...}` specs.
    A list of Tools (made here, so already checked) is taken as it is."""
    if isinstance(specs, list) and specs and all(isinstance(spec, Tool) for spec in specs):
        return list(specs)
    if isinstance(specs, dict) and "tools" in specs:
        specs = specs["tools"]
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list):
        raise ToolsError("tools must be a JSON list of tool specs")
    tools, seen = [], set()
    for index, spec in enumerate(specs):
        where = f"tool #{index + 1}"
        if isinstance(spec, Tool):
            spec = {**spec.as_plain(), "x-returns": dict.fromkeys(spec.returns, {})}
        if not isinstance(spec, dict):
            raise ToolsError(f"{where} is not a JSON object")
        if spec.get("type", "function") != "function":
            raise ToolsError(f"{where} has type {spec.get('type')!r}; only 'function' tools are supported")
        body = spec.get("function", spec) if "function" in spec else spec
        if not isinstance(body, dict):
            raise ToolsError(f"{where}: 'function' must be an object")
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolsError(f"{where} has no valid name (letters, digits, _ . -; got {name!r})")
        if name in seen:
            raise ToolsError(f"tool name {name!r} appears twice")
        seen.add(name)
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise ToolsError(f"tool {name!r}: description must be a string")
        parameters = body.get("parameters") or dict(EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise ToolsError(f"tool {name!r}: parameters must be a JSON schema object")
        _check_schema(name, parameters)
        tools.append(Tool(name, description, parameters, returns_of(name, body)))
    if not tools:
        raise ToolsError("the tools list is empty")
    return tools


def returns_of(name, body):
    """The names of the values a tool's call returns: the properties of its MCP `outputSchema`, or the
    keys of `x-returns` (API-Bank's output parameters, as the benchmark files write them); () if neither."""
    output, named = body.get("outputSchema"), body.get("x-returns")
    if output is not None and not (isinstance(output, dict) and isinstance(output.get("properties", {}), dict)):
        raise ToolsError(f"tool {name!r}: outputSchema must be a JSON schema object")
    if named is not None and not isinstance(named, dict):
        raise ToolsError(f"tool {name!r}: x-returns must be an object of the values it returns")
    return tuple(dict.fromkeys([*((output or {}).get("properties") or {}), *(named or {})]))


def _check_schema(name, parameters):
    """A tool's parameters: valid JSON Schema, of an object, whose references stay inside it."""
    if nesting(parameters) > MAX_NESTING:
        raise ToolsError(f"tool {name!r}: its parameters schema nests over {MAX_NESTING} levels deep")
    try:
        Validator.check_schema(parameters)
    except SchemaError as error:
        raise ToolsError(f"tool {name!r}: invalid parameters schema: {error.message}") from None
    if parameters.get("type", "object") != "object":
        raise ToolsError(f"tool {name!r}: parameters must describe an object")
    references = list(_strings(parameters, _REFS))
    outside = next((ref for ref in references if not ref.startswith("#")), None)
    if outside is not None:
        raise ToolsError(
            f"tool {name!r}: $ref {outside[:100]!r} points outside the schema; only local "
            "references (#/...) are allowed: nothing is fetched"
        )
    _check_local(name, parameters, references)


def _check_local(name, parameters, references):
    """Each local reference resolves (against the schema's root; with nested $ids, only when a value
    reaches it), and no loop of them recurses on every value."""
    resource = DRAFT202012.create_resource(parameters)
    base = resource.id() or ""
    resolver = Registry().with_resource(base, resource).resolver(base)
    nested_ids = len(list(_strings(parameters, ("$id",)))) > (resource.id() is not None)
    try:
        for ref in [] if nested_ids else references:
            resolver.lookup(ref)
        list(validator(parameters).iter_errors({}))  # a loop of references shows on any value
    except Unresolvable as error:
        raise ToolsError(f"tool {name!r}: $ref {str(error.ref)[:100]!r} does not resolve inside the schema") from None
    except RecursionError:
        raise ToolsError(f"tool {name!r}: its $refs refer to each other in a loop") from None


def _strings(schema, keys):
    """Every string value of these keys in a schema, at any depth (in `const` or `default` data too)."""
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in keys and isinstance(item, str):
                    yield item
                else:
                    stack.append(item)


def nesting(value):
    """How many levels of objects and lists a parsed JSON value has, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if items is not None:
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in items)
    return deepest


def too_deep(text, limit=MAX_NESTING):
    """Whether a JSON text's objects and lists nest over `limit` levels, told before it is parsed (the
    parser recurses): with its strings dropped, the deepest running count of opened brackets."""
    brackets = np.frombuffer(_NOT_BRACKET.sub("", _STRING.sub("", text)).encode(), np.uint8)
    depth = np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1))
    return bool(depth.size) and int(depth.max()) > limit


def loads(text, what):
    """json.loads, with the nesting limited first; a one-line ToolsError for what is wrong."""
    if too_deep(text):
        raise ToolsError(f"{what} nests over {MAX_NESTING} levels deep")
    return json.loads(text)


def matches(pattern, text):
    """Whether a schema's `pattern` is found in `text`: searched under PATTERN_SECONDS (the `regex`
    engine's timeout), so a pattern that backtracks without bound, like ^(a|aa)+$, fails the value."""
    try:
        return regex.search(pattern, text, timeout=PATTERN_SECONDS) is not None
    except (regex.error, TimeoutError):
        return False


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not matches(pattern, instance):
        yield ValidationError(
            f"{instance[:100]!r} does not match {pattern[:100]!r} (or its search took over {PATTERN_SECONDS}s)"
        )


def _pattern_properties(validator, patterns, instance, schema):
    if validator.is_type(instance, "object"):
        for pattern, subschema in patterns.items():
            for key, value in instance.items():
                if matches(pattern, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=pattern)


# JSON Schema 2020-12 with the pattern keywords searched under a time limit
Validator = validators.extend(Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties})


def validator(parameters):
    """A validator for a tool's parameters whose registry is empty: it resolves local references only."""
    return Validator(parameters, registry=Registry())


def load_tools(path):
    """Read a tools JSON file, with one-line errors for every way it can be wrong."""
    path = Path(path)
    parse = partial(loads, what=f"tools file {path}")  # its nesting limited before it is parsed
    return parse_tools(read_json(path, "tools file", ToolsError, parse=parse, missing="{what} not found: {path}"))


def validation_errors(tool, arguments):
    """Messages for each way `arguments` breaks the tool's schema (empty when valid)."""
    if not isinstance(arguments, dict):
        return ["arguments must be a JSON object"]
    try:
        return [error.message for error in validator(tool.parameters).iter_errors(arguments)]
    except Unresolvable as error:  # a reference below the top, resolved only on a value that reaches it
        return [f"the schema's $ref {str(error.ref)[:100]!r} does not resolve"]
    except RecursionError:
        return ["the schema's $refs loop on this value"]


def schema_types(schema):
    """The types a property's schema names, null aside (a set; empty for an untyped schema)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return {k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str) and k != "null"}


def free_value(schema, value):
    """Whether `value`, given for a property of `schema`, is a free value: one the user's words give
    (a string or number the schema leaves open), as the self-check (self_check.py) and the twins
    (twins.py) both take it.

    - A boolean, null, array or object value is never free.
    - A value the schema fixes is never free: a `const`, or an `enum` (of one option or of many:
      the choice is among the schema's words, not the user's).
    - An untyped schema (no `type`, or not an object) is not free. Its value can be anything, and in
      the benchmark files it mostly is not the user's words: of the 74 gold string and number
      values of untyped properties (NexusRaven, ToolAlpaca) 22 are spans of the input (dates
      rewritten from the request, ...), against 92% of typed optional ones. The self-check drops an
      optional free value the user never stated, so counting these free would drop gold values.
    - A typed schema is free when one of its types (null aside) is string, number or integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    if not isinstance(schema, dict) or "enum" in schema or "const" in schema:
        return False
    return bool(schema_types(schema) & {"string", "number", "integer"})


def check_call(call, tools):
    """Why a {name, arguments} call is unusable for these tools, or None when it is fine."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return "not a {name, arguments} object"
    by_name = {tool.name: tool for tool in tools}
    if call["name"] not in by_name:
        return f"names unknown tool {call['name']!r}"
    errors = validation_errors(by_name[call["name"]], call.get("arguments", {}))
    return f"invalid arguments: {errors[0]}" if errors else None


def parse_calls(text):
    """Tool calls found in free model output: JSON objects with a name, in order.

    Accepts bare objects, `<tool_call>` tags, code fences, `arguments` given as a JSON string
    and OpenAI's `{"function": {...}}` wrapping.
    """
    decoder = json.JSONDecoder()
    calls, position = [], 0
    while True:
        start = text.find("{", position)
        if start < 0:
            return calls
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        position = end
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item)
            if call:
                calls.append(call)


def _as_call(item):
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str):
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}
