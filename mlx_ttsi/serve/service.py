"""The service behind the HTTP server: typed request parsing, admission to the model, the model thread.

No sockets here (http.py is the HTTP transport, streaming.py the SSE chunks). A request body is parsed and checked on its
connection thread, before it takes a place in the queue (messages normalised, tools checked
against JSON Schema, tool_choice and settings), so a bad request is refused at once however busy the
model is, and the agent is handed the parsed objects. An admitted request becomes a Job on the one
model thread, which answers jobs in arrival order, one at a time (the Agent resets its LoRA after
each, so no request sees another's adapter) or, for requests that never train (modes base, check,
plan), up to `parallel` of those waiting side by side (`Agent.ask_together`: their forward passes
batched, each answer the one it gets alone):

- At most `max_queue` requests wait for the model; one more gets 503 with Retry-After.
- The model thread pushes each job's events (phases ended, answer pieces, the response) into the
  job's own queue; its connection thread writes them as they come (a stream: the phases as SSE
  comments, then the answer token by token, `Stream`).
- A job whose client has gone (the connection thread sets `Job.gone`) is dropped from the queue,
  or stopped at its next forward pass or training step (the agent polls `Job.cancelled`).
"""

import atexit
import hmac
import json
import math
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from functools import partial

import mlx.core as mx

from ..errors import Cancelled, TeacherError, TTSIError
from ..prompts import last_user_text, normalize_messages
from ..settings import BY_NAME, OPTIONS, default
from ..tools import parse_tools
from .adapter_memory import tools_key
from .streaming import Stream

MAX_QUEUE = default("max_queue")  # requests that may wait for the model; more get 503
PARALLEL = default("parallel")  # waiting requests that never train answered side by side, at most
SHUTDOWN_GRACE = 30  # seconds a shutdown waits for the request being answered
TTSI_FIELDS = {o.name for o in OPTIONS if o.request}  # what a request's `ttsi` object may set


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status, message, code=None, param=None, retry_after=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after = retry_after  # seconds, sent as a Retry-After header

    def body(self):
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request, parsed and checked."""

    messages: list  # normalised (prompts.normalize_messages)
    tools: list  # the Tools to offer (after tool_choice), or None
    options: dict  # Settings fields for this request
    stream: bool = False
    usage_chunk: bool = False  # stream_options.include_usage


class Job:
    """One admitted request: its events for the connection thread, its Future on the model thread,
    and whether its client is still there (set by the connection thread, read by the model thread)."""

    def __init__(self, request):
        self.request = request
        self.events = queue.Queue()  # (kind, payload): progress, piece, then done or error
        self.received = time.perf_counter()
        self.gone = threading.Event()
        self.future = None

    def cancelled(self):
        """Polled by the agent before every forward pass and training step."""
        return self.gone.is_set()

    def abandon(self):
        """The client went away: a waiting job is dropped, a running one stops at its next step."""
        self.gone.set()
        if self.future is not None:
            self.future.cancel()


class ModelThread:
    """The one thread that uses the model: jobs run in the order they came, one at a time, or, when
    the oldest was submitted with a `together` function, with the others waiting for the same one
    (at most `most_together`), in one call of it. A job cancelled while it waits leaves the queue at
    once, and with it its request."""

    def __init__(self, most_together=1):
        self.jobs = {}  # Future -> (fn, args, together), in arrival order
        self.most_together = most_together
        self.ready = threading.Condition()
        self.stopping = False
        self.busy = False  # a job is running
        self.thread = threading.Thread(target=self._loop, name="mlx-ttsi-model", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def submit(self, fn, *args, together=None):
        """The Future of `fn(*args)`. `together([args, ...])` -> [(value, error), ...] answers several
        waiting jobs that name the same function in one call."""
        future = Future()
        with self.ready:
            if self.stopping:
                future.cancel()  # too late: answered as the queued ones are (503)
            else:
                self.jobs[future] = (fn, args, together)
                self.ready.notify()
        future.add_done_callback(self._drop)
        return future

    def _drop(self, future):
        if future.cancelled():
            with self.ready:
                self.jobs.pop(future, None)

    def _next(self):
        """The oldest waiting job and those that may run with it ([(future, fn, args)], together), or
        None once the thread is stopping."""
        with self.ready:
            while not self.jobs and not self.stopping:
                self.ready.wait()
            if self.stopping:
                return None
            oldest = next(iter(self.jobs))
            together = self.jobs[oldest][2]
            taken = [f for f, job in self.jobs.items() if job[2] == together] if together else [oldest]
            return [(f, *self.jobs.pop(f)[:2]) for f in taken[: self.most_together]], together

    def _loop(self):
        try:
            while (taken := self._next()) is not None:
                jobs, together = taken
                jobs = [job for job in jobs if job[0].set_running_or_notify_cancel()]
                self.busy = True
                try:
                    if len(jobs) > 1:
                        run = partial(together, [args for _, _, args in jobs])
                    else:  # one job (or none: it was cancelled at the last moment)
                        run = partial(_outcomes, [(fn, args) for _, fn, args in jobs])
                    _settle([future for future, _, _ in jobs], run)
                finally:
                    self.busy = False
        finally:
            mx.clear_streams()  # MLX needs each thread to free its own streams, or the process aborts at exit

    def close(self, grace=None):
        """Cancel what is queued, let the running job finish (waiting `grace` seconds at most), and stop."""
        atexit.unregister(self.close)
        with self.ready:
            self.stopping = True
            waiting = list(self.jobs)
            self.ready.notify()
        for future in waiting:
            future.cancel()
        self.thread.join(grace)


class Service:
    """The model side: parses a request body, admits it to the model thread's bounded queue, and
    runs it there, pushing its events to its Job."""

    def __init__(self, agent, api_key=None, memory=None, names=(), max_queue=MAX_QUEUE, parallel=PARALLEL):
        self.agent = agent
        self.api_key = api_key
        self.memory = memory
        self.names = {agent.name, *names}  # model names a request may ask for (compared, never loaded)
        self.max_queue = max_queue
        self.worker = ModelThread(most_together=parallel)
        self.stats = Counter()
        self.waiting = 0  # admitted jobs not yet started
        self.typical = 1.0  # seconds per request, a moving average (for Retry-After)
        self.max_connections = None  # connections served at once (set by the HTTP server; None: no cap)
        self._lock = threading.Lock()

    def count(self, key, step=1):
        with self._lock:
            self.stats[key] += step

    def connect(self):
        """Count a new connection in, unless max_connections are open (then it is refused: False)."""
        with self._lock:
            if self.max_connections is not None and self.stats["connections"] >= self.max_connections:
                self.stats["rejected"] += 1
                return False
            self.stats["connections"] += 1
            return True

    def close(self, grace=SHUTDOWN_GRACE):
        """Drop queued requests (503), finish the one being answered and give its client the answer,
        within `grace` seconds (then stop anyway: the model thread is a daemon)."""
        deadline = time.monotonic() + grace
        self.worker.close(grace)
        while self.stats["inflight"] > 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def health(self):
        counters = {k: self.stats[k] for k in ("received", "answered", "together", "cancelled", "failed", "rejected")}
        return {
            "status": "ok",
            "loaded": self.worker.thread.is_alive(),  # open without the key: no model name
            "busy": self.worker.busy,
            "waiting": self.waiting,
            "max_queue": self.max_queue,
            "parallel": self.worker.most_together,
            "connections": self.stats["connections"],
            "max_connections": self.max_connections,
            **counters,
        }

    def model_card(self, name=None):
        """The served model's card (for `name`, when it is one this server answers to; else None)."""
        if name is not None and name not in self.names:
            return None
        return {"id": self.agent.name, "object": "model", "created": 0, "owned_by": "mlx-ttsi"}

    def authorized(self, header):
        """Whether an Authorization header carries this server's key (always, without a key)."""
        return self.api_key is None or hmac.compare_digest(header.encode(), f"Bearer {self.api_key}".encode())

    def stream(self, job):
        """The SSE writer of a streamed job's answer (None when the job is not streamed)."""
        return Stream(self.agent.name, job.request.usage_chunk) if job.request.stream else None

    def parse(self, body):
        """The request, parsed and checked on the connection thread: a bad one is refused here, before
        it takes a place in the queue, and the agent gets the parsed messages and tools."""
        try:
            return self._parse(body)
        except APIError:
            raise
        except Exception as error:  # a shape no check foresaw: still the client's 400, in one line
            detail = " ".join(str(error).split())[:200]
            raise APIError(400, f"the request is malformed ({type(error).__name__}: {detail})") from None

    def _parse(self, body):
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        self._check_model(body.get("model"))
        messages = _messages(body.get("messages"))
        tools = _choose_tools(_tools(body.get("tools")), body.get("tool_choice"))
        options = {**_sampling_options(body), **_ttsi_options(body.get("ttsi"))}
        stream, usage = _streaming(body)
        return ChatRequest(messages, tools, options, stream, usage)

    def _check_model(self, model):
        if model is not None and not isinstance(model, str):
            raise APIError(400, "model must be a string", param="model")
        if model and model not in self.names:
            raise APIError(
                404,
                f"the model {model!r} does not exist here; this server serves {self.agent.name!r}",
                "model_not_found",
                "model",
            )

    def submit(self, request):
        """Admit a parsed request to the model thread's queue (503 when `max_queue` already wait); its Job."""
        job = Job(request)
        with self._lock:
            if self.waiting >= self.max_queue:
                self.stats["rejected"] += 1
                wait = math.ceil(min(600, self.typical * (self.waiting + 1)))
                raise APIError(
                    503,
                    f"the server is busy: {self.waiting} requests are already waiting; retry later",
                    "server_busy",
                    retry_after=max(1, wait),
                )
            self.waiting += 1
            self.stats["received"] += 1
        together = self._answer_together if self.agent.keeps_weights(**request.options) else None
        job.future = self.worker.submit(self._answer, job, together=together)
        job.future.add_done_callback(partial(self._finished, job))
        return job

    def _finished(self, job, future):
        """The job's last event: its response, or the error that ended it (also when it never ran)."""
        if future.cancelled():  # dropped while waiting: its client went, or the server is stopping
            with self._lock:
                self.waiting -= 1
                self.stats["cancelled" if job.cancelled() else "failed"] += 1
            job.events.put(("error", CancelledError()))
        elif future.exception() is not None:
            job.events.put(("error", future.exception()))
        else:
            job.events.put(("done", future.result()))

    def _answer(self, job):
        """Runs on the model thread: every use of the model happens here."""
        ((value, error),) = self._answer_together([(job,)])
        if error is not None:
            raise error
        return value

    def _answer_together(self, waiting):
        """Runs on the model thread: the jobs of `waiting` ([(job,)], as ModelThread hands them over),
        side by side when there are several (only requests that never train are submitted so), one
        (value, error) each."""
        started = time.perf_counter()
        jobs = [job for (job,) in waiting]
        with self._lock:
            self.waiting -= len(jobs)
        gone = Cancelled("the client went away before its turn")
        outcomes = [(None, gone) if job.cancelled() else _tried(self._ask_of, job) for job in jobs]
        asks = {i: value for i, (value, error) in enumerate(outcomes) if value is not None}
        for i, (answer, error) in zip(asks, self._asked([kwargs for kwargs, _ in asks.values()])):
            job, recall = jobs[i], asks[i][1]
            outcomes[i] = (None, error) if error else _tried(self._response, job, answer, recall, started)
        self._tally([error for _, error in outcomes], time.perf_counter() - started)
        return outcomes

    def _asked(self, asks):
        """[(Answer, None) or (None, error)] for each of `ask`'s keyword dicts: one alone (it may train),
        several side by side."""
        if len(asks) == 1:
            return [_tried(lambda: self.agent.ask(**asks[0]))]
        together, error = _tried(self.agent.ask_together, asks)
        return together or [(None, error)] * len(asks)  # the group as a whole was refused

    def _tally(self, errors, seconds):
        """Count how the jobs of one run of the model ended; the seconds per request it took."""
        with self._lock:
            for error in errors:
                key = "answered" if error is None else "cancelled" if isinstance(error, Cancelled) else "failed"
                self.stats[key] += 1
            if len(errors) > 1:
                self.stats["together"] += len(errors)
            if None in errors:
                self.typical = 0.7 * self.typical + 0.3 * seconds / len(errors)

    def _ask_of(self, job):
        """(`agent.ask`'s keywords for the job, what the adapter memory recalled for it); a stream's
        job hears each phase and answer piece as it happens."""
        request, options = job.request, dict(job.request.options)
        heard = (
            {"progress": partial(_tell, job, "progress"), "on_piece": partial(_tell, job, "piece")}
            if request.stream
            else {}
        )
        tools = request.tools or []
        recall, reuse = self._recall(request, tools, options)
        ask = dict(
            messages=request.messages,
            tools=tools or None,
            adapter_weights=reuse,
            keep_adapter=recall.get("memory") == "miss",
            cancelled=job.cancelled,
            **heard,
            **options,
        )
        return ask, recall

    def _response(self, job, answer, recall, started):
        """The chat completion of the job's answer; a trained adapter stored in the memory."""
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
        usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }
        queued = round(started - job.received, 3)
        timings = {"queue": queued, **answer.timings, "server": round(time.perf_counter() - started, 3)}
        return _completion(self.agent, answer, usage, timings, recall, job.request.options)

    def _recall(self, request, tools, options):
        """Look the request up in the adapter memory (only when it might be trained)."""
        mode = options.get("mode", self.agent.mode)
        if self.memory is None or not tools or mode in ("base", "ticl"):
            return {}, None
        started = time.perf_counter()
        text = last_user_text(request.messages)
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


def _messages(messages):
    """The conversation, normalised (prompts.normalize_messages)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    return _parsed(normalize_messages, messages, "messages")


def _tools(specs):
    """The offered Tools, each schema checked (tools.parse_tools), or None."""
    if specs is not None and not isinstance(specs, list):
        raise APIError(400, "tools must be a list", param="tools")
    return _parsed(parse_tools, specs, "tools") if specs else None


def _sampling_options(body):
    """seed and max_tokens as Settings fields; temperature and n checked (answers are greedy, n=1)."""
    options = {}
    for key, name in (("seed", "seed"), ("max_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens")):
        if body.get(key) is not None:
            options[name] = _setting(name, body[key], key)
    if body.get("temperature") is not None:  # accepted, but answers are greedy (docs/server.md)
        _number(body["temperature"], "temperature", 0, 2)
    if body.get("n") is not None and _number(body["n"], "n", integer=True) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    return options


def _streaming(body):
    """(stream, stream_options.include_usage)."""
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    return _flag(body.get("stream"), "stream"), _flag(
        (stream_options or {}).get("include_usage"), "stream_options.include_usage"
    )


def _flag(value, name):
    """An optional boolean field (False when absent)."""
    if value is not None and not isinstance(value, bool):
        raise APIError(400, f"{name} must be true or false", param=name)
    return bool(value)


def _parsed(parse, value, param):
    """parse(value), its TTSIError (bad messages or tools) as a 4xx for `param`."""
    try:
        return parse(value)
    except TTSIError as error:
        raise APIError(error.status, str(error), param=param) from None


def _choose_tools(tools, choice):
    """tool_choice over the parsed tools: "none" answers in text; "auto"/"required" call a tool; a
    named one calls it."""
    if choice in (None, "auto", "required"):
        return tools
    if choice == "none":
        return None
    name = _tool_name(choice) if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or a named function', param="tool_choice")
    named = [tool for tool in tools or [] if tool.name == name]
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
    calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)},
        }
        for c in answer.tool_calls
    ]
    message = {"role": "assistant", "content": None if calls else answer.answer}
    if calls:
        message["tool_calls"] = calls
    finish = answer.finish_reason
    ttsi = {
        "mode": options.get("mode", agent.mode),
        "method": answer.method,
        "uncertainty": answer.uncertainty.as_dict() if answer.uncertainty else None,
        "adapted": answer.adapted,
        "reused": answer.reused,
        "synthetic": len(answer.synthetic),
        "rejected": answer.rejected,
        "timings": timings,
        **recall,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": agent.name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
        "ttsi": ttsi,
    }


def _tried(fn, *args):
    """(value, None), or (None, the exception fn raised)."""
    try:
        return fn(*args), None
    except BaseException as error:
        return None, error


def _outcomes(calls):
    """[(value, None) or (None, the exception it raised)] of each (fn, args), in turn."""
    return [_tried(fn, *args) for fn, args in calls]


def _settle(futures, outcomes):
    """Give each future its (value, error) from `outcomes()`; all of them its error if it raises."""
    try:
        results = outcomes()
    except BaseException as error:
        results = [(None, error)] * len(futures)
    for future, (value, error) in zip(futures, results):
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _tell(job, kind, *payload):
    """From the model thread to the job's connection thread."""
    job.events.put((kind, payload))


def api_error(error):
    """What a client is told when its request failed on the model thread (None: it is gone)."""
    if isinstance(error, Cancelled):
        return None
    if isinstance(error, APIError):
        return error
    if isinstance(error, TeacherError):  # its URL and reply are the operator's to see, not the client's
        print(f"TT-D teacher error: {error}", file=sys.stderr)
        return APIError(
            error.status, "the TT-D teacher could not be reached or gave nothing usable (see the server log)"
        )
    if isinstance(error, TTSIError):  # the agent refused the request (bad tools, messages, length ...)
        return APIError(error.status, str(error))
    if isinstance(error, CancelledError):
        return APIError(503, "the server is shutting down")
    traceback.print_exception(error, file=sys.stderr)
    return APIError(500, "internal server error")
