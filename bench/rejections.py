"""What TT-SI's synthesis wrote and kept in eval runs, on the rows every run shares: per run, the rows
that wrote examples, candidates, kept examples, adapted rows, synthesis seconds, the gold gain of the
adapted rows, and the rejections by reason.

    python bench/rejections.py runs/q-tp-a-seed16,runs/q-tp-b-seed16:ttsi runs/q-gr-a-seed16,runs/q-gr-b-seed16:ttsi

A column is DIRS:METHOD, DIRS one run folder or several joined by commas (as in compare_runs.py).
"""

import sys
from collections import Counter

from _common import method_records


def tally(rows):
    """The counts and sums of one column over its rows."""
    total, reasons, gains = Counter(), Counter(), []
    for record in rows:
        total["rows"] += 1
        if not record.get("asked"):
            continue
        total["wrote examples"] += 1
        total["candidates"] += record["asked"]
        total["kept"] += record.get("synthetic") or 0
        total["adapted"] += bool(record.get("adapted"))
        total["synthesis s"] += (record.get("timings") or {}).get("synthesis", 0.0)
        reasons.update(record.get("rejections") or {})
        likelihood = record.get("gold_likelihood") or {}
        if record.get("adapted") and likelihood.get("adapted") is not None:
            gains.append(likelihood["adapted"] - likelihood["base"])
    total["gold gain, mean nats"] = sum(gains) / len(gains) if gains else float("nan")
    return total, reasons


def main(specs):
    columns = [method_records(spec) for spec in specs]
    shared = sorted(set.intersection(*(set(column) for column in columns)))
    tallies = [tally([column[key] for key in shared]) for column in columns]
    print(f"{len(shared)} rows in every column\n")
    print("| | " + " | ".join(specs) + " |\n|---|" + "---|" * len(specs))
    for key in ("rows", "wrote examples", "candidates", "kept", "adapted", "synthesis s", "gold gain, mean nats"):
        print(f"| {key} | " + " | ".join(_shown(total[key]) for total, _ in tallies) + " |")
    for reason in sorted(set().union(*(reasons for _, reasons in tallies))):
        print(f"| rejected: {reason} | " + " | ".join(str(reasons[reason]) for _, reasons in tallies) + " |")


def _shown(value):
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
