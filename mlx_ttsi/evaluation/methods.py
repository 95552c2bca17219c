"""The methods `eval` compares: how each one asks the agent, and which of them see the gold answer."""

from ..errors import DataError
from ..settings import default

# eval method -> (agent mode, force, settings it overrides): gated methods adapt only on uncertain rows,
# as in the paper; "-all" ones on every row. oracle and oracle-twin are ceilings that read the row's gold
# answer (see rows.gold_examples); they exist only here, and no other method is ever given the gold answer.
# ttsi, ttd, ticl and their "-all" forms run as the modes do by default (the adapted answer self-checked,
# --check-after); the baselines and ablations below say check_after themselves, so they keep their meaning.
UNCHECKED = {"check_after": False}
# the paper's TT-SI: K 1, lr 1e-4, 5 epochs, no check
PAPER = {"examples_from": "paper", "examples": 1, "learning_rate": 1e-4, **UNCHECKED}
METHODS = {
    "base": ("base", None, {}),
    "ttsi": ("ttsi", False, {}),
    "ttd": ("ttd", False, {}),
    "ticl": ("ticl", False, {}),
    "ttsi-all": ("ttsi", True, {}),
    "ttd-all": ("ttd", True, {}),
    "self-label": ("check", None, {}),
    "plan": ("plan", None, UNCHECKED),  # the plan line, then the call as written
    "plan-checked": ("plan", None, {"check_after": True}),  # the call after the plan line, self-checked
    "oracle": ("ttsi", True, UNCHECKED),
    "oracle-twin": ("ttsi", True, UNCHECKED),
    # where the examples come from (--examples-from) and which are kept (--keep), each on every row
    "ttsi-calls-all": ("ttsi", True, {"examples_from": "calls", **UNCHECKED}),
    "ttsi-anchored-all": ("ttsi", True, {"examples_from": "calls", "keep": "anchored", **UNCHECKED}),
    # the adapted answer self-checked too (--check-after)
    "ttsi-checked-all": ("ttsi", True, {"examples_from": "calls", "keep": "anchored", "check_after": True}),
    "ttd-checked-all": ("ttd", True, {"check_after": True}),
    # the same verified examples shown in the prompt instead of trained on (TT-ICL), the answer checked too
    "ticl-checked-all": ("ticl", True, {"examples_from": "calls", "keep": "anchored", "check_after": True}),
    "ttsi-verified-all": ("ttsi", True, {"examples_from": "calls", "keep": "verified", **UNCHECKED}),
    "ttsi-requests-all": ("ttsi", True, {"examples_from": "requests", "keep": "verified", **UNCHECKED}),
    "ttsi-twins-all": ("ttsi", True, {"examples_from": "twins", **UNCHECKED}),
    "ttsi-twins": ("ttsi", False, {"examples_from": "twins", **UNCHECKED}),
    "ttsi-paper": ("ttsi", False, PAPER),
    "ttsi-paper-all": ("ttsi", True, PAPER),
    "ttsi-paper-checked-all": ("ttsi", True, {**PAPER, "check_after": True}),  # its answer self-checked too
    # the adapted answer checked by the base weights (--check-weights base)
    "ttsi-paper-basecheck-all": ("ttsi", True, {**PAPER, "check_after": True, "check_weights": "base"}),
    "ttd-basecheck-all": ("ttd", True, {"check_after": True, "check_weights": "base"}),
}
ORACLES = ("oracle", "oracle-twin")
TOGETHER = ("base", "check", "plan")  # modes that never train: eval --batch-rows answers their rows side by side
GOLD_TWINS = 3  # K twins of the gold call for oracle-twin when the run's settings give no K
GOLD_FIELDS = ("answer", "meta")  # what a method other than an oracle never sees
SEEDLESS = (
    "base",
    "self-label",
    "plan",
    "plan-checked",
)  # greedy and never adapted: the seed changes nothing, so it runs with the first seed only
# A method's turn meets, on its way, the answers of base (the decoded answer) and, when it self-checks,
# of self-label (the checked one): Answer.stages. Eval takes those methods' answers from it, so a row
# is decoded and checked once, unless the method overrides a setting that acts before the check.
STAGES = {"base": "base", "self-label": "check"}  # eval method -> the mode whose stage answers for it
AFTER_CHECK = {
    "examples_from",
    "keep",
    "check_after",
    "check_weights",
    "examples",
    "learning_rate",
}  # settings read after it


def stages_of(method):
    """The eval methods whose answers a turn of `method` meets on its way ((), ("base",) or both)."""
    mode, _, overrides = METHODS[method]
    if method in ORACLES or mode in ("base", "plan") or set(overrides) - AFTER_CHECK:
        return ()
    checks = mode in ("ttsi", "ticl") or (mode == "ttd" and overrides.get("check_after", default("check_after")))
    return ("base", "self-label") if checks else ("base",)


ADAPTIVE = ("ttsi", "ttd", "ticl", "ttsi-twins", "ttsi-paper")  # methods the threshold sweep is computed for


def parse_methods(text):
    """Method names from a comma-separated list, checked, duplicates dropped: "base,ttsi" -> ["base", "ttsi"]."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise DataError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if not methods:
        raise DataError("no methods given")
    return list(dict.fromkeys(methods))
