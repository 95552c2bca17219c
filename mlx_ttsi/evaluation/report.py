"""The summary written out: summary.json, summary.md (Markdown tables) and the plots of plots.py."""

import json
import sys

from ..files import atomic_write

NO_MATPLOTLIB = "note: plots need matplotlib (pip install 'mlx-ttsi[eval]')"


def write_summary(out, summary):
    """summary.json, summary.md and the plots; returns whether plots were written (not without matplotlib)."""
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out / "summary.md", markdown(summary))
    if not can_plot():
        print(NO_MATPLOTLIB, file=sys.stderr)
        return False
    from .plots import write_plots

    write_plots(summary, out)
    return True


def can_plot():
    """Whether matplotlib, which the plots need, can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def markdown(summary, sweep=True):
    """The summary as Markdown tables: benchmark x method, then (with `sweep`) the threshold sweep."""
    lines = [
        "| benchmark | method | accuracy (%) | rows | adapted | synthetic samples | yield | self-label acc. (%) "
        "| gold gain | gold gain, label wrong | s/row | rows/h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["table"]:
        accuracy = f"{c['accuracy']:.2f}" + (f" ± {c['accuracy_std']:.2f}" if c["seeds"] > 1 else "")
        rows = f"{c['rows']}" + (f" of {c['of']}" if c["rows"] < c["of"] else "")
        rows += f" ({c['errors']} not asked)" if c["errors"] else ""
        kept = "" if c.get("yield") is None else f"{100 * c['yield']:.0f}%"
        label = "" if c.get("label_accuracy") is None else f"{c['label_accuracy']:.2f}"
        per_hour = "" if c.get("rows_per_hour") is None else f"{c['rows_per_hour']:.0f}"
        gain, gain_wrong = (_nats(c.get(k)) for k in ("gold_gain", "gold_gain_label_wrong"))
        lines.append(
            f"| {c['benchmark']} | {c['method']} | {accuracy} | {rows} | {100 * c['adapted']:.1f}% "
            f"| {c['synthetic']:g} | {kept} | {label} | {gain} | {gain_wrong} | {c['seconds_per_row']:.2f} | {per_hour} |"
        )
    seeds = summary.get("seeds", [])
    spread = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines += [
        "",
        f"Accuracy in % ({spread}); synthetic samples: total per run; yield: examples kept / asked; "
        "self-label acc.: the grounded self-label's own accuracy (what the twins are made from); gold gain: mean over "
        "adapted rows of the gold answer's log-likelihood (nats) under the adapted weights minus under the base "
        "weights (learning raises it), and over the adapted rows whose self-label is wrong; s/row and rows/h: "
        "time inside the agent per row and its inverse (loading, and the tools prefix computed once per "
        "tool set, not counted). Scoring:",
    ]
    lines += [f"- {bench}: {text}" for bench, text in summary["scoring"].items()]
    for s in summary["sweep"] if sweep else []:
        lines += [
            "",
            f"Threshold sweep, {s['benchmark']} / {s['method']} ({s['rows']} rows):",
            "",
            "| tau | flagged (%) | accuracy (%) |",
            "|---|---|---|",
        ]
        for p in s["points"]:
            accuracy = "n/a" if p["accuracy"] is None else f"{p['accuracy']:.2f}"
            lines.append(f"| {p['tau']:g} | {p['flagged']:.1f} | {accuracy} |")
    return "\n".join(lines) + "\n"


def _nats(value):
    return "" if value is None else f"{value:+.2f}"
