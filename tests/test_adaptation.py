import os

from mlx_ttsi.adaptation import Adapter
from mlx_ttsi.errors import TTSIError
from mlx_ttsi.settings import LoRASettings

import mlx.core as mx
import pytest


def logits(loaded, text="Set an alarm at 7 for work."):
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    out = loaded.model(mx.array(ids)[None])
    mx.eval(out)
    return out


def examples(loaded):
    tok = loaded.tokenizer
    prompt = tok.encode("What is the weather in Paris?", add_special_tokens=False)
    answer = tok.encode('{"name": "get_weather", "arguments": {"city": "Paris"}}', add_special_tokens=False)
    return [(prompt + answer, len(prompt))]


def test_after_reset_logits_equal_the_base_model_exactly(tiny):
    before = logits(tiny)
    adapter = Adapter(tiny.model, LoRASettings(epochs=3, learning_rate=1e-2))
    assert mx.array_equal(logits(tiny), before).item()  # zero lora_b: identical from the start
    adapter.train(examples(tiny))
    trained = logits(tiny)
    assert not mx.array_equal(trained, before).item()  # training really changed the model
    adapter.reset(seed=3)
    assert adapter.is_reset()
    assert mx.array_equal(logits(tiny), before).item()


def test_training_lowers_the_loss_on_the_answer(tiny):
    adapter = Adapter(tiny.model, LoRASettings(epochs=20, learning_rate=5e-3, stop_loss=0, stop_said_back=False))
    first = adapter.train(examples(tiny))
    adapter.reset(seed=0)
    assert first["steps"] == 20 and first["examples"] == 1
    ids, offset = examples(tiny)[0]

    def answer_loss():
        out = tiny.model(mx.array(ids)[None])[0].astype(mx.float32)
        lp = out - mx.logsumexp(out, axis=-1, keepdims=True)
        return -sum(lp[i - 1, ids[i]].item() for i in range(offset, len(ids))) / (len(ids) - offset)

    base = answer_loss()
    adapter.train(examples(tiny))
    assert answer_loss() < base * 0.8


def test_training_writes_nothing_and_prints_nothing(tiny, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adapter = Adapter(tiny.model, LoRASettings(epochs=2))
    adapter.train(examples(tiny))
    assert os.listdir(tmp_path) == []
    out, _ = capfd.readouterr()
    assert out == ""
    assert not tiny.model.training  # mlx-lm leaves train mode on; we switch it off


def test_lora_is_applied_once(tiny):
    Adapter(tiny.model)
    with pytest.raises(TTSIError, match="already has LoRA"):
        Adapter(tiny.model)


def test_weights_round_trip_and_reject_mismatches(tiny):
    adapter = Adapter(tiny.model, LoRASettings(epochs=2, learning_rate=1e-2))
    adapter.train(examples(tiny))
    saved = adapter.weights()
    trained = logits(tiny)
    adapter.reset()
    adapter.load(saved)
    assert mx.array_equal(logits(tiny), trained).item()
    with pytest.raises(TTSIError, match="do not match"):
        adapter.load({"x": mx.zeros((2,))})


def test_a_batch_larger_than_the_examples_takes_them_all(tiny):
    # batch_size is at most K: fewer examples (a low synthesis yield) still train, one step an epoch
    adapter = Adapter(tiny.model, LoRASettings(epochs=3, batch_size=4, stop_loss=0, stop_said_back=False))
    stats = adapter.train(examples(tiny) * 2)
    assert stats["steps"] == 3  # one batch of both an epoch (batch 1 would take 6)
    with pytest.raises(TTSIError, match="no training examples"):
        adapter.train([])


def test_split_model_projects_the_same_logits(tiny):
    from mlx_ttsi.context import split_model

    body, head = split_model(tiny.model)
    ids = mx.array(tiny.tokenizer.encode("Weather in Paris?", add_special_tokens=False))[None]
    assert mx.allclose(head(body(ids)), tiny.model(ids), atol=1e-5).item()


def test_frozen_prefix_loss_equals_the_full_sequence_loss_before_training(tiny):
    # with zero lora_b the prefix's KV is the same either way, so the two losses must agree
    from mlx_ttsi.adaptation import padded_batch, prefix_loss
    from mlx_ttsi.context import ContextState, split_model

    from mlx_lm.tuner.trainer import default_loss

    Adapter(tiny.model).attach()
    ids, offset = examples(tiny)[0]
    n = 4
    state = ContextState(tiny.model, tiny.tokenizer)
    state.sync(ids[: n + 1])
    loss = prefix_loss(state.prefix_arrays(n), split_model(tiny.model))
    fast, count, *_ = loss(tiny.model, *padded_batch([(ids[n:offset], ids[offset:])]))
    full, full_count = default_loss(tiny.model, mx.array(ids)[None], mx.array([[offset, len(ids) - 1]]))
    assert count.item() == full_count.item() == len(ids) - offset
    assert fast.item() == pytest.approx(full.item(), rel=1e-4)


def test_training_on_a_frozen_prefix_fits_the_answer(tiny):
    from mlx_ttsi.context import ContextState

    adapter = Adapter(tiny.model, LoRASettings(epochs=20, learning_rate=5e-3))
    ids, offset = examples(tiny)[0]
    state = ContextState(tiny.model, tiny.tokenizer)
    state.sync(ids[:5])
    stats = adapter.train(examples(tiny), prefix=(4, state.prefix_arrays(4)))
    assert stats["frozen_prefix"] == 4 and stats["trained_tokens"] > 0
    # decode the answer on the same frozen prefix: the trained answer is now the likeliest
    state.truncate(4)
    state.sync(ids[:offset])
    assert int(mx.argmax(state.logprobs).item()) == ids[offset]


def test_saved_adapter_loads_with_mlx_lm(tiny, tiny_model_dir, tmp_path):
    from mlx_lm import load

    adapter = Adapter(tiny.model, LoRASettings(epochs=2, learning_rate=1e-2))
    adapter.train(examples(tiny))
    ours = logits(tiny)
    adapter.save(tmp_path / "adapter")
    model, tokenizer = load(str(tiny_model_dir), adapter_path=str(tmp_path / "adapter"))
    ids = tiny.tokenizer.encode("Set an alarm at 7 for work.", add_special_tokens=False)
    assert mx.allclose(model(mx.array(ids)[None]), ours, atol=1e-4).item()
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapters.safetensors"]


def test_top_layer_lora_reuses_the_bottom_layers_hidden_states(tiny):
    # with LoRA on the top block only, the bottom block runs once per example: same loss
    from mlx_ttsi.adaptation import frozen_layers, lower_hidden, padded_batch, prefix_loss
    from mlx_ttsi.context import ContextState, split_model

    adapter = Adapter(tiny.model, LoRASettings(layers=1, epochs=3, learning_rate=1e-2))
    assert frozen_layers(tiny.model, adapter.settings) == 1
    ids, offset = examples(tiny)[0]
    n = 4
    state = ContextState(tiny.model, tiny.tokenizer)
    state.sync(ids[: n + 1])
    prefix, split = state.prefix_arrays(n), split_model(tiny.model)
    adapter.train(examples(tiny), prefix=(n, prefix))  # trained, so the top block's LoRA is non-zero
    prompt, answer = ids[n:offset], ids[offset:]
    full, *_ = prefix_loss(prefix, split)(tiny.model, *padded_batch([(prompt, answer)]))
    hidden = lower_hidden(split[0], prefix, 1, prompt, answer)
    reused, *_ = prefix_loss(prefix, split, lower=1)(tiny.model, *padded_batch([(hidden, answer)]))
    assert reused.item() == pytest.approx(full.item(), rel=1e-5)


def test_training_stops_after_an_epoch_whose_every_loss_is_below_stop_loss(tiny):
    two = examples(tiny) * 2  # two examples: an epoch is two steps
    adapter = Adapter(
        tiny.model, LoRASettings(epochs=6, learning_rate=1e-2, stop_loss=0, stop_said_back=False, batch_size=1)
    )
    full = adapter.train(two)
    adapter.reset(seed=0)
    assert full["steps"] == 12  # stop_loss 0: every epoch runs
    stopped = adapter.train(two, settings=LoRASettings(epochs=6, learning_rate=1e-2, stop_loss=10.0, batch_size=1))
    adapter.reset(seed=0)
    assert stopped["steps"] == 2  # every loss is below 10: the first whole epoch is the last
    fitted = adapter.train(
        two, settings=LoRASettings(epochs=6, learning_rate=1e-2, stop_loss=full["loss"], batch_size=1)
    )
    assert fitted["steps"] % 2 == 0 and 2 <= fitted["steps"] <= 12  # stops only at an epoch's end


@pytest.mark.parametrize("lower", [0, 1])
def test_a_padded_batch_gives_each_example_its_own_loss(tiny, lower):
    # K examples of different lengths in one padded step: the same losses as K steps of one
    from mlx_ttsi.adaptation import lower_hidden, padded_batch, prefix_loss
    from mlx_ttsi.context import ContextState, split_model

    adapter = Adapter(tiny.model, LoRASettings(layers=1, epochs=2, learning_rate=1e-2))
    tok = tiny.tokenizer
    pairs = [
        (tok.encode(q, add_special_tokens=False), tok.encode(a, add_special_tokens=False))
        for q, a in [
            ("Set an alarm at 7", ' {"time": "7"}'),
            ("Weather in Paris, France, today?", ' {"city": "Paris"}'),
            ("Hi", ' {"time": "07:00 tomorrow morning"}'),
        ]
    ]
    n = 4
    state = ContextState(tiny.model, tok)
    state.sync(tok.encode("System: tools here.", add_special_tokens=False))
    prefix, split = state.prefix_arrays(n), split_model(tiny.model)
    adapter.train([(list(state.tokens[:n]) + p + a, n + len(p)) for p, a in pairs], prefix=(n, prefix))  # non-zero LoRA
    items = [(lower_hidden(split[0], prefix, 1, p, a) if lower else p, a) for p, a in pairs]
    loss = prefix_loss(prefix, split, lower)
    alone = [loss(tiny.model, *padded_batch([item])) for item in items]
    mean, tokens, worst, _ = loss(tiny.model, *padded_batch(items))
    assert tokens.item() == sum(len(a) for _, a in pairs)
    weighted = sum(value.item() * count.item() for value, count, *_ in alone) / tokens.item()
    assert mean.item() == pytest.approx(weighted, rel=1e-4)
    assert worst.item() == pytest.approx(max(value.item() for value, *_ in alone), rel=1e-4)


def test_batched_training_fits_every_example(tiny):
    # one padded step per epoch over three examples: each example's answer is then the likeliest
    from mlx_ttsi.context import ContextState

    three = examples(tiny) * 3
    adapter = Adapter(
        tiny.model, LoRASettings(epochs=20, learning_rate=5e-3, batch_size=3, stop_loss=0, stop_said_back=False)
    )
    ids, offset = three[0]
    state = ContextState(tiny.model, tiny.tokenizer)
    state.sync(ids[:5])
    stats = adapter.train(three, prefix=(4, state.prefix_arrays(4)))
    assert stats["steps"] == 20 and stats["trained_tokens"] == 20 * 3 * (len(ids) - offset)
    state.truncate(4)
    state.sync(ids[:offset])
    assert int(mx.argmax(state.logprobs).item()) == ids[offset]


def test_training_stops_once_the_lora_says_back_every_example(tiny):
    # stop_said_back: the first epoch in which every answer token was the argmax is the last, and
    # the LoRA then writes each example's answer greedily, token by token
    from mlx_ttsi.context import ContextState

    tok = tiny.tokenizer
    prompts = ["What is the weather in Paris?", "Weather in Rome, please"]
    answer = tok.encode(' {"city": "Paris"}', add_special_tokens=False)
    state = ContextState(tiny.model, tok)
    state.sync(tok.encode("System: tools.", add_special_tokens=False))
    n = len(state.tokens)
    pairs = [
        (
            list(state.tokens) + tok.encode(p, add_special_tokens=False) + answer,
            n + len(tok.encode(p, add_special_tokens=False)),
        )
        for p in prompts
    ]
    prefix = (n, state.prefix_arrays(n))
    adapter = Adapter(
        tiny.model, LoRASettings(epochs=60, learning_rate=3e-3, stop_loss=0, stop_said_back=False, batch_size=1)
    )
    full = adapter.train(pairs, prefix=prefix)
    adapter.reset(seed=0)
    stopped = adapter.train(
        pairs,
        prefix=prefix,
        settings=LoRASettings(epochs=60, learning_rate=3e-3, stop_loss=0, batch_size=1, stop_said_back=True),
    )
    assert stopped["steps"] % 2 == 0 and stopped["steps"] < full["steps"] == 120
    for ids, offset in pairs:
        state.truncate(n)
        state.sync(ids[:offset])
        for token in ids[offset:]:
            assert int(mx.argmax(state.logprobs).item()) == token
            state.push(token)


def test_a_cancelled_request_stops_while_the_lower_layers_run(tiny, monkeypatch):
    # the bottom layers' hidden states come before the first step: cancellation is polled there too
    import mlx_ttsi.adaptation as adaptation
    from mlx_ttsi.context import ContextState
    from mlx_ttsi.errors import Cancelled

    adapter = Adapter(tiny.model, LoRASettings(layers=1, epochs=3, learning_rate=1e-2))
    ids, _ = examples(tiny)[0]
    state = ContextState(tiny.model, tiny.tokenizer)
    state.sync(ids[:5])
    runs, lower_hidden = [], adaptation.lower_hidden
    monkeypatch.setattr(adaptation, "lower_hidden", lambda *args: runs.append(1) or lower_hidden(*args))
    monkeypatch.setattr(adaptation, "fit", lambda *args, **kwargs: pytest.fail("trained after the cancellation"))
    with pytest.raises(Cancelled):
        adapter.train(examples(tiny) * 4, prefix=(4, state.prefix_arrays(4)), cancelled=lambda: len(runs) >= 1)
    assert len(runs) == 1
    adapter.reset()
    assert adapter.is_reset()
