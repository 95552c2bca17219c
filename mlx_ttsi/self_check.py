"""Self-labels grounded in the user's words: the model's calls checked against the request.

Most argument values of a tool call are words of the conversation: in the gold calls of the five
benchmark files, 79% of the required string and number values and 92% of the optional ones that are
filled are spans of the input (`python bench/grounding_prior.py`). So a self-label is checked
against the request:

- an optional argument whose value is not in the conversation is dropped;
- an optional argument the model left out is written anyway, and kept when its value is in it;
- a string value that is not the user's exact words (a required one that is not in the
  conversation, or one that is only after normalising, "living_room" for "living room"), or that
  another argument already took, is written again, copied from the conversation without the values
  already taken (an optional one that cannot be copied is dropped);
- a date or time in ISO form ("2023-03-21 13:00:00") that says another date or time of day than the
  one the user states ("March 21 at 3 PM") is set to it when the conversation settles which
  (datetimes.restated: 12 hours off a stated time, or the only one stated), and one that says what
  the user states in words is kept as it is; a date or time is first written in the form its
  parameter documents (JSON Schema's "format", or a description's "Format: %Y-%m-%d %H:%M:%S").

When the model is unsure of the tool (its name margin is below tau), the runner-up tool's call is
written and checked too, and taken when it uses more of what the user said (`coverage`). And when the
call passes a value that another tool returns and that tool has not been called yet (a `token` that
`GetUserToken` gives), that tool's checked call is the answer instead (dependencies.py).

Each change the check makes is then weighed by the model itself (`weigh_changes`): applied one at a
time, a change is kept only when the base model finds the changed call at least `odds` times as
likely as the call before it, so a rewrite the model finds absurd (a value cut short, a number
replaced) is undone while one it finds plausible (a stated value it had left out) stays.

Twins of a labelled request (the same request with other values) are made in twins.py.
"""

import json
import math
import re

from .datetimes import READ_FORMATS, documented, restated, stated_datetime
from .tools import check_call, free_value

MAX_PROBED = 8  # optional arguments written and checked per call, at most


def context_text(messages):
    """Everything the conversation says: message texts and the arguments of earlier calls."""
    parts = []
    for message in messages:
        parts.append(message.get("content") or "")
        parts += [json.dumps(call.get("arguments", {}), ensure_ascii=False) for call in message.get("tool_calls") or []]
    return "\n".join(parts)


def given_text(messages):
    """What the user and the tools said, and the arguments of earlier calls: the conversation less
    the assistant's own words (it may ask for "your token" without anyone giving one)."""
    return context_text([{**m, "content": ""} if m.get("role") == "assistant" else m for m in messages])


def _normal(text):
    return " " + re.sub(r"[\W_]+", " ", str(text).lower()).strip() + " "


def grounded(value, context):
    """Whether a (string or number) value is a span of the context, case and punctuation aside."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    words = _normal(value)
    return words.strip() != "" and words in _normal(context)


def stated_in(value, context):
    """Whether the context states a value: a span of it (grounded), or a date or time it says in any
    common way, in any form a model writes one ("10-06" or "2023-10-06" for "October 6th")."""
    return grounded(value, context) or stated_datetime(value, context, READ_FORMATS)


def _is_string(schema):
    # a free string, written as one by the decoder (decoding.write_value: the first type but null)
    schema = schema if isinstance(schema, dict) else {}
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    return kind == "string" and "enum" not in schema and "const" not in schema


def label_calls(decoder, prompt, tools, calls, context):
    """The model's calls, checked against the context (see the module's docstring).

    `decoder` is a CallDecoder on the base weights; `prompt` ends where the answer begins. Calls in
    a format the decoder does not write (formats.py: not JSON) are taken as the model wrote them."""
    if not decoder.fmt.guided:
        return [dict(call) for call in calls]
    by_name = {tool.name: tool for tool in tools}
    labelled = []
    for call in calls:
        before = prompt + decoder.fmt.lead(labelled)
        labelled.append(_label_call(decoder, before, by_name[call["name"]], call, context))
    return labelled


def coverage(calls, tools, context):
    """How well calls use what the user said: distinct stated values, less required values not stated."""
    by_name = {tool.name: tool for tool in tools}
    stated, unstated = set(), 0
    for call in calls:
        tool = by_name.get(call["name"])
        for key, value in call["arguments"].items():
            if grounded(value, context):
                stated.add(str(value).strip().lower())
            elif tool and key in tool.required and free_value(tool.properties.get(key, {}), value):
                unstated += 1
    return len(stated) - unstated


def better_tool(labelled, rival, tools, context, made=()):
    """The rival tool's labelled call when it uses strictly more of the request, else the first.
    A rival that repeats a call the conversation already made (`made`) is no progress: never taken."""
    if any(call in made for call in rival):
        return labelled
    return rival if coverage(rival, tools, context) > coverage(labelled, tools, context) else labelled


def settled(adapted, label, tools, context):
    """The adapted calls, or the self-label where adapting has not earned the change: when they use
    less of the request (an example's value in place of the user's), or call other tools without
    using more of it (the bar `better_tool` sets the runner-up: examples the model wrote for a
    sibling tool read much like the request, so a LoRA can learn either name from them)."""
    ours, theirs = coverage(adapted, tools, context), coverage(label, tools, context)
    other_tools = [call["name"] for call in adapted] != [call["name"] for call in label]
    return label if theirs > ours or (other_tools and theirs >= ours) else adapted


def changes(base, label):
    """The self-check's edits of `base` into `label`, one call argument (or one whole call) at a time:
    a list of functions call list -> call list, applied in order they give `label`."""
    if len(base) != len(label):
        return [lambda calls: [dict(c) for c in label]]
    edits = []
    for i, (old, new) in enumerate(zip(base, label)):
        if old["name"] != new["name"]:
            edits.append(lambda calls, i=i, new=new: calls[:i] + [new] + calls[i + 1 :])
            continue
        before, after = old["arguments"], new["arguments"]
        for key in list(before) + [k for k in after if k not in before]:
            if before.get(key, _ABSENT) != after.get(key, _ABSENT):
                edits.append(lambda calls, i=i, key=key, value=after.get(key, _ABSENT): _edit(calls, i, key, value))
    return edits


_ABSENT = object()


def _edit(calls, i, key, value):
    arguments = {k: v for k, v in calls[i]["arguments"].items() if k != key or value is not _ABSENT}
    if value is not _ABSENT:
        arguments[key] = value
    return calls[:i] + [{"name": calls[i]["name"], "arguments": arguments}] + calls[i + 1 :]


def weigh_changes(score, base, label, odds):
    """The label with only the changes the model accepts: each edit (in order) is kept when
    score(changed) - score(current) >= log(odds), `score` being the base model's summed log-prob of
    a call list as the answer. odds 0 keeps every change."""

    if odds <= 0 or label == base:
        return label
    current = [dict(c) for c in base]
    for edit in changes(base, label):
        candidate = edit(current)
        now, then = score([current, candidate])
        if then - now >= math.log(odds):
            current = candidate
    return current


def kept_stated(calls, label, context):
    """Adapted calls with each value of the self-label that the conversation states (stated_in) put back
    where the adapted weights wrote, for the same tool and key, one it does not state: adapting may add
    a value or change a form, but not replace what the user said (an example's date for the user's,
    a copied id with letters dropped). Calls of other tools, or another number of calls, stay."""
    if len(calls) != len(label):
        return calls

    def restored(key, value, own):  # the adapted value, or the self-label's stated one it replaced
        if key in own and stated_in(own[key], context) and not stated_in(value, context):
            return own[key]
        return value

    return [
        {**call, "arguments": {k: restored(k, v, own["arguments"]) for k, v in call["arguments"].items()}}
        if call["name"] == own["name"]
        else call
        for call, own in zip(calls, label)
    ]


def conformed(calls, tools):
    """The calls with every date or time value in the form its parameter documents (datetimes.in_format):
    a fact of the tool's schema, so the model is not asked to weigh it (weigh_changes starts from it)."""
    properties = {tool.name: tool.properties for tool in tools}

    def written(call):
        schemas = properties.get(call["name"], {})
        return {key: documented(value, schemas.get(key)) or value for key, value in call["arguments"].items()}

    return [{**call, "arguments": written(call)} for call in calls]


def calls_made(messages):
    """The calls earlier turns of a conversation made, as {name, arguments}."""
    return [call for message in messages for call in message.get("tool_calls") or []]


def _label_call(decoder, before, tool, call, context):
    required = set(tool.required)
    arguments = {}
    for key, value in call["arguments"].items():
        schema = tool.properties.get(key, {})
        formatted = documented(value, schema)  # a date or time in the form the tool documents
        value = formatted or value
        fixed = restated(value, context)  # the date or time the user states, in the value's form
        others = {k: v for k, v in {**call["arguments"], **arguments}.items() if k != key}
        fixed = None if fixed and _taken(fixed, others) else fixed  # another argument holds that one
        if fixed or stated_datetime(value, context) or (formatted and key in required):
            arguments[key] = fixed or value
            continue
        stated = grounded(value, context)
        if _is_string(schema) and isinstance(value, str) and (stated or key in required):
            if not _verbatim(value, context) or _taken(value, arguments):
                # the user's exact words, and none that another argument already took
                source = _blank(context, [v for v in arguments.values() if isinstance(v, str)])
                value = decoder.value_after(
                    before + decoder.fmt.open_key(tool.name, arguments, key), schema, copy_from=source
                ) or (value if key in required else "")
                if not value:
                    continue
        elif key not in required and free_value(schema, value) and not stated:
            continue  # an optional value the user never gave
        arguments[key] = value
    probed = [key for key in tool.properties if key not in call["arguments"] and key not in required]
    for key in probed[:MAX_PROBED]:
        schema = tool.properties[key]
        value = decoder.value_after(before + decoder.fmt.open_key(tool.name, arguments, key), schema, within=context)
        if (
            (free_value(schema, value) or "enum" in schema)
            and grounded(value, context)
            and not _taken(value, arguments)
        ):
            arguments[key] = value
    labelled = {"name": tool.name, "arguments": arguments}
    return labelled if check_call(labelled, [tool]) is None else call


def _verbatim(value, context):
    return value.strip() != "" and value.strip().lower() in context.lower()


def _taken(value, arguments):
    # the same stated text already fills another argument
    text = str(value).strip().lower()
    return bool(text) and any(isinstance(v, str) and v.strip().lower() == text for v in arguments.values())


def _blank(context, used):
    # the context with the used values hidden, so a copy cannot take them again
    for value in sorted((v for v in used if v.strip()), key=len, reverse=True):
        context = re.sub(re.escape(value.strip()), lambda m: "\0" * len(m.group(0)), context, flags=re.IGNORECASE)
    return context
