"""The embedded-model tests' own inputs and their requirement switch (fast: no model is loaded)."""

from mlx_ttsi.tools import parse_tools

import pytest
from conftest import require_embedded


def test_fixture_requests_are_valid(embedded_requests):
    assert len(embedded_requests) >= 3
    for row in embedded_requests.values():
        names = [tool.name for tool in parse_tools(row["tools"])]
        assert row["request"].strip() and row["tool"] in names and len(names) >= 2


@pytest.mark.parametrize("required, outcome", [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_embedded_model_fails_only_when_required(monkeypatch, required, outcome):
    from mlx_ttsi import models
    from mlx_ttsi.errors import ModelError

    def missing(name=None):
        raise ModelError("the embedded model is not installed")

    monkeypatch.setattr(models, "embedded_gguf_path", missing)
    monkeypatch.setenv("MLX_TTSI_REQUIRE_EMBEDDED", required)
    with pytest.raises(outcome):
        require_embedded()
