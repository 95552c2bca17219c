"""How many gold argument values are spans of the input: the prior behind TT-SI's self-check.

    python bench/grounding_prior.py

For every gold call in the benchmark files (`../shared/benchmarks` or $MLX_TTSI_BENCHMARKS), each
string or number argument value (not enums or booleans) is counted as stated when it is a span of
the conversation (`grounding.grounded`: whole words, case and punctuation aside), per benchmark,
for required and optional arguments apart; optional arguments the gold call leaves out are counted too.
"""

import json
from collections import Counter

from mlx_ttsi.prompts import normalize_messages
from mlx_ttsi.self_check import context_text, grounded
from mlx_ttsi.tools import free_value, parse_tools

from _common import SEALTOOL

FILES = ("sealtool", "apibank_l1", "apibank_l2", "toolalpaca", "nexusraven")


def count(path):
    counts = Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        context = context_text(normalize_messages(row["messages"]))
        tools = {tool.name: tool for tool in parse_tools(row["tools"])}
        for call in row["answer"]:
            tool = tools.get(call["name"])
            if tool is None:  # a gold tool the row does not offer (counted apart)
                counts["gold tool not offered"] += 1
                continue
            for key, value in call["arguments"].items():
                if not free_value(tool.properties.get(key, {}), value):
                    continue
                kind = "required" if key in tool.required else "optional"
                counts[kind, grounded(value, context)] += 1
            counts["optional left out"] += sum(
                1 for key in tool.properties if key not in tool.required and key not in call["arguments"]
            )
    return counts


def main():
    print(f"{'benchmark':<12} {'required stated':>16} {'optional stated':>16} {'optional left out':>18}")
    total = Counter()
    for name in FILES:
        counts = count(SEALTOOL.with_name(f"{name}.jsonl"))
        total.update(counts)
        print(
            f"{name:<12} {_share(counts, 'required'):>16} {_share(counts, 'optional'):>16} "
            f"{counts['optional left out']:>18}"
        )
    print(
        f"{'all':<12} {_share(total, 'required'):>16} {_share(total, 'optional'):>16} {total['optional left out']:>18}"
    )
    print(f"gold calls whose tool the row does not offer (not counted): {total['gold tool not offered']}")


def _share(counts, kind):
    stated, all_ = counts[kind, True], counts[kind, True] + counts[kind, False]
    return f"{stated}/{all_} ({100 * stated / max(all_, 1):.0f}%)"


if __name__ == "__main__":
    main()
