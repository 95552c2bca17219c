"""Where the self-check's time goes, and what drafting the runner-up tool's call saves.

    OPENBLAS_NUM_THREADS=1 python bench/labelling_cost.py [--model qwen2.5-coder-0.5b] [--requests 30]

Each SealTool request is answered in mode check twice in one process (after a base answer has
cached its tools prefix): once as the agent does it, with the runner-up tool's call drafted from the
checked call's shared arguments (Turn.draft_rival), and once without that draft; the order alternates
from request to request. Prints the labelling phase's parts (the base call's check, the runner-up's
call and its check, the weighing of the changes) both ways, and whether every answer is the same.
"""

import argparse
import time
from collections import defaultdict

import mlx_ttsi.turn as turn
from mlx_ttsi.agent import Agent
from mlx_ttsi.decoding import CallDecoder

from _common import machine, sealtool_rows

DRAFT_RIVAL = turn.Turn.draft_rival


def timed(parts, name, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            parts[name] += time.perf_counter() - started

    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    parts = {True: defaultdict(float), False: defaultdict(float)}
    differ = 0
    label_calls, weigh, decode = turn.label_calls, turn.weigh_changes, CallDecoder.decode
    for i, row in enumerate(sealtool_rows()[: args.requests]):
        agent.ask(row["query"], tools=row["tools"], mode="base")  # the tools prefix, cached for both
        calls = {}
        for drafted in (True, False) if i % 2 == 0 else (False, True):
            now = parts[drafted]
            turn.label_calls = timed(now, "checking calls", label_calls)
            turn.weigh_changes = timed(now, "weighing changes", weigh)
            CallDecoder.decode = timed(now, "runner-up's call", decode)  # in self_label: only the runner-up's
            turn.Turn.draft_rival = DRAFT_RIVAL if drafted else lambda *a: None
            answer = agent.ask(row["query"], tools=row["tools"], mode="check")
            now["labelling"] += answer.timings.get("labelling", 0.0)
            now["base decoding"] += answer.timings.get("decoding", 0.0)
            calls[drafted] = answer.tool_calls
            turn.label_calls, turn.weigh_changes, CallDecoder.decode = label_calls, weigh, decode
        differ += calls[True] != calls[False]
    turn.Turn.draft_rival = DRAFT_RIVAL
    for drafted in (True, False):  # the base answer's own decoding was timed by the wrapper too
        parts[drafted]["runner-up's call"] -= parts[drafted]["base decoding"]
    print(f"machine: {machine()}")
    print(f"{args.requests} SealTool requests, {args.model}, mode check (seconds, summed over requests)")
    print("| part | runner-up drafted | not drafted |")
    print("|---|---|---|")
    for name in ("base decoding", "labelling", "checking calls", "runner-up's call", "weighing changes"):
        print(f"| {name} | {parts[True][name]:.1f} | {parts[False][name]:.1f} |")
    ratio = parts[False]["runner-up's call"] / max(parts[True]["runner-up's call"], 1e-9)
    print(f"runner-up's call, not drafted / drafted: {ratio:.2f}x")
    print(f"answers that differ: {differ} of {args.requests}")


if __name__ == "__main__":
    main()
