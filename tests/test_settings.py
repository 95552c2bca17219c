import json
from dataclasses import fields
from pathlib import Path

from mlx_ttsi.cli import cli
from mlx_ttsi.errors import TTSIError
from mlx_ttsi.serve.service import APIError, _ttsi_options
from mlx_ttsi.settings import BY_NAME, OPTIONS, LoRASettings, Settings, markdown_table

import pytest
from click.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_carries_the_current_settings_table():
    assert markdown_table() in README.read_text()


def test_settings_fields_are_the_tables_rows_with_their_defaults():
    agent_rows = [o for o in OPTIONS if o.group == "agent"]
    lora_rows = [o for o in OPTIONS if o.group == "lora"]
    assert [f.name for f in fields(Settings)] == [o.name for o in agent_rows] + ["lora"]
    assert [f.name for f in fields(LoRASettings)][: len(lora_rows)] == [o.name for o in lora_rows]
    settings = Settings()
    assert all(getattr(settings, o.name) == o.default for o in agent_rows)
    assert all(getattr(settings.lora, o.name) == o.default for o in lora_rows)


@pytest.mark.parametrize("name, bad", [("examples", 17), ("threshold", 1.5), ("mode", "fast"), ("max_tokens", 0)])
def test_cli_server_and_settings_refuse_the_same_values(name, bad):
    option = BY_NAME[name]
    with pytest.raises(TTSIError):
        option.check(bad)
    if option.request:
        with pytest.raises(APIError) as error:
            _ttsi_options({name: bad})
        assert error.value.status == 400 and error.value.param == f"ttsi.{name}"
    flag = option.cli_flag.split("/")[0]
    result = CliRunner().invoke(cli, ["ask", "hi", flag, str(bad)])
    assert result.exit_code == 2 and flag in result.output


def test_top_of_each_range_is_accepted_everywhere():
    top = BY_NAME["examples"].high
    assert _ttsi_options({"examples": top}) == {"examples": top}
    assert Settings(examples=top).check().examples == top
    with pytest.raises(TTSIError):
        Settings(examples=top + 1).check()


# ---- every row of the table is read where it acts ----


class Seen(Exception):
    """Raised by a spy once it has heard what it listens for: the command stops there."""


REQUEST = "What is the weather in Paris?"
TTD = ["--mode", "ttd", "--teacher", "{model}"]
TRAINED = [*TTD, "--any-tool"]  # a local teacher's examples for any tool: the request trains a LoRA
# option: (where it acts, what that place was given, extra arguments, a value other than the default,
#          what is seen with the default when it is not the default itself)
PROBES = {
    "mode": ("mlx_ttsi.agent.plan_request", lambda *a, **k: a[0], [], "base"),
    "threshold": ("mlx_ttsi.turn.estimate", lambda *a, **k: a[4], [], 0.25),
    "candidates": ("mlx_ttsi.turn.estimate", lambda *a, **k: a[5], [], "call"),
    "norm": ("mlx_ttsi.turn.estimate", lambda *a, **k: a[6], [], "mean"),
    "check_odds": ("mlx_ttsi.turn.weigh_changes", lambda *a, **k: a[3], ["--mode", "check"], 0.5),
    "max_calls": ("mlx_ttsi.turn.CallDecoder", lambda *a, **k: k["max_calls"], [], 3),
    "max_tokens": ("mlx_ttsi.turn.stream_generate", lambda *a, **k: k["max_tokens"], ["--no-tools"], 7),
    "temperature": ("mlx_ttsi.synthesis.ModelWriter.write_request", lambda *a, **k: a[4], TTD, 1.5),
    "same_tool": ("mlx_ttsi.synthesis.ModelWriter.synthesize", lambda *a, **k: k["same_tool"] is not None, TTD, False),
    "examples": ("mlx_ttsi.synthesis.ModelWriter.synthesize", lambda *a, **k: a[3], TTD, 2),
    "examples_from": (
        "mlx_ttsi.turn.Turn.job",
        lambda *a, **k: a[0].settings.examples_from,
        ["--mode", "ttsi"],
        "requests",
    ),
    "check_after": (
        "mlx_ttsi.turn.Turn.check_answer",
        lambda *a, **k: a[0].settings.check_after,
        ["--mode", "ttsi", "--examples-from", "twins"],
        True,
    ),
    "check_weights": (
        "mlx_ttsi.turn.Turn.check_answer",
        lambda *a, **k: a[0].settings.check_weights,
        ["--mode", "ttsi", "--examples-from", "twins", "--check-after"],
        "base",
    ),
    "keep": ("mlx_ttsi.turn.Turn.keep", lambda *a, **k: a[0].settings.keep, ["--mode", "ttsi"], "verified"),
    "seed": ("mlx_ttsi.synthesis.ModelWriter.synthesize", lambda *a, **k: a[4], TTD, 7),
    "epochs": ("mlx_ttsi.adaptation.fit", lambda *a, **k: a[4] // k["epoch"], TRAINED, 2),
    "learning_rate": ("mlx_ttsi.adaptation.build_schedule", lambda *a, **k: a[0]["arguments"][0], TRAINED, 0.05),
    "stop_loss": ("mlx_ttsi.adaptation.fit", lambda *a, **k: k["stop_loss"], TRAINED, 0.5),
    "stop_said_back": ("mlx_ttsi.adaptation.fit", lambda *a, **k: k["said_back"], TRAINED, False),
    "batch_size": ("mlx_ttsi.adaptation.prefix_batches", lambda *a, **k: a[1], TRAINED, 3),
    "rank": ("mlx_ttsi.adaptation.linear_to_lora_layers", lambda *a, **k: a[2]["rank"], [], 4),
    "alpha": ("mlx_ttsi.adaptation.linear_to_lora_layers", lambda *a, **k: a[2]["scale"] * a[2]["rank"], [], 4.0),
    "layers": ("mlx_ttsi.adaptation.linear_to_lora_layers", lambda *a, **k: a[1], [], 1, 2),  # the tiny model has 2
    "precision": ("mlx_ttsi.models.load", lambda *a, **k: a[1], [], "float16"),
    "teacher_model": (
        "urllib.request.urlopen",
        lambda *a, **k: json.loads(a[0].data)["model"],
        ["--mode", "ttd", "--teacher", "http://127.0.0.1:9/v1"],
        "big-teacher",
    ),
    "max_queue": ("mlx_ttsi.serve.http.make_server", lambda *a, **k: k["max_queue"], ["serve"], 3),
    "parallel": ("mlx_ttsi.serve.http.make_server", lambda *a, **k: k["parallel"], ["serve"], 2),
    "memory_size": (
        "mlx_ttsi.serve.adapter_memory.AdapterMemory.for_agent",
        lambda *a, **k: a[1],
        ["serve", "--memory"],
        5,
    ),
    "memory_similarity": (
        "mlx_ttsi.serve.adapter_memory.AdapterMemory.for_agent",
        lambda *a, **k: a[2],
        ["serve", "--memory"],
        0.5,
    ),
}


def test_every_row_of_the_table_has_a_probe():
    assert set(PROBES) == set(BY_NAME)


def heard(monkeypatch, target, pick, args):
    """What `target` was given when the CLI ran with `args` (the spy stops the command)."""
    seen = []

    def spy(*a, **k):
        seen.append(pick(*a, **k))
        raise Seen

    monkeypatch.setattr(target, spy)
    result = CliRunner().invoke(cli, args)
    monkeypatch.undo()
    assert isinstance(result.exception, Seen), (args, result.output, result.exception)
    return seen[0]


@pytest.mark.parametrize("name", list(PROBES))
def test_each_option_reaches_what_it_configures(name, tiny_model_dir, tools_file, monkeypatch):
    target, pick, extra, changed, *seen_default = PROBES[name]
    option = BY_NAME[name]
    extra = [a.replace("{model}", str(tiny_model_dir)) for a in extra]
    command = ["serve", "--port", "0"] if extra[:1] == ["serve"] else ["ask", REQUEST]
    tools = [] if "--no-tools" in extra or command[0] == "serve" else ["--tools", str(tools_file)]
    args = [*command, "--model", str(tiny_model_dir), *tools, *[a for a in extra if a not in ("serve", "--no-tools")]]
    if command[0] == "ask":
        args.append("-q")
    flag = option.cli_flag.split("/")[changed is False] if option.kind is bool else option.cli_flag  # on/off
    given = [flag] if option.kind is bool else [flag, str(changed)]
    assert heard(monkeypatch, target, pick, args) == (seen_default[0] if seen_default else option.default)
    assert heard(monkeypatch, target, pick, [*args, *given]) == changed
