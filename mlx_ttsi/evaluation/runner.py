"""Offline evaluation: run methods over benchmark rows, keep every result as it comes, summarise.

    files = load_rows(["../shared/benchmarks/sealtool.jsonl"])
    plan = EvalPlan(select(files, limit=20), methods=["base", "ttsi"], seeds=[0])
    summary = evaluate(plan, "runs/x", agent=agent)

The out dir holds results.jsonl (a line per row, method and seed; a rerun resumes), config.json, summary.json,
summary.md and PNG plots. Under `mlx.launch` rank R of N runs the rows i with i % N == R into
results.rankR.jsonl; rank 0 gathers every rank's lines (ranks.py) into results.jsonl and writes the
summary, which depends only on the results, never on how they were split. Rows are in rows.py,
methods in methods.py, results files in results.py, the summary in summary.py and its files in
report.py; the command and its files are described in docs/eval.md.
"""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError, RequestError, ToolsError
from .grading import is_correct
from .methods import GOLD_FIELDS, GOLD_TWINS, METHODS, ORACLES, SEEDLESS, STAGES, stages_of
from .ranks import launched_ranks
from .report import write_summary
from .results import RESULTS, Appender, check_config, key, read_all, read_records, write_records, writing
from .rows import gold_examples, max_calls_for, row_input
from .summary import summarize

DEFAULT_SWEEP = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
BAR = "{l_bar}{bar:20}| {n_fmt}/{total_fmt} elapsed {elapsed} ETA {remaining}{postfix}"


@dataclass
class EvalPlan:
    """What an eval run does: its rows, methods, seeds and sweep (turn.Plan is one request's plan)."""

    rows: list  # the selected rows, in order
    methods: list
    seeds: list = field(default_factory=lambda: [0])
    taus: tuple = DEFAULT_SWEEP
    max_calls: int = None  # None: per benchmark (benchmark_rows.MULTI_CALL, else 1)
    settings: dict = field(default_factory=dict)  # what the results depend on; kept in config.json


def parse_seeds(values):
    """Seeds from repeated and/or comma-separated values: ("0", "1,2") -> [0, 1, 2]."""
    try:
        seeds = [int(s) for value in values for s in str(value).split(",") if s.strip()]
    except ValueError:
        raise DataError(f"seeds must be integers, got {', '.join(map(str, values))}") from None
    return list(dict.fromkeys(seeds)) or [0]


def parse_taus(text):
    """The threshold sweep's taus from a comma-separated list, sorted: "0.5,0.1" -> (0.1, 0.5)."""
    try:
        taus = sorted({float(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise DataError(f"threshold sweep must be comma-separated numbers, got {text!r}") from None
    if not taus or not all(0 <= t <= 1 for t in taus):
        raise DataError("threshold sweep values must be between 0 and 1")
    return tuple(taus)


# ---- running, on one process or as one rank of several (see ranks.py) ----


def evaluate(plan, out, agent=None, load_agent=None, progress=True, ranks=None):
    """Run what is missing of this rank's rows, then (rank 0) merge and summarise.

    `agent` answers the rows (anything with Agent.ask); `load_agent` makes one only when there is
    work left, so a finished run is re-summarised without loading a model. Returns the summary on
    rank 0, None on the other ranks."""
    out = Path(out)
    ranks = ranks or launched_ranks()
    own = out / (RESULTS if ranks.size == 1 else f"results.rank{ranks.rank}.jsonl")
    rewritten = [RESULTS] if ranks.rank == 0 and ranks.size > 1 else []  # rank 0 merges into it
    try:
        out.mkdir(parents=True, exist_ok=True)
        with writing(out, [own.name, *rewritten]):
            check_config(out, plan.settings)
            todo = missing(plan, out, ranks)
            if todo:
                run_rows(
                    agent or load_agent(),
                    todo,
                    own,
                    plan.max_calls,
                    progress_bar(len(todo), ranks, progress),
                    plan.settings.get("examples") or GOLD_TWINS,
                )
            gathered = ranks.gather(read_records(own) if ranks.size > 1 else [])
            return finish(plan, out, gathered) if ranks.rank == 0 else None
    finally:
        ranks.close()


def missing(plan, out, ranks):
    """This rank's (row, seed, method) runs that have no result line in `out` yet (seedless methods once)."""
    done = {key(r) for r in read_all(out)}
    mine = [row for index, row in enumerate(plan.rows) if index % ranks.size == ranks.rank]
    return [
        (row, seed, method)
        for row in mine
        for seed in plan.seeds
        for method in plan.methods
        if (seed == plan.seeds[0] or method not in SEEDLESS)
        if (row["benchmark"], row["id"], method, seed) not in done
    ]


def progress_bar(total, ranks, enabled=True):
    """A bar on stderr: runs done, elapsed and ETA, the rank (when several) and the benchmark and method running."""
    label = f"rank {ranks.rank}/{ranks.size}" if ranks.size > 1 else None
    return tqdm(total=total, desc=label, file=sys.stderr, bar_format=BAR, disable=not enabled)


def run_rows(agent, todo, path, max_calls, bar, examples):
    """Ask each (row, seed, method) and append its result line to `path` at once."""
    appender = Appender(path)
    try:
        for row, seed, methods in by_row(todo):
            for record in run_row(agent, row, seed, methods, max_calls, examples, bar):
                appender.write(record)
                bar.update()
    finally:
        appender.close()
        bar.close()


def by_row(todo):
    """todo's (row, seed, method) runs as (row, seed, [methods]), in order."""
    groups = {}
    for row, seed, method in todo:
        groups.setdefault((row["benchmark"], row["id"], seed), (row, seed, []))[2].append(method)
    return list(groups.values())


def run_row(agent, row, seed, methods, max_calls, examples, bar):
    """The result lines of one row and seed, as they come. The first method whose turn meets the
    others' answers on its way (methods.stages_of: base and self-label inside TT-SI's) answers for them
    too, so the row is decoded and checked once; a method it did not answer for (an agent that keeps
    no stages) is asked."""
    donors = [m for m in methods if set(stages_of(m)) & set(methods)]
    done = set()
    for method in donors[:1] + [m for m in methods if m not in donors[:1]]:
        if method in done:
            continue
        bar.set_postfix_str(f"{row['benchmark']} {method}")
        wanted = [m for m in stages_of(method) if m in methods and m not in done]
        lines = run_one(agent, row, method, seed, max_calls, examples, wanted)
        done.update(lines)
        yield from lines.values()


def run_one(agent, row, method, seed, max_calls, examples, stages=()):
    """{method: result line}: the row asked with one method and seed, scored; with `stages` (methods
    whose answers its turn meets, methods.STAGES), their lines too, where the agent kept them.

    Only the oracle methods read the row's gold answer; every other method is asked with a copy
    of the row that has no gold fields. Each method starts from the cached tools prefix (computed
    before the clock starts), so methods are timed on equal terms whatever their order."""
    mode, force, overrides = METHODS[method]
    inputs = {k: v for k, v in row.items() if k not in GOLD_FIELDS}
    request, messages = row_input(inputs)
    record = {"benchmark": row["benchmark"], "id": row["id"], "method": method, "seed": seed}
    options = {"train_on": gold_examples(row, method, examples, seed)} if method in ORACLES else {}
    if stages:
        options["stages"] = True
    scorer = getattr(agent, "likelihoods", None)  # the gold answer's likelihood, scored after answering
    if scorer is not None and force is not None:
        options["keep_adapter"] = True
    agent.warm(inputs["tools"])
    started = time.perf_counter()
    try:
        answer = agent.ask(
            request,
            tools=inputs["tools"],
            messages=messages,
            mode=mode,
            force=force,
            seed=seed,
            max_calls=max_calls_for(inputs, max_calls),
            **overrides,
            **options,
        )
    except (RequestError, ToolsError) as error:  # this row cannot be asked (e.g. over the context): wrong
        return {method: record | failed(error, time.perf_counter() - started)}
    gold = gold_likelihood(scorer, request, inputs, messages, row, answer) if scorer else None
    met = getattr(answer, "stages", None) or {}
    lines = {method: record | scored(row, answer, gold)}
    for other in stages:
        if STAGES[other] in met:  # an answer met on the way: not adapted, so the gold's base likelihood
            unadapted = gold and {"base": gold["base"], "adapted": None}
            lines[other] = record | {"method": other, "shared": method} | scored(row, met[STAGES[other]], unadapted)
    return lines


def failed(error, seconds):
    """The result fields of a row that could not be asked: wrong, with the error."""
    return {
        "prediction": [],
        "correct": False,
        "uncertainty": None,
        "uncertain": None,
        "threshold": None,
        "adapted": False,
        "synthetic": 0,
        "rejected": 0,
        "asked": 0,
        "loss": None,
        "timings": {"total": round(seconds, 3)},
        "error": str(error),
    }


def scored(row, answer, gold):
    """The result fields of an answer to `row`, scored against its gold answer."""
    u = answer.uncertainty
    label = getattr(answer, "label", None)
    return {
        "prediction": answer.tool_calls,
        "correct": is_correct(row, answer.tool_calls),
        "uncertainty": u.score if u else None,
        "uncertain": u.uncertain if u else None,
        "threshold": u.threshold if u else None,
        "parts": {
            "name": getattr(u, "name_score", None),
            "arguments": getattr(u, "argument_score", None),
            "label_agrees": getattr(u, "label_agrees", None),
        }
        if u
        else None,
        "adapted": bool(answer.adapted),
        "note": getattr(answer, "note", None),
        "label": label,
        "label_correct": is_correct(row, label) if label is not None else None,
        "unchecked": getattr(answer, "unchecked", None),  # the adapted calls before --check-after changed them
        "synthetic": len(answer.synthetic or []),
        "asked": getattr(answer, "asked", len(answer.synthetic or [])),
        "examples": [
            {"request": e.get("request"), "calls": e.get("calls"), "source": e.get("source")}
            for e in answer.synthetic or []
        ],
        "rejected": sum((answer.rejected or {}).values()),
        "rejections": dict(answer.rejected or {}),
        "loss": (getattr(answer, "training", None) or {}).get("loss"),
        "timings": answer.timings,
        "error": None,
        "gold_likelihood": gold,
    }


def gold_likelihood(scorer, request, inputs, messages, row, answer):
    """{"base", "adapted"}: the gold answer's log-likelihood under the base weights and under the row's
    LoRA (None when it was not adapted), scored once the method has answered: it never sees the gold."""
    weights = getattr(answer, "adapter", None) if answer.adapted else None
    scored = scorer(request, tools=inputs["tools"], messages=messages, calls=[row["answer"]], adapter_weights=weights)
    return {"base": scored["base"][0], "adapted": scored["adapted"][0] if scored["adapted"] else None}


def finish(plan, out, gathered=()):
    """Merge every rank's lines (files in `out` and `gathered` lists) into results.jsonl, summarise."""
    records = read_all(out, gathered)
    write_records(out / RESULTS, records)
    for path in out.glob("results.rank*.jsonl"):
        path.unlink(missing_ok=True)
    summary = summarize(plan, records)
    write_summary(out, summary)
    return summary
