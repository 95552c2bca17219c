"""How well each signal predicts that the base answer is wrong: AUROC, and precision and recall at the
rate the gate fires, from recorded eval lines (nothing is rerun).

    python bench/gate_signals.py runs/q-calls10 [runs/q-twins10 ...] [--tau 0.5]

A row needs a `base` line (whether the base answer is right). Signals, each "higher = more doubt":
- name margin, argument margin, u (min of both, 0 when the self-label disagrees): 1 - margin, from
  the self-label line (or any line that scored the row);
- self-check disagrees: the self-label differs from the base answer;
- adapted answer differs: a TT-SI line's answer (first found of --adapted methods) differs from base;
- examples not known: the share of a calls-first line's verified examples that the base model does
  not already say back (kept / (kept + "already says it")).
AUROC 0.5 is chance. "fires" uses each signal's own cut: margins below --tau, the others above 0.
"""

import argparse
import json
from pathlib import Path

KNOWN = "the base model already says it"


def lines(folders):
    found = {}
    for folder in folders:
        for text in (Path(folder) / "results.jsonl").read_text().splitlines():
            r = json.loads(text)
            if r["seed"] == 0:
                found.setdefault((r["benchmark"], r["id"]), {})[r["method"]] = r
    return found


def auroc(scores, wrong):
    """Probability that a wrong row scores above a right one (ties count half)."""
    pos = [s for s, w in zip(scores, wrong) if w]
    neg = [s for s, w in zip(scores, wrong) if not w]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def signals(row, adapted_methods):
    """{signal: doubt} for one row's lines."""
    base = row["base"]
    scored = row.get("self-label") or next(
        (r for r in row.values() if (r.get("parts") or {}).get("label_agrees") is not None), None
    )
    out = {}
    if scored and scored.get("parts"):
        parts = scored["parts"]
        out["name margin"] = 1 - parts["name"] if parts.get("name") is not None else None
        out["argument margin"] = 1 - parts["arguments"] if parts.get("arguments") is not None else None
        out["u"] = 1 - scored["uncertainty"] if scored.get("uncertainty") is not None else None
        if scored.get("label") is not None:
            out["self-check disagrees"] = float(scored["label"] != base["prediction"])
    for method in adapted_methods:
        line = row.get(method)
        if line:
            out["adapted answer differs"] = float(line["prediction"] != base["prediction"])
            known = (line.get("rejections") or {}).get(KNOWN, 0)
            if line.get("examples") is not None and (line["synthetic"] + known):
                out["examples not known"] = line["synthetic"] / (line["synthetic"] + known)
            break
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--adapted", default="ttsi-calls-all,ttsi-verified-all,ttsi-all")
    args = parser.parse_args()
    rows = [r for r in lines(args.runs).values() if "base" in r]
    table = {}
    for row in rows:
        wrong = not row["base"]["correct"]
        for name, value in signals(row, args.adapted.split(",")).items():
            if value is not None:
                table.setdefault(name, []).append((value, wrong))
    print(f"{len(rows)} rows with a base answer, {sum(not r['base']['correct'] for r in rows)} of them wrong\n")
    print("| signal | rows | AUROC | fires on | precision | recall |\n|---|---|---|---|---|---|")
    for name, pairs in table.items():
        values, wrong = [v for v, _ in pairs], [w for _, w in pairs]
        cut = 1 - args.tau if "margin" in name or name == "u" else 0.0
        fires = [v > cut for v in values]
        hits = sum(f and w for f, w in zip(fires, wrong))
        area = auroc(values, wrong)
        print(
            f"| {name} | {len(pairs)} | {'' if area is None else f'{area:.2f}'} | {sum(fires)} "
            f"| {hits / sum(fires) if sum(fires) else 0:.2f} | {hits / sum(wrong) if sum(wrong) else 0:.2f} |"
        )


if __name__ == "__main__":
    main()
