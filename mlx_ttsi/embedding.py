"""A request's embedding: the base model's mean-pooled hidden states (the adapter memory's key)."""

import mlx.core as mx
import numpy as np

from .errors import TTSIError

EMBED_TOKENS = 512  # the request's first tokens are enough to recognise it


def embed(model, tokenizer, text):
    """Mean-pooled last hidden states of the base model, L2-normalised (float32 numpy).

    Call it only while no LoRA is attached (the server's model thread, between requests)."""
    body = getattr(model, "model", None)
    if not callable(body):
        raise TTSIError("the adapter memory needs a model with an inner `.model` transformer body")
    ids = tokenizer.encode(text, add_special_tokens=False)[:EMBED_TOKENS] or [0]
    hidden = body(mx.array(ids)[None])
    if hidden.ndim != 3:
        raise TTSIError("the adapter memory cannot read this model's hidden states")
    vector = np.array(hidden[0].astype(mx.float32).mean(axis=0))
    return vector / (np.linalg.norm(vector) or 1.0)
