"""End to end on the embedded SmolLM2 model (marker `model`; `make test` runs them)."""

import json

import pytest
from click.testing import CliRunner

from mlx_ttsi.tools import check_call, parse_tools

from conftest import embedded_available

pytestmark = pytest.mark.model
BENCHMARK = "../shared/benchmarks/sealtool.jsonl"


def sealtool_row(index):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / BENCHMARK
    if not path.exists():
        pytest.skip(f"{BENCHMARK} not present beside the checkout")
    with open(path) as f:
        for i, line in enumerate(f):
            if i == index:
                return json.loads(line)


def test_ttsi_ask_on_a_sealtool_request(embedded_agent):
    row = sealtool_row(1)
    answer = embedded_agent.ask(row["query"], tools=row["tools"], mode="ttsi")
    assert answer.adapted is True
    assert answer.tool_calls and check_call(answer.tool_calls[0], parse_tools(row["tools"])) is None
    assert answer.timings["training"] > 0 and answer.synthetic
    assert embedded_agent.adapter.is_reset()


def test_embedded_model_ranks_the_right_tool_on_easy_rows(embedded_agent):
    # SealTool row 0 asks for postmodern theory; row 5 for a vehicle battery level
    for index, expected in [(0, "getPostmodernTheory"), (5, "getVehicleBatteryLevel")]:
        row = sealtool_row(index)
        answer = embedded_agent.ask(row["query"], tools=row["tools"], mode="base")
        assert answer.tool_calls[0]["name"] == expected


def test_cli_json_on_the_embedded_model(tmp_path):
    if not embedded_available():
        pytest.skip("embedded model not installed")
    row = sealtool_row(5)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(row["tools"]))
    result = CliRunner().invoke(
        __import__("mlx_ttsi.cli", fromlist=["cli"]).cli,
        ["ask", row["query"], "--tools", str(tools), "--json", "--mode", "base"],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2-135m"
    assert data["tool_calls"][0] == {"name": "getVehicleBatteryLevel", "arguments": {"vehicle_id": "hXQ7qFFt"}}


def test_ttsi_learns_an_argument_the_request_states(embedded_agent):
    # the base answer leaves out the unit the user asked for; the self-check adds it and the LoRA learns it
    from pathlib import Path

    tools = json.loads((Path(__file__).resolve().parents[1] / "mlx_ttsi" / "examples" / "tools.json").read_text())
    request = "Will it rain in Lisbon tomorrow? Give me the temperature in celsius."
    base = embedded_agent.ask(request, tools=tools, mode="base")
    answer = embedded_agent.ask(request, tools=tools, mode="auto")
    assert base.tool_calls == [{"name": "get_weather", "arguments": {"city": "Lisbon"}}]
    assert answer.label == [{"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius"}}]
    assert answer.uncertainty.label_agrees is False and answer.adapted
    assert answer.tool_calls == answer.label
    assert {e["source"] for e in answer.synthetic} == {"self-label", "twin"}
