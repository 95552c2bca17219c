import json

from mlx_ttsi.cli import cli, main

import pytest
from click.testing import CliRunner


@pytest.fixture
def run(tiny_model_dir):
    def invoke(*args, input=None):
        return CliRunner().invoke(cli, ["ask", "--model", str(tiny_model_dir), *args], input=input)

    return invoke


def test_ask_prints_calls_on_stdout_and_progress_on_stderr(run, tools_file):
    result = run("What is the weather in Paris?", "--tools", str(tools_file), "--mode", "ttsi", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    call = json.loads(result.stdout.strip().splitlines()[0])
    assert call["name"] in {"get_weather", "set_alarm", "list_alarms"}
    for phase in ("loading", "scoring", "synthesis", "training", "answering"):
        assert phase in result.stderr
    assert "scoring" not in result.stdout


def test_ask_json_has_the_documented_fields(run, tools_file):
    result = run("Set an alarm at 7", "--tools", str(tools_file), "--json", "--mode", "base", "-q")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"answer", "tool_calls", "uncertainty", "adapted", "synthetic", "timings", "model"} <= set(data)
    assert {"score", "threshold", "uncertain", "candidates"} <= set(data["uncertainty"])
    assert {"name", "prob"} <= set(data["uncertainty"]["candidates"][0])
    assert data["adapted"] is False and result.stderr == ""


def test_messages_file_with_tools_inside(run, tmp_path):
    from conftest import TOOLS

    conversation = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS}
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(conversation))
    result = run("--messages", str(path), "--mode", "base", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["name"]


def test_settings_come_from_env_and_config_file(tiny_model_dir, tools_file, tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    monkeypatch.setenv("MLX_TTSI_CONFIG", str(config))
    config.write_text(json.dumps({"model": str(tiny_model_dir), "threshold": 0.0}))
    result = CliRunner().invoke(
        cli,
        ["ask", "hi", "--tools", str(tools_file), "--json", "-q"],
        default_map={"ask": json.loads(config.read_text())},
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["uncertainty"]["threshold"] == 0.0
    monkeypatch.setenv("MLX_TTSI_THRESHOLD", "1.0")  # env beats the config file
    result = CliRunner().invoke(
        cli,
        ["ask", "hi", "--tools", str(tools_file), "--json", "-q", "--mode", "base"],
        default_map={"ask": json.loads(config.read_text())},
    )
    assert json.loads(result.stdout)["uncertainty"]["threshold"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["hi", "--tools", "missing.json"], "tools file not found"),
        (["", "--tools", "TOOLS"], "request is empty"),
        (["hi", "--tools", "BAD"], "not valid JSON"),
        (["hi", "--tools", "WRONG"], "no valid name"),
        (["x " * 5000, "--tools", "TOOLS"], "longer than the model's context"),
        (["hi", "--tools", "TOOLS", "--mode", "ttd"], "needs --teacher"),
    ],
)
def test_bad_input_exits_1_with_one_line(run, tools_file, tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('[{"name": "two words"}]')
    names = {"TOOLS": str(tools_file), "BAD": str(bad), "WRONG": str(wrong)}
    result = run(*[names.get(a, a) for a in args], "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["hi", "--bogus"], "No such option"),  # click 8.2+ quotes the option, 8.1 not
        (["hi", "--threshold", "2"], "Invalid value for '--threshold'"),
        (["hi", "--mode", "fast"], "Invalid value for '--mode'"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_lines(tiny_model_dir, args, message):
    result = CliRunner().invoke(cli, ["ask", "--model", str(tiny_model_dir), *args], prog_name="mlx-ttsi")
    assert result.exit_code == 2
    lines = result.stderr.rstrip().splitlines()
    assert lines[0].startswith("Usage: mlx-ttsi ask [OPTIONS]") and lines[1] == "Try 'mlx-ttsi ask --help' for help."
    assert lines[2] == "" and lines[3].startswith("Error: ") and message in lines[3] and len(lines) == 4
    assert result.stdout == ""


def test_dash_reads_the_request_from_stdin(run, tools_file):
    piped = run("-", "--tools", str(tools_file), "--json", "--mode", "base", "-q", input="Set an alarm at 7\n")
    given = run("Set an alarm at 7\n", "--tools", str(tools_file), "--json", "--mode", "base", "-q")
    assert piped.exit_code == 0, piped.stderr
    same = ("tool_calls", "uncertainty")
    assert [json.loads(piped.stdout)[k] for k in same] == [json.loads(given.stdout)[k] for k in same]
    empty = run("-", "--tools", str(tools_file), input="")
    assert empty.exit_code == 1 and "request is empty" in empty.stderr


def test_system_prompt_comes_before_the_request(run, tools_file, tmp_path):
    def scores(*args):
        result = run(*args, "--tools", str(tools_file), "--json", "--mode", "base", "-q")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["uncertainty"]["candidates"]

    system = "You are terse. Prefer alarms."
    conversation = tmp_path / "conv.json"
    conversation.write_text(json.dumps([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]))
    with_system = scores("Hi", "--system-prompt", system)
    assert with_system == scores("--messages", str(conversation))  # the same prompt as a system message
    assert with_system != scores("Hi")


def test_unknown_model_fails_clearly(tools_file):
    result = CliRunner().invoke(cli, ["ask", "hi", "--tools", str(tools_file), "--model", "nope"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: unknown model 'nope'")


def test_broken_config_file_is_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text("{not json")
    monkeypatch.setenv("MLX_TTSI_CONFIG", str(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "hi"])
    assert exit_info.value.code == 1
    assert "cannot read config file" in capsys.readouterr().err


def test_ask_never_passes_training_examples(run, tools_file, train_on_seen):
    result = run("What is the weather in Paris?", "--tools", str(tools_file), "--mode", "ttsi", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert train_on_seen == [None]


def test_log_level_debug_logs_each_phase_on_stderr(tiny_model_dir, tools_file):
    result = CliRunner().invoke(
        cli,
        [
            "--log-level",
            "debug",
            "ask",
            "Set an alarm at 7",
            "--tools",
            str(tools_file),
            "--model",
            str(tiny_model_dir),
            "--mode",
            "base",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "DEBUG mlx_ttsi.turn: scoring" in result.stderr and "INFO mlx_ttsi.models: loading" in result.stderr
    assert "mlx_ttsi" not in result.stdout  # the answer alone on stdout
    quiet = CliRunner().invoke(
        cli,
        [
            "ask",
            "Set an alarm at 7",
            "--tools",
            str(tools_file),
            "--model",
            str(tiny_model_dir),
            "--mode",
            "base",
            "-q",
        ],
    )
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_messages_file_nested_too_deep_is_a_one_line_error(run, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('[{"role": "user", "content": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    result = run("--messages", str(deep))
    assert result.exit_code == 1 and result.stderr.strip().count("\n") == 0
    assert "nests over 64 levels" in result.stderr
