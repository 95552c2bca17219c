"""End to end on the embedded Qwen2.5-Coder-0.5B-Instruct (marker `model`; `make test` runs them).

The paper's model family, and the first real chat template with a native tool-call format
(Hermes `<tool_call>`) the format tests can use."""

import json
import math

from mlx_ttsi.tools import check_call, parse_tools

import mlx.core as mx
import pytest

pytestmark = pytest.mark.model
ENGLISH = (
    "The library opens at nine in the morning and closes at six in the evening. On Saturdays it "
    "closes earlier, and on Sundays it stays closed all day."
)


def perplexity(loaded, text):
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    logits = loaded.model(mx.array(ids)[None])[0, :-1].astype(mx.float32)
    targets = mx.array(ids[1:])
    nll = mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return math.exp(nll.mean().item())


def test_the_import_reads_plain_english_well(qwen_agent):
    # a wrongly imported tensor or tokenizer gives fluent-looking garbage: perplexity in the hundreds
    assert perplexity(qwen_agent.loaded, ENGLISH) < 20
    assert (
        perplexity(qwen_agent.loaded, ENGLISH) < perplexity(qwen_agent.loaded, " ".join(reversed(ENGLISH.split()))) / 4
    )


def test_hermes_tool_calls_through_the_models_own_template(qwen_agent, embedded_requests):
    from mlx_ttsi.prompts import render_prompt

    row = embedded_requests["song"]
    tools = parse_tools(row["tools"])
    assert qwen_agent.fmt.family == "json_tools" and qwen_agent.fmt.native
    prompt = render_prompt(
        qwen_agent.loaded.tokenizer, [{"role": "user", "content": row["request"]}], tools, qwen_agent.fmt
    )
    assert "<tools>" in prompt and "<tool_call>" in prompt and '"name": "play_song"' in prompt  # Qwen's own wording
    answer = qwen_agent.ask(row["request"], tools=row["tools"], mode="base")
    assert answer.answer.startswith("<tool_call>\n{") and answer.answer.rstrip().endswith("</tool_call>")
    call = answer.tool_calls[0]
    assert len(answer.tool_calls) == 1 and call["name"] == "play_song" and call["arguments"]["title"] == "Yellow"
    assert check_call(call, tools) is None
    # mlx-lm's own Hermes parser reads the answer the same way
    parsed = qwen_agent.loaded.tokenizer.tool_parser(
        answer.answer.split("<tool_call>")[1].split("</tool_call>")[0], tools
    )
    assert parsed["name"] == "play_song" and parsed["arguments"] == call["arguments"]


def test_forced_ttsi_answers_with_a_trained_lora_and_resets(qwen_agent, embedded_requests):
    row = embedded_requests["flight"]
    tools = parse_tools(row["tools"])
    before = qwen_agent.loaded.model(mx.array([[1, 2, 3]]))
    # the default source (calls first, then requests, verified) writes on the real model; --keep verified
    # trains on every verified example, so that the LoRA machinery runs whatever the base model knows
    answer = qwen_agent.ask(row["request"], tools=row["tools"], mode="ttsi", force=True, examples=2, keep="verified")
    assert answer.adapted and answer.method == "ttsi" and answer.training["steps"] >= 2
    assert check_call(answer.tool_calls[0], tools) is None and answer.tool_calls[0]["name"] == "search_flights"
    assert all("<tool_call>" not in e["request"] and e["request"] != row["request"] for e in answer.synthetic)
    assert all(
        e["calls"][0]["name"] == "search_flights" and check_call(e["calls"][0], tools) is None for e in answer.synthetic
    )
    assert qwen_agent.adapter.is_reset()
    assert mx.array_equal(qwen_agent.loaded.model(mx.array([[1, 2, 3]])), before).item()  # nothing leaks
    assert json.loads(json.dumps(answer.as_dict()))["model"] == "qwen2.5-coder-0.5b"
