"""Options scored as one tree of their tokens against options scored on copies of the KV cache.

    OPENBLAS_NUM_THREADS=1 python bench/option_tree.py [--model qwen2.5-coder-0.5b] [--contexts 1000,4000]
        [--options 10] [--rounds 3]

After a context of random tokens, `--options` random options of 3-8 tokens that share their first
two (as tool names after `{"name": "` do) are scored by `ContextState.score_continuations` both ways
(context.TREE_TOKENS switched off for the copies), the best of `--rounds` each, alternating which
goes first. Prints the seconds of each way, their ratio and the largest difference of the scores.
"""

import argparse
import random
import time

from mlx_ttsi import context, models
from mlx_ttsi.context import ContextState

from _common import machine


def timed(state, options, tree):
    """(seconds, scores) of one scoring of `options` after the state's context."""
    trees = context.TREE_TOKENS
    context.TREE_TOKENS = trees if tree else 0
    try:
        started = time.perf_counter()
        scores, _ = state.score_continuations(options)
        return time.perf_counter() - started, scores
    finally:
        context.TREE_TOKENS = trees


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--contexts", default="1000,4000", help="context lengths, in tokens")
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loaded = models.load(args.model)
    vocab = loaded.model.args.vocab_size
    draw = random.Random(0)
    print(f"{machine()}; {args.model}, {args.options} options of 3-8 tokens sharing their first 2\n")
    print(
        "| context tokens | tree tokens | copies: padded tokens | s on copies | s as a tree | tree / copies | largest difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for length in map(int, args.contexts.split(",")):
        state = ContextState(loaded.model, loaded.tokenizer)
        state.sync([draw.randrange(100, vocab) for _ in range(length)])
        shared = [draw.randrange(100, vocab) for _ in range(2)]
        options = [
            shared + [draw.randrange(100, vocab) for _ in range(draw.randint(1, 6))] for _ in range(args.options)
        ]
        best, scores = {True: float("inf"), False: float("inf")}, {}
        for round_ in range(args.rounds):
            for tree in (True, False) if round_ % 2 else (False, True):
                seconds, scores[tree] = timed(state, options, tree)
                best[tree] = min(best[tree], seconds)
        nodes = len({tuple(o[: i + 1]) for o in options for i in range(len(o) - 1)})
        padded = len(options) * (max(map(len, options)) - 1)
        difference = max(abs(a - b) for a, b in zip(scores[True], scores[False]))
        print(
            f"| {length} | {nodes} | {padded} | {best[False]:.2f} | {best[True]:.2f} | {best[True] / best[False]:.2f} "
            f"| {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
