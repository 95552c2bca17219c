"""A model's running context: the tokens fed so far, their KV cache and the next-token log-probs.

It grows by text (re-tokenizing and keeping the cached common prefix), steps one token at a time,
and scores several continuations in one batched pass that shares the prefix's KV cache.
"""

import mlx.core as mx
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.utils import common_prefix_len

from .errors import RequestError

PREFILL_CHUNK = 512


class ContextState:
    def __init__(self, model, tokenizer, context_length=None):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.cache = make_prompt_cache(model)
        self.tokens = []
        self.logprobs = None  # log-probs of the next token after self.tokens
        self.forward_tokens = 0  # tokens run through the model, for the benchmarks

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_length(self, n):
        if self.context_length and n > self.context_length:
            raise RequestError(f"the prompt is {n} tokens, longer than the model's context of {self.context_length}")

    def _feed(self, ids):
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start : start + PREFILL_CHUNK]
            logits = self.model(mx.array(chunk)[None], cache=self.cache)
            self.forward_tokens += len(chunk)
            last = logits[0, -1].astype(mx.float32)
            self.logprobs = last - mx.logsumexp(last)
            mx.eval(self.logprobs, [c.state for c in self.cache])
        self.tokens.extend(ids)

    def sync(self, ids):
        """Make the context exactly `ids`, reusing the cached common prefix."""
        ids = list(ids)
        if not ids:
            raise RequestError("empty prompt")
        self._check_length(len(ids))
        if ids == self.tokens and self.logprobs is not None:
            return
        keep = min(common_prefix_len(self.tokens, ids), len(ids) - 1)
        if keep < len(self.tokens):
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, len(self.tokens) - keep)
                del self.tokens[keep:]
            else:
                self.cache = make_prompt_cache(self.model)
                self.tokens, keep = [], 0
        self._feed(ids[keep:])

    def set_text(self, text):
        self.sync(self.encode(text))

    def push(self, token):
        """Append one token (as chosen by a decoder)."""
        self._check_length(len(self.tokens) + 1)
        self._feed([int(token)])

    def fork(self, n):
        """A batch-of-n copy of the KV cache, for scoring continuations side by side."""
        forked = []
        for layer in self.cache:
            keys, values = layer.keys[..., : layer.offset, :], layer.values[..., : layer.offset, :]
            copy = KVCache()
            copy.state = (mx.repeat(keys, n, axis=0), mx.repeat(values, n, axis=0), layer.offset)
            forked.append(copy)
        return forked

    def score_continuations(self, continuations):
        """Summed log-prob and length of each token list, given the current context (one pass)."""
        if not all(continuations):
            raise ValueError("every continuation needs at least one token")
        first = mx.array([c[0] for c in continuations])
        totals = self.logprobs[first]
        longest = max(len(c) for c in continuations)
        if longest > 1 and all(isinstance(c, KVCache) for c in self.cache):
            pad = self.tokenizer.eos_token_id or 0
            batch = mx.array([c[:-1] + [pad] * (longest - len(c)) for c in continuations])
            logits = self.model(batch, cache=self.fork(len(continuations))).astype(mx.float32)
            self.forward_tokens += batch.size
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            targets = mx.array([c[1:] + [0] * (longest - len(c)) for c in continuations])
            picked = mx.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
            mask = mx.arange(longest - 1)[None] < (mx.array([len(c) for c in continuations])[:, None] - 1)
            totals = totals + (picked * mask).sum(axis=1)
        elif longest > 1:  # caches we cannot fork (sliding windows, state-space layers): one by one
            totals = mx.array([self._score_alone(c) for c in continuations])
        mx.eval(totals)
        return totals.tolist(), [len(c) for c in continuations]

    def _score_alone(self, continuation):
        base = list(self.tokens)
        total = self.logprobs[continuation[0]].item()
        for previous, token in zip(continuation, continuation[1:]):
            self.push(previous)
            total += self.logprobs[token].item()
        self.sync(base)
        return total
