"""Mean seconds a row per phase and method, from recorded eval lines (nothing is rerun).

    python bench/phase_times.py runs/q-seed24,runs/q-seed25

Phases are the `timings` each line records (scoring, decoding, labelling, synthesis, training,
answering, checking; `total` is the row's whole time). Each folder's rows count once per method.
"""

import sys
from collections import defaultdict
from pathlib import Path

from mlx_ttsi.evaluation.results import read_records


def main(spec):
    sums, rows = defaultdict(lambda: defaultdict(float)), defaultdict(int)
    for folder in spec.split(","):
        for record in read_records(Path(folder) / "results.jsonl"):
            rows[record["method"]] += 1
            for phase, seconds in (record.get("timings") or {}).items():
                sums[record["method"]][phase] += seconds
    phases = sorted({phase for method in sums.values() for phase in method}, key=lambda p: (p == "total", p))
    print("| method | rows | " + " | ".join(phases) + " |\n|---|---|" + "---|" * len(phases))
    for method, n in rows.items():
        cells = [f"{sums[method][p] / n:.1f}" if p in sums[method] else "" for p in phases]
        print(f"| {method} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
