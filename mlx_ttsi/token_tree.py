"""Several continuations of one context scored in one pass, as a tree of their tokens.

Continuations that begin alike share those nodes of the tree. The nodes run as one row after the
context's KV cache (read, never copied); each attends to the context and to its own ancestors only
(an attention mask) at the position it has in its continuation (rotary positions given per token).
So k options of a few tokens cost one batch-1 pass over their distinct tokens, where side-by-side
copies of the cache cost k copies of the context and every shared or padding token k times.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import rope_utils

# Rotary embeddings that hand their offset straight to mx.fast.rope, which takes one per batch row.
PLAIN_ROPES = (nn.RoPE, rope_utils.SuScaledRoPE, rope_utils.Llama3RoPE, rope_utils.YarnRoPE)


class TokenPositions:
    """The position of every token of a pass, given to the rotary embeddings as their offset."""

    def __init__(self, positions):
        self.positions = positions  # [tokens] int array


class PositionedRope(nn.Module):
    """A model's rotary embedding that also takes TokenPositions as its offset; any other offset goes
    to the wrapped embedding unchanged."""

    def __init__(self, rope):
        super().__init__()
        self.rope = rope

    def __call__(self, x, offset=0):
        if isinstance(offset, TokenPositions):  # x: [1, heads, tokens, dims]; a token per batch row
            return self.rope(x.transpose(2, 1, 0, 3), offset=offset.positions).transpose(2, 1, 0, 3)
        return self.rope(x, offset=offset)


def positioned(model):
    """Whether tree passes can run on `model`, one whose attention layers (`model.model.layers[i].
    self_attn`) rotate queries and keys by `self.rope(x, offset=cache.offset)` with a PLAIN_ROPES
    embedding, as mlx-lm's llama and qwen2 do: each is wrapped in a PositionedRope the first time."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return False
    attentions = [getattr(layer, "self_attn", None) for layer in layers]
    if not all(
        isinstance(getattr(attention, "rope", None), (PositionedRope, *PLAIN_ROPES)) for attention in attentions
    ):
        return False
    for attention in attentions:
        if not isinstance(attention.rope, PositionedRope):
            attention.rope = PositionedRope(attention.rope)
    return True


class TreeCache:
    """One layer's KV cache for a tree pass: the context's keys and values, then the nodes'."""

    def __init__(self, keys, values, positions, mask):
        self.keys, self.values = keys, values  # the context's, until the pass appends the nodes'
        self.offset = positions  # TokenPositions, read by the layer's PositionedRope
        self.mask = mask
        self.added = None  # the nodes' own (keys, values), once the pass has run

    def update_and_fetch(self, keys, values):
        self.added = keys, values
        self.keys = mx.concatenate([self.keys, keys], axis=2)
        self.values = mx.concatenate([self.values, values], axis=2)
        return self.keys, self.values

    def make_mask(self, *args, **kwargs):
        return self.mask

    @property
    def state(self):
        return self.keys, self.values

    def first_added(self, n):
        """The keys and values of the first n nodes (a trunk that every continuation shares)."""
        keys, values = self.added
        return keys[..., :n, :], values[..., :n, :]


class TokenTree:
    """The distinct prefixes of some token sequences, as nodes in order of first appearance: each
    node is one token, after its parent (the node of the same prefix one token shorter)."""

    def __init__(self, sequences):
        index = {}  # (parent node, token) -> node
        self.tokens, self.parents, self.paths = [], [], []
        for sequence in sequences:
            path, parent = [], -1
            for token in sequence:
                if (parent, token) not in index:
                    index[parent, token] = len(self.tokens)
                    self.tokens.append(token)
                    self.parents.append(parent)
                parent = index[parent, token]
                path.append(parent)
            self.paths.append(path)  # the node of each of the sequence's prefixes

    def __len__(self):
        return len(self.tokens)

    def caches(self, arrays, context):
        """TreeCaches over the context's KV `arrays` (per layer, `context` tokens long) for a pass of
        this tree's tokens."""
        depths, seen = [], np.zeros((len(self), len(self)), dtype=bool)
        for node, parent in enumerate(self.parents):
            depths.append(depths[parent] + 1 if parent >= 0 else 0)
            if parent >= 0:
                seen[node] = seen[parent]
            seen[node, node] = True
        mask = mx.array(np.concatenate([np.ones((len(self), context), dtype=bool), seen], axis=1))
        positions = TokenPositions(mx.array(np.array(depths) + context))
        return [TreeCache(keys, values, positions, mask) for keys, values in arrays]

    def path(self, k):
        """The node of each prefix of the k-th sequence (its first token's node first)."""
        return self.paths[k]
