"""What the self-label guard (self_check.settled) changes on recorded TT-SI lines: an adapted answer
that uses less of the request than the self-label (self_check.coverage), or calls another tool
without using more of it, gives way to the self-label.

    python bench/label_guard.py runs/q-seed20,runs/q-seed21:ttsi-all

The guard is a function of two recorded fields, the final answer (`prediction`) and the self-label
(`label`), so replaying it on lines recorded before it existed gives what it would have answered;
each changed row is printed with both answers and whether each is right. Rows of two seeds count twice.
"""

import json
import sys

from mlx_ttsi.evaluation.grading import is_correct
from mlx_ttsi.self_check import context_text, settled
from mlx_ttsi.tools import parse_tools

from _common import method_records, rows_of


def guarded(record, row):
    """The answer with the guard (self_check.settled)."""
    answer, label = record["prediction"], record.get("label")
    if not (record.get("adapted") and answer and label):
        return answer
    return settled(answer, label, parse_tools(row["tools"]), context_text(row["messages"]))


def main(spec):
    records = method_records(spec)
    right = right_guarded = 0
    for (seed, benchmark, rid), record in sorted(records.items(), key=lambda item: str(item[0])):
        row = rows_of(benchmark)[rid]
        answer = guarded(record, row)
        correct = record["correct"] if answer == record["prediction"] else is_correct(row, answer)
        right, right_guarded = right + record["correct"], right_guarded + correct
        if answer != record["prediction"]:
            print(f"seed {seed} {benchmark} {rid}: {record['correct']} -> {correct}")
            print(f"  adapted {json.dumps(record['prediction'])}\n  label   {json.dumps(answer)}")
    n = len(records)
    print(f"{n} rows: as recorded {100 * right / n:.1f}, with the guard {100 * right_guarded / n:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
