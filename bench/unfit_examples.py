"""How many of the examples TT-SI trained on hold a date or time in another form than its parameter
documents, the rule verify.unfit_key adds, on eval runs made before it.

    python bench/unfit_examples.py runs/q-seed18b,runs/q-seed19b:ttsi-all

Each record of the method keeps the examples it trained on (`examples`); each example's calls are
checked against its row's tools. Prints the count and each example the rule refuses.
"""

import sys

from mlx_ttsi.tools import parse_tools
from mlx_ttsi.verify import unfit_key

from _common import method_records, rows_of


def main(spec):
    counts = {"adapted rows": 0, "examples": 0, "unfit": 0, "rows with an unfit example": 0}
    for record in method_records(spec).values():
        if record.get("adapted"):
            tools = {tool.name: tool for tool in parse_tools(rows_of(record["benchmark"])[record["id"]]["tools"])}
            unfit = [
                (example, call, key)
                for example in record.get("examples") or []
                for call in example["calls"]
                if (key := unfit_key(call["arguments"], tools[call["name"]])) is not None
            ]
            counts["adapted rows"] += 1
            counts["examples"] += len(record.get("examples") or [])
            counts["unfit"] += len(unfit)
            counts["rows with an unfit example"] += bool(unfit)
            for example, call, key in unfit:
                print(f"{record['id']}: {key}={call['arguments'][key]!r} in {example['request']!r}")
    print(", ".join(f"{key} {value}" for key, value in counts.items()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
