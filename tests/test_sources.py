"""TT-SI's examples from calls written first: the batched writer, each verification rule, the
informative filter, and the gold answer's likelihood before and after adapting."""

import json

from mlx_ttsi.adaptation import answer_scores
from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.datetimes import dates_in, spoken, times_in
from mlx_ttsi.prompts import call_format, render_prompt
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.sources import SOURCES, Job, calls
from mlx_ttsi.synthesis import Synthesis, keep_examples
from mlx_ttsi.tools import parse_tools
from mlx_ttsi.verify import (
    example_problem,
    leaked,
    request_values,
    stated,
    stated_only,
    unfit_key,
    unpassed_date,
    unpassed_number,
    unstated_key,
)
from mlx_ttsi.writer import BatchWriter, closed_json, quoted_line, shared_starts

import mlx.core as mx
import pytest
from conftest import SCRIPTED_CALLS, TOOLS
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import common_prefix_len

WEATHER = {"name": "get_weather", "arguments": {"city": "Madrid", "unit": "celsius", "days": 3}}
USER = "What is the weather in Paris?"


@pytest.fixture
def agent(tiny):
    return Agent(tiny, Settings(lora=LoRASettings(epochs=2, learning_rate=1e-2)))


def one_at_a_time(loaded, prompt, max_tokens):
    """Greedy decoding of one prompt, token by token through ContextState (not mlx-lm's batching)."""
    state = ContextState(loaded.model, loaded.tokenizer)
    state.set_text(prompt)
    return state.sample(make_sampler(temp=0.0), max_tokens, stop=None)


# ---- the batched writer ----


@pytest.mark.parametrize("with_prefix", [False, True])
def test_batched_greedy_writing_equals_one_at_a_time(tiny, tools, scripted_writer, with_prefix):
    tok, fmt = tiny.tokenizer, call_format(tiny.tokenizer)
    prompts = [
        render_prompt(tok, [{"role": "user", "content": text}], tools, fmt)
        for text in ("Weather in Oslo", "Set an alarm at seven for work please", "List alarms")
    ]
    prefix_ids, arrays = [], None
    if with_prefix:  # the tools prefix every prompt shares, its KV computed once
        state = ContextState(tiny.model, tok)
        ids = [state.encode(p) for p in prompts]
        n = min(next(i for i, (a, b) in enumerate(zip(ids[0], other)) if a != b) for other in ids[1:])
        state.sync(ids[0][:n])
        prefix_ids, arrays = ids[0][:n], state.prefix_arrays(n, copy=True)
    writer = BatchWriter(tiny.model, tok, prefix_ids, arrays)
    together = scripted_writer(writer, prompts, 12)
    alone = [one_at_a_time(tiny, p, 12) for p in prompts]
    assert together == alone
    assert writer.decoded_tokens > 0


ASKS = (
    "Write an example message from a user who wants the weather, in the style of a short request, for ",
    "Please give me one request of a traveller asking about the forecast for the city of ",
)


# one ask before several values (the calls' prompts); two, each before several (the requests')
@pytest.mark.parametrize("asks", [ASKS[:1], ASKS])
def test_the_start_prompts_share_after_the_prefix_is_run_once(tiny, tools, scripted_writer, asks):
    tok, fmt = tiny.tokenizer, call_format(tiny.tokenizer)
    texts = [ask + city for ask in asks for city in ("Oslo", "Lima")]
    prompts = [render_prompt(tok, [{"role": "user", "content": text}], tools, fmt) for text in texts]
    state = ContextState(tiny.model, tok)
    probe = state.encode(render_prompt(tok, [{"role": "user", "content": "A"}], tools, fmt))
    n = common_prefix_len(state.encode(prompts[0]), probe)  # the tools prefix only
    state.sync(probe[:n])
    writer = BatchWriter(tiny.model, tok, probe[:n], state.prefix_arrays(n, copy=True))
    together = scripted_writer(writer, prompts, 12)
    assert together == [one_at_a_time(tiny, p, 12) for p in prompts]
    after_prefix = sum(len(state.encode(p)) - n for p in prompts)
    each_ask = sum(len(state.encode(ask)) for ask in asks)
    assert writer.prompt_tokens < after_prefix - each_ask + 10  # each ask run once, not once per prompt


def test_a_prompt_shares_the_longest_start_it_has_in_common_with_another():
    n = 2  # the prefix
    ids = [
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 9, 9, 9, 9, 9, 1],
        [1, 2, 3, 4, 5, 6, 7, 8, 10],
        [1, 2, 5],
        [1, 2, 9, 9, 9, 9, 9, 2],
        [1, 2, 9, 9, 9, 9, 9, 2],  # the same prompt twice (sampled twice): all but its last token
        [1, 2, 3, 4, 6],  # three past the prefix in common: fewer than MIN_COMMON
    ]
    assert [len(start) for start in shared_starts(ids, n)] == [8, 7, 8, 2, 7, 7, 2]
    assert all(tuple(ids[i][: len(start)]) == start for i, start in enumerate(shared_starts(ids, n)))


def test_each_written_text_stops_on_its_own(tiny, scripted_writer):
    writer = BatchWriter(tiny.model, tiny.tokenizer)
    texts = scripted_writer(
        writer, ["Weather in Oslo", "List alarms"], 16, stop=lambda text: 2 if len(text) >= 2 else None
    )
    assert [len(t) for t in texts] == [2, 2]


def test_stop_rules_end_a_json_object_and_a_quoted_line():
    stop = closed_json()
    assert stop('"city": "a}b", "n": {"x": 1}} trailing') == len('"city": "a}b", "n": {"x": 1}}')
    assert stop('"city": "Oslo"') is None
    assert quoted_line('Weather in Oslo" and more') == len("Weather in Oslo")
    assert quoted_line("first line\nsecond") == len("first line")
    assert quoted_line("still writing") is None


# ---- verification: each rule, with a case it refuses ----


def test_a_value_is_stated_up_to_case_and_punctuation():
    assert stated("Los Angeles", "weather in los angeles, please")
    assert stated(3, "for 3 days")
    assert stated(1200, "a budget of 1,200 dollars")
    assert stated("celsius", "in Celsius")  # an enum by its word
    assert stated(True, "anything")  # a boolean cannot be written as such
    assert not stated("Los Angeles", "weather in Los Alamos")
    assert not stated(4, "for 3 days")
    assert not stated("", "anything")
    assert unstated_key(WEATHER["arguments"], "Weather in Madrid for 3 days in celsius") is None
    assert unstated_key(WEATHER["arguments"], "Weather in Madrid for 3 days") == "unit"


def test_a_date_or_time_is_stated_as_people_write_it():
    request = "Remind me to call mom on March 16th at 2:30 PM"
    assert stated("2023-03-16 14:30:00", request)  # the tool's format for what the user wrote
    assert stated("2023-03-16", request) and stated("14:30", request)
    assert not stated("2023-03-16 02:30:00", request)  # 2:30 PM is not 2:30 AM
    assert not stated("2023-03-16 2:30:00", request)  # nor is 2:30 in a 24-hour field
    assert not stated("2023-03-17 14:30:00", request)
    assert not stated("2023-03-16 14:30:15", request)  # seconds only when written
    assert not stated("2022-03-16 14:30:00", "on March 16, 2023 at 2:30 PM")  # a written year is checked
    assert stated("2023-03-16 14:30:00", "on 16th of March 2023, 14:30")
    assert stated("2023-03-16 14:00:00", "on 3/16 at 2pm") and stated("12:00", "at noon")
    assert dates_in("decide 5 things by Sept. 5th") == {(9, 5)}  # a word that starts like a month is not one
    assert times_in("I am 5, with 3 apples at 7:05") == {(7, 5, 0), (19, 5, 0)}
    call = {"name": "add_reminder", "arguments": {"time": "2023-03-16 14:30:00"}}
    assert unpassed_number([call], request) is None  # 16, 2 and 30 are the value's
    assert unpassed_number([call], request + " for 45 minutes") == 45
    assert unpassed_date([call], request) is None
    assert unpassed_date([call], request + " and again on March 20th") == (3, 20)


@pytest.mark.parametrize("value", ["2023-03-16 14:30:00", "2023-01-01 00:00:00", "2024-12-31", "09:05", "23:59:30"])
def test_the_request_writer_is_shown_dates_in_words_that_verification_accepts(value):
    said = calls.said({"time": value, "city": "Madrid"})
    assert said["city"] == "Madrid" and said["time"] != value  # the words, not the ISO form
    assert stated(value, f"Please do it on {said['time']}.")
    assert spoken(value) == said["time"]


@pytest.mark.parametrize(
    "request_text, calls, reason",
    [
        ("Weather in Madrid for 3 days in celsius", [WEATHER], None),
        ("Weather in Madrid for 3 days", [WEATHER], "a value is not stated in its request"),
        (
            "Weather in Madrid for 3 days in celsius",
            [{"name": "get_weather", "arguments": {"unit": "celsius"}}],
            "call breaks its schema",
        ),
        (
            "Weather in Madrid for 3 days in celsius",
            [{"name": "get_forecast", "arguments": {}}],
            "call breaks its schema",
        ),
        ("Weather in Madrid for 3 days in celsius", [], "no tool call"),
        (
            "Weather in Madrid for 3 days in celsius, required: city",
            [{"name": "get_weather", "arguments": {**WEATHER["arguments"], "required": ["city"]}}],
            "call has an argument its tool does not offer",
        ),
        ('{"city": "Madrid", "unit": "celsius", "days": 3}', [WEATHER], "request is not plain text"),
        ("get_weather('Madrid', 'celsius', 3) for 3 days", [WEATHER], "request is not plain text"),
        (USER, [{"name": "get_weather", "arguments": {"city": "Paris"}}], "copy of the request"),
        ("Weather in Paris and Madrid for 3 days in celsius", [WEATHER], "a value of the user's request leaks into it"),
        (
            "Weather in Madrid for 3 days from the 12th in celsius",
            [WEATHER],
            "its request states a number its call leaves out",
        ),
        (
            "Weather in Madrid for 3 days in celsius from March 3",
            [WEATHER],
            "its request states a date its call leaves out",
        ),
        ("city: Madrid, unit: celsius, days: 3, thanks a lot", [WEATHER], "request lists the call's fields"),
        ("Celsius: Madrid weather for 3 days please", [WEATHER], "request lists the call's fields"),
        ("Madrid, 3, celsius, ok", [WEATHER], "request is only its call's values"),
    ],
)
def test_each_verification_rule(tools, request_text, calls, reason):
    values = request_values([{"name": "get_weather", "arguments": {"city": "Paris"}}])
    assert example_problem(request_text, calls, tools, USER, values) == reason


def test_an_optional_value_the_written_request_leaves_out_is_dropped_from_its_call(tools):
    weather = next(tool for tool in tools if tool.name == "get_weather")
    request = "What will the weather be in Madrid for the next 3 days?"
    trimmed = stated_only(WEATHER, request, weather)  # WEATHER's unit is not in the request
    assert trimmed == {"name": "get_weather", "arguments": {"city": "Madrid", "days": 3}}
    assert example_problem(request, [trimmed], tools, USER) is None
    # a required value the request leaves out stays, and the example is refused
    unstated_city = stated_only(WEATHER, "Weather for the next 3 days in celsius", weather)
    assert unstated_city["arguments"]["city"] == "Madrid"
    assert example_problem("Weather for the next 3 days in celsius", [unstated_city], tools, USER) == (
        "a value is not stated in its request"
    )


def test_a_duplicate_example_is_refused(tools):
    kept = [{"request": "Weather in Madrid for 3 days in celsius", "calls": [WEATHER]}]
    assert example_problem("Madrid: 3 days, celsius", [WEATHER], tools, USER, [], kept) == "duplicate example"
    assert (
        example_problem("weather in madrid for 3 days in celsius!", [WEATHER], tools, USER, [], kept)
        == "duplicate example"
    )


def test_of_a_calls_requests_the_one_that_verifies_with_most_arguments_is_its_example(tools):
    job = Job(USER, tools, ["get_weather"], values=[], k=3, seed=0, temperature=0.8, writer=None, prompt=None, fmt=None)
    weather = next(tool for tool in tools if tool.name == "get_weather")
    written = [
        "Weather for the next 3 days in celsius",  # the required city left out: refused
        "What will the weather be in Madrid for the next 3 days?",  # verifies without the unit
        "Madrid weather for the next 3 days in celsius, please",  # verifies with every argument
    ]
    example, problem = calls.best_example(job, WEATHER, written, weather, [])
    assert problem is None and example["request"] == written[2] and example["calls"] == [WEATHER]
    example, problem = calls.best_example(job, WEATHER, written[:2], weather, [])
    assert example["request"] == written[1] and example["calls"][0]["arguments"] == {"city": "Madrid", "days": 3}
    # none verifies: the first request's reason is the call's
    assert calls.best_example(job, WEATHER, [written[0], USER], weather, []) == (
        None,
        "a value is not stated in its request",
    )


def test_a_date_or_time_in_another_form_than_its_parameter_documents_is_refused():
    spec = {"name": "set_alarm", "parameters": {"type": "object", "properties": {}, "required": ["time"]}}
    for description, fits, unfit in [
        ("Time of the alarm, HH:MM", ["07:15", "7:15 PM"], ["10.11.2017", "2023-10-11"]),
        ("Format: %Y-%m-%d %H:%M:%S", ["2023-03-16 14:30:00", "2023-03-16 2:30 PM"], ["2:30 PM", "2023-03-16"]),
        ("The day (YYYY-MM-DD).", ["2023-03-16", "2023-03-16 14:30"], ["March 16", "16/03/2023"]),
    ]:
        spec["parameters"]["properties"] = {"time": {"type": "string", "description": description}}
        tool = parse_tools([spec])[0]
        assert [unfit_key({"time": value}, tool) for value in fits + unfit] == [None] * len(fits) + ["time"] * len(
            unfit
        )
        request = f"Please wake me at {unfit[0]} for the gym"
        call = {"name": "set_alarm", "arguments": {"time": unfit[0]}}
        assert example_problem(request, [call], [tool], USER) == "a value is not in the form its parameter documents"
    # a 12-hour form, and no form at all, leave any value to the other rules
    spec["parameters"]["properties"] = {"time": {"type": "string", "description": "Time, HH:MM AM/PM"}}
    assert unfit_key({"time": "10.11.2017"}, parse_tools([spec])[0]) is None
    assert unfit_key({"time": "10.11.2017"}, next(t for t in parse_tools(TOOLS) if t.name == "set_alarm")) is None


def test_short_numbers_and_words_of_the_request_are_not_leaks():
    values = request_values([{"name": "set_alarm", "arguments": {"time": "7", "loud": True, "volume": 5}}])
    assert values == [5]  # "7" is too short a string to count, booleans never do
    assert leaked([WEATHER], "Weather in Madrid for 5 days", values) is None  # nor does a number below 10
    assert (
        leaked([WEATHER], "Weather in Madrid for 3 days", request_values([{"name": "x", "arguments": {"n": 250}}]))
        is None
    )
    assert (
        leaked([WEATHER], "Weather in Madrid for 250 days", request_values([{"name": "x", "arguments": {"n": 250}}]))
        == 250
    )


# ---- the informative filter ----


def test_examples_the_base_model_already_says_are_dropped():
    synthesis = Synthesis(examples=[{"request": str(i)} for i in range(5)], attempts=5)
    kept = keep_examples(synthesis, [True, False, False, True, False], k=2)
    assert [e["request"] for e in kept.examples] == ["1", "2"]
    assert kept.rejected == {"the base model already says it": 2}


def test_anchored_keeps_known_examples_beside_new_ones_and_none_without_new_ones():
    def synthesis():
        return Synthesis(examples=[{"request": str(i)} for i in range(5)], attempts=5)

    kept = keep_examples(synthesis(), [True, False, True, True, False], k=3, anchored=True)
    assert [e["request"] for e in kept.examples] == ["1", "4", "0"]
    assert kept.rejected == {"the base model already says it": 2}
    nothing_new = keep_examples(synthesis(), [True] * 5, k=3, anchored=True)
    assert nothing_new.examples == [] and nothing_new.rejected == {"the base model already says it": 5}


def test_answer_scores_match_scoring_and_find_what_is_said_back(tiny):
    tok = tiny.tokenizer
    prompt_ids = tok.encode("What is the weather in Paris?", add_special_tokens=False)
    state = ContextState(tiny.model, tok)
    state.sync(prompt_ids)
    greedy = [int(mx.argmax(state.logprobs).item())]
    state.push(greedy[0])
    greedy.append(int(mx.argmax(state.logprobs).item()))
    other = [(greedy[0] + 1) % 50, greedy[1]]
    state.sync(prompt_ids)
    expected, _ = state.score_continuations([greedy, other])
    scores = answer_scores(tiny.model, [(prompt_ids + greedy, len(prompt_ids)), (prompt_ids + other, len(prompt_ids))])
    assert [s[2] for s in scores] == [True, False]
    assert [s[1] for s in scores] == [2, 2]
    assert [s[0] for s in scores] == pytest.approx(expected, abs=1e-4)
    # the same through a frozen prefix of the first tokens
    state.sync(prompt_ids[:4])
    frozen = (4, state.prefix_arrays(4, copy=True))
    assert [s[0] for s in answer_scores(tiny.model, [(prompt_ids + greedy, len(prompt_ids))], frozen)] == pytest.approx(
        expected[:1], abs=1e-4
    )


# ---- the source, in the agent ----


def test_calls_first_examples_are_verified_and_never_the_request(agent, tools):
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="calls", keep="verified", examples=3)
    assert answer.adapted and answer.method == "ttsi"
    assert 1 <= len(answer.synthetic) <= 3
    for example in answer.synthetic:
        assert example["source"] == "calls" and example["request"] != USER
        assert example_problem(example["request"], example["calls"], tools, USER) is None
        assert "Paris" not in json.dumps(example)
    assert answer.asked == calls.CANDIDATES_PER_EXAMPLE * 3
    assert agent.adapter.is_reset()


def test_the_informative_filter_keeps_what_the_base_model_gets_wrong(agent, monkeypatch):
    said = iter([True, False] * 8)
    monkeypatch.setattr(
        "mlx_ttsi.turn.answer_scores", lambda model, pairs, frozen=None: [(-1.0, 1, next(said)) for _ in pairs]
    )
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="calls", examples=3, keep="informative")
    assert answer.rejected.get("the base model already says it", 0) >= 1
    assert answer.adapted and answer.synthetic
    # anchored (the default) keeps known examples beside the new ones instead of rejecting them
    anchored = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="calls", examples=3)
    assert anchored.adapted and len(anchored.synthetic) >= len(answer.synthetic)


def test_no_example_left_answers_with_the_checked_label(agent, monkeypatch):
    monkeypatch.setattr(
        "mlx_ttsi.turn.answer_scores", lambda model, pairs, frozen=None: [(-1.0, 1, True) for _ in pairs]
    )
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="calls")
    assert not answer.adapted and answer.note.startswith("not adapted")
    assert answer.tool_calls == answer.label
    assert agent.adapter.is_reset()


def test_every_source_is_a_module_with_three_names():
    for name, module in SOURCES.items():
        assert module.NAME == name and module.HELP and callable(module.synthesize)


def test_requests_source_labels_requests_with_the_models_own_call(agent):
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="requests", keep="verified")
    assert answer.asked >= 1
    for example in answer.synthetic:
        assert example["source"] == "requests"


def test_the_papers_ttsi_writes_one_example(agent):
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="paper", examples=1, same_tool=False)
    assert answer.asked >= 1 and len(answer.synthetic) <= 1


# ---- the gold answer's likelihood ----


def test_gold_likelihood_under_the_adapted_and_the_base_weights(agent):
    gold = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    answer = agent.ask(USER, tools=TOOLS, mode="ttsi", examples_from="calls", keep="verified", keep_adapter=True)
    assert answer.adapted and agent.adapter.is_reset()
    scored = agent.likelihoods(USER, tools=TOOLS, calls=[gold, answer.tool_calls], adapter_weights=answer.adapter)
    assert scored["adapted"] != scored["base"]
    assert agent.adapter.is_reset()  # scoring leaves the base model as it found it
    assert agent.likelihoods(USER, tools=TOOLS, calls=[gold, answer.tool_calls]) == {
        "base": scored["base"],
        "adapted": None,
    }
    # the base figure is the answer's own log-likelihood after the prompt
    pairs = agent.training_examples([{"request": USER, "calls": gold}], agent_tools(agent))
    assert scored["base"][0] == pytest.approx(answer_scores(agent.loaded.model, pairs)[0][0], abs=1e-3)


def agent_tools(agent):
    from mlx_ttsi.tools import parse_tools

    return parse_tools(TOOLS)


def test_scripted_calls_fit_the_tools(tools):
    from mlx_ttsi.tools import check_call

    for name, texts in SCRIPTED_CALLS.items():
        for text in texts:
            assert check_call({"name": name, "arguments": json.loads('{"' + text)}, tools) is None
