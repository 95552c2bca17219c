"""Which tools TT-SI's kept examples called, and what training on them did to the answer.

    python bench/example_tools.py runs/q-seed24,runs/q-seed25:ttsi-all

Adapted rows are split by whether any kept example calls a tool the self-label does not call (an
example written for the runner-up tool) or only the self-label's tools; for each group the rows
whose adapted answer is right or wrong against its self-label's: fixed (label wrong, answer right),
broken, right both, wrong both. Also with the guard replayed (self_check.settled, label_guard.py),
for lines recorded before it. Rows of two seeds count twice.
"""

import sys
from collections import Counter

from mlx_ttsi.evaluation.grading import is_correct

from _common import method_records, rows_of
from label_guard import guarded

OUTCOMES = {(False, True): "fixed", (True, False): "broken", (True, True): "right both", (False, False): "wrong both"}


def group_of(record):
    """'runner-up' when a kept example calls a tool the self-label does not, else 'own tools'."""
    tools = {call["name"] for call in record["label"]}
    others = any(call["name"] not in tools for example in record.get("examples") or [] for call in example["calls"])
    return "runner-up" if others else "own tools"


def main(spec):
    counts = {way: Counter() for way in ("recorded", "guarded")}
    for (seed, benchmark, rid), record in method_records(spec).items():
        if not (record.get("adapted") and record.get("label")):
            continue
        row, group = rows_of(benchmark)[rid], group_of(record)
        answer = guarded(record, row)
        correct = record["correct"] if answer == record["prediction"] else is_correct(row, answer)
        counts["recorded"][group, OUTCOMES[record["label_correct"], record["correct"]]] += 1
        counts["guarded"][group, OUTCOMES[record["label_correct"], correct]] += 1
    print("| examples | answers | rows | fixed | broken | right both | wrong both |")
    print("|---|---|---|---|---|---|---|")
    for group in ("own tools", "runner-up"):
        for way, found in counts.items():
            cells = [found[group, outcome] for outcome in OUTCOMES.values()]
            print(f"| {group} | {way} | {sum(cells)} | " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
