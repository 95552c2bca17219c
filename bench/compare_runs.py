"""Row-by-row comparison of eval runs: accuracy per benchmark, and what each column fixed or broke
against the first one.

    python bench/compare_runs.py runs/q-main:base runs/q-main:ttsi runs/q-main:label runs/q-label:self-label

A column is DIR:METHOD (a method of that run's results.jsonl), DIR:label (the self-label recorded
on that run's ttsi lines: the checked answer TT-SI trains on), or DIR:METHOD+gate (an ungated "-all"
method read as gated: its answer on the rows it found uncertain, the run's base answer on the others).
DIR may be several run folders joined by commas (runs/q-seed4,runs/q-seed5:self-label): their rows
pooled, each row keyed by its run's seed as well, so two seeds that drew the same row count it twice.
Only rows present in every column count.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def column(spec):
    folders, method = spec.rsplit(":", 1)
    rows = {}
    for folder in folders.split(","):
        rows.update(run_column(folder, method))
    return rows


def run_column(folder, method):
    """{(seed, benchmark, id): correct} of one run folder's METHOD (see the module's docstring)."""
    gated = method.endswith("+gate")
    method = method.removesuffix("+gate")
    source, field = ("ttsi", "label_correct") if method == "label" else (method, "correct")
    records = [json.loads(line) for line in (Path(folder) / "results.jsonl").read_text().splitlines()]
    first = min((r["seed"] for r in records), default=0)  # a run's first seed (--seed 1 runs seed 1 only)
    records = [r for r in records if r["seed"] == first]
    base = {(first, r["benchmark"], r["id"]): bool(r["correct"]) for r in records if r["method"] == "base"}
    rows = {}
    for record in records:
        if record["method"] == source and record.get(field) is not None:
            row = (first, record["benchmark"], record["id"])
            if not gated or record["uncertain"]:
                rows[row] = bool(record[field])
            elif row in base:
                rows[row] = base[row]
    return rows


def main(specs):
    columns = [column(spec) for spec in specs]
    common = set.intersection(*(set(c) for c in columns))
    benchmarks = defaultdict(list)
    for key in sorted(common):
        benchmarks[key[1]].append(key)
    print("| benchmark | rows | " + " | ".join(specs) + " |")
    print("|---|---|" + "---|" * len(specs))
    for name, keys in sorted(benchmarks.items()):
        cells = [f"{100 * sum(c[k] for k in keys) / len(keys):.1f}" for c in columns]
        print(f"| {name} | {len(keys)} | " + " | ".join(cells) + " |")
    keys = sorted(common)
    cells = [f"{100 * sum(c[k] for k in keys) / max(len(keys), 1):.1f}" for c in columns]
    print("| **all** | " + f"{len(keys)} | " + " | ".join(cells) + " |")
    first = columns[0]
    for spec, other in zip(specs[1:], columns[1:]):
        fixed = sum(other[k] and not first[k] for k in keys)
        broken = sum(first[k] and not other[k] for k in keys)
        print(f"{spec} vs {specs[0]}: fixed {fixed}, broke {broken}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
