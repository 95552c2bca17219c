"""The benchmark scorers on hand-written rows: exact hits, normalised hits and near-misses."""

import json
import os
from pathlib import Path

from mlx_ttsi.evaluation.grading import canonical, gold_calls, is_correct, rule

import pytest


def row(benchmark, *answer, tools=None, meta=None):
    return {"benchmark": benchmark, "answer": list(answer), "tools": tools or [], "meta": meta or {}}


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


SEAL = row("sealtool", call("calculateNetIncome", revenue=0.29, expenses="40.7"))


@pytest.mark.parametrize(
    "predicted, correct",
    [
        ([call("calculateNetIncome", revenue=0.29, expenses="40.7")], True),
        ([call("calculateNetIncome", revenue="0.29", expenses=40.7)], True),  # numbers vs numeric strings
        ([call("calculateNetIncome", expenses=40.70, revenue=0.290)], True),  # argument order is free
        ([call("calculateNetIncome", revenue=0.29, expenses=40.71)], False),  # near-miss value
        ([call("calculateNetIncome", revenue=0.29)], False),  # missing argument
        ([call("calculateNetIncome", revenue=0.29, expenses="40.7", tax_rate=0.2)], False),  # extra argument
        ([call("calculateNetIncom", revenue=0.29, expenses="40.7")], False),  # near-miss name
        ([call("calculateNetIncome", revenue=0.29, expenses="40.7")] * 2, False),  # an extra call
        ([], False),
        ([{"name": "calculateNetIncome", "arguments": "revenue=0.29"}], False),  # malformed, no crash
        (None, False),
    ],
)
def test_sealtool_rule(predicted, correct):
    assert is_correct(SEAL, predicted) is correct


def test_integers_and_strings_of_integers_match_but_case_and_bools_count():
    gold = row("sealtool", call("getAnimalDentalHealth", age="30", cleaning_needed=True, animal_species="horse"))
    assert is_correct(gold, [call("getAnimalDentalHealth", age=30, cleaning_needed=True, animal_species=" horse ")])
    assert is_correct(gold, [call("getAnimalDentalHealth", age=30.0, cleaning_needed="true", animal_species="horse")])
    assert not is_correct(gold, [call("getAnimalDentalHealth", age=30, cleaning_needed=True, animal_species="Horse")])
    assert not is_correct(gold, [call("getAnimalDentalHealth", age=30, cleaning_needed=1, animal_species="horse")])
    assert not is_correct(gold, [call("getAnimalDentalHealth", age=31, cleaning_needed=True, animal_species="horse")])


def test_canonical_values():
    assert canonical("40.7") == canonical(40.7) and canonical("30") == canonical(30.0)
    assert canonical(True) != canonical(1) and canonical(False) != canonical(0)
    assert canonical(None) != canonical("None") and canonical("") != canonical(None)
    assert canonical("['John', 'Jane']") == canonical(["John", "Jane"]) == canonical('["John", "Jane"]')
    assert canonical(["John", "Jane"]) != canonical(["Jane", "John"])
    assert canonical({"a": "1", "b": [True]}) == canonical({"b": ["true"], "a": 1})
    assert canonical("[not a list") == ("string", "[not a list")


APIBANK = row("apibank_l1", call("AddMeeting", token="abc", attendees="['John Smith', 'Jane Doe']"))


def test_apibank_list_reprs_match_lists_in_order():
    assert is_correct(APIBANK, [call("AddMeeting", token="abc", attendees=["John Smith", "Jane Doe"])])
    assert is_correct(APIBANK, [call("AddMeeting", token="abc", attendees="['John Smith', 'Jane Doe']")])
    assert not is_correct(APIBANK, [call("AddMeeting", token="abc", attendees=["Jane Doe", "John Smith"])])
    assert not is_correct(APIBANK, [call("AddMeeting", token="abc", attendees=["John Smith"])])


NEXUS_TOOLS = [
    {
        "name": "searchCPE",
        "parameters": {
            "type": "object",
            "properties": {
                "keywordSearch": {"type": "string", "default": None},
                "limit": {"type": "integer", "default": None},
                "delay": {"type": "number", "default": 2},
                "cpeMatchString": {"type": "string"},
            },
        },
    }
]
NEXUS = row(
    "nexusraven",
    call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2),
    tools=NEXUS_TOOLS,
    meta={"arguments_with_defaults": {"keywordSearch": "Microsoft Exchange 2010", "limit": 2, "delay": 2}},
)


def test_nexusraven_fills_defaults_before_comparing():
    assert gold_calls(NEXUS)[0]["arguments"]["delay"] == 2
    assert is_correct(NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2)])
    assert is_correct(NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2, delay=2)])
    assert not is_correct(NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2, delay=None)])
    assert not is_correct(NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2, delay=5)])
    assert not is_correct(NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010")])  # limit left at None
    assert not is_correct(
        NEXUS, [call("searchCPE", keywordSearch="Microsoft Exchange 2010", limit=2, cpeMatchString="cpe:2.3")]
    )  # an argument the gold leaves out


def test_nexusraven_nested_dict_values():
    tools = [{"name": "vt_comment", "parameters": {"type": "object", "properties": {"ip": {}, "data": {}}}}]
    data = {"type": "comment", "attributes": {"text": "Clean IP #safe"}}
    gold = row(
        "nexusraven",
        call("vt_comment", ip="1.2.3.4", data=data),
        tools=tools,
        meta={"arguments_with_defaults": {"ip": "1.2.3.4", "data": data}},
    )
    assert is_correct(
        gold, [call("vt_comment", ip="1.2.3.4", data={"attributes": {"text": "Clean IP #safe"}, "type": "comment"})]
    )
    assert not is_correct(gold, [call("vt_comment", ip="1.2.3.4", data={"type": "comment", "attributes": {}})])


TOOLALPACA = row("toolalpaca_real", call("PublicHolidays", countryCode="JP"), call("PublicHolidays", countryCode="DE"))


def test_toolalpaca_needs_every_call_in_order():
    jp, de = call("PublicHolidays", countryCode="JP"), call("PublicHolidays", countryCode="DE")
    assert is_correct(TOOLALPACA, [jp, de])
    assert not is_correct(TOOLALPACA, [de, jp])  # order counts
    assert not is_correct(TOOLALPACA, [jp])  # a missing call
    assert not is_correct(TOOLALPACA, [jp, de, de])  # an extra call


def test_every_benchmark_has_a_documented_rule():
    for name in ("sealtool", "nexusraven", "apibank_l1", "apibank_l2", "toolalpaca_real"):
        assert rule(name) != rule("something-else")


BENCHMARKS = Path(os.environ.get("MLX_TTSI_BENCHMARKS", Path(__file__).parents[2] / "shared" / "benchmarks"))


@pytest.mark.skipif(
    not BENCHMARKS.is_dir(),
    reason="the benchmark files are not beside the checkout (../shared/benchmarks) nor in MLX_TTSI_BENCHMARKS",
)
def test_every_gold_answer_scores_correct_on_the_real_files():
    for path in sorted(BENCHMARKS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            assert is_correct(data, data["answer"]), (path.name, data["id"])
            if len(data["answer"]) > 1:
                assert not is_correct(data, data["answer"][::-1][:1]), (path.name, data["id"])
