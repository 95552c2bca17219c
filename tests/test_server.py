"""The OpenAI-compatible server, over real HTTP on loopback, serving the tiny random model."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from mlx_ttsi.agent import Agent
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.server import make_server
from mlx_ttsi.tools import check_call, parse_tools

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
    return Agent.load(str(tiny_model_dir), precision="float32",
                      settings=Settings(lora=LoRASettings(epochs=1, learning_rate=1e-2)))


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
    completion = client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, seed=3,
                                                temperature=0.7, extra_body=BASE)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert isinstance(call.function.arguments, str)  # a JSON string, as OpenAI sends it
    assert check_call({"name": call.function.name, "arguments": json.loads(call.function.arguments)},
                      parse_tools(TOOLS)) is None
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
    chunks = list(client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=BASE))
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
        model=name, messages=ASK, tools=TOOLS, extra_body=BASE,
        tool_choice={"type": "function", "function": {"name": "list_alarms"}})
    assert [c.function.name for c in completion.choices[0].message.tool_calls] == ["list_alarms"]
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        client.chat.completions.create(model=name, messages=ASK, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_ttsi_field_overrides_the_server_defaults(client, name):
    adapted = client.chat.completions.create(model=name, messages=ASK, tools=TOOLS,
                                             extra_body={"ttsi": {"mode": "ttsi", "examples": 1}})
    ttsi = adapted.model_extra["ttsi"]
    assert ttsi["adapted"] is True and ttsi["method"] == "ttsi" and ttsi["synthetic"] == 1
    assert {"synthesis", "training"} <= set(ttsi["timings"])
    certain = client.chat.completions.create(model=name, messages=ASK, tools=TOOLS,
                                             extra_body={"ttsi": {"mode": "auto", "threshold": 0.0}})
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
            results[index] = client.chat.completions.create(model=name, messages=ASK, tools=TOOLS,
                                                            extra_body={"ttsi": ttsi})
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
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, body, status, code):
    got, data = raw(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert got == status
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["message"]
    assert data["error"]["code"] == code


def test_oversize_body_gets_413(server, client, name):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (server.service.max_body + 10)}]}).encode()
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
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode()
                 + b"\r\n\r\n" + data)
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
    release.set()
    wait_for(lambda: stats["cancelled"] > cancelled)
    assert fingerprint(base_request(client, name)) == before


def test_client_that_disconnects_mid_adaptation_stops_it(server, client, agent, monkeypatch, name):
    before = fingerprint(base_request(client, name))
    stats = server.service.stats
    cancelled, answered = stats["cancelled"], stats["answered"]
    training, release = threading.Event(), threading.Event()
    train = agent.adapter.train

    def slow_train(*args, **kwargs):
        training.set()
        release.wait(30)
        return train(*args, **kwargs)

    monkeypatch.setattr(agent.adapter, "train", slow_train)
    sock = send_and_close(server, {"messages": ASK, "tools": TOOLS, "ttsi": {"mode": "ttsi"}})
    assert training.wait(30)
    sock.close()  # while the LoRA is being trained
    release.set()
    wait_for(lambda: stats["cancelled"] > cancelled)
    assert stats["answered"] == answered  # stopped after training, not answered
    assert server.service.worker.submit(agent.adapter.is_reset).result()
    assert fingerprint(base_request(client, name)) == before


def test_serve_command_starts_and_stops(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_ttsi", "serve", "--model", str(tiny_model_dir), "--port", "0",
         "--precision", "float32", "--api-key", KEY, "--memory"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("serving"):
                break
        url = lines[-1].split(" at ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        completion = client.chat.completions.create(model=tiny_model_dir.name, messages=ASK, tools=TOOLS,
                                                    extra_body=BASE)
        assert completion.choices[0].finish_reason == "tool_calls"
    finally:
        process.send_signal(signal.SIGTERM)  # shuts down like Ctrl-C
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopping" in err and "terminate called" not in err


def test_server_requests_never_carry_training_examples(client, name, train_on_seen):
    client.chat.completions.create(model=name, messages=ASK, tools=TOOLS, extra_body={"ttsi": {"mode": "ttsi"}})
    assert train_on_seen == [None]
