"""Requests answered one by one against the same requests answered side by side (Agent.ask_together).

    python bench/batch_rows.py [--model qwen2.5-coder-0.5b] [--rows 8] [--mode base] [--rounds 2]

The first N SealTool rows, each with its own tools, whose prefixes are computed (warmed) first, so
both ways start from cached prefixes. Each round asks them one by one and together (which goes
first alternates), and prints the seconds, rows per hour, the ratio and whether every answer is the
same.
"""

import argparse
import statistics
import time

from mlx_ttsi.agent import Agent

from _common import machine, sealtool_rows


def answers(results):
    return [(a.tool_calls, a.label) for a in results]


def one_by_one(agent, asks):
    started = time.perf_counter()
    results = [agent.ask(**ask) for ask in asks]
    return time.perf_counter() - started, answers(results)


def together(agent, asks):
    started = time.perf_counter()
    results = agent.ask_together(asks)
    errors = [e for _, e in results if e is not None]
    if errors:
        raise errors[0]
    return time.perf_counter() - started, answers([a for a, _ in results])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--mode", default="base", choices=["base", "check", "plan"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    rows = sealtool_rows()[args.start : args.start + args.rows]
    asks = [{"request": r["query"], "tools": r["tools"], "mode": args.mode} for r in rows]
    for row in rows:
        agent.warm(row["tools"])
    print(machine())
    print(
        f"{args.model}, mode {args.mode}, {len(rows)} SealTool rows from {args.start}, started {time.strftime('%H:%M:%S')}"
    )
    print("| round | one by one s | together s | together / one by one | same answers |\n|---|---|---|---|---|")
    ratios = []
    for index in range(args.rounds):
        ways = [("alone", one_by_one), ("together", together)]
        timed = dict((name, way(agent, asks)) for name, way in (ways if index % 2 == 0 else ways[::-1]))
        (alone, first), (joint, second) = timed["alone"], timed["together"]
        ratios.append(joint / alone)
        print(
            f"| {index + 1} | {alone:.1f} | {joint:.1f} | {joint / alone:.2f} | {'yes' if first == second else 'NO'} |"
        )
    median = statistics.median(ratios)
    print(f"\ntogether / one by one, median of {len(ratios)}: {median:.2f} ({1 / median:.2f}x the rows per hour)")


if __name__ == "__main__":
    main()
