"""Import a llama-family GGUF file into an mlx-lm model directory (done once, then cached).

`mx.load` reads the tensors (Q4_0/Q4_1/Q8_0 stay quantized as MLX triplets); K-quants are
dequantized with the `gguf` package. The tokenizer is rebuilt from the file's metadata with
transformers' GGUF builders, and llama.cpp's q/k row permutation is undone.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from .config import staging_prefix, sweep_staging
from .errors import ModelError

IMPORTER_VERSION = 1

# GGUF architecture -> mlx-lm model_type. Only llama permutes q/k rows in llama.cpp's converter.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
PERMUTED = {"llama"}

_RENAMES = [
    (r"^token_embd\.", "model.embed_tokens."),
    (r"^output_norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
    (r"^blk\.(\d+)\.attn_q\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^blk\.(\d+)\.attn_k\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^blk\.(\d+)\.attn_v\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^blk\.(\d+)\.attn_output\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^blk\.(\d+)\.ffn_gate\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^blk\.(\d+)\.ffn_up\.", r"model.layers.\1.mlp.up_proj."),
    (r"^blk\.(\d+)\.ffn_down\.", r"model.layers.\1.mlp.down_proj."),
    (r"^blk\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^blk\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
]

# The "smollm" pre-tokenizer llama.cpp names: single digits, then GPT-2 byte-level splitting.
_SINGLE_DIGIT_PRETOKENIZERS = {"smollm", "starcoder", "refact"}


def hf_name(gguf_name):
    for pattern, replacement in _RENAMES:
        new, count = re.subn(pattern, replacement, gguf_name)
        if count:
            return new
    raise ModelError(f"GGUF tensor {gguf_name!r} has no known mlx-lm name")


def unpermute(rows, n_head):
    """Undo llama.cpp's rotary permutation of q/k rows (works on weights, scales and biases)."""
    shape = rows.shape
    return rows.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _scalar(meta, key, default=None):
    if key not in meta:
        if default is None:
            raise ModelError(f"GGUF metadata lacks {key!r}")
        return default
    value = meta[key]
    return value.item() if isinstance(value, mx.array) else value


def _count(meta, key, default=None):
    """A size in the metadata (heads, layers, widths): a positive integer, or a one-line ModelError."""
    value = _scalar(meta, key, default)
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or count != value:
        raise ModelError(f"GGUF metadata {key} is {value!r}: it must be a positive integer")
    return count


def _plain(value):
    return value.tolist() if isinstance(value, mx.array) else value


def read_gguf(path):
    """Return (tensors, metadata); K-quant tensors come back dequantized to float16."""
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as native_error:  # mx.load rejects K-quants; the gguf package reads them
        try:
            tensors, metadata = _read_with_gguf_package(path)
        except Exception:
            reason = str(native_error).strip().splitlines()[0] if str(native_error).strip() else "unreadable"
            raise ModelError(f"cannot read GGUF file {path}: {reason}") from None
    if not tensors or "general.architecture" not in metadata:
        raise ModelError(f"cannot read GGUF file {path}: no model tensors or architecture in it")
    return tensors, metadata


def _plain_reader():
    from gguf import GGUFReader

    class PlainReader(GGUFReader):
        """GGUFReader over a plain ndarray view of its memmap: slicing a memmap subclass costs more
        than the slice, and the reader slices ~10^6 times (36 s of a Qwen2.5-0.5B import)."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, memmap):
            self._data = np.asarray(memmap)

    return PlainReader


def _read_with_gguf_package(path):
    from concurrent.futures import ThreadPoolExecutor

    from gguf.quants import dequantize

    reader = _plain_reader()(str(path))

    def values(item):  # numpy releases the GIL while it dequantizes: several threads, several cores
        shape = tuple(int(d) for d in reversed(item.shape))
        dtype = np.float16 if item.name.endswith(".weight") and len(shape) > 1 else np.float32
        return np.asarray(dequantize(np.asarray(item.data), item.tensor_type)).astype(dtype).reshape(shape)

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # MLX arrays on this thread
        tensors = {item.name: mx.array(array) for item, array in zip(reader.tensors, pool.map(values, reader.tensors))}
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        metadata[name] = (
            mx.array(field.contents()) if not isinstance(field.contents(), (str, list)) else field.contents()
        )
    return tensors, metadata


def model_config(meta, tensors):
    arch = _scalar(meta, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})")
    if "token_embd.weight" not in tensors:
        raise ModelError("GGUF file has no token_embd.weight tensor (the token embeddings)")
    heads = _count(meta, f"{arch}.attention.head_count")
    config = {
        "model_type": ARCHITECTURES[arch],
        "hidden_size": _count(meta, f"{arch}.embedding_length"),
        "num_hidden_layers": _count(meta, f"{arch}.block_count"),
        "intermediate_size": _count(meta, f"{arch}.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _count(meta, f"{arch}.attention.head_count_kv", heads),
        "rms_norm_eps": float(_scalar(meta, f"{arch}.attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(_scalar(meta, f"{arch}.context_length", 4096)),
        "rope_theta": float(_scalar(meta, f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    if f"{arch}.rope.dimension_count" in meta:
        head_dim = int(_scalar(meta, f"{arch}.rope.dimension_count"))
        if head_dim != config["hidden_size"] // heads:
            config["head_dim"] = head_dim
    if "rope_freqs.weight" in tensors:
        raise ModelError("GGUF files with rope frequency factors (llama 3.1 style) are not supported")
    if any(t.dtype == mx.uint32 for t in tensors.values()):
        config["quantization"] = {"group_size": 32, "bits": 4}
    return config


def convert_weights(tensors, config, arch):
    weights = {}
    for name, value in tensors.items():
        new = hf_name(name)
        if arch in PERMUTED and ".q_proj." in new:
            value = unpermute(value, config["num_attention_heads"])
        elif arch in PERMUTED and ".k_proj." in new:
            value = unpermute(value, config["num_key_value_heads"])
        weights[new] = value
    return weights


def build_tokenizer(meta):
    """A transformers fast tokenizer from the file's `tokenizer.*` metadata."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields = {
        name: _plain(meta[f"tokenizer.{key}"])
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in meta
    }
    if "tokens" not in fields:
        raise ModelError("GGUF file has no tokenizer vocabulary")
    try:
        backend, _ = convert_gguf_tokenizer(_scalar(meta, "general.architecture"), fields)
    except Exception as error:
        raise ModelError(f"cannot build the tokenizer from the GGUF metadata: {error}") from None
    if fields.get("pre_tokenizer_type") in _SINGLE_DIGIT_PRETOKENIZERS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    tokens = fields["tokens"]

    def token(key):
        index = fields.get(key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unk_token_id"),
        pad_token=token("pad_token_id"),
        chat_template=_plain(meta.get("tokenizer.chat_template")),
        add_bos_token=bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
    )


def import_gguf(gguf_path, out_dir):
    """Write an mlx-lm directory for `gguf_path` at `out_dir`, atomically."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tensors, meta = read_gguf(gguf_path)
    arch = _scalar(meta, "general.architecture", "unknown")
    config = model_config(meta, tensors)
    weights = convert_weights(tensors, config, arch)
    tokenizer = build_tokenizer(meta)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if eos is not None:
        config["eos_token_id"] = int(_plain(eos))
    config["mlx_ttsi"] = {"imported_from": str(gguf_path), "importer_version": IMPORTER_VERSION}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(out_dir.parent, "import")  # what a killed import left
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix("import"), dir=out_dir.parent))
    try:
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(staging))
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():  # lost a race to a finished import: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def import_dir(gguf_path, cache_root):
    """Where a GGUF file is (or will be) imported: one directory per file, size, mtime and importer."""
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}:{IMPORTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_root) / "models" / f"{gguf_path.stem}-{digest}"


def cached_import(gguf_path, cache_root):
    """The cached mlx-lm directory for a GGUF file, importing it on first use."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    out_dir = import_dir(gguf_path, cache_root)
    if (out_dir / "config.json").exists():
        return out_dir
    logging.getLogger(__name__).info("importing %s into %s (once)", gguf_path, out_dir)
    return import_gguf(gguf_path, out_dir)
