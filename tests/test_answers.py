"""The `--json` answers of fixed requests on both embedded models, as recorded by tests/answers.py
(marker `model`): a change that means to keep behaviour, such as a refactor, keeps them."""

import json
import math

import pytest
from answers import CASES, RECORDED, answer_of

pytestmark = pytest.mark.model


def same(got, want):
    """Equal, floats up to 1e-3 (another BLAS may sum in another order)."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        return math.isclose(got, want, abs_tol=1e-3)
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return got == want


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RECORDED.read_text())


@pytest.mark.parametrize("model, rid, mode", CASES, ids=[" ".join(case) for case in CASES])
def test_the_answer_is_the_recorded_one(model, rid, mode, recorded, request):
    agent = request.getfixturevalue("embedded_agent" if model == "smollm2-135m" else "qwen_agent")
    got = answer_of(agent, rid, mode)
    want = recorded[f"{model} {rid} {mode}"]
    assert same(got, want), {k: (got[k], want[k]) for k in want if not same(got[k], want[k])}


def test_the_same_comparison_fails_on_a_changed_answer(recorded):
    want = recorded["smollm2-135m alarm check"]
    changed = json.loads(json.dumps(want))
    changed["tool_calls"][0]["arguments"]["time"] = "07:16"
    assert same(want, want) and not same(changed, want)
    assert not same({**want, "uncertainty": want["uncertainty"] + 0.01}, want)
