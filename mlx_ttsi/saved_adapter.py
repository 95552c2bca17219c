"""Answer with a saved LoRA adapter (`--adapter-path DIR`), as `mlx_lm.generate --adapter-path` does.

DIR is an mlx-lm adapter directory: `adapters.safetensors` and `adapter_config.json`, written by
`mlx-ttsi ask --save-adapter` or by `mlx_lm.lora`. Its config fixes the LoRA's shape (rank, scale,
layers), so the agent's LoRA is built from it, then given the weights (`Agent(saved=...)`).
`--save-adapter DIR` writes one (`prepare` checks DIR before the model loads, `write` fills it).
"""

import json
import tempfile
from pathlib import Path

import mlx.core as mx

from .errors import TTSIError
from .files import read_json, staged

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"


def lora_options(directory):
    """{rank, alpha, layers} for the agent's LoRA, read from DIR/adapter_config.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TTSIError(f"adapter directory not found: {directory}")
    config = read_json(
        directory / CONFIG,
        CONFIG,
        unreadable="cannot read {path}: {reason}",
        invalid="{path} is not valid JSON: {error}",
    )
    kind = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
    if kind != "lora":
        raise TTSIError(f"adapter {directory}: only LoRA adapters can be used, not fine_tune_type {kind!r}")
    lora = config.get("lora_parameters") or {}
    if not isinstance(lora, dict):
        raise TTSIError(f"adapter {directory}: lora_parameters in {CONFIG} must be an object")
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


def prepare(directory, force=False):
    """Check, before the model loads, that DIR can take an adapter: a new or empty directory (or
    `force`), writable. Creates it; True when it was created here (so an unused one can go)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TTSIError(f"--save-adapter {directory} is a file, not a directory")
    held = sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []
    if held and not force:
        raise TTSIError(
            f"--save-adapter {directory} is not empty (it holds {', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''}): choose a new directory, or add --force to overwrite"
        )
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as error:
        raise TTSIError(f"cannot write to --save-adapter {directory}: {error.strerror or error}") from None
    return created


def write(directory, weights, config):
    """DIR's weights and config, each written under a temporary name then renamed into place: a crash
    leaves the old file or the new one, never half of one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # both written before either is renamed; the weights renamed first (the inner block ends first)
    with staged(directory / CONFIG) as config_file, staged(directory / WEIGHTS, suffix=".safetensors") as weights_file:
        mx.save_safetensors(str(weights_file), weights)
        config_file.write_text(json.dumps(config, indent=2))
    return directory
