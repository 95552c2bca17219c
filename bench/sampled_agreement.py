"""A gate signal: how often a few sampled calls agree with the base answer (the paper's majority-vote
rows), and how well that predicts a wrong base answer, beside the recorded signals.

    python bench/sampled_agreement.py runs/q-calls10 -d ../shared/benchmarks/sealtool.jsonl [-d ...]
                                      [--model qwen2.5-coder-0.5b] [--samples 4]

For every row of the run with a `base` line, the model writes `--samples` answers side by side
(temperature 0.7, from the cached prompt, writer.BatchWriter); each is read as calls (the name and
arguments, parsed form) and compared with the recorded base answer. Doubt = 1 - the share that agree.
Prints AUROC for a wrong base answer, and precision and recall where at least one sample disagrees.
"""

import argparse
import time

from mlx_ttsi import models
from mlx_ttsi.context import ContextState
from mlx_ttsi.evaluation.rows import load_rows, row_input
from mlx_ttsi.prompts import call_format, normalize_messages, render_prompt
from mlx_ttsi.tools import parse_calls, parse_tools
from mlx_ttsi.writer import BatchWriter, closed_json

from _common import machine
from gate_signals import auroc, lines


def sampled_calls(loaded, fmt, row, samples, seed):
    """`samples` answers to the row, each as parsed calls (the first call only)."""
    request, messages = row_input({k: v for k, v in row.items() if k not in ("answer", "meta")})
    messages = normalize_messages(messages or [{"role": "user", "content": request}])
    prompt = render_prompt(loaded.tokenizer, messages, parse_tools(row["tools"]), fmt) + fmt.start + fmt.open
    state = ContextState(loaded.model, loaded.tokenizer, loaded.context_length)
    ids = state.encode(prompt)
    state.sync(ids[:-1])
    writer = BatchWriter(loaded.model, loaded.tokenizer, ids[:-1], state.prefix_arrays(len(ids) - 1))
    texts = writer.write([prompt] * samples, 96, stop=closed_json(opened=0), temperature=0.7, seed=seed)
    return [parse_calls(text)[:1] for text in texts]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("-d", "--data", action="append", required=True, help="the run's benchmark files")
    args = parser.parse_args()
    rows = {(r["benchmark"], r["id"]): r for rows in load_rows(args.data) for r in rows}
    recorded = {k: v for k, v in lines([args.run]).items() if "base" in v and k in rows}
    recorded = dict(list(recorded.items())[: args.limit])
    loaded = models.load(args.model)
    fmt = call_format(loaded.tokenizer)
    print(machine())
    doubts, wrong, started = [], [], time.perf_counter()
    for key, methods in recorded.items():
        base = methods["base"]["prediction"][:1]
        answers = sampled_calls(loaded, fmt, rows[key], args.samples, seed=0)
        doubts.append(1 - sum(a == base for a in answers) / len(answers))
        wrong.append(not methods["base"]["correct"])
    fires = [d > 0 for d in doubts]
    hits = sum(f and w for f, w in zip(fires, wrong))
    print(f"{len(doubts)} rows, {sum(wrong)} with a wrong base answer, {time.perf_counter() - started:.0f} s")
    print(
        f"sampled calls disagree ({args.samples} samples): AUROC {auroc(doubts, wrong):.2f}, fires on {sum(fires)}, "
        f"precision {hits / max(sum(fires), 1):.2f}, recall {hits / max(sum(wrong), 1):.2f}"
    )


if __name__ == "__main__":
    main()
