"""Answer with a saved LoRA adapter (`--adapter-path DIR`), as `mlx_lm.generate --adapter-path` does.

DIR is an mlx-lm adapter directory: `adapters.safetensors` and `adapter_config.json`, written by
`mlx-ttsi ask --save-adapter` or by `mlx_lm.lora`. Its config fixes the LoRA's shape (rank, scale,
layers), so the agent's LoRA is built from it, then given the weights (`Agent(saved=...)`).
"""

import json
from pathlib import Path

import mlx.core as mx

from .errors import TTSIError

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"


def lora_options(directory):
    """{rank, alpha, layers} for the agent's LoRA, read from DIR/adapter_config.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TTSIError(f"adapter directory not found: {directory}")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except OSError as error:
        raise TTSIError(f"cannot read {directory / CONFIG}: {error.strerror}") from None
    except ValueError as error:
        raise TTSIError(f"{directory / CONFIG} is not valid JSON: {error}") from None
    kind = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
    if kind != "lora":
        raise TTSIError(f"adapter {directory}: only LoRA adapters can be used, not fine_tune_type {kind!r}")
    lora = config.get("lora_parameters") or {}
    if lora.get("keys") is not None:  # our LoRA covers every linear layer of a block, mlx-lm's default
        raise TTSIError(f"adapter {directory}: LoRA on chosen keys ({', '.join(lora['keys'])}) is not supported")
    try:
        rank, scale, layers = int(lora["rank"]), float(lora["scale"]), int(config["num_layers"])
    except (KeyError, TypeError, ValueError):
        raise TTSIError(f"adapter {directory}: {CONFIG} needs num_layers and lora_parameters.rank/scale") from None
    return {"rank": rank, "alpha": scale * rank, "layers": layers}


def load_weights(directory):
    """DIR/adapters.safetensors as LoRA weights (Agent(saved=...) checks they fit its LoRA)."""
    path = Path(directory) / WEIGHTS
    try:
        return mx.load(str(path))
    except (OSError, ValueError, RuntimeError) as error:
        raise TTSIError(f"cannot read adapter weights {path}: {error}") from None
