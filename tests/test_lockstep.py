"""Requests decoded side by side (lockstep.py) give what each gives alone."""

from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import CallDecoder
from mlx_ttsi.errors import RequestError, TTSIError
from mlx_ttsi.lockstep import Lockstep
from mlx_ttsi.prompts import call_format, render_prompt

import mlx.core as mx
import pytest
from conftest import TOOLS

REQUESTS = [
    "Book a table",
    "What is the weather in Paris tomorrow, in celsius, for the next 3 days?",
    "Set a loud alarm at 07:30 for work",
    "List all alarms",
]


def decoded(tiny, tools, request, forward=None):
    """(calls, text, every choice's log-probs) of the greedy schema-guided decode of `request`."""
    fmt = call_format(tiny.tokenizer)
    prompt = render_prompt(tiny.tokenizer, [{"role": "user", "content": request}], tools, fmt)
    options = {"forward": forward} if forward else {}
    decoder = CallDecoder(ContextState(tiny.model, tiny.tokenizer, **options), fmt, max_calls=2)
    answer = decoder.decode(prompt, tools)
    return answer.calls, answer.text, [lp for c in answer.choices for lp in c.logprobs]


@pytest.mark.parametrize("seed", range(2))
def test_requests_decoded_side_by_side_equal_each_decoded_alone(tiny, tools, seed):
    mx.random.seed(seed)
    requests = [r + f" ({seed})" for r in REQUESTS]
    alone = [decoded(tiny, tools, r) for r in requests]
    group = Lockstep()
    together = group.run([lambda r=r: decoded(tiny, tools, r, group.forward) for r in requests])
    assert [error for _, error in together] == [None] * len(requests)
    for (calls, text, logprobs), (value, _) in zip(alone, together):
        assert value[:2] == (calls, text)
        assert value[2] == pytest.approx(logprobs, abs=1e-4)
    assert 0 < group.batched < group.passes  # passes did run together


def answered(answer):
    """What a user reads of an answer: the text, the calls, the uncertainty and the label."""
    u = answer.uncertainty
    return answer.answer, answer.tool_calls, u and round(u.score, 4), answer.label


@pytest.mark.parametrize("mode", ["base", "check", "plan"])
def test_an_agent_answers_requests_together_as_it_does_one_by_one(tiny, mode):
    agent = Agent(tiny)
    asks = [{"request": r, "tools": TOOLS, "mode": mode} for r in REQUESTS[:3]]
    asks.append({"request": "Convert 100 USD to EUR", "mode": mode})  # no tools: a plain reply
    alone = [answered(agent.ask(**ask)) for ask in asks]
    together = agent.ask_together(asks)
    assert [answered(answer) for answer, _ in together] == alone
    assert agent.ask(**asks[0]) and answered(agent.ask(**asks[0])) == alone[0]  # the agent is itself again


def test_a_request_that_fails_together_fails_alone_and_the_others_are_answered(tiny):
    agent = Agent(tiny)
    long = "weather " * 5000  # over the tiny model's context
    together = agent.ask_together([{"request": long, "tools": TOOLS}, {"request": REQUESTS[1], "tools": TOOLS}])
    assert isinstance(together[0][1], RequestError) and together[0][0] is None
    assert together[1][1] is None and together[1][0].tool_calls


def test_requests_that_train_cannot_run_together(tiny):
    with pytest.raises(TTSIError, match="trains"):
        Agent(tiny).ask_together([{"request": REQUESTS[0], "tools": TOOLS, "mode": "ttsi"}])
