"""Benchmark: float32 matmul speed with the OpenBLAS kernel mlx-ttsi picks, against the others.

    python bench/blas_kernel.py [--rounds 3] [--reps 5]

A 512x896 @ 896x4864 float32 matmul through mlx (SmolLM2's MLP up-projection over a 512-token
batch), one thread, in a fresh child per variant: OpenBLAS's own kernel (MLX_TTSI_OPENBLAS_KERNEL=0),
the kernel mlx-ttsi chooses (nothing set), and Prescott (OPENBLAS_CORETYPE=Prescott, what Debian's
0.3.21 falls back to on a CPU it does not know). Rounds interleave the variants so all see the same
load. Also times `import mlx_ttsi` (the choice) with a cold cache, a warm one, and the choice off.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import ROOT, machine

M, K, N = 512, 896, 4864

# In the child: the kernel loaded and who chose it, the best and median GFLOP/s, the relative error.
MATMUL = r"""
import json, sys, time
import mlx_ttsi
from mlx_ttsi import _blas
import mlx.core as mx
import numpy as np
m, k, n, reps = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
x, y = mx.array(a), mx.array(b)
mx.eval(x @ y)  # warm-up
times = []
for _ in range(reps):
    start = time.perf_counter()
    c = x @ y
    mx.eval(c)
    times.append(time.perf_counter() - start)
ref = a.astype(np.float64) @ b.astype(np.float64)
error = float(np.linalg.norm(np.array(c) - ref) / np.linalg.norm(ref))
print(json.dumps({"kernel": _blas.kernel, "times": times, "error": error}))
"""

STARTUP = "import time; t = time.perf_counter(); import mlx_ttsi; print(time.perf_counter() - t)"

VARIANTS = {
    "OpenBLAS's own": {"MLX_TTSI_OPENBLAS_KERNEL": "0"},
    "mlx-ttsi's choice": {},
    "Prescott": {"OPENBLAS_CORETYPE": "Prescott"},
}


def child_env(extra, cache=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MLX_TTSI_OPENBLAS_KERNEL")}
    env.update(OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    if cache:
        env["MLX_TTSI_CACHE"] = cache
    return env


def run(code, env, *args):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr)
    return result.stdout.strip().splitlines()[-1]


def startup_costs(repeats=3):
    """Seconds for `import mlx_ttsi` (OpenBLAS load and kernel choice): cold cache, warm, choice off."""
    costs = {"cold cache (probes)": [], "warm cache": [], "choice off": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            costs["cold cache (probes)"].append(float(run(STARTUP, child_env({}, cache))))
            costs["warm cache"].append(float(run(STARTUP, child_env({}, cache))))
            costs["choice off"].append(float(run(STARTUP, child_env({"MLX_TTSI_OPENBLAS_KERNEL": "0"}, cache))))
    return {name: statistics.median(values) for name, values in costs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    results = {name: {"times": [], "errors": []} for name in VARIANTS}
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            out = json.loads(run(MATMUL, child_env(extra), M, K, N, args.reps))
            results[name]["times"] += out["times"]
            results[name]["errors"].append(out["error"])
            results[name]["kernel"] = out["kernel"]
    print(f"machine: {machine()}")
    print(f"float32 {M}x{K} @ {K}x{N} through mlx, 1 thread, {args.rounds} rounds x {args.reps} reps per variant")
    flop = 2 * M * K * N
    median = {name: flop / statistics.median(r["times"]) / 1e9 for name, r in results.items()}
    best = {name: flop / min(r["times"]) / 1e9 for name, r in results.items()}
    for name, r in results.items():
        kernel = r["kernel"]
        print(f"  {name:<18} {kernel['name']:<11} ({kernel['chosen_by']}: {kernel['why']})")
        print(
            f"  {'':<18} median {median[name]:6.1f} GFLOP/s, best {best[name]:6.1f}, "
            f"rel. error vs float64 {max(r['errors']):.1e}"
        )
    for label, figures in (("median", median), ("best", best)):
        chosen, own, prescott = figures["mlx-ttsi's choice"], figures["OpenBLAS's own"], figures["Prescott"]
        print(
            f"ratios of {label}s: mlx-ttsi's choice / OpenBLAS's own {chosen / own:.2f}x, "
            f"/ Prescott {chosen / prescott:.2f}x"
        )
    print(
        "start-up, import mlx_ttsi (median of 3): "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in startup_costs().items())
    )


if __name__ == "__main__":
    main()
