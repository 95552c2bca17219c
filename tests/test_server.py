"""The OpenAI-compatible server, over real HTTP on loopback, serving the tiny random model."""

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from mlx_ttsi.agent import Agent
from mlx_ttsi.errors import Cancelled
from mlx_ttsi.serve.http import POLL, make_server
from mlx_ttsi.serve.service import ModelThread
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.tools import check_call, parse_tools

import openai
import pytest
from conftest import TOOLS

KEY = "test-key"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
BASE = {"ttsi": {"mode": "base"}}


def start(agent, **options):
    server = make_server(agent, "127.0.0.1", 0, quiet=True, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def agent(tiny_model_dir):
    return Agent.load(
        str(tiny_model_dir), precision="float32", settings=Settings(lora=LoRASettings(epochs=1, learning_rate=1e-2))
    )


@pytest.fixture(scope="module")
def server(agent):
    server = start(agent, api_key=KEY)
    yield server
    stop(server)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def raw(server, method, path, body=b"", headers=None):
    """One plain HTTP request: (status, parsed JSON body)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(method, path, body, {"Authorization": f"Bearer {KEY}", **(headers or {})})
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data)


def fingerprint(completion):
    """What must not change between identical base-mode requests: the calls and the candidates."""
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls]
    return calls, completion.model_extra["ttsi"]["uncertainty"]["candidates"]


@pytest.fixture
def name(agent):
    return agent.name


def base_request(client, name):
    return client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, extra_body=BASE)


def test_openai_client_gets_tool_calls_in_the_openai_shape(client, agent, name):
    completion = client.chat.completions.create(
        model=name, messages=ASK, tools=TOOLS, seed=3, temperature=0.7, extra_body=BASE
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert isinstance(call.function.arguments, str)  # a JSON string, as OpenAI sends it
    assert (
        check_call({"name": call.function.name, "arguments": json.loads(call.function.arguments)}, parse_tools(TOOLS))
        is None
    )
    assert completion.model == agent.name and completion.object == "chat.completion"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    ttsi = completion.model_extra["ttsi"]
    assert ttsi["mode"] == "base" and ttsi["adapted"] is False and ttsi["synthetic"] == 0
    assert {"queue", "scoring", "decoding", "total"} <= set(ttsi["timings"])
    assert 0 <= ttsi["uncertainty"]["score"] <= 1


def test_stream_gives_the_same_calls_as_a_plain_request(client, name):
    plain = base_request(client, name)
    chunks = list(
        client.chat.completions.create(
            model=name, messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True}, extra_body=BASE
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    assert len(chunks) > 4  # role, name, several argument pieces, finish, usage
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "tool_calls"
    assert finish[0].model_extra["ttsi"]["mode"] == "base"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    streamed = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    assert streamed == fingerprint(plain)[0]


def test_tool_choice_none_answers_in_text_streamed_or_not(client, name):
    kwargs = dict(model=name, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=6)
    plain = client.chat.completions.create(**kwargs)
    choice = plain.choices[0]
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and plain.model_extra["ttsi"]["uncertainty"] is None
    streamed = client.chat.completions.create(stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == choice.message.content


def test_named_tool_choice_calls_that_tool(client, name):
    completion = client.chat.completions.create(
        model=name,
        messages=ASK,
        tools=TOOLS,
        extra_body=BASE,
        tool_choice={"type": "function", "function": {"name": "list_alarms"}},
    )
    assert [c.function.name for c in completion.choices[0].message.tool_calls] == ["list_alarms"]
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        client.chat.completions.create(
            model=name, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
        )


def test_ttsi_field_overrides_the_server_defaults(client, name):
    adapted = client.chat.completions.create(
        model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": {"mode": "ttsi", "examples": 1}}
    )
    ttsi = adapted.model_extra["ttsi"]
    assert ttsi["adapted"] is True and ttsi["method"] == "ttsi" and ttsi["synthetic"] == 1
    assert {"synthesis", "training"} <= set(ttsi["timings"])
    certain = client.chat.completions.create(
        model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": {"mode": "auto", "threshold": 0.0}}
    )
    ttsi = certain.model_extra["ttsi"]
    assert ttsi["adapted"] is False and ttsi["uncertainty"]["threshold"] == 0.0


def test_eight_concurrent_clients_are_all_answered_and_isolated(client, agent, name):
    before = fingerprint(base_request(client, name))
    results, errors = {}, []
    barrier = threading.Barrier(8)

    def one(index):
        try:
            barrier.wait()
            ttsi = {"mode": "ttsi"} if index in (0, 4) else {"mode": "base"}
            results[index] = client.chat.completions.create(
                model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": ttsi}
            )
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 8
    assert all(results[i].model_extra["ttsi"]["adapted"] for i in (0, 4))
    for i in set(range(8)) - {0, 4}:  # base requests answered between the TT-SI ones are untouched
        assert fingerprint(results[i]) == before
    assert max(r.model_extra["ttsi"]["timings"]["queue"] for r in results.values()) > 0  # they did queue
    assert fingerprint(base_request(client, name)) == before
    assert agent.adapter.is_reset()


def test_models_and_health(client, server, agent):
    assert [m.id for m in client.models.list()] == [agent.name]
    status, health = raw(server, "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and health["status"] == "ok" and health["waiting"] == 0


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "/etc/passwd", "messages": ASK}).encode(), 404, "model_not_found"),
        (json.dumps({"model": "mlx-community/Other-Model", "messages": ASK}).encode(), 404, "model_not_found"),
        (json.dumps({"messages": ASK, "tools": "tools.json"}).encode(), 400, None),
        (json.dumps({"messages": ASK, "ttsi": {"mode": "base", "save_adapter": "/tmp/x"}}).encode(), 400, None),
        (json.dumps({"messages": ASK, "ttsi": {"examples": 1000}}).encode(), 400, None),
        (json.dumps({"messages": ASK, "ttsi": {"mode": "magic"}}).encode(), 400, None),
        (json.dumps({"messages": ASK, "tools": [{"name": "two words"}]}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(), 400, None),
        (json.dumps({"messages": ASK, "max_tokens": 0}).encode(), 400, None),
        (json.dumps({"messages": ASK, "stream": "yes"}).encode(), 400, None),
        (json.dumps({"messages": ASK, "stream_options": 5}).encode(), 400, None),
        (json.dumps({"messages": ASK, "n": True}).encode(), 400, None),
        (json.dumps({"messages": ASK, "tool_choice": ["auto"]}).encode(), 400, None),
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, body, status, code):
    got, data = raw(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert got == status
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["message"]
    assert data["error"]["code"] == code


def test_oversize_body_gets_413(server, client, name):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (server.max_body + 10)}]}).encode()
    status, data = raw(server, "POST", "/v1/chat/completions", big)
    assert status == 413 and data["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert error.value.status_code == 413


def test_wrong_or_missing_key_gets_401(server):
    bad = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=ASK)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, data = raw(server, "GET", "/v1/models", headers={"Authorization": ""})
    assert status == 401 and data["error"]["code"] == "invalid_api_key"


def test_unknown_model_and_endpoint_get_404(client, server):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert error.value.code == "model_not_found"
    assert raw(server, "POST", "/v1/completions", b"{}")[0] == 404


def send_and_close(server, body):
    """A client that sends a whole request and hangs up without reading the answer."""
    sock = socket.create_connection(server.server_address[:2])
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    return sock


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_client_that_disconnects_while_queued_is_skipped(server, client, name):
    before = fingerprint(base_request(client, name))
    stats = server.service.stats
    cancelled, received = stats["cancelled"], stats["received"]
    release = threading.Event()
    server.service.worker.submit(release.wait)  # keep the model thread busy
    sock = send_and_close(server, {"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "ttsi"}})
    wait_for(lambda: stats["received"] > received)  # queued behind the busy model thread
    sock.close()
    time.sleep(4 * POLL)  # the connection thread notices within POLL seconds and flags the job
    release.set()
    wait_for(lambda: stats["cancelled"] > cancelled)
    assert fingerprint(base_request(client, name)) == before


def hold_training(agent, monkeypatch):
    """Training waits for `release`; `training` is set once a request reaches it."""
    training, release = threading.Event(), threading.Event()
    train = agent.adapter.train

    def held_train(*args, **kwargs):
        training.set()
        release.wait(30)
        return train(*args, **kwargs)

    monkeypatch.setattr(agent.adapter, "train", held_train)
    return training, release


def test_client_that_disconnects_mid_adaptation_stops_it(server, client, agent, monkeypatch, name):
    before = fingerprint(base_request(client, name))
    stats = server.service.stats
    cancelled, answered = stats["cancelled"], stats["answered"]
    training, release = hold_training(agent, monkeypatch)
    sock = send_and_close(server, {"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "ttsi"}})
    assert training.wait(30)
    sock.close()  # while the LoRA is being trained
    time.sleep(4 * POLL)  # the connection thread notices within POLL seconds and flags the job
    release.set()
    wait_for(lambda: stats["cancelled"] > cancelled)
    assert stats["answered"] == answered  # stopped after training, not answered
    assert server.service.worker.submit(agent.adapter.is_reset).result()
    assert fingerprint(base_request(client, name)) == before


def test_serve_command_starts_and_stops(tiny_model_dir):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_ttsi",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            "0",
            "--precision",
            "float32",
            "--api-key",
            KEY,
            "--memory",
            "--max-queue",
            "4",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("serving"):
                break
        url = lines[-1].split(" at ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        completion = client.chat.completions.create(
            model=tiny_model_dir.name, messages=ASK, tools=TOOLS, extra_body=BASE
        )
        assert completion.choices[0].finish_reason == "tool_calls"
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=60) as response:
            assert json.load(response)["max_queue"] == 4
    finally:
        process.send_signal(signal.SIGTERM)  # shuts down like Ctrl-C
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopping" in err and "terminate called" not in err


def test_server_requests_never_carry_training_examples(client, name, train_on_seen):
    client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": {"mode": "ttsi"}})
    assert train_on_seen == [None]


# HTTP/1.1, live streaming, the bounded queue and cancellation


def post_body(body):
    return json.dumps(body).encode(), {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def read_sse(response):
    """The lines of an SSE response as they arrive (comments included), up to [DONE]."""
    while line := response.readline():
        line = line.decode().rstrip("\r\n")
        if line:
            yield line
        if line == "data: [DONE]":
            return


def test_keep_alive_serves_several_requests_on_one_connection(server, name):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    seen = []
    for method, path, body in [
        ("GET", "/health", None),
        ("POST", "/v1/chat/completions", {"model": name, "messages": ASK, "tools": TOOLS, **BASE}),
        ("POST", "/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "stream": True, **BASE}),
        ("POST", "/v1/chat/completions", b"{not json"),
        ("GET", "/v1/models", None),
    ]:
        data, headers = post_body(body) if isinstance(body, dict) else (body, post_body(None)[1])
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        text = response.read()
        assert not response.will_close, (path, response.headers)
        seen.append((response.status, connection.sock.getsockname()))
        if isinstance(body, dict) and body.get("stream"):
            assert response.headers["Transfer-Encoding"] == "chunked" and text.endswith(b"data: [DONE]\n\n")
    connection.close()
    assert [status for status, _ in seen] == [200, 200, 200, 400, 200]
    assert len({address for _, address in seen}) == 1  # one connection, not one per request


def test_an_error_before_the_body_is_read_closes_the_connection(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(
        "POST", "/v1/chat/completions", json.dumps({"messages": ASK}).encode(), {"Authorization": "Bearer wrong"}
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 401 and response.will_close  # the unread body must not be taken for a request
    connection.close()


def test_progress_comments_arrive_while_the_request_is_still_training(server, agent, monkeypatch):
    training, release = hold_training(agent, monkeypatch)
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(
        "POST",
        "/v1/chat/completions",
        *post_body({"messages": ASK, "tools": TOOLS, "stream": True, "ttsi": {"mode": "ttsi"}}),
    )
    response = connection.getresponse()
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    lines = read_sse(response)
    early = []
    for line in lines:  # these arrive while training is held: they were sent as each phase ended
        early.append(line)
        if line.startswith(": synthesis"):
            break
    assert training.wait(30) and not release.is_set()  # training is held: nothing of the answer exists yet
    assert [line.split()[1] for line in early] == ["scoring", "decoding", "labelling", "synthesis"]
    assert early[0].startswith(": scoring ") and early[0].split()[2].endswith(
        "s"
    )  # `: scoring 0.12s name margin 0.988`
    release.set()
    rest = list(lines)
    connection.close()
    assert rest[0].startswith(": training") and rest[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["ttsi"]["adapted"] is True


@pytest.mark.parametrize("checked", [False, True])  # the LoRA's answer as decoded, or checked after (the default)
def test_streamed_arguments_are_the_final_arguments_in_pieces(client, name, checked):
    kwargs = dict(model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": {"mode": "ttsi", "check_after": checked}})
    plain = client.chat.completions.create(**kwargs)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    first = calls[0]  # OpenAI's shape: index, id, type, name and empty arguments, then argument deltas
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == plain.choices[0].message.tool_calls[0].function.name
    assert first.function.arguments == ""
    pieces = [call.function.arguments for call in calls[1:]]
    assert all(call.id is None and call.function.name is None for call in calls[1:])
    assert len(pieces) > 2 or checked  # decoded token by token; a checked answer comes once checked
    final = plain.choices[0].message.tool_calls[0].function.arguments
    assert json.loads("".join(pieces)) == json.loads(final)


def test_an_error_after_the_200_is_an_sse_error_object(server, client, agent, monkeypatch, name):
    from mlx_ttsi.errors import TeacherError

    def unreachable(*args, **kwargs):
        raise TeacherError("cannot reach teacher endpoint http://10.0.0.7:8080/v1/chat/completions: refused")

    monkeypatch.setattr("mlx_ttsi.turn.Turn.adapt", unreachable)  # fails after scoring's progress went out
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(
        "POST",
        "/v1/chat/completions",
        *post_body({"messages": ASK, "tools": TOOLS, "stream": True, "ttsi": {"mode": "ttsi"}}),
    )
    response = connection.getresponse()
    lines = list(read_sse(response))
    assert response.status == 200 and lines[0].startswith(": scoring")
    error = json.loads(lines[-2][6:])["error"]
    assert lines[-1] == "data: [DONE]" and "teacher could not be reached" in error["message"]
    assert error["type"] == "server_error" and "10.0.0.7" not in error["message"]  # the teacher's URL stays in the log
    connection.close()
    with pytest.raises(openai.APIError, match="teacher could not be reached"):
        list(
            client.chat.completions.create(
                model=name, messages=ASK, tools=TOOLS, stream=True, extra_body={"ttsi": {"mode": "ttsi"}}
            )
        )
    status, data = raw(
        server, "POST", "/v1/chat/completions", *post_body({"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "ttsi"}})
    )
    assert status == 502 and "10.0.0.7" not in data["error"]["message"]


@pytest.fixture(scope="module")
def slow_agent(tiny_model_dir):
    """A second agent whose training runs long (100 epochs), for the queue and cancellation."""
    return Agent.load(
        str(tiny_model_dir),
        precision="float32",
        settings=Settings(lora=LoRASettings(epochs=100, learning_rate=1e-2, stop_loss=0, stop_said_back=False)),
    )


@pytest.fixture(scope="module")
def small(slow_agent):
    """A server that lets two requests wait."""
    server = start(slow_agent, api_key=KEY, max_queue=2)
    yield server
    stop(server)


def health(server):
    return raw(server, "GET", "/health")[1]


def test_beyond_max_queue_requests_get_503_with_retry_after(small):
    client = openai.OpenAI(base_url=small.url, api_key=KEY, max_retries=0, timeout=60)
    release = threading.Event()
    small.service.worker.submit(release.wait)  # the model thread is busy
    results = []
    waiting = [
        threading.Thread(
            target=lambda: results.append(
                client.chat.completions.create(model="", messages=ASK, tools=TOOLS, extra_body=BASE)
            )
        )
        for _ in range(2)
    ]
    for thread in waiting:
        thread.start()
    wait_for(lambda: health(small)["waiting"] == 2)
    rejected = health(small)["rejected"]
    connection = http.client.HTTPConnection(*small.server_address[:2], timeout=60)
    connection.request("POST", "/v1/chat/completions", *post_body({"messages": ASK, "tools": TOOLS, **BASE}))
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 503 and int(response.headers["Retry-After"]) >= 1
    assert error["code"] == "server_busy" and error["type"] == "server_error"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(messages=ASK, tools=TOOLS, model="", extra_body=BASE)
    state = health(small)
    assert state["busy"] is True and state["waiting"] == 2 and state["rejected"] == rejected + 2
    release.set()
    for thread in waiting:
        thread.join(60)
    assert len(results) == 2 and all(r.choices[0].finish_reason == "tool_calls" for r in results)
    wait_for(lambda: not health(small)["busy"])


def test_a_client_gone_mid_training_frees_the_model_at_once(small, slow_agent, monkeypatch, capfd):
    client = openai.OpenAI(base_url=small.url, api_key=KEY, max_retries=0, timeout=60)
    before = fingerprint(base_request(client, slow_agent.name))
    train = slow_agent.adapter.train
    monkeypatch.setattr(
        slow_agent.adapter,
        "train",  # five times the examples: about half a minute of training
        lambda examples, *args, **kwargs: train(examples * 5, *args, **kwargs),
    )
    cancelled = small.service.stats["cancelled"]
    connection = http.client.HTTPConnection(*small.server_address[:2], timeout=60)
    connection.request(
        "POST",
        "/v1/chat/completions",
        *post_body({"messages": ASK, "tools": TOOLS, "stream": True, "ttsi": {"mode": "ttsi"}}),
    )
    for line in read_sse(connection.getresponse()):
        if line.startswith(": synthesis"):  # training has started
            break
    time.sleep(0.5)
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    gone = time.perf_counter()
    after = base_request(client, slow_agent.name)
    assert after.model_extra["ttsi"]["timings"]["queue"] < 5  # started within seconds, not after the training
    assert time.perf_counter() - gone < 10
    assert fingerprint(after) == before  # and unharmed by the abandoned LoRA
    assert small.service.stats["cancelled"] == cancelled + 1
    state = health(small)
    assert state["busy"] is False and state["waiting"] == 0 and state["loaded"] is True
    assert "Traceback" not in capfd.readouterr().err


def test_health_reports_the_model_the_queue_and_the_counters(small, slow_agent):
    state = health(small)
    assert state["status"] == "ok" and state["loaded"] is True
    assert "model" not in state and slow_agent.name not in json.dumps(state)  # /health is open: it names no model
    assert state["max_queue"] == 2 and state["waiting"] == 0 and state["busy"] is False
    assert {"received", "answered", "cancelled", "failed", "rejected"} <= set(state)
    release = threading.Event()
    small.service.worker.submit(release.wait)
    wait_for(lambda: health(small)["busy"])
    release.set()
    wait_for(lambda: not health(small)["busy"])


def test_a_stream_the_agent_refuses_gets_a_status_not_a_200(server):
    long = [{"role": "user", "content": "What is the weather in Paris? " * 2000}]  # beyond the context
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request("POST", "/v1/chat/completions", *post_body({"messages": long, "tools": TOOLS, "stream": True}))
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and "context" in error["message"]
    connection.close()


BAD_WHILE_BUSY = [
    {
        "messages": ASK,
        "tools": [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}],
    },
    {"messages": [{"role": "robot", "content": "hi"}], "tools": TOOLS},
    {"messages": ASK, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"messages": ASK, "tools": TOOLS, "ttsi": {"threshold": "high"}},
]


@pytest.mark.parametrize("body", BAD_WHILE_BUSY)
def test_a_bad_request_is_refused_at_once_while_the_model_is_busy(server, agent, monkeypatch, body):
    training, release = hold_training(agent, monkeypatch)
    busy = threading.Thread(
        target=raw,
        args=(
            server,
            "POST",
            "/v1/chat/completions",
            *post_body({"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "ttsi"}}),
        ),
    )
    busy.start()
    try:
        assert training.wait(30)  # the model thread is held in a training
        received = server.service.stats["received"]
        started = time.perf_counter()
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
        connection.request("POST", "/v1/chat/completions", *post_body(body))
        response = connection.getresponse()
        error = json.loads(response.read())["error"]
        connection.close()
        assert response.status == 400 and time.perf_counter() - started < 1.0, error
        assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
        assert server.service.stats["received"] == received  # refused before it took a place in the queue
    finally:
        release.set()
        busy.join(60)


def raw_socket(server, head, body=b"", length=None):
    """A POST written by hand: its headers with Content-Length `length` (default: the body's)."""
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: "
        + str(len(body) if length is None else length).encode()
        + b"\r\n\r\n"
        + head
    )
    return sock


def status_of(sock):
    """The status of the response on `sock` and the seconds it took ("" if the server just closed)."""
    started = time.perf_counter()
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    sock.close()
    return data.split(b" ")[1].decode() if data else "", time.perf_counter() - started


def test_a_body_that_stops_short_or_trickles_gets_a_clear_error_soon(server):
    from mlx_ttsi.serve.http import BODY_IDLE, BODY_SECONDS

    whole = json.dumps({"messages": ASK}).encode()
    stalled = raw_socket(server, whole[:10], whole)  # says more than it sends, and waits
    status, seconds = status_of(stalled)
    assert status == "408" and seconds < BODY_IDLE + 1
    cut = raw_socket(server, whole[:10], whole)  # sends half and hangs up its sending side
    cut.shutdown(socket.SHUT_WR)
    assert status_of(cut)[0] == "400"
    slow = raw_socket(server, b"", whole)
    started = time.perf_counter()
    try:
        for byte in whole:  # one byte every 0.1 s: never idle, but too slow
            slow.sendall(bytes([byte]))
            time.sleep(0.1)
    except OSError:  # the server answered and closed
        pass
    assert status_of(slow)[0] == "408" and time.perf_counter() - started < BODY_SECONDS + 1.5


def test_an_oversize_body_gets_413_even_if_it_never_comes(server):
    sock = raw_socket(server, b"", length=50 << 20)  # claims 50 MB, sends nothing
    status, seconds = status_of(sock)
    assert status == "413" and seconds < 1


def test_a_tool_schema_ref_to_a_url_is_refused_and_never_fetched(server, trap, tmp_path):
    (tmp_path / "s.json").write_text('{"type": "string"}')
    for ref in (trap.url, (tmp_path / "s.json").as_uri()):
        tools = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": ref}}}}]
        status, data = raw(
            server,
            "POST",
            "/v1/chat/completions",
            *post_body({"messages": ASK, "tools": tools, "ttsi": {"mode": "ttsi"}}),
        )
        assert status == 400 and "outside the schema" in data["error"]["message"], data
    assert trap.hits == []


def nested_schema(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


MALFORMED = {
    "nested 100000 deep": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "unclosed nesting": b'{"messages": ' + b"[" * 100_000,
    "tool_calls a number": json.dumps({"messages": [*ASK, {"role": "assistant", "tool_calls": 5}]}).encode(),
    "content part text a number": json.dumps(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    ).encode(),
    "role a list": json.dumps({"messages": [{"role": ["user"], "content": "hi"}]}).encode(),
    "call arguments a number": json.dumps(
        {"messages": [*ASK, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "5"}}]}]}
    ).encode(),
    "call arguments nested 900 deep": json.dumps(
        {
            "messages": [
                *ASK,
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[" * 900 + "]" * 900}}]},
            ]
        }
    ).encode(),
    "schema nested 150 levels": json.dumps(
        {"messages": ASK, "tools": [{"name": "f", "parameters": nested_schema(150)}]}
    ).encode(),
    "schema nested 40 levels": json.dumps(
        {"messages": ASK, "tools": [{"name": "f", "parameters": nested_schema(40)}]}
    ).encode(),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_body_gets_a_one_line_400_at_once(server, body):
    started = time.perf_counter()
    status, data = raw(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert status == 400 and time.perf_counter() - started < 2, data
    assert data["error"]["type"] == "invalid_request_error" and "\n" not in data["error"]["message"]


def test_a_request_dropped_while_queued_is_freed_at_once(server, monkeypatch):
    import gc
    import weakref

    requests, submit = [], server.service.submit
    monkeypatch.setattr(
        server.service, "submit", lambda request: requests.append(weakref.ref(request)) or submit(request)
    )
    stats, release = server.service.stats, threading.Event()
    server.service.worker.submit(release.wait)  # keep the model thread busy
    cancelled = stats["cancelled"]
    try:
        for _ in range(5):
            sock = send_and_close(server, {"messages": ASK, "tools": TOOLS})
            wait_for(lambda: len(requests) and server.service.waiting)
            sock.close()
            wait_for(lambda: server.service.waiting == 0)
        wait_for(lambda: stats["cancelled"] == cancelled + 5)
        time.sleep(2 * POLL)  # the connection threads end
        gc.collect()
        assert len(requests) == 5 and all(ref() is None for ref in requests)  # while the model is still busy
    finally:
        release.set()


def test_shutdown_waits_for_the_running_request_a_bounded_time(agent):
    server = start(agent)
    release = threading.Event()
    server.service.worker.submit(release.wait)  # a request that does not finish
    queued = server.service.worker.submit(time.sleep, 0)
    server.shutdown()
    closing = threading.Thread(target=server.service.close, args=(0.5,), daemon=True)
    started = time.perf_counter()
    closing.start()
    closing.join(5)
    release.set()
    assert not closing.is_alive() and time.perf_counter() - started < 2
    assert queued.cancelled()
    server.socket.close()


def test_connections_past_the_cap_get_503_at_once(agent):
    server = start(agent, max_connections=2)
    try:
        idle = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(2)]
        wait_for(lambda: server.service.stats["connections"] == 2)
        started = time.perf_counter()
        status, data = raw(server, "GET", "/health")
        assert status == 503 and data["error"]["code"] == "too_many_connections"
        assert time.perf_counter() - started < 1
        for sock in idle:
            sock.close()
        wait_for(lambda: server.service.stats["connections"] == 0)
        status, data = raw(server, "GET", "/health")
        assert status == 200 and data["rejected"] == 1 and data["max_connections"] == 2
    finally:
        stop(server)


def test_headers_sent_too_slowly_lose_the_connection_by_their_deadline(server, monkeypatch):
    monkeypatch.setattr("mlx_ttsi.serve.http.HEADER_SECONDS", 1.0, raising=False)
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
    started = time.perf_counter()
    closed = False
    while not closed and time.perf_counter() - started < 5:
        try:
            sock.sendall(b"X")  # one header byte every 0.2 s: never idle for long, never done
            time.sleep(0.2)
            closed = not connected_socket(sock)
        except OSError:
            closed = True
    sock.close()
    assert closed and time.perf_counter() - started < 2.5


def connected_socket(sock):
    """False once the server has closed its end."""
    sock.setblocking(False)
    try:
        return sock.recv(1 << 16) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_the_model_thread_runs_jobs_that_may_go_together_in_one_call():
    thread = ModelThread(most_together=3)
    release, calls = threading.Event(), []

    def together(waiting):
        calls.append([n for (n,) in waiting])
        return [(None, ValueError(n)) if n == 3 else (n * 10, None) for (n,) in waiting]

    def alone(n):
        calls.append(n)
        return n

    thread.submit(release.wait)  # the thread is busy while the jobs arrive
    futures = [thread.submit(alone, n, together=None if n == 2 else together) for n in range(6)]
    futures[4].cancel()  # its client went away while it waited
    release.set()
    assert [f.result(10) for f in futures[:3]] == [0, 10, 2]
    with pytest.raises(ValueError):
        futures[3].result(10)  # one job's error is its own
    assert futures[5].result(10) == 5
    assert calls == [[0, 1, 3], 2, 5]  # the oldest and those that may join it, at most 3; a lone job alone
    thread.close()


def answer_of(completion):
    """What a user reads: the text, the calls and the uncertainty's score."""
    message, ttsi = completion.choices[0].message, completion.model_extra["ttsi"]
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    u = ttsi["uncertainty"]
    return message.content, calls, u and round(u["score"], 4)


def test_waiting_requests_that_never_train_are_answered_side_by_side_as_each_alone(client, server, name):
    asks = [
        ("What is the weather in Paris?", "check"),
        ("Set a loud alarm at 07:30 for work", "base"),
        ("What is the weather in Rome tomorrow, in celsius?", "check"),
        ("List all alarms", "plan"),
        ("What is the weather in Oslo?", "ttsi"),  # trains: answered on its own
    ]

    def post(request, mode):
        messages = [{"role": "user", "content": request}]
        return client.chat.completions.create(
            model=name, messages=messages, tools=TOOLS, extra_body={"ttsi": {"mode": mode}}
        )

    alone = [answer_of(post(*ask)) for ask in asks[:4]]
    before, results = health(server)["together"], {}
    release = threading.Event()
    server.service.worker.submit(release.wait)  # all five wait, then the model thread takes them
    threads = [threading.Thread(target=lambda i=i: results.update({i: post(*asks[i])})) for i in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: server.service.waiting == 5)
    release.set()
    for thread in threads:
        thread.join(120)
    assert [answer_of(results[i]) for i in range(4)] == alone
    assert results[4].model_extra["ttsi"]["adapted"]
    assert health(server)["together"] - before == 4  # the four that never train, in one group


def test_a_request_stopped_in_a_group_stops_alone(server, name):
    service, texts = server.service, ["What is the weather in Paris?", "List all alarms", "Set an alarm at 06:00"]
    parsed = [
        service.parse({"model": name, "messages": [{"role": "user", "content": t}], "tools": TOOLS}) for t in texts
    ]
    alone = [answer_of(openai.types.chat.ChatCompletion(**service.submit(p).future.result(60))) for p in parsed]
    cancelled, together, release = service.stats["cancelled"], service.stats["together"], threading.Event()
    service.worker.submit(release.wait)
    jobs = [service.submit(p) for p in parsed]
    polls = itertools.count()
    jobs[1].cancelled = lambda: next(polls) >= 3  # its client goes after its first few forward passes
    release.set()
    assert isinstance(jobs[1].future.exception(60), Cancelled)
    answers = [answer_of(openai.types.chat.ChatCompletion(**jobs[i].future.result(60))) for i in (0, 2)]
    assert answers == [alone[0], alone[2]] and service.stats["cancelled"] == cancelled + 1
    assert service.stats["together"] == together + 3  # the three ran as one group
    assert agent_is_free(service)


def agent_is_free(service):
    """The next request is answered, and the agent's LoRA is reset."""
    parsed = service.parse({"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "base"}})
    return service.submit(parsed).future.result(60)["choices"] and service.agent.adapter.is_reset()
