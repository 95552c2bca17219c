"""The eval machinery: rows, resume, summary, threshold sweep, merging of ranks, the CLI and mlx.launch.

Most tests answer with a scripted agent (known scores and answers, so every number can be worked out
by hand); the CLI and the 2-rank run use the tiny random model.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from mlx_ttsi.cli import cli
from mlx_ttsi.errors import DataError
from mlx_ttsi.evaluation.ranks import Ranks
from mlx_ttsi.evaluation.results import read_records
from mlx_ttsi.evaluation.rows import gold_examples, load_rows, row_input, select
from mlx_ttsi.evaluation.runner import EvalPlan, evaluate, finish

import pytest
from click.testing import CliRunner
from conftest import TOOLS

THRESHOLD = 0.6


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


RIGHT = [call("get_weather", city="Paris")]
WRONG = [call("list_alarms")]
# per row: (score u, base answer, adapted answer); base right on r0 r1, adapted right on r1 r2
SCRIPT = {"r0": (0.1, RIGHT, WRONG), "r1": (0.5, RIGHT, RIGHT), "r2": (0.7, WRONG, RIGHT), "r3": (0.9, WRONG, WRONG)}


def make_row(ident, benchmark="tinybench", **extra):
    return {
        "id": ident,
        "benchmark": benchmark,
        "tools": TOOLS,
        "query": f"request {ident}",
        "messages": [{"role": "user", "content": f"request {ident}"}],
        "answer": RIGHT,
        "meta": {},
        **extra,
    }


ROWS = [make_row(ident) for ident in SCRIPT]


class ScriptedAgent:
    """Answers like Agent.ask from SCRIPT: adapts when u < THRESHOLD (gated) or when forced."""

    def __init__(self, script=SCRIPT, stop_after=None, seed_matters=False):
        self.script, self.stop_after, self.seed_matters, self.asked = script, stop_after, seed_matters, []

    def warm(self, tools):
        pass

    def ask(self, request, tools=None, messages=None, mode="auto", force=None, seed=0, max_calls=1, **overrides):
        if self.stop_after is not None and len(self.asked) == self.stop_after:
            raise KeyboardInterrupt
        ident = request.split()[-1]
        self.asked.append((ident, mode, force, seed))
        score, base, adapted = self.script[ident]
        uncertain = score < THRESHOLD
        adapt = mode != "base" and (uncertain or bool(force))
        answer = adapted if adapt else base
        if adapt and self.seed_matters and seed % 2:
            answer = WRONG
        return SimpleNamespace(
            tool_calls=answer,
            adapted=adapt,
            synthetic=[{}] if adapt else [],
            rejected={},
            uncertainty=SimpleNamespace(score=score, uncertain=uncertain, threshold=THRESHOLD),
            training={"loss": 1.0} if adapt else None,
            timings={"total": 2.0 if adapt else 1.0},
        )


def plan(methods=("base", "ttsi", "ttsi-all"), rows=ROWS, **options):
    return EvalPlan(list(rows), list(methods), settings={"threshold": THRESHOLD}, **options)


def cell(summary, method, benchmark="tinybench"):
    return next(c for c in summary["table"] if c["method"] == method and c["benchmark"] == benchmark)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---- summary and sweep ----


def test_summary_table_is_worked_out_from_the_results(tmp_path):
    summary = evaluate(plan(), tmp_path, agent=ScriptedAgent(), progress=False)
    base, ttsi, every = cell(summary, "base"), cell(summary, "ttsi"), cell(summary, "ttsi-all")
    assert (base["accuracy"], ttsi["accuracy"], every["accuracy"]) == (50.0, 25.0, 50.0)
    assert (base["adapted"], ttsi["adapted"], every["adapted"]) == (0.0, 0.5, 1.0)
    assert (ttsi["synthetic"], every["synthetic"], base["rows"], base["of"]) == (2, 4, 4, 4)
    assert ttsi["seconds_per_row"] == 1.5 and ttsi["rows_per_hour"] == 2400
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    table = (tmp_path / "summary.md").read_text()
    assert "| tinybench | ttsi | 25.00 | 4 | 50.0% | 2 | 100% |  |  |  | 1.50 | 2400 |" in table
    record = lines(tmp_path / "results.jsonl")[0]
    assert {"prediction", "correct", "uncertainty", "adapted", "synthetic", "timings", "method", "seed"} <= set(record)


def test_threshold_sweep_reuses_base_and_ttsi_all_answers(tmp_path):
    taus = (0.0, 0.3, 0.6, 1.0)
    agent = ScriptedAgent()
    summary = evaluate(plan(("base", "ttsi-all"), taus=taus), tmp_path, agent=agent, progress=False)
    (sweep,) = summary["sweep"]
    assert sweep["method"] == "ttsi" and len(agent.asked) == 8  # each row once per method, never per tau
    assert [p["flagged"] for p in sweep["points"]] == [0.0, 25.0, 50.0, 100.0]
    # tau 0: all base (r0 r1 right); 0.3: r0 adapted (wrong); 0.6: r0 r1 adapted; 1: all adapted (r1 r2)
    assert [p["accuracy"] for p in sweep["points"]] == [50.0, 25.0, 25.0, 50.0]


def test_sweep_from_a_gated_run_stops_at_its_threshold(tmp_path):
    summary = evaluate(plan(("base", "ttsi"), taus=(0.0, 0.6, 1.0)), tmp_path, agent=ScriptedAgent(), progress=False)
    points = summary["sweep"][0]["points"]
    assert [p["accuracy"] for p in points] == [50.0, 25.0, None]  # above 0.6 r2's adapted answer was never made
    assert points[-1]["flagged"] == 100.0
    assert "| 1 | 100.0 | n/a |" in (tmp_path / "summary.md").read_text()


def test_several_seeds_give_mean_and_spread(tmp_path):
    summary = evaluate(
        plan(("ttsi-all",), seeds=[0, 1]), tmp_path, agent=ScriptedAgent(seed_matters=True), progress=False
    )
    every = cell(summary, "ttsi-all")
    assert every["seeds"] == 2 and every["accuracy"] == 25.0  # seed 0: 50, seed 1: 0
    assert every["accuracy_std"] == pytest.approx(35.36, abs=0.01)
    assert "25.00 ± 35.36" in (tmp_path / "summary.md").read_text()


def test_base_runs_once_and_stands_for_every_seed(tmp_path):
    agent = ScriptedAgent(seed_matters=True)
    summary = evaluate(plan(("base", "ttsi-all"), seeds=[0, 1, 2]), tmp_path, agent=agent, progress=False)
    asked = [(mode, seed) for _, mode, _, seed in agent.asked]
    assert asked.count(("base", 0)) == 4 and not [a for a in asked if a[0] == "base" and a[1]]
    base = cell(summary, "base")
    assert base["seeds"] == 3 and base["per_seed"] == {"0": 50.0, "1": 50.0, "2": 50.0}
    assert cell(summary, "ttsi-all")["per_seed"] == {"0": 50.0, "1": 0.0, "2": 50.0}


def test_average_over_benchmarks_is_taken_per_seed(tmp_path):
    rows = ROWS + [make_row(r["id"], benchmark="other") for r in ROWS[:2]]
    summary = evaluate(
        plan(("ttsi-all",), rows=rows, seeds=[0, 1]), tmp_path, agent=ScriptedAgent(seed_matters=True), progress=False
    )
    assert cell(summary, "ttsi-all", "other")["per_seed"] == {"0": 50.0, "1": 0.0}
    average = cell(summary, "ttsi-all", "average")  # seed 0: (50 + 50) / 2, seed 1: 0
    assert average["per_seed"] == {"0": 50.0, "1": 0.0} and average["accuracy"] == 25.0
    assert average["rows"] == 6 and average["of"] == 6


def test_a_row_that_cannot_be_asked_is_recorded_wrong_and_the_run_goes_on(tmp_path):
    from mlx_ttsi.errors import RequestError

    class TooLong(ScriptedAgent):
        def ask(self, request, **options):
            if request.endswith("r1"):
                raise RequestError("the prompt is 9000 tokens, longer than the model's context of 8192")
            return super().ask(request, **options)

    summary = evaluate(plan(("base",)), tmp_path, agent=TooLong(), progress=False)
    assert cell(summary, "base")["accuracy"] == 25.0 and cell(summary, "base")["errors"] == 1
    failed = next(r for r in lines(tmp_path / "results.jsonl") if r["id"] == "r1")
    assert failed["correct"] is False and "longer than the model's context" in failed["error"]
    assert "4 (1 not asked)" in (tmp_path / "summary.md").read_text()


def test_plots_are_written(tmp_path):
    evaluate(plan(("base", "ttsi-all"), taus=(0.0, 0.5, 1.0)), tmp_path, agent=ScriptedAgent(), progress=False)
    for name in ("accuracy.png", "sweep.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- resume ----


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate(plan(), tmp_path, agent=ScriptedAgent(stop_after=5), progress=False)
    assert len(lines(tmp_path / "results.jsonl")) == 5
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write('{"benchmark": "tinybench", "id": "r1", "meth')  # a crash in the middle of a line
    agent = ScriptedAgent()
    summary = evaluate(plan(), tmp_path, agent=agent, progress=False)
    assert len(agent.asked) == 12 - 5  # only what was missing
    records = lines(tmp_path / "results.jsonl")  # every line whole again
    assert len(records) == 12 and len({(r["id"], r["method"], r["seed"]) for r in records}) == 12
    assert cell(summary, "ttsi")["accuracy"] == 25.0


def test_finished_run_is_resummarised_without_a_model(tmp_path):
    first = evaluate(plan(), tmp_path, agent=ScriptedAgent(), progress=False)
    again = evaluate(plan(taus=(0.0, 1.0)), tmp_path, load_agent=lambda: pytest.fail("loaded a model"), progress=False)
    assert again["table"] == first["table"] and len(again["sweep"][0]["points"]) == 2


def test_truncated_last_line_is_dropped_and_damage_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"benchmark": "b", "id": "1", "method": "base", "seed": 0})
    path.write_text(good + "\n" + good[:10])
    assert len(read_records(path)) == 1 and path.read_text().endswith(good[:10])  # reading changes nothing
    assert len(read_records(path, repair=True)) == 1 and path.read_text() == good + "\n"
    path.write_text(good + "\n{oops\n" + good + "\n")
    with pytest.raises(DataError, match="damaged at line 2"):
        read_records(path)


def test_a_second_eval_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    import fcntl

    with open(tmp_path / ".results.jsonl.lock", "w") as held:  # what a running eval holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another eval is writing .*results.jsonl; .*another --out"):
            evaluate(plan(("base",)), tmp_path, agent=ScriptedAgent(), progress=False)
        assert not (tmp_path / "results.jsonl").exists()  # nothing written meanwhile
    evaluate(plan(("base",)), tmp_path, agent=ScriptedAgent(), progress=False)  # free once it ends
    assert len(lines(tmp_path / "results.jsonl")) == 4


def test_results_are_not_reused_under_other_settings(tmp_path):
    evaluate(plan(("base",)), tmp_path, agent=ScriptedAgent(), progress=False)
    other = plan(("base",))
    other.settings = {"threshold": 0.9}
    with pytest.raises(DataError, match="other settings .*threshold 0.6 -> 0.9"):
        evaluate(other, tmp_path, agent=ScriptedAgent(), progress=False)


# ---- ranks ----


def test_ranks_split_rows_and_merge_into_the_single_process_summary(tmp_path):
    single = evaluate(plan(taus=(0.0, 0.5, 1.0)), tmp_path / "one", agent=ScriptedAgent(), progress=False)
    shared = tmp_path / "shared"  # an out dir every rank can see
    agents = [ScriptedAgent(), ScriptedAgent()]
    assert evaluate(plan(taus=(0.0, 0.5, 1.0)), shared, agent=agents[1], ranks=Ranks(1, 2), progress=False) is None
    merged = evaluate(plan(taus=(0.0, 0.5, 1.0)), shared, agent=agents[0], ranks=Ranks(0, 2), progress=False)
    assert {a[0] for a in agents[0].asked} == {"r0", "r2"} and {a[0] for a in agents[1].asked} == {"r1", "r3"}
    assert merged == single
    assert not list(shared.glob("results.rank*")) and len(lines(shared / "results.jsonl")) == 12
    # without a shared dir rank 0 gets the other ranks' lines from the gather
    apart = tmp_path / "apart"
    evaluate(plan(taus=(0.0, 0.5, 1.0)), apart / "1", agent=ScriptedAgent(), ranks=Ranks(1, 2), progress=False)
    evaluate(plan(taus=(0.0, 0.5, 1.0)), apart / "0", agent=ScriptedAgent(), ranks=Ranks(0, 2), progress=False)
    gathered = [read_records(apart / "1" / "results.rank1.jsonl")]
    assert finish(plan(taus=(0.0, 0.5, 1.0)), apart / "0", gathered) == single


# ---- rows ----


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_are_selected_per_file(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [make_row(f"a{i}", benchmark="one") for i in range(10)])
    two = write_jsonl(tmp_path / "two.jsonl", [make_row(f"b{i}", benchmark="two") for i in range(10)])
    files = load_rows([one, two])
    assert [r["id"] for r in select(files, limit=2)] == ["a0", "a1", "b0", "b1"]
    sample = [r["id"] for r in select(files, sample=3, seed=7)]
    assert len(sample) == 6 and sample == [r["id"] for r in select(files, sample=3, seed=7)]
    assert sample != [r["id"] for r in select(files, sample=3, seed=8)]
    with pytest.raises(DataError, match="either --limit or --sample"):
        select(files, limit=2, sample=3)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "data file not found"),
        ('{"id": 1}\n{not json\n', "line 1: the row has no tools list"),
        (json.dumps(make_row("x")) + "\n{not json\n", "line 2 is not valid JSON"),
        (json.dumps(make_row("x")) + "\n" + json.dumps(make_row("x")) + "\n", "appears twice"),
        ("\n", "has no rows"),
    ],
)
def test_bad_data_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_rows([path])


def test_apibank_conversation_is_asked_whole():
    messages = [
        {"role": "user", "content": "Add a meeting"},
        {"role": "assistant", "content": "Sure."},
        {"role": "assistant", "content": "", "tool_calls": [call("ToolSearcher", keywords="meeting")]},
        {"role": "tool", "content": "AddMeeting"},
        {"role": "assistant", "content": "Got it."},
    ]
    request, asked = row_input({"query": None, "messages": messages})
    assert request is None and asked == messages  # the agent answers in a new turn after the filler
    assert row_input({"query": "hi", "messages": messages}) == ("hi", None)


def test_multi_call_benchmarks_get_a_fixed_max_calls(tmp_path):
    class Recorder(ScriptedAgent):
        def ask(self, request, max_calls=1, **options):
            self.limits = getattr(self, "limits", []) + [max_calls]
            return super().ask(request, max_calls=max_calls, **options)

    rows = [make_row("r0", benchmark="toolalpaca_real"), make_row("r1", benchmark="sealtool")]
    for max_calls, expected in ((None, [5, 1]), (2, [2, 2])):
        agent = Recorder()
        evaluate(
            plan(("base",), rows=rows, max_calls=max_calls), tmp_path / str(max_calls), agent=agent, progress=False
        )
        assert agent.limits == expected  # never taken from the gold answer


# ---- the CLI and mlx.launch, on the tiny model ----

TINY_ROWS = [
    make_row("w", query="What is the weather in Paris?", answer=[call("get_weather", city="Paris")]),
    make_row("a", query="Set an alarm at 7", answer=[call("set_alarm", time="07:00", loud=True)]),
    make_row(
        "l",
        query=None,
        messages=[{"role": "user", "content": "List my alarms"}, {"role": "assistant", "content": "Sure."}],
        answer=[call("list_alarms")],
    ),
]
TINY_ARGS = ["--methods", "base,ttsi-all", "--epochs", "2", "--lr", "0.05", "--threshold-sweep", "0.5,1", "--any-tool"]


@pytest.fixture
def tiny_data(tmp_path):
    return write_jsonl(tmp_path / "tiny.jsonl", TINY_ROWS)


def run_eval(model, data, out, *args):
    return CliRunner().invoke(cli, ["eval", "--model", str(model), "--data", str(data), "--out", str(out), *args])


def test_eval_command_writes_results_summary_and_plots(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_eval(tiny_model_dir, tiny_data, out, *TINY_ARGS)
    assert result.exit_code == 0, result.stderr
    assert "| benchmark | method | accuracy (%)" in result.stdout and "| tinybench | ttsi-all |" in result.stdout
    assert "ETA" in result.stderr and "loading" in result.stderr
    for name in ("results.jsonl", "summary.json", "summary.md", "accuracy.png", "sweep.png", "config.json"):
        assert (out / name).exists(), name
    records = lines(out / "results.jsonl")
    assert len(records) == 6 and all(r["adapted"] for r in records if r["method"] == "ttsi-all")
    summary = json.loads((out / "summary.json").read_text())
    assert [p["tau"] for p in summary["sweep"][0]["points"]] == [0.5, 1.0]
    config = json.loads((out / "config.json").read_text())
    assert (
        config["max_calls"] == "per benchmark"
        and config["learning_rate"] == 0.05
        and config["model"] == str(tiny_model_dir)
    )
    again = run_eval(tiny_model_dir, tiny_data, out, *TINY_ARGS)  # finished: nothing runs, nothing loads
    assert again.exit_code == 0 and "loading" not in again.stderr and len(lines(out / "results.jsonl")) == 6


def test_eval_without_matplotlib_says_no_plots_were_written(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "run"
    result = run_eval(tiny_model_dir, tiny_data, out, "--methods", "base", "--any-tool")
    assert result.exit_code == 0, result.stderr
    assert "plots need matplotlib" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no plots written" in last and "and plots" not in last
    assert (out / "summary.md").exists() and not list(out.glob("*.png"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.jsonl"], "data file not found: missing.jsonl"),
        (["--data", "BAD"], "line 1 is not valid JSON"),
        (["--data", "DATA", "--methods", "base,magic"], "unknown method 'magic'"),
        (["--data", "DATA", "--methods", "ttd"], "ttd needs --teacher"),
        (["--data", "DATA", "--methods", "base,ttd-all"], "ttd needs --teacher"),
        (["--data", "DATA", "--seed", "x"], "seeds must be integers"),
        (["--data", "DATA", "--threshold-sweep", "0.5,2"], "between 0 and 1"),
    ],
)
def test_eval_bad_input_is_one_line(tiny_model_dir, tiny_data, tmp_path, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    args = [{"DATA": str(tiny_data), "BAD": str(bad)}.get(a, a) for a in args]
    result = CliRunner().invoke(cli, ["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.launch
def test_two_ranks_under_mlx_launch_match_one_process(tiny_model_dir, tiny_data, tmp_path):
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if launcher is None:
        pytest.skip("mlx.launch is not installed")
    # both runs are child processes, so both use the tiny model's own synthetic requests
    evaluate = [
        sys.executable,
        "-m",
        "mlx_ttsi",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tiny_data),
        *TINY_ARGS,
    ]
    single = subprocess.run(
        [*evaluate, "--out", str(tmp_path / "one"), "-q"], capture_output=True, text=True, timeout=120
    )
    assert single.returncode == 0, single.stderr
    command = [launcher, "-n", "2", "-p", str(free_port()), "--", *evaluate, "--out", str(tmp_path / "two")]
    launch = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group: a hang is cleaned up whole
    try:
        stdout, stderr = launch.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        launch.communicate()
        pytest.fail("the 2-rank run hung (did the ranks' LoRA training join one process group?)")
    done = SimpleNamespace(returncode=launch.returncode, stdout=stdout, stderr=stderr)
    assert done.returncode == 0, done.stderr
    assert "rank 0/2" in done.stderr and "rank 1/2" in done.stderr  # both ranks had rows
    assert done.stdout.count("| tinybench | base |") == 1  # rank 0 alone reports

    def without_timings(data):
        if isinstance(data, dict):
            return {
                k: without_timings(v)
                for k, v in data.items()
                if k not in ("timings", "seconds_per_row", "rows_per_hour")
            }
        return [without_timings(v) for v in data] if isinstance(data, list) else data

    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    assert without_timings(summaries[0]) == without_timings(summaries[1])
    results = [
        {(r["id"], r["method"]): without_timings(r) for r in lines(tmp_path / d / "results.jsonl")}
        for d in ("one", "two")
    ]
    assert results[0] == results[1] and len(results[1]) == 6  # same answers and losses: each rank trained alone
    assert not list((tmp_path / "two").glob("results.rank*"))


# ---- the gold answer reaches only the oracle ablations ----


class GoldWatcher(ScriptedAgent):
    """Records everything each request was given, to look for the gold answer in it."""

    def __init__(self):
        super().__init__()
        self.given = []

    def ask(self, request, train_on=None, **options):
        self.given.append((json.dumps([request, options], default=str), train_on))
        return super().ask(request, **options)


def test_only_the_oracle_methods_ever_see_the_gold_answer(tmp_path):
    secret = "GOLD-7f3a"
    row = make_row("r0", answer=[call("set_alarm", time=secret, loud=True)], meta={"arguments_with_defaults": secret})
    methods = ("base", "ttsi", "ticl", "ttsi-all", "oracle", "oracle-twin")
    agent = GoldWatcher()
    evaluate(plan(methods, rows=[row]), tmp_path, agent=agent, progress=False)
    assert len(agent.given) == len(methods)  # in the plan's order
    for method, (text, train_on) in zip(methods, agent.given):
        assert secret not in text, method  # no request, conversation, tool or option carries it
        assert (train_on is not None) == method.startswith("oracle"), method
    assert agent.given[4][1][0]["calls"] == row["answer"]  # oracle: the gold call itself
    assert agent.given[5][1] == []  # oracle-twin: the gold value is not in the request, so no twin


def test_baselines_and_ablations_say_whether_their_answer_is_checked_and_the_modes_follow_the_default(tmp_path):
    from mlx_ttsi.settings import default

    class OptionWatcher(ScriptedAgent):
        def ask(self, request, **options):
            self.given = [*getattr(self, "given", []), options]
            return super().ask(request, **options)

    checked = {"plan": False, "plan-checked": True, "ttsi-paper": False, "ttsi-anchored-all": False}
    followers = ("ttsi", "ttd", "ticl")  # as a user's --mode: the agent's own check_after, on by default
    agent = OptionWatcher()
    evaluate(plan((*checked, *followers), rows=[make_row("r0")]), tmp_path, agent=agent, progress=False)
    said = [options.get("check_after") for options in agent.given]
    assert said == [*checked.values(), None, None, None] and default("check_after") is True


def test_oracle_examples_are_the_gold_call_and_its_twins():
    row = make_row("r0", query="What is the weather in Lisbon?", answer=[call("get_weather", city="Lisbon")])
    own = gold_examples(row, "oracle", 3, 0)
    assert own == [
        {
            "messages": [{"role": "user", "content": row["query"]}],
            "request": row["query"],
            "calls": row["answer"],
            "source": "gold",
        }
    ]
    twins = gold_examples(row, "oracle-twin", 3, 0)
    assert len(twins) == 3 and all(t["source"] == "gold twin" for t in twins)
    for twin in twins:
        city = twin["calls"][0]["arguments"]["city"]
        assert city != "Lisbon" and city in twin["request"] and "Lisbon" not in twin["request"]


def test_results_keep_the_examples_each_lora_learnt(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_eval(tiny_model_dir, tiny_data, out, "--methods", "ttsi-all,oracle", "--epochs", "1", "-q")
    assert result.exit_code == 0, result.stderr
    records = lines(out / "results.jsonl")
    for r in records:
        assert r["examples"] and all({"request", "calls", "source"} <= set(e) for e in r["examples"])
        assert isinstance(r["rejections"], dict) and r["asked"] >= len(r["examples"])
    selfish = [r for r in records if r["method"] == "ttsi-all"]
    queries = {row["id"]: row["query"] for row in TINY_ROWS}
    for r in selfish:  # examples written call first; the request itself is never one of them
        assert all(e["source"] == "calls" and e["request"] != queries[r["id"]] for e in r["examples"])
        assert r["label_correct"] is not None
        assert r["gold_likelihood"]["adapted"] != r["gold_likelihood"]["base"]
    oracle = [r for r in records if r["method"] == "oracle"]
    gold = {row["id"]: row["answer"] for row in TINY_ROWS}
    assert all(r["examples"][0]["calls"] == gold[r["id"]] and r["label"] is None for r in oracle)
    summary = json.loads((out / "summary.json").read_text())
    cell_ttsi = cell(summary, "ttsi-all")
    assert 0 < cell_ttsi["yield"] <= 1 and cell_ttsi["label_accuracy"] is not None
    gains = [r["gold_likelihood"]["adapted"] - r["gold_likelihood"]["base"] for r in selfish]
    assert cell_ttsi["gold_gain"] == pytest.approx(sum(gains) / len(gains), abs=1e-3)
    assert "| yield |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("donor, last", [("ttsi-all", False), ("ticl-checked-all", False), ("ttsi", True)])
def test_base_and_self_label_answered_inside_ttsi_equal_their_own_runs(
    donor, last, tiny_model_dir, tiny_data, tmp_path
):
    args = ["--epochs", "1", "--any-tool", "-q", "--threshold", "1.0"]  # every row uncertain: ttsi adapts
    methods = f"base,self-label,{donor}" if last else f"{donor},base,self-label"  # wherever it is listed
    result = run_eval(tiny_model_dir, tiny_data, tmp_path / "one", "--methods", methods, *args)
    assert result.exit_code == 0, result.stderr
    for method in ("base", "self-label"):
        assert run_eval(tiny_model_dir, tiny_data, tmp_path / method, "--methods", method, *args).exit_code == 0
    alone = {(r["id"], r["method"]): r for m in ("base", "self-label") for r in lines(tmp_path / m / "results.jsonl")}
    together = [r for r in lines(tmp_path / "one" / "results.jsonl") if r["method"] != donor]
    assert len(together) == len(alone) == 2 * len(TINY_ROWS)
    for record in together:  # the same answer, scores and label, from the TT-SI turn: decoded and checked once
        own = alone[record["id"], record["method"]]
        assert record.pop("shared") == donor and "shared" not in own
        phases = {"base": {"scoring", "decoding", "total"}, "self-label": {"scoring", "decoding", "labelling", "total"}}
        assert set(record.pop("timings")) == set(own.pop("timings")) == phases[record["method"]]
        assert record == own


def test_rows_answered_side_by_side_equal_rows_answered_one_by_one(tiny_model_dir, tiny_data, tmp_path):
    args = ["--methods", "self-label,base,plan", "-q"]
    assert run_eval(tiny_model_dir, tiny_data, tmp_path / "one", *args).exit_code == 0
    result = run_eval(tiny_model_dir, tiny_data, tmp_path / "batched", *args, "--batch-rows", "2")
    assert result.exit_code == 0, result.stderr
    alone = {(r["id"], r["method"]): r for r in lines(tmp_path / "one" / "results.jsonl")}
    batched = lines(tmp_path / "batched" / "results.jsonl")
    assert len(batched) == len(alone) == 3 * len(TINY_ROWS)
    together = 0
    for record in batched:
        own = alone[record["id"], record["method"]]
        timings, _ = record.pop("timings"), own.pop("timings")
        together += timings.get("rows_together", 1) > 1
        assert record == own  # the same answers, labels, uncertainties and gold likelihoods
    assert together == 2 * 3  # the first two rows side by side for each method; the third alone


def test_rows_are_grouped_by_file_seed_and_methods_that_never_train():
    from mlx_ttsi.evaluation.runner import batches

    def entry(benchmark, id, seed=0, methods=("base",)):
        return ({"benchmark": benchmark, "id": id}, seed, list(methods))

    def shown(groups):
        return [[(r["benchmark"], r["id"], tuple(m)) for r, _, m in g] for g in groups]

    rows = [entry("a", 1), entry("a", 2), entry("a", 3), entry("b", 1), entry("b", 2, seed=1), entry("b", 3, seed=1)]
    assert shown(batches(rows, 2)) == [
        [("a", 1, ("base",)), ("a", 2, ("base",))],
        [("a", 3, ("base",))],
        [("b", 1, ("base",))],
        [("b", 2, ("base",)), ("b", 3, ("base",))],
    ]
    assert batches(rows, 1) == [[r] for r in rows]
    # a method that trains stays with its row, and so do the methods its turn answers on the way
    mixed = [entry("c", i, methods=["ttsi-all", "base", "self-label", "plan"]) for i in (1, 2)]
    assert shown(batches(mixed, 2)) == [
        [("c", 1, ("ttsi-all", "base", "self-label"))],
        [("c", 1, ("plan",)), ("c", 2, ("plan",))],
        [("c", 2, ("ttsi-all", "base", "self-label"))],
    ]
