"""The files of an eval out dir that results are kept in: results.jsonl (and per rank), config.json.

results.jsonl has one line per row, method and seed, appended and flushed as it goes, so a rerun
resumes where the last one stopped; rank R of N appends to results.rankR.jsonl instead. One process
at a time writes each file (`writing`): a second eval into the same --out is refused, since the
first, when it finishes, replaces results.jsonl and the second's lines would be lost.
"""

import fcntl
import json
import os
from contextlib import contextmanager

from ..errors import DataError
from ..files import atomic_write, read_json

RESULTS = "results.jsonl"


def key(record):
    """What a result line is the answer to: (benchmark, row id, method, seed)."""
    return (record["benchmark"], str(record["id"]), record["method"], record["seed"])


def read_records(path, repair=False):
    """The records in one results file. A last line cut short by a crash is dropped (and, with
    `repair`, the file is rewritten without it); a damaged line elsewhere is an error."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    clean = data.endswith(b"\n") or not data
    if clean:
        lines = lines[:-1]
    records = []
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
            key(record)
        except (ValueError, KeyError, TypeError):
            if index < len(lines) - 1:
                raise DataError(
                    f"results file {path} is damaged at line {index + 1}; move it away to start over"
                ) from None
            clean = False
            break
        records.append(record)
    if repair and not clean:
        write_records(path, records)
    return records


def write_records(path, records):
    """Replace a results file with `records`, one JSON line each."""
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def results_files(out):
    """results.jsonl first, then results.rankR.jsonl by rank."""
    ranks = sorted(out.glob("results.rank*.jsonl"), key=lambda p: int(p.name.split("rank")[1].split(".")[0] or 0))
    return ([out / RESULTS] if (out / RESULTS).exists() else []) + ranks


def read_all(out, extra=()):
    """Every record of the out dir (and `extra` lists), the first of each (row, method, seed) kept."""
    merged = {}
    for records in [read_records(p) for p in results_files(out)] + list(extra):
        for record in records:
            merged.setdefault(key(record), record)
    return list(merged.values())


@contextmanager
def writing(out, names):
    """Hold the files `names` of the out dir for this process (a lock file beside each, released when
    the process ends, even by a crash); another process holding one is a one-line error."""
    handles = []
    try:
        for name in names:
            handles.append(open(out / f".{name}.lock", "w"))
            try:
                fcntl.flock(handles[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DataError(f"another eval is writing {out / name}; let it finish, or use another --out") from None
        yield
    finally:
        for handle in handles:
            handle.close()


class Appender:
    """Appends result lines to one file, flushed to disk one by one."""

    def __init__(self, path):
        self.path = path
        read_records(path, repair=True)  # drop a line cut short by an earlier crash first
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record):
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()


def check_config(out, settings):
    """Results are only reused under the same settings (keys unset on either side are not compared)."""
    path = out / "config.json"
    if path.exists():
        saved = read_json(
            path, "settings", DataError, unreadable=None, invalid="{path} is damaged; move it away to start over"
        )
        changed = [
            k
            for k in sorted(set(saved) & set(settings))
            if saved[k] is not None and settings[k] is not None and saved[k] != settings[k]
        ]
        if changed:
            diffs = ", ".join(f"{k} {saved[k]!r} -> {settings[k]!r}" for k in changed)
            raise DataError(f"{out} holds results made with other settings ({diffs}); use another --out")
        settings = {**saved, **{k: v for k, v in settings.items() if v is not None}}
    atomic_write(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
