"""Writing several texts side by side: mlx-lm's BatchGenerator over a shared tools prefix.

On a CPU (and on a Mac's GPU for a small model) one decoded token costs about one full read of the
weights, so k sequences decoded together cost about what one does. The agent writes several short
texts at once (example calls, then the requests for them), so they go through one batch:

    writer = BatchWriter(model, tokenizer, prefix_ids, prefix_arrays)
    texts = writer.write(prompts, max_tokens=64, stop=closed_json, temperature=0.8, seed=0)

Each prompt starts with the same tools prefix, whose KV arrays (computed once by the base model)
seed every sequence's cache; where prompts agree beyond it (the same instruction before different
values; two asks, each shared by several prompts), each such shared start is run once too. Each
sequence stops on its own, at its stop rule or end of turn.
"""

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import common_prefix_len

from .context import cache_from_arrays, split_model
from .errors import Cancelled

MIN_COMMON = 4  # tokens prompts must share beyond the prefix for that part to be run once


class BatchWriter:
    """Writes continuations of several prompts together; the prompts share `prefix_ids`, whose KV
    `prefix_arrays` (per layer) every sequence starts from (None: each prompt is run in full)."""

    def __init__(self, model, tokenizer, prefix_ids=(), prefix_arrays=None, cancelled=None):
        self.model = model
        self.tokenizer = tokenizer
        self.prefix_ids = list(prefix_ids) if prefix_arrays is not None else []
        self.prefix_arrays = prefix_arrays
        self.cancelled = cancelled  # polled before every step: True stops the request (Cancelled)
        self.decoded_tokens = 0  # tokens written so far, for the benchmarks
        self.prompt_tokens = 0  # prompt tokens run through the model (the prefix's aside), likewise

    def write(self, prompts, max_tokens, stop=None, temperature=0.0, top_p=1.0, seed=None, processors=None):
        """The text written after each prompt: sampled at `temperature` (0: greedy), ending at end of
        turn, after `max_tokens` (one for all, or one per prompt), or where `stop(text)` gives an index
        (the text is cut there). `processors`: per prompt, mlx-lm logits processors (None: none)."""
        if not prompts:
            return []
        if seed is not None:
            mx.random.seed(seed)
        sampler = make_sampler(temp=temperature, top_p=top_p if temperature > 0 else 0.0)
        generator = BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in self.tokenizer.eos_token_ids],
            sampler=sampler,
            completion_batch_size=len(prompts),
            prefill_batch_size=len(prompts),
        )
        try:
            ids, budgets, caches = self._inputs(prompts, max_tokens)
            uids = generator.insert(
                ids, budgets, caches, logits_processors=processors and [p or [] for p in processors]
            )
            return self._run(generator, uids, stop)
        finally:
            generator.close()

    def _inputs(self, prompts, max_tokens):
        """(token lists after each one's shared start, max tokens each, caches seeded with its KV)."""
        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        budgets = list(max_tokens) if isinstance(max_tokens, (list, tuple)) else [max_tokens] * len(ids)
        n = len(self.prefix_ids)
        if not (n and all(i[:n] == self.prefix_ids and len(i) > n for i in ids)):
            self.prompt_tokens += sum(map(len, ids))
            return ids, budgets, None
        starts = shared_starts(ids, n)
        arrays = self._run_starts(sorted(set(starts), key=len))
        rests = [i[len(start) :] for i, start in zip(ids, starts)]
        self.prompt_tokens += sum(map(len, rests))
        return rests, budgets, [cache_from_arrays(arrays[start]) for start in starts]

    def _run_starts(self, starts):
        """{start: its KV arrays} for token tuples that each begin with the prefix, shortest first: each
        run through the model once, from the longest start already run that it begins with."""
        arrays = {tuple(self.prefix_ids): self.prefix_arrays}
        split = split_model(self.model)
        run = split[0] if split else self.model  # only the KV is wanted, not the logits
        for start in starts:
            if start in arrays:
                continue
            base = max((s for s in arrays if start[: len(s)] == s), key=len)
            cache = cache_from_arrays(arrays[base])
            mx.eval(run(mx.array([start[len(base) :]]), cache=cache))
            self.prompt_tokens += len(start) - len(base)
            arrays[start] = [(c.keys[..., : len(start), :], c.values[..., : len(start), :]) for c in cache]
        return arrays

    def _run(self, generator, uids, stop):
        tokens = {uid: [] for uid in uids}
        texts = {uid: None for uid in uids}
        while any(text is None for text in texts.values()):
            if self.cancelled is not None and self.cancelled():
                raise Cancelled("the request was cancelled while writing examples")
            responses = generator.next_generated()
            if not responses:
                break
            for response in responses:
                if texts[response.uid] is not None:
                    continue
                ended = response.finish_reason is not None
                if not ended or response.finish_reason == "length":
                    tokens[response.uid].append(response.token)
                    self.decoded_tokens += 1
                text = self.tokenizer.decode(tokens[response.uid])
                end = stop(text) if stop else None
                if end is not None or ended:
                    texts[response.uid] = text[:end] if end is not None else text
                    if not ended:
                        generator.remove([response.uid])
        return [texts[uid] if texts[uid] is not None else self.tokenizer.decode(tokens[uid]) for uid in uids]


def shared_starts(ids, n):
    """Per prompt (token list), the start it shares with the prompt most like it, as a tuple: the first
    n tokens (the prefix), or more when they share at least MIN_COMMON more, never a whole prompt."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    common = [common_prefix_len(ids[a], ids[b]) for a, b in zip(order, order[1:])]  # neighbours in order
    starts = [None] * len(ids)
    for place, i in enumerate(order):
        shared = max(common[place - 1] if place else 0, common[place] if place < len(common) else 0)
        length = min(shared, len(ids[i]) - 1)
        starts[i] = tuple(ids[i][: length if length - n >= MIN_COMMON else n])
    return starts


def closed_json(opened=1):
    """A stop rule for a JSON value written after `opened` open braces: the index just past the
    brace that closes them (strings and escapes respected), or None while it is open."""

    def stop(text):
        depth, in_string, escaped = opened, False, False
        for index, char in enumerate(text):
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return index + 1
        return None

    return stop


def quoted_line(text):
    """A stop rule for a text written after an opening quote: the index of the closing quote or of
    the first line break, or None while neither is written."""
    ends = [i for i in (text.find('"'), text.find("\n")) if i >= 0]
    return min(ends) if ends else None
