import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlx_ttsi.agent import Agent
from mlx_ttsi.errors import TeacherError
from mlx_ttsi.synthesis import EndpointTeacher, ModelWriter, Synthesis, admit

import pytest
from conftest import TOOLS


def test_admit_checks_every_example(tools):
    s = Synthesis()
    good = [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    original = "Weather in Paris?"
    admit(s, "Weather in Rome today?", good, original, tools, "self")
    admit(s, "weather in PARIS?!", good, original, tools, "self")  # copy of the request
    admit(s, "Weather in Rome today", good, original, tools, "self")  # duplicate example
    admit(s, "  ", good, original, tools, "self")
    admit(s, "Here is a request:", good, original, tools, "self")
    admit(s, "Weather weather weather weather weather in Rome", good, original, tools, "self")
    admit(s, '{"name": "get_weather"}', good, original, tools, "self")
    admit(s, "Fly me to Rome", [{"name": "fly", "arguments": {}}], original, tools, "self")
    admit(s, "Weather somewhere nice", [{"name": "get_weather", "arguments": {}}], original, tools, "self")
    admit(
        s,
        "Weather in Oslo please",
        [{"name": "get_weather", "arguments": {"city": "Oslo Oslo Oslo Oslo Oslo"}}],
        original,
        tools,
        "self",
    )
    admit(s, "Nothing to call here", [], original, tools, "self")
    admit(
        s,
        "Set an alarm at six",
        [{"name": "set_alarm", "arguments": {"time": "6", "loud": True}}],
        original,
        tools,
        "self",
        same_tool="get_weather",
    )
    assert [e["request"] for e in s.examples] == ["Weather in Rome today?"]
    assert s.rejected == {
        "copy of the request": 1,
        "duplicate example": 1,
        "empty request": 1,
        "request is incomplete": 1,
        "request repeats itself": 1,
        "request is not plain text": 1,
        "names unknown tool 'fly'": 1,
        "invalid arguments": 1,
        "argument repeats itself": 1,
        "no tool call": 1,
        "another tool than the model's own choice": 1,
    }


def test_model_writer_writes_one_clean_line(tiny, tools, plausible_requests):
    plausible_requests[:] = ['1. "Set an alarm at 7 for work."\nWhat is the weather?']
    writer = ModelWriter(tiny)
    request = writer.write_request(writer.own_state(), "What is the weather in Paris?", tools)
    assert request == "Set an alarm at 7 for work."  # numbering, quotes and the second line gone


def test_model_writer_labels_its_requests_with_valid_calls(tiny, tools, plausible_requests):
    from mlx_ttsi.tools import check_call

    plausible_requests[:] = [
        "Set an alarm at 7 for work.",
        "weather",
        "What is the weather in Paris?",
        "Convert 100 USD to EUR.",
    ]
    s = ModelWriter(tiny).synthesize("What is the weather in Paris?", tools, k=2, seed=1, max_attempts=4)
    assert [e["request"] for e in s.examples] == ["Set an alarm at 7 for work.", "Convert 100 USD to EUR."]
    assert s.rejected == {"request is incomplete": 1, "copy of the request": 1} and s.attempts == 4
    for example in s.examples:
        assert example["source"] == "self" and len(example["calls"]) == 1
        assert check_call(example["calls"][0], tools) is None


class Teacher(BaseHTTPRequestHandler):
    reply = ""
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Teacher.seen.append((self.path, self.headers.get("Authorization"), body))
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": Teacher.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_endpoint_teacher_examples_are_parsed_and_checked(teacher_url, tools):
    Teacher.reply = (
        "Here you go:\n```json\n"
        + json.dumps(
            [
                {"request": "Weather in Rome?", "calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]},
                {"request": "Alarm at six", "call": {"name": "set_alarm", "arguments": {"time": "06:00"}}},
            ]
        )
        + "\n```"
    )
    teacher = EndpointTeacher(teacher_url, model="big", api_key="k")
    s = teacher.synthesize("Weather in Paris?", tools, k=2, seed=0, max_attempts=1)
    assert [e["request"] for e in s.examples] == ["Weather in Rome?"]
    assert s.rejected == {"invalid arguments": 1}  # set_alarm lacks the required 'loud'
    path, auth, body = Teacher.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "big"


def test_unreachable_teacher_is_a_clear_error(tools):
    teacher = EndpointTeacher("http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(TeacherError, match="cannot reach teacher"):
        teacher.synthesize("Weather in Paris?", tools, k=1, seed=0)


def test_ttd_with_a_local_teacher_model(tiny, tiny_model_dir, plausible_requests):
    from mlx_ttsi.settings import Settings

    plausible_requests[:] = ["Set an alarm at 7 for work.", "Convert 100 USD to EUR."]
    agent = Agent(tiny, Settings(examples=2, same_tool=False), teacher=str(tiny_model_dir))
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd")
    assert answer.adapted and answer.method == "ttd" and answer.training["examples"] == 2
    assert [e["request"] for e in answer.synthetic] == ["Set an alarm at 7 for work.", "Convert 100 USD to EUR."]
    assert all(e["source"] == "self" for e in answer.synthetic)  # a local teacher writes like TT-SI
    assert agent.adapter.is_reset()


def test_ttd_check_after_checks_the_base_and_the_adapted_answer(tiny, tiny_model_dir, plausible_requests, monkeypatch):
    import mlx_ttsi.turn as turn
    from mlx_ttsi.settings import Settings
    from mlx_ttsi.synthesis import ModelWriter

    plausible_requests[:] = ["Set an alarm at 7 for work.", "Convert 100 USD to EUR."]
    agent = Agent(tiny, Settings(examples=2, same_tool=False, check_odds=0.0), teacher=str(tiny_model_dir))
    base = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="base").tool_calls
    candidates = ({"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "list_alarms", "arguments": {}})
    checked, attached = next(c for c in candidates if [c] != base), []  # a check that changes the base answer

    def label_calls(decoder, prompt, tools, calls, context):  # every answer checked into `checked`
        attached.append(agent.adapter.trained)
        return [dict(checked)]

    monkeypatch.setattr(turn, "label_calls", label_calls)
    plain = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", check_after=False)
    assert plain.adapted and attached == [] and plain.label is None  # TT-D has no self-check of its own
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd")  # --check-after is the default
    assert attached == [False, True] and answer.adapted and answer.method == "ttd"  # base, then with the LoRA
    assert answer.tool_calls == [checked] and answer.label == [checked]
    assert answer.unchecked == (None if plain.tool_calls == [checked] else plain.tool_calls)
    assert "checking" in answer.timings and agent.adapter.is_reset()
    # every teacher example refused: the answer is the checked base answer, not the base one
    monkeypatch.setattr(ModelWriter, "label", lambda self, state, request, tools, options=None: [])
    refused = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", check_after=True)
    assert not refused.adapted and refused.note and refused.tool_calls == [checked] and refused.method == "check"


def test_check_weights_base_checks_the_adapted_answer_with_the_lora_set_aside(
    tiny, tiny_model_dir, plausible_requests, monkeypatch
):
    import mlx_ttsi.turn as turn
    from mlx_ttsi.settings import Settings

    plausible_requests[:] = ["Set an alarm at 7 for work.", "Convert 100 USD to EUR."]
    agent = Agent(tiny, Settings(examples=2, same_tool=False, check_odds=0.0), teacher=str(tiny_model_dir))
    checked, attached = {"name": "list_alarms", "arguments": {}}, []
    label_calls = turn.label_calls

    def spy(decoder, prompt, tools, calls, context):  # which weights write the check
        attached.append(agent.adapter.attached)
        return label_calls(decoder, prompt, tools, calls, context)

    monkeypatch.setattr(turn, "label_calls", spy)
    adapted = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", check_after=True)
    assert attached == [False, True] and adapted.adapted
    attached.clear()
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", check_after=True, check_weights="base")
    assert attached == [False, False] and answer.adapted and answer.method == "ttd"  # base, then base again
    assert answer.training["loss"] == adapted.training["loss"] and agent.adapter.is_reset()  # the same LoRA
    # the base weights check the adapted answer: what they make of it is what mode check makes of it
    monkeypatch.setattr(turn, "label_calls", lambda decoder, prompt, tools, calls, context: [dict(checked)])
    rewritten = agent.ask(
        "What is the weather in Paris?", tools=TOOLS, mode="ttd", check_after=True, check_weights="base"
    )
    assert rewritten.tool_calls == [checked]


def test_a_request_that_cannot_adapt_says_why_on_stderr_and_in_json(teacher_url, tiny_model_dir, tools_file):
    from mlx_ttsi.cli import cli

    from click.testing import CliRunner

    Teacher.reply = "Sorry, I cannot help with that."
    args = [
        "ask",
        "What is the weather in Paris?",
        "--model",
        str(tiny_model_dir),
        "--mode",
        "ttd",
        "--teacher",
        teacher_url,
        "--tools",
        str(tools_file),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    assert "note: not adapted: all 2 candidate examples were rejected (none written)" in result.stderr
    assert "training" not in result.stderr
    quiet = CliRunner().invoke(cli, [*args, "--json", "-q"])
    data = json.loads(quiet.stdout)
    assert data["adapted"] is False and data["note"].startswith("not adapted: all 2 candidate examples")


def test_each_requests_settings_reach_a_cached_local_teacher(tiny, tiny_model_dir, monkeypatch):
    from mlx_ttsi.decoding import CallDecoder
    from mlx_ttsi.settings import Settings

    from conftest import SAMPLERS

    built = []
    monkeypatch.setattr(
        "mlx_ttsi.synthesis.CallDecoder",
        lambda *args, **options: built.append(options) or CallDecoder(*args, **options),
    )
    agent = Agent(tiny, Settings(examples=1, same_tool=False), teacher=str(tiny_model_dir))
    agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", temperature=0.2, norm="mean")
    first = len(SAMPLERS)
    agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", temperature=1.5, max_calls=2)
    assert first >= 1 and len(SAMPLERS) > first
    assert {s["temp"] for s in SAMPLERS[:first]} == {0.2} and {s["temp"] for s in SAMPLERS[first:]} == {1.5}
    assert built[0]["name_norm"] == "mean" and built[-1] == {"name_norm": "sum", "max_calls": 2}


def test_ttd_stops_waiting_for_its_teacher_once_the_request_is_cancelled(tiny):
    import socket
    import time

    from mlx_ttsi.errors import Cancelled

    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    agent = Agent(tiny, teacher=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
    started, outcome = time.perf_counter(), []

    def cancelled():  # the client leaves half a second in
        return time.perf_counter() - started > 0.5

    def ask():
        try:
            agent.ask("What is the weather in Paris?", tools=TOOLS, mode="ttd", cancelled=cancelled)
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(10)
    silent.close()
    assert not thread.is_alive() and time.perf_counter() - started < 3
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert agent.adapter.is_reset()
