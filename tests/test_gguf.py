from mlx_ttsi import models
from mlx_ttsi.errors import ModelError
from mlx_ttsi.gguf_import import cached_import, unpermute

import mlx.core as mx
import pytest
from conftest import CHATML
from mlx_lm.gguf import permute_weights, translate_weight_names


def bytes_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    return [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def write_gguf(path, model_dir, arch="llama"):
    """Export the tiny model the way llama.cpp does: renamed tensors, permuted q/k rows."""
    import json

    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    weights = mx.load(str(model_dir / "model.safetensors"))
    out = {}
    for name, value in weights.items():
        if "q_proj.weight" in name:
            value = permute_weights(value, config["num_attention_heads"])
        elif "k_proj.weight" in name:
            value = permute_weights(value, config["num_attention_heads"], config["num_key_value_heads"])
        out[translate_weight_names(name)] = value
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]]
    tokens = bytes_tokens(tokenizer)
    special = set(tokenizer.all_special_tokens)
    metadata = {
        "general.architecture": arch,
        f"{arch}.embedding_length": mx.array(config["hidden_size"], dtype=mx.uint32),
        f"{arch}.block_count": mx.array(config["num_hidden_layers"], dtype=mx.uint32),
        f"{arch}.feed_forward_length": mx.array(config["intermediate_size"], dtype=mx.uint32),
        f"{arch}.attention.head_count": mx.array(config["num_attention_heads"], dtype=mx.uint32),
        f"{arch}.attention.head_count_kv": mx.array(config["num_key_value_heads"], dtype=mx.uint32),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"], dtype=mx.float32),
        f"{arch}.context_length": mx.array(4096, dtype=mx.uint32),
        f"{arch}.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array([3 if t in special else 1 for t in tokens], dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(tokenizer.bos_token_id, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(tokenizer.eos_token_id, dtype=mx.uint32),
        "tokenizer.ggml.padding_token_id": mx.array(tokenizer.eos_token_id, dtype=mx.uint32),
        "tokenizer.chat_template": CHATML,
    }
    mx.save_gguf(str(path), out, metadata)
    return path


def test_unpermute_inverts_llama_cpp_permutation():
    rows = mx.arange(8 * 6 * 3).reshape(48, 3)
    for heads in (1, 2, 4):
        assert mx.array_equal(unpermute(permute_weights(rows, heads), heads), rows).item()


def test_gguf_import_reproduces_the_model_and_tokenizer(tiny_model_dir, tmp_path):
    gguf = write_gguf(tmp_path / "tiny.gguf", tiny_model_dir)
    original = models.load(str(tiny_model_dir), precision="float32")
    imported = models.load(str(gguf), precision="float32")
    text = "What is the weather in Paris on 2024-10-05? <|im_end|>"
    ids = original.tokenizer.encode(text, add_special_tokens=False)
    assert imported.tokenizer.encode(text, add_special_tokens=False) == ids
    assert imported.tokenizer.decode(ids) == original.tokenizer.decode(ids)
    a = original.model(mx.array(ids)[None])
    b = imported.model(mx.array(ids)[None])
    assert mx.allclose(a, b, atol=1e-4).item()
    assert imported.tokenizer.chat_template == CHATML
    assert imported.tokenizer.eos_token == "<|im_end|>"


def test_import_is_cached_and_done_once(tiny_model_dir, tmp_path):
    gguf = write_gguf(tmp_path / "tiny.gguf", tiny_model_dir)
    first = cached_import(gguf, tmp_path / "cache")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_import(gguf, tmp_path / "cache") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [first.name]  # no staging left


def test_broken_gguf_is_a_clear_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"GGUF" + b"\x00" * 64)
    good = write_gguf(tmp_path / "tiny.gguf", tiny_model_dir).read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    for bad in (empty, truncated, garbage):
        with pytest.raises(ModelError, match="cannot read GGUF"):
            models.load(str(bad))
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_unsupported_architecture_is_a_clear_error(tiny_model_dir, tmp_path):
    gguf = write_gguf(tmp_path / "odd.gguf", tiny_model_dir, arch="mamba")
    with pytest.raises(ModelError, match="architecture 'mamba' is not supported"):
        models.load(str(gguf))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda tensors, meta: tensors.pop("token_embd.weight"), "no token_embd.weight"),
        (
            lambda tensors, meta: meta.update({"llama.attention.head_count": mx.array(0, dtype=mx.uint32)}),
            "head_count is 0: it must be a positive integer",
        ),
        (lambda tensors, meta: meta.update({"llama.block_count": mx.array(-2, dtype=mx.int32)}), "block_count is -2"),
    ],
)
def test_gguf_without_embeddings_or_with_zero_heads_is_a_one_line_error(tiny_model_dir, tmp_path, change, message):
    good = write_gguf(tmp_path / "good.gguf", tiny_model_dir)
    tensors, meta = mx.load(str(good), return_metadata=True)
    change(tensors, meta)
    bad = tmp_path / "bad.gguf"
    mx.save_gguf(str(bad), tensors, meta)
    with pytest.raises(ModelError, match=message) as error:
        models.load(str(bad))
    assert "\n" not in str(error.value)


def test_staging_left_by_a_killed_import_is_removed_on_the_next_import(tiny_model_dir, tmp_path):
    from test_embedded_files import gone_pid

    cache = tmp_path / "cache"
    left = cache / "models" / f".import-{gone_pid()}-q1w2"
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"half a model")
    imported = cached_import(write_gguf(tmp_path / "tiny.gguf", tiny_model_dir), cache)
    assert [path.name for path in (cache / "models").iterdir()] == [imported.name]
