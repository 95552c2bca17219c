"""Accuracy on the tool-calling benchmarks: one documented rule, a few per-benchmark inputs.

A row is correct when the predicted calls equal the gold calls: same number, same order, and each
call has the gold tool name and exactly the gold arguments (no missing, no extra). Values are
compared after normalising (`canonical`):
  - numbers and numeric strings by value: "40.7" == 40.7, "30" == 30 == 30.0 (booleans are not numbers);
  - "true"/"false" strings (any case) as booleans; other strings with surrounding whitespace trimmed,
    case kept ("Paris " == "Paris", "paris" != "Paris");
  - strings holding a JSON or Python list/dict are parsed: "['John']" == ["John"] (order kept);
  - lists element by element in order, dicts key by key.
Per benchmark (docs/eval.md):
  - NexusRaven: the prediction's arguments are filled with the tool's schema defaults and compared
    with `meta.arguments_with_defaults`, as its own evaluator does;
  - API-Bank: the input is the conversation in `messages`; the gold is the next call;
  - ToolAlpaca: rows with several gold calls need all of them, in order;
  - Seal-Tools and anything else: the plain rule.
"""

import ast
import json
import re

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

RULES = {
    "sealtool": "name + arguments, values normalised (numbers and numeric strings by value)",
    "nexusraven": "name + full argument dict with the tool's defaults filled (meta.arguments_with_defaults)",
    "apibank": "name + arguments of the next call after the multi-turn `messages`",
    "toolalpaca": "every gold call, in order (name + arguments); no extra calls",
}


def rule(benchmark):
    """The scoring rule used for a benchmark name, in words."""
    for prefix, text in RULES.items():
        if str(benchmark).startswith(prefix):
            return text
    return "name + arguments of every gold call, in order, values normalised"


def canonical(value):
    """A hashable, type-tagged form of a value: equal forms mean equal values under the rule."""
    if isinstance(value, bool):
        return ("bool", value)
    if value is None:
        return ("null",)
    if isinstance(value, (int, float)):
        return ("number", value)  # 30 == 30.0 inside the tuple comparison
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.match(text):
            return ("number", int(text) if text.lstrip("+-").isdigit() else float(text))
        if text.lower() in ("true", "false"):
            return ("bool", text.lower() == "true")
        if text[:1] in ("[", "{"):
            parsed = _parse_literal(text)
            if parsed is not None:
                return canonical(parsed)
        return ("string", text)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    return ("other", repr(value))


def _parse_literal(text):
    # a list or dict written as JSON or as a Python repr ("['John']"); None when it is neither
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple, dict)):
            return value
    return None


def same_arguments(gold, predicted):
    """Exactly the gold argument names, each with an equal value."""
    if not isinstance(gold, dict) or not isinstance(predicted, dict):
        return False
    return canonical(gold) == canonical(predicted)


def gold_calls(row):
    """The calls a row expects; NexusRaven's carry the tool's defaults filled in."""
    calls = [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in row.get("answer") or []]
    filled = (row.get("meta") or {}).get("arguments_with_defaults")
    if _is_nexusraven(row) and isinstance(filled, dict) and len(calls) == 1:
        calls[0]["arguments"] = filled
    return calls


def with_defaults(call, tools):
    """The call with every schema default of its tool added where the call left it out."""
    by_name = {t.get("name"): t for t in tools or [] if isinstance(t, dict)}
    properties = ((by_name.get(call.get("name")) or {}).get("parameters") or {}).get("properties") or {}
    arguments = {
        name: spec["default"] for name, spec in properties.items() if isinstance(spec, dict) and "default" in spec
    }
    arguments.update(call.get("arguments") or {})
    return {"name": call.get("name"), "arguments": arguments}


def is_correct(row, predicted):
    """Whether the predicted calls (a list of {name, arguments}) answer the row correctly."""
    gold = gold_calls(row)
    if not isinstance(predicted, list) or len(predicted) != len(gold) or not gold:
        return False
    for expected, call in zip(gold, predicted):
        if not isinstance(call, dict) or call.get("name") != expected["name"]:
            return False
        if not isinstance(call.get("arguments", {}), dict):
            return False
        if _is_nexusraven(row):
            call = with_defaults(call, _plain_tools(row.get("tools")))
        if not same_arguments(expected["arguments"], call.get("arguments") or {}):
            return False
    return True


def _is_nexusraven(row):
    return str(row.get("benchmark", "")).startswith("nexusraven")


def _plain_tools(tools):
    # accept OpenAI-style {"type": "function", "function": {...}} specs as well as bare ones
    return [t.get("function", t) if isinstance(t, dict) else t for t in tools or []]
