"""An OpenAI-compatible HTTP server over one Agent: POST /v1/chat/completions, GET /v1/models, /health.

Standard library only, like mlx-lm's server: a ThreadingHTTPServer reads requests on one thread per
connection and hands them to a single model thread, which answers them one at a time in arrival
order (the Agent resets its LoRA after each, so no request sees another's adapter). A request whose
client has gone is skipped when its turn comes, or stopped at the next phase of its adaptation.

    server = make_server(agent, "127.0.0.1", 8080, api_key="secret")
    server.serve_forever()
"""

import atexit
import hmac
import json
import queue
import select
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import CancelledError, Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlx.core as mx

from .errors import TTSIError
from .adapter_memory import tools_key
from .prompts import last_user_text, normalize_messages
from .settings import BY_NAME, OPTIONS
from .tools import parse_tools

MAX_BODY = 1 << 20  # bytes; larger request bodies get 413
DRAIN = 16 << 20  # an oversize body up to this is read and dropped, so the client sees the 413
PIECE = 16  # characters per streamed delta
TTSI_FIELDS = {o.name for o in OPTIONS if o.request}  # what a request's `ttsi` object may set


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status, message, code=None, param=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self):
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection: the request is dropped."""


def connected(sock):
    """False once the client has closed its end (peeks, consumes nothing)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return True
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


class ModelThread:
    """The one thread that uses the model: jobs run one at a time, in the order they came."""

    def __init__(self):
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="mlx-ttsi-model", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def submit(self, fn, *args):
        future = Future()
        self.jobs.put((future, fn, args))
        return future

    def _loop(self):
        try:
            while (job := self.jobs.get()) is not None:
                future, fn, args = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as error:
                        future.set_exception(error)
        finally:
            mx.clear_streams()  # MLX needs each thread to free its own streams, or the process aborts at exit

    def close(self):
        """Cancel what is queued, let the running job finish, and stop the thread."""
        atexit.unregister(self.close)
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        self.jobs.put(None)
        self.thread.join()


class Service:
    """The model side: checks a request body, queues it for the model thread, builds the response."""

    def __init__(self, agent, api_key=None, memory=None, names=(), max_body=MAX_BODY):
        self.agent = agent
        self.api_key = api_key
        self.memory = memory
        self.names = {agent.name, *names}  # model names a request may ask for (compared, never loaded)
        self.max_body = max_body
        self.worker = ModelThread()
        self.stats = Counter()
        self._stats_lock = threading.Lock()

    def count(self, key, step=1):
        with self._stats_lock:
            self.stats[key] += step

    def close(self, grace=10):
        """Drop queued requests (503), finish the one being answered and give its client the answer."""
        self.worker.close()
        deadline = time.monotonic() + grace
        while self.stats["inflight"] > 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def model_card(self):
        return {"id": self.agent.name, "object": "model", "created": 0, "owned_by": "mlx-ttsi"}

    def parse(self, body):
        """The request's fields, checked; anything a request may not set is refused here."""
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise APIError(400, "model must be a string", param="model")
        if model and model not in self.names:
            raise APIError(404, f"the model {model!r} does not exist here; this server serves {self.agent.name!r}",
                           "model_not_found", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "messages must be a non-empty list", param="messages")
        tools = body.get("tools") or None
        if tools is not None and not isinstance(tools, list):
            raise APIError(400, "tools must be a list", param="tools")
        options = {}
        for key, name in (("seed", "seed"), ("max_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens")):
            if body.get(key) is not None:
                options[name] = _setting(name, body[key], key)
        if body.get("temperature") is not None:  # accepted, but answers are greedy (docs/server.md)
            _number(body["temperature"], "temperature", 0, 2)
        if body.get("n") not in (None, 1):
            raise APIError(400, "only n=1 is supported", param="n")
        tools = _choose_tools(tools, body.get("tool_choice"))
        options.update(_ttsi_options(body.get("ttsi")))
        stream_options = body.get("stream_options") or {}
        return {"messages": messages, "tools": tools, "options": options, "stream": bool(body.get("stream")),
                "usage_chunk": isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))}

    def submit(self, request, alive):
        """Queue a parsed request for the model thread; returns a Future of the response dict."""
        self.count("received")
        return self.worker.submit(self._answer, request, alive, time.perf_counter())

    def _answer(self, request, alive, received):
        """Runs on the model thread: every use of the model happens here, one request at a time."""
        try:
            response = self._run(request, alive, received)
        except ClientGone:
            self.count("cancelled")
            raise
        except Exception:
            self.count("failed")
            raise
        self.count("answered")
        return response

    def _run(self, request, alive, received):
        if not alive():
            raise ClientGone("before its turn")
        queued = time.perf_counter() - received

        def check(phase, seconds, detail=""):  # called by the agent after each phase
            if not alive():
                raise ClientGone(f"after {phase}")

        agent, options = self.agent, dict(request["options"])
        tools = parse_tools(request["tools"]) if request["tools"] else []
        started = time.perf_counter()
        recall, reuse = self._recall(request, tools, options)
        answer = agent.ask(messages=request["messages"], tools=tools or None, progress=check, adapter_weights=reuse,
                           keep_adapter=recall.get("memory") == "miss", **options)
        clock = time.perf_counter()
        key, vector = recall.pop("key", None), recall.pop("vector", None)
        if answer.reused:
            recall["memory"] = "reused"
        elif answer.adapter is not None:
            stored = self.memory.store(key, vector, answer.adapter, answer.method)
            recall["memory"] = "stored" if stored else "miss"
        elif recall.get("memory") == "hit":
            recall["memory"] = "unused"  # a close adapter exists, but this request was not adapted
        if recall:
            recall["memory_seconds"] = round(recall["memory_seconds"] + time.perf_counter() - clock, 3)
        usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                 "total_tokens": answer.prompt_tokens + answer.completion_tokens}
        timings = {"queue": round(queued, 3), **answer.timings, "server": round(time.perf_counter() - started, 3)}
        return _completion(agent, answer, usage, timings, recall, options)

    def _recall(self, request, tools, options):
        """Look the request up in the adapter memory (only when it might be trained)."""
        mode = options.get("mode", self.agent.mode)
        if self.memory is None or not tools or mode in ("base", "ticl"):
            return {}, None
        started = time.perf_counter()
        text = last_user_text(normalize_messages(request["messages"]))
        vector = self.agent.embed(text)
        key = tools_key(tools)
        hit = self.memory.lookup(key, vector)
        recall = {"memory": "miss" if hit is None else "hit", "key": key, "vector": vector}
        if hit:
            recall["similarity"] = hit[2]
        recall["memory_seconds"] = time.perf_counter() - started
        return recall, hit[1] if hit else None


def _number(value, name, low=None, high=None, integer=False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise APIError(400, f"{name} must be {'an integer' if integer else 'a number'}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"{name} must be between {low} and {high}", param=name)
    return value


def _choose_tools(tools, choice):
    """tool_choice: "none" answers in text; "auto"/"required" call a tool; a named one calls it."""
    if choice in (None, "auto", "required"):
        return tools
    if choice == "none":
        return None
    name = _tool_name(choice) if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or a named function',
                       param="tool_choice")
    named = [t for t in tools or [] if isinstance(t, dict) and _tool_name(t) == name]
    if not named:
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
    return named


def _tool_name(spec):
    body = spec.get("function", spec)
    return body.get("name") if isinstance(body, dict) else None


def _ttsi_options(fields):
    """The request's own `ttsi` settings (the table's request options), nothing else."""
    if fields is None:
        return {}
    if not isinstance(fields, dict) or set(fields) - TTSI_FIELDS:
        raise APIError(400, f"ttsi must be an object with only {', '.join(sorted(TTSI_FIELDS))}", param="ttsi")
    return {name: _setting(name, value, f"ttsi.{name}") for name, value in fields.items() if value is not None}


def _setting(name, value, param):
    """A request's value for a setting, checked against the settings table (400 if out of range)."""
    try:
        return BY_NAME[name].check(value, param)
    except TTSIError as error:
        raise APIError(400, str(error), param=param) from None


def _completion(agent, answer, usage, timings, recall, options):
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
             for c in answer.tool_calls]
    message = {"role": "assistant", "content": None if calls else answer.answer}
    if calls:
        message["tool_calls"] = calls
    finish = answer.finish_reason
    ttsi = {"mode": options.get("mode", agent.mode), "method": answer.method,
            "uncertainty": answer.uncertainty.as_dict() if answer.uncertainty else None,
            "adapted": answer.adapted, "reused": answer.reused, "synthetic": len(answer.synthetic),
            "rejected": answer.rejected, "timings": timings, **recall}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": agent.name, "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                              "logprobs": None}],
            "usage": usage, "ttsi": ttsi}


def stream_chunks(response, usage_chunk=False):
    """A full response as OpenAI's chunk sequence: role, tool-call or content deltas, finish, usage."""
    base = {k: response[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = response["choices"][0]
    message = choice["message"]

    def chunk(delta, finish=None, **extra):
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}

    yield chunk({"role": "assistant", "content": None if message.get("tool_calls") else ""})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                     "function": {"name": function["name"], "arguments": ""}}]})
        for piece in _pieces(function["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    for piece in _pieces(message.get("content") or ""):
        yield chunk({"content": piece})
    yield chunk({}, choice["finish_reason"], ttsi=response["ttsi"])
    if usage_chunk:
        yield {**base, "choices": [], "usage": response["usage"]}


def _pieces(text):
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


class Handler(BaseHTTPRequestHandler):
    server_version = "mlx-ttsi"
    timeout = 60  # seconds a client may take to send its request (and to read the answer)

    @property
    def service(self):
        return self.server.service

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            stats = {k: self.service.stats[k] for k in ("received", "answered", "cancelled", "failed")}
            waiting = stats["received"] - stats["answered"] - stats["cancelled"] - stats["failed"]
            return self._json(200, {"status": "ok", "waiting": waiting, **stats})
        if not self._authorized():
            return
        if path == "/v1/models":
            return self._json(200, {"object": "list", "data": [self.service.model_card()]})
        if path.startswith("/v1/models/") and path[len("/v1/models/"):] in self.service.names:
            return self._json(200, self.service.model_card())
        code = "model_not_found" if path.startswith("/v1/models/") else "not_found"
        self._error(APIError(404, f"no such endpoint or model: GET {path}", code))

    def do_POST(self):
        self.service.count("inflight")
        try:
            self._post()
        finally:
            self.service.count("inflight", -1)

    def _post(self):
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            return self._error(APIError(404, f"no such endpoint: POST {path}", "not_found"))
        if not self._authorized():
            return
        try:
            request = self.service.parse(self._read_json())
            future = self.service.submit(request, lambda: connected(self.connection))
            response = future.result()
        except APIError as error:
            return self._error(error)
        except TTSIError as error:  # the agent refused the request (bad tools, messages, length ...)
            return self._error(APIError(error.status, str(error)))
        except ClientGone as gone:
            self.log_message("client went away, request dropped (%s)", gone)
            self.close_connection = True
            return
        except CancelledError:
            return self._error(APIError(503, "the server is shutting down"))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return self._error(APIError(500, "internal server error"))
        try:
            if request["stream"]:
                self._stream(response, request["usage_chunk"])
            else:
                self._json(200, response)
        except (BrokenPipeError, ConnectionResetError):
            self.log_message("client went away before the answer was sent")

    def _not_allowed(self):
        self._error(APIError(405, f"method {self.command} is not allowed", "method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _authorized(self):
        key = self.service.api_key
        given = self.headers.get("Authorization", "")
        if key is None or hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._error(APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", "invalid_api_key"),
                    {"WWW-Authenticate": "Bearer"})
        return False

    def _read_json(self):
        if self.headers.get("Transfer-Encoding"):
            raise APIError(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", ""))
            assert length >= 0
        except (ValueError, AssertionError):
            raise APIError(411, "a Content-Length header is required") from None
        if length > self.service.max_body:
            self.close_connection = True
            self._discard(length)
            raise APIError(413, f"the request body is over {self.service.max_body} bytes", "request_too_large")
        try:
            data = self.rfile.read(length)
        except OSError:
            raise APIError(408, "timed out reading the request body") from None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}", "invalid_json") from None

    def _discard(self, length):
        """Read and drop an oversize body (up to DRAIN), so the client reads the 413, not a reset."""
        left = min(length, DRAIN)
        try:
            while left > 0:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _json(self, status, data, headers=None):
        body = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error, headers=None):
        try:
            self._json(error.status, error.body(), headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, response, usage_chunk):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in stream_chunks(response, usage_chunk):
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long) in the OpenAI shape too."""
        self.close_connection = True
        self._error(APIError(code, message or HTTPStatus(code).phrase))

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, service, quiet=False):
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.service, self.quiet = service, quiet
        super().__init__(address, Handler)

    def server_bind(self):  # skip HTTPServer's reverse DNS lookup of the host
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def server_close(self):
        super().server_close()
        self.service.close()

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def make_server(agent, host="127.0.0.1", port=8080, api_key=None, memory=None, names=(), max_body=MAX_BODY,
                quiet=False):
    """A bound server (port 0 picks a free one; see `.url`); run it with `.serve_forever()`."""
    service = Service(agent, api_key=api_key, memory=memory, names=names, max_body=max_body)
    try:
        return Server((host, port), service, quiet)
    except BaseException:
        service.close()
        raise
