"""Shared helpers for the benchmark scripts: loading, benchmark rows, percentiles."""

import json
import os
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_ttsi  # noqa: E402,F401  (loads OpenBLAS before mlx)

ROOT = Path(__file__).resolve().parents[1]
SEALTOOL = Path(os.environ.get("MLX_TTSI_BENCHMARKS", ROOT.parent / "shared" / "benchmarks")) / "sealtool.jsonl"


def sealtool_rows():
    if not SEALTOOL.exists():
        sys.exit(f"benchmark file not found: {SEALTOOL} (set MLX_TTSI_BENCHMARKS)")
    with open(SEALTOOL) as f:
        return [json.loads(line) for line in f]


FILES = {"toolalpaca_real": "toolalpaca"}  # a benchmark's name -> its file's, where they differ


@cache
def rows_of(benchmark):
    """{id: row} of a benchmark's file under ../shared/benchmarks."""
    from mlx_ttsi.evaluation.rows import load_rows

    path = SEALTOOL.parent / f"{FILES.get(benchmark, benchmark)}.jsonl"
    return {row["id"]: row for row in load_rows([path])[0]}


def method_records(spec):
    """{(seed, benchmark, id): record} of METHOD in the eval run folders of `spec` (DIR[,DIR...]:METHOD):
    two seeds that drew the same row give two records, as in compare_runs.py."""
    folders, method = spec.rsplit(":", 1)
    found = {}
    for folder in folders.split(","):
        for line in (Path(folder) / "results.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["method"] == method:
                found[(record.get("seed"), record["benchmark"], record["id"])] = record
    return found


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * q / 100
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def uncertain_rows(agent, count, start=0, threshold=None):
    """The first `count` SealTool rows (from `start`) the model is uncertain about, with their base answers."""
    chosen = []
    for row in sealtool_rows()[start:]:
        base = agent.ask(
            row["query"], tools=row["tools"], mode="base", **({"threshold": threshold} if threshold else {})
        )
        if base.uncertainty.uncertain:
            chosen.append((row, base))
        if len(chosen) == count:
            break
    return chosen


def machine():
    import platform

    from mlx_ttsi import _blas

    import mlx.core as mx

    device = "gpu" if mx.metal.is_available() else "cpu"
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, mlx {mx.__version__} ({device}), BLAS: {_blas.loaded_path or 'bundled'}"


def forwards_through(around):
    """Every ContextState made from now on runs its forward passes through `around(forward)` (a
    wrapper that counts or times them)."""
    from mlx_ttsi.context import ContextState

    init = ContextState.__init__

    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.forward = around(self.forward)

    ContextState.__init__ = wrapper
