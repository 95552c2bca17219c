from mlx_ttsi.context import ContextState

import mlx.core as mx
import pytest
from conftest import scripted_sampler


def full_logprob(model, ids, start):
    """Summed log-prob of ids[start:] computed from scratch, no cache."""
    logits = model(mx.array(ids)[None])[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids)))


def test_batched_scoring_with_shared_cache_equals_scoring_each_sequence(tiny):
    state = ContextState(tiny.model, tiny.tokenizer)
    prefix = state.encode("What is the weather in Paris?")
    continuations = [state.encode(" get_weather"), state.encode(" set"), state.encode(' list_alarms"}')]
    state.sync(prefix)
    totals, lengths = state.score_continuations(continuations)
    assert lengths == [len(c) for c in continuations]
    for total, cont in zip(totals, continuations):
        assert total == pytest.approx(full_logprob(tiny.model, prefix + cont, len(prefix)), abs=1e-4)


def test_sync_reuses_the_cached_prefix_and_stays_exact(tiny):
    state = ContextState(tiny.model, tiny.tokenizer)
    first = state.encode("Set an alarm at 7 for work.")
    second = state.encode("Set an alarm at 9 for work.")
    state.sync(first)
    fed = state.forward_tokens
    state.sync(second)
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert state.forward_tokens - fed == len(second) - shared  # only the changed tail is recomputed
    fresh = ContextState(tiny.model, tiny.tokenizer)
    fresh.sync(second)
    assert mx.allclose(state.logprobs, fresh.logprobs, atol=1e-4).item()


def test_prompt_longer_than_context_is_refused(tiny):
    from mlx_ttsi.errors import RequestError

    state = ContextState(tiny.model, tiny.tokenizer, context_length=8)
    with pytest.raises(RequestError, match="longer than the model's context"):
        state.set_text("What is the weather in Paris tomorrow? Set an alarm at 7 for work.")


@pytest.mark.parametrize("fit", [0, 2])  # copies of the cache for none (one by one) or two at a time
def test_long_contexts_score_in_groups_that_fit_with_the_same_results(tiny, monkeypatch, fit):
    # where no tree pass runs (a model it does not know, or a tree too long), copies of the cache
    import mlx_ttsi.context as context_module

    monkeypatch.setattr(context_module, "TREE_TOKENS", 0)
    state = ContextState(tiny.model, tiny.tokenizer)
    prefix = state.encode("What is the weather in Paris?")
    continuations = [state.encode(" get_weather"), state.encode(' list_alarms"}'), state.encode(" set_alarm")]
    assert all(len(c) > 1 for c in continuations)
    state.sync(prefix)
    batched, _ = state.score_continuations(continuations)
    copy = sum(c.keys[..., : len(prefix), :].nbytes * 2 for c in state.cache)  # one copy of the context
    monkeypatch.setattr(context_module, "FORK_BYTES", fit * copy)
    passes, forward = [], state.forward
    monkeypatch.setattr(state, "forward", lambda model, x, *a: passes.append(x.shape[0]) or forward(model, x, *a))
    grouped, _ = state.score_continuations(continuations)
    assert grouped == pytest.approx(batched, abs=1e-4)
    assert passes == ([1, 1, 1] if fit == 0 else [2, 1])  # each alone, or two side by side and the third alone
    assert state.tokens == prefix  # the shared cache was trimmed back
    fresh = ContextState(tiny.model, tiny.tokenizer)
    fresh.sync(prefix)
    assert mx.allclose(state.logprobs, fresh.logprobs, atol=1e-4).item()


def test_sample_stops_at_the_stop_text_and_feeds_what_it_wrote(tiny):
    state = ContextState(tiny.model, tiny.tokenizer)
    state.set_text("What is the weather in Paris?")
    before = len(state.tokens)
    text = state.sample(scripted_sampler(tiny.tokenizer, "Set an alarm\nat 7"), max_tokens=40)
    assert text.rstrip("\n") == "Set an alarm" and text.endswith("\n")
    # every token but the one that ended the text is in the context, logits computed
    assert tiny.tokenizer.decode(state.tokens[before:]) == "Set an alarm"
    assert state.logprobs is not None


def test_sample_stops_at_end_of_turn_and_at_max_tokens(tiny):
    state = ContextState(tiny.model, tiny.tokenizer)
    state.set_text("Hello")
    assert state.sample(scripted_sampler(tiny.tokenizer, "Paris"), max_tokens=40) == "Paris"  # then EOS
    state.set_text("Hello")
    ids = tiny.tokenizer.encode("What is the weather in Paris tomorrow", add_special_tokens=False)
    text = state.sample(scripted_sampler(tiny.tokenizer, "What is the weather in Paris tomorrow"), max_tokens=3)
    assert text == tiny.tokenizer.decode(ids[:3])


def test_cancelled_context_stops_before_the_next_forward_pass(tiny):
    from mlx_ttsi.errors import Cancelled

    stop = []
    state = ContextState(tiny.model, tiny.tokenizer, cancelled=lambda: bool(stop))
    state.set_text("Hello")
    fed = state.forward_tokens
    stop.append(True)
    with pytest.raises(Cancelled):
        state.push(5)
    assert state.forward_tokens == fed


def test_looked_up_continues_the_longest_tail_where_it_last_occurred():
    looked_up = ContextState.looked_up
    assert looked_up([1, 2, 3, 9, 2, 3, 7, 1, 2, 3], 2) == [9, 2]  # [1, 2, 3] beats the later [2, 3]
    assert looked_up([4, 5, 4, 6, 4], 3) == [6, 4]  # the last earlier occurrence of [4]
    assert looked_up([1, 2, 3], 4) == []  # 3 never occurred before


def test_a_pushed_token_runs_what_followed_it_earlier_as_a_draft_with_the_same_log_probs(tiny):
    stepped, looking = ContextState(tiny.model, tiny.tokenizer), ContextState(tiny.model, tiny.tokenizer)
    prompt = stepped.encode("Send the report to Maria Lopez Garcia today. Recipient:")
    copied = stepped.encode(" Maria Lopez Garcia")
    assert all(token in prompt for token in copied)
    stepped.sync(prompt)
    looking.sync(prompt)
    passes = []
    forward = looking.forward
    looking.forward = lambda *args, **kwargs: passes.append(1) or forward(*args, **kwargs)
    for token in copied:
        stepped.push(token)
        looking.push(token, lookahead=4)
        assert mx.allclose(stepped.logprobs, looking.logprobs, atol=1e-4).item()
    assert len(passes) < len(copied)  # the copy was read off a draft
    assert looking.draft_counts() == (0, 0)  # guessed drafts only


@pytest.mark.parametrize("tree", [True, False])
def test_a_short_rest_of_the_context_rides_along_with_the_scored_continuations(tiny, monkeypatch, tree):
    # the rest of the context still to feed runs as the tree's trunk (then kept in the cache), or in
    # each copy of the cache: one pass, the same scores
    import mlx_ttsi.context as context_module

    monkeypatch.setattr(context_module, "TREE_TOKENS", context_module.TREE_TOKENS if tree else 0)
    synced, riding = ContextState(tiny.model, tiny.tokenizer), ContextState(tiny.model, tiny.tokenizer)
    prefix = synced.encode("What is the weather in Paris?")
    context = synced.encode('What is the weather in Paris? {"name": "')
    continuations = [synced.encode("get_weather"), synced.encode("set_alarm"), synced.encode("list")]
    synced.sync(prefix)
    riding.sync(prefix)
    passes, forward = [], riding.forward
    riding.forward = lambda *args, **kwargs: passes.append(1) or forward(*args, **kwargs)
    synced.sync(context)
    expected, lengths = synced.score_continuations(continuations)
    scores, same_lengths = riding.score_continuations(continuations, context=context)
    assert same_lengths == lengths and scores == pytest.approx(expected, abs=1e-4)
    assert len(passes) == 1
    assert riding.tokens == (context if tree else prefix)  # else the rest is fed with whatever comes next
    synced.sync(context + continuations[0][:1])
    riding.sync(context + continuations[0][:1])
    assert mx.allclose(synced.logprobs, riding.logprobs, atol=1e-4).item()
    for token_ids, score in zip(continuations, scores):
        assert full_logprob(tiny.model, context + token_ids, len(context)) == pytest.approx(score, abs=1e-4)


def test_options_that_begin_alike_run_once_as_a_tree_with_the_same_scores(tiny):
    from mlx_ttsi.token_tree import TokenTree

    state = ContextState(tiny.model, tiny.tokenizer)
    prefix = state.encode("Which tool?")
    names = [state.encode(f' get_{name}"') for name in ("weather", "weather_report", "time", "alarm")]
    state.sync(prefix)
    passes, forward = [], state.forward
    state.forward = lambda model, x, *a: passes.append(x.shape) or forward(model, x, *a)
    scores, lengths = state.score_continuations(names)
    tree = TokenTree([name[:-1] for name in names])
    assert len(tree) < sum(len(name) - 1 for name in names)  # " get_" once, "weather" once
    assert passes == [(1, len(tree))]  # one row: the tree's distinct tokens
    assert lengths == [len(name) for name in names] and state.tokens == prefix
    for name, score in zip(names, scores):
        assert score == pytest.approx(full_logprob(tiny.model, prefix + name, len(prefix)), abs=1e-4)
    fresh = ContextState(tiny.model, tiny.tokenizer)
    fresh.sync(prefix)
    assert mx.allclose(state.logprobs, fresh.logprobs, atol=1e-4).item()  # the cache is untouched


def test_a_token_tree_shares_the_nodes_of_common_prefixes():
    from mlx_ttsi.token_tree import TokenTree

    tree = TokenTree([[1, 2, 3], [1, 2, 4], [1, 5], [6]])
    assert tree.tokens == [1, 2, 3, 4, 5, 6]
    assert [tree.path(k) for k in range(4)] == [[0, 1, 2], [0, 1, 3], [0, 4], [5]]


def test_a_model_with_another_rotary_embedding_scores_on_copies_of_the_cache(tiny):
    import mlx.nn as nn

    class OwnRope(nn.Module):  # a rotary embedding the tree pass does not know to take positions
        def __init__(self, rope):
            super().__init__()
            self.inner = rope

        def __call__(self, x, offset=0):
            return self.inner(x, offset=offset)

    state = ContextState(tiny.model, tiny.tokenizer)
    prefix = state.encode("Which tool?")
    names = [state.encode(f' get_{name}"') for name in ("weather", "time")]
    state.sync(prefix)
    expected, _ = state.score_continuations(names)  # as a tree
    for layer in tiny.model.model.layers:
        layer.self_attn.rope = OwnRope(layer.self_attn.rope.rope)
    other = ContextState(tiny.model, tiny.tokenizer)
    other.sync(prefix)
    passes, forward = [], other.forward
    other.forward = lambda model, x, *a: passes.append(x.shape[0]) or forward(model, x, *a)
    scores, _ = other.score_continuations(names)
    assert passes == [2] and scores == pytest.approx(expected, abs=1e-4)  # two rows: copies of the cache
