"""Where the self-check's time goes, per part, on the same requests.

    OPENBLAS_NUM_THREADS=1 python bench/labelling_cost.py [--model qwen2.5-coder-0.5b] [--requests 30]

Each SealTool request is answered in mode check after a base answer has cached its tools prefix.
Prints, summed over the requests, the base call's decoding and the labelling phase (the self-check),
split into the check of calls (label_calls: copies and probes), the runner-up tool's call (decoded
when the name is uncertain) and the weighing of the changes (weigh_changes).
"""

import argparse
import time
from collections import defaultdict

import mlx_ttsi.turn as turn
from mlx_ttsi.agent import Agent
from mlx_ttsi.decoding import CallDecoder

from _common import machine, sealtool_rows


def timed(seconds, function):
    """`function`, appending the seconds of each call to the list `seconds`."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    parts, rivals = defaultdict(float), 0
    label_calls, weigh, decode = turn.label_calls, turn.weigh_changes, CallDecoder.decode
    for row in sealtool_rows()[: args.requests]:
        agent.ask(row["query"], tools=row["tools"], mode="base")  # the tools prefix, cached
        checking, weighing, decoding = [], [], []
        turn.label_calls = timed(checking, label_calls)
        turn.weigh_changes = timed(weighing, weigh)
        CallDecoder.decode = timed(decoding, decode)  # the base call, then the runner-up's when there is one
        try:
            answer = agent.ask(row["query"], tools=row["tools"], mode="check")
        finally:
            turn.label_calls, turn.weigh_changes, CallDecoder.decode = label_calls, weigh, decode
        parts["base decoding"] += answer.timings.get("decoding", 0.0)
        parts["labelling"] += answer.timings.get("labelling", 0.0)
        parts["checking calls"] += sum(checking)
        parts["weighing changes"] += sum(weighing)
        parts["runner-up's call"] += sum(decoding[1:])
        rivals += len(decoding) > 1
    print(f"machine: {machine()}")
    print(f"{args.requests} SealTool requests, {args.model}, mode check; runner-up decoded on {rivals}")
    print("| part | seconds (sum) | share of labelling |")
    print("|---|---|---|")
    for name in ("base decoding", "labelling", "checking calls", "runner-up's call", "weighing changes"):
        share = parts[name] / max(parts["labelling"], 1e-9)
        print(f"| {name} | {parts[name]:.1f} | {'' if name in ('base decoding', 'labelling') else f'{share:.0%}'} |")


if __name__ == "__main__":
    main()
