"""The self-check's changes weighed by the model itself (grounding.weigh_changes, Agent's check_odds)."""

import math

from mlx_ttsi.self_check import changes, kept_stated, settled, weigh_changes
from mlx_ttsi.tools import parse_tools

import pytest
from conftest import TOOLS

BASE = [{"name": "convert", "arguments": {"amount": 250, "currency": "EUR", "note": "soon"}}]
LABEL = [{"name": "convert", "arguments": {"amount": 25, "currency": "euros", "date": "2024-05-01"}}]


def scorer(logprob_of):
    """A score function over call lists from a {frozenset of (key, value)} -> log-prob table."""
    seen = []

    def score(options):
        seen.append(options)
        return [logprob_of(calls) for calls in options]

    return score, seen


def test_changes_apply_one_argument_at_a_time_and_end_at_the_label():
    edits = changes(BASE, LABEL)
    calls, steps = BASE, []
    for edit in edits:
        calls = edit(calls)
        steps.append(calls[0]["arguments"])
    assert len(edits) == 4  # amount rewritten, currency rewritten, note dropped, date added
    assert steps[0] == {"amount": 25, "currency": "EUR", "note": "soon"}
    assert calls[0]["arguments"] == LABEL[0]["arguments"] and BASE[0]["arguments"]["amount"] == 250  # base untouched


def test_another_tool_is_one_change():
    rival = [{"name": "quote", "arguments": {"pair": "EURUSD"}}]
    edits = changes(BASE, rival)
    assert len(edits) == 1 and edits[0](BASE) == rival


def test_only_changes_the_model_finds_likely_enough_are_kept():
    # the model finds "25" for 250 and "euros" for "EUR" absurd, dropping the note and adding the date fine
    penalty = {("amount", 25): -9.0, ("currency", "euros"): -6.0, ("note", None): +0.5, ("date", "2024-05-01"): -1.0}

    def logprob(calls):
        arguments = calls[0]["arguments"]
        total = sum(p for (k, v), p in penalty.items() if v is not None and arguments.get(k) == v)
        return total + (penalty[("note", None)] if "note" not in arguments else 0.0)

    score, seen = scorer(logprob)
    kept = weigh_changes(score, BASE, LABEL, odds=0.1)  # log 0.1 = -2.3: -1.0 passes, -6 and -9 do not
    assert kept == [{"name": "convert", "arguments": {"amount": 250, "currency": "EUR", "date": "2024-05-01"}}]
    assert len(seen) == 4 and all(len(options) == 2 for options in seen)
    assert weigh_changes(score, BASE, LABEL, odds=math.exp(-10)) == LABEL  # odds low enough: every change
    assert weigh_changes(score, BASE, LABEL, odds=0) == LABEL  # 0: no weighing at all
    assert len(seen) == 8


def test_an_unchanged_label_costs_no_scoring():
    score, seen = scorer(lambda calls: pytest.fail("scored"))
    assert weigh_changes(score, BASE, [dict(c) for c in BASE], odds=0.5) == BASE and seen == []


@pytest.mark.parametrize("odds, kept", [(0.0, "label"), (1.0, "weighed")])
def test_the_agent_weighs_its_self_label_with_the_requests_check_odds(tiny, tools, monkeypatch, odds, kept):
    from mlx_ttsi import turn as agent_module
    from mlx_ttsi.agent import Agent

    calls = []
    original = agent_module.weigh_changes

    def spy(score, base, label, given_odds):
        calls.append(given_odds)
        if given_odds > 0:  # the score really is the base model's: a list of floats, one per option
            values = score([base, label])
            assert len(values) == 2 and all(isinstance(v, float) and v <= 0 for v in values)
        return original(score, base, label, given_odds)

    monkeypatch.setattr(agent_module, "weigh_changes", spy)
    agent = Agent(tiny)
    answer = agent.ask(
        "Set an alarm at 07:30 for the gym", tools=tools, mode="ttsi", force=True, check_odds=odds, examples=1, epochs=1
    )
    # the self-label and (--check-after, the default) the adapted answer's check: each weighs with the request's odds
    assert calls and set(calls) == {odds} and answer.label is not None


def test_mode_check_answers_with_the_checked_answer_and_never_trains(tiny, tools, monkeypatch):
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.turn import Turn

    agent = Agent(tiny)
    monkeypatch.setattr(Turn, "train", lambda *a, **k: pytest.fail("mode check trained"))
    request = "Set an alarm at 07:30 for the gym"
    checked = agent.ask(request, tools=tools, mode="check", check_odds=0)
    ttsi_label = agent.ask(request, tools=tools, mode="base")
    assert checked.tool_calls == checked.label and not checked.adapted and "training" not in checked.timings
    assert checked.method == ("base" if checked.label == ttsi_label.tool_calls else "check")


def test_brief_reasoning_writes_a_plan_line_then_a_schema_valid_call(tiny, tools, monkeypatch):
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.tools import check_call
    from mlx_ttsi.turn import PLAN_LEAD, PLAN_TOKENS, Turn

    agent = Agent(tiny)
    monkeypatch.setattr(Turn, "train", lambda *a, **k: pytest.fail("brief reasoning trained"))
    seen = []
    answer = agent.ask(
        "Set an alarm at 07:30 for the gym",
        tools=tools,
        mode="plan",
        check_after=False,
        progress=lambda phase, seconds, detail="": seen.append((phase, detail)),
    )
    planning = dict(seen)["planning"]
    assert planning.startswith(PLAN_LEAD) and "\n" not in planning
    assert len(tiny.tokenizer.encode(planning[len(PLAN_LEAD) :], add_special_tokens=False)) <= PLAN_TOKENS + 1
    assert [p for p, _ in seen] == ["planning", "scoring", "decoding"]
    assert answer.method == "plan" and not answer.adapted and check_call(answer.tool_calls[0], tools) is None
    # the call is decoded after the plan line: the prompt it was decoded from holds it
    assert answer.prompt_tokens > agent.ask("Set an alarm at 07:30 for the gym", tools=tools, mode="base").prompt_tokens


def test_plan_answers_by_default_with_the_checked_call_after_the_plan_line(tiny, tools, monkeypatch):
    import mlx_ttsi.turn as turn
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.settings import Settings

    request = "Set an alarm at 07:30 for the gym"
    agent = Agent(tiny, Settings(check_odds=0.0))
    planned = agent.ask(request, tools=tools, mode="plan", check_after=False)
    candidates = [{"name": t.name, "arguments": {}} for t in tools]
    checked = next(c for c in candidates if [c] != planned.tool_calls)  # a check that changes the call
    prompts = []

    def label_calls(decoder, prompt, tools, calls, context):
        prompts.append(prompt)
        return [dict(checked)]

    monkeypatch.setattr(turn, "label_calls", label_calls)
    unchecked = agent.ask(request, tools=tools, mode="plan", check_after=False)
    assert unchecked.tool_calls == planned.tool_calls and prompts == []
    answer = agent.ask(request, tools=tools, mode="plan")  # --check-after is the default
    assert answer.method == "plan" and not answer.adapted and "checking" in answer.timings
    assert answer.tool_calls == [checked] and answer.label == [checked] and answer.unchecked == planned.tool_calls
    assert answer.uncertainty.label_agrees is False
    assert prompts and all(turn.PLAN_LEAD in p for p in prompts)  # checked where it was written: after the plan


def test_a_date_or_time_in_the_documented_form_is_not_left_to_the_models_odds():
    from mlx_ttsi.self_check import conformed

    tools = parse_tools(
        [
            {
                "name": "query_health",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "string", "description": "Start of the span. Format: %Y-%m-%d %H:%M:%S"},
                        "user": {"type": "string"},
                    },
                    "required": ["start", "user"],
                },
            }
        ]
    )
    base = [{"name": "query_health", "arguments": {"start": "2023-03-13 8:00 AM", "user": "F24"}}]
    label = [{"name": "query_health", "arguments": {"start": "2023-03-13 08:00:00", "user": "F246"}}]
    start = conformed(base, tools)
    score, _ = scorer(lambda calls: -100.0 if calls != start else 0.0)  # the model would undo every change
    checked = weigh_changes(score, start, label, odds=0.1)
    assert checked[0]["arguments"] == {
        "start": "2023-03-13 08:00:00",
        "user": "F24",
    }  # the form kept, the rewrite weighed


def test_an_adapted_value_the_conversation_does_not_state_gives_way_to_the_stated_one():
    context = "Get the ECG sample of patient fINfRtJpnA from 10-06, lead II or III"
    label = [{"name": "getECGSample", "arguments": {"patient_id": "fINfRtJpnA", "date": "10-06", "lead": "II"}}]
    adapted = [{"name": "getECGSample", "arguments": {"patient_id": "fINfRtJnA", "date": "09-06", "lead": "III"}}]
    assert kept_stated(adapted, label, context) == [
        # the id and date come back; "III" is stated too, so the adapted choice stays
        {"name": "getECGSample", "arguments": {"patient_id": "fINfRtJpnA", "date": "10-06", "lead": "III"}}
    ]
    other_tool = [{"name": "getEEGSample", "arguments": {"patient_id": "x"}}]
    assert kept_stated(other_tool, label, context) == other_tool
    unstated_label = [{"name": "getECGSample", "arguments": {"patient_id": "abc"}}]
    assert kept_stated(adapted, unstated_label, context) == adapted  # only stated values are kept


def test_a_date_said_in_words_is_kept_in_the_form_the_label_wrote_it():
    context = "How much did I spend on October 6th? My token is x1"
    label = [{"name": "QueryHistoryToday", "arguments": {"token": "x1", "date": "10-06"}}]
    adapted = [{"name": "QueryHistoryToday", "arguments": {"token": "x1", "date": "09-06"}}]
    assert kept_stated(adapted, label, context) == label  # an example's date gives way to the user's
    # a date the conversation says, written another way by the adapted weights, stays theirs
    iso = [{"name": "QueryHistoryToday", "arguments": {"token": "x1", "date": "2023-10-06"}}]
    assert kept_stated(iso, label, context) == iso
    assert kept_stated(adapted, label, "How much did I spend? My token is x1") == adapted  # no date said


def test_the_adapted_answer_stands_only_where_adapting_earned_the_change():
    tools = parse_tools(TOOLS)
    weather = {"name": "get_weather", "arguments": {"city": "Paris"}}
    context = "What is the weather in Paris? And wake me at 07:15."

    def answer(adapted):
        return settled(adapted, [weather], tools, context)

    more_days = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]
    assert answer(more_days) == more_days  # the same tool, as much of the request: adapting may add a value
    example_city = [{"name": "get_weather", "arguments": {"city": "Lyon"}}]
    assert answer(example_city) == [weather]  # less of it: an example's value in place of the user's
    sibling = [{"name": "set_alarm", "arguments": {"time": "Paris", "loud": True}}]
    assert answer(sibling) == [weather]  # another tool, no more of the request
    both = [weather, {"name": "set_alarm", "arguments": {"time": "07:15", "loud": True}}]
    assert answer(both) == both  # other calls that use more of it
