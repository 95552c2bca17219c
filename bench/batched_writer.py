"""The batched writer (writer.BatchWriter): tokens/s for 1, 2, 4 and 8 sequences written side by side.

    python bench/batched_writer.py [--model smollm2-135m] [--sizes 1,2,4,8] [--tokens 32] [--rounds 2] [--grammar]

Each size writes that many continuations (greedy, no early stop) of SealTool prompts that share
their tools prefix, from the prefix's cached KV, as TT-SI's example writing does. Prints seconds,
tokens/s and the ratio to one sequence, measured in one run; the goal is 8 sequences at least 4x
the tokens/s of one. With --grammar each size is also written as a call of the row's first tool
(every argument), held to its schema by grammar.ArgumentsProcessor as the calls-first examples
are, and the last column gives its tokens/s over the plain writing's.
"""

import argparse
import time

from mlx_ttsi import models
from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import Vocabulary
from mlx_ttsi.grammar import ArgumentsProcessor, advance, arguments_start
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
    return prompts, ids[0][:n], state.prefix_arrays(n, copy=True), tools[0]


def write(loaded, prefix_ids, arrays, prompts, tokens, tool=None):
    """(seconds, tokens written) of one batch; with `tool`, each prompt opens a call of it and the
    arguments are held to its schema."""
    writer = BatchWriter(loaded.model, loaded.tokenizer, prefix_ids, arrays)
    processors = None
    if tool is not None:
        prompts = [p + '{"name": "' + tool.name + '", "arguments": {"' for p in prompts]
        start = advance(arguments_start(tool.properties, list(tool.properties)), '{"')
        vocabulary = Vocabulary.of(loaded.tokenizer)
        processors = [[ArgumentsProcessor(start, vocabulary, tokens)] for _ in prompts]
    started = time.perf_counter()
    writer.write(prompts, tokens, processors=processors)
    return time.perf_counter() - started, writer.decoded_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grammar", action="store_true", help="also write calls held to their schema")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    loaded = models.load(args.model)
    prompts, prefix_ids, arrays, tool = prompts_for(loaded, max(sizes))
    print(machine())
    print(f"{loaded.name}: {len(prefix_ids)} prefix tokens, {args.tokens} tokens per sequence, best of {args.rounds}")
    header = "| sequences | seconds | tokens/s | x one sequence |"
    if args.grammar:
        header += f" with the grammar ({tool.name}): seconds | tokens/s | x plain |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    BatchWriter(loaded.model, loaded.tokenizer, prefix_ids, arrays).write(prompts[:1], 4)  # warm-up
    rates = {}
    for size in sizes:
        ways = {"plain": None, "grammar": tool} if args.grammar else {"plain": None}
        best = {}
        for _ in range(args.rounds):
            for way, guide in ways.items():  # plain and guided in turn, so both see the same load
                seconds, tokens = write(loaded, prefix_ids, arrays, prompts[:size], args.tokens, guide)
                if way not in best or seconds < best[way][0]:
                    best[way] = (seconds, tokens)
        rates[size] = best["plain"][1] / best["plain"][0]
        line = f"| {size} | {best['plain'][0]:.2f} | {rates[size]:.1f} | {rates[size] / rates[sizes[0]]:.2f} |"
        if args.grammar:
            guided = best["grammar"][1] / best["grammar"][0]
            line += f" {best['grammar'][0]:.2f} | {guided:.1f} | {guided / rates[size]:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
