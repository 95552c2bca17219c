"""Self-data augmentation by a teacher (TT-D), and the checks every written example passes.

TT-SI's own examples are the request with its grounded self-label and twins of it (self_check.py, twins.py).
TT-D: a teacher writes new requests and their calls, either another local model (it samples a
request, then labels it with its schema-guided call) or an OpenAI-compatible endpoint asked for
JSON examples. Every example is checked (it parses, names an offered tool, its
arguments validate, it is not a copy of the request or of another example) and rejections are
counted with their reasons.
"""

import json
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from .context import ContextState
from .decoding import CallDecoder
from .errors import Cancelled, TeacherError
from .prompts import call_format, render_prompt, tool_line
from .settings import default
from .tools import check_call, parse_calls

TEMPERATURE = default("temperature")
POLL = 0.25  # seconds between checks, while an endpoint teacher answers, that the request is still wanted

WRITER_USER = (
    'Here is a request for these tools:\n"{request}"\n\nWrite another request like it, about a different '
    "case (other names, numbers, places or dates). Reply with the new request only, in one line."
)
TEACHER_USER = (
    "Tools:\n{tools}\n\nA user asked:\n{request}\n\nWrite {k} new, different user requests that need "
    "the same kind of tool call, each with its correct call. Reply with only a JSON list like "
    '[{{"request": "...", "calls": [{{"name": "...", "arguments": {{...}}}}]}}].'
)


@dataclass
class Synthesis:
    examples: list = field(default_factory=list)  # [{"request", "calls", "source"}]
    rejected: dict = field(default_factory=dict)  # reason -> count
    attempts: int = 0
    reason: str = None  # why there are no examples, when that has one cause

    def reject(self, reason):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def why_empty(self):
        """One line on why no example was kept."""
        if self.reason:
            return self.reason
        reasons = ", ".join(f"{n} {r}" for r, n in self.rejected.items())
        return f"all {self.attempts} candidate examples were rejected ({reasons or 'none written'})"


def _normal(text):
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


_REPEATS = re.compile(r"(.{2,}?)\1{3,}")  # a piece written four or more times in a row
_CODE_CALL = re.compile(r"[A-Za-z_][\w.]*\(")  # "DeleteAgenda('...', ...)": a call in code, not a request


def request_problem(request, original):
    """Why a synthetic request is unusable, or None."""
    if not request:
        return "empty request"
    if request.startswith(("{", "[")) or _CODE_CALL.match(request):
        return "request is not plain text"
    if request.endswith(":") or len(request.split()) < 3:
        return "request is incomplete"
    if _REPEATS.search(request):
        return "request repeats itself"
    if _normal(request) == _normal(original):
        return "copy of the request"
    return None


def admit(synthesis, request, calls, original, tools, source, same_tool=None):
    """Add one candidate example if it passes every check; otherwise count why not.

    `same_tool`, when given, is the tool the model itself picks for the original request: an
    example calling another tool is refused (TT-SI's self-consistency check)."""
    request = (request or "").strip()
    problem = request_problem(request, original)
    if problem:
        return synthesis.reject(problem)
    if any(_normal(request) == _normal(e["request"]) for e in synthesis.examples):
        return synthesis.reject("duplicate example")
    if not calls:
        return synthesis.reject("no tool call")
    for call in calls:
        problem = check_call(call, tools)
        if problem:
            return synthesis.reject(problem.split(":")[0])
        if any(isinstance(v, str) and _REPEATS.search(v) for v in call["arguments"].values()):
            return synthesis.reject("argument repeats itself")
    if same_tool is not None and calls[0]["name"] != same_tool:
        return synthesis.reject("another tool than the model's own choice")
    synthesis.examples.append({"request": request, "calls": calls, "source": source})


class ModelWriter:
    """A local model that writes requests (sampled) and labels them (schema-guided).

    Both prompts start with the same system prompt (the tools) as the request's own prompt, so
    with the request's ContextState the cached prefix is computed only once. How it samples and
    decodes is given with each request (`synthesize`), so one writer serves requests of any settings."""

    def __init__(self, loaded, top_p=0.95, max_request_tokens=48):
        self.loaded = loaded
        self.fmt = call_format(loaded.tokenizer)
        self.top_p = top_p
        self.max_request_tokens = max_request_tokens
        self._state = None

    def own_state(self):
        if self._state is None:
            self._state = ContextState(self.loaded.model, self.loaded.tokenizer, self.loaded.context_length)
        return self._state

    def write_request(self, state, original, tools, temperature=TEMPERATURE):
        ask = [{"role": "user", "content": WRITER_USER.format(request=original)}]
        state.set_text(render_prompt(self.loaded.tokenizer, ask, tools, self.fmt))
        text = state.sample(make_sampler(temp=temperature, top_p=self.top_p), self.max_request_tokens)
        line = text.strip().split("\n")[0]
        return re.sub(r"^(\d+[.)]|[-*])\s+", "", line.strip()).strip().strip('"')

    def label(self, state, request, tools, decoder_options=None):
        prompt = render_prompt(self.loaded.tokenizer, [{"role": "user", "content": request}], tools, self.fmt)
        return CallDecoder(state, self.fmt, **(decoder_options or {})).decode(prompt, tools).calls

    def synthesize(
        self,
        original,
        tools,
        k,
        seed,
        max_attempts=None,
        state=None,
        same_tool=None,
        temperature=TEMPERATURE,
        decoder_options=None,
        cancelled=None,
    ):
        """Up to k examples: requests sampled at `temperature`, labelled by a CallDecoder with `decoder_options`.
        `cancelled()` is polled before every forward pass (as the request's own are)."""
        state = state or self.own_state()
        synthesis = Synthesis()
        mx.random.seed(seed)
        polled, state.cancelled = state.cancelled, cancelled or state.cancelled
        try:
            for _ in range(max_attempts or 3 * k):
                if len(synthesis.examples) >= k:
                    break
                synthesis.attempts += 1
                request = self.write_request(state, original, tools, temperature)
                calls = (
                    self.label(state, request, tools, decoder_options)
                    if request_problem(request, original) is None
                    else []
                )
                admit(synthesis, request, calls, original, tools, "self", same_tool)
        finally:
            state.cancelled = polled
        return synthesis


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint (e.g. `mlx-ttsi serve`, Ollama, OpenAI) as TT-D teacher."""

    def __init__(self, url, model=default("teacher_model"), api_key=None, timeout=120):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def ask(self, content, seed, cancelled=None):
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "seed": seed}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            reply = json.loads(self._fetch(request, cancelled))
        except urllib.error.HTTPError as error:
            raise TeacherError(f"teacher endpoint {self.url} answered HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TeacherError(f"cannot reach teacher endpoint {self.url}: {reason}") from None
        except ValueError:
            raise TeacherError(f"teacher endpoint {self.url} did not answer JSON") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher endpoint {self.url} gave no chat completion") from None

    def _fetch(self, request, cancelled):
        """The endpoint's reply body. With `cancelled`, fetched on a helper thread while this one checks
        every POLL seconds that the request is still wanted (the helper ends by its own timeout)."""

        def read():
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()

        if cancelled is None:
            return read()
        reply = Future()
        threading.Thread(target=lambda: _settle(reply, read), name="mlx-ttsi-teacher", daemon=True).start()
        while not wait([reply], POLL).done:
            if cancelled():
                raise Cancelled("the request was cancelled while the teacher answered")
        return reply.result()

    def synthesize(self, original, tools, k, seed, max_attempts=None, same_tool=None, cancelled=None, **local):
        """Up to k examples from the endpoint. The agent's teacher (Agent.teacher: this, or a
        ModelWriter for a local model) is called one way whichever it is; a local writer's options
        (`local`: temperature, decoder_options) mean nothing to an endpoint, which samples and writes
        calls as it is set up. `cancelled()` is polled while it answers."""
        synthesis = Synthesis()
        tools_text = "\n".join(tool_line(t) for t in tools)
        for attempt in range(max_attempts or 2):
            if len(synthesis.examples) >= k:
                break
            synthesis.attempts += 1
            reply = self.ask(TEACHER_USER.format(tools=tools_text, request=original, k=k), seed + attempt, cancelled)
            for item in _json_items(reply)[: k - len(synthesis.examples)]:
                calls = item.get("calls") or ([item["call"]] if isinstance(item.get("call"), dict) else [])
                admit(
                    synthesis,
                    item.get("request"),
                    parse_calls(json.dumps(calls)),
                    original,
                    tools,
                    "teacher",
                    same_tool,
                )
        return synthesis


def unlabelled():
    """No examples: the model's own answer is not a readable call (formats.py), and the source makes
    its examples from that answer."""
    return Synthesis(attempts=1, reason="the model's own answer is not a readable tool call")


def _settle(future, fn):
    """Run fn on this thread and put its result (or its exception) in the future."""
    try:
        future.set_result(fn())
    except BaseException as error:
        future.set_exception(error)


def _json_items(reply):
    """The example objects in a teacher's reply (a JSON list, possibly inside a code fence)."""
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"[\[{]", reply)]:
        try:
            value, _ = decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            continue
        items = value if isinstance(value, list) else [value]
        items = [i for i in items if isinstance(i, dict) and "request" in i]
        if items:
            return items
    return []


def keep_examples(synthesis, said_back, k, anchored=False):
    """The synthesis with at most k of its examples: those the base model does not already say back
    (`said_back`, one flag per example), then, when `anchored` and there is at least one of those,
    examples it does say back (they hold what it already gets right in place). Each example it
    says back and that is not kept is counted as a rejection."""
    new = [e for e, said in zip(synthesis.examples, said_back) if not said]
    known = [e for e, said in zip(synthesis.examples, said_back) if said]
    kept = new[:k] + (known[: k - len(new[:k])] if anchored and new else [])
    for _ in range(len(known) - (len(kept) - len(new[:k]))):
        synthesis.reject("the base model already says it")
    synthesis.examples = kept
    return synthesis
