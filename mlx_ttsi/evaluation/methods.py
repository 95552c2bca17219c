"""The methods `eval` compares: how each one asks the agent, and which of them see the gold answer."""

from ..errors import DataError

# eval method -> (agent mode, force): gated methods adapt only on uncertain rows, as in the paper.
# oracle and oracle-twin are ceilings that read the row's gold answer (see benchmark_rows.gold_examples);
# they exist only here, and no other method is ever given the gold answer.
METHODS = {"base": ("base", None), "ttsi": ("ttsi", False), "ttd": ("ttd", False), "ticl": ("ticl", False),
           "ttsi-all": ("ttsi", True), "self-label": ("check", None), "plan": ("plan", None), "oracle": ("ttsi", True), "oracle-twin": ("ttsi", True)}
ORACLES = ("oracle", "oracle-twin")
GOLD_TWINS = 3  # K twins of the gold call for oracle-twin when the run's settings give no K
GOLD_FIELDS = ("answer", "meta")  # what a method other than an oracle never sees
SEEDLESS = ("base", "self-label", "plan")  # greedy and never adapted: the seed changes nothing, so it runs with the first seed only
ADAPTIVE = ("ttsi", "ttd", "ticl")  # methods the threshold sweep is computed for


def parse_methods(text):
    """Method names from a comma-separated list, checked, duplicates dropped: "base,ttsi" -> ["base", "ttsi"]."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise DataError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if not methods:
        raise DataError("no methods given")
    return list(dict.fromkeys(methods))
