"""Twins: the request with its stated values swapped, in the conversation and the call alike."""

import datetime
import json
import random
import re

from mlx_ttsi.tools import check_call, parse_tools
from mlx_ttsi.twins import CITIES, CODES, FIRST_NAMES, LAST_NAMES, fresh, kind_of, twins

import pytest
from test_grounding import BOOKING, CALL, REQUEST  # noqa: E402  (the same booking request)

FLIGHT = parse_tools(
    [
        {
            "name": "book_flight",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string", "description": "Departure city"},
                    "destination": {"type": "string", "description": "Arrival city"},
                    "passenger": {"type": "string", "description": "The passenger's full name"},
                    "date": {"type": "string", "format": "date"},
                    "currency": {"type": "string", "description": "ISO 4217 currency code"},
                    "seats": {"type": "integer", "minimum": 1, "maximum": 9},
                    "cabin": {"type": "string", "enum": ["economy", "business"]},
                },
                "required": ["origin", "destination", "passenger"],
            },
        }
    ]
)
HOTEL = parse_tools(
    [
        {
            "name": "book_hotel",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "guest_name": {"type": "string"},
                    "check_in": {"type": "string"},
                    "nights": {"type": "integer"},
                    "language": {"type": "string"},
                    "email": {"type": "string", "format": "email"},
                    "room_code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                },
                "required": ["city"],
            },
        }
    ]
)


def flight(origin, destination, passenger, **more):
    return {
        "name": "book_flight",
        "arguments": {"origin": origin, "destination": destination, "passenger": passenger, **more},
    }


# (request, call, tools): cities from the swap list itself, a value repeated in two arguments, several kinds
CASES = [
    ("Book a flight from Paris to Oslo for Ana Silva", flight("Paris", "Oslo", "Ana Silva"), FLIGHT),
    (
        "Fly Kyoto to Lima on 2024-05-01 for Grace Tanaka, 2 seats in economy, paying in EUR",
        flight("Kyoto", "Lima", "Grace Tanaka", date="2024-05-01", seats=2, cabin="economy", currency="EUR"),
        FLIGHT,
    ),
    (
        "I need to go from Lima to Kyoto; passenger Oscar, price in USD, 3 seats",
        flight("Lima", "Kyoto", "Oscar", currency="USD", seats=3),
        FLIGHT,
    ),
    (
        "Room in Porto for Nora Weber from 05/01/2024 for 3 nights, English (en) please, mail nora@mail.com, "
        "room AB123",
        {
            "name": "book_hotel",
            "arguments": {
                "city": "Porto",
                "guest_name": "Nora Weber",
                "check_in": "05/01/2024",
                "nights": 3,
                "language": "en",
                "email": "nora@mail.com",
                "room_code": "AB123",
            },
        },
        HOTEL,
    ),
    (
        "Book a flight for Paris Hilton from Paris to Paris, Texas",
        flight("Paris", "Paris, Texas", "Paris Hilton"),
        FLIGHT,
    ),
]


def said(value, text):
    """Whether `value` is a whole span of `text` (case aside), as a twin's call values must be."""
    value = str(value)
    return re.search(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text, flags=re.IGNORECASE) is not None


def user(text):
    return [{"role": "user", "content": text, "tool_calls": []}]


@pytest.mark.parametrize("request_text, call, tools", CASES)
def test_twins_never_contradict_their_own_request(request_text, call, tools):
    originals = call["arguments"]
    stated = {k: v for k, v in originals.items() if said(v, request_text) and not k == "cabin"}
    made = 0
    for seed in range(60):
        for twin in twins(user(request_text), [call], tools, 3, seed):
            made += 1
            arguments, text = twin["calls"][0]["arguments"], twin["request"]
            assert check_call(twin["calls"][0], tools) is None
            for key, value in arguments.items():
                assert said(value, text), (seed, key, value, text)  # every call value is in its own request
            for key, old in stated.items():
                assert arguments[key] != old and not said(old, text), (seed, key, text)  # no original is left
            for a in arguments:  # arguments share a value only when they did in the original call
                for b in arguments:
                    if a < b:
                        assert (arguments[a] == arguments[b]) == (originals[a] == originals[b]), (seed, a, b)
    assert made >= 100


def test_each_value_keeps_its_kind():
    people = set(FIRST_NAMES) | set(LAST_NAMES)
    assert not people & set(CITIES)
    request, call, tools = CASES[1]
    for seed in range(40):
        for twin in twins(user(request), [call], tools, 3, seed):
            arguments = twin["calls"][0]["arguments"]
            assert set(arguments["passenger"].split()) <= people and len(arguments["passenger"].split()) == 2
            assert arguments["origin"] in CITIES and arguments["destination"] in CITIES
            datetime.date.fromisoformat(arguments["date"])
            assert arguments["currency"] in CODES["currency"]
            assert isinstance(arguments["seats"], int) and 1 <= arguments["seats"] <= 9
            assert arguments["cabin"] == "economy"  # enum values are never swapped
    request, call, tools = CASES[3]
    twin = twins(user(request), [call], tools, 1, 0)[0]["calls"][0]["arguments"]
    assert twin["city"] in CITIES and set(twin["guest_name"].split()) <= people
    assert re.fullmatch(r"\d\d/\d\d/\d{4}", twin["check_in"])
    assert twin["language"] in CODES["language"] and re.fullmatch(r"[a-z]+(\.[a-z]+)?@mail\.com", twin["email"])
    assert re.fullmatch(r"[A-Z]{2}\d{3}", twin["room_code"]) and 1 <= twin["nights"] <= 9


@pytest.mark.parametrize(
    "key, schema, value, pattern",
    [
        ("date", {"type": "string"}, "2024-05-01", r"\d{4}-\d\d-\d\d"),
        ("when", {"type": "string"}, "2024-05-01T10:30:00", r"\d{4}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d"),
        ("day", {"type": "string"}, "May 1, 2024", r"[A-Z][a-z]+ \d{1,2}, \d{4}"),
        ("day", {"type": "string"}, "3 Jan", r"\d{1,2} [A-Z][a-z]{2}"),
        ("time", {"type": "string"}, "07:30", r"([01]\d|2[0-3]):[0-5]\d"),
        ("time", {"type": "string"}, "7:30 pm", r"([1-9]|1[0-2]):[0-5]\d pm"),
        ("amount", {"type": "number"}, "4096", r"[1-9]\d{3}"),
        ("id", {"type": "string"}, "AB12-x9", r"[A-Z]{2}\d{2}-[a-z]\d"),
        ("country", {"type": "string"}, "FR", r"[A-Z]{2}"),
        ("email", {"type": "string"}, "ana@example.com", r"[a-z]+@example\.com"),
        ("restaurant", {"type": "string"}, "Casa of Lisboa", r"[A-Z][a-z]+ of [A-Z][a-z]+"),
    ],
)
def test_fresh_values_keep_the_shape(key, schema, value, pattern):
    rng = random.Random(0)
    span = kind_of(key, schema, value)
    for _ in range(30):
        new = fresh(span, rng)
        assert re.fullmatch(pattern, new), (span.kind, new)
    if span.kind == "date" and value[4:5] == "-":  # ISO dates stay readable as dates
        datetime.datetime.fromisoformat(fresh(span, rng))


def test_twins_swap_every_stated_value_in_request_and_call_alike():
    made = twins(user(REQUEST), [CALL], BOOKING, k=3, seed=1)
    assert len(made) == 3
    assert len({json.dumps(t["calls"]) for t in made}) == 3
    for twin in made:
        call = twin["calls"][0]
        assert check_call(call, BOOKING) is None
        assert isinstance(call["arguments"]["people"], int)
        assert call["arguments"]["seating"] == "outside"  # enum values are never swapped
        for key in ("restaurant", "date", "email"):
            assert call["arguments"][key] != CALL["arguments"][key]
            assert str(call["arguments"][key]) in twin["request"]  # still a span of the twin's request
        assert str(call["arguments"]["people"]) in twin["request"]
        assert "Casa Lisboa" not in twin["request"] and "2024-05-01" not in twin["request"]
        assert twin["request"] == twin["messages"][-1]["content"] and twin["source"] == "twin"


def test_twins_of_a_conversation_swap_values_in_earlier_turns_too():
    conversation = [
        {"role": "user", "content": "I want a table at Casa Lisboa.", "tool_calls": []},
        {"role": "assistant", "content": "For how many people?", "tool_calls": []},
        {"role": "user", "content": "4 people.", "tool_calls": []},
    ]
    call = {"name": "book_table", "arguments": {"restaurant": "Casa Lisboa", "people": 4}}
    twin = twins(conversation, [call], BOOKING, k=1, seed=0)[0]
    restaurant = twin["calls"][0]["arguments"]["restaurant"]
    assert restaurant in twin["messages"][0]["content"] and "Casa Lisboa" not in twin["messages"][0]["content"]
    assert twin["messages"][1]["content"] == "For how many people?"


def test_no_twin_when_no_value_is_stated():
    call = {"name": "book_table", "arguments": {"restaurant": "Somewhere", "people": 2}}
    assert twins(user("Book me a table"), [call], BOOKING, k=3) == []
