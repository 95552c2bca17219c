"""Benchmark 5: peak resident memory of one whole `mlx-ttsi ask` in TT-SI mode.

    python bench/peak_rss.py [--model qwen2.5-coder-0.5b]

Runs the CLI as a child process on a SealTool request (model loading included) and reads the
child's peak RSS from the kernel (getrusage of children).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

from _common import machine, sealtool_rows

GOALS = {"smollm2-135m": 1.0, "qwen2.5-coder-0.5b": 3.5}  # GiB (issue 16)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    row = sealtool_rows()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(row["tools"], f)
    command = [
        sys.executable,
        "-m",
        "mlx_ttsi",
        "ask",
        row["query"],
        "--tools",
        f.name,
        "--mode",
        "ttsi",
        "--json",
        "-q",
        "--model",
        args.model,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    answer = json.loads(result.stdout)
    print(f"machine: {machine()}")
    print(
        f"mlx-ttsi ask --mode ttsi --model {args.model} (SealTool row 1): adapted={answer['adapted']}, "
        f"total {answer['timings']['total']:.2f}s"
    )
    goal = f"; goal <= {GOALS[args.model]} GiB" if args.model in GOALS else ""
    print(f"peak RSS: {peak_mib:.0f} MiB ({peak_mib / 1024:.2f} GiB{goal})")


if __name__ == "__main__":
    main()
