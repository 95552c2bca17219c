"""TT-SI's example writing with and without running the prompts' common start once (writer.MIN_COMMON).

    python bench/common_start.py [--model qwen2.5-coder-0.5b] [--rows 4] [--start 0]

The calls-first prompts share an instruction after the tools prefix (the same ask before different
keys or values); BatchWriter runs that part once instead of once per prompt. For each SealTool row,
`ask --mode ttsi` runs with the sharing on and off, in turn (which goes first alternates), and the
synthesis phase's seconds and the prompt tokens run are printed side by side, with whether the
examples written are the same.
"""

import argparse
import statistics
import time

from mlx_ttsi import writer
from mlx_ttsi.agent import Agent

from _common import machine, sealtool_rows

ON = writer.MIN_COMMON
OFF = 10**9  # a MIN_COMMON no prompts reach: every prompt is run from the prefix on


def synthesis(agent, row, min_common):
    """(synthesis seconds, prompt tokens the writers ran, the examples) of one forced TT-SI answer."""
    writer.MIN_COMMON = min_common
    counted = []
    original = writer.BatchWriter._inputs

    def counting(self, prompts, max_tokens):
        before = self.prompt_tokens
        inputs = original(self, prompts, max_tokens)
        counted.append(self.prompt_tokens - before)
        return inputs

    writer.BatchWriter._inputs = counting
    try:
        answer = agent.ask(row["query"], tools=row["tools"], mode="ttsi", force=True)
    finally:
        writer.BatchWriter._inputs, writer.MIN_COMMON = original, ON
    return answer.timings["synthesis"], sum(counted), answer.synthetic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    rows = sealtool_rows()[args.start : args.start + args.rows]
    print(machine())
    print(f"{args.model}, {len(rows)} SealTool rows from {args.start}, started {time.strftime('%H:%M:%S')}")
    print(
        "| row | tokens on | tokens off | seconds on | seconds off | on / off | same examples |\n|---|---|---|---|---|---|---|"
    )
    ratios = []
    for index, row in enumerate(rows):
        order = [ON, OFF] if index % 2 == 0 else [OFF, ON]
        runs = {setting: synthesis(agent, row, setting) for setting in order}
        (s_on, t_on, ex_on), (s_off, t_off, ex_off) = runs[ON], runs[OFF]
        ratios.append(s_on / s_off)
        print(f"| {row['id']} | {t_on} | {t_off} | {s_on:.1f} | {s_off:.1f} | {s_on / s_off:.2f} | {ex_on == ex_off} |")
    print(f"median on / off: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
