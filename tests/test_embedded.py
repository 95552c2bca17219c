"""End to end on the embedded SmolLM2 model (marker `model`; `make test` runs them).

The requests are the project's own (tests/fixtures/requests.jsonl), so a fresh clone runs them."""

import json
from pathlib import Path

from mlx_ttsi.tools import check_call, parse_tools

import pytest
from click.testing import CliRunner
from conftest import require_embedded

pytestmark = pytest.mark.model
EXAMPLE_TOOLS = Path(__file__).resolve().parents[1] / "mlx_ttsi" / "examples" / "tools.json"


@pytest.mark.parametrize("request_id", ["notes", "song", "inbox"])
def test_embedded_model_ranks_the_right_tool_first_on_easy_requests(embedded_agent, embedded_requests, request_id):
    row = embedded_requests[request_id]
    answer = embedded_agent.ask(row["request"], tools=row["tools"], mode="base")
    assert answer.uncertainty.candidates[0]["name"] == row["tool"]
    assert answer.tool_calls[0]["name"] == row["tool"]
    assert check_call(answer.tool_calls[0], parse_tools(row["tools"])) is None


def test_ttsi_ask_adapts_to_a_schema_valid_call_and_resets(embedded_agent, embedded_requests, tmp_path):
    # the base model asks for the local time in Denver; the flight search uses more of the request,
    # but with the weighed self-check (check_odds 0.1) the model vetoes that switch; with every change
    # kept (check_odds 0) the LoRA trained on the flight search and its twins answers with it
    row = embedded_requests["flight"]
    flight = {
        "name": "search_flights",
        "arguments": {"origin": "Boston", "destination": "Denver", "date": "2025-03-14"},
    }
    weighed = embedded_agent.ask(
        row["request"], tools=row["tools"], mode="ttsi", examples_from="twins", learning_rate=1e-3
    )
    assert weighed.label[0]["name"] == "get_local_time" and weighed.tool_calls == weighed.label
    base = embedded_agent.ask(row["request"], tools=row["tools"], mode="base")
    answer = embedded_agent.ask(
        row["request"],
        tools=row["tools"],
        mode="ttsi",
        save_adapter=tmp_path / "adapter",
        check_odds=0,
        examples_from="twins",
        learning_rate=1e-3,
    )
    assert base.tool_calls[0]["name"] == "get_local_time"
    assert answer.adapted is True and answer.method == "ttsi"
    assert answer.tool_calls == [flight] and check_call(answer.tool_calls[0], parse_tools(row["tools"])) is None
    assert answer.timings["training"] > 0 and {e["source"] for e in answer.synthetic} == {"self-label", "twin"}
    assert embedded_agent.adapter.is_reset()
    # the saved adapter answers the same without synthesis or training (ask --adapter-path)
    from mlx_ttsi.saved_adapter import load_weights

    weights = load_weights(tmp_path / "adapter")
    again = embedded_agent.ask(
        row["request"], tools=row["tools"], mode="ttsi", adapter_weights=weights, force=True, check_odds=0
    )
    assert again.reused and again.tool_calls == [flight] and "training" not in again.timings
    assert embedded_agent.adapter.is_reset()


def test_cli_json_on_the_embedded_model(embedded_requests, tmp_path):
    from mlx_ttsi.cli import cli

    require_embedded()
    row = embedded_requests["notes"]
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(row["tools"]))
    result = CliRunner().invoke(cli, ["ask", row["request"], "--tools", str(tools), "--json", "--mode", "base"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2-135m"
    assert data["tool_calls"] == [{"name": "list_notes", "arguments": {}}]
    assert "loading" in result.stderr and "scoring" in result.stderr


def test_ttsi_learns_an_argument_the_request_states(embedded_agent):
    # the base answer leaves out the unit the user asked for; the self-check adds it and the LoRA learns it
    tools = json.loads(EXAMPLE_TOOLS.read_text())
    request = "Will it rain in Lisbon tomorrow? Give me the temperature in celsius."
    base = embedded_agent.ask(request, tools=tools, mode="base")
    # with the default weighing (check_odds 0.1) this 135M model vetoes adding the unit; with every change kept, it learns it
    weighed = embedded_agent.ask(request, tools=tools, mode="auto", examples_from="twins", learning_rate=1e-3)
    assert weighed.label == base.tool_calls and weighed.tool_calls == base.tool_calls
    answer = embedded_agent.ask(
        request, tools=tools, mode="auto", check_odds=0, examples_from="twins", learning_rate=1e-3
    )
    assert base.tool_calls == [{"name": "get_weather", "arguments": {"city": "Lisbon"}}]
    assert answer.label == [{"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius"}}]
    assert answer.uncertainty.label_agrees is False and answer.adapted
    assert answer.tool_calls == answer.label
    assert {e["source"] for e in answer.synthetic} == {"self-label", "twin"}
