"""The TT-SI agent: score uncertainty, synthesize examples, adapt, answer, reset.

    agent = Agent.load("smollm2-135m")
    answer = agent.ask("Book a table for two at 7pm", tools=[...])
    answer.tool_calls, answer.uncertainty.score, answer.adapted, answer.timings
"""

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import mlx.core as mx
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler

from . import models
from .adaptation import Adapter, LoRASettings
from .decoding import CallDecoder, argument_margin, name_candidates_choice, normalized
from .grounding import better_tool, context_text, label_calls, twins
from .errors import RequestError, TTSIError
from .prompts import call_format, calls_text, end_of_turn, last_user_text, normalize_messages, render_prompt
from .context import ContextState
from .synthesis import EndpointTeacher, ModelWriter, Synthesis
from .tools import parse_tools
from .uncertainty import FORMS, NORMS, estimate

MODES = ("auto", "base", "ttsi", "ttd", "ticl")
METHODS = ("base", "ttsi", "ttd", "ticl")
MAX_REQUEST_CHARS = 200_000


@dataclass
class Settings:
    mode: str = "auto"  # auto: adapt when uncertain; ttsi|ttd|ticl: always; base: never
    threshold: float = 0.5  # tau: uncertain when u = min(name margin, argument margin) is below it
    examples: int = 3  # K examples per adapted request: the request with its self-label and K-1 twins
    candidates: str = "name"  # candidate form for scoring: tool "name" or whole "call"
    norm: str = "sum"  # length normalisation of candidate log-likelihoods: sum or mean (measured: sum)
    max_calls: int = 1  # most tool calls in one answer
    max_tokens: int = 256  # for text answers (no tools)
    temperature: float = 0.8  # sampling temperature of a local teacher model writing requests (TT-D)
    same_tool: bool = True  # TT-D keeps only teacher examples calling the tool the model picks for the request
    seed: int = 0
    lora: LoRASettings = field(default_factory=LoRASettings)

    def check(self):
        if self.mode not in MODES:
            raise TTSIError(f"unknown mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.candidates not in FORMS:
            raise TTSIError(f"unknown candidate form {self.candidates!r} (one of {', '.join(FORMS)})")
        if self.norm not in NORMS:
            raise TTSIError(f"unknown normalisation {self.norm!r} (one of {', '.join(NORMS)})")
        if not 0 <= self.threshold <= 1:
            raise TTSIError("threshold must be between 0 and 1")
        if self.examples < 1:
            raise TTSIError("examples must be at least 1")
        if self.max_calls < 1:
            raise TTSIError("max_calls must be at least 1")
        self.lora.check()
        return self


@dataclass
class Answer:
    answer: str
    tool_calls: list
    uncertainty: object  # Uncertainty or None for text answers
    adapted: bool
    method: str
    synthetic: list
    rejected: dict
    timings: dict
    model: str
    training: dict = None
    reused: bool = False  # answered with adapter weights passed in (the server's adapter memory)
    adapter: dict = None  # the trained LoRA weights, when ask(keep_adapter=True)
    asked: int = 0  # synthetic examples asked for (kept ones are in `synthetic`)
    label: list = None  # the grounded self-label of TT-SI / TT-ICL (the calls its twins are made from)
    note: str = None  # why a request meant to adapt was not adapted

    def as_dict(self):
        data = {k: v for k, v in asdict(self).items() if k != "adapter"}
        data["uncertainty"] = self.uncertainty.as_dict() if self.uncertainty else None
        return data


class Agent:
    def __init__(self, loaded, settings=None, teacher=None, teacher_model="gpt-5-mini", api_key=None):
        self.loaded = loaded
        self.settings = (settings or Settings()).check()
        self.adapter = Adapter(loaded.model, self.settings.lora)
        self.fmt = call_format(loaded.tokenizer)
        self.teacher_spec = teacher
        self.teacher_model = teacher_model
        self.api_key = api_key
        self._teacher = None
        self.lock = threading.Lock()  # one request at a time owns the weights
        self.prefixes = PrefixCache()

    @classmethod
    def load(cls, model=models.EMBEDDED_NAME, precision="auto", **options):
        return cls(models.load(model, precision), **options)

    @property
    def name(self):
        return self.loaded.name

    def warm(self, tools):
        """Compute and cache the base model's KV of the tools prefix, so the next request with these
        tools starts from it (eval does this before timing each method, to time them on equal terms)."""
        tools, tok = parse_tools(tools), self.loaded.tokenizer
        with self.lock:
            prompt = render_prompt(tok, [{"role": "user", "content": "A"}], tools, self.fmt)
            state, frozen = self._prefixed_state(prompt, tools)
            state.sync(state.encode(prompt)[:frozen])
            self.prefixes.keep(state, frozen)

    def teacher(self):
        if self.teacher_spec is None:
            raise TTSIError("mode ttd needs a teacher: a model name or an OpenAI-compatible URL")
        if self._teacher is None:
            spec = str(self.teacher_spec)
            if spec.startswith(("http://", "https://")):
                self._teacher = EndpointTeacher(spec, self.teacher_model, self.api_key)
            else:
                self._teacher = ModelWriter(models.load(spec), decoder_options=self._decoder_options())
        return self._teacher

    def _decoder_options(self, settings=None):
        s = settings or self.settings
        return {"name_norm": s.norm, "max_calls": s.max_calls}

    def ask(self, request=None, tools=None, messages=None, force=None, progress=None, adapter=None,
            keep_adapter=False, save_adapter=None, train_on=None, **overrides):
        """Answer one request (or conversation).

        `force` overrides the uncertainty gate: True adapts whatever the score, False adapts only
        when uncertain (for modes ttsi/ttd/ticl). `adapter` gives LoRA weights to answer with instead
        of synthesizing and training; `keep_adapter` returns the trained weights in the answer and
        `save_adapter` (a directory) writes them as an mlx-lm adapter; otherwise nothing is written.
        `train_on` gives the examples to adapt on instead of synthesizing them: only eval's
        oracle ablations use it (they train on the row's gold answer).
        Any other keyword overrides a Settings field for this request."""
        lora = overrides.pop("lora", None)
        settings = replace(self.settings, **overrides)
        if lora is not None:
            settings.lora = lora
        settings.check()
        messages = normalize_messages(messages if messages is not None else _request_messages(request))
        if sum(len(m["content"]) for m in messages) > MAX_REQUEST_CHARS:
            raise RequestError(f"the request is over {MAX_REQUEST_CHARS} characters")
        tools = parse_tools(tools) if tools else []
        report = progress or (lambda phase, seconds, detail="": None)
        with self.lock:
            try:
                if not tools:
                    return self._text_answer(messages, settings, report)
                return self._tool_answer(messages, tools, settings, force, report, adapter, keep_adapter, save_adapter,
                                         train_on)
            finally:
                if self.adapter.trained:
                    self.adapter.reset()

    def _text_answer(self, messages, settings, report):
        started = time.perf_counter()
        prompt = render_prompt(self.loaded.tokenizer, messages, [], self.fmt)
        ids = self.loaded.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) > self.loaded.context_length:
            raise RequestError(f"the prompt is {len(ids)} tokens, longer than the model's context of {self.loaded.context_length}")
        mx.random.seed(settings.seed)
        text = "".join(
            r.text for r in stream_generate(self.loaded.model, self.loaded.tokenizer, ids, max_tokens=settings.max_tokens)
        )
        seconds = time.perf_counter() - started
        report("answering", seconds)
        timings = {"answering": round(seconds, 3), "total": round(seconds, 3)}
        return Answer(text.strip(), [], None, False, "base", [], {}, timings, self.name)

    def _tool_answer(self, messages, tools, settings, force, report, reuse, keep_adapter, save_adapter, train_on):
        timings = {}
        started = clock = time.perf_counter()

        def lap(phase, detail=""):
            nonlocal clock
            now = time.perf_counter()
            timings[phase] = round(now - clock, 3)
            report(phase, now - clock, detail)
            clock = now

        tok = self.loaded.tokenizer
        prompt = render_prompt(tok, messages, tools, self.fmt)
        state, frozen = self._prefixed_state(prompt, tools)
        decoder = CallDecoder(state, self.fmt, **self._decoder_options(settings))
        names, name_choice = self._score(decoder, prompt, tools, settings)
        self.prefixes.keep(state, frozen)
        lap("scoring", f"name margin {names.score:.3f}")
        greedy = decoder.decode(prompt, tools, name_choice)  # the base model's answer
        lap("decoding")
        method = settings.mode
        if method == "auto":
            method = "ttd" if self.teacher_spec else "ttsi"
        label = None
        if method in ("ttsi", "ticl") and reuse is None and train_on is None:
            label = self._self_label(decoder, prompt, tools, greedy, names, name_choice, context_text(messages))
        agrees = None if label is None else label == greedy.calls
        uncertainty = names.with_arguments(argument_margin(greedy.choices), agrees)
        doubt = f"u {uncertainty.score:.3f} ({'uncertain' if uncertainty.uncertain else 'certain'})"
        if label is not None:
            lap("labelling", f"{doubt}, self-label {'agrees' if agrees else 'differs'}")
        else:
            report("gate", 0.0, doubt)

        gated = (settings.mode == "auto") if force is None else not force
        adapt = method != "base" and (uncertainty.uncertain or not gated or train_on is not None)
        reused = adapt and reuse is not None and method != "ticl"
        synthesis, training, weights, note = Synthesis(), None, None, None
        if reused:
            self.adapter.load(reuse)
            lap("adapter_load", "reused stored adapter")
        elif adapt:
            synthesis = self._synthesize(method, messages, tools, settings, uncertainty, label, train_on)
            lap("synthesis", f"{len(synthesis.examples)} examples, {sum(synthesis.rejected.values())} rejected")
            adapt = bool(synthesis.examples)
            note = None if adapt else f"not adapted: {synthesis.why_empty()}"
            if note:
                report("note", 0.0, note)
            if adapt and method == "ticl":
                prompt = render_prompt(tok, messages, tools, self.fmt, demonstrations=synthesis.examples)
            elif adapt:
                examples = self._training_examples(synthesis.examples, tools)
                state.sync(state.encode(prompt)[: frozen + 1])  # back from the labelling prompts
                self.adapter.reset(settings.seed)
                training = self.adapter.train(
                    examples, settings.seed, self.loaded.context_length,
                    prefix=(frozen, state.prefix_arrays(frozen)), settings=settings.lora,
                )
                lap("training", f"{training['steps']} steps, loss {training['loss']}")
                weights = self.adapter.weights() if keep_adapter else None
                if save_adapter:
                    self.adapter.save(save_adapter)
        decoded = greedy
        if adapt:
            # the answer is decoded on the same base-model prefix the LoRA was trained on;
            # everything after it is recomputed with the new weights (or the new prompt)
            state.truncate(frozen)
            decoded = decoder.decode(prompt, tools)
            lap("answering")
        timings["total"] = round(time.perf_counter() - started, 3)
        return Answer(
            answer=decoded.text,
            tool_calls=decoded.calls,
            uncertainty=uncertainty,
            adapted=adapt,
            method=method if adapt else "base",
            synthetic=synthesis.examples,
            rejected=synthesis.rejected,
            timings=timings,
            model=self.name,
            training=training,
            reused=reused,
            adapter=weights,
            asked=synthesis.attempts,
            label=label,
            note=note or decoded.error,
        )

    def _synthesize(self, method, messages, tools, settings, uncertainty, label, train_on):
        """The examples to adapt on: given ones (eval's oracle ablations), a teacher's, or twins of the self-label."""
        if train_on is not None:
            return Synthesis(examples=list(train_on), attempts=len(train_on),
                             reason=None if train_on else "no examples were given to train on")
        if method == "ttd":  # a teacher may well know better than our own first choice
            same_tool = uncertainty.best if settings.same_tool else None
            return self.teacher().synthesize(last_user_text(messages), tools, settings.examples, settings.seed,
                                             same_tool=same_tool)
        if not label:  # the model's own answer did not read as a call (formats.py)
            return Synthesis(attempts=1, reason="the model's own answer is not a readable tool call")
        # the request itself with its self-label, and K-1 twins that teach copying its values
        own = {"messages": messages, "request": last_user_text(messages), "calls": label, "source": "self-label"}
        examples = [own] + twins(messages, label, tools, settings.examples - 1, settings.seed)
        return Synthesis(examples=examples, attempts=settings.examples)

    def _self_label(self, decoder, prompt, tools, greedy, names, name_choice, context):
        """The greedy calls checked against the request (grounding.py); when the tool name is
        uncertain, the runner-up tool's checked call instead if it uses more of the request."""
        label = label_calls(decoder, prompt, tools, greedy.calls, context)
        if names.score >= names.threshold or len(tools) < 2 or len(greedy.calls) != 1:
            return label
        runner_up = next(c["name"] for c in names.candidates if c["name"] != greedy.calls[0]["name"])
        forced = replace(name_choice, index=[t.name for t in tools].index(runner_up))
        rival = label_calls(decoder, prompt, tools, decoder.decode(prompt, tools, forced).calls[:1], context)
        return better_tool(label, rival, tools, context)

    def _score(self, decoder, prompt, tools, settings):
        """Relative softmax over the candidates; also returns the name choice to answer with."""
        names = [t.name for t in tools]
        choice, scores = name_candidates_choice(decoder, prompt, tools)
        if settings.candidates == "name":
            return estimate(names, scores, choice.logprobs, choice.lengths, settings.threshold, "name", settings.norm), choice
        texts = []
        for index in range(len(tools)):  # the whole call the model would write for each tool
            forced = replace(choice, index=index)
            texts.append(decoder.decode(prompt, tools, forced).text)
        decoder.text = prompt
        logprobs, lengths = decoder.score(texts)
        scores = normalized(logprobs, lengths, settings.norm)
        uncertainty = estimate(names, scores, logprobs, lengths, settings.threshold, "call", settings.norm)
        best = max(range(len(tools)), key=lambda i: scores[i])
        return uncertainty, replace(choice, index=best)

    def _prefixed_state(self, prompt, tools):
        """A context for `prompt` that starts from the cached tools prefix, and that prefix's length."""
        state = ContextState(self.loaded.model, self.loaded.tokenizer, self.loaded.context_length)
        frozen = self._system_prefix(state, prompt, tools)
        self.prefixes.seed(state, state.encode(prompt)[:frozen])
        return state, frozen

    def _system_prefix(self, state, prompt, tools):
        """Length of the prompt's template-and-tools prefix (the system turn).

        It is the same for every request with these tools: its base-model KV cache is shared
        across requests and stays frozen while a LoRA is trained and used."""
        tok = self.loaded.tokenizer
        probes = [state.encode(render_prompt(tok, [{"role": "user", "content": c}], tools, self.fmt)) for c in "AB"]
        ids = state.encode(prompt)
        return max(1, min(_common(probes[0], probes[1]), _common(ids, probes[0]), len(ids) - 1))

    def _training_examples(self, examples, tools):
        """(token ids, answer offset) pairs: the loss covers the answer and end-of-turn only."""
        tok = self.loaded.tokenizer
        pairs = []
        for example in examples:
            conversation = example.get("messages") or [{"role": "user", "content": example["request"]}]
            prompt = render_prompt(tok, normalize_messages(conversation), tools, self.fmt)
            answer = calls_text(example["calls"], self.fmt) + end_of_turn(tok)
            prompt_ids = tok.encode(prompt, add_special_tokens=False)
            pairs.append((prompt_ids + tok.encode(answer, add_special_tokens=False), len(prompt_ids)))
        return pairs


class PrefixCache:
    """Base-model KV caches of recent system prompts (tools), reused by requests with the same tools."""

    def __init__(self, max_tokens=8192):
        self.max_tokens = max_tokens
        self.entries = OrderedDict()  # token ids -> [(keys, values)] per layer

    def seed(self, state, ids):
        arrays = self.entries.get(tuple(ids))
        if arrays is not None:
            self.entries.move_to_end(tuple(ids))
            state.seed(ids, arrays)

    def keep(self, state, n):
        ids = tuple(state.tokens[:n])
        if ids in self.entries or n > self.max_tokens:
            return
        arrays = state.prefix_arrays(n, copy=True)
        if arrays is None:
            return
        self.entries[ids] = arrays
        while sum(len(k) for k in self.entries) > self.max_tokens:
            self.entries.popitem(last=False)


def _common(a, b):
    from mlx_lm.utils import common_prefix_len

    return common_prefix_len(a, b)


def _request_messages(request):
    if request is None or not str(request).strip():
        raise RequestError("the request is empty")
    return [{"role": "user", "content": str(request)}]
