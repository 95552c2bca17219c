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
from .methods import GOLD_FIELDS, GOLD_TWINS, METHODS, ORACLES, SEEDLESS, STAGES, TOGETHER, stages_of
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
    batch_rows: int = 1  # rows of one file answered side by side by methods that never train (Agent.ask_together)


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
                    plan.batch_rows,
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


def run_rows(agent, todo, path, max_calls, bar, examples, batch_rows=1):
    """Ask each (row, seed, method) and append its result line to `path` at once; with `batch_rows`,
    rows of one file whose methods never train are answered that many at a time, side by side."""
    appender = Appender(path)
    try:
        for group in batches(by_row(todo), batch_rows if hasattr(agent, "ask_together") else 1):
            if len(group) > 1:
                records = run_together(agent, group, max_calls)
            else:
                records = run_row(agent, *group[0], max_calls, examples, bar)
            for record in records:
                appender.write(record)
                bar.update()
    finally:
        appender.close()
        bar.close()


def batches(rows, size):
    """by_row's (row, seed, methods) as groups to run. With `size` above 1, a row's methods that train
    (and those their turn answers on the way, methods.stages_of) stay with their row, and the others
    are grouped: up to `size` consecutive rows of one file and seed with the same such methods."""
    if size <= 1:
        return [[entry] for entry in rows]
    groups, last = [], None
    for row, seed, methods in rows:
        alone, side = split_methods(methods)
        if alone:
            groups.append([(row, seed, alone)])
        if side:
            key = (row["benchmark"], seed, side)
            if last is not None and last[0] == key and len(last[1]) < size:
                last[1].append((row, seed, side))
            else:
                last = (key, [(row, seed, side)])
                groups.append(last[1])
    return groups


def split_methods(methods):
    """(the methods a row asks on its own, those that may be asked side by side with other rows'):
    the latter never train (methods.TOGETHER) and are not met inside the turn of one that does."""
    alone = [m for m in methods if METHODS[m][0] not in TOGETHER or m in ORACLES]
    met = next((stages_of(m) for m in alone if set(stages_of(m)) & set(methods)), ())
    return [m for m in methods if m in alone or m in met], [m for m in methods if m not in alone and m not in met]


def run_together(agent, group, max_calls):
    """The result lines of a group of rows (one file, seed and methods list), each method asked for
    all the rows side by side; the first method whose turn meets the others' answers answers for them
    too, as in run_row. Each line's seconds are its share of the group's."""
    _, seed, methods = group[0]
    scorer = getattr(agent, "likelihoods", None)
    done = set()
    for method, wanted in method_order(methods, done):
        asks = [ask_of(row, method, seed, max_calls, wanted) for row, _, _ in group]
        for ask, _ in asks:
            agent.warm(ask["tools"])
        started = time.perf_counter()
        try:
            results = agent.ask_together([a for a, _ in asks])
        except (RequestError, ToolsError):  # a row that cannot be read: each row asked alone, as run_row does
            for row, _, _ in group:
                yield from run_one(agent, row, method, seed, max_calls, GOLD_TWINS, wanted).values()
            done.update([method, *wanted])
            continue
        share = {"total": round((time.perf_counter() - started) / len(group), 3), "rows_together": len(group)}
        for (row, _, _), (ask, record), (answer, error) in zip(group, asks, results):
            if isinstance(error, (RequestError, ToolsError)):
                lines = {method: record | failed(error, share["total"])}
            elif error is not None:
                raise error
            else:
                gold = gold_likelihood(scorer, ask, row, answer) if scorer else None
                lines = answered_lines(row, method, record, answer, gold, wanted)
            for line in lines.values():
                line["timings"] = dict(share)
            yield from lines.values()
        done.update([method, *wanted])


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
    done = set()
    for method, wanted in method_order(methods, done):
        bar.set_postfix_str(f"{row['benchmark']} {method}")
        lines = run_one(agent, row, method, seed, max_calls, examples, wanted)
        done.update(lines)
        yield from lines.values()


def method_order(methods, done):
    """(method, the methods its turn answers on the way) in the order a row asks them: first the method
    whose turn meets the most of the others' answers (the first listed of those); a method in `done`
    (filled by the caller with what each turn answered) is skipped."""
    met = {m: len(set(stages_of(m)) & set(methods)) for m in methods}
    donors = [max(methods, key=met.get)] if any(met.values()) else []  # the turn that meets the most
    for method in donors + [m for m in methods if m not in donors]:
        if method not in done:
            yield method, [m for m in stages_of(method) if m in methods and m not in done]


def run_one(agent, row, method, seed, max_calls, examples, stages=()):
    """{method: result line}: the row asked with one method and seed, scored; with `stages` (methods
    whose answers its turn meets, methods.STAGES), their lines too, where the agent kept them.

    Only the oracle methods read the row's gold answer; every other method is asked with a copy
    of the row that has no gold fields. Each method starts from the cached tools prefix (computed
    before the clock starts), so methods are timed on equal terms whatever their order."""
    ask, record = ask_of(row, method, seed, max_calls, stages, examples)
    scorer = getattr(agent, "likelihoods", None)  # the gold answer's likelihood, scored after answering
    if scorer is not None and ask["force"] is not None:
        ask["keep_adapter"] = True
    agent.warm(ask["tools"])
    started = time.perf_counter()
    try:
        answer = agent.ask(**ask)
    except (RequestError, ToolsError) as error:  # this row cannot be asked (e.g. over the context): wrong
        return {method: record | failed(error, time.perf_counter() - started)}
    gold = gold_likelihood(scorer, ask, row, answer) if scorer else None
    return answered_lines(row, method, record, answer, gold, stages)


def ask_of(row, method, seed, max_calls, stages=(), examples=GOLD_TWINS):
    """(Agent.ask's keywords, the start of its result line) for one row, method and seed. Only the
    oracles' keywords hold the gold answer (examples made from it)."""
    mode, force, overrides = METHODS[method]
    inputs = {k: v for k, v in row.items() if k not in GOLD_FIELDS}
    request, messages = row_input(inputs)
    record = {"benchmark": row["benchmark"], "id": row["id"], "method": method, "seed": seed}
    ask = {
        "request": request,
        "tools": inputs["tools"],
        "messages": messages,
        "mode": mode,
        "force": force,
        "seed": seed,
        "max_calls": max_calls_for(inputs, max_calls),
        **overrides,
    }
    if method in ORACLES:
        ask["train_on"] = gold_examples(row, method, examples, seed)
    if stages:
        ask["stages"] = True
    return ask, record


def answered_lines(row, method, record, answer, gold, stages):
    """{method: result line} of an answer, and of the `stages` methods whose answers it met."""
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


def gold_likelihood(scorer, ask, row, answer):
    """{"base", "adapted"}: the gold answer's log-likelihood under the base weights and under the row's
    LoRA (None when it was not adapted), scored once the method has answered: it never sees the gold."""
    weights = getattr(answer, "adapter", None) if answer.adapted else None
    scored = scorer(
        ask["request"], tools=ask["tools"], messages=ask["messages"], calls=[row["answer"]], adapter_weights=weights
    )
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
