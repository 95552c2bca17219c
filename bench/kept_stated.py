"""The check after adaptation with and without `self_check.kept_stated`, on eval runs made without it.

    python bench/kept_stated.py runs/q-gr-a-seed17,runs/q-gr-b-seed17:ttsi

kept_stated is the check's last step, a function of the adapted answer (after the rest of the
check), the self-label and the conversation, so a run recorded without it gives both: its answer
as recorded, and kept_stated applied to it, scored by eval's own grader. Prints accuracy both ways
over the rows of the method, and each answer it changes.
"""

import json
import sys

from mlx_ttsi.evaluation.grading import is_correct
from mlx_ttsi.evaluation.rows import row_input
from mlx_ttsi.prompts import normalize_messages
from mlx_ttsi.self_check import context_text, kept_stated

from _common import method_records, rows_of


def main(spec):
    counts = {"rows": 0, "right as recorded": 0, "right with kept_stated": 0, "changed": 0}
    for record in method_records(spec).values():
        if not record.get("error"):
            counts["rows"] += 1
            counts["right as recorded"] += bool(record["correct"])
            row, kept = rows_of(record["benchmark"])[record["id"]], record["prediction"]
            if record.get("adapted") and record.get("label"):
                request, messages = row_input(row)
                conversation = normalize_messages(messages if messages is not None else request)
                kept = kept_stated(record["prediction"], record["label"], context_text(conversation))
            right = is_correct(row, kept)
            counts["right with kept_stated"] += right
            if kept != record["prediction"]:
                counts["changed"] += 1
                print(f"{record['benchmark']} {record['id']}: {record['correct']} -> {right}")
                print(f"  recorded {json.dumps(record['prediction'])}\n  kept     {json.dumps(kept)}")
    print(", ".join(f"{key} {value}" for key, value in counts.items()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
