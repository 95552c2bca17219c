"""Benchmark 3: uncertainty scoring time / the time of one greedy answer on the same request.

    python bench/scoring_cost.py [--requests 10]

Both start from an empty KV cache: scoring = the prompt pass plus one batched pass over every
offered tool name; the greedy answer = mlx-lm's `generate` on the same prompt (free text, greedy,
up to the end of turn or 64 tokens).
"""

import argparse
import time

from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import CallDecoder
from mlx_ttsi.prompts import render_prompt
from mlx_ttsi.tools import parse_tools

import mlx.core as mx
from _common import machine, percentile, sealtool_rows
from mlx_lm import generate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    lm = agent.loaded
    ratios, scoring_times, answer_times = [], [], []
    for row in sealtool_rows()[: args.requests]:
        tools = parse_tools(row["tools"])
        prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": row["query"]}], tools, agent.fmt)
        started = time.perf_counter()
        decoder = CallDecoder(ContextState(lm.model, lm.tokenizer), agent.fmt)
        decoder.name_choice(prompt, tools)
        scoring = time.perf_counter() - started
        ids = lm.tokenizer.encode(prompt, add_special_tokens=False)
        started = time.perf_counter()
        generate(lm.model, lm.tokenizer, ids, max_tokens=64)
        mx.eval()
        answer = time.perf_counter() - started
        scoring_times.append(scoring)
        answer_times.append(answer)
        ratios.append(scoring / answer)
    print(f"machine: {machine()}")
    print(f"{len(ratios)} SealTool requests, {args.model}")
    print(f"scoring       p50 {percentile(scoring_times, 50):.3f}s")
    print(f"greedy answer p50 {percentile(answer_times, 50):.3f}s")
    print(f"ratio scoring / greedy answer: p50 {percentile(ratios, 50):.2f}, max {max(ratios):.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
