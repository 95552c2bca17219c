"""Recorded self-label lines whose first call passes a value another tool returns (the dependency
rule's case) that only the assistant's own words state ("I need your token" for "your_token"): the
rows `dependencies.supplies` now reads as given by no one (given_text).

    python bench/given_values.py runs/q-seed26 runs/q-seed27 ...

Each API-Bank row counts once (a row drawn by two seeds, by one of them); nothing is rerun.
"""

import sys

from mlx_ttsi.dependencies import needed_provider
from mlx_ttsi.evaluation.grading import gold_calls
from mlx_ttsi.self_check import calls_made, context_text, given_text, stated_in
from mlx_ttsi.tools import parse_tools

from _common import method_records, rows_of


def assistant_only(record, row):
    """The first call's value for the provided key, when only the assistant's words state it; else None."""
    calls = record["prediction"]
    needed = calls and needed_provider(calls, parse_tools(row["tools"]), calls_made(row["messages"]))
    if not needed:
        return None
    value = calls[0]["arguments"].get(needed[0])
    said = value is not None and stated_in(value, context_text(row["messages"]))
    return value if said and not stated_in(value, given_text(row["messages"])) else None


def main(folders):
    found, seen = [], {}
    for (_, benchmark, rid), record in method_records(",".join(folders) + ":self-label").items():
        if benchmark.startswith("apibank"):
            seen.setdefault((benchmark, rid), record)  # a row drawn by two seeds counts once
    for (benchmark, rid), record in seen.items():
        row = rows_of(benchmark)[rid]
        value = assistant_only(record, row)
        if value is not None:
            found.append(rid)
            print(
                f"seed {record['seed']} {rid}: {value!r}, right {record['correct']}, gold {gold_calls(row)[0]['name']}"
            )
    print(f"{len(found)} of {len(seen)} API-Bank rows")


if __name__ == "__main__":
    main(sys.argv[1:])
