"""PNG plots of an evaluation summary. matplotlib is imported only here (Agg: no display needed)."""


def write_plots(summary, out):
    """accuracy.png and, when the summary has a threshold sweep, sweep.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    cells = [c for c in summary["table"] if c["benchmark"] != "average"]
    if cells:
        paths.append(accuracy_plot(cells, out / "accuracy.png"))
    if summary.get("sweep"):
        paths.append(sweep_plot(summary, out / "sweep.png"))
    return paths


def accuracy_plot(cells, path):
    """Grouped bars: accuracy per benchmark (x) and method (colour), error bars = sd over seeds."""
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(c["benchmark"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(max(5, 1.6 * len(benchmarks) + 2), 4))
    for i, method in enumerate(methods):
        mine = {c["benchmark"]: c for c in cells if c["method"] == method}
        xs = [b + (i - (len(methods) - 1) / 2) * width for b, name in enumerate(benchmarks) if name in mine]
        values = [mine[name] for name in benchmarks if name in mine]
        bars = axes.bar(
            xs,
            [c["accuracy"] for c in values],
            width,
            yerr=[c["accuracy_std"] for c in values],
            label=method,
            capsize=3,
        )
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small")
    axes.set_title("Accuracy per benchmark and method")
    return _save(figure, path)


def sweep_plot(summary, path):
    """One panel per benchmark: accuracy against tau for each method, fraction flagged dashed."""
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(s["benchmark"] for s in summary["sweep"]))
    columns = min(3, len(benchmarks))
    grid = (len(benchmarks) + columns - 1) // columns
    figure, panels = plt.subplots(grid, columns, figsize=(4.5 * columns, 3.8 * grid), squeeze=False)
    for panel in panels.flat[len(benchmarks) :]:
        panel.set_visible(False)
    for panel, bench in zip(panels.flat, benchmarks):
        flagged = None
        for s in (s for s in summary["sweep"] if s["benchmark"] == bench):
            points = [p for p in s["points"] if p["accuracy"] is not None]
            panel.plot([p["tau"] for p in points], [p["accuracy"] for p in points], marker="o", label=s["method"])
            flagged = s["points"]
        panel.plot([p["tau"] for p in flagged], [p["flagged"] for p in flagged], "k--", alpha=0.5, label="flagged (%)")
        panel.set_xlabel("threshold tau")
        panel.set_ylabel("accuracy / flagged (%)")
        panel.set_ylim(0, 100)
        panel.set_title(bench)
        panel.legend(fontsize="small")
    return _save(figure, path)


def _save(figure, path):
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
