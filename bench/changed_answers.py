"""The rows whose answer differs between two eval runs of one method: each with both answers, then
how many the second run fixed, broke or changed while wrong either way, and the largest difference
of their uncertainty scores.

    python bench/changed_answers.py runs/q-old-seed10:self-label runs/q-time-seed10:self-label
"""

import json
import sys
from pathlib import Path


def lines(spec):
    folder, method = spec.rsplit(":", 1)
    records = (json.loads(line) for line in (Path(folder) / "results.jsonl").read_text().splitlines())
    return {(r["seed"], r["benchmark"], r["id"]): r for r in records if r["method"] == method}


def main(first, second):
    before, after = lines(first), lines(second)
    counts = {"fixed": 0, "broke": 0, "wrong either way": 0, "right either way": 0}
    spread = 0.0
    for key in before.keys() & after.keys():
        old, new = before[key], after[key]
        if old["uncertainty"] is not None and new["uncertainty"] is not None:
            spread = max(spread, abs(old["uncertainty"] - new["uncertainty"]))
        if old["prediction"] == new["prediction"]:
            continue
        kind = {(False, True): "fixed", (True, False): "broke", (False, False): "wrong either way"}
        counts[kind.get((old["correct"], new["correct"]), "right either way")] += 1
        print(f"{key[1]} {key[2]}: {old['correct']} -> {new['correct']}")
        print(f"  before {json.dumps(old['prediction'])}\n  after  {json.dumps(new['prediction'])}")
    shared = len(before.keys() & after.keys())
    print(f"{shared} rows, {sum(counts.values())} changed: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"largest uncertainty difference: {spread:.2g}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
