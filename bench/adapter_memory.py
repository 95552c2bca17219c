"""Adapter memory benchmark: latency and accuracy of repeated and paraphrased TT-SI requests.

    python bench/adapter_memory.py                 # embedded model, 2 request pairs, ~5 minutes on 2 CPU cores
    python bench/adapter_memory.py --pairs 1 --json runs/memory.json

For each pair (a request and a paraphrase of it, with the gold call) it sends the request, the same
request again and the paraphrase, all with ttsi.mode "ttsi" (always adapt), first to a server
without memory, then to one with `--memory` (an empty temporary store). It prints each latency,
what the memory did, the similarity of the reused entry, and whether the call is right.
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import TOOLS, post  # noqa: E402

PAIRS = [
    (
        "Will it rain in Lisbon tomorrow? Give me the temperature in celsius.",
        "Is rain expected in Lisbon tomorrow? Tell me the temperature in celsius.",
        {"name": "get_weather", "arguments": {"city": "Lisbon", "day": "tomorrow", "unit": "celsius"}},
    ),
    (
        "How much is 250 US dollars in euros?",
        "How many euros would 250 US dollars get me?",
        {"name": "convert_currency", "arguments": {"amount": 250, "from_currency": "USD", "to_currency": "EUR"}},
    ),
    (
        "Set an alarm at 06:30 labelled gym.",
        "Please set an alarm for 06:30 with the label gym.",
        {"name": "set_alarm", "arguments": {"time": "06:30", "label": "gym"}},
    ),
]


def run(agent, memory, pairs):
    from mlx_ttsi.evaluation.grading import is_correct
    from mlx_ttsi.serve.http import make_server

    server = make_server(agent, "127.0.0.1", 0, memory=memory, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    try:
        for query, paraphrase, gold in pairs:
            for kind, text in (("first", query), ("repeat", query), ("paraphrase", paraphrase)):
                body = {"messages": [{"role": "user", "content": text}], "tools": TOOLS, "ttsi": {"mode": "ttsi"}}
                seconds, data = post(server.url, body)
                calls = [
                    {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                    for c in data["choices"][0]["message"].get("tool_calls") or []
                ]
                ttsi = data["ttsi"]
                rows.append(
                    {
                        "kind": kind,
                        "request": text,
                        "seconds": round(seconds, 2),
                        "memory": ttsi.get("memory", "off"),
                        "similarity": ttsi.get("similarity"),
                        "name_ok": bool(calls) and calls[0]["name"] == gold["name"],
                        "correct": is_correct({"benchmark": "example", "answer": [gold]}, calls),
                        "calls": calls,
                        "timings": ttsi["timings"],
                        "memory_seconds": ttsi.get("memory_seconds"),
                    }
                )
    finally:
        server.shutdown()
        server.server_close()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=2, help=f"request pairs to run (1..{len(PAIRS)})")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.serve.adapter_memory import AdapterMemory
    from mlx_ttsi.settings import LoRASettings, Settings

    agent = Agent.load(args.model, settings=Settings(lora=LoRASettings(epochs=args.epochs)))
    pairs = PAIRS[: args.pairs]
    results = {"without memory": run(agent, None, pairs)}
    with tempfile.TemporaryDirectory() as root:
        results["with memory"] = run(agent, AdapterMemory.for_agent(agent, root=root), pairs)

    print(f"{'config':<16}{'request':<12}{'s':>7}  {'memory':<8}{'sim':>7}  name  exact  call")
    for config, rows in results.items():
        for r in rows:
            sim = f"{r['similarity']:.3f}" if r["similarity"] is not None else "-"
            call = json.dumps(r["calls"][0] if r["calls"] else None)
            print(
                f"{config:<16}{r['kind']:<12}{r['seconds']:>7}  {r['memory']:<8}{sim:>7}  "
                f"{'yes' if r['name_ok'] else 'no':<6}{'yes' if r['correct'] else 'no':<7}{call}"
            )
    print()
    for config, rows in results.items():
        means = {
            kind: statistics.mean(r["seconds"] for r in rows if r["kind"] == kind)
            for kind in ("first", "repeat", "paraphrase")
        }
        exact = sum(r["correct"] for r in rows)
        names = sum(r["name_ok"] for r in rows)
        print(
            f"{config}: mean s first {means['first']:.2f}, repeat {means['repeat']:.2f}, "
            f"paraphrase {means['paraphrase']:.2f}; right tool {names}/{len(rows)}, exact call {exact}/{len(rows)}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
