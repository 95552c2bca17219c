"""Grounded self-labels and the argument-aware uncertainty (twins: test_twins.py)."""

import re

from mlx_ttsi.context import ContextState
from mlx_ttsi.datetimes import documented_format, in_format
from mlx_ttsi.decoding import CallDecoder, Choice, argument_margin
from mlx_ttsi.prompts import call_format
from mlx_ttsi.self_check import better_tool, coverage, grounded, label_calls
from mlx_ttsi.tools import parse_tools
from mlx_ttsi.uncertainty import estimate

import pytest

BOOKING = parse_tools(
    [
        {
            "name": "book_table",
            "description": "Book a restaurant table",
            "parameters": {
                "type": "object",
                "properties": {
                    "restaurant": {"type": "string"},
                    "people": {"type": "integer"},
                    "date": {"type": "string"},
                    "email": {"type": "string"},
                    "seating": {"type": "string", "enum": ["inside", "outside"]},
                    "note": {"type": "string"},
                },
                "required": ["restaurant", "people"],
            },
        }
    ]
)
REQUEST = "Book a table for 4 at Casa Lisboa on 2024-05-01, outside please; confirm to ana@example.com"
CALL = {
    "name": "book_table",
    "arguments": {
        "restaurant": "Casa Lisboa",
        "people": 4,
        "date": "2024-05-01",
        "email": "ana@example.com",
        "seating": "outside",
    },
}


def user(text):
    return [{"role": "user", "content": text, "tool_calls": []}]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Casa Lisboa", True),
        ("casa lisboa", True),
        ("Casa", True),
        ("Lisb", False),
        ("Porto", False),
        (4, True),
        ("2024-05-01", True),
        (True, False),
        ("", False),
        (["Casa"], False),
    ],
)
def test_grounded_means_a_whole_span_of_the_request(value, expected):
    assert grounded(value, REQUEST) is expected


class ScriptedDecoder:
    """What the labeller asks of a CallDecoder, with scripted values: the rules are what is tested."""

    fmt = call_format(object())

    def __init__(self, probes, copies):
        self.probes, self.copies, self.asked, self.sources = probes, copies, [], {}

    def value_after(self, text, schema, copy_from=None, within=None):
        key = re.search(r'"(\w+)": $', text).group(1)
        self.asked.append((key, copy_from is not None))
        self.sources[key] = copy_from
        assert text.startswith("PROMPT") and text.endswith(f'"{key}": ')
        return self.copies[key] if copy_from is not None else self.probes.get(key, "")


def test_self_label_drops_unstated_options_adds_stated_ones_and_copies_required_strings():
    greedy = {"name": "book_table", "arguments": {"restaurant": "The Place", "people": 4, "note": "window seat"}}
    decoder = ScriptedDecoder(
        probes={"date": "2024-05-01", "email": "bob@example.com", "seating": "outside"},
        copies={"restaurant": "Casa Lisboa"},
    )
    label = label_calls(decoder, "PROMPT", BOOKING, [greedy], REQUEST)
    assert label == [
        {
            "name": "book_table",
            "arguments": {
                "restaurant": "Casa Lisboa",  # required, not in the request: copied from it
                "people": 4,  # stated: kept
                "date": "2024-05-01",
                "seating": "outside",  # optional, left out, stated: added
            },
        }
    ]  # the unstated note is dropped; the probed email is not the request's, so not added
    assert ("restaurant", True) in decoder.asked and ("note", False) not in decoder.asked


def test_self_label_takes_the_users_exact_words_and_each_only_once():
    greedy = {"name": "book_table", "arguments": {"restaurant": "casa_lisboa", "people": 4, "note": "Casa Lisboa"}}
    decoder = ScriptedDecoder(probes={}, copies={"restaurant": "Casa Lisboa", "note": ""})
    label = label_calls(decoder, "PROMPT", BOOKING, [greedy], REQUEST)
    assert label[0]["arguments"] == {"restaurant": "Casa Lisboa", "people": 4}  # "casa_lisboa" is not verbatim
    assert "Casa Lisboa" in decoder.sources["restaurant"]
    assert "Casa Lisboa" not in decoder.sources["note"]  # taken by restaurant: hidden from the copy
    assert len(decoder.sources["note"]) == len(REQUEST)


def test_copied_strings_are_pieces_of_the_source(tiny, tools):
    state = ContextState(tiny.model, tiny.tokenizer)
    decoder = CallDecoder(state, call_format(tiny.tokenizer))
    source = "Set an alarm at 07:30 for the gym on Friday"
    value = decoder.value_after('{"name": "set_alarm", "arguments": {"time": ', {"type": "string"}, copy_from=source)
    assert isinstance(value, str) and value.strip() and value in source  # "" is in every source: not a copy


def test_argument_margin_ignores_the_tool_name_choice():
    name = Choice(["a", "b"], [-0.1, -9.0], [1, 1], 0, kind="name")
    key = Choice(["x", "}"], [-1.0, -1.1], [1, 1], 0)
    sure = Choice(["true", "false"], [-0.01, -8.0], [1, 1], 0)
    assert argument_margin([name, sure]) == pytest.approx(1.0, abs=1e-3)
    assert argument_margin([name, key, sure]) == pytest.approx(0.05, abs=1e-2)
    assert argument_margin([name]) == 1.0


def test_uncertainty_joins_names_arguments_and_the_self_label():
    names = estimate(["a", "b"], [-0.1, -6.0], [-0.1, -6.0], [1, 1], threshold=0.5)
    assert not names.uncertain and names.name_score == names.score
    one_tool = estimate(["a"], [-0.1], [-0.1], [1], threshold=0.5)
    assert one_tool.score == 1.0  # one tool: never uncertain on names alone
    doubtful = one_tool.with_arguments(0.2, label_agrees=True)
    assert doubtful.uncertain and doubtful.score == 0.2 and doubtful.name_score == 1.0
    disagrees = names.with_arguments(0.9, label_agrees=False)
    assert disagrees.uncertain and disagrees.score == 0.0 and disagrees.argument_score == 0.9


def test_the_rival_tool_wins_only_when_it_uses_more_of_the_request():
    tools = parse_tools(
        [
            {
                "name": "get_article",
                "parameters": {
                    "type": "object",
                    "properties": {"article_id": {"type": "string"}},
                    "required": ["article_id"],
                },
            },
            {
                "name": "request_article",
                "parameters": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "card": {"type": "string"}},
                    "required": ["title", "card"],
                },
            },
        ]
    )
    request = 'Get the article "Minds and Machines" with library card 789123'
    first = [{"name": "get_article", "arguments": {"article_id": "789123"}}]
    rival = [{"name": "request_article", "arguments": {"title": "Minds and Machines", "card": "789123"}}]
    assert coverage(first, tools, request) == 1 and coverage(rival, tools, request) == 2
    assert better_tool(first, rival, tools, request) == rival
    invented = [{"name": "request_article", "arguments": {"title": "Minds and Machines", "card": "000"}}]
    assert coverage(invented, tools, request) == 0  # one stated value, one required value made up
    assert better_tool(first, invented, tools, request) == first
    assert better_tool(first, first, tools, request) == first  # a tie keeps the model's choice


def test_a_rival_that_repeats_a_call_already_made_is_never_taken():
    from mlx_ttsi.prompts import normalize_messages
    from mlx_ttsi.self_check import calls_made

    tools = parse_tools(
        [
            {
                "name": "GetUserToken",
                "parameters": {
                    "type": "object",
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                    "required": ["username", "password"],
                },
            },
            {
                "name": "DeleteAccount",
                "parameters": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]},
            },
        ]
    )
    token = {"name": "GetUserToken", "arguments": {"username": "ann", "password": "pw1"}}
    messages = normalize_messages(
        [
            {"role": "user", "content": "Delete my account. I am ann, password pw1."},
            {"role": "assistant", "content": "", "tool_calls": [token]},
            {"role": "tool", "content": "{'token': 'x9y8'}"},
        ]
    )
    context = "\n".join(m["content"] for m in messages)
    first = [{"name": "DeleteAccount", "arguments": {"token": "x9y8"}}]
    assert coverage([token], tools, context) > coverage(first, tools, context)  # more stated values...
    assert calls_made(messages) == [token]
    assert better_tool(first, [token], tools, context, calls_made(messages)) == first  # ...but already done
    assert better_tool(first, [token], tools, context) == [token]


AGENDA = parse_tools(
    [
        {
            "name": "add_agenda",
            "description": "Add an agenda item",
            "parameters": {
                "type": "object",
                "properties": {
                    "content": {"type": "string"},
                    "time": {"type": "string", "description": "Format: %Y-%m-%d %H:%M:%S"},
                    "until": {"type": "string", "description": "Format: %Y-%m-%d %H:%M:%S"},
                },
                "required": ["content", "time"],
            },
        }
    ]
)


@pytest.mark.parametrize(
    "written, request_text, labelled",
    [
        ("2023-03-21 03:00:00", "Add lunch on March 21 at 3 PM", "2023-03-21 15:00:00"),  # 12 hours off
        ("2023-03-21 13:00:00", "Add lunch on March 21 at 3 PM", "2023-03-21 15:00:00"),  # the only time stated
        ("2023-09-09 15:00:00", "Add lunch on March 21 at 3 PM", "2023-03-21 15:00:00"),  # the only date stated
        ("2023-03-21 15:00:00", "Add lunch on March 21 at 3 PM", "2023-03-21 15:00:00"),  # stated in words: kept
        ("2023-03-21 13:00:00", "Add lunch on March 21 at 3 PM or 4 PM", "2023-03-21 13:00:00"),  # left open
    ],
)
def test_a_date_or_time_in_iso_form_is_set_to_the_one_the_user_states(written, request_text, labelled):
    greedy = {"name": "add_agenda", "arguments": {"content": "lunch", "time": written}}
    decoder = ScriptedDecoder(probes={}, copies={"time": written})  # a copy of the user's words changes nothing
    label = label_calls(decoder, "PROMPT", AGENDA, [greedy], request_text)
    assert label[0]["arguments"]["time"] == labelled
    # a value the request settles is never re-copied from the user's words (which would lose its ISO form)
    assert ("time", True) not in decoder.asked or labelled == written


def test_an_end_time_twelve_hours_off_is_set_beside_a_start_time():
    greedy = {
        "name": "add_agenda",
        "arguments": {"content": "review", "time": "2023-04-05 03:00:00", "until": "2023-04-05 05:00:00"},
    }
    decoder = ScriptedDecoder(probes={}, copies={})
    label = label_calls(decoder, "PROMPT", AGENDA, [greedy], "Add the review on April 5th from 3 PM to 5 PM")
    assert label[0]["arguments"] == {"content": "review", "time": "2023-04-05 15:00:00", "until": "2023-04-05 17:00:00"}


@pytest.mark.parametrize(
    "written, labelled",
    [
        ("2023-03-21 15:00", "2023-03-21 15:00:00"),  # the seconds the format asks for
        ("2023-03-21 3:00 PM", "2023-03-21 15:00:00"),  # the 24-hour clock it asks for
        ("2023-03-21 3:00 AM", "2023-03-21 15:00:00"),  # then set to the time the user states
        ("3:00 PM", None),  # no date to write: left to the other rules (copied from the request)
    ],
)
def test_a_date_or_time_is_written_in_the_form_its_parameter_documents(written, labelled):
    greedy = {"name": "add_agenda", "arguments": {"content": "lunch", "time": written}}
    decoder = ScriptedDecoder(probes={}, copies={"time": "March 21 at 3 PM"})
    label = label_calls(decoder, "PROMPT", AGENDA, [greedy], "Add lunch on March 21 at 3 PM")
    assert label[0]["arguments"]["time"] == (labelled or "March 21 at 3 PM")
    assert documented_format({"type": "string", "format": "date"}) == "%Y-%m-%d"
    assert in_format("2023-10-06", "%m-%d") == "10-06" and in_format("10-06", "%Y-%m-%d") is None  # no year to write


def test_a_date_another_argument_holds_is_not_taken_again():
    tools = parse_tools(
        [
            {
                "name": "book_hotel",
                "parameters": {
                    "type": "object",
                    "properties": {"check_in": {"type": "string"}, "check_out": {"type": "string"}},
                    "required": ["check_in", "check_out"],
                },
            }
        ]
    )
    greedy = {"name": "book_hotel", "arguments": {"check_in": "2023-07-15", "check_out": "2023-07-16"}}
    decoder = ScriptedDecoder(probes={}, copies={"check_out": "2023-07-16"})
    label = label_calls(decoder, "PROMPT", tools, [greedy], "Book the Hilton from July 15th for one night")
    assert label[0]["arguments"] == {"check_in": "2023-07-15", "check_out": "2023-07-16"}  # the one date is check-in's
