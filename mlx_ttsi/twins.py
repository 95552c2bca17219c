"""Twins of a labelled request: the same request with every stated value swapped for another of its kind.

A value of the call that the conversation states verbatim (a span) is swapped, in the conversation
and in the call alike, so a LoRA trained on twins learns to copy the request's spans into the
arguments instead of learning the values themselves. Each value keeps its kind, read from its
argument's JSON schema (type, format, pattern), its name and description, and its own shape: a
person's name becomes another person's name, a city another city, a date another date in the same
format, a currency code another currency code, a number another with as many digits. Enum values
are never swapped. The new values differ from each other, from every original value and from
anything else the conversation says, and all of them are put in at once (one regex pass), so no
new value is swapped again.
"""

import datetime
import json
import random
import re
from dataclasses import dataclass

from .datetimes import MONTHS, month_number
from .self_check import context_text
from .tools import check_call, free_value, matches, schema_types

FIRST_NAMES = (
    "Alice Bruno Carmen Daniel Elena Farid Grace Hiro Ines Jonas Keiko Lucas Maya Nora Oscar Priya Rafael "
    "Sofia Tomas Uma Victor Wen Yusuf Zara Amara Bilal Chloe Dmitri Esther Felix Greta Hassan Ingrid Jamal"
).split()
LAST_NAMES = (
    "Almeida Bauer Castillo Dubois Eriksen Fischer Garcia Haddad Ivanova Jensen Kowalski Lindqvist Moreau "
    "Nakamura Okafor Petrov Quinn Rossi Schmidt Tanaka Ueda Varga Weber Yilmaz Zhang Novak Brennan Costa"
).split()
CITIES = (
    "Lima Kyoto Porto Dakar Quito Austin Bergen Cairo Denver Geneva Hanoi Leeds Malmo Nairobi Perth Seville "
    "Tunis Valencia Zurich Lyon Munich Krakow Athens Dublin Toronto Osaka Bogota Lagos Tallinn Riga Vienna"
).split()
WORDS = (  # capitalised words that are neither people nor places
    "Amber Cedar Harbor Summit Willow Falcon Orion Maple Beacon Aurora Juniper Meadow Granite Saffron Cobalt"
).split()
LOWER = (
    "river garden market silver yellow window winter summer village engine orange planet ticket bridge forest "
    "island violin carpet rocket candle harbor meadow castle mirror pepper tunnel ladder basket canyon puzzle"
).split()
CODES = {  # ISO codes by what an argument's name or description calls them
    "currency": "USD EUR GBP JPY CHF CAD AUD CNY SEK NOK DKK PLN INR BRL MXN ZAR KRW SGD NZD TRY".split(),
    "language": "en fr de es it pt nl sv no da fi pl ru ja zh ko ar tr el cs".split(),
    "country": "US FR DE ES IT PT NL SE NO DK FI PL JP CN KR BR MX CA AU IN".split(),
    "airport": "JFK LHR CDG FRA AMS MAD FCO LIS OSL ARN HND SIN SYD YYZ GRU DXB IST VIE ZRH CPH".split(),
}
CODE_WORDS = {
    "currency": "currency",
    "language": "language",
    "lang": "language",
    "locale": "language",
    "country": "country",
    "airport": "airport",
    "iata": "airport",
}
KEEP_WORDS = {"a", "an", "the", "of", "on", "in", "at", "for", "to", "and", "or", "with", "by", "from", "de"}
PERSON_WORDS = {
    "passenger",
    "person",
    "guest",
    "traveler",
    "traveller",
    "attendee",
    "recipient",
    "author",
    "customer",
    "contact",
    "patient",
    "employee",
    "driver",
    "owner",
    "participant",
    "sender",
    "student",
    "teacher",
    "doctor",
    "friend",
    "firstname",
    "lastname",
    "fullname",
    "surname",
    "who",
}
PLACE_WORDS = {
    "city",
    "town",
    "place",
    "location",
    "origin",
    "destination",
    "departure",
    "arrival",
    "venue",
    "region",
    "village",
    "capital",
    "where",
    "hometown",
}
THING_WORDS = {
    "restaurant",
    "file",
    "product",
    "company",
    "hotel",
    "event",
    "song",
    "movie",
    "book",
    "title",
    "team",
    "brand",
    "store",
    "shop",
    "item",
    "model",
    "tool",
    "project",
    "app",
    "street",
    "dish",
    "recipe",
    "airline",
    "playlist",
    "account",
    "username",
    "device",
    "room",
    "category",
    "folder",
    "channel",
    "organization",
    "organisation",
    "service",
    "course",
    "game",
    "artist",
    "album",
}
EMAIL = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*@[A-Za-z0-9.-]+\.[A-Za-z]+")
ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})([T ].*)?")
NUMERIC_DATE = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})")
WORDED_DATE = re.compile(r"(?:(\d{1,2})\s+)?([A-Za-z]+)\.?(?:\s+(\d{1,2}))?(?:,?\s+(\d{4}))?")
TIME = re.compile(r"(\d{1,2}):(\d{2})(:\d{2})?(\s*[AaPp]\.?[Mm]\.?)?")
CODE = re.compile(r"[A-Z]{2,4}|[a-z]{2}(?:[-_][A-Z]{2})?")
TRIES = 20  # fresh values drawn for one span before the twin is given up


@dataclass(frozen=True)
class Span:
    """An argument value the conversation states verbatim, with what kind of value it is."""

    text: str
    kind: str  # person, place, date, time, email, code, number, shape (digits and letters) or word
    hint: str = ""  # the code list (currency, language ...) or the date format
    schema: dict = None


def spans(calls, tools, messages):
    """The stated argument values (one per text, case aside), longest first."""
    by_name = {tool.name: tool for tool in tools}
    text = context_text(messages)
    found = {}
    for call in calls:
        properties = by_name[call["name"]].properties if call["name"] in by_name else {}
        for key, value in call["arguments"].items():
            schema = properties.get(key) if isinstance(properties.get(key), dict) else {}
            if not free_value(schema, value):
                continue
            value = _text(value)
            if value and _find(value, text) and value.lower() not in found:
                found[value.lower()] = kind_of(key, schema, value)
    return sorted(found.values(), key=lambda span: len(span.text), reverse=True)


def kind_of(key, schema, value):
    """The Span of `value`, kind read from its schema, its argument's name and description, and its shape."""
    words = _words(key) | _words(schema.get("description") or "")
    code = next((CODE_WORDS[w] for w in [*_words(key), *words] if w in CODE_WORDS), "")
    fmt, kinds = schema.get("format"), schema_types(schema)
    if kinds and kinds <= {"integer", "number"}:
        return Span(value, "number", schema=schema)
    if fmt == "email" or EMAIL.fullmatch(value):
        return Span(value, "email", schema=schema)
    if (form := _date_form(value)) is not None:
        return Span(value, "date", form, schema)
    if fmt == "time" or TIME.fullmatch(value):
        return Span(value, "time", schema=schema)
    if re.search(r"\d", value) or not re.search(r"[A-Za-z]", value):
        return Span(value, "shape", schema=schema)
    kind = _word_kind(_words(key), words)
    if CODE.fullmatch(value) and (code or "code" in words or (value.isupper() and kind == "word")):
        return Span(value, "code", code, schema)
    return Span(value, kind, schema=schema)


def _word_kind(key_words, words):
    # the argument's own name decides first, then its description
    if key_words & PLACE_WORDS:
        return "place"
    if key_words & PERSON_WORDS:
        return "person"
    if words & THING_WORDS:
        return "word"
    if words & PLACE_WORDS:
        return "place"
    return "person" if words & (PERSON_WORDS | {"name"}) else "word"


def fresh(span, rng):
    """Another value of the span's kind."""
    text = span.text
    if span.kind == "number":
        return _number(text, span.schema or {}, rng)
    if span.kind == "email":
        local, domain = text.split("@", 1)
        name = rng.choice(FIRST_NAMES).lower()
        return (f"{name}.{rng.choice(LAST_NAMES).lower()}" if "." in local else name) + "@" + domain
    if span.kind == "date":
        return _date(text, span.hint, rng)
    if span.kind == "time":
        return _time(TIME.fullmatch(text), rng) if TIME.fullmatch(text) else _shape(text, rng)
    if span.kind == "code":
        return _code(text, span.hint, span.schema or {}, rng)
    if span.kind == "person":
        return _cased(text, _person(len(text.split()), rng))
    if span.kind == "place":
        return _cased(text, rng.choice(CITIES))
    if span.kind == "shape":
        return _shape(text, rng)
    return re.sub(r"[A-Za-z][A-Za-z'-]*", lambda m: _word(m.group(0), rng), text)


def twins(messages, calls, tools, k, seed=0, source="twin"):
    """Up to k examples {"messages", "request", "calls", "source"} with every stated value swapped."""
    stated = spans(calls, tools, messages)
    if not stated:
        return []
    rng = random.Random(seed)
    taken = _values(calls) | {span.text.lower() for span in stated}
    context = context_text(messages)
    made, seen = [], set()
    for _ in range(4 * k):
        if len(made) >= k:
            break
        mapping = _mapping(stated, taken, context, rng)
        if mapping is None:
            continue
        twin_messages = [_swap_message(m, mapping) for m in messages]
        twin_calls = [_swap_call(c, mapping) for c in calls]
        key = json.dumps([twin_messages, twin_calls], sort_keys=True)
        if key in seen or any(check_call(call, tools) for call in twin_calls):
            continue
        seen.add(key)
        request = next((m["content"] for m in reversed(twin_messages) if m["role"] == "user"), "")
        made.append({"messages": twin_messages, "request": request, "calls": twin_calls, "source": source})
    return made


def _mapping(stated, taken, context, rng):
    """{old text, lower-cased: new text} with new values unlike each other and anything said; None if none found."""
    mapping, used = {}, set(taken)
    for span in stated:
        for _ in range(TRIES):
            new = fresh(span, rng)
            if _usable(new, span, used, taken, context):
                break
        else:
            return None
        mapping[span.text.lower()] = new
        used.add(new.lower())
    return mapping


def _usable(new, span, used, originals, context):
    if not new or new.lower() in used or _find(new, context):
        return False
    pattern = (span.schema or {}).get("pattern")
    if isinstance(pattern, str) and span.kind != "number":
        if not matches(pattern, new):  # searched under a time limit: a client's pattern may backtrack
            return False
    return not any(_find(old, new) for old in originals)  # no original may be read inside a new value


def _swap_text(text, mapping):
    """Every old value in `text` replaced in one pass (longest first), so a new value is never swapped again."""
    if not mapping or not text:
        return text
    olds = sorted(mapping, key=len, reverse=True)
    combined = re.compile("|".join(f"({_pattern(old)})" for old in olds), flags=re.IGNORECASE)
    return combined.sub(lambda match: mapping[olds[match.lastindex - 1]], text)


def _swap_call(call, mapping):
    return {
        "name": call["name"],
        "arguments": {k: _swap_value(v, mapping) for k, v in call.get("arguments", {}).items()},
    }


def _swap_message(message, mapping):
    calls = [_swap_call(c, mapping) for c in message.get("tool_calls") or []]
    return {**message, "content": _swap_text(message.get("content") or "", mapping), "tool_calls": calls}


def _swap_value(value, mapping):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return value
    new = mapping.get(_text(value).lower())
    if new is None:
        return _swap_text(value, mapping) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(new)
    if isinstance(value, float):
        return float(new)
    return new


def _text(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _values(calls):
    """Every string or number the calls hold, lower-cased: no new value may equal one."""
    found = set()

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            found.add(_text(value).lower())

    for call in calls:
        walk(call.get("arguments", {}))
    return found


def _words(text):
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(text))
    return set(re.findall(r"[a-z]+", spaced.lower()))


def _find(value, text):
    return re.search(_pattern(value), text, flags=re.IGNORECASE)


def _pattern(value):
    head = r"(?<!\w)" if value[:1].isalnum() else ""
    tail = r"(?!\w)" if value[-1:].isalnum() else ""
    return head + re.escape(value) + tail


def _cased(original, new):
    if original.isupper():
        return new.upper()
    if original.islower():
        return new.lower()
    return new


def _person(words, rng):
    if words <= 1:
        return rng.choice(FIRST_NAMES)
    return " ".join([rng.choice(FIRST_NAMES)] + [rng.choice(LAST_NAMES) for _ in range(words - 1)])


def _number(text, schema, rng):
    """As many digits (and the same sign and decimals), within the schema's bounds when it has them."""
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, _, decimals = body.partition(".")
    low, high = (10 ** (len(whole) - 1) if len(whole) > 1 else 1), 10 ** len(whole) - 1
    bottom, top = schema.get("minimum"), schema.get("maximum")
    if not sign and isinstance(bottom, (int, float)):
        low = max(low, int(bottom))
    if not sign and isinstance(top, (int, float)):
        high = min(high, int(top))
    if low > high:
        return text
    digits = "".join(str(rng.randrange(10)) for _ in decimals)
    return sign + str(rng.randint(low, high)) + ("." + digits if decimals else "")


def _date_form(text):
    if ISO_DATE.fullmatch(text):
        return "iso"
    numeric = NUMERIC_DATE.fullmatch(text)
    if numeric and int(numeric.group(1)) <= 31 and int(numeric.group(3)) <= 31:
        return "numeric"
    worded = WORDED_DATE.fullmatch(text)
    if worded and month_number(worded.group(2)) is not None and (worded.group(1) or worded.group(3)):
        return "worded"
    return None


def _date(text, form, rng):
    """A date written as `text` is: ISO stays ISO, 05/01/2024 stays dd/dd/dddd, "May 1, 2024" stays worded."""
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randrange(3000))
    if form == "iso":
        match = ISO_DATE.fullmatch(text)
        tail = match.group(4) or ""
        time = TIME.search(tail)
        return day.isoformat() + (tail[: time.start()] + _time(time, rng) + tail[time.end() :] if time else tail)
    if form == "numeric":
        first, separator, second, year = NUMERIC_DATE.fullmatch(text).groups()
        # both numbers at most 12, so the date reads the same as day/month or month/day
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        year = str(day.year) if len(year) == 4 else f"{day.year % 100:02d}"
        return f"{a:0{len(first)}d}{separator}{b:0{len(second)}d}{separator}{year}"
    match = WORDED_DATE.fullmatch(text)
    month = MONTHS[day.month - 1]
    month = month[:3] if len(match.group(2)) == 3 else month
    number = str(min(day.day, 28))
    year = f" {day.year}" if match.group(4) else ""
    if match.group(1):
        return f"{number} {month}{year}"
    comma = "," if "," in text else ""
    return f"{month} {number}{comma if year else ''}{year}"


def _time(match, rng):
    """A valid time in the shape of `match` (TIME): 24-hour unless it says am/pm."""
    hours, minutes, seconds, half = match.groups()
    hour = rng.randint(1, 12) if half else rng.randrange(24)
    text = f"{hour:0{len(hours)}d}:{rng.randrange(60):02d}"
    return text + (f":{rng.randrange(60):02d}" if seconds else "") + (half or "")


def _code(text, hint, schema, rng):
    """A code from the list its argument names (currency, language ...) in the same shape, else random letters."""
    shape = re.compile(re.sub(r"[A-Z]", "[A-Z]", re.sub(r"[a-z]", "[a-z]", re.escape(text))))
    options = [c for c in CODES.get(hint, []) if shape.fullmatch(c)]
    return rng.choice(options) if options else _shape(text, rng)


def _shape(text, rng):
    """Digits for digits (no leading zero added), letters for letters of the same case."""
    return "".join(_same_class(c, rng, first=i == 0) for i, c in enumerate(text))


def _same_class(char, rng, first=False):
    if char.isdigit():
        return str(rng.randrange(1 if first and char != "0" else 0, 10))
    if char.isalpha() and char.isascii():
        letter = chr(rng.randrange(26) + ord("a"))
        return letter.upper() if char.isupper() else letter
    return char


def _word(word, rng):
    if word.lower() in KEEP_WORDS:
        return word
    if word.isupper() and len(word) > 1:
        return "".join(_same_class(c, rng) for c in word)
    if word[0].isupper():
        return rng.choice(WORDS)
    return rng.choice(LOWER)
