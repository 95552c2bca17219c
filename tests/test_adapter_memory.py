"""The adapter memory: reuse, bounds, atomic files, corrupt entries; and through the server."""

import json
import threading

from mlx_ttsi.agent import Agent
from mlx_ttsi.embedding import embed
from mlx_ttsi.serve.adapter_memory import AdapterMemory, tools_key
from mlx_ttsi.serve.http import make_server
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.tools import parse_tools

import mlx.core as mx
import numpy as np
import openai
import pytest
from conftest import TOOLS

SHAPES = {"layers.0.lora_a": (4, 2), "layers.0.lora_b": (2, 4)}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TTSI = {"ttsi": {"mode": "ttsi"}}


def weights(value):
    return {name: mx.full(shape, value, dtype=mx.float32) for name, shape in SHAPES.items()}


def unit(*values):
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def memory(tmp_path):
    return AdapterMemory(tmp_path / "adapters", SHAPES, size=2, similarity=0.9)


def test_close_requests_with_the_same_tools_reuse_an_adapter(memory):
    memory.store("tools-a", unit(1, 0, 0), weights(1.0))
    entry, found, similarity = memory.lookup("tools-a", unit(1, 0.1, 0))  # cosine 0.995
    assert similarity > 0.99 and mx.array_equal(found["layers.0.lora_a"], weights(1.0)["layers.0.lora_a"]).item()
    assert memory.lookup("tools-a", unit(1, 1, 0)) is None  # cosine 0.71: too far
    assert memory.lookup("tools-b", unit(1, 0, 0)) is None  # other tools


def test_the_closest_entry_wins_and_survives_a_restart(memory, tmp_path):
    memory.store("t", unit(1, 0.3, 0), weights(1.0))
    memory.store("t", unit(1, 0, 0), weights(2.0))
    again = AdapterMemory(tmp_path / "adapters", SHAPES, size=2, similarity=0.9)
    _, found, _ = again.lookup("t", unit(1, 0.05, 0))
    assert found["layers.0.lora_b"][0, 0].item() == 2.0


def test_memory_is_bounded_lru_and_leaves_no_temporary_files(memory):
    first = memory.store("t", unit(1, 0, 0), weights(1.0))
    second = memory.store("t", unit(0, 1, 0), weights(2.0))
    assert memory.lookup("t", unit(1, 0, 0))[0] == first  # first is now the most recently used
    third = memory.store("t", unit(0, 0, 1), weights(3.0))
    assert {e["id"] for e in memory.entries} == {first, third}
    files = sorted(p.name for p in memory.directory.iterdir())
    assert files == sorted(["index.json", f"{first}.safetensors", f"{third}.safetensors"])
    assert second not in (memory.directory / "index.json").read_text()


def test_a_corrupt_entry_is_skipped_with_a_warning(memory, caplog):
    good = memory.store("t", unit(1, 0, 0), weights(1.0))
    bad = memory.store("t", unit(1, 0.01, 0), weights(2.0))  # the closer one
    (memory.directory / f"{bad}.safetensors").write_bytes(b"\x00garbage")
    entry, _, _ = memory.lookup("t", unit(1, 0.01, 0))
    assert entry == good  # fell back to the next usable entry
    assert f"ignoring corrupt entry {bad}" in caplog.text
    assert [e["id"] for e in memory.entries] == [good]
    caplog.clear()
    memory.lookup("t", unit(1, 0, 0))
    assert caplog.text == ""  # warned once, then gone


def test_an_entry_of_another_shape_is_ignored(tmp_path, caplog):
    other = AdapterMemory(tmp_path / "adapters", {"layers.0.lora_a": (8, 2)}, similarity=0.9)
    other.store("t", unit(1, 0, 0), {"layers.0.lora_a": mx.zeros((8, 2))})
    memory = AdapterMemory(tmp_path / "adapters", SHAPES, similarity=0.9)
    assert memory.lookup("t", unit(1, 0, 0)) is None
    assert "do not match" in caplog.text


def test_a_corrupt_index_is_ignored_with_a_warning(tmp_path, caplog):
    directory = tmp_path / "adapters"
    directory.mkdir()
    (directory / "index.json").write_text("{not json")
    memory = AdapterMemory(directory, SHAPES)
    assert len(memory) == 0 and "unreadable index" in caplog.text
    memory.store("t", unit(1, 0, 0), weights(1.0))
    assert json.loads((directory / "index.json").read_text())["entries"][0]["tools"] == "t"


def test_tools_key_is_canonical_but_order_sensitive():
    bare = [dict(spec["function"]) if "function" in spec else spec for spec in TOOLS]
    assert tools_key(parse_tools(TOOLS)) == tools_key(parse_tools(bare))
    assert tools_key(parse_tools(TOOLS)) != tools_key(parse_tools(TOOLS[::-1]))


def test_embedding_is_deterministic_and_normalised(tiny):
    one = embed(tiny.model, tiny.tokenizer, "What is the weather in Paris?")
    assert np.array_equal(one, embed(tiny.model, tiny.tokenizer, "What is the weather in Paris?"))
    assert np.linalg.norm(one) == pytest.approx(1.0, abs=1e-5)
    assert float(np.dot(one, embed(tiny.model, tiny.tokenizer, "Set an alarm at 7"))) < 0.999


@pytest.fixture(scope="module")
def agent(tiny_model_dir):
    return Agent.load(
        str(tiny_model_dir), precision="float32", settings=Settings(lora=LoRASettings(epochs=1, learning_rate=1e-2))
    )


def serve(agent, root):
    memory = AdapterMemory.for_agent(agent, similarity=0.95, root=root)
    server = make_server(agent, "127.0.0.1", 0, memory=memory, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)


def ask(client, name, **extra):
    completion = client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, extra_body=extra)
    calls = [(c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls]
    return calls, completion.model_extra["ttsi"]


def test_server_stores_then_reuses_an_adapter_across_restarts(agent, tmp_path):
    server, client = serve(agent, tmp_path)
    try:
        base, info = ask(client, agent.name, ttsi={"mode": "base"})
        assert "memory" not in info  # base requests never consult it
        trained, info = ask(client, agent.name, **TTSI)
        assert info["memory"] == "stored" and "synthesis" in info["timings"]
        stored = mx.load(str(next(tmp_path.rglob("*.safetensors"))))
        assert any(mx.any(v).item() for k, v in stored.items() if k.endswith("lora_b"))  # trained, not reset
        reused, info = ask(client, agent.name, **TTSI)
        assert info["memory"] == "reused" and info["similarity"] == 1.0 and info["reused"] is True
        assert "synthesis" not in info["timings"] and info["synthetic"] == 0
        assert reused == trained  # the same LoRA on the same request: the same answer
        assert ask(client, agent.name, ttsi={"mode": "base"})[0] == base  # and nothing leaked
    finally:
        server.shutdown()
        server.server_close()
    server, client = serve(agent, tmp_path)  # a new server finds it on disk
    try:
        assert ask(client, agent.name, **TTSI)[1]["memory"] == "reused"
        files = list(tmp_path.rglob("*.safetensors"))
        assert len(files) == 1 and files[0].parent.parent == tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_write_is_a_warning_not_an_error(memory, monkeypatch, caplog):
    def full_disk(path, arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", full_disk)
    assert memory.store("t", unit(1, 0, 0), weights(1.0)) is None
    assert "cannot store an adapter" in caplog.text and len(memory) == 0
    assert list(memory.directory.iterdir()) == []
