"""Fewer forward passes per answer: the same answers, in less time?

    OPENBLAS_NUM_THREADS=1 python bench/fewer_passes.py [--model qwen2.5-coder-0.5b] [--rows 4] [--seed 0]
        [--features lookup,riding,tree] [--always FEATURES]

Ways of cutting passes or their tokens, each switched on by `--features`:
  lookup: prompt-lookup drafts while free values are written (decoding.LOOKAHEAD, ContextState.push);
  riding: the context's short rest runs in the scoring pass's copies of the cache (RIDING_REST);
  tree: options are scored as one tree of their tokens that reads the cache in place (TREE_TOKENS),
  instead of on copies of the cache.
`--always` names features on in both ways (e.g. `--features tree --always lookup,riding`).
`--rows` random rows of each of the five benchmark files are answered in `--modes` (base, check)
twice, with the features and without, alternating which goes first; each row's tools prefix is
cached by an unmeasured answer first. Prints, per mode, the seconds and forward passes of each way,
their ratio, and how many answers are the same.
"""

import argparse
import random
import time
from collections import defaultdict

import mlx_ttsi.context as context
from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.evaluation.rows import max_calls_for, row_input

from _common import forwards_through, machine, rows_of

FILES = ("sealtool", "apibank_l1", "apibank_l2", "nexusraven", "toolalpaca_real")


def switched(switch, push):
    """`ContextState.push` with its lookahead on while "lookup" is in switch["on"]."""

    def wrapper(self, token, lookahead=0):
        return push(self, token, lookahead if "lookup" in switch["on"] else 0)

    return wrapper


def counting(switch):
    """A forward-pass wrapper (for forwards_through) that counts the passes in switch["passes"]."""

    def around(forward):
        def counted(*inputs, **options):
            switch["passes"] += 1
            return forward(*inputs, **options)

        return counted

    return around


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=4, help="rows of each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="base,check")
    parser.add_argument("--features", default="lookup,riding,tree", help="what the faster way switches on")
    parser.add_argument("--always", default="", help="features on in both ways")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    features, riding, tree = set(args.features.split(",")), context.RIDING_REST, context.TREE_TOKENS
    always = set(filter(None, args.always.split(",")))
    switch = {"on": features, "passes": 0}
    ContextState.push = switched(switch, ContextState.push)
    forwards_through(counting(switch))
    seconds, passes, same = defaultdict(float), defaultdict(int), defaultdict(int)
    total = 0
    rows = [row for name in FILES for row in random.Random(args.seed).sample(list(rows_of(name).values()), args.rows)]
    for number, row in enumerate(rows):
        request, messages = row_input(row)
        ask = {"request": request, "messages": messages, "tools": row["tools"], "max_calls": max_calls_for(row)}
        agent.ask(**ask, mode="base")  # the tools prefix, cached
        for mode in args.modes.split(","):
            answers = {}
            for on in (True, False) if number % 2 else (False, True):
                switch["on"] = (features if on else set()) | always
                context.RIDING_REST = riding if "riding" in switch["on"] else 0
                context.TREE_TOKENS = tree if "tree" in switch["on"] else 0
                before = switch["passes"]
                started = time.perf_counter()
                answers[on] = agent.ask(**ask, mode=mode).tool_calls
                seconds[mode, on] += time.perf_counter() - started
                passes[mode, on] += switch["passes"] - before
            same[mode] += answers[True] == answers[False]
        total += 1
        print(f"{number + 1}/{len(rows)} {row['benchmark']} {row['id']}", flush=True)
    print(
        f"\n{machine()}; {args.model}, {total} rows ({args.rows} of each file, seed {args.seed}), with: {args.features}, both: {args.always or 'none'}\n"
    )
    print("| mode | s without | s with | with / without | passes without | passes with | same answers |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        off, on = seconds[mode, False], seconds[mode, True]
        print(
            f"| {mode} | {off:.1f} | {on:.1f} | {on / off:.2f} | {passes[mode, False]} | {passes[mode, True]} "
            f"| {same[mode]} of {total} |"
        )


if __name__ == "__main__":
    main()
