"""The `--json` answers of a few fixed requests on the embedded models, recorded once
(`python tests/answers.py`, written to tests/fixtures/answers.json) and compared by
tests/test_answers.py: a change meant to keep behaviour (a refactor) must leave them as they are."""

import json
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = FIXTURES / "answers.json"
EXAMPLE_TOOLS = Path(__file__).parents[1] / "mlx_ttsi" / "examples" / "tools.json"
ALARM = "Wake me up at 07:15 tomorrow, label it gym."  # the README's (make run) request
# (model, request id, mode): every stage of the request path, on both embedded models
CASES = [
    *[("smollm2-135m", "alarm", mode) for mode in ("base", "check", "plan", "ttsi")],
    ("smollm2-135m", "inbox", "check"),
    ("qwen2.5-coder-0.5b", "song", "check"),
    ("qwen2.5-coder-0.5b", "flight", "ttsi"),  # trains a LoRA (on every verified example: TTSI_KEEP)
]
TTSI_KEEP = "verified"  # the default keeps only examples new to the model, and Qwen knows these dates
COMPARED = ("answer", "tool_calls", "adapted", "method", "label", "synthetic", "rejected", "note", "asked")


@cache
def requests():
    """{id: (request, tools)}: the project's own fixture requests and the README's."""
    rows = [json.loads(line) for line in (FIXTURES / "requests.jsonl").read_text().splitlines() if line.strip()]
    found = {row["id"]: (row["request"], row["tools"]) for row in rows}
    found["alarm"] = (ALARM, json.loads(EXAMPLE_TOOLS.read_text()))
    return found


def answer_of(agent, rid, mode):
    """What a user relies on in one `--json` answer: the calls, how they were found, the uncertainty,
    the training's steps and loss (timings left out)."""
    request, tools = requests()[rid]
    ttsi = {"force": True, "keep": TTSI_KEEP} if mode == "ttsi" else {}
    data = agent.ask(request, tools=tools, mode=mode, **ttsi).as_dict()
    kept = {k: data[k] for k in COMPARED}
    kept["uncertainty"] = data["uncertainty"]["score"]
    kept["training"] = {k: data["training"][k] for k in ("steps", "loss")} if data["training"] else None
    return kept


def record():
    from mlx_ttsi.agent import Agent

    answers, agents = {}, {}
    for model, rid, mode in CASES:
        agent = agents.get(model) or agents.setdefault(model, Agent.load(model))
        answers[f"{model} {rid} {mode}"] = answer_of(agent, rid, mode)
        print(model, rid, mode, answers[f"{model} {rid} {mode}"]["tool_calls"], flush=True)
    RECORDED.write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    import mlx_ttsi  # noqa: F401  (OpenBLAS before mlx)

    record()
