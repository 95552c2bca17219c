"""Dates and times a request states in words, matched against a call's value in ISO form.

A tool that documents `Format: %Y-%m-%d %H:%M:%S` wants "2023-03-16 14:30:00" where its user writes
"March 16th at 2:30 PM". `stated_datetime` says whether a value of that form is what the request
says: its month and day (and year, when the request writes one), its hour and minute (12-hour
clock with am/pm, or 24-hour), its seconds only when zero or written. verify.py accepts such a
value as stated, so an example can teach the conversion its model gets wrong.
"""

import calendar
import re
from datetime import datetime

VALUE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%H:%M:%S", "%H:%M")
MONTHS = tuple(calendar.month_name[1:])  # "January" ... "December"
_MONTH_WORDS = sorted({w for m in MONTHS for w in (m.lower(), m[:3].lower())} | {"sept"}, key=len, reverse=True)
_MONTH = rf"({'|'.join(_MONTH_WORDS)})\b\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_DATE_PATTERNS = (  # each gives (month, day) groups in some order: "month" names the order
    (re.compile(rf"\b{_MONTH}\s+{_DAY}\b"), "month-day"),
    (re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}"), "day-month"),
    (re.compile(r"\b\d{4}-(\d{1,2})-(\d{1,2})\b"), "month-day"),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/\d{2,4})?\b"), "month-day"),  # the US order
)
_YEAR = re.compile(r"\b(19\d\d|20\d\d)\b")
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*([ap])\.?\s?m\b\.?|\b(\d{1,2}):(\d{2})(?::(\d{2}))?\b")
_NAMED_TIMES = {"noon": (12, 0), "midday": (12, 0), "midnight": (0, 0)}
# what a model may write for a date or time, beyond VALUE_FORMATS: the 12-hour clock and month-day
READ_FORMATS = VALUE_FORMATS + ("%Y-%m-%d %I:%M %p", "%Y-%m-%d %I:%M:%S %p", "%I:%M %p", "%I:%M%p", "%I%p", "%m-%d")
# JSON Schema's own formats (a parameter's "format"), and strftime patterns a description documents
SCHEMA_FORMATS = {"date": "%Y-%m-%d", "date-time": "%Y-%m-%dT%H:%M:%S", "time": "%H:%M:%S"}
_DOCUMENTED = re.compile(r"%[YmdHMSIp](?:[-:/ T]*%[YmdHMSIp])*")
# the same forms as people document them: "YYYY-MM-DD", "YYYY-MM-DD HH:MM:SS", "HH:MM" (not "HH:MM AM/PM")
_NOTATION = re.compile(r"\bYYYY-MM-DD(?:([ T])HH:MM(:SS)?)?(?![\w:])|\bHH:MM(:SS)?(?!:|\s*[AaPp]\.?[Mm])")


def parse_value(value):
    """The datetime a call's string value writes in one of VALUE_FORMATS, and which parts it has
    ({"date", "time"}); (None, set()) when it is not one."""
    when, fmt = _parsed(value)
    return when, _parts(fmt) if fmt else set()


def documented_format(schema):
    """The strftime format a parameter's schema asks its date or time in ("format": "date", or a
    description such as "Format: %Y-%m-%d %H:%M:%S"), or None."""
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("format") in SCHEMA_FORMATS:
        return SCHEMA_FORMATS[schema["format"]]
    found = _DOCUMENTED.search(str(schema.get("description") or ""))
    return found.group(0) if found else None


def noted_format(schema):
    """documented_format, or the strftime format of a form its description writes in letters
    ("Time of the alarm, HH:MM" -> "%H:%M"), or None."""
    fmt = documented_format(schema)
    found = None if fmt else _NOTATION.search(str((schema or {}).get("description") or ""))
    if not found:
        return fmt
    if found.group(0).startswith("HH"):
        return "%H:%M" + (":%S" if found.group(3) else "")
    time = f"{found.group(1)}%H:%M" + (":%S" if found.group(2) else "") if found.group(1) else ""
    return "%Y-%m-%d" + time


def fits_format(value, fmt):
    """Whether a value is a date or time with every part `fmt` writes: in that form, or in one that
    in_format turns into it ("7:15 PM" fits "%H:%M"; "10.11.2017" and "2:30 PM" do not fit "%Y-%m-%d %H:%M")."""
    when, read = _parsed(value, READ_FORMATS)
    return when is not None and (read == fmt or in_format(value, fmt) is not None)


def documented(value, schema):
    """The value written in the form its parameter's schema documents (documented_format, in_format),
    or None when the schema documents none or the value needs no change."""
    fmt = documented_format(schema)
    return in_format(value, fmt) if fmt else None


def in_format(value, fmt):
    """A date or time value written in the format `fmt` ("2023-03-13 08:00" -> "2023-03-13 08:00:00",
    "2023-03-25 2:10 PM" -> "2023-03-25 14:10:00"), when the value has every part the format needs;
    None when it is not a date or time, is already in that form, or lacks a part."""
    when, read = _parsed(value, READ_FORMATS)
    if when is None or read == fmt:
        return None
    if not _parts(fmt) or not _parts(fmt) <= _parts(read) or ("%Y" in fmt and "%Y" not in read):
        return None
    try:
        written = when.strftime(fmt)
    except ValueError:
        return None
    return written if written != value else None


def _parts(fmt):
    """Which of "date" and "time" a strftime format writes."""
    return {part for part, codes in (("date", ("%d", "%m")), ("time", ("%H", "%I"))) if any(c in fmt for c in codes)}


def _parsed(value, formats=VALUE_FORMATS):
    """(datetime, its format among `formats`) of a string value, or (None, None)."""
    if not isinstance(value, str):
        return None, None
    for fmt in formats:
        try:
            return datetime.strptime(value.strip(), fmt), fmt
        except ValueError:
            continue
    return None, None


def restated(value, request):
    """The value, in its own ISO form, with the date or time of day the request states where the
    value says another, when the request settles which: a time of day 12 hours off one it states
    ("03:00" for "3 PM"), or the only time (date) it states; None when there is nothing to change
    or the request leaves it open."""
    when, fmt = _parsed(value)
    if when is None:
        return None
    changed = when
    if "%H" in fmt:
        times = times_in(request)
        now = (when.hour, when.minute, when.second)
        if times and now not in times:
            slips = {t for t in times if t[0] % 12 == when.hour % 12 and t[1] == when.minute}
            only = {t[:2] for t in times}
            pick = slips.pop() if len(slips) == 1 else (min(times) if len(only) == 1 else None)
            if pick is not None:
                changed = changed.replace(hour=pick[0], minute=pick[1], second=pick[2] if "%S" in fmt else 0)
    if "%d" in fmt:
        dates = dates_in(request)
        years = {int(y) for y in _YEAR.findall(request)}
        if len(dates) == 1 and (when.month, when.day) not in dates:
            month, day = next(iter(dates))
            changed = _on(changed, len(years) == 1 and min(years) or changed.year, month, day)
    return changed.strftime(fmt) if changed != when else None


def _on(when, year, month, day):
    """`when` on another date; itself when that date does not exist."""
    try:
        return when.replace(year=year, month=month, day=day)
    except ValueError:
        return when


def dates_in(text):
    """The (month, day) pairs the text writes: "March 16th", "16 of March", "2023-03-16", "3/16"."""
    text = text.lower()
    found = set()
    for pattern, order in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            first, second = match.groups()
            month, day = (first, second) if order == "month-day" else (second, first)
            month = month_number(month)
            if month and 1 <= int(day) <= 31:
                found.add((month, int(day)))
    return found


def times_in(text):
    """The (hour, minute, second) triples the text may mean: "2:30 PM" -> (14, 30, 0); "14:30";
    "2:30" without am/pm -> (2, 30, 0) or (14, 30, 0); "noon"."""
    text = text.lower()
    found = {(*hm, 0) for word, hm in _NAMED_TIMES.items() if re.search(rf"\b{word}\b", text)}
    for match in _TIME.finditer(text):
        hour, minute, second, half, hour24, minute24, second24 = match.groups()
        if half:
            hours = [int(hour) % 12 + (12 if half == "p" else 0)]
        else:
            hour, minute, second = hour24, minute24, second24
            hours = [int(hour)] + ([int(hour) + 12] if 1 <= int(hour) < 12 else [])
        found.update((h, int(minute or 0), int(second or 0)) for h in hours if h < 24)
    return found


def stated_datetime(value, request, formats=VALUE_FORMATS):
    """Whether `value`, a date and/or time in one of `formats` (ISO forms unless told), is the date
    and time the request states in any common way. A year is checked only when both write one."""
    when, fmt = _parsed(value, formats)
    if when is None:
        return False
    parts = _parts(fmt)
    if "date" in parts:
        years = {int(y) for y in _YEAR.findall(request)}
        if (when.month, when.day) not in dates_in(request) or ("%Y" in fmt and years and when.year not in years):
            return False
    return "time" not in parts or (when.hour, when.minute, when.second) in times_in(request)


def datetime_numbers(value):
    """The numbers a request may write for a date/time value: year, month, day, hour (24- and
    12-hour), minute and second; empty when the value is not one."""
    when, parts = parse_value(value)
    numbers = set()
    if "date" in parts:
        numbers |= {when.year, when.month, when.day}
    if "time" in parts:
        numbers |= {when.hour, when.hour % 12 or 12, when.minute, when.second}
    return {float(n) for n in numbers}


def month_number(word):
    """1-12 for a month's number, name or three-letter abbreviation ("Sept" too), any case; else None."""
    word = word.lower()
    if word.isdigit():
        return int(word) if 1 <= int(word) <= 12 else None
    word = "sep" if word == "sept" else word
    return next((i for i, name in enumerate(MONTHS, 1) if word in (name.lower(), name[:3].lower())), None)


def spoken(value):
    """A date/time value as a person writes it ("2023-03-16 14:30:00" -> "March 16, 2023 at 2:30 PM");
    any other value as it is."""
    when, parts = parse_value(value)
    if when is None:
        return value
    said = []
    if "date" in parts:
        said.append(f"{MONTHS[when.month - 1]} {when.day}, {when.year}")
    if "time" in parts:
        seconds = f":{when.second:02d}" if when.second else ""
        said.append(f"{when.hour % 12 or 12}:{when.minute:02d}{seconds} {'PM' if when.hour >= 12 else 'AM'}")
    return " at ".join(said)
