"""A model's running context: the tokens fed so far, their KV cache and the next-token log-probs.

It grows by text (re-tokenizing and keeping the cached common prefix), steps one token at a time,
samples, and scores several continuations in one batched pass that shares the prefix's KV cache.
One context serves a whole request: scoring, writing and labelling synthetic examples, and the
answer all reuse the cached system prompt with the tools.
"""

import mlx.core as mx
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.utils import common_prefix_len

from .errors import Cancelled, RequestError

PREFILL_CHUNK = 128  # smaller chunks measured faster than 512 here: less causal attention work per chunk
# Above this many cached tokens x continuations, continuations are scored one after another
# through the shared cache instead of side by side on copies of it (copies cost memory and time).
FORK_BUDGET = 8192
# Models whose forward pass is `head(model.model(x))`: for them we project only the positions we need.
SPLIT_MODEL_TYPES = {"llama", "qwen2", "qwen3", "mistral"}


def split_model(model):
    """(body, head) with model(x) == head(body(x)), or None when the model is not known to split."""
    if getattr(model, "model_type", None) not in SPLIT_MODEL_TYPES or not hasattr(model, "model"):
        return None
    body = model.model
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return body, lambda hidden: body.embed_tokens.as_linear(hidden)
    return body, lambda hidden: model.lm_head(hidden)


def last_logits(model, ids, cache):
    """Logits of the last position only (the vocabulary projection is skipped elsewhere)."""
    split = split_model(model)
    if split is None:
        return model(ids, cache=cache)[:, -1]
    body, head = split
    return head(body(ids, cache=cache)[:, -1:])[:, 0]


def cache_from_arrays(layers, batch=1):
    """Fresh KV caches holding the given [(keys, values)] per layer, repeated `batch` times."""
    caches = []
    for keys, values in layers:
        cache = KVCache()
        if batch > 1:
            keys, values = mx.repeat(keys, batch, axis=0), mx.repeat(values, batch, axis=0)
        cache.state = (keys, values, keys.shape[2])
        caches.append(cache)
    return caches


class ContextState:
    def __init__(self, model, tokenizer, context_length=None, cancelled=None):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.cancelled = cancelled  # polled before every forward pass: True stops the request (Cancelled)
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
            self._check_cancelled()
            chunk = ids[start : start + PREFILL_CHUNK]
            logits = last_logits(self.model, mx.array(chunk)[None], self.cache)[0].astype(mx.float32)
            self.forward_tokens += len(chunk)
            self.logprobs = logits - mx.logsumexp(logits)
            mx.eval(self.logprobs, [c.state for c in self.cache])
        self.tokens.extend(ids)

    def _check_cancelled(self):
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("the request was cancelled")

    def seed(self, ids, arrays):
        """Start from a known prefix: its tokens and their KV arrays (see `prefix_arrays`)."""
        self.cache = cache_from_arrays(arrays)
        self.tokens, self.logprobs = list(ids), None

    def truncate(self, n):
        """Forget everything after the first n tokens (e.g. after the weights changed)."""
        if n < len(self.tokens):
            if n <= 0 or not can_trim_prompt_cache(self.cache):
                self.cache = make_prompt_cache(self.model)
                self.tokens, self.logprobs = [], None
                return
            trim_prompt_cache(self.cache, len(self.tokens) - n)
            del self.tokens[n:]
            self.logprobs = None  # unknown until the next token is fed

    def sync(self, ids):
        """Make the context exactly `ids`, reusing the cached common prefix."""
        ids = list(ids)
        if not ids:
            raise RequestError("empty prompt")
        self._check_length(len(ids))
        if ids == self.tokens and self.logprobs is not None:
            return
        keep = min(common_prefix_len(self.tokens, ids), len(ids) - 1)
        self.truncate(keep)
        self._feed(ids[len(self.tokens) :])

    def set_text(self, text):
        self.sync(self.encode(text))

    def push(self, token):
        """Append one token (as chosen by a decoder)."""
        self._check_length(len(self.tokens) + 1)
        self._feed([int(token)])

    def sample(self, sampler, max_tokens, stop="\n"):
        """Text sampled after the current context, ending at `stop` or an end-of-turn token."""
        generated, text = [], ""
        for _ in range(max_tokens):
            token = int(sampler(self.logprobs[None]).item())
            if token in self.tokenizer.eos_token_ids:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if stop and stop in text.lstrip():
                break
            self.push(token)
        return text

    def prefix_arrays(self, n, copy=False):
        """The KV arrays of the first n tokens, per layer (a frozen prefix for training, or, as a
        copy that later updates of this cache cannot touch, for reuse by other requests)."""
        if not all(isinstance(c, KVCache) for c in self.cache) or n > len(self.tokens):
            return None
        arrays = [(c.keys[..., :n, :], c.values[..., :n, :]) for c in self.cache]
        if copy:
            arrays = [(mx.contiguous(k), mx.contiguous(v)) for k, v in arrays]
            mx.eval(arrays)
        return arrays

    def fork(self, n):
        """A batch-of-n copy of the KV cache, for scoring continuations side by side."""
        return cache_from_arrays(self.prefix_arrays(len(self.tokens)), n)

    def score_continuations(self, continuations):
        """Summed log-prob and length of each token list, given the current context (one pass)."""
        if not all(continuations):
            raise ValueError("every continuation needs at least one token")
        self._check_cancelled()
        first = mx.array([c[0] for c in continuations])
        totals = self.logprobs[first]
        longest = max(len(c) for c in continuations)
        copies = len(continuations) * len(self.tokens)
        if longest > 1 and copies <= FORK_BUDGET and all(isinstance(c, KVCache) for c in self.cache):
            pad = self.tokenizer.eos_token_id or 0
            batch = mx.array([c[:-1] + [pad] * (longest - len(c)) for c in continuations])
            logits = self.model(batch, cache=self.fork(len(continuations))).astype(mx.float32)
            self.forward_tokens += batch.size
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            targets = mx.array([c[1:] + [0] * (longest - len(c)) for c in continuations])
            picked = mx.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
            mask = mx.arange(longest - 1)[None] < (mx.array([len(c) for c in continuations])[:, None] - 1)
            totals = totals + (picked * mask).sum(axis=1)
        elif longest > 1:  # long contexts (copying the cache costs more) or unforkable caches
            totals = mx.array([self._score_alone(c) for c in continuations])
        mx.eval(totals)
        return totals.tolist(), [len(c) for c in continuations]

    def _score_alone(self, continuation):
        """One continuation through the shared cache, which is then trimmed back."""
        total = self.logprobs[continuation[0]]
        if len(continuation) > 1:
            base, logprobs = list(self.tokens), self.logprobs
            logits = self.model(mx.array(continuation[:-1])[None], cache=self.cache)[0].astype(mx.float32)
            self.forward_tokens += len(continuation) - 1
            steps = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            total = total + mx.take_along_axis(steps, mx.array(continuation[1:])[:, None], axis=-1).sum()
            mx.eval(total)
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, len(continuation) - 1)
                self.logprobs = logprobs
            else:
                self.cache, self.tokens = make_prompt_cache(self.model), []
                self.sync(base)
        return total.item()
