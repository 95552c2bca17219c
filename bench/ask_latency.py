"""Benchmark 1 and 5: TT-SI `ask` latency by phase against a base ask of the same requests, and peak RSS.

    python bench/ask_latency.py [--requests 20] [--model smollm2-135m] [--every] [--stop-losses 0,0.02]
                                [--batch-sizes 1,3]

Takes the first N SealTool requests the model is uncertain about (or, with --every, the first N
requests, all adapted) and answers each twice, both from the cached tools prefix (computed before
the clock starts, as for a second request with the same tools): in base mode and with TT-SI (mode ttsi). Prints p50/p90 per phase, TT-SI / base ratios of the same requests, and
the process's peak resident memory. With `--stop-losses`, TT-SI runs once per early stop on every
request (side by side, same requests), and a table is printed for each.
"""

import argparse
import resource
import sys
import time

from mlx_ttsi.agent import Agent

from _common import machine, percentile, sealtool_rows, uncertain_rows

PHASES = ("scoring", "decoding", "labelling", "synthesis", "training", "answering", "total")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--every", action="store_true", help="the first N requests, each adapted (ttsi-all)")
    parser.add_argument("--stop-losses", help="TT-SI once per early stop, e.g. 0,0.02 (default: the setting's)")
    parser.add_argument("--batch-sizes", help="TT-SI once per training batch size, e.g. 1,3 (default: the setting's)")
    args = parser.parse_args()

    started = time.perf_counter()
    agent = Agent.load(args.model)
    load_seconds = time.perf_counter() - started
    rows = sealtool_rows()[: args.requests] if args.every else [row for row, _ in uncertain_rows(agent, args.requests)]
    stops = [float(v) for v in args.stop_losses.split(",")] if args.stop_losses else [None]
    batches = [int(v) for v in args.batch_sizes.split(",")] if args.batch_sizes else [None]
    variants = [
        {k: v for k, v in (("stop_loss", s), ("batch_size", b)) if v is not None} for s in stops for b in batches
    ]
    names = [", ".join(f"{k} {v}" for k, v in variant.items()) for variant in variants]
    timings = {name: {phase: [] for phase in PHASES} for name in names}
    drafts = {name: [0, 0, 0] for name in names}  # answers, answers that were their draft, tokens taken / drafted
    base_totals, adapted = [], 0
    for row in rows:
        agent.warm(row["tools"])
        base = agent.ask(row["query"], tools=row["tools"], mode="base")
        base_totals.append(base.timings["total"])
        for name, variant in zip(names, variants):
            answer = agent.ask(
                row["query"], tools=row["tools"], mode="ttsi", force=True if args.every else None, **variant
            )
            adapted += answer.adapted
            for phase in PHASES:
                timings[name][phase].append(answer.timings.get(phase, 0.0))
            if answer.draft:
                drafts[name][0] += 1
                drafts[name][1] += answer.draft["answer_is_draft"]
                drafts[name][2] += answer.draft["taken"] / max(answer.draft["tokens"], 1)
            print(
                f"  {row['id']:<32} base {base.timings['total']:6.2f}s  ttsi {answer.timings['total']:6.2f}s "
                f"adapted={answer.adapted} {name}",
                file=sys.stderr,
            )

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {machine()}")
    print(
        f"model: {args.model}, loaded in {load_seconds:.2f}s; {len(rows)} "
        f"{'first' if args.every else 'uncertain'} SealTool requests, {adapted} adapted; tools prefix cached"
    )
    for name in names:
        print(f"TT-SI{f' with {name}' if name else ''}:")
        report(timings[name], base_totals)
        answers, whole, share = drafts[name]
        if answers:
            print(
                f"drafted label: {whole} of {answers} adapted answers were the draft itself; "
                f"mean share of drafted tokens taken {share / answers:.2f}"
            )
    print(f"peak RSS of the whole process (load, selection, {len(rows)} x {1 + len(names)} asks): {peak_mib:.0f} MiB")


def report(timings, base_totals):
    print(f"{'phase':<10} {'p50 s':>7} {'p90 s':>7} {'mean s':>7}")
    for phase in PHASES:
        values = timings[phase]
        print(
            f"{phase:<10} {percentile(values, 50):7.2f} {percentile(values, 90):7.2f} {sum(values) / len(values):7.2f}"
        )
    print(
        f"{'base ask':<10} {percentile(base_totals, 50):7.2f} {percentile(base_totals, 90):7.2f} "
        f"{sum(base_totals) / len(base_totals):7.2f}"
    )
    ratios = [t / b for t, b in zip(timings["total"], base_totals)]
    print(
        f"TT-SI / base, same requests: p50 of totals {percentile(timings['total'], 50) / percentile(base_totals, 50):.2f}, "
        f"median per-request ratio {percentile(ratios, 50):.2f}"
    )


if __name__ == "__main__":
    main()
