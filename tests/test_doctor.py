"""`mlx-ttsi doctor`: one screen (or JSON) on what this install will run on."""

import json

from mlx_ttsi.cli import cli

from click.testing import CliRunner

LINES = (
    "backend",
    "blas",
    "blas kernel",
    "dtype",
    "cache dir",
    "config file",
    "model smollm2-135m",
    "model qwen2.5-coder-0.5b",
    "mlx",
    "mlx-lm",
    "mlx-ttsi",
    "python",
    "platform",
)


def test_doctor_prints_one_line_per_check(tmp_path):
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("  ")[0] for line in lines] == list(LINES)
    assert str(tmp_path / "cache") in result.stdout  # the cache dir honours MLX_TTSI_CACHE
    assert len(lines) <= 24


def test_doctor_json_on_cpu(monkeypatch):
    import mlx.core as mx

    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    if hasattr(mx, "cuda"):
        monkeypatch.setattr(mx.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    info = json.loads(result.stdout)
    assert info["backend"] == "cpu" and info["dtype"] == "float32"  # auto precision on CPU
    assert {"blas", "cache_dir", "embedded_models", "versions"} <= set(info)
    assert {"mlx", "mlx-lm", "mlx-ttsi", "python", "platform"} <= set(info["versions"])
    result = CliRunner().invoke(cli, ["doctor", "--json", "--precision", "bfloat16"])
    assert json.loads(result.stdout)["dtype"] == "bfloat16"
