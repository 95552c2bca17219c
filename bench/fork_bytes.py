"""Option scoring on copies of the KV cache, in groups that fit a byte budget (context.FORK_BYTES),
against the rule before it: all options side by side only when options x context tokens <= 8192,
else each option alone through the shared cache.

    python bench/fork_bytes.py [--model qwen2.5-coder-0.5b] [--file nexusraven] [--rows 3] [--mode check]

The first N rows of a benchmark file (each with its own tools, prefixes warmed first), asked each way
in turn (which goes first alternates by round). Prints the seconds per way, the model passes that
scored options, and whether every answer is the same. Copies of the cache are what options are
scored on where no tree pass runs (context.TREE_TOKENS), so tree passes are switched off here.
"""

import argparse
import statistics
import time

from mlx_ttsi import context
from mlx_ttsi.agent import Agent
from mlx_ttsi.evaluation.rows import load_rows, max_calls_for, row_input

from _common import SEALTOOL, machine

BEFORE_TOKENS = 8192  # the rule before: options x context tokens at most this, else one by one


def run(agent, rows, mode, before):
    """(seconds, option-scoring passes, answers) of the rows asked one after another."""
    size, passes = context.ContextState._fork_size, []

    def counted(state, n):
        chosen = (n if n * len(state.tokens) <= BEFORE_TOKENS else 1) if before else size(state, n)
        passes.append(-(-n // chosen))
        return chosen

    context.ContextState._fork_size, trees = counted, context.TREE_TOKENS
    context.TREE_TOKENS = 0
    try:
        started, answers = time.perf_counter(), []
        for row in rows:
            request, messages = row_input(row)
            ask = agent.ask(request, tools=row["tools"], messages=messages, mode=mode, max_calls=max_calls_for(row))
            answers.append(ask.tool_calls)
        return time.perf_counter() - started, sum(passes), answers
    finally:
        context.ContextState._fork_size, context.TREE_TOKENS = size, trees


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--file", default="nexusraven")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--mode", default="check", choices=["base", "check", "plan"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    rows = load_rows([SEALTOOL.parent / f"{args.file}.jsonl"])[0][: args.rows]
    for row in rows:
        agent.warm(row["tools"])
    print(machine())
    print(f"{args.model}, mode {args.mode}, the first {len(rows)} rows of {args.file}, FORK_BYTES {context.FORK_BYTES}")
    print("| round | way | seconds | option-scoring passes |\n|---|---|---|---|")
    ratios, same = [], True
    for index in range(args.rounds):
        ways = [("before (8192 tokens, all or one by one)", True), ("byte budget", False)]
        runs = {}
        for name, before in ways if index % 2 == 0 else ways[::-1]:
            seconds, passes, answers = runs[before] = run(agent, rows, args.mode, before)
            print(f"| {index + 1} | {name} | {seconds:.1f} | {passes} |")
        ratios.append(runs[True][0] / runs[False][0])
        same = same and runs[True][2] == runs[False][2]
    print(
        f"\nbefore / byte budget, seconds, median of {len(ratios)}: {statistics.median(ratios):.2f}; "
        f"same answers: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
