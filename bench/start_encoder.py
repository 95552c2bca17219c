"""Requests with long tool lists, their prompt's start encoded once (context.StartEncoder) against
re-encoded for every text (the tokenizer alone, as before).

    python bench/start_encoder.py [--model qwen2.5-coder-0.5b] [--file nexusraven] [--rows 4] [--mode check]

The first N rows of a benchmark file, each with its own tools (prefixes warmed first), asked in
each way in turn (which goes first alternates by round). Prints the seconds per way, the characters
the tokenizer was given, and whether every answer is the same.
"""

import argparse
import statistics
import time

from mlx_ttsi import context
from mlx_ttsi.agent import Agent

from _common import benchmark_rows, machine


class Counted:
    """Encodes as `encode` does, counting the characters the tokenizer is given."""

    chars = 0

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text, add_special_tokens=False):
        Counted.chars += len(text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def run(agent, rows, mode, whole):
    """(seconds, characters encoded, answers) of the rows asked one after another."""
    encoder = context.StartEncoder

    def counted(tokenizer, *args):
        return (lambda text: Counted(tokenizer).encode(text)) if whole else encoder(Counted(tokenizer), *args)

    context.StartEncoder, Counted.chars = counted, 0
    try:
        started = time.perf_counter()
        answers = [agent.ask(r["query"], tools=r["tools"], mode=mode).tool_calls for r in rows]
        return time.perf_counter() - started, Counted.chars, answers
    finally:
        context.StartEncoder = encoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--file", default="nexusraven")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--mode", default="check", choices=["base", "check", "plan"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    rows = benchmark_rows(args.file)[: args.rows]
    for row in rows:
        agent.warm(row["tools"])
    print(machine())
    print(f"{args.model}, mode {args.mode}, the first {len(rows)} rows of {args.file}")
    print("| round | way | seconds | characters encoded |\n|---|---|---|---|")
    ratios, same = [], True
    for index in range(args.rounds):
        ways = [("re-encoded", True), ("start once", False)]
        runs = {}
        for name, whole in ways if index % 2 == 0 else ways[::-1]:
            seconds, chars, answers = runs[name] = run(agent, rows, args.mode, whole)
            print(f"| {index + 1} | {name} | {seconds:.1f} | {chars} |")
        ratios.append(runs["start once"][0] / runs["re-encoded"][0])
        same = same and runs["start once"][2] == runs["re-encoded"][2]
    print(
        f"\nstart once / re-encoded, seconds, median of {len(ratios)}: {statistics.median(ratios):.2f}; "
        f"same answers: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
