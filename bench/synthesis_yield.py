"""TT-SI's calls-first examples: how many survive verification, why the others do not, and what
writing them costs, with the example calls held to their schemas (grammar.py) and as before.

    python bench/synthesis_yield.py [--model qwen2.5-coder-0.5b] [--files nexusraven,sealtool] [--rows 4]

The first N rows of each benchmark file are asked in mode ttsi with the gate forced open, so every
row writes examples, once each way (which goes first alternates by row). "Before" writes the calls
as commit 47545e4 did, put back here: without the grammar, 96 tokens each, with a random half of
the optional arguments (no cap); verification is today's either way. Prints per way the candidates,
the kept examples, the rejections by reason, and the synthesis seconds summed.
"""

import argparse
import collections
import time
from unittest import mock

from mlx_ttsi.agent import Agent
from mlx_ttsi.evaluation.rows import load_rows, max_calls_for, row_input
from mlx_ttsi.grammar import ArgumentsProcessor
from mlx_ttsi.sources import calls

from _common import SEALTOOL, machine


def before():
    """The rule before the grammar: unguided calls of 96 tokens, no cap on optional arguments."""
    return [
        mock.patch.object(ArgumentsProcessor, "__call__", lambda self, tokens, logits: logits),
        mock.patch.object(calls, "CALL_TOKENS", 96),
        mock.patch.object(calls, "TOKENS_PER_KEY", 0),
        mock.patch.object(calls, "MAX_OPTIONAL", 10**6),
    ]


def ask(agent, row, old):
    """The answer of one row in mode ttsi, the gate forced open, each way."""
    patches = before() if old else []
    for patch in patches:
        patch.start()
    try:
        request, messages = row_input(row)
        return agent.ask(
            request, tools=row["tools"], messages=messages, mode="ttsi", force=True, max_calls=max_calls_for(row)
        )
    finally:
        for patch in patches:
            patch.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--files", default="nexusraven,sealtool")
    parser.add_argument("--rows", type=int, default=4)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    paths = [SEALTOOL.parent / f"{name}.jsonl" for name in args.files.split(",")]
    rows = [row for rows in load_rows(paths) for row in rows[: args.rows]]
    print(machine())
    print(f"{args.model}, mode ttsi (gate forced open), the first {args.rows} rows of {args.files}")
    totals = {way: collections.Counter() for way in ("before", "grammar")}
    print("| row | way | candidates | kept | synthesis s | rejections |\n|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        agent.warm(row["tools"])
        ways = [("before", True), ("grammar", False)]
        for way, old in ways if index % 2 == 0 else ways[::-1]:
            started = time.perf_counter()
            answer = ask(agent, row, old)
            seconds = answer.timings.get("synthesis", 0.0)
            total = totals[way]
            total.update(answer.rejected)
            total["(candidates)"] += answer.asked
            total["(kept)"] += len(answer.synthetic)
            total["(synthesis s)"] += seconds
            total["(ask s)"] += time.perf_counter() - started
            reasons = ", ".join(f"{n} {r}" for r, n in answer.rejected.items())
            print(f"| {row['id']} | {way} | {answer.asked} | {len(answer.synthetic)} | {seconds:.1f} | {reasons} |")
    print("\n| total | before | grammar |\n|---|---|---|")
    for key in sorted(set(totals["before"]) | set(totals["grammar"])):
        a, b = totals["before"][key], totals["grammar"][key]
        print(f"| {key} | {a:.1f} | {b:.1f} |" if isinstance(a + b, float) else f"| {key} | {a} | {b} |")


if __name__ == "__main__":
    main()
