"""The summary of an eval's results: accuracy and costs per benchmark and method over seeds, and the
threshold sweep, all worked out from the recorded lines (nothing is rerun)."""

import statistics

from .grading import is_correct, rule
from .methods import ADAPTIVE, SEEDLESS
from .results import key


def summarize(plan, records):
    """Accuracy (percent) and costs per benchmark and method, mean and spread over seeds, and the sweep."""
    found = {key(r): r for r in records}
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in plan.rows))
    table = []
    for bench in benchmarks:
        rows = [row for row in plan.rows if row["benchmark"] == bench]
        for method in plan.methods:
            runs = {
                seed: _seed_stats(rows, [_line(found, plan, bench, row["id"], method, seed) for row in rows])
                for seed in plan.seeds
            }
            runs = {seed: r for seed, r in runs.items() if r}
            if runs:
                table.append({"benchmark": bench, "method": method, "of": len(rows), **_spread(runs)})
    table += _averages(table, benchmarks, plan.methods)
    return {
        "settings": plan.settings,
        "seeds": list(plan.seeds),
        "scoring": {bench: rule(bench) for bench in benchmarks},
        "table": table,
        "sweep": threshold_sweep(plan, found, benchmarks),
    }


def _line(found, plan, bench, ident, method, seed):
    # a seedless method's one line stands for every seed
    return found.get((bench, ident, method, plan.seeds[0] if method in SEEDLESS else seed))


def _seed_stats(rows, records):
    pairs = [(row, r) for row, r in zip(rows, records) if r]
    if not pairs:
        return None
    n = len(pairs)
    return {
        "rows": n,
        "accuracy": 100 * sum(is_correct(row, r["prediction"]) for row, r in pairs) / n,
        "adapted": sum(bool(r["adapted"]) for _, r in pairs) / n,
        "synthetic": sum(r.get("synthetic", 0) for _, r in pairs),
        "yield": (sum(r.get("synthetic", 0) for _, r in pairs) / asked)
        if (asked := sum(r.get("asked", 0) for _, r in pairs))
        else None,
        "label_accuracy": (100 * sum(bool(r["label_correct"]) for r in labelled) / len(labelled))
        if (labelled := [r for _, r in pairs if r.get("label_correct") is not None])
        else None,
        "errors": sum(bool(r.get("error")) for _, r in pairs),
        "gold_gain": _gold_gain(r for _, r in pairs),
        "gold_gain_label_wrong": _gold_gain(r for _, r in pairs if r.get("label_correct") is False),
        "seconds_per_row": sum(r["timings"].get("total", 0) for _, r in pairs) / n,
    }


def _spread(runs):
    # one table cell from {seed: stats}: means over seeds, sd of accuracy, accuracy per seed
    values = list(runs.values())
    accuracy = [r["accuracy"] for r in values]
    mean = lambda k: statistics.mean(r[k] for r in values)  # noqa: E731
    return {
        "rows": min(r["rows"] for r in values),
        "seeds": len(values),
        "accuracy": round(statistics.mean(accuracy), 2),
        "accuracy_std": round(statistics.stdev(accuracy), 2) if len(values) > 1 else 0.0,
        "per_seed": {str(seed): round(r["accuracy"], 2) for seed, r in runs.items()},
        "adapted": round(mean("adapted"), 4),
        "synthetic": round(mean("synthetic"), 2),
        "errors": max(r["errors"] for r in values),
        "seconds_per_row": round(mean("seconds_per_row"), 3),
        "rows_per_hour": round(3600 / mean("seconds_per_row"), 1) if mean("seconds_per_row") > 0 else None,
        "yield": _mean_of(values, "yield", 3),
        "label_accuracy": _mean_of(values, "label_accuracy", 2),
        "gold_gain": _mean_of(values, "gold_gain", 3),
        "gold_gain_label_wrong": _mean_of(values, "gold_gain_label_wrong", 3),
    }


def _gold_gain(records):
    """Mean over adapted rows of the gold answer's log-likelihood under the adapted weights minus under
    the base weights (nats; None when no adapted row was scored): learning raises it, saying a wrong
    label back lowers it."""
    gains = [
        g["adapted"] - g["base"] for r in records if (g := r.get("gold_likelihood")) and g.get("adapted") is not None
    ]
    return statistics.mean(gains) if gains else None


def _mean_of(values, name, digits):
    # the mean of a statistic that some runs lack (None when none has it)
    present = [r[name] for r in values if r.get(name) is not None]
    return round(statistics.mean(present), digits) if present else None


def _averages(table, benchmarks, methods):
    # the paper's "average" line: per seed the mean over benchmarks, for methods run on all of them
    if len(benchmarks) < 2:
        return []
    lines = []
    for method in methods:
        cells = [c for c in table if c["method"] == method]
        seeds = set.intersection(*(set(c["per_seed"]) for c in cells)) if len(cells) == len(benchmarks) else ()
        if seeds:
            runs = {
                seed: {
                    "rows": sum(c["rows"] for c in cells),
                    "errors": sum(c["errors"] for c in cells),
                    **{
                        k: statistics.mean(c["per_seed"][seed] if k == "accuracy" else c[k] for c in cells)
                        for k in ("accuracy", "adapted", "synthetic", "seconds_per_row")
                    },
                }
                for seed in sorted(seeds, key=int)
            }
            lines.append({"benchmark": "average", "method": method, "of": sum(c["of"] for c in cells), **_spread(runs)})
    return lines


def threshold_sweep(plan, found, benchmarks):
    """Accuracy and fraction flagged against tau, from recorded scores and answers; nothing is rerun.

    The score u of a row is the same in every method's line (it is taken with the base weights).
    At tau a row is flagged when u < tau and then takes the method's adapted answer: from its
    `ttsi-all` line (TT-SI only) or from a gated line that was itself flagged (u below that run's
    threshold); an unflagged row takes its `base` line, or a gated line that was not flagged.
    A tau with a row lacking the answer it needs has accuracy None."""
    sweep = []
    for bench in benchmarks:
        rows = [row for row in plan.rows if row["benchmark"] == bench]
        scores = {}
        for row in rows:
            lines = [found.get((bench, row["id"], m, s)) for m in plan.methods for s in plan.seeds]
            lines = [r for r in lines if r]
            if lines:
                # the score of an adaptive line includes the self-label check that base lines skip
                lines.sort(key=lambda r: (r.get("parts") or {}).get("label_agrees") is None)
                scores[row["id"]] = next((r["uncertainty"] for r in lines if r["uncertainty"] is not None), None)
        scored = [row for row in rows if row["id"] in scores]
        for method in ADAPTIVE:
            sources = (method, "ttsi-all") if method == "ttsi" else (method,)
            if not scored or not any(m in plan.methods for m in sources):
                continue
            points = []
            for tau in plan.taus:
                flagged = sum(_flagged(scores[row["id"]], tau) for row in scored)
                runs = [_sweep_accuracy(plan, scored, scores, found, bench, method, seed, tau) for seed in plan.seeds]
                runs = [r for r in runs if r is not None]
                points.append(
                    {
                        "tau": tau,
                        "flagged": round(100 * flagged / len(scored), 2),
                        "accuracy": round(statistics.mean(runs), 2) if runs else None,
                        "accuracy_std": round(statistics.stdev(runs), 2) if len(runs) > 1 else 0.0,
                    }
                )
            sweep.append({"benchmark": bench, "method": method, "rows": len(scored), "points": points})
    return sweep


def _flagged(u, tau):
    return u is not None and u < tau


def _sweep_accuracy(plan, rows, scores, found, bench, method, seed, tau):
    correct = 0
    for row in rows:
        line = lambda m: _line(found, plan, bench, row["id"], m, seed)  # noqa: E731
        if _flagged(scores[row["id"]], tau):
            gated = line(method)
            answer = line("ttsi-all") if method == "ttsi" else None
            answer = answer or (gated if gated and gated["uncertain"] else None)
        else:
            gated = line(method)
            answer = line("base") or (gated if gated and not gated["uncertain"] else None)
        if answer is None:
            return None
        correct += is_correct(row, answer["prediction"])
    return 100 * correct / len(rows)
