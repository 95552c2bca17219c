"""Offline evaluation: run methods over benchmark rows, keep every result as it comes, summarise.

    files = load_rows(["../shared/benchmarks/sealtool.jsonl"])
    plan = Plan(select(files, limit=20), methods=["base", "ttsi"], seeds=[0])
    summary = evaluate(plan, "runs/x", agent=agent)

The out dir holds results.jsonl (one line per row, method and seed, appended and flushed as it goes,
so a rerun resumes where the last one stopped), config.json (the settings the results depend on),
summary.json, summary.md and PNG plots. Under `mlx.launch` rank R of N runs the rows i with
i % N == R into results.rankR.jsonl; rank 0 gathers every rank's lines (ranks.py) into results.jsonl
and writes the summary, which depends only on the results, never on how they were split.
Grading is in grading.py, plots in plots.py; the command and its files are described in docs/eval.md.
"""

import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, RequestError, ToolsError
from .prompts import normalize_messages
from .ranks import launched_ranks
from .grading import is_correct, rule

# eval method -> (agent mode, force): gated methods adapt only on uncertain rows, as in the paper.
# oracle and oracle-twin are ceilings that read the row's gold answer (see gold_examples); they
# exist only here, and no other method is ever given the gold answer.
METHODS = {"base": ("base", None), "ttsi": ("ttsi", False), "ttd": ("ttd", False), "ticl": ("ticl", False),
           "ttsi-all": ("ttsi", True), "oracle": ("ttsi", True), "oracle-twin": ("ttsi", True)}
ORACLES = ("oracle", "oracle-twin")
GOLD_TWINS = 3  # K twins of the gold call for oracle-twin when the run's settings give no K
SEEDLESS = ("base",)  # greedy and never adapted: the seed changes nothing, so it runs with the first seed only
GOLD_FIELDS = ("answer", "meta")  # what a method other than an oracle never sees
ADAPTIVE = ("ttsi", "ttd", "ticl")  # methods the threshold sweep is computed for
DEFAULT_SWEEP = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MULTI_CALL = {"toolalpaca": 5}  # fixed max_calls for benchmarks with multi-call rows; 1 elsewhere
RESULTS = "results.jsonl"


@dataclass
class Plan:
    rows: list  # the selected rows, in order
    methods: list
    seeds: list = field(default_factory=lambda: [0])
    taus: tuple = DEFAULT_SWEEP
    max_calls: int = None  # None: per benchmark (MULTI_CALL, else 1)
    settings: dict = field(default_factory=dict)  # what the results depend on; kept in config.json


def parse_methods(text):
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise DataError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if not methods:
        raise DataError("no methods given")
    return list(dict.fromkeys(methods))


def parse_seeds(values):
    """Seeds from repeated and/or comma-separated values: ("0", "1,2") -> [0, 1, 2]."""
    try:
        seeds = [int(s) for value in values for s in str(value).split(",") if s.strip()]
    except ValueError:
        raise DataError(f"seeds must be integers, got {', '.join(map(str, values))}") from None
    return list(dict.fromkeys(seeds)) or [0]


def parse_taus(text):
    try:
        taus = sorted({float(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise DataError(f"threshold sweep must be comma-separated numbers, got {text!r}") from None
    if not taus or not all(0 <= t <= 1 for t in taus):
        raise DataError("threshold sweep values must be between 0 and 1")
    return tuple(taus)


# ---- benchmark rows ----

def load_rows(paths):
    """The rows of each data file (a list per file), checked, with one-line errors."""
    files, seen = [], set()
    for path in map(Path, paths):
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise DataError(f"data file not found: {path}") from None
        except OSError as error:
            raise DataError(f"cannot read data file {path}: {error.strerror}") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number} is not valid JSON: {error.msg}") from None
            problem = _row_problem(row)
            if problem:
                raise DataError(f"{path} line {number}: {problem}")
            row["benchmark"] = str(row.get("benchmark") or path.stem)
            row["id"] = str(row["id"])
            if (row["benchmark"], row["id"]) in seen:
                raise DataError(f"{path} line {number}: row {row['id']!r} of {row['benchmark']} appears twice")
            seen.add((row["benchmark"], row["id"]))
            rows.append(row)
        if not rows:
            raise DataError(f"data file {path} has no rows")
        files.append(rows)
    return files


def _row_problem(row):
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    if row.get("id") is None:
        return "the row has no id"
    if not isinstance(row.get("tools"), list) or not row["tools"]:
        return "the row has no tools list"
    if not isinstance(row.get("answer"), list):
        return "the row has no answer list"
    if not row.get("query") and not row.get("messages"):
        return "the row has neither a query nor messages"
    return None


def select(files, limit=None, sample=None, seed=0):
    """One list of rows: the first `limit`, or `sample` drawn with `seed`, of each file (kept in order)."""
    if limit and sample:
        raise DataError("give either --limit or --sample, not both")
    chosen = []
    for rows in files:
        if sample and sample < len(rows):
            rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), sample))]
        chosen.extend(rows[:limit] if limit else rows)
    return chosen


def row_input(row):
    """(request, messages) for Agent.ask: the query, or the conversation up to the expected call."""
    if row.get("query"):
        return row["query"], None
    # API-Bank conversations often end on an assistant filler ("Got it.") just before the
    # expected call: the agent answers in a new assistant turn after it, with nothing dropped
    return None, list(row["messages"])


def max_calls_for(row, override=None):
    if override:
        return override
    return next((n for prefix, n in MULTI_CALL.items() if row["benchmark"].startswith(prefix)), 1)


def gold_examples(row, method, k, seed):
    """The oracle ablations' training examples: the row's own gold answer, or K twins of it."""
    request, messages = row_input(row)
    messages = messages or [{"role": "user", "content": request}]
    if method == "oracle":
        return [{"messages": messages, "request": request or messages[-1]["content"], "calls": row["answer"],
                 "source": "gold"}]
    from .grounding import twins
    from .tools import parse_tools

    return twins(normalize_messages(messages), row["answer"], parse_tools(row["tools"]), k, seed, source="gold twin")


def run_one(agent, row, method, seed, max_calls, examples):
    """One result line: the row asked with one method and seed, scored.

    Only the oracle methods read the row's gold answer; every other method is asked with a copy
    of the row that has no gold fields. Each method starts from the cached tools prefix (computed
    before the clock starts), so methods are timed on equal terms whatever their order."""
    mode, force = METHODS[method]
    inputs = {k: v for k, v in row.items() if k not in GOLD_FIELDS}
    request, messages = row_input(inputs)
    record = {"benchmark": row["benchmark"], "id": row["id"], "method": method, "seed": seed}
    options = {"train_on": gold_examples(row, method, examples, seed)} if method in ORACLES else {}
    agent.warm(inputs["tools"])
    started = time.perf_counter()
    try:
        answer = agent.ask(request, tools=inputs["tools"], messages=messages, mode=mode, force=force, seed=seed,
                           max_calls=max_calls_for(inputs, max_calls), **options)
    except (RequestError, ToolsError) as error:  # this row cannot be asked (e.g. over the context): wrong
        return record | {"prediction": [], "correct": False, "uncertainty": None, "uncertain": None,
                         "threshold": None, "adapted": False, "synthetic": 0, "rejected": 0, "asked": 0,
                         "loss": None, "timings": {"total": round(time.perf_counter() - started, 3)},
                         "error": str(error)}
    u = answer.uncertainty
    label = getattr(answer, "label", None)
    return record | {
        "prediction": answer.tool_calls, "correct": is_correct(row, answer.tool_calls),
        "uncertainty": u.score if u else None, "uncertain": u.uncertain if u else None,
        "threshold": u.threshold if u else None,
        "parts": {"name": getattr(u, "name_score", None), "arguments": getattr(u, "argument_score", None),
                  "label_agrees": getattr(u, "label_agrees", None)} if u else None,
        "adapted": bool(answer.adapted), "note": getattr(answer, "note", None),
        "label": label, "label_correct": is_correct(row, label) if label is not None else None,
        "synthetic": len(answer.synthetic or []), "asked": getattr(answer, "asked", len(answer.synthetic or [])),
        "examples": [{"request": e.get("request"), "calls": e.get("calls"), "source": e.get("source")}
                     for e in answer.synthetic or []],
        "rejected": sum((answer.rejected or {}).values()), "rejections": dict(answer.rejected or {}),
        "loss": (getattr(answer, "training", None) or {}).get("loss"), "timings": answer.timings, "error": None,
    }


def key(record):
    return (record["benchmark"], str(record["id"]), record["method"], record["seed"])


# ---- results files ----

def read_records(path, repair=False):
    """The records in one results file. A last line cut short by a crash is dropped (and, with
    `repair`, the file is rewritten without it); a damaged line elsewhere is an error."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    clean = data.endswith(b"\n") or not data
    if clean:
        lines = lines[:-1]
    records = []
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
            key(record)
        except (ValueError, KeyError, TypeError):
            if index < len(lines) - 1:
                raise DataError(f"results file {path} is damaged at line {index + 1}; "
                                "move it away to start over") from None
            clean = False
            break
        records.append(record)
    if repair and not clean:
        write_records(path, records)
    return records


def write_records(path, records):
    """Replace a results file in one step (a crash leaves the old or the new file, never half)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(temporary, path)


def results_files(out):
    """results.jsonl first, then results.rankR.jsonl by rank."""
    ranks = sorted(out.glob("results.rank*.jsonl"), key=lambda p: int(p.name.split("rank")[1].split(".")[0] or 0))
    return ([out / RESULTS] if (out / RESULTS).exists() else []) + ranks


def read_all(out, extra=()):
    """Every record of the out dir (and `extra` lists), the first of each (row, method, seed) kept."""
    merged = {}
    for records in [read_records(p) for p in results_files(out)] + list(extra):
        for record in records:
            merged.setdefault(key(record), record)
    return list(merged.values())


class Appender:
    """Appends result lines to one file, flushed to disk one by one."""

    def __init__(self, path):
        self.path = path
        read_records(path, repair=True)  # drop a line cut short by an earlier crash first
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record):
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()


def check_config(out, settings):
    """Results are only reused under the same settings (keys unset on either side are not compared)."""
    path = out / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise DataError(f"{path} is damaged; move it away to start over") from None
        changed = [k for k in sorted(set(saved) & set(settings))
                   if saved[k] is not None and settings[k] is not None and saved[k] != settings[k]]
        if changed:
            diffs = ", ".join(f"{k} {saved[k]!r} -> {settings[k]!r}" for k in changed)
            raise DataError(f"{out} holds results made with other settings ({diffs}); use another --out")
        settings = {**saved, **{k: v for k, v in settings.items() if v is not None}}
    temporary = out / f".config.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


# ---- running, on one process or as one rank of several (see ranks.py) ----

def evaluate(plan, out, agent=None, load_agent=None, progress=True, ranks=None):
    """Run what is missing of this rank's rows, then (rank 0) merge and summarise.

    `agent` answers the rows (anything with Agent.ask); `load_agent` makes one only when there is
    work left, so a finished run is re-summarised without loading a model. Returns the summary on
    rank 0, None on the other ranks."""
    out = Path(out)
    ranks = ranks or launched_ranks()
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, plan.settings)
        done = {key(r) for r in read_all(out)}
        mine = [row for index, row in enumerate(plan.rows) if index % ranks.size == ranks.rank]
        todo = [(row, seed, method) for row in mine for seed in plan.seeds for method in plan.methods
                if (seed == plan.seeds[0] or method not in SEEDLESS)
                if (row["benchmark"], row["id"], method, seed) not in done]
        own = out / (RESULTS if ranks.size == 1 else f"results.rank{ranks.rank}.jsonl")
        if todo:
            run_rows(agent or load_agent(), todo, own, plan.max_calls,
                     Progress(len(todo), f"rank {ranks.rank}/{ranks.size} " if ranks.size > 1 else "", progress),
                     plan.settings.get("examples") or GOLD_TWINS)
        gathered = ranks.gather(read_records(own) if ranks.size > 1 else [])
        return finish(plan, out, gathered) if ranks.rank == 0 else None
    finally:
        ranks.close()


def run_rows(agent, todo, path, max_calls, bar, examples):
    """Ask each (row, seed, method) and append its result line to `path` at once."""
    appender = Appender(path)
    try:
        for row, seed, method in todo:
            appender.write(run_one(agent, row, method, seed, max_calls, examples))
            bar.advance(f"{row['benchmark']} {method}")
    finally:
        appender.close()
        bar.close()


def finish(plan, out, gathered=()):
    """Merge every rank's lines (files in `out` and `gathered` lists) into results.jsonl, summarise."""
    records = read_all(out, gathered)
    write_records(out / RESULTS, records)
    for path in out.glob("results.rank*.jsonl"):
        path.unlink(missing_ok=True)
    summary = summarize(plan, records)
    write_summary(out, summary)
    return summary


class Progress:
    """A progress bar with ETA on stderr: redrawn on a terminal, a line every few seconds otherwise."""

    def __init__(self, total, label="", enabled=True, stream=None, every=5.0):
        self.total, self.label, self.enabled, self.every = total, label, enabled, every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.started, self.shown = 0, time.perf_counter(), 0.0
        self._show("")

    def advance(self, note=""):
        self.done += 1
        now = time.perf_counter()
        if self.tty or self.done == self.total or now - self.shown >= self.every:
            self._show(note)

    def _show(self, note):
        if not self.enabled:
            return
        self.shown = now = time.perf_counter()
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        filled = int(20 * self.done / max(self.total, 1))
        line = (f"{self.label}[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} "
                f"elapsed {_clock(elapsed)} ETA {_clock(eta)} {note}").rstrip()
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")


def _clock(seconds):
    if seconds is None:
        return "--:--"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes:02d}:{seconds:02d}"


# ---- summary and threshold sweep ----

def summarize(plan, records):
    """Accuracy (percent) and costs per benchmark and method, mean and spread over seeds, and the sweep."""
    found = {key(r): r for r in records}
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in plan.rows))
    table = []
    for bench in benchmarks:
        rows = [row for row in plan.rows if row["benchmark"] == bench]
        for method in plan.methods:
            runs = {seed: _seed_stats(rows, [_line(found, plan, bench, row["id"], method, seed) for row in rows])
                    for seed in plan.seeds}
            runs = {seed: r for seed, r in runs.items() if r}
            if runs:
                table.append({"benchmark": bench, "method": method, "of": len(rows), **_spread(runs)})
    table += _averages(table, benchmarks, plan.methods)
    return {"settings": plan.settings, "seeds": list(plan.seeds),
            "scoring": {bench: rule(bench) for bench in benchmarks},
            "table": table, "sweep": threshold_sweep(plan, found, benchmarks)}


def _line(found, plan, bench, ident, method, seed):
    # a seedless method's one line stands for every seed
    return found.get((bench, ident, method, plan.seeds[0] if method in SEEDLESS else seed))


def _seed_stats(rows, records):
    pairs = [(row, r) for row, r in zip(rows, records) if r]
    if not pairs:
        return None
    n = len(pairs)
    return {"rows": n, "accuracy": 100 * sum(is_correct(row, r["prediction"]) for row, r in pairs) / n,
            "adapted": sum(bool(r["adapted"]) for _, r in pairs) / n,
            "synthetic": sum(r.get("synthetic", 0) for _, r in pairs),
            "yield": (sum(r.get("synthetic", 0) for _, r in pairs) / asked) if (asked := sum(
                r.get("asked", 0) for _, r in pairs)) else None,
            "label_accuracy": (100 * sum(bool(r["label_correct"]) for r in labelled) / len(labelled)) if (labelled := [
                r for _, r in pairs if r.get("label_correct") is not None]) else None,
            "errors": sum(bool(r.get("error")) for _, r in pairs),
            "seconds_per_row": sum(r["timings"].get("total", 0) for _, r in pairs) / n}


def _spread(runs):
    # one table cell from {seed: stats}: means over seeds, sd of accuracy, accuracy per seed
    values = list(runs.values())
    accuracy = [r["accuracy"] for r in values]
    mean = lambda k: statistics.mean(r[k] for r in values)  # noqa: E731
    return {"rows": min(r["rows"] for r in values), "seeds": len(values),
            "accuracy": round(statistics.mean(accuracy), 2),
            "accuracy_std": round(statistics.stdev(accuracy), 2) if len(values) > 1 else 0.0,
            "per_seed": {str(seed): round(r["accuracy"], 2) for seed, r in runs.items()},
            "adapted": round(mean("adapted"), 4), "synthetic": round(mean("synthetic"), 2),
            "errors": max(r["errors"] for r in values), "seconds_per_row": round(mean("seconds_per_row"), 3),
            "yield": _mean_of(values, "yield", 3), "label_accuracy": _mean_of(values, "label_accuracy", 2)}


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
            runs = {seed: {"rows": sum(c["rows"] for c in cells), "errors": sum(c["errors"] for c in cells),
                           **{k: statistics.mean(c["per_seed"][seed] if k == "accuracy" else c[k] for c in cells)
                              for k in ("accuracy", "adapted", "synthetic", "seconds_per_row")}}
                    for seed in sorted(seeds, key=int)}
            lines.append({"benchmark": "average", "method": method, "of": sum(c["of"] for c in cells),
                          **_spread(runs)})
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
                points.append({"tau": tau, "flagged": round(100 * flagged / len(scored), 2),
                               "accuracy": round(statistics.mean(runs), 2) if runs else None,
                               "accuracy_std": round(statistics.stdev(runs), 2) if len(runs) > 1 else 0.0})
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


# ---- summary files ----

def write_summary(out, summary):
    """summary.json, summary.md and the plots (when matplotlib is installed)."""
    from .plots import write_plots

    _write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write(out / "summary.md", markdown(summary))
    try:
        write_plots(summary, out)
    except ImportError:
        print("note: plots need matplotlib (pip install 'mlx-ttsi[eval]')", file=sys.stderr)


def _write(path, text):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def markdown(summary, sweep=True):
    """The summary as Markdown tables: benchmark x method, then (with `sweep`) the threshold sweep."""
    lines = ["| benchmark | method | accuracy (%) | rows | adapted | synthetic samples | yield | self-label acc. (%) "
             "| s/row |", "|---|---|---|---|---|---|---|---|---|"]
    for c in summary["table"]:
        accuracy = f"{c['accuracy']:.2f}" + (f" ± {c['accuracy_std']:.2f}" if c["seeds"] > 1 else "")
        rows = f"{c['rows']}" + (f" of {c['of']}" if c["rows"] < c["of"] else "")
        rows += f" ({c['errors']} not asked)" if c["errors"] else ""
        kept = "" if c.get("yield") is None else f"{100 * c['yield']:.0f}%"
        label = "" if c.get("label_accuracy") is None else f"{c['label_accuracy']:.2f}"
        lines.append(f"| {c['benchmark']} | {c['method']} | {accuracy} | {rows} | {100 * c['adapted']:.1f}% "
                     f"| {c['synthetic']:g} | {kept} | {label} | {c['seconds_per_row']:.2f} |")
    seeds = summary.get("seeds", [])
    spread = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines += ["", f"Accuracy in % ({spread}); synthetic samples: total per run; yield: examples kept / asked; "
              "self-label acc.: the grounded self-label's own accuracy (what the twins are made from). Scoring:"]
    lines += [f"- {bench}: {text}" for bench, text in summary["scoring"].items()]
    for s in summary["sweep"] if sweep else []:
        lines += ["", f"Threshold sweep, {s['benchmark']} / {s['method']} ({s['rows']} rows):", "",
                  "| tau | flagged (%) | accuracy (%) |", "|---|---|---|"]
        for p in s["points"]:
            accuracy = "n/a" if p["accuracy"] is None else f"{p['accuracy']:.2f}"
            lines.append(f"| {p['tau']:g} | {p['flagged']:.1f} | {accuracy} |")
    return "\n".join(lines) + "\n"

