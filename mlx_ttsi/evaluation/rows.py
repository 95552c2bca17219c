"""Benchmark rows: loaded from JSONL files and checked, selected, and turned into what the agent is asked."""

import json
import random
from pathlib import Path

from ..errors import DataError
from ..prompts import normalize_messages

MULTI_CALL = {"toolalpaca": 5}  # fixed max_calls for benchmarks with multi-call rows; 1 elsewhere


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
    """The most calls an answer to `row` may have: `override`, else the benchmark's (MULTI_CALL, else 1)."""
    if override:
        return override
    return next((n for prefix, n in MULTI_CALL.items() if row["benchmark"].startswith(prefix)), 1)


def gold_examples(row, method, k, seed):
    """The oracle ablations' training examples: the row's own gold answer, or K twins of it."""
    request, messages = row_input(row)
    messages = messages or [{"role": "user", "content": request}]
    if method == "oracle":
        return [
            {
                "messages": messages,
                "request": request or messages[-1]["content"],
                "calls": row["answer"],
                "source": "gold",
            }
        ]
    from ..tools import parse_tools
    from ..twins import twins

    return twins(normalize_messages(messages), row["answer"], parse_tools(row["tools"]), k, seed, source="gold twin")
