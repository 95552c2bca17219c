"""Eval throughput with and without shared stages: base, self-label and TT-SI over the same rows.

    python bench/eval_sharing.py [--model qwen2.5-coder-0.5b] [--sample 2] [--method ttsi] [--rounds 1] [-d FILE ...]

"apart": each method in a run of its own, so each decodes (and self-label checks) the row itself, as
eval did before `Answer.stages`; "together": one run of the three, where base and self-label are the
answers met inside the TT-SI turn. One loaded agent, the same rows, the two alternated in rounds.
Prints wall seconds, answers (rows x methods) per hour and the ratio, and counts the rows where an
answer differs between the two (it should be none: the same greedy decoding).
"""

import argparse
import tempfile
import time
from pathlib import Path

from mlx_ttsi.agent import Agent
from mlx_ttsi.evaluation.results import read_all
from mlx_ttsi.evaluation.rows import load_rows, select
from mlx_ttsi.evaluation.runner import EvalPlan, evaluate
from mlx_ttsi.settings import Settings

from _common import SEALTOOL, machine

FILES = ("sealtool", "apibank_l1", "apibank_l2", "nexusraven", "toolalpaca")


def timed_runs(agent, rows, groups, out):
    """Seconds to run each group of methods in a run of its own (into out/<i>), and every answer."""
    started, answers = time.perf_counter(), {}
    for index, methods in enumerate(groups):
        folder = Path(out) / str(index)
        evaluate(EvalPlan(rows, list(methods)), folder, agent=agent, progress=False)
        answers.update({(r["id"], r["method"]): r["prediction"] for r in read_all(folder)})
    return time.perf_counter() - started, answers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--sample", type=int, default=2, help="rows drawn from each file (seed 0)")
    parser.add_argument("--method", default="ttsi", help="the adapting method beside base and self-label")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-d", "--data", action="append", help="a benchmark file (repeatable; default: the five)")
    args = parser.parse_args()
    benchmarks = SEALTOOL.parent  # ../shared/benchmarks or $MLX_TTSI_BENCHMARKS
    data = args.data or [str(benchmarks / f"{f}.jsonl") for f in FILES]
    rows = select(load_rows(data), sample=args.sample, seed=0)
    methods = ["base", "self-label", args.method]
    agent = Agent.load(args.model, settings=Settings())
    print(machine())
    print(f"{len(rows)} rows ({args.sample} of each of {len(data)} files), methods {', '.join(methods)}, {args.model}")
    seconds = {"apart": [], "together": []}
    answers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = ["apart", "together"] if round_ % 2 == 0 else ["together", "apart"]
            for way in order:
                groups = [[m] for m in methods] if way == "apart" else [methods]
                took, answers[way] = timed_runs(agent, rows, groups, Path(tmp) / f"{way}{round_}")
                seconds[way].append(took)
                print(f"round {round_ + 1} {way:8s} {took:7.1f} s")
    differ = sum(answers["apart"][k] != answers["together"].get(k) for k in answers["apart"])
    answered = len(rows) * len(methods)
    print("\n| way | seconds (mean) | answers per hour |")
    print("|---|---|---|")
    for way, values in seconds.items():
        mean = sum(values) / len(values)
        print(f"| {way} | {mean:.1f} | {answered * 3600 / mean:.0f} |")
    ratio = (sum(seconds["apart"]) / len(seconds["apart"])) / (sum(seconds["together"]) / len(seconds["together"]))
    print(f"\ntogether is {ratio:.2f}x faster; answers that differ between the two: {differ} of {answered}")


if __name__ == "__main__":
    main()
