"""A model's running context: the tokens fed so far, their KV cache and the next-token log-probs.

It grows by text (re-tokenizing and keeping the cached common prefix), steps one token at a time,
samples, and scores several continuations in one batched pass that shares the prefix's KV cache.
One context serves a whole request: scoring, writing and labelling synthetic examples, and the
answer all reuse the cached system prompt with the tools.
"""

from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.utils import common_prefix_len

from .errors import Cancelled, RequestError
from .token_tree import TokenTree, positioned

PREFILL_CHUNK = 128  # smaller chunks measured faster than 512 here: less causal attention work per chunk
# Continuations are scored side by side on copies of the context's KV cache, as many at a time as
# fit in this many bytes of copies (one pass reads the weights once); one that fits alone goes
# through the shared cache, which is then trimmed back.
FORK_BYTES = 1 << 30
# Where the model allows (token_tree.positioned), they run instead as one tree of their distinct
# tokens in one pass that reads the cache in place, up to this many tokens (else on copies).
TREE_TOKENS = 512
RIDING_REST = 16  # tokens of context still to feed that may run in every copy, saving their own pass
MAX_DRAFT = 256  # tokens of a draft (a guessed continuation) run through the model in one pass
LOOKUP_NGRAM = 3  # prompt-lookup drafting: the longest tail of the context looked for earlier in it
DRAFT_MARGIN = 1e-3  # nats by which a drafted option must win for the others not to be scored (float noise)
# Models whose forward pass is `head(model.model(x))`: for them we project only the positions we need.
SPLIT_MODEL_TYPES = {"llama", "qwen2", "qwen3", "mistral"}


def log_probs(logits):
    """Logits as float32 log-probs over the vocabulary (the last axis)."""
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def split_model(model):
    """(body, head) with model(x) == head(body(x)), or None when the model is not known to split."""
    if getattr(model, "model_type", None) not in SPLIT_MODEL_TYPES or not hasattr(model, "model"):
        return None
    body = model.model
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return body, lambda hidden: body.embed_tokens.as_linear(hidden)
    return body, lambda hidden: model.lm_head(hidden)


def forward_pass(model, inputs, cache, start=0):
    """Logits of positions `start`.. of `inputs` ([batch, length] token ids) run on `cache`; where the
    model splits, only those positions go through the vocabulary projection."""
    split = split_model(model)
    if split is None:
        return model(inputs, cache=cache)[:, start:]
    body, head = split
    return head(body(inputs, cache=cache)[:, start:])


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


class Draft:
    """Tokens run through the model ahead of a context (a guessed continuation), with the log-probs
    after each: taken for free while the context grows along them, dropped at the first other token."""

    def __init__(self):
        self.ids, self.logprobs = [], None
        self.lookup = False  # whether the held tokens were looked up in the context (not guessed)
        self.drafted = self.taken = 0  # tokens drafted and taken so far (guessed drafts)

    def __bool__(self):
        return bool(self.ids)

    def hold(self, ids, logprobs, lookup=False):
        self.ids, self.logprobs, self.lookup = ids, logprobs, lookup
        if not lookup:
            self.drafted += len(ids)

    def counts(self):
        """(tokens drafted, tokens taken) so far, guessed drafts only (not prompt-lookup ones)."""
        return self.drafted, self.taken

    def next_is(self, token):
        return bool(self.ids) and self.ids[0] == token

    def agreeing(self, ids):
        """How many of the draft's first tokens `ids` begins with."""
        return common_prefix_len(self.ids, ids)

    def take(self, k):
        """The first k tokens and the log-probs after the last of them; the rest stays ahead."""
        ids, last = self.ids[:k], self.logprobs[k - 1]
        self.ids, self.logprobs = self.ids[k:], self.logprobs[k:]
        if not self.lookup:
            self.taken += k
        return ids, last

    def drop(self):
        """Forget the untaken tokens; returns how many there were (to trim off the KV cache)."""
        count = len(self.ids)
        self.ids, self.logprobs = [], None
        return count

    def settles(self, first, continuations, margin):
        """Scores of `continuations` from the draft alone (`first`: the log-probs before it), when they
        settle which one is likeliest.

        A continuation's log-probs are known along the draft and for its first token off it; its sum
        up to there is exact when that is its last token, else an upper bound (later tokens only lower
        it). When the likeliest is exact and beats every other by `margin`, it is the argmax that
        scoring them all would give: (totals, lengths); otherwise None."""
        steps = [first] + [self.logprobs[j] for j in range(len(self.ids))]
        totals, exact = [], []
        for continuation in continuations:
            total, j = 0.0, 0
            for j, token in enumerate(continuation):  # up to the first token off the draft
                total += steps[j][token].item()
                if j >= len(self.ids) or token != self.ids[j]:
                    break
            totals.append(total)
            exact.append(j == len(continuation) - 1)
        best = max(range(len(totals)), key=totals.__getitem__)
        if exact[best] and all(totals[best] > total + margin for i, total in enumerate(totals) if i != best):
            return totals, [len(c) for c in continuations]
        return None


class ContextState:
    """A model's running context: its tokens, their KV cache, the log-probs of the next token and a
    draft held ahead of it (see the module's docstring)."""

    def __init__(self, model, tokenizer, context_length=None, cancelled=None, forward=forward_pass):
        self.model = model
        self.forward = forward  # forward_pass, or a Lockstep's, which runs it batched with other contexts'
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.cancelled = cancelled  # polled before every forward pass: True stops the request (Cancelled)
        self.cache = make_prompt_cache(model)
        self.tokens = []
        self.logprobs = None  # log-probs of the next token after self.tokens
        self.forward_tokens = 0  # tokens run through the model, for the benchmarks
        self.ahead = Draft()  # tokens already in the KV cache after self.tokens
        # whether options can be scored as a tree (a known attention: split_model, token_tree.positioned)
        self.trees = split_model(model) is not None and positioned(model)

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_length(self, n):
        if self.context_length and n > self.context_length:
            raise RequestError(f"the prompt is {n} tokens, longer than the model's context of {self.context_length}")

    def _feed(self, ids):
        self._drop_ahead()
        for start in range(0, len(ids), PREFILL_CHUNK):
            self._check_cancelled()
            chunk = ids[start : start + PREFILL_CHUNK]
            logits = self.forward(self.model, mx.array(chunk)[None], self.cache, len(chunk) - 1)[0, 0]
            self.forward_tokens += len(chunk)
            self.logprobs = log_probs(logits)
            mx.eval(self.logprobs, [c.state for c in self.cache])
        self.tokens.extend(ids)

    def _check_cancelled(self):
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("the request was cancelled")

    def seed(self, ids, arrays):
        """Start from a known prefix: its tokens and their KV arrays (see `prefix_arrays`)."""
        self.cache = cache_from_arrays(arrays)
        self.tokens, self.logprobs = list(ids), None
        self.ahead.drop()  # the cache it was in is gone

    def truncate(self, n):
        """Forget everything after the first n tokens (e.g. after the weights changed)."""
        self._drop_ahead()
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
        rest = self._settle_prefix(ids)
        if rest:
            self._feed(rest)

    def _settle_prefix(self, ids):
        """Take what a draft holds of `ids`, forget the context past what it shares with them, and
        return the tokens of `ids` still to feed."""
        self._check_length(len(ids))
        n = len(self.tokens)
        if self.ahead and len(ids) > n and ids[:n] == self.tokens:
            self._take(self.ahead.agreeing(ids[n:]))
        if ids == self.tokens and self.logprobs is not None:
            return []
        self.truncate(min(common_prefix_len(self.tokens, ids), len(ids) - 1))
        return ids[len(self.tokens) :]

    def set_text(self, text):
        self.sync(self.encode(text))

    def push(self, token, lookahead=0):
        """Append one token (as chosen by a decoder). With `lookahead`, when no draft holds the token,
        up to that many tokens that followed the context's tail where it last occurred earlier run in
        the same pass, as a draft (prompt-lookup decoding: a value copied from the request is then
        read off the draft)."""
        token = int(token)
        self._check_length(len(self.tokens) + 1)
        if self.ahead.next_is(token):
            self._take(1)
            return
        following = self.looked_up(self.tokens + [token], lookahead) if lookahead and self._drafts_in_one_pass() else []
        if following:
            self.draft(following, context=self.tokens + [token], lookup=True)
        else:
            self._feed([token])

    @staticmethod
    def looked_up(tokens, count, ngram=LOOKUP_NGRAM):
        """Up to `count` tokens that followed the longest tail of `tokens` (at most `ngram` long) at its
        last earlier occurrence in them; [] when even the last token never occurred before."""
        for n in range(min(ngram, len(tokens) - 1), 0, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start : start + n] == tail:
                    return tokens[start + n : start + n + count]
        return []

    def draft(self, ids, context=None, lookup=False):
        """Run a guessed continuation of the context through the model in one pass (speculative
        decoding): while the context then grows along it, each token's log-probs are already known;
        the first token that differs drops the rest. With `context` (token ids, as for `sync`), the
        context first becomes that, in the same pass. `lookup`: the draft was looked up in the context
        (push), not guessed, and is left out of `draft_counts`."""
        ids = [int(i) for i in ids][:MAX_DRAFT]
        rest = self._settle_prefix(list(context)) if context is not None else []
        if rest and (not ids or len(rest) > PREFILL_CHUNK or not self._drafts_in_one_pass()):
            self._feed(rest)  # the context alone first
            rest = []
        if not ids or (not rest and self.logprobs is None) or not can_trim_prompt_cache(self.cache):
            return
        self._drop_ahead()
        self._check_length(len(self.tokens) + len(rest) + len(ids))
        self._check_cancelled()
        inputs = mx.array(rest + ids)[None]
        # with `rest`, the context's last position and the draft's go through the vocabulary
        logits = self.forward(self.model, inputs, self.cache, max(len(rest) - 1, 0))[0]
        self.forward_tokens += len(rest) + len(ids)
        logprobs = log_probs(logits)
        mx.eval(logprobs, [c.state for c in self.cache])
        if rest:
            self.tokens.extend(rest)
            self.logprobs, logprobs = logprobs[0], logprobs[1:]
        self.ahead.hold(ids, logprobs, lookup)

    def _drafts_in_one_pass(self):
        """Whether a draft can run in the same pass as the context's rest: only the positions needed
        go through the vocabulary (split_model), and the untaken tokens can be trimmed off the cache."""
        return split_model(self.model) is not None and can_trim_prompt_cache(self.cache)

    def score_on_draft(self, continuations, margin=DRAFT_MARGIN):
        """Scores of `continuations` from the draft alone when they settle the choice (Draft.settles)."""
        if not self.ahead or self.logprobs is None:
            return None
        return self.ahead.settles(self.logprobs, continuations, margin)

    def drafting(self):
        """Whether untaken draft tokens are waiting in the cache."""
        return bool(self.ahead)

    def draft_counts(self):
        """(tokens drafted, tokens taken from drafts) in this context so far."""
        return self.ahead.counts()

    def _take(self, k):
        """Move the draft's first k tokens into the context (their log-probs are known)."""
        if k <= 0:
            return
        ids, self.logprobs = self.ahead.take(k)
        self.tokens.extend(ids)

    def _drop_ahead(self):
        """Forget the draft's untaken tokens (trimmed off the KV cache)."""
        untaken = self.ahead.drop()
        if untaken:
            trim_prompt_cache(self.cache, untaken)

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

    def score_continuations(self, continuations, context=None):
        """Summed log-prob and length of each token list, given the current context: in one pass over
        the tree of their tokens where the model allows, else on as few copies of the cache as
        FORK_BYTES allows. With `context` (token ids, as for `sync`), after that context: a short rest
        of it still to feed runs in the same pass as the continuations instead of a pass of its own
        (in the tree as its trunk, then kept in the cache; in each copy of the cache, then dropped)."""
        if not all(continuations):
            raise ValueError("every continuation needs at least one token")
        rest = self._settle_prefix(list(context)) if context is not None else []
        tree = self._tree_of(rest, continuations)
        if rest and tree is None and not self._rides_along(rest, continuations):
            self._feed(rest)
            rest = []
        self._check_cancelled()
        if tree is not None:
            totals = self._score_tree(tree, continuations, rest)
        elif rest:  # one pass on copies of the cache: the rest, then every continuation
            totals = self._score_rests(continuations, rest)
        else:
            first = mx.array([c[0] for c in continuations])
            totals = self.logprobs[first]
            if max(len(c) for c in continuations) > 1:
                size = self._fork_size(len(continuations))
                groups = [continuations[i : i + size] for i in range(0, len(continuations), size)]
                totals = totals + mx.concatenate([self._score_rests(group) for group in groups])
        mx.eval(totals)
        return totals.tolist(), [len(c) for c in continuations]

    def _tree_of(self, rest, continuations):
        """The TokenTree of the context's `rest` then each continuation but its last token, when one
        pass over it is the way to score them: some token needs the model, the model and cache allow
        a tree pass, and it is at most TREE_TOKENS long; else None."""
        if not rest and max(len(c) for c in continuations) == 1:
            return None  # the context's log-probs score them all
        plain = self.tokens and all(isinstance(c, KVCache) for c in self.cache)  # a cache to read in place
        if len(rest) > PREFILL_CHUNK or not (self.trees and plain):
            return None
        tree = TokenTree([rest + c[:-1] for c in continuations])
        return tree if len(tree) <= TREE_TOKENS else None

    def _score_tree(self, tree, continuations, rest):
        """Summed log-probs of the continuations from one pass over `tree`, whose trunk is the
        context's `rest`: its keys and values then join the cache, as if it had been fed."""
        if rest:
            self._drop_ahead()  # the draft disagrees with the rest
        start = max(len(rest) - 1, 0)  # the trunk's last node scores the continuations' first tokens
        caches = tree.caches(self.prefix_arrays(len(self.tokens)), len(self.tokens))
        logprobs = log_probs(self.forward(self.model, mx.array(tree.tokens)[None], caches, start)[0])
        self.forward_tokens += len(tree)
        if rest:
            for cache, layer in zip(self.cache, caches):
                cache.update_and_fetch(*layer.first_added(len(rest)))
            self.tokens.extend(rest)
            self.logprobs = logprobs[0]
        longest = max(len(c) for c in continuations)
        rows = np.zeros((len(continuations), longest), np.int32)
        targets = np.zeros_like(rows)
        for k, continuation in enumerate(continuations):  # token i is scored after its node i - 1
            rows[k, 1 : len(continuation)] = np.array(tree.path(k)[len(rest) :], np.int32) - start
            targets[k, : len(continuation)] = continuation
        totals = self.logprobs[mx.array(targets[:, 0])]
        if longest > 1:
            picked = logprobs[mx.array(rows[:, 1:]), mx.array(targets[:, 1:])]
            lengths = mx.array([len(c) for c in continuations])[:, None]
            totals = totals + (picked * (mx.arange(1, longest)[None] < lengths)).sum(axis=1)
        mx.eval(totals, [c.state for c in self.cache])
        return totals

    def _rides_along(self, rest, continuations):
        """Whether the context's `rest` goes with the continuations in their one pass on copies of the
        cache: it is short, there are several, one is longer than a token (else the rest's own pass
        scores them all) and copies of all of them fit."""
        several = len(continuations) > 1 and max(len(c) for c in continuations) > 1
        fits = several and self._fork_size(len(continuations)) == len(continuations)  # 1 without tokens
        return len(rest) <= RIDING_REST and fits

    def _fork_size(self, n):
        """How many continuations are scored in one pass on copies of the cache: as many of `n` as
        fit in FORK_BYTES, or 1 (through the shared cache) for caches that cannot be copied."""
        if not all(isinstance(c, KVCache) for c in self.cache) or not self.tokens:
            return 1
        per_token = sum(c.keys.shape[1] * c.keys.shape[3] * c.keys.itemsize * 2 for c in self.cache)
        return max(1, min(n, FORK_BYTES // (per_token * len(self.tokens))))

    def _score_rests(self, group, rest=()):
        """Summed log-probs of each continuation's tokens after its first (with `rest`, the context's
        tokens still to feed, of all its tokens after the rest): one pass on copies of the cache for
        a group, through the shared cache for one."""
        if len(group) == 1 and not rest:
            return self._score_alone(group[0])[None]
        rest, skip = list(rest), 0 if rest else 1  # without a rest, the first tokens are scored already
        longest = max(len(c) for c in group)
        pad = self.tokenizer.eos_token_id or 0
        batch = mx.array([rest + c[:-1] + [pad] * (longest - len(c)) for c in group])
        logprobs = log_probs(self.forward(self.model, batch, self.fork(len(group)), max(len(rest) - 1, 0)))
        self.forward_tokens += batch.size
        targets = mx.array([c[skip:] + [0] * (longest - len(c)) for c in group])
        picked = mx.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
        mask = mx.arange(longest - skip)[None] < (mx.array([len(c) for c in group])[:, None] - skip)
        return (picked * mask).sum(axis=1)

    def _score_alone(self, continuation):
        """Summed log-probs of one continuation's tokens after its first, through the shared cache,
        which is then trimmed back."""
        if len(continuation) == 1:
            return mx.array(0.0)
        self._drop_ahead()  # the continuation goes through the shared cache
        base, logprobs = list(self.tokens), self.logprobs
        steps = log_probs(self.forward(self.model, mx.array(continuation[:-1])[None], self.cache)[0])
        self.forward_tokens += len(continuation) - 1
        rest = mx.take_along_axis(steps, mx.array(continuation[1:])[:, None], axis=-1).sum()
        mx.eval(rest)
        if can_trim_prompt_cache(self.cache):
            trim_prompt_cache(self.cache, len(continuation) - 1)
            self.logprobs = logprobs
        else:
            self.cache, self.tokens = make_prompt_cache(self.model), []
            self.sync(base)
        return rest


@dataclass(frozen=True)
class Prefix:
    """A prompt's tools prefix (its system turn): its token ids and their base-model KV arrays (None
    until computed), frozen while a LoRA trains and shared by every request with the same tools."""

    ids: tuple
    arrays: list = None

    def __len__(self):
        return len(self.ids)

    @property
    def frozen(self):
        """(length, arrays) for training and scoring over the prefix (adaptation.py), or None."""
        return (len(self.ids), self.arrays) if self.arrays is not None else None

    def start(self, state):
        """`state` made to start from this prefix, when its arrays are known."""
        if self.arrays is not None:
            state.seed(self.ids, self.arrays)
        return state


class PrefixCache:
    """Base-model KV caches of recent tools prefixes, reused by requests with the same tools."""

    def __init__(self, max_tokens=8192):
        self.max_tokens = max_tokens
        self.entries = OrderedDict()  # token ids -> Prefix

    def get(self, ids):
        """The cached Prefix of these ids, or a new one without arrays."""
        prefix = self.entries.get(tuple(ids))
        if prefix is None:
            return Prefix(tuple(ids))
        self.entries.move_to_end(prefix.ids)
        return prefix

    def kept(self, state, prefix):
        """The prefix with its KV arrays (a copy of `state`'s, computed by the base model), cached."""
        if prefix.arrays is None:
            prefix = Prefix(prefix.ids, state.prefix_arrays(len(prefix), copy=True))
            self._put(prefix)
        return prefix

    def _put(self, prefix):
        if prefix.arrays is None or prefix.ids in self.entries or len(prefix) > self.max_tokens:
            return
        self.entries[prefix.ids] = prefix
        while sum(len(k) for k in self.entries) > self.max_tokens:
            self.entries.popitem(last=False)


def prefix_length(ids, probes):
    """Length of the prompt's template-and-tools prefix: what `ids` shares with two one-letter requests
    rendered with the same tools (`probes`), at least one token and never the whole prompt."""
    return max(1, min(common_prefix_len(probes[0], probes[1]), common_prefix_len(ids, probes[0]), len(ids) - 1))
