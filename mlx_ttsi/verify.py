"""Checks that a written example's label is right for its request, without knowing the right answer.

An example is a request and its calls. Its label is right by construction when the calls fit their
tools' schemas (a date or time in the form its parameter documents too) and every value they pass is
stated in the request; it is worth training on only
when it is not the user's request again (a copy, or the user's own values leaking in), not a
duplicate of another example, and reads as a user's request: not the call's fields listed
("token: ..., content: ...") nor its values alone. `example_problem` says which rule an example breaks (rejections are
counted by these reasons in `--json` and eval).
"""

import re

from .datetimes import dates_in, datetime_numbers, fits_format, noted_format, parse_value, stated_datetime
from .synthesis import _REPEATS, _normal, request_problem
from .tools import check_call

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MIN_LEAK_CHARS = 3  # a value of the user's request shorter than this is too common to count as a leak


def normal_words(text):
    """synthesis's normal form (lower case, every run of non-alphanumerics one space), padded so that
    a match is of whole words: ' los angeles ca '."""
    return f" {_normal(str(text))} "


def numbers_in(text):
    """Every number written with digits in `text` (thousands separators allowed): '1,200 at 3.5' -> {1200, 3.5}."""
    found = set()
    for match in _NUMBER.findall(text):
        try:
            found.add(float(match.replace(",", "")))
        except ValueError:
            continue
    return found


def leaves(value):
    """The scalar values inside a value (list items and object values, recursively)."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def stated(value, request):
    """Whether a scalar argument value is written in the request: a number with digits, a string
    (an enum's word too) up to case and punctuation, a date or time in ISO form as the request
    says it in words ("2023-03-16 14:30:00" for "March 16th at 2:30 PM"). A boolean or null cannot
    be written as such, so it passes."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, (int, float)):
        return float(value) in numbers_in(request) or normal_words(value) in normal_words(request)
    words = normal_words(value)
    return bool(words.strip()) and words in normal_words(request) or stated_datetime(value, request)


def stated_value(value, request):
    """Whether the request states every leaf of an argument value (stated)."""
    return all(stated(leaf, request) for leaf in leaves(value))


def unstated_key(arguments, request):
    """The first argument whose value (any of its leaves) the request does not state, or None."""
    return next((key for key, value in arguments.items() if not stated_value(value, request)), None)


def unfit_key(arguments, tool):
    """The first argument whose value is not a date or time in the form its parameter documents
    (datetimes.noted_format: "10.11.2017" for "Time of the alarm, HH:MM"), or None: stated in its
    request, such a value is still not what the key takes."""
    for key, value in arguments.items():
        fmt = noted_format(tool.properties.get(key))
        if fmt and isinstance(value, str) and not fits_format(value, fmt):
            return key
    return None


def stated_only(call, request, tool):
    """The call without the optional arguments whose value its request does not state: the request
    a model wrote for a call may leave some out, and the call that answers it does too (as the
    self-check drops an optional value the user never gave). A required one stays, for
    example_problem to refuse."""
    required = set(tool.required)
    kept = {k: v for k, v in call["arguments"].items() if k in required or stated_value(v, request)}
    return {**call, "arguments": kept}


def unpassed_number(calls, request):
    """A number the request writes that none of the calls' values holds (a stated value the label
    leaves out: training on it would teach dropping what the user said), or None."""
    values = [leaf for call in calls for leaf in leaves(call["arguments"])]
    passed = numbers_in(" ".join(str(leaf) for leaf in values)).union(*map(datetime_numbers, values))
    return next((n for n in sorted(numbers_in(request)) if n not in passed), None)


def unpassed_date(calls, request):
    """A (month, day) the request writes that no date among the calls' values holds ("between
    January 1 and February 1" for a call with one date), or None."""
    passed = set()
    for leaf in (leaf for call in calls for leaf in leaves(call["arguments"])):
        when, parts = parse_value(leaf) if isinstance(leaf, str) else (None, set())
        if "date" in parts:
            passed.add((when.month, when.day))
    return next(iter(sorted(dates_in(request) - passed)), None)


def request_values(calls):
    """The values of the user's request as its own answer reads them: strings of at least
    MIN_LEAK_CHARS characters and numbers (no booleans)."""
    values = []
    for call in calls or []:
        for leaf in leaves(call.get("arguments", {})):
            if isinstance(leaf, bool) or leaf is None:
                continue
            if isinstance(leaf, (int, float)) or len(str(leaf).strip()) >= MIN_LEAK_CHARS:
                values.append(leaf)
    return values


def leaked(calls, request, values):
    """A value of the user's request found in an example (its request or its calls), or None."""
    text = request + " " + " ".join(str(leaf) for call in calls for leaf in leaves(call["arguments"]))
    for value in values:
        if isinstance(value, (int, float)) and abs(value) >= 10 and float(value) in numbers_in(text):
            return value
        if isinstance(value, str) and normal_words(value) in normal_words(text):
            return value
    return None


MIN_OWN_WORDS = 3  # words a request needs besides its call's values to read as a request


def field_label(request, calls):
    """An argument name or string value that the request writes as a field label ("token: ...",
    "Query: ..."): a request in the call's key-value form, not a user's words. None when there is none."""
    words = [w for call in calls for w in [*call["arguments"], *leaves(call["arguments"])] if isinstance(w, str)]
    forms = dict.fromkeys(form.strip() for word in words for form in (word, word.replace("_", " ")))  # in order
    pattern = r"(?:^|[\s,;(]){}\s*[:=]"
    return next((f for f in forms if len(f) >= 3 and re.search(pattern.format(re.escape(f)), request, re.I)), None)


def own_words(request, calls):
    """The request's words that are not words of its calls' values ("Weather in Madrid" -> weather, in)."""
    values = set(" ".join(normal_words(leaf) for call in calls for leaf in leaves(call["arguments"])).split())
    return [word for word in normal_words(request).split() if word not in values]


def example_problem(request, calls, tools, original, values=(), examples=()):
    """Why an example (request, calls) is not a verified one, or None. `original` is the user's
    request, `values` its values (`request_values` of its answer), `examples` the ones kept so far."""
    request = (request or "").strip()
    problem = request_problem(request, original)
    if problem:
        return problem
    if not calls:
        return "no tool call"
    by_name = {tool.name: tool for tool in tools}
    for call in calls:
        problem = check_call(call, tools)
        if problem:
            return "call breaks its schema"
        if any(isinstance(leaf, str) and _REPEATS.search(leaf) for leaf in leaves(call["arguments"])):
            return "argument repeats itself"
        if set(call["arguments"]) - set(by_name[call["name"]].properties):
            return "call has an argument its tool does not offer"
        if unfit_key(call["arguments"], by_name[call["name"]]) is not None:
            return "a value is not in the form its parameter documents"
        if unstated_key(call["arguments"], request) is not None:
            return "a value is not stated in its request"
    if unpassed_number(calls, request) is not None:
        return "its request states a number its call leaves out"
    if unpassed_date(calls, request) is not None:
        return "its request states a date its call leaves out"
    if leaked(calls, request, values) is not None:
        return "a value of the user's request leaks into it"
    if any(normal_words(request) == normal_words(e["request"]) or e["calls"] == calls for e in examples):
        return "duplicate example"
    if field_label(request, calls) is not None:
        return "request lists the call's fields"
    if len(own_words(request, calls)) < MIN_OWN_WORDS:
        return "request is only its call's values"
    return None
