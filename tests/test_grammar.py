"""Sampled example calls held to their tool's schema (grammar.py): the automaton, its shortest
close, and the logits processor in mlx-lm's batched writer on a tiny random model."""

import json

from mlx_ttsi.decoding import Vocabulary
from mlx_ttsi.grammar import ArgumentsProcessor, advance, arguments_start, completion
from mlx_ttsi.tools import parse_tools, validation_errors
from mlx_ttsi.writer import BatchWriter

import mlx.core as mx
import pytest
from conftest import TOOLS

PROPERTIES = {
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer"},
    "loud": {"type": "boolean"},
    "ratio": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "extra": {},
}
KEYS = list(PROPERTIES)
VALID = (
    '{"city": "Oslo", "unit": "celsius", "days": 3, "loud": false, "ratio": -0.5, '
    '"tags": ["a", "b c"], "extra": {"k": [1, null]}}'
)


def test_every_start_of_a_valid_object_is_taken_and_its_shortest_close_parses():
    start = arguments_start(PROPERTIES, KEYS)
    for end in range(len(VALID) + 1):
        stack = advance(start, VALID[:end])
        assert stack is not None, VALID[:end]
        closed = json.loads(VALID[:end] + completion(stack))
        assert list(closed) == KEYS
    assert advance(start, VALID) == ()


@pytest.mark.parametrize(
    "text",
    [
        '{"town": "Oslo"',  # a key not planned, or out of order
        '{"unit": "celsius"',
        '{"city": 3',  # a number for a string
        '{"city": "Oslo", "unit": "kelvin"',  # not one of the enum's words
        '{"city": "Oslo", "unit": "celsius", "days": 3.5',  # a fraction for an integer
        '{"city": "Oslo", "unit": "celsius", "days": 03',  # a leading zero
        '{"city": "Oslo", "unit": "celsius", "days": 3, "loud": "yes"',  # a string for a boolean
        '{"city": "Oslo", "unit": "celsius", "days": 3}',  # closed before every planned key
        '{"city": "Os\\"lo"',  # an escape
        '{"city": "Oslo\n',  # a line break in a string
        '{"city": "' + "x" * 81,  # longer than MAX_STRING_CHARS
    ],
)
def test_text_that_breaks_the_schema_or_the_plan_is_refused(text):
    assert advance(arguments_start(PROPERTIES, KEYS), text) is None


def test_the_shortest_close_finishes_a_string_an_enum_word_and_a_pending_value():
    start = arguments_start(PROPERTIES, ["city", "unit"])
    assert completion(advance(start, '{"city": "Os')) == '","unit":"celsius"}'
    assert completion(advance(start, '{"city": "Oslo", "unit": "fahr')) == 'enheit"}'
    assert completion(advance(arguments_start(PROPERTIES, ["days"]), '{"days": ')) == "0}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_tiny_random_model_writes_calls_that_parse_and_fit_their_schemas(tiny, scripted_writer, seed):
    # the tiny model's logits are noise: only the processor keeps its calls well-formed
    tools = {tool.name: tool for tool in parse_tools(TOOLS)}
    plans = [
        ("get_weather", ["city", "unit", "days"]),
        ("set_alarm", ["time", "loud", "volume"]),
        ("get_weather", ["city"]),
    ]
    vocabulary, budgets = Vocabulary.of(tiny.tokenizer), [40, 36, 12]  # each at least its shortest close
    processors = [
        [ArgumentsProcessor(advance(arguments_start(tools[name].properties, keys), '{"'), vocabulary, budget)]
        for (name, keys), budget in zip(plans, budgets)
    ]
    writer = BatchWriter(tiny.model, tiny.tokenizer)
    prompts = [f'Call {name}: {{"' for name, _ in plans]
    guided = scripted_writer(writer, prompts, budgets, temperature=1.0, seed=seed, processors=processors)
    free = scripted_writer(writer, prompts, budgets, temperature=1.0, seed=seed)
    for (name, keys), text in zip(plans, guided):
        arguments, _ = json.JSONDecoder().raw_decode('{"' + text)  # what follows the close is cut by the stop rule
        assert list(arguments) == keys
        assert validation_errors(tools[name], arguments) == []
    assert not all(_parses('{"' + text) for text in free)  # unguided, the same model writes noise


def test_no_more_tokens_than_the_budget_are_written_and_closing_is_forced(tiny, scripted_writer):
    tools = {tool.name: tool for tool in parse_tools(TOOLS)}
    stack = advance(arguments_start(tools["set_alarm"].properties, ["time", "loud"]), '{"')
    processor = ArgumentsProcessor(stack, Vocabulary.of(tiny.tokenizer), len(completion(stack)))
    writer = BatchWriter(tiny.model, tiny.tokenizer)
    [text] = scripted_writer(writer, ['Call set_alarm: {"'], len(completion(stack)), processors=[[processor]])
    assert json.loads('{"' + text) == {"time": "", "loud": True}  # the shortest close, every step forced
    assert processor.forced == len(completion(stack))


def _parses(text):
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def test_a_vocabulary_without_the_needed_character_leaves_the_step_free():
    # no likely token fits and no token is the one character that would: the logits pass unchanged
    class Letters:  # a vocabulary of three letters, none of which can open a string value
        pieces, special, single_chars = ["a", "b", "c"], [False] * 3, {"a": 0, "b": 1, "c": 2}

    stack = advance(arguments_start(PROPERTIES, ["city"]), '{"city": ')
    processor = ArgumentsProcessor(stack, Letters(), 40)
    logits = mx.array([[0.5, 1.0, 2.0]])
    assert processor(mx.array([0]), logits).tolist() == logits.tolist()
