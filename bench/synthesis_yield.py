"""TT-SI's calls-first examples: how many survive verification, why the others do not, and what
writing them costs, written in several ways side by side.

    python bench/synthesis_yield.py [--model qwen2.5-coder-0.5b] [--files nexusraven,sealtool] [--rows 4]
        [--ways styled-1,styled-3,mixed-2]

The first N rows of each benchmark file are asked in mode ttsi with the gate forced open, so every
row writes examples, once each way (the order of the ways turns by row). The ways:
- `styled-R`: R requests written for each call, each from the ask that shows the user's request as a
  style example (calls.STYLED_ASK); `mixed-R`: R requests from it and the ask without it (calls.PLAIN_ASK)
  in turn (today's default is mixed-2, calls.REQUEST_ASKS);
- `before-grammar`: the calls as commit 47545e4 wrote them, put back here: without the grammar, 96
  tokens each, with a random half of the optional arguments (no cap), one request each.
Verification is today's in every way. Prints per way the candidates, the verified examples, those
kept for training, the rejections by reason, and the synthesis seconds summed.
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


def patches_of(way):
    """The patches that make today's source write examples `way`."""
    if way == "before-grammar":  # unguided calls of 96 tokens, no cap on optional arguments
        return [
            mock.patch.object(ArgumentsProcessor, "__call__", lambda self, tokens, logits: logits),
            mock.patch.object(calls, "CALL_TOKENS", 96),
            mock.patch.object(calls, "TOKENS_PER_KEY", 0),
            mock.patch.object(calls, "MAX_OPTIONAL", 10**6),
            mock.patch.object(calls, "REQUEST_ASKS", (calls.STYLED_ASK,)),
        ]
    if way.startswith(("styled-", "mixed-")):  # R requests per call from the styled ask, or from both in turn
        kind, n = way.split("-")
        asks = (calls.STYLED_ASK,) if kind == "styled" else (calls.STYLED_ASK, calls.PLAIN_ASK)
        return [mock.patch.object(calls, "REQUEST_ASKS", tuple(asks[i % len(asks)] for i in range(int(n))))]
    raise SystemExit(f"unknown way {way!r}: before-grammar, styled-R or mixed-R")


def ask(agent, row, way):
    """The answer of one row in mode ttsi, the gate forced open, written `way`."""
    patches = patches_of(way)
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
    parser.add_argument("--ways", default="styled-1,styled-3,mixed-2")
    args = parser.parse_args()
    ways = args.ways.split(",")
    agent = Agent.load(args.model)
    paths = [SEALTOOL.parent / f"{name}.jsonl" for name in args.files.split(",")]
    rows = [row for rows in load_rows(paths) for row in rows[: args.rows]]
    print(machine())
    print(f"{args.model}, mode ttsi (gate forced open), the first {args.rows} rows of {args.files}")
    totals = {way: collections.Counter() for way in ways}
    print("| row | way | candidates | verified | kept | synthesis s | rejections |\n|---|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        agent.warm(row["tools"])
        for way in ways[index % len(ways) :] + ways[: index % len(ways)]:
            started = time.perf_counter()
            answer = ask(agent, row, way)
            seconds = answer.timings.get("synthesis", 0.0)
            known = answer.rejected.get("the base model already says it", 0)
            verified = answer.asked - sum(answer.rejected.values()) + known  # before --keep chose
            total = totals[way]
            total.update(answer.rejected)
            total["(candidates)"] += answer.asked
            total["(verified)"] += verified
            total["(kept)"] += len(answer.synthetic)
            total["(synthesis s)"] += seconds
            total["(ask s)"] += time.perf_counter() - started
            reasons = ", ".join(f"{n} {r}" for r, n in answer.rejected.items())
            print(
                f"| {row['id']} | {way} | {answer.asked} | {verified} | {len(answer.synthetic)} | {seconds:.1f} | {reasons} |"
            )
    print("\n| total | " + " | ".join(ways) + " |\n" + "|---" * (len(ways) + 1) + "|")
    for key in sorted(set().union(*totals.values())):
        cells = [totals[way][key] for way in ways]
        print(f"| {key} | " + " | ".join(f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
