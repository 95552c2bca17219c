"""Benchmark 2: our in-process adapt-and-answer against the plain mlx-lm route, same data.

    python bench/vs_mlx_lm.py [--requests 3]

For each uncertain SealTool request we synthesize the examples once, then time
  ours:   train the LoRA (same iterations) and write the schema-guided answer, in-process;
  theirs: write train/valid JSONL, run `python -m mlx_lm lora` as a subprocess for the same
          iterations, then `python -m mlx_lm generate --adapter-path`.
To compare like with like, their subprocesses get the same float32 weights (saved once) and, on
Linux, the same OpenBLAS through LD_PRELOAD; their model loading is part of their route.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlx_ttsi import _blas
from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import CallDecoder
from mlx_ttsi.prompts import FALLBACK_SYSTEM, calls_text, render_prompt, tool_line
from mlx_ttsi.synthesis import ModelWriter
from mlx_ttsi.tools import parse_tools

from _common import machine, percentile, uncertain_rows


def save_float32(lm, directory):
    from mlx_lm.utils import save_model

    save_model(directory, lm.model)
    config = json.loads((lm.path / "config.json").read_text())
    config.pop("quantization", None)
    (directory / "config.json").write_text(json.dumps(config))
    lm.tokenizer._tokenizer.save_pretrained(str(directory))


def run(command, env):
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    agent = Agent.load(args.model)
    lm = agent.loaded
    iters = agent.settings.lora.epochs * agent.settings.examples
    env = dict(os.environ)
    if _blas.loaded_path:
        env["LD_PRELOAD"] = _blas.loaded_path
        if _blas.kernel["chosen_by"] == "mlx-ttsi":  # the same kernel too
            env["OPENBLAS_CORETYPE"] = _blas.kernel["name"]
    ours_times, theirs_times = [], []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        weights = scratch / "model"
        save_float32(agent.loaded, weights)
        agent.adapter.reset()
        for row, _ in uncertain_rows(agent, args.requests):
            tools = parse_tools(row["tools"])
            prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": row["query"]}], tools, agent.fmt)
            state = ContextState(lm.model, lm.tokenizer)
            state.set_text(prompt)
            synthesis = ModelWriter(lm).synthesize(row["query"], tools, agent.settings.examples, 0, state=state)
            if not synthesis.examples:
                continue
            # ours: train on the frozen prefix and answer, in-process
            started = time.perf_counter()
            state.set_text(prompt)
            frozen = agent.prefix_length(state, prompt, tools)
            examples = agent.training_examples(synthesis.examples, tools)
            agent.adapter.reset(0)
            agent.adapter.train(examples, prefix=(frozen, state.prefix_arrays(frozen)))
            state.truncate(frozen)
            CallDecoder(state, agent.fmt).decode(prompt, tools)
            ours = time.perf_counter() - started
            agent.adapter.reset()
            # theirs: JSONL + mlx_lm lora + mlx_lm generate
            started = time.perf_counter()
            data = scratch / f"data-{row['id']}"
            data.mkdir()
            system = FALLBACK_SYSTEM.format(tools="\n".join(tool_line(t) for t in tools))
            lines = [
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": e["request"]},
                            {"role": "assistant", "content": calls_text(e["calls"], agent.fmt)},
                        ]
                    }
                )
                for e in synthesis.examples
            ]
            for split in ("train", "valid"):
                (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
            adapters = scratch / f"adapters-{row['id']}"
            run(
                [
                    sys.executable,
                    "-m",
                    "mlx_lm",
                    "lora",
                    "--model",
                    str(weights),
                    "--train",
                    "--data",
                    str(data),
                    "--iters",
                    str(iters),
                    "--batch-size",
                    "1",
                    "--num-layers",
                    str(agent.settings.lora.layers),
                    "--learning-rate",
                    str(agent.settings.lora.learning_rate),
                    "--mask-prompt",
                    "--val-batches",
                    "1",
                    "--steps-per-eval",
                    str(iters + 1),
                    "--adapter-path",
                    str(adapters),
                ],
                env,
            )
            run(
                [
                    sys.executable,
                    "-m",
                    "mlx_lm",
                    "generate",
                    "--model",
                    str(weights),
                    "--adapter-path",
                    str(adapters),
                    "--system-prompt",
                    system,
                    "--prompt",
                    row["query"],
                    "--max-tokens",
                    "64",
                ],
                env,
            )
            theirs = time.perf_counter() - started
            ours_times.append(ours)
            theirs_times.append(theirs)
            print(f"  {row['id']:<32} ours {ours:6.2f}s  theirs {theirs:6.2f}s", file=sys.stderr)
    ratios = [o / t for o, t in zip(ours_times, theirs_times)]
    print(f"machine: {machine()}")
    print(f"{len(ratios)} uncertain SealTool requests, {args.model}, {iters} training steps, same synthetic data")
    print(f"ours   (train + answer, in-process)      p50 {percentile(ours_times, 50):6.2f}s")
    print(f"theirs (JSONL + mlx_lm lora + generate)  p50 {percentile(theirs_times, 50):6.2f}s")
    print(f"ratio ours / theirs: p50 {percentile(ratios, 50):.3f} (target <= 0.2)")


if __name__ == "__main__":
    main()
