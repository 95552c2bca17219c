"""Benchmark 4: LoRA training throughput against this machine's float32 GEMM limit.

    python bench/train_throughput.py [--steps 40] [--layers 8] [--examples 3 --batch-size 3]

Measures float32 matmul FLOP/s here, then trains the per-request LoRA (frozen tools prefix, as
`ask` does) on K synthetic examples (`--batch-size` of them a step, padded) for many steps, early
stop off, and counts the FLOPs each step needs for its examples' real tokens in the
blocks it runs (those with LoRA): forward and input-gradient passes through their frozen weights
(2 + 2 FLOPs per weight per token), the LoRA matrices (forward and both gradients), attention
over the cached prefix, and the vocabulary projection of the answer tokens (forward and backward).
"""

import argparse
import time
from dataclasses import replace

from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.prompts import render_prompt
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.synthesis import ModelWriter
from mlx_ttsi.tools import parse_tools

import mlx.core as mx
from _common import machine, uncertain_rows


def gemm_flops(n=2048, repeats=10):
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def flops_per_step(model, config, suffix, answer, prefix, rank, layers):
    """FLOPs of one step through the `layers` top blocks that carry LoRA (the blocks below them
    run once per example, before the steps, and are not counted)."""
    hidden = config["hidden_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = hidden // heads
    inter = config["intermediate_size"]
    dense = hidden * (hidden + 2 * kv_heads * head_dim + hidden) + 3 * hidden * inter  # per layer
    lora = rank * sum(
        i + o
        for i, o in [
            (hidden, hidden),
            (hidden, kv_heads * head_dim),
            (hidden, kv_heads * head_dim),
            (hidden, hidden),
            (hidden, inter),
            (hidden, inter),
            (inter, hidden),
        ]
    )
    tokens = suffix + answer - 1
    context = prefix + tokens / 2  # average attended positions per token (causal)
    attention = 2 * 2 * context * heads * head_dim  # QK^T and AV, per token per layer
    per_token = layers * (4 * dense + 6 * lora + 3 * attention)  # forward, then backward (x2 for attention)
    vocab = config["vocab_size"] * hidden * 2 * 2 * answer  # answer positions only: forward + input gradient
    return tokens * per_token + vocab


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=LoRASettings.layers, help="LoRA'd top blocks (-1: all)")
    parser.add_argument("--examples", type=int, default=1, help="K synthetic examples trained on")
    parser.add_argument("--batch-size", type=int, default=1, help="examples per step (padded)")
    args = parser.parse_args()
    limit = gemm_flops()
    agent = Agent.load(args.model, settings=Settings(lora=LoRASettings(layers=args.layers)))
    lm = agent.loaded
    ((row, _),) = uncertain_rows(agent, 1)
    tools = parse_tools(row["tools"])
    prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": row["query"]}], tools, agent.fmt)
    state = ContextState(lm.model, lm.tokenizer)
    state.set_text(prompt)
    synthesis = ModelWriter(lm).synthesize(row["query"], tools, args.examples, seed=0, state=state)
    examples = agent.training_examples(synthesis.examples, tools)[: args.examples]
    state.set_text(prompt)
    frozen = agent.prefix_length(state, prompt, tools)
    per_step = max(1, len(examples) // args.batch_size)  # steps an epoch

    import json

    config = json.loads((lm.path / "config.json").read_text())
    lora = LoRASettings(layers=args.layers, batch_size=args.batch_size, stop_loss=0, stop_said_back=False)
    stats = train(agent, examples, frozen, state, replace(lora, epochs=max(1, args.steps // per_step)))
    one = train(agent, examples, frozen, state, replace(lora, epochs=1))
    steady = (stats["seconds"] - one["seconds"]) / (
        stats["steps"] - one["steps"]
    )  # per step, the first epoch (compile, warm-up) excluded
    blocks = config["num_hidden_layers"]
    lora_blocks = blocks if not 0 < lora.layers < blocks else lora.layers
    # the FLOPs of every example's real tokens (padding not counted), spread over the steps of an epoch
    lengths = [(offset - frozen, len(ids) - offset) for ids, offset in examples]
    step_flops = (
        sum(flops_per_step(lm.model, config, s, a, frozen, lora.rank, lora_blocks) for s, a in lengths) / per_step
    )
    suffix, answer = (sum(x) / len(lengths) for x in zip(*lengths))

    print(f"machine: {machine()}")
    print(f"float32 GEMM (2048^3): {limit / 1e9:.1f} GFLOP/s")
    print(
        f"examples: {len(examples)}, {args.batch_size} a step; frozen prefix {frozen} tokens, trained suffix "
        f"{suffix:.0f} + answer {answer:.0f} tokens (mean); LoRA on the top {lora_blocks} of {blocks} blocks"
    )
    print(
        f"training: {stats['steps']} steps in {stats['seconds']:.2f}s; first epoch (with any compile) {one['seconds']:.2f}s; "
        f"steady step {steady * 1000:.0f} ms"
    )
    achieved = step_flops / steady
    print(f"model FLOPs per step: {step_flops / 1e9:.2f} GFLOP -> {achieved / 1e9:.1f} GFLOP/s")
    tokens = sum(s + a - 1 for s, a in lengths) / per_step
    print(f"processed tokens/s: {tokens / steady:.0f}; fraction of the GEMM limit: {achieved / limit:.2f}")


def train(agent, examples, frozen, state, lora):
    """One training from a fresh LoRA with these settings; its stats."""
    agent.adapter.reset(0)
    stats = agent.adapter.train(examples, prefix=(frozen, state.prefix_arrays(frozen)), settings=lora)
    agent.adapter.reset(0)
    return stats


if __name__ == "__main__":
    main()
