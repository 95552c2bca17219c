"""The TT-SI agent: score uncertainty, synthesize examples, adapt, answer, reset.

    agent = Agent.load("smollm2-135m")
    answer = agent.ask("Book a table for two at 7pm", tools=[...])
    answer.tool_calls, answer.uncertainty.score, answer.adapted, answer.timings

A tool request follows a plan decided before the model runs (`plan_request`), then stages that
each return values: scoring -> decoding (the base answer) -> self-check -> synthesis -> training ->
answer. The LoRA is reset after every request.
"""

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import mlx.core as mx
from mlx_lm import stream_generate

from . import models
from .adaptation import Adapter, answer_scores
from .context import ContextState
from .decoding import CallDecoder, Decoded, argument_margin, normalized
from .errors import Cancelled, RequestError, TTSIError
from .prompts import call_format, calls_text, last_user_text, normalize_messages, render_prompt
from .self_check import better_tool, calls_made, context_text, label_calls, weigh_changes
from .settings import LORA_FIELDS, Settings, default
from .sources import SOURCES, Job
from .synthesis import EndpointTeacher, ModelWriter, Synthesis, keep_examples
from .tools import parse_tools
from .twins import twins
from .uncertainty import estimate
from .verify import request_values
from .writer import BatchWriter

log = logging.getLogger(__name__)
# the brief-reasoning baseline (arXiv 2604.02155): a short plan line written before the call
PLAN_ASK = '\n\nFirst write one short line "Function: <tool name> / <key arguments>", then the tool call.'
PLAN_LEAD = "Function:"
PLAN_TOKENS = 32


@dataclass
class Answer:
    """What Agent.ask returns: the answer, and how it was found (`--json` prints `as_dict()`)."""

    answer: str  # the text the model wrote: its calls in its own format, or a text answer
    tool_calls: list  # the calls, [{"name", "arguments"}] ([] for a text answer)
    uncertainty: object  # Uncertainty or None for text answers
    adapted: bool  # whether the answer came from adapted weights (or demonstrations, for TT-ICL)
    method: str  # how it was found: base, ttsi, ttd, ticl, plan, or check (the self-check's label, not base's)
    synthetic: list  # the examples adapted on (TT-ICL: shown), [{"request", "calls", "source"}]
    rejected: dict  # why candidate examples were turned down: reason -> count
    timings: dict  # seconds per phase, and "total"
    model: str  # the model's name, as resolved (models.resolve)
    training: dict = None  # the training's stats (steps, loss, seconds, settings ...) when it adapted
    reused: bool = False  # answered with adapter weights passed in (the server's adapter memory)
    adapter: dict = None  # the trained LoRA weights, when ask(keep_adapter=True)
    asked: int = 0  # synthetic examples asked for (kept ones are in `synthetic`)
    label: list = None  # the grounded self-label of TT-SI / TT-ICL (the calls its twins are made from)
    note: str = None  # why a request meant to adapt was not adapted
    prompt_tokens: int = 0  # of the prompt the answer was decoded from (TT-ICL's includes its demonstrations)
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "tool_calls", "stop" or "length" (a text answer cut at max_tokens)
    # how an adapted answer was found: a guess (the trained label) run in one pass, of which decoding
    # took `taken` of `tokens`; answer_is_draft: the answer is the guess itself
    draft: dict = None
    unchecked: list = None  # the adapted calls before --check-after changed them (None: not changed)

    def as_dict(self):
        data = {k: v for k, v in asdict(self).items() if k != "adapter"}
        data["uncertainty"] = self.uncertainty.as_dict() if self.uncertainty else None
        return data


@dataclass(frozen=True)
class Plan:
    """What a tool request will do, decided before the model runs."""

    method: str  # how it adapts if it does: ttsi, ttd, ticl; base never adapts
    gated: bool  # adapt only when uncertain
    source: str  # where the adaptation comes from: "self-label", "teacher", "given" examples or a "stored" adapter
    stream_base: bool  # the base answer is the answer: stream it while it is decoded

    @property
    def self_check(self):
        """TT-SI and TT-ICL check the base answer against the request and learn from the checked one
        (mode check answers with the checked one, no learning)."""
        return self.source == "self-label" and self.method in ("ttsi", "ticl", "check")

    def adapts(self, uncertainty):
        return self.method not in ("base", "plan") and (uncertainty.uncertain or not self.gated)


def plan_request(mode, has_teacher=False, force=None, stored=False, given=False):
    """The plan for a tool request. `force` True adapts whatever the uncertainty, False only when
    uncertain (default: only mode auto is gated); `stored`: adapter weights were given to answer
    with; `given`: examples were given to train on (eval's oracle ceilings)."""
    method = ("ttd" if has_teacher else "ttsi") if mode == "auto" else mode
    gated = not given and ((mode == "auto") if force is None else not force)
    if given:
        source = "given"
    elif stored and method in ("ttsi", "ttd"):
        source = "stored"
    else:
        source = "teacher" if method == "ttd" else "self-label"
    return Plan(method, gated, source, stream_base=method == "base")


@dataclass
class Request:
    """One tool request as the stages see it."""

    messages: list
    tools: list
    settings: Settings
    plan: Plan
    examples: list = None  # examples to train on instead of synthesizing them (eval's oracles)
    adapter_weights: dict = None  # LoRA weights to answer with instead of training (stored)
    keep_adapter: bool = False
    save_adapter: str = None
    on_piece: object = None  # (kind, text) -> None: hears the answer as it is decoded
    cancelled: object = None  # () -> bool: polled at every decoding and training step

    @property
    def checks_after(self):
        """Whether the adapted answer is self-checked too (--check-after; TT-SI and TT-ICL)."""
        return self.settings.check_after and self.plan.self_check


@dataclass
class Adaptation:
    """What adapting produced: the examples, the training, and the prompt to answer with."""

    synthesis: Synthesis
    prompt: str
    training: dict = None
    weights: dict = None
    reused: bool = False

    @property
    def note(self):
        return None if self.synthesis.examples or self.reused else f"not adapted: {self.synthesis.why_empty()}"


@dataclass(frozen=True)
class Prefix:
    """A prompt's tools prefix: its token ids and their base-model KV arrays, frozen while a LoRA
    trains and shared by every request with the same tools."""

    ids: tuple
    arrays: list

    def __len__(self):
        return len(self.ids)


class Clock:
    """Seconds per phase, told to the caller's progress callback as each ends."""

    def __init__(self, report):
        self.report = report
        self.timings = {}
        self.started = self.last = time.perf_counter()

    def lap(self, phase, detail=""):
        now = time.perf_counter()
        self.timings[phase] = round(now - self.last, 3)
        self.report(phase, now - self.last, detail)
        log.debug("%s %.3fs %s", phase, now - self.last, detail)
        self.last = now

    def say(self, word, detail):
        """A word about the request, not a timed phase (e.g. "note", "gate")."""
        self.report(word, 0.0, detail)
        log.info("%s: %s", word, detail)

    def total(self):
        self.timings["total"] = round(time.perf_counter() - self.started, 3)
        return self.timings


class Agent:
    """The model, its one LoRA and its settings; `saved` LoRA weights (`--adapter-path`) answer every
    request that is not in mode base, instead of training a LoRA for it."""

    def __init__(
        self, loaded, settings=None, teacher=None, teacher_model=default("teacher_model"), api_key=None, saved=None
    ):
        self.loaded = loaded
        self.settings = (settings or Settings()).check()
        self.adapter = Adapter(loaded.model, self.settings.lora)
        self.saved = None if saved is None else self.adapter.fitted(saved, "the saved adapter does not fit this model")
        self.fmt = call_format(loaded.tokenizer)
        self.teacher_spec = teacher
        self.teacher_model = teacher_model
        self.api_key = api_key
        self._teacher = None
        self._lock = threading.Lock()  # one request at a time owns the weights
        self.prefixes = PrefixCache()

    @classmethod
    def load(cls, model=models.EMBEDDED_NAME, precision="auto", **options):
        return cls(models.load(model, precision), **options)

    @property
    def name(self):
        return self.loaded.name

    @property
    def mode(self):
        return self.settings.mode

    def identity(self):
        """What an adapter trained here depends on: the model, its files, dtype and the LoRA's shape."""
        lora, loaded = self.settings.lora, self.loaded
        return [loaded.name, str(loaded.path), loaded.precision, lora.rank, lora.alpha, lora.layers]

    def adapter_shapes(self):
        """{weight name: shape} of this agent's LoRA."""
        return {name: value.shape for name, value in self.adapter.weights().items()}

    def embed(self, text):
        """The base model's mean-pooled embedding of `text` (the adapter memory's key)."""
        from .embedding import embed

        with self._lock:  # between requests: no LoRA attached
            return embed(self.loaded.model, self.loaded.tokenizer, text)

    def warm(self, tools):
        """Compute and cache the base model's KV of the tools prefix, so the next request with these
        tools starts from it (eval does this before timing each method, to time them on equal terms)."""
        tools = parse_tools(tools)
        with self._lock:
            prompt = render_prompt(self.loaded.tokenizer, [{"role": "user", "content": "A"}], tools, self.fmt)
            decoder, prefix = self._context(prompt, tools)
            decoder.score_after(prompt, ["A"])
            self._keep_prefix(decoder, prefix)

    def teacher(self):
        if self.teacher_spec is None:
            raise TTSIError("mode ttd needs a teacher: a model name or an OpenAI-compatible URL")
        if self._teacher is None:
            spec = str(self.teacher_spec)
            if spec.startswith(("http://", "https://")):
                self._teacher = EndpointTeacher(spec, self.teacher_model, self.api_key)
            else:
                self._teacher = ModelWriter(models.load(spec))
        return self._teacher

    def _decoder_options(self, settings=None):
        s = settings or self.settings
        return {"name_norm": s.norm, "max_calls": s.max_calls}

    def ask(
        self,
        request=None,
        tools=None,
        messages=None,
        force=None,
        progress=None,
        adapter_weights=None,
        keep_adapter=False,
        save_adapter=None,
        train_on=None,
        on_piece=None,
        cancelled=None,
        **overrides,
    ):
        """Answer one request (or conversation).

        `force` overrides the uncertainty gate: True adapts whatever the score, False adapts only
        when uncertain (for modes ttsi/ttd/ticl). `adapter_weights` are LoRA weights to answer with
        instead of synthesizing and training; `keep_adapter` returns the trained weights in the
        answer and `save_adapter` (a directory) writes them as an mlx-lm adapter; otherwise nothing
        is written. `train_on` gives the examples to adapt on instead of synthesizing them: only
        eval's oracle ablations use it. `progress(phase, seconds, detail)` hears each phase end,
        `on_piece(kind, text)` the answer as it is decoded ("content" text, or a tool call's
        "call" name then its "arguments" JSON in pieces), and `cancelled()`, polled at every
        decoding and training step, stops the request (Cancelled) when it returns True.
        Any other keyword overrides a Settings field for this request."""
        settings = self._settings(overrides)
        if adapter_weights is None and self.saved is not None and settings.mode != "base":
            adapter_weights, force, settings = self.saved, True, replace(settings, mode="ttsi")
        messages = normalize_messages(messages if messages is not None else _request_messages(request))
        tools = parse_tools(tools) if tools else []
        report = progress or (lambda phase, seconds, detail="": None)
        plan = plan_request(
            settings.mode,
            self.teacher_spec is not None,
            force,
            stored=adapter_weights is not None,
            given=train_on is not None,
        )
        request = Request(
            messages,
            tools,
            settings,
            plan,
            train_on if plan.source == "given" else None,
            adapter_weights if plan.source == "stored" else None,
            keep_adapter,
            save_adapter,
            on_piece,
            cancelled,
        )
        with self._lock:
            try:
                if not tools:
                    return self._text_answer(request, Clock(report))
                return self._tool_answer(request, Clock(report))
            finally:
                if self.adapter.trained:
                    self.adapter.reset()

    def likelihoods(self, request=None, tools=None, messages=None, calls=(), adapter_weights=None):
        """The log-likelihood (nats, teacher-forced) of each list of `calls` as the answer to the request,
        under the base weights and, given `adapter_weights` (an Answer's `adapter`), under those:
        {"base": [...], "adapted": [...] or None}. Eval scores its gold answer so, after the method has
        answered, to tell learning from saying a label back."""
        messages = normalize_messages(messages if messages is not None else _request_messages(request))
        tools = parse_tools(tools)
        pairs = self.training_examples([{"messages": messages, "calls": c} for c in calls], tools)
        with self._lock:
            _, prefix = self._context(render_prompt(self.loaded.tokenizer, messages, tools, self.fmt), tools)
            frozen = (len(prefix), prefix.arrays) if prefix.arrays is not None else None

            def scores():
                return [round(total, 4) for total, _, _ in answer_scores(self.loaded.model, pairs, frozen)]

            adapted = None
            try:
                if adapter_weights is not None:
                    self.adapter.load(adapter_weights)
                    adapted = scores()
            finally:
                if self.adapter.trained:
                    self.adapter.reset()
            return {"base": scores(), "adapted": adapted}

    def _settings(self, overrides):
        """This request's settings: the agent's, with any Settings or LoRA field overridden."""
        lora = overrides.pop("lora", None) or self.settings.lora
        lora = replace(lora, **{k: overrides.pop(k) for k in LORA_FIELDS if k in overrides})
        return replace(self.settings, lora=lora, **overrides).check()

    def _text_answer(self, request, clock):
        settings = request.settings
        if request.plan.source == "stored":  # a saved adapter (--adapter-path) writes text answers too
            self.adapter.load(request.adapter_weights)
        prompt = render_prompt(self.loaded.tokenizer, request.messages, [], self.fmt)
        ids = self.loaded.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) > self.loaded.context_length:
            raise RequestError(
                f"the prompt is {len(ids)} tokens, longer than the model's context of {self.loaded.context_length}"
            )
        mx.random.seed(settings.seed)
        pieces, last = [], None
        for last in stream_generate(self.loaded.model, self.loaded.tokenizer, ids, max_tokens=settings.max_tokens):
            if request.cancelled is not None and request.cancelled():
                raise Cancelled("the request was cancelled while answering")
            pieces.append(last.text)
            if request.on_piece and last.text:
                request.on_piece("content", last.text)
        clock.lap("answering")
        return Answer(
            "".join(pieces).strip(),
            [],
            None,
            False,
            "base",
            [],
            {},
            clock.total(),
            self.name,
            prompt_tokens=len(ids),
            completion_tokens=last.generation_tokens if last else 0,
            finish_reason=(last.finish_reason if last else None) or "stop",
        )

    def _tool_answer(self, request, clock):
        """The request path: the plan's stages, each returning what the next one needs."""
        plan, tools, settings = request.plan, request.tools, request.settings
        if plan.method == "plan":
            return self._planned_answer(request, clock)
        prompt = render_prompt(self.loaded.tokenizer, request.messages, tools, self.fmt)
        decoder, prefix = self._context(prompt, tools, settings, request.cancelled)
        names, name_choice = self._score(decoder, prompt, tools, settings)
        prefix = self._keep_prefix(decoder, prefix)
        clock.lap("scoring", f"name margin {names.score:.3f}")
        base = decoder.decode(prompt, tools, name_choice, request.on_piece if plan.stream_base else None)
        clock.lap("decoding")
        label = (
            self._self_label(decoder, prompt, tools, base, names, name_choice, request.messages, settings.check_odds)
            if plan.self_check
            else None
        )
        uncertainty = names.with_arguments(
            argument_margin(base.choices), None if label is None else label == base.calls
        )
        doubt = f"u {uncertainty.score:.3f} ({'uncertain' if uncertainty.uncertain else 'certain'})"
        if label is None:
            clock.say("gate", doubt)
        else:
            clock.lap("labelling", f"{doubt}, self-label {'agrees' if uncertainty.label_agrees else 'differs'}")
        # the checked answer: mode check's answer, and TT-SI's when it finds nothing to learn
        checked = base if not label or label == base.calls else Decoded(label, self.fmt.calls_text(label))
        if plan.method == "check":
            return self._answer(
                request, prompt, checked, uncertainty, label, clock, method="check" if checked is not base else None
            )
        if not plan.adapts(uncertainty):
            return self._answer(request, prompt, base, uncertainty, label, clock, streamed=plan.stream_base)
        adaptation = self._adapt(request, prompt, prefix, uncertainty, label, clock)
        if adaptation.note:
            clock.say("note", adaptation.note)
            return self._answer(
                request,
                prompt,
                checked,
                uncertainty,
                label,
                clock,
                adaptation,
                method="check" if checked is not base else None,
            )
        decoder.restart(len(prefix))  # the answer is decoded on the prefix the LoRA was trained on
        # the label the LoRA was trained to say (else the base answer) is checked in one pass and
        # decoding takes every token of it that it would write anyway
        guess = self.fmt.calls_text(label) if label else base.text
        decoder.draft(adaptation.prompt, guess)
        answer = decoder.decode(adaptation.prompt, tools, on_piece=None if request.checks_after else request.on_piece)
        drafted, taken = decoder.draft_counts()
        clock.lap("answering", f"{taken} of {drafted} drafted tokens taken")
        draft = {
            "source": "label" if label else "base",
            "tokens": drafted,
            "taken": taken,
            "answer_is_draft": answer.text == guess,
        }
        answer, unchecked = self._check_adapted(decoder, adaptation.prompt, answer, names, name_choice, request)
        if request.checks_after:
            clock.lap("checking", "the adapted answer " + ("changed" if unchecked else "kept"))
        return self._answer(
            request,
            adaptation.prompt,
            answer,
            uncertainty,
            label,
            clock,
            adaptation,
            streamed=not request.checks_after,
            draft=draft,
            unchecked=unchecked,
        )

    def _check_adapted(self, decoder, prompt, answer, names, name_choice, request):
        """With --check-after, the adapted answer self-checked as the base answer was, the adapted weights
        weighing each change; also the calls before the check when it changed them (else None)."""
        if not request.checks_after or not answer.calls:
            return answer, None
        calls = self._self_label(
            decoder, prompt, request.tools, answer, names, name_choice, request.messages, request.settings.check_odds
        )
        if calls == answer.calls:
            return answer, None
        return Decoded(calls, self.fmt.calls_text(calls)), answer.calls

    def _planned_answer(self, request, clock):
        """Brief reasoning: the model writes "Function: name / key arguments" (at most PLAN_TOKENS),
        then its call after that line; no self-check, no adaptation."""
        tools, settings = request.tools, request.settings
        messages = list(request.messages)
        if messages[-1]["role"] == "user":
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + PLAN_ASK}
        prompt = render_prompt(self.loaded.tokenizer, messages, tools, self.fmt) + PLAN_LEAD
        decoder, prefix = self._context(prompt, tools, settings, request.cancelled)
        line = decoder.write_line(prompt, PLAN_TOKENS).split("\n")[0].rstrip()
        self._keep_prefix(decoder, prefix)
        clock.lap("planning", PLAN_LEAD + line)
        prompt += line + "\n"
        names, name_choice = self._score(decoder, prompt, tools, settings)
        clock.lap("scoring", f"name margin {names.score:.3f}")
        answer = decoder.decode(prompt, tools, name_choice)
        clock.lap("decoding")
        uncertainty = names.with_arguments(argument_margin(answer.choices), None)
        return self._answer(request, prompt, answer, uncertainty, None, clock, method="plan")

    def _context(self, prompt, tools, settings=None, cancelled=None):
        """A decoder over a fresh context that starts from the cached tools prefix when there is one;
        also the prefix (its arrays None until computed)."""
        state = ContextState(self.loaded.model, self.loaded.tokenizer, self.loaded.context_length, cancelled)
        ids = tuple(state.encode(prompt)[: self.prefix_length(state, prompt, tools)])
        prefix = self.prefixes.get(ids)
        if prefix is not None:
            state.seed(prefix.ids, prefix.arrays)
        return CallDecoder(state, self.fmt, **self._decoder_options(settings)), prefix or Prefix(ids, None)

    def _keep_prefix(self, decoder, prefix):
        """The prefix with its KV arrays (a copy, computed by the base model while scoring), cached."""
        if prefix.arrays is None:
            prefix = Prefix(prefix.ids, decoder.kv_prefix(len(prefix)))
            self.prefixes.put(prefix)
        return prefix

    def prefix_length(self, state, prompt, tools):
        """Length of the prompt's template-and-tools prefix (the system turn), the same for every
        request with these tools."""
        tok = self.loaded.tokenizer
        probes = [state.encode(render_prompt(tok, [{"role": "user", "content": c}], tools, self.fmt)) for c in "AB"]
        ids = state.encode(prompt)
        return max(1, min(_common(probes[0], probes[1]), _common(ids, probes[0]), len(ids) - 1))

    def _score(self, decoder, prompt, tools, settings):
        """Relative softmax over the candidates; also returns the name choice to answer with."""
        names = [t.name for t in tools]
        choice, scores = decoder.name_choice(prompt, tools)
        if settings.candidates == "name":
            return estimate(
                names, scores, choice.logprobs, choice.lengths, settings.threshold, "name", settings.norm
            ), choice
        # the whole call the model would write for each tool
        texts = [decoder.decode(prompt, tools, replace(choice, index=i)).text for i in range(len(tools))]
        logprobs, lengths = decoder.score_after(prompt, texts)
        scores = normalized(logprobs, lengths, settings.norm)
        uncertainty = estimate(names, scores, logprobs, lengths, settings.threshold, "call", settings.norm)
        best = max(range(len(tools)), key=lambda i: scores[i])
        return uncertainty, replace(choice, index=best)

    def _self_label(self, decoder, prompt, tools, base, names, name_choice, messages, odds):
        """The base calls checked against the request (self_check.py); when the tool name is
        uncertain, the runner-up tool's checked call instead if it uses more of the request. Each
        change is kept only when the model itself finds it likely enough (`odds`, weigh_changes)."""
        context = context_text(messages)
        label = label_calls(decoder, prompt, tools, base.calls, context)
        if names.score < names.threshold and len(tools) >= 2 and len(base.calls) == 1:
            runner_up = next(c["name"] for c in names.candidates if c["name"] != base.calls[0]["name"])
            forced = replace(name_choice, index=[t.name for t in tools].index(runner_up))
            rival = label_calls(decoder, prompt, tools, decoder.decode(prompt, tools, forced).calls[:1], context)
            label = better_tool(label, rival, tools, context, calls_made(messages))
        if not self.fmt.guided:  # free formats: the label is the model's call as written
            return label

        def score(options):  # the wrapper is written by the decoder whatever the calls: not weighed
            lead = self.fmt.start + self.fmt.open
            return decoder.score_after(prompt, [lead + self.fmt.written(calls) for calls in options])[0]

        return weigh_changes(score, base.calls, label, odds)

    def _adapt(self, request, prompt, prefix, uncertainty, label, clock):
        """The stored adapter installed, or examples synthesized and then trained on (or, for
        TT-ICL, put in the prompt)."""
        if request.plan.source == "stored":
            self.adapter.load(request.adapter_weights)
            clock.lap("adapter_load", "reused stored adapter")
            return Adaptation(Synthesis(), prompt, reused=True)
        synthesis = self._synthesize(request, uncertainty, label, prefix)
        clock.lap("synthesis", f"{len(synthesis.examples)} examples, {sum(synthesis.rejected.values())} rejected")
        if not synthesis.examples:
            return Adaptation(synthesis, prompt)
        if request.plan.method == "ticl":
            demonstrations = render_prompt(
                self.loaded.tokenizer, request.messages, request.tools, self.fmt, demonstrations=synthesis.examples
            )
            return Adaptation(synthesis, demonstrations)
        training = self._train(synthesis.examples, request, prefix)
        clock.lap("training", f"{training['steps']} steps, loss {training['loss']}")
        if request.save_adapter:
            self.adapter.save(request.save_adapter)
        return Adaptation(synthesis, prompt, training, self.adapter.weights() if request.keep_adapter else None)

    def _synthesize(self, request, uncertainty, label, prefix):
        """The examples to adapt on: given ones (eval's oracle ablations), a teacher's, or the model's
        own (`--examples-from`: a source of sources/, twins of the self-label, or the paper's one)."""
        settings, messages, tools = request.settings, request.messages, request.tools
        if request.plan.source == "given":
            given = list(request.examples)
            return Synthesis(
                examples=given, attempts=len(given), reason=None if given else "no examples were given to train on"
            )
        if request.plan.source == "teacher":  # a teacher may well know better than our own first choice
            same_tool = uncertainty.best if settings.same_tool else None
            return self.teacher().synthesize(
                last_user_text(messages),
                tools,
                settings.examples,
                settings.seed,
                same_tool=same_tool,
                temperature=settings.temperature,
                decoder_options=self._decoder_options(settings),
                cancelled=request.cancelled,
            )
        if settings.examples_from == "paper":  # one similar request, labelled by the model, unverified
            return ModelWriter(self.loaded).synthesize(
                last_user_text(messages),
                tools,
                settings.examples,
                settings.seed,
                state=self._state(request, prefix),
                temperature=settings.temperature,
                decoder_options=self._decoder_options(settings),
                cancelled=request.cancelled,
            )
        if not label:  # the model's own answer did not read as a call (formats.py)
            return Synthesis(attempts=1, reason="the model's own answer is not a readable tool call")
        if settings.examples_from != "twins":
            synthesis = SOURCES[settings.examples_from].synthesize(self._job(request, uncertainty, label, prefix))
            return self._keep(synthesis, request, prefix)
        # the request itself with its self-label, and K-1 twins that teach copying its values
        own = {"messages": messages, "request": last_user_text(messages), "calls": label, "source": "self-label"}
        examples = [own] + twins(messages, label, tools, settings.examples - 1, settings.seed)
        return Synthesis(examples=examples, attempts=settings.examples)

    def _job(self, request, uncertainty, label, prefix):
        """What a source of examples gets: the tools to write for are the label's, then the runner-up
        when the name is uncertain; no example may hold a value of the user's request."""
        settings, tools, tok = request.settings, request.tools, self.loaded.tokenizer
        names = [label[0]["name"]]
        if uncertainty.name_score is not None and uncertainty.name_score < uncertainty.threshold:
            names += [c["name"] for c in uncertainty.candidates if c["name"] not in names][:1]
        writer = BatchWriter(self.loaded.model, tok, prefix.ids, prefix.arrays, request.cancelled)
        decoders = []  # made on first use: only sources that label requests need one

        def prompt(text):
            return render_prompt(tok, [{"role": "user", "content": text}], tools, self.fmt)

        def own_calls(text):
            if not decoders:
                decoders.append(CallDecoder(self._state(request, prefix), self.fmt, **self._decoder_options(settings)))
            return decoders[0].decode(prompt(text), tools).calls

        return Job(
            last_user_text(request.messages),
            tools,
            names,
            request_values(label),
            settings.examples,
            settings.seed,
            settings.temperature,
            writer,
            prompt,
            self.fmt,
            own_calls,
        )

    def _state(self, request, prefix):
        """A fresh context that starts from the tools prefix (for writing and labelling examples)."""
        state = ContextState(self.loaded.model, self.loaded.tokenizer, self.loaded.context_length, request.cancelled)
        if prefix.arrays is not None:
            state.seed(prefix.ids, prefix.arrays)
        return state

    def _keep(self, synthesis, request, prefix):
        """The verified examples to train on: at most K; with --keep informative or anchored, chosen by
        whether the base model already says each back (one teacher-forced pass each)."""
        keep, k = request.settings.keep, request.settings.examples
        if keep == "verified" or not synthesis.examples:
            return keep_examples(synthesis, [False] * len(synthesis.examples), k)
        frozen = (len(prefix), prefix.arrays) if prefix.arrays is not None else None
        scores = answer_scores(self.loaded.model, self.training_examples(synthesis.examples, request.tools), frozen)
        return keep_examples(synthesis, [said for _, _, said in scores], k, anchored=keep == "anchored")

    def _train(self, examples, request, prefix):
        """A fresh LoRA fitted to the examples over the frozen tools prefix; returns training stats."""
        settings = request.settings
        self.adapter.reset(settings.seed)
        frozen = (len(prefix), prefix.arrays) if prefix.arrays is not None else None
        return self.adapter.train(
            self.training_examples(examples, request.tools),
            settings.seed,
            self.loaded.context_length,
            prefix=frozen,
            settings=settings.lora,
            cancelled=request.cancelled,
        )

    def _answer(
        self,
        request,
        prompt,
        decoded,
        uncertainty,
        label,
        clock,
        adaptation=None,
        streamed=False,
        method=None,
        draft=None,
        unchecked=None,
    ):
        """The Answer for the decoded calls; a base answer decoded before the gate is replayed to on_piece."""
        if request.on_piece and not streamed:
            for call in decoded.calls:
                request.on_piece("call", call["name"])
                request.on_piece("arguments", _arguments_json(call))
        adapted = adaptation is not None and adaptation.note is None
        synthesis = adaptation.synthesis if adaptation else Synthesis()
        tok = self.loaded.tokenizer
        return Answer(
            answer=decoded.text,
            tool_calls=decoded.calls,
            uncertainty=uncertainty,
            adapted=adapted,
            method=method or (request.plan.method if adapted else "base"),
            synthetic=synthesis.examples,
            rejected=synthesis.rejected,
            timings=clock.total(),
            model=self.name,
            training=adaptation.training if adapted else None,
            reused=adapted and adaptation.reused,
            adapter=adaptation.weights if adapted else None,
            asked=synthesis.attempts,
            label=label,
            note=(adaptation.note if adaptation else None) or decoded.error,
            prompt_tokens=len(tok.encode(prompt, add_special_tokens=False)),
            completion_tokens=len(tok.encode(decoded.text, add_special_tokens=False)),
            finish_reason="tool_calls" if decoded.calls else "stop",
            draft=draft,
            unchecked=unchecked,
        )

    def training_examples(self, examples, tools):
        """(token ids, answer offset) pairs. The loss covers the calls the model writes, from the first
        call's name to the last call's closing brace: the format's wrapper (`<tool_call>` ...
        `</tool_call>`, end of turn) is written by the decoder, never chosen, and a model that would not
        write it itself (Qwen2.5-Coder-0.5B: loss ~20 on each marker) would spend its whole update on it."""
        tok, fmt = self.loaded.tokenizer, self.fmt
        lead, wrapped = fmt.start + fmt.open, bool(fmt.start + fmt.open + fmt.close + fmt.end)
        pairs = []
        for example in examples:
            conversation = example.get("messages") or [{"role": "user", "content": example["request"]}]
            prompt = render_prompt(tok, normalize_messages(conversation), tools, fmt)
            # no wrapper (the fallback prompt): the model itself ends its turn, so end-of-turn stays in the loss
            body = (
                fmt.written(example["calls"]) if wrapped else calls_text(example["calls"], fmt) + (tok.eos_token or "")
            )
            prompt_ids = tok.encode(prompt, add_special_tokens=False) + tok.encode(lead, add_special_tokens=False)
            pairs.append((prompt_ids + tok.encode(body, add_special_tokens=False), len(prompt_ids)))
        return pairs


class PrefixCache:
    """Base-model KV caches of recent system prompts (tools), reused by requests with the same tools."""

    def __init__(self, max_tokens=8192):
        self.max_tokens = max_tokens
        self.entries = OrderedDict()  # token ids -> Prefix

    def get(self, ids):
        prefix = self.entries.get(tuple(ids))
        if prefix is not None:
            self.entries.move_to_end(prefix.ids)
        return prefix

    def put(self, prefix):
        if prefix.arrays is None or prefix.ids in self.entries or len(prefix) > self.max_tokens:
            return
        self.entries[prefix.ids] = prefix
        while sum(len(k) for k in self.entries) > self.max_tokens:
            self.entries.popitem(last=False)


def _arguments_json(call):
    return json.dumps(call.get("arguments", {}), ensure_ascii=False)


def _common(a, b):
    from mlx_lm.utils import common_prefix_len

    return common_prefix_len(a, b)


def _request_messages(request):
    if request is None or not str(request).strip():
        raise RequestError("the request is empty")
    return [{"role": "user", "content": str(request)}]
