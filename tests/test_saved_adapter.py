"""`--adapter-path`: answering with a saved LoRA, ours (`--save-adapter`) or one written by mlx_lm.lora."""

import json

from mlx_ttsi.cli import cli

import pytest
from click.testing import CliRunner

REQUEST = "What is the weather in Paris?"


@pytest.fixture
def ask(tiny_model_dir, tools_file):
    def invoke(*args):
        result = CliRunner().invoke(
            cli,
            ["ask", REQUEST, "--model", str(tiny_model_dir), "--tools", str(tools_file), "--json", "-q", *args],
            prog_name="mlx-ttsi",
        )
        return result, (json.loads(result.stdout) if result.exit_code == 0 else None)

    return invoke


def test_adapter_path_answers_as_the_saved_adaptation(ask, tmp_path):
    # a small LoRA shape that differs from the defaults: ask --adapter-path must take it from the config
    saved = tmp_path / "adapter"
    result, adapted = ask(
        "--mode", "ttsi", "--lr", "0.05", "--rank", "4", "--alpha", "8", "--layers", "1", "--save-adapter", str(saved)
    )
    assert result.exit_code == 0, result.stderr
    _, base = ask("--mode", "base")
    assert adapted["adapted"] and adapted["answer"] != base["answer"]
    result, again = ask("--adapter-path", str(saved))
    assert result.exit_code == 0, result.stderr
    assert again["reused"] and not again["synthetic"] and again["training"] is None
    assert again["answer"] == adapted["answer"] and again["tool_calls"] == adapted["tool_calls"]


def write_mlx_lm_adapter(model_dir, directory, rank=4, scale=10.0, num_layers=1):
    """An adapter as `mlx_lm.lora` writes it: its trainable parameters and its arguments."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, num_layers, {"rank": rank, "scale": scale, "dropout": 0.0})
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.random.seed(1)
    weights = {k: mx.random.normal(v.shape) * 0.5 if k.endswith("lora_b") else v for k, v in weights.items()}
    directory.mkdir()
    mx.save_safetensors(str(directory / "adapters.safetensors"), weights)
    config = {
        "model": str(model_dir),
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "iters": 10,
        "lora_parameters": {"rank": rank, "dropout": 0.0, "scale": scale},
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return weights


def test_adapter_written_by_mlx_lm_lora_is_used(ask, tiny_model_dir, tmp_path):
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.saved_adapter import load_weights, lora_options
    from mlx_ttsi.settings import LoRASettings, Settings

    directory = tmp_path / "mlx-lm-adapter"
    written = write_mlx_lm_adapter(tiny_model_dir, directory)
    assert lora_options(directory) == {"rank": 4, "alpha": 40.0, "layers": 1}
    agent = Agent.load(
        str(tiny_model_dir),
        precision="float32",
        saved=load_weights(directory),
        settings=Settings(lora=LoRASettings(rank=4, alpha=40.0, layers=1)),
    )
    assert set(agent.saved) == set(written)  # mlx-lm's parameter names are ours
    _, base = ask("--mode", "base")
    result, answer = ask("--adapter-path", str(directory))
    assert result.exit_code == 0, result.stderr
    assert answer["reused"] and answer["answer"] != base["answer"]


def test_adapter_path_answers_text_requests_too(tiny_model_dir, tmp_path):
    directory = tmp_path / "mlx-lm-adapter"
    write_mlx_lm_adapter(tiny_model_dir, directory)

    def text(*args):
        result = CliRunner().invoke(
            cli, ["ask", "Say hi", "--model", str(tiny_model_dir), "--max-tokens", "8", "-q", *args]
        )
        assert result.exit_code == 0, result.stderr
        return result.stdout

    assert text("--adapter-path", str(directory)) != text()


@pytest.mark.parametrize(
    "change, message",
    [
        (None, "adapter directory not found"),
        (lambda d: (d / "adapter_config.json").unlink(), "cannot read"),
        (lambda d: (d / "adapters.safetensors").unlink(), "cannot read adapter weights"),
        (lambda d: (d / "adapter_config.json").write_text('{"fine_tune_type": "full"}'), "only LoRA adapters"),
        (
            lambda d: (d / "adapter_config.json").write_text(
                '{"num_layers": 1, "lora_parameters": {"rank": 8, "scale": 10}}'
            ),
            "does not fit this model",
        ),
        (
            lambda d: (d / "adapter_config.json").write_text(
                '{"num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10}}'
            ),
            "does not fit this model",
        ),
        (
            lambda d: (d / "adapter_config.json").write_text('{"num_layers": 1, "lora_parameters": [4, 10]}'),
            "lora_parameters in adapter_config.json must be an object",
        ),
    ],
)
def test_missing_or_mismatched_adapter_is_one_line(ask, tiny_model_dir, tmp_path, change, message):
    directory = tmp_path / "adapter"
    if change is not None:
        write_mlx_lm_adapter(tiny_model_dir, directory)
        change(directory)
    result, _ = ask("--adapter-path", str(directory))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_adapter_path_with_another_method_or_save_is_a_usage_error(ask, tmp_path):
    result, _ = ask("--adapter-path", str(tmp_path), "--mode", "ticl")
    assert result.exit_code == 2 and "does not go with --mode ticl" in result.stderr
    result, _ = ask("--adapter-path", str(tmp_path), "--save-adapter", str(tmp_path / "new"))
    assert result.exit_code == 2 and "no new adapter" in result.stderr


def test_served_requests_use_the_adapter_unless_they_ask_for_base(tiny_model_dir, tmp_path, tools):
    from mlx_ttsi.cli import build_agent

    directory = tmp_path / "mlx-lm-adapter"
    write_mlx_lm_adapter(tiny_model_dir, directory)
    agent = build_agent(str(tiny_model_dir), "float32", None, None, str(directory))
    messages = [{"role": "user", "content": REQUEST}]
    served = agent.ask(
        messages=messages, tools=tools, adapter_weights=None, keep_adapter=False
    )  # as the server calls it
    plain = agent.ask(messages=messages, tools=tools, mode="base")
    assert served.reused and not plain.reused and served.answer != plain.answer
    assert agent.adapter.is_reset()


def test_serve_adapter_path_and_memory_do_not_go_together(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(
        cli, ["serve", "--model", str(tiny_model_dir), "--adapter-path", str(tmp_path), "--memory"]
    )
    assert result.exit_code == 2 and "does not go with --memory" in result.stderr


def test_save_adapter_refuses_a_non_empty_directory_before_loading_unless_forced(ask, tiny_model_dir, tmp_path):
    existing = tmp_path / "mlx-lm-adapter"
    write_mlx_lm_adapter(tiny_model_dir, existing)
    before = {path.name: path.read_bytes() for path in existing.iterdir()}
    result = CliRunner().invoke(cli, ["ask", REQUEST, "--model", "no-such-model", "--save-adapter", str(existing)])
    assert (
        result.exit_code == 1 and "is not empty" in result.stderr and "--force" in result.stderr
    )  # not the model's error
    assert len(result.stderr.strip().splitlines()) == 1
    assert {path.name: path.read_bytes() for path in existing.iterdir()} == before
    result, _ = ask("--mode", "ttsi", "--save-adapter", str(existing), "--force")
    assert result.exit_code == 0, result.stderr
    assert (existing / "adapters.safetensors").read_bytes() != before["adapters.safetensors"]
    assert sorted(path.name for path in existing.iterdir()) == ["adapter_config.json", "adapters.safetensors"]


def test_save_adapter_into_an_unwritable_place_fails_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(
        cli, ["ask", REQUEST, "--model", "no-such-model", "--save-adapter", str(blocker / "sub")]
    )
    assert result.exit_code == 1 and result.stderr.startswith("Error: cannot write to --save-adapter")
    assert len(result.stderr.strip().splitlines()) == 1


def test_save_adapter_says_when_nothing_was_written(ask, tmp_path):
    target = tmp_path / "new" / "adapter"
    result, answer = ask("--mode", "base", "--save-adapter", str(target))
    assert result.exit_code == 0 and not answer["adapted"]
    assert "nothing written to" in result.stderr and "not adapted" in result.stderr
    assert not target.exists()


def test_a_failed_save_leaves_the_previous_adapter_whole(tiny_model_dir, tmp_path, monkeypatch):
    from pathlib import Path

    from mlx_ttsi.agent import Agent

    agent = Agent.load(str(tiny_model_dir), precision="float32")
    directory = tmp_path / "adapter"
    write_mlx_lm_adapter(tiny_model_dir, directory)
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    write_text = Path.write_text

    def failing(path, *args, **kwargs):
        if "adapter_config" in path.name:
            raise OSError(28, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError):
        agent.adapter.save(directory)
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before  # no half-written pair
