"""files.py: files written in one step, JSON files read with one-line errors."""

import io
import json

from mlx_ttsi.errors import DataError, TTSIError
from mlx_ttsi.files import atomic_write, read_json, staged

import pytest


def test_atomic_write_takes_text_and_bytes_and_leaves_nothing_beside(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "one")
    assert path.read_text() == "one"
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_file_is_made_with_the_mode_open_gives(tmp_path):
    atomic_write(tmp_path / "a", "x")
    (tmp_path / "b").write_text("x")
    assert (tmp_path / "a").stat().st_mode == (tmp_path / "b").stat().st_mode


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError), staged(path, suffix=".safetensors") as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".safetensors")
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_read_json_reads_a_file_or_standard_input(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "a.json", "data file") == {"a": 1}
    monkeypatch.setattr("sys.stdin", io.StringIO("[2]"))
    assert read_json("-", "data file", stdin=True) == [2]


def test_read_json_fails_with_the_callers_one_line_messages(tmp_path):
    bad, missing = tmp_path / "bad.json", tmp_path / "none.json"
    bad.write_text("{\n  nope")
    with pytest.raises(TTSIError, match=r"^data file .*bad.json is not valid JSON: Expecting .* \(line 2\)$"):
        read_json(bad, "data file")
    with pytest.raises(TTSIError, match=r"^cannot read data file .*none.json: No such file or directory$"):
        read_json(missing, "data file")
    with pytest.raises(DataError, match=r"^data file not found: .*none.json$"):
        read_json(missing, "data file", DataError, missing="{what} not found: {path}")
    with pytest.raises(TTSIError, match=r"^.*bad.json is damaged: Expecting "):
        read_json(bad, "data file", invalid="{path} is damaged: {error}")
    with pytest.raises(FileNotFoundError):
        read_json(missing, "data file", unreadable=None)
    (tmp_path / "latin.json").write_bytes(b'"\xff"')
    with pytest.raises(TTSIError, match="is not valid JSON: 'utf-8' codec"):
        read_json(tmp_path / "latin.json", "data file")


def test_what_the_parser_raises_beyond_bad_json_passes_through(tmp_path):
    (tmp_path / "a.json").write_text("[]")

    def parse(text):
        raise DataError("too deep")

    with pytest.raises(DataError, match="too deep"):
        read_json(tmp_path / "a.json", "data file", parse=parse)
    assert read_json(tmp_path / "a.json", "data file", parse=lambda t: json.loads(t) + [1]) == [1]
