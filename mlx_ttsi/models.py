"""Resolve a model name to an mlx-lm directory and load it with the right precision.

A model can be: an embedded model's short name (embedded.py), a local mlx-lm directory, a `.gguf` file
(imported once into the cache), or a Hugging Face repo id (fetched through huggingface-hub,
which honours HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE, read when the model is loaded).
"""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from . import embedded
from .config import cache_dir, hub_cache
from .errors import ModelError
from .gguf_import import cached_import
from .settings import PRECISIONS

EMBEDDED_NAME = embedded.DEFAULT
log = logging.getLogger(__name__)
_HF_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
_HF_PATTERNS = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object  # mlx_lm TokenizerWrapper
    name: str
    path: Path
    context_length: int
    precision: str


def embedded_gguf_path(name=EMBEDDED_NAME):
    """The GGUF file of an embedded model (embedded.py), found without importing its packages."""
    return embedded.EMBEDDED[name].gguf()


def resolve(spec):
    """Return (display name, local mlx-lm directory) for a model spec."""
    spec = str(spec).strip()
    if not spec:
        raise ModelError("no model given")
    known = embedded.find(spec)
    if known is not None:
        return known.name, cached_import(embedded_gguf_path(known.name), cache_dir())
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        return path.name, cached_import(path, cache_dir())
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{spec} is not an mlx-lm model directory (no config.json)")
        return path.name, path
    if path.exists():
        raise ModelError(f"{spec} is neither a .gguf file nor a model directory")
    if not _HF_REPO.match(spec):
        raise ModelError(
            f"unknown model {spec!r}: give an embedded model ({', '.join(embedded.EMBEDDED)}), a .gguf file, a model directory "
            "or a Hugging Face repo id (org/name)"
        )
    return spec, _download(spec)


def _download(repo):
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo, allow_patterns=_HF_PATTERNS, cache_dir=hub_cache(), local_files_only=embedded.offline()
            )
        )
    except Exception as error:  # hub errors vary by version and transport; all mean "not available"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot get model {repo!r} from Hugging Face: {reason}") from None


def backend():
    """Where MLX runs here: "metal", "cuda" or "cpu"."""
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


def on_cpu():
    """True when MLX has no GPU here (Linux CPU build), where float32 is the fast path."""
    return backend() == "cpu"


def resolve_precision(precision):
    """'auto' is the model's own dtype ('native') on a GPU and float32 on CPU."""
    if precision == "auto":
        return "float32" if on_cpu() else "native"
    return precision


def set_precision(model, precision):
    """'auto' keeps the model's own dtype on a GPU and uses float32 on CPU."""
    from mlx_lm.utils import dequantize_model

    precision = resolve_precision(precision)
    if precision == "native":
        return precision
    if precision not in PRECISIONS[2:]:
        raise ModelError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    dequantize_model(model)
    dtype = getattr(mx, precision)
    model.update(tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
    mx.eval(model.parameters())
    return precision


def load(spec, precision="auto"):
    """Load a model spec into memory, ready for scoring, generation and LoRA."""
    from mlx_lm import load as mlx_load

    name, path = resolve(spec)
    log.info("loading %s from %s", name, path)
    try:
        model, tokenizer = mlx_load(str(path))
    except Exception as error:
        raise ModelError(f"cannot load model {name!r} from {path}: {error}") from None
    precision = set_precision(model, precision)
    log.info("%s runs in %s", name, precision)
    config = json.loads((path / "config.json").read_text())
    context = int(
        config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings") or 4096
    )
    return LoadedModel(model, tokenizer, name, path, context, precision)
