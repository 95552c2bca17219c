"""How often the next call is one that fetches a value another call needs: the prior behind the
self-check's dependency rule (dependencies.py), read off the gold answers without a model.

    python bench/dependency_prior.py

For every row of the benchmark files (`../shared/benchmarks` or $MLX_TTSI_BENCHMARKS) whose tools say
what they return, per benchmark:
- `gold fetches a needed value`: the gold call is the tool the rule would call first for a call of
  some offered tool (`needed_provider`: it returns and names a value that tool requires, and no tool
  returning it has been called yet);
- `gold passes it, no provider called`: the gold call passes such a value while no tool returning it
  has been called (`needed_provider` fires on the gold call itself), and `...stated`: of those, the
  ones whose conversation states the value (where `supplies` keeps the call: the rule stays out).
"""

import json
from collections import Counter

from mlx_ttsi.dependencies import needed_provider
from mlx_ttsi.prompts import normalize_messages
from mlx_ttsi.self_check import calls_made, context_text, stated_in
from mlx_ttsi.tools import parse_tools

from _common import SEALTOOL

FILES = ("sealtool", "apibank_l1", "apibank_l2", "toolalpaca", "nexusraven")


def count(path):
    counts = Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        tools = parse_tools(row["tools"])
        if not any(tool.returns for tool in tools):
            continue
        counts["rows whose tools say what they return"] += 1
        messages = normalize_messages(row["messages"])
        made, gold = calls_made(messages), row["answer"][:1]
        # the providers the rule would call first for a call of each offered tool
        providers = [needed_provider([{"name": tool.name, "arguments": {}}], tools, made) for tool in tools]
        if gold and gold[0]["name"] in {provider.name for _, provider in filter(None, providers)}:
            counts["gold fetches a needed value"] += 1
        dependency = needed_provider(gold, tools, made)
        if dependency:
            counts["gold passes it, no provider called"] += 1
            value = gold[0]["arguments"].get(dependency[0])
            counts["gold passes it, no provider called, stated"] += bool(stated_in(value, context_text(messages)))
    return counts


def main():
    print(
        "| benchmark | rows whose tools say what they return | gold fetches a needed value | gold passes it, no provider called | of those, stated |"
    )
    print("|---|---|---|---|---|")
    for name in FILES:
        counts = count(SEALTOOL.parent / f"{name}.jsonl")
        print(
            f"| {name} | {counts['rows whose tools say what they return']} | {counts['gold fetches a needed value']} "
            f"| {counts['gold passes it, no provider called']} | {counts['gold passes it, no provider called, stated']} |"
        )


if __name__ == "__main__":
    main()
