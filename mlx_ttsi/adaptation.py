"""Self-improvement: one LoRA on the loaded model, trained per request and reset after it.

LoRA layers are added once (adding them twice would nest LoRA in LoRA). A reset draws a fresh
`lora_a` and zeroes `lora_b`, which makes every LoRA layer's output equal its base layer's exactly.
Training runs mlx-lm's own tuner in-process on (tokens, answer offset) pairs, so the loss covers
the answer tokens only.
"""

import contextlib
import io
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

from .errors import TTSIError


@dataclass
class LoRASettings:
    rank: int = 8
    alpha: float = 16.0  # scale = alpha / rank, as in the paper's PEFT setup
    epochs: int = 5
    learning_rate: float = 1e-4
    layers: int = -1  # how many top transformer blocks get LoRA; -1 = all
    warmup: float = 0.03  # fraction of steps, then cosine decay
    batch_size: int = 1

    def check(self):
        if self.rank < 1 or self.epochs < 1 or self.learning_rate <= 0 or self.batch_size < 1:
            raise TTSIError("LoRA rank, epochs, batch size and learning rate must be positive")


class _Progress:
    """Collects mlx-lm's training reports instead of letting it print them."""

    def __init__(self):
        self.reports = []

    def on_train_loss_report(self, info):
        self.reports.append(info)

    def on_val_loss_report(self, info):
        pass


class Adapter:
    def __init__(self, model, settings=None):
        self.model = model
        self.settings = settings or LoRASettings()
        self.settings.check()
        if any(isinstance(m, LoRALinear) for _, m in model.named_modules()):
            raise TTSIError("this model already has LoRA layers; load a fresh model")
        blocks = len(model.layers)
        count = blocks if self.settings.layers < 0 else min(self.settings.layers, blocks)
        model.freeze()
        linear_to_lora_layers(
            model,
            count,
            {"rank": self.settings.rank, "scale": self.settings.alpha / self.settings.rank, "dropout": 0.0},
        )
        self.layers = [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]
        self.trained = False
        self.reset()

    def reset(self, seed=None):
        """Back to the base model's behaviour exactly: fresh lora_a, zero lora_b."""
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
        mx.eval(self.model.trainable_parameters())
        self.model.eval()
        self.trained = False

    def is_reset(self):
        return all(not mx.any(layer.lora_b).item() for layer in self.layers)

    def weights(self):
        """The current LoRA weights {name: array}, e.g. to keep in the adapter memory."""
        return dict(tree_flatten(self.model.trainable_parameters()))

    def load(self, weights):
        """Install LoRA weights saved by `weights()` (same model, same LoRA settings)."""
        expected = {name: value.shape for name, value in self.weights().items()}
        if set(weights) != set(expected) or any(weights[n].shape != s for n, s in expected.items()):
            raise TTSIError("adapter weights do not match this model's LoRA layers")
        self.model.load_weights(list(weights.items()), strict=False)
        mx.eval(self.model.trainable_parameters())
        self.model.eval()
        self.trained = True

    def trainable_parameters(self):
        return sum(v.size for _, v in tree_flatten(self.model.trainable_parameters()))

    def train(self, examples, seed=0, max_seq_length=2048, save_to=None):
        """Fit the LoRA to `examples` [(token ids, answer offset)]; returns training stats."""
        s = self.settings
        if len(examples) < s.batch_size:
            raise TTSIError(f"need at least {s.batch_size} training examples, got {len(examples)}")
        steps_per_epoch = len(examples) // s.batch_size
        iters = s.epochs * steps_per_epoch
        schedule = build_schedule(
            {"name": "cosine_decay", "arguments": [s.learning_rate, iters], "warmup": int(s.warmup * iters)}
        )
        optimizer = optim.Adam(learning_rate=schedule)
        progress = _Progress()
        np.random.seed(seed)
        mx.random.seed(seed)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mlx-ttsi-") as scratch:
            # mlx-lm's trainer always writes an adapter file; keep it out of the user's way.
            adapter_file = Path(save_to) if save_to else Path(scratch) / "adapters.safetensors"
            args = TrainingArgs(
                batch_size=s.batch_size,
                iters=iters,
                steps_per_report=iters,
                steps_per_eval=iters + 1,
                steps_per_save=iters + 1,
                max_seq_length=max_seq_length,
                adapter_file=str(adapter_file),
            )
            with contextlib.redirect_stdout(io.StringIO()):
                train(self.model, optimizer, list(examples), args=args, training_callback=progress)
        self.model.eval()
        self.trained = True
        report = progress.reports[-1] if progress.reports else {}
        return {
            "steps": iters,
            "examples": len(examples),
            "loss": round(float(report.get("train_loss", float("nan"))), 4),
            "trained_tokens": int(report.get("trained_tokens", 0)),
            "seconds": round(time.perf_counter() - started, 3),
            "settings": asdict(s),
        }
