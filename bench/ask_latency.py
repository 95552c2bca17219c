"""Benchmark 1 and 5: TT-SI `ask` latency by phase (model already loaded) and peak RSS.

    python bench/ask_latency.py [--requests 20] [--model smollm2-135m]

Takes the first N SealTool requests the model is uncertain about and answers each with TT-SI
(mode ttsi); prints p50/p90 per phase and end to end, and the process's peak resident memory.
"""

import argparse
import resource
import sys
import time

from _common import machine, percentile, uncertain_rows

from mlx_ttsi.agent import Agent

PHASES = ("scoring", "synthesis", "training", "answering", "total")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    started = time.perf_counter()
    agent = Agent.load(args.model)
    load_seconds = time.perf_counter() - started
    rows = uncertain_rows(agent, args.requests)
    timings = {phase: [] for phase in PHASES}
    for row, _ in rows:
        answer = agent.ask(row["query"], tools=row["tools"], mode="ttsi")
        for phase in PHASES:
            timings[phase].append(answer.timings.get(phase, 0.0))
        print(f"  {row['id']:<32} {answer.timings['total']:6.2f}s adapted={answer.adapted}", file=sys.stderr)

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {machine()}")
    print(f"model: {args.model}, loaded in {load_seconds:.2f}s; {len(rows)} uncertain SealTool requests, mode ttsi")
    print(f"{'phase':<10} {'p50 s':>7} {'p90 s':>7} {'mean s':>7}")
    for phase in PHASES:
        values = timings[phase]
        print(f"{phase:<10} {percentile(values, 50):7.2f} {percentile(values, 90):7.2f} {sum(values) / len(values):7.2f}")
    print(f"peak RSS of the whole process (load, selection, {len(rows)} asks): {peak_mib:.0f} MiB")
    target = 5.0
    print(f"p50 end to end / target {target:.0f}s: {percentile(timings['total'], 50) / target:.2f}")


if __name__ == "__main__":
    main()
