"""Self-improvement: one LoRA on the loaded model, trained per request and reset after it.

LoRA layers are created once (creating them twice would nest LoRA in LoRA) and swapped in only
while a request uses them, so base-model passes pay nothing for them. A reset draws a fresh
`lora_a`, zeroes `lora_b` and swaps the plain layers back: the base model's logits, exactly.

Training uses mlx-lm's tuner pieces (its LoRA layers, schedules, loss and batching) in a small
compiled loop of our own: mlx-lm's `train()` averages gradients over MLX's global process group,
which breaks under `mlx.launch` where every rank adapts to its own request, and it always writes an
adapter file and prints a progress display. Given a frozen prefix (the KV cache of the shared system
prompt with the tools, computed once by the base model) it trains on the rest of each example only
and projects only the answer positions through the vocabulary; the answer is then decoded on the
same frozen prefix, so training and inference see the same thing.
"""

import math
import time
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_unflatten
from mlx_lm.models.base import create_attention_mask
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import default_loss, iterate_batches
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

from .context import cache_from_arrays, log_probs, split_model
from .errors import Cancelled, TTSIError
from .saved_adapter import write as write_adapter
from .settings import LoRASettings

# The training step is compiled on a GPU only: on this CPU build eager steps measured 12-16% faster per
# request (the shapes change with each example, so each request is traced anew); see docs/performance.md.
COMPILE_STEP = mx.metal.is_available()


def prefix_loss(prefix, split, lower=0):
    """Cross-entropy on the answer tokens, given a frozen prefix KV cache.

    A batch is (inputs, positions, targets, mask): each example's prompt rest + answer[:-1], right-
    padded, and the positions whose next token is an answer token, so the compiled step projects
    only those through the vocabulary. With `lower` > 0 the inputs are instead the hidden states
    after the first `lower` (LoRA-free) layers, computed once by `lower_hidden`, and only the layers
    above run each step. Returns (token-weighted mean loss, answer tokens, worst example's loss,
    whether every answer token was the argmax: the batch is said back, teacher-forced)."""
    body, head = split

    def loss(model, inputs, positions, targets, mask):
        if lower:
            hidden = body.norm(run_blocks(body.layers[lower:], inputs, prefix[lower:]))
        else:
            hidden = body(inputs, cache=cache_from_arrays(prefix, inputs.shape[0]))
        picked = mx.take_along_axis(hidden, positions[..., None], axis=1)
        logits = head(picked).astype(mx.float32)
        losses = nn.losses.cross_entropy(logits, targets) * mask
        tokens = mask.sum()
        said = mx.all((mx.argmax(logits, axis=-1) == targets) | (mask == 0))
        return losses.sum() / tokens, tokens, (losses.sum(axis=1) / mask.sum(axis=1)).max(), mx.stop_gradient(said)

    return loss


def padded_batch(items):
    """(inputs, positions, targets, mask) of (prompt rest, answer) pairs; a prompt rest is token ids or
    the hidden states of prompt rest + answer[:-1] (`lower_hidden`)."""
    rows = [p if isinstance(p, mx.array) else mx.array(list(p) + list(a[:-1])) for p, a in items]
    answers = [list(a) for _, a in items]
    width, longest = max(x.shape[0] for x in rows), max(len(a) for a in answers)
    inputs = mx.stack([mx.pad(x, [(0, width - x.shape[0])] + [(0, 0)] * (x.ndim - 1)) for x in rows])
    # the answer's tokens are predicted from the row's last len(answer) positions
    positions = [[x.shape[0] - len(a) + min(j, len(a) - 1) for j in range(longest)] for x, a in zip(rows, answers)]
    targets = [a + [0] * (longest - len(a)) for a in answers]
    mask = [[1.0] * len(a) + [0.0] * (longest - len(a)) for a in answers]
    return inputs, mx.array(positions), mx.array(targets), mx.array(mask)


def lower_hidden(body, prefix, lower, prompt, answer):
    """Hidden states of prompt + answer[:-1] after the first `lower` layers (no gradient needed)."""
    hidden = run_blocks(body.layers[:lower], body.embed_tokens(mx.array(prompt + answer[:-1])[None]), prefix[:lower])
    mx.eval(hidden)
    return hidden[0]


def lowered(body, prefix, lower, dataset, cancelled=None):
    """Each (prompt rest, answer) with its prompt as hidden states after the first `lower` layers
    (`lower_hidden`); `cancelled()` is polled before each, as before each training step."""
    out = []
    for prompt, answer in dataset:
        if cancelled is not None and cancelled():
            raise Cancelled("the request was cancelled before training")
        out.append((lower_hidden(body, prefix, lower, prompt, answer), answer))
    return out


def run_blocks(blocks, hidden, prefix):
    """`hidden` through `blocks`, attending to their frozen prefix KV arrays as well."""
    caches = cache_from_arrays(prefix, hidden.shape[0])
    mask = create_attention_mask(hidden, caches[0])
    for block, cache in zip(blocks, caches):
        hidden = block(hidden, mask, cache=cache)
    return hidden


def frozen_layers(model, settings):
    """How many bottom blocks have no LoRA and can be run once per example (0 if unsure)."""
    body = getattr(model, "model", None)
    plain = body is not None and getattr(body, "swa_idx", None) is None and hasattr(body, "norm")
    blocks = len(model.layers)
    return blocks - settings.layers if plain and 0 < settings.layers < blocks else 0


def prefix_batches(dataset, batch_size, loop=False):
    """Batches of (prompt rest, answer) pairs, as mlx-lm's iterate_batches gives whole sequences:
    `batch_size` examples a step, padded (`padded_batch`), shuffled by numpy's global seed; an epoch
    sees every example once when their number is a multiple of `batch_size` (else the remainder of
    each shuffle waits for a later one). No example is cut (iterate_batches cuts at max_seq_length):
    each is one request and its calls, after the frozen tools prefix."""
    while True:
        order = np.random.permutation(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield padded_batch([dataset[i] for i in order[start : start + batch_size]])
        if not loop:
            break


def fit(model, optimizer, batches, loss, iters, cancelled=None, epoch=None, stop_loss=0.0, said_back=False):
    """Up to `iters` optimizer steps; returns (mean loss, loss tokens, steps run).

    Training stops at the end of an epoch (`epoch` steps, every example once) in which every
    example's loss was below `stop_loss` (> 0), or, with `said_back`, in which every example's answer
    was the argmax token by token: the LoRA already says back what it is taught. A loss that returns
    more than (mean, tokens) gives its batch's worst example loss and whether it was said back.
    `cancelled()` is polled before each step: True stops training (Cancelled)."""
    loss_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state]

    def step(*batch):
        (value, tokens, *more), grad = loss_and_grad(model, *batch)
        optimizer.update(model, grad)
        return (value, tokens, *more) if more else (value, tokens, value, mx.array(False))

    if COMPILE_STEP:
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    model.train()
    losses, worst, said, tokens = [], [], [], 0
    try:
        for _, batch in zip(range(iters), batches):
            if cancelled is not None and cancelled():
                raise Cancelled("the request was cancelled during training")
            value, count, high, back = step(*batch)
            mx.eval(state, value, count, high, back)
            losses.append(value.item())
            worst.append(high.item())
            said.append(back.item())
            tokens += count.item()
            if (
                epoch
                and len(losses) % epoch == 0
                and ((stop_loss > 0 and max(worst[-epoch:]) < stop_loss) or (said_back and all(said[-epoch:])))
            ):
                break
    finally:
        model.eval()
    return sum(losses) / max(len(losses), 1), tokens, len(losses)


class Adapter:
    def __init__(self, model, settings=None):
        self.model = model
        self.settings = settings or LoRASettings()
        self.settings.check()
        if getattr(model, "_mlx_ttsi_lora", False) or any(isinstance(m, LoRALinear) for _, m in model.named_modules()):
            raise TTSIError("this model already has LoRA layers; load a fresh model")
        model._mlx_ttsi_lora = True
        blocks = len(model.layers)
        count = blocks if self.settings.layers < 0 else min(self.settings.layers, blocks)
        model.freeze()
        linear_to_lora_layers(
            model,
            count,
            {"rank": self.settings.rank, "scale": self.settings.alpha / self.settings.rank, "dropout": 0.0},
        )
        self._lora = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
        self.layers = [m for _, m in self._lora]
        self.attached = True
        self.trained = False
        self.reset()

    def attach(self):
        """Route the model through the LoRA layers."""
        if not self.attached:
            self.model.update_modules(tree_unflatten(self._lora))
            self.attached = True

    def detach(self):
        """Route the model through its plain layers again (LoRA kept aside, not recreated)."""
        if self.attached:
            self.model.update_modules(tree_unflatten([(name, m.linear) for name, m in self._lora]))
            self.attached = False

    @contextmanager
    def set_aside(self):
        """The base model in use inside the block (the LoRA detached, kept), the LoRA again after it;
        yields whether a LoRA was attached (so the weights changed)."""
        attached = self.attached
        self.detach()
        try:
            yield attached
        finally:
            if attached:
                self.attach()

    def reset(self, seed=None):
        """Back to the base model exactly: fresh lora_a, zero lora_b, plain layers in use."""
        key = mx.random.key(seed) if seed is not None else None
        for layer in self.layers:
            fan_in, rank = layer.lora_a.shape
            bound = 1 / math.sqrt(fan_in)
            if key is not None:
                key, sub = mx.random.split(key)
                layer.lora_a = mx.random.uniform(-bound, bound, (fan_in, rank), key=sub)
            else:
                layer.lora_a = mx.random.uniform(-bound, bound, (fan_in, rank))
            layer.lora_b = mx.zeros(layer.lora_b.shape, dtype=layer.lora_b.dtype)
        mx.eval([(layer.lora_a, layer.lora_b) for layer in self.layers])
        self.detach()
        self.model.eval()
        self.trained = False

    def is_reset(self):
        return not self.attached and all(not mx.any(layer.lora_b).item() for layer in self.layers)

    def weights(self):
        """The current LoRA weights {name: array}, e.g. to keep in the adapter memory."""
        return {f"{name}.{leaf}": getattr(layer, leaf) for name, layer in self._lora for leaf in ("lora_a", "lora_b")}

    def fitted(self, weights, what="adapter weights do not match this model's LoRA layers"):
        """`weights` checked against this LoRA's layers (names and shapes) and cast to their dtype;
        TTSIError `what: the first problem` otherwise."""
        expected = self.weights()
        missing = [name for name in expected if name not in weights]
        wrong = [name for name in expected if name in weights and weights[name].shape != expected[name].shape]
        extra = sorted(set(weights) - set(expected))
        if missing:
            raise TTSIError(f"{what}: it has no {missing[0]}")
        if wrong:
            name = wrong[0]
            raise TTSIError(
                f"{what}: {name} is {tuple(weights[name].shape)}, the model needs {tuple(expected[name].shape)}"
            )
        if extra:
            raise TTSIError(f"{what}: unexpected {extra[0]}")
        return {name: weights[name].astype(value.dtype) for name, value in expected.items()}

    def load(self, weights):
        """Install LoRA weights saved by `weights()` (same model, same LoRA settings)."""
        weights = self.fitted(weights)
        for name, layer in self._lora:
            layer.lora_a = weights[f"{name}.lora_a"]
            layer.lora_b = weights[f"{name}.lora_b"]
        mx.eval(list(weights.values()))
        self.attach()
        self.model.eval()
        self.trained = True

    def save(self, directory):
        """Write the current LoRA as an mlx-lm adapter directory (`--adapter-path` loads it)."""
        s = self.settings
        config = {
            "fine_tune_type": "lora",
            "num_layers": len(self.model.layers) if s.layers < 0 else s.layers,
            "lora_parameters": {"rank": s.rank, "scale": s.alpha / s.rank, "dropout": 0.0},
        }
        return write_adapter(directory, self.weights(), config)

    def train(self, examples, seed=0, max_seq_length=2048, prefix=None, settings=None, cancelled=None):
        """Fit the LoRA to `examples` [(token ids, answer offset)]; returns training stats.

        `prefix` is (n, [(keys, values)] per layer): the KV cache of the examples' first n tokens,
        computed by the base model and kept frozen. `settings` may change the schedule (epochs,
        learning rate, warmup) for this call; the LoRA's shape is fixed when it is created."""
        s = settings or self.settings
        s.check()
        if (s.rank, s.alpha, s.layers) != (self.settings.rank, self.settings.alpha, self.settings.layers):
            raise TTSIError("LoRA rank, alpha and layers are fixed when the model is loaded")
        if not examples:
            raise TTSIError("no training examples")
        batch = min(s.batch_size, len(examples))  # fewer examples than a batch: one step of them all
        split = split_model(self.model)
        np.random.seed(seed)
        mx.random.seed(seed)
        iters = s.epochs * (len(examples) // batch)
        if prefix is not None and split is not None:
            n, arrays = prefix
            dataset = [(ids[n:offset], ids[offset:]) for ids, offset in examples]
            lower = frozen_layers(self.model, s)
            if lower:
                self.detach()  # the bottom layers have no LoRA anyway
                dataset = lowered(split[0], arrays, lower, dataset, cancelled)
            batches = prefix_batches(dataset, batch, loop=True)
            loss = prefix_loss(arrays, split, lower)
        else:  # whole sequences, loss masked to the answer: mlx-lm's own batching and loss
            n, batches, loss = 0, iterate_batches(list(examples), batch, max_seq_length, loop=True), default_loss
        schedule = build_schedule(
            {"name": "cosine_decay", "arguments": [s.learning_rate, iters], "warmup": int(s.warmup * iters)}
        )
        self.attach()
        self.trained = True  # from the first step on: a cancelled training still needs a reset
        started = time.perf_counter()
        mean_loss, tokens, steps = fit(
            self.model,
            optim.Adam(learning_rate=schedule),
            batches,
            loss,
            iters,
            cancelled,
            epoch=len(examples) // batch,
            stop_loss=s.stop_loss,
            said_back=s.stop_said_back,
        )
        return {
            "steps": steps,
            "examples": len(examples),
            "loss": round(mean_loss, 4),
            "trained_tokens": int(tokens),
            "frozen_prefix": n,
            "seconds": round(time.perf_counter() - started, 3),
            "settings": asdict(s),
        }


def answer_scores(model, examples, prefix=None):
    """For each (token ids, answer offset): (summed log-prob of the answer tokens, their count, whether
    each answer token was the model's argmax: the model already says it back, teacher-forced).

    One pass per example with the model as it is (the LoRA attached or not); `prefix` is (n, KV arrays)
    of the examples' first n tokens, as for `Adapter.train`."""
    n, arrays = prefix if prefix is not None and prefix[1] is not None else (0, None)
    scores = []
    for ids, offset in examples:
        start = n if arrays is not None and n < offset else 0
        cache = cache_from_arrays(arrays) if start else None
        logprobs = log_probs(model(mx.array(ids[start:-1])[None], cache=cache)[0, offset - 1 - start :])
        targets = mx.array(ids[offset:])
        total = mx.take_along_axis(logprobs, targets[:, None], axis=-1).sum()
        said = mx.all(mx.argmax(logprobs, axis=-1) == targets)
        mx.eval(total, said)
        scores.append((total.item(), len(ids) - offset, bool(said.item())))
    return scores
