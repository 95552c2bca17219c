import json

from mlx_ttsi.agent import Agent
from mlx_ttsi.errors import RequestError, TTSIError
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.tools import check_call

import mlx.core as mx
import pytest
from conftest import TOOLS


def base_logits(agent):
    ids = agent.loaded.tokenizer.encode("What is the weather in Paris?", add_special_tokens=False)
    out = agent.loaded.model(mx.array(ids)[None])
    mx.eval(out)
    return out


@pytest.fixture
def agent(tiny):
    # the tiny model's labels are random: keep examples whatever tool they call
    return Agent(tiny, Settings(same_tool=False, lora=LoRASettings(epochs=2, learning_rate=1e-2)))


def test_ttsi_adapts_answers_and_resets(agent, tools):
    before = base_logits(agent)
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttsi", examples_from="twins")
    assert answer.adapted and answer.method == "ttsi"
    own = answer.synthetic[0]  # the request itself with its self-label, then twins of it
    assert own["source"] == "self-label" and own["request"] == "What is the weather in Paris?"
    assert own["calls"] == answer.label and all(e["source"] == "twin" for e in answer.synthetic[1:])
    assert 1 <= len(answer.synthetic) <= 3 and answer.asked == 3
    assert answer.training["steps"] == 2 * len(answer.synthetic)
    assert check_call(answer.tool_calls[0], tools) is None
    assert set(answer.timings) >= {"scoring", "synthesis", "training", "answering", "total"}
    assert agent.adapter.is_reset()
    assert mx.array_equal(base_logits(agent), before).item()  # nothing leaks to the next request
    json.dumps(answer.as_dict())  # the --json output is serialisable


def test_base_mode_never_adapts_and_is_deterministic(agent):
    first = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert not first.adapted and first.synthetic == [] and "training" not in first.timings
    agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttsi")
    again = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert again.tool_calls == first.tool_calls
    assert again.uncertainty.candidates == first.uncertainty.candidates


def test_auto_mode_follows_the_threshold(agent):
    never = agent.ask("Set an alarm at 7", tools=TOOLS, mode="auto", threshold=0.0)
    assert not never.uncertainty.uncertain and not never.adapted
    always = agent.ask("Set an alarm at 7", tools=TOOLS, mode="auto", threshold=1.0)
    assert always.uncertainty.uncertain and always.adapted


def test_gated_methods_skip_certain_requests(agent):
    answer = agent.ask("Set an alarm at 7", tools=TOOLS, mode="ticl", threshold=0.0, force=False)
    assert not answer.adapted


def test_ticl_puts_examples_in_the_prompt_without_training(agent):
    answer = agent.ask("Set an alarm at 7", tools=TOOLS, mode="ticl")
    assert answer.adapted and answer.method == "ticl" and answer.training is None
    assert "training" not in answer.timings


def test_uncertainty_reports_every_offered_tool(agent):
    answer = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    u = answer.uncertainty
    assert sorted(c["name"] for c in u.candidates) == ["get_weather", "list_alarms", "set_alarm"]
    assert sum(c["prob"] for c in u.candidates) == pytest.approx(1.0, abs=1e-4)
    assert u.name_score == pytest.approx(u.candidates[0]["prob"] - u.candidates[1]["prob"], abs=1e-5)
    assert u.score == min(u.name_score, u.argument_score)  # base mode: no self-label check
    assert u.label_agrees is None


def test_call_candidates_score_whole_calls(agent):
    answer = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base", candidates="call", norm="sum")
    assert answer.uncertainty.form == "call"
    assert answer.tool_calls[0]["name"] == answer.uncertainty.best


def rendered_prompt(agent, messages):
    from mlx_ttsi.prompts import call_format, normalize_messages, render_prompt
    from mlx_ttsi.tools import parse_tools

    tok = agent.loaded.tokenizer
    return render_prompt(tok, normalize_messages(messages), parse_tools(TOOLS), call_format(tok))


def test_conversation_ending_with_an_assistant_turn_gets_a_new_turn(agent):
    # API-Bank dialogues end with the assistant's "Got it." before the expected call
    messages = [{"role": "user", "content": "Set an alarm at 7"}, {"role": "assistant", "content": "Got it."}]
    prompt = rendered_prompt(agent, messages)
    assert prompt.endswith("Got it.<|im_end|>\n<|im_start|>assistant\n")  # the answer is a turn of its own
    answer = agent.ask(messages=messages, tools=TOOLS, mode="base")
    assert answer.prompt_tokens == len(agent.loaded.tokenizer.encode(prompt, add_special_tokens=False))


def test_multi_turn_messages(agent):
    messages = [
        {"role": "user", "content": "Set an alarm at 7"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "set_alarm", "arguments": '{"time": "07:00", "loud": true}'},
                }
            ],
        },
        {"role": "tool", "content": "ok"},
        {"role": "user", "content": "and what is the weather in Oslo?"},
    ]
    prompt = rendered_prompt(agent, messages)
    # the earlier call is written as the model writes calls, its result as a user turn (fallback format)
    assert '{"name": "set_alarm", "arguments": {"time": "07:00", "loud": true}}' in prompt
    assert "Tool result: ok" in prompt and prompt.index("Tool result: ok") < prompt.index("weather in Oslo")
    answer = agent.ask(messages=messages, tools=TOOLS, mode="base")
    assert answer.prompt_tokens == len(agent.loaded.tokenizer.encode(prompt, add_special_tokens=False))


def test_reused_adapter_skips_synthesis_and_training(agent):
    trained = agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttsi", keep_adapter=True)
    assert trained.adapter
    reused = agent.ask("Set an alarm at 8", tools=TOOLS, mode="ttsi", adapter_weights=trained.adapter)
    assert reused.adapted and reused.reused and "synthesis" not in reused.timings
    assert agent.adapter.is_reset()


def test_text_answer_without_tools(agent):
    answer = agent.ask("Say hello", max_tokens=5)
    assert answer.tool_calls == [] and answer.uncertainty is None and isinstance(answer.answer, str)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"request": ""}, RequestError, "empty"),
        ({"request": "   "}, RequestError, "empty"),
        ({"request": "x" * 200_001}, RequestError, "over"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, RequestError, "needs a non-empty user message"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}, RequestError, "system"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, RequestError, "role"),
        ({"request": "hi", "mode": "magic"}, TTSIError, "mode must be one of"),
        ({"request": "hi", "threshold": 2}, TTSIError, "threshold"),
    ],
)
def test_bad_requests_fail_clearly(agent, kwargs, error, message):
    with pytest.raises(error, match=message):
        agent.ask(tools=TOOLS, **kwargs)


def test_request_longer_than_context_fails_clearly(tiny):
    tiny.context_length = 64
    agent = Agent(tiny)
    with pytest.raises(RequestError, match="longer than the model's context"):
        agent.ask("weather " * 100, tools=TOOLS)


def test_ttd_without_teacher_fails_clearly(agent):
    with pytest.raises(TTSIError, match="needs a teacher"):
        agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttd")


def test_per_request_schedule_overrides_apply_and_shape_is_fixed(agent):
    from dataclasses import replace

    # one example a step and no early stop: every one of the 3 epochs runs its K steps
    lora = replace(agent.settings.lora, epochs=3, batch_size=1, stop_loss=0, stop_said_back=False)
    answer = agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttsi", lora=lora)
    assert answer.training["steps"] == 3 * answer.training["examples"]
    with pytest.raises(TTSIError, match="fixed when the model is loaded"):
        agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttsi", lora=replace(agent.settings.lora, rank=4))


def test_requests_with_the_same_tools_reuse_the_system_prompt_cache(agent):
    first = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert len(agent.prefixes.entries) == 1
    cached = next(iter(agent.prefixes.entries))
    again = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert list(agent.prefixes.entries) == [cached]
    probs = lambda answer: [c["prob"] for c in answer.uncertainty.candidates]  # noqa: E731
    assert again.tool_calls == first.tool_calls
    assert probs(again) == pytest.approx(probs(first), abs=1e-5)
    adapted = agent.ask("Set an alarm at 7", tools=TOOLS, mode="ttsi")  # a LoRA never touches the cached base KV
    base_after = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert adapted.adapted and base_after.tool_calls == first.tool_calls
    assert probs(base_after) == pytest.approx(probs(first), abs=1e-5)


def test_same_tool_check_refuses_teacher_examples_for_another_tool(tiny, tiny_model_dir, monkeypatch):
    from mlx_ttsi.synthesis import ModelWriter

    strict = Agent(tiny, Settings(same_tool=True, examples=1), teacher=str(tiny_model_dir))
    own = strict.ask("What is the weather in Paris?", tools=TOOLS, mode="base").uncertainty.best
    other = next(
        c
        for c in ({"name": "list_alarms", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Rome"}})
        if c["name"] != own
    )  # a valid call of another tool than the model's own choice
    monkeypatch.setattr(ModelWriter, "label", lambda self, state, request, tools, options=None: [other])
    answer = strict.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd")
    assert answer.uncertainty.best == own
    assert not answer.adapted and answer.rejected == {"another tool than the model's own choice": 3}
    # a request meant to adapt that cannot says why, and is answered by the base model
    assert answer.note == (
        "not adapted: all 3 candidate examples were rejected (3 another tool than the model's own choice)"
    )
    assert answer.method == "base" and answer.training is None


def test_one_tool_request_can_be_uncertain_about_its_arguments(agent):
    one = [TOOLS[0]]
    answer = agent.ask("What is the weather in Paris?", tools=one, mode="auto", threshold=0.99)
    u = answer.uncertainty
    assert u.name_score == 1.0  # one name: the paper's estimator is always sure
    assert u.argument_score is not None and u.label_agrees is not None
    assert u.score == (0.0 if u.label_agrees is False else min(1.0, u.argument_score))
    assert answer.adapted == u.uncertain


def test_gold_answers_reach_only_train_on(agent, monkeypatch):
    gold = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    given = [{"request": "What is the weather in Paris?", "calls": gold, "source": "gold"}]
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttsi", force=True, train_on=given)
    assert answer.adapted and answer.synthetic == given and answer.label is None
    assert answer.training["examples"] == 1
    none = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttsi", force=True, train_on=[])
    assert not none.adapted and none.note == "not adapted: no examples were given to train on"


def test_warm_caches_the_tools_prefix_without_changing_answers(agent):
    cold = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    agent.prefixes.entries.clear()
    agent.warm(TOOLS)
    assert len(agent.prefixes.entries) == 1
    warm = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert len(agent.prefixes.entries) == 1  # the request used the warmed prefix, not a new one
    assert warm.tool_calls == cold.tool_calls
    assert [c["prob"] for c in warm.uncertainty.candidates] == pytest.approx(
        [c["prob"] for c in cold.uncertainty.candidates], abs=1e-5
    )


@pytest.mark.parametrize(
    "mode, options, expected",
    [
        ("auto", {}, ("ttsi", True, "self-label", False)),
        ("auto", {"has_teacher": True}, ("ttd", True, "teacher", False)),
        ("ttsi", {}, ("ttsi", False, "self-label", False)),
        ("ttsi", {"force": False}, ("ttsi", True, "self-label", False)),
        ("ttsi", {"stored": True}, ("ttsi", False, "stored", False)),
        ("ticl", {"stored": True}, ("ticl", False, "self-label", False)),  # demonstrations, not weights
        ("auto", {"given": True}, ("ttsi", False, "given", False)),
        ("base", {}, ("base", False, "self-label", True)),
    ],
)
def test_the_plan_of_a_request(mode, options, expected):
    from mlx_ttsi.agent import plan_request

    plan = plan_request(mode, **options)
    assert (plan.method, plan.gated, plan.source, plan.stream_base) == expected
    assert plan.self_check == (plan.source == "self-label" and plan.method in ("ttsi", "ticl"))


def test_an_adapted_answer_that_has_not_earned_its_change_gives_way_to_the_self_label(agent, monkeypatch):
    import mlx_ttsi.turn as agent_module

    label = {"name": "get_weather", "arguments": {"city": "Paris"}}
    pulled = {"name": "set_alarm", "arguments": {"time": "07:15", "loud": True}}  # an example's tool and time

    def label_calls(
        decoder, prompt, tools, calls, context
    ):  # the base answer checks as `label`, the adapted as `pulled`
        return [dict(pulled if agent.adapter.trained else label)]

    monkeypatch.setattr(agent_module, "label_calls", label_calls)
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttsi", examples_from="twins", check_odds=0.0)
    assert answer.adapted and answer.label == [label]
    assert answer.tool_calls == [label] and answer.unchecked is not None
    # an adapted answer that uses as much of the request stays
    pulled = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttsi", examples_from="twins", check_odds=0.0)
    assert answer.tool_calls == [pulled]


@pytest.mark.parametrize("mode", ["base", "auto", "ttsi"])
def test_streamed_pieces_add_up_to_the_answer(agent, mode):
    pieces = []
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode=mode, on_piece=lambda *p: pieces.append(p))
    assert [text for kind, text in pieces if kind == "call"] == [c["name"] for c in answer.tool_calls]
    arguments = "".join(text for kind, text in pieces if kind == "arguments")
    assert json.loads(arguments) == answer.tool_calls[0]["arguments"]
    assert answer.finish_reason == "tool_calls" and answer.completion_tokens > 0


def test_the_adapted_answer_is_checked_by_default_with_the_adapted_weights(agent, monkeypatch):
    import mlx_ttsi.turn as agent_module

    checked = {"name": "get_weather", "arguments": {"city": "Paris"}}
    real, attached = agent_module.label_calls, []

    def label_calls(decoder, prompt, tools, calls, context):  # the base answer as the rules check it,
        attached.append(agent.adapter.trained)  # the adapted one rewritten to `checked`
        return [dict(checked)] if agent.adapter.trained else real(decoder, prompt, tools, calls, context)

    monkeypatch.setattr(agent_module, "label_calls", label_calls)
    pieces, request = [], "What is the weather in Paris?"
    plain = agent.ask(request, tools=TOOLS, mode="ttsi", examples_from="twins", check_odds=0.0, check_after=False)
    assert plain.adapted and plain.unchecked is None and attached == [False]  # off: the check runs once, on base
    answer = agent.ask(
        request,
        tools=TOOLS,
        mode="ttsi",
        examples_from="twins",
        check_odds=0.0,  # --check-after is the default
        on_piece=lambda *p: pieces.append(p),
    )
    assert attached[1:] == [False, True] and answer.adapted and answer.method == "ttsi"
    assert answer.tool_calls == [checked] and answer.unchecked == plain.tool_calls != [checked]
    assert "checking" in answer.timings and agent.adapter.is_reset()
    # a client streaming the answer hears the checked calls only
    assert [p for p in pieces if p[0] == "call"] == [("call", "get_weather")]
    assert json.loads("".join(t for k, t in pieces if k == "arguments")) == {"city": "Paris"}


def test_an_adapted_answer_keeps_the_value_the_self_label_took_from_the_request(agent, monkeypatch):
    import mlx_ttsi.turn as agent_module

    def label_calls(decoder, prompt, tools, calls, context):  # the adapted weights write an example's city
        return [{"name": "get_weather", "arguments": {"city": "Lyon" if agent.adapter.trained else "Paris"}}]

    monkeypatch.setattr(agent_module, "label_calls", label_calls)
    request = "What is the weather in Paris?"
    answer = agent.ask(request, tools=TOOLS, mode="ttsi", examples_from="twins", check_odds=0.0, force=True)
    assert answer.adapted and answer.label == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert answer.tool_calls == answer.label  # "Lyon" is not in the request: the stated "Paris" stays
    assert agent.adapter.is_reset()


def test_text_answers_stream_while_they_are_generated(agent):
    heard = []
    answer = agent.ask(
        "Hello there",
        max_tokens=8,
        on_piece=lambda *p: heard.append(p),
        progress=lambda phase, *_: heard.append(("phase", phase)),
    )
    assert heard[-1] == ("phase", "answering") and {kind for kind, _ in heard[:-1]} == {"content"}
    assert "".join(text for _, text in heard[:-1]).strip() == answer.answer
    assert answer.completion_tokens == 8 and answer.finish_reason == "length"


def test_a_cancelled_request_stops_during_training_and_leaves_the_model_clean(agent):
    from mlx_ttsi.errors import Cancelled

    before = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    phases, steps = [], []

    def cancelled():  # gives up at the second training step
        steps.append(phases[-1] if phases else None)
        return steps.count("synthesis") >= 2

    with pytest.raises(Cancelled):
        agent.ask(
            "Set an alarm at 7",
            tools=TOOLS,
            mode="ttsi",
            epochs=50,
            progress=lambda phase, *_: phases.append(phase),
            cancelled=cancelled,
        )
    assert phases[-1] == "synthesis" and "training" not in phases
    assert agent.adapter.is_reset()
    after = agent.ask("Set an alarm at 7", tools=TOOLS, mode="base")
    assert after.tool_calls == before.tool_calls and after.uncertainty.score == pytest.approx(before.uncertainty.score)
