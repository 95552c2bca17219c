"""Where a base or self-checked answer's time goes, by kind of forward pass.

    OPENBLAS_NUM_THREADS=1 python bench/pass_kinds.py [--model qwen2.5-coder-0.5b] [--rows 1] [--seed 0]
        [--modes base,check] [--ways tree,copies]

`--rows` random rows of each of the five benchmark files are answered (each row's tools prefix cached
by an unmeasured answer first), once per way: `tree` (options scored as one tree of their tokens,
the default) and `copies` (context.TREE_TOKENS 0: on copies of the cache). Every forward pass is
evaluated as it runs and timed, by kind: prefill (one row of more than 32 tokens), copies (several
rows), tree (a tree pass), short (one row of 2-32 tokens: drafts, a riding rest) and step (one token).
Prints, per way and mode, each kind's passes, seconds and share of the answers' time.
"""

import argparse
import random
import time
from collections import defaultdict

from mlx_ttsi import context
from mlx_ttsi.agent import Agent
from mlx_ttsi.evaluation.rows import max_calls_for, row_input
from mlx_ttsi.token_tree import TreeCache

import mlx.core as mx
from _common import forwards_through, machine, rows_of

FILES = ("sealtool", "apibank_l1", "apibank_l2", "nexusraven", "toolalpaca_real")


def kind(inputs, cache):
    rows, length = inputs.shape
    if isinstance(cache[0], TreeCache):
        return "tree"
    if rows > 1:
        return "copies"
    return "step" if length == 1 else "short" if length <= 32 else "prefill"


def timing(spent):
    """A forward-pass wrapper (for forwards_through) that evaluates each pass as it runs and times it
    into spent[kind] = [passes, seconds]."""

    def around(forward):
        def timed(model, inputs, cache, start=0):
            started = time.perf_counter()
            logits = forward(model, inputs, cache, start)
            mx.eval(logits)
            entry = spent[kind(inputs, cache)]
            entry[0] += 1
            entry[1] += time.perf_counter() - started
            return logits

        return timed

    return around


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--rows", type=int, default=1, help="rows of each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="base,check")
    parser.add_argument("--ways", default="tree,copies")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    spent = defaultdict(lambda: [0, 0.0])
    forwards_through(timing(spent))
    rows = [row for name in FILES for row in random.Random(args.seed).sample(list(rows_of(name).values()), args.rows)]
    asks = []
    for row in rows:
        request, messages = row_input(row)
        asks.append({"request": request, "messages": messages, "tools": row["tools"], "max_calls": max_calls_for(row)})
        agent.ask(**asks[-1], mode="base")  # the tools prefix, cached
    trees = context.TREE_TOKENS
    print(f"{machine()}; {args.model}, {len(rows)} rows ({args.rows} of each file, seed {args.seed})\n")
    print("| way | mode | kind | passes | seconds | share |")
    print("|---|---|---|---|---|---|")
    for way in args.ways.split(","):
        context.TREE_TOKENS = trees if way == "tree" else 0
        for mode in args.modes.split(","):
            spent.clear()
            started = time.perf_counter()
            for ask in asks:
                agent.ask(**ask, mode=mode)
            total = time.perf_counter() - started
            for name, (passes, seconds) in sorted(spent.items(), key=lambda item: -item[1][1]):
                print(f"| {way} | {mode} | {name} | {passes} | {seconds:.1f} | {seconds / total:.0%} |")
            print(f"| {way} | {mode} | all (answers' total) | {sum(p for p, _ in spent.values())} | {total:.1f} | |")
    context.TREE_TOKENS = trees


if __name__ == "__main__":
    main()
