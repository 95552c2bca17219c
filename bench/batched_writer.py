"""The batched writer (writer.BatchWriter): tokens/s for 1, 2, 4 and 8 sequences written side by side.

    python bench/batched_writer.py [--model smollm2-135m] [--sizes 1,2,4,8] [--tokens 32] [--rounds 2]

Each size writes that many continuations (greedy, no early stop) of SealTool prompts that share
their tools prefix, from the prefix's cached KV, as TT-SI's example writing does. Prints seconds,
tokens/s and the ratio to one sequence, measured in one run; the goal is 8 sequences at least 4x
the tokens/s of one.
"""

import argparse
import time

from mlx_ttsi import models
from mlx_ttsi.context import ContextState
from mlx_ttsi.prompts import call_format, render_prompt
from mlx_ttsi.tools import parse_tools
from mlx_ttsi.writer import BatchWriter

from _common import machine, sealtool_rows


def prompts_for(loaded, count):
    """`count` prompts with one row's tools and different requests, and their shared prefix (ids, KV)."""
    rows = sealtool_rows()
    row = max(rows[:50], key=lambda r: len(r["tools"]))
    tools, fmt = parse_tools(row["tools"]), call_format(loaded.tokenizer)
    asks = [r["query"] for r in rows[:count]]
    prompts = [render_prompt(loaded.tokenizer, [{"role": "user", "content": a}], tools, fmt) for a in asks]
    state = ContextState(loaded.model, loaded.tokenizer)
    ids = [
        state.encode(p)
        for p in prompts + [render_prompt(loaded.tokenizer, [{"role": "user", "content": "A"}], tools, fmt)]
    ]
    n = min(next((i for i, (a, b) in enumerate(zip(ids[0], other)) if a != b), len(other)) for other in ids[1:])
    state.sync(ids[0][:n])
    return prompts, ids[0][:n], state.prefix_arrays(n, copy=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    loaded = models.load(args.model)
    prompts, prefix_ids, arrays = prompts_for(loaded, max(sizes))
    print(machine())
    print(f"{loaded.name}: {len(prefix_ids)} prefix tokens, {args.tokens} tokens per sequence, best of {args.rounds}")
    print("| sequences | seconds | tokens/s | x one sequence |\n|---|---|---|---|")
    BatchWriter(loaded.model, loaded.tokenizer, prefix_ids, arrays).write(prompts[:1], 4)  # warm-up
    rates = {}
    for size in sizes:
        best = None
        for _ in range(args.rounds):
            writer = BatchWriter(loaded.model, loaded.tokenizer, prefix_ids, arrays)
            started = time.perf_counter()
            writer.write(prompts[:size], args.tokens)
            seconds = time.perf_counter() - started
            best = seconds if best is None else min(best, seconds)
            tokens = writer.decoded_tokens
        rates[size] = tokens / best
        print(f"| {size} | {best:.2f} | {rates[size]:.1f} | {rates[size] / rates[sizes[0]]:.2f} |")


if __name__ == "__main__":
    main()
