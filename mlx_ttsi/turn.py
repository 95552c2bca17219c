"""One request as it is answered: its inputs, plan, clock, and what each stage found.

`Agent` (agent.py) keeps what lives across requests (the model, its LoRA, the tools-prefix cache, the
teacher); a `Turn` holds one request's state, as simonw/llm's `Response` holds one call's, and its
stages are methods that return values: scoring -> decoding (the base answer) -> self-check ->
synthesis -> training -> answer. `Turn.answer()` reads as the plan.
"""

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import mlx.core as mx
from mlx_lm import stream_generate

from .adaptation import answer_scores
from .decoding import CallDecoder, Decoded, argument_margin, normalized
from .dependencies import needed_provider, supplies
from .errors import Cancelled, RequestError
from .prompts import last_user_text, render_prompt
from .self_check import (
    better_tool,
    calls_made,
    conformed,
    context_text,
    kept_stated,
    label_calls,
    settled,
    weigh_changes,
)
from .settings import Settings
from .sources import SOURCES, Job
from .synthesis import Synthesis, keep_examples
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
    unchecked: list = None  # the adapted (or planned) calls before --check-after changed them (None: not changed)
    # ask(stages=True): the answers modes base and check give, met on the way ({"base", "check"}; eval)
    stages: dict = None

    def as_dict(self):
        data = {k: v for k, v in asdict(self).items() if k not in ("adapter", "stages")}
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

    @property
    def keeps_weights(self):
        """Whether the request never changes the model's weights (base, check, plan): such requests
        may run side by side (Agent.ask_together)."""
        return self.method in ("base", "check", "plan") and self.source not in ("stored", "given")

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
    """One request as the stages see it."""

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
    stages: bool = False  # keep the base and checked answers met on the way (Answer.stages)

    @property
    def self_checks(self):
        """Whether the base answer is self-checked: TT-SI, TT-ICL and mode check always, TT-D with
        --check-after (its answer then when the teacher's examples are all refused)."""
        return self.plan.self_check or self.checks_after

    @property
    def checks_after(self):
        """Whether the adapted answer is self-checked too (--check-after; TT-SI, TT-ICL and TT-D), or the
        call written after the plan line (mode plan)."""
        checkable = self.plan.self_check or self.plan.source == "teacher" or self.plan.method == "plan"
        return self.settings.check_after and checkable


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


def decoder_options(settings):
    """CallDecoder's options from a request's settings."""
    return {"name_norm": settings.norm, "max_calls": settings.max_calls}


class Turn:
    """One request being answered. `agent` lends the resources (its model, LoRA, call format, prefix
    cache and teacher); the turn holds the request, its clock, its context and decoder, the tools
    prefix, the uncertainty and the label. Agent.ask makes one per request, under the agent's lock."""

    def __init__(self, agent, request, clock):
        self.agent, self.request, self.clock = agent, request, clock
        self.loaded, self.fmt, self.settings = agent.loaded, agent.fmt, request.settings
        self.state = self.decoder = self.prefix = None  # opened by `open`
        self.uncertainty = self.label = None
        self.stages = {}  # mode -> the Answer it would have given, when the request keeps stages

    def answer(self):
        """The plan: a text answer, the brief-reasoning one, or the tool path below."""
        if not self.request.tools:
            return self.text_answer()
        if self.request.plan.method == "plan":
            return self.planned_answer()
        return self.tool_answer()

    def tool_answer(self):
        """The tool request's path: score, decode, self-check, gate, then adapt and answer."""
        plan, clock = self.request.plan, self.clock
        prompt = self.open(self.render(self.request.messages))
        names, choice = self.score(prompt)
        self.prefix = self.agent.keep_prefix(self.state, self.prefix)
        clock.lap("scoring", f"name margin {names.score:.3f}")
        base = self.decoder.decode(
            prompt, self.request.tools, choice, self.request.on_piece if plan.stream_base else None
        )
        clock.lap("decoding")
        self.keep_stage("base", prompt, base, names.with_arguments(argument_margin(base.choices), None))
        self.label = self.self_label(prompt, base, names, choice) if self.request.self_checks else None
        self.uncertainty = self.gate(names, base)
        # the checked answer: mode check's answer, and TT-SI's when it finds nothing to learn
        checked = base if not self.label or self.label == base.calls else self.decoded(self.label)
        checked_method = "check" if checked is not base else None
        if self.request.self_checks:
            self.keep_stage("check", prompt, checked, self.uncertainty, self.label, checked_method)
        if plan.method == "check":
            return self.result(prompt, checked, method=checked_method)
        if not plan.adapts(self.uncertainty):
            return self.result(prompt, base, streamed=plan.stream_base)
        adaptation = self.adapt(prompt)
        if adaptation.note:
            clock.say("note", adaptation.note)
            return self.result(prompt, checked, adaptation, method=checked_method)
        answer, draft = self.adapted_answer(adaptation.prompt, base)
        answer, unchecked = self.check_answer(adaptation.prompt, answer, names, choice)
        return self.result(
            adaptation.prompt,
            answer,
            adaptation,
            streamed=not self.request.checks_after,
            draft=draft,
            unchecked=unchecked,
        )

    # -- stages --------------------------------------------------------------------------------
    def render(self, messages):
        return render_prompt(self.loaded.tokenizer, messages, self.request.tools, self.fmt)

    def open(self, prompt):
        """A context for `prompt` that starts from the cached tools prefix when there is one, and a
        decoder on it; returns the prompt."""
        self.state, self.prefix = self.agent.context(prompt, self.request.tools, self.request.cancelled)
        self.decoder = CallDecoder(self.state, self.fmt, **decoder_options(self.settings))
        return prompt

    def score(self, prompt):
        """Relative softmax over the candidates; also returns the name choice to answer with."""
        tools, settings = self.request.tools, self.settings
        names = [t.name for t in tools]
        choice, scores = self.decoder.name_choice(prompt, tools)
        if settings.candidates == "name":
            uncertainty = estimate(
                names, scores, choice.logprobs, choice.lengths, settings.threshold, "name", settings.norm
            )
            return uncertainty, choice
        # the whole call the model would write for each tool
        texts = [self.decoder.decode(prompt, tools, replace(choice, index=i)).text for i in range(len(tools))]
        logprobs, lengths = self.decoder.score_after(prompt, texts)
        scores = normalized(logprobs, lengths, settings.norm)
        uncertainty = estimate(names, scores, logprobs, lengths, settings.threshold, "call", settings.norm)
        return uncertainty, replace(choice, index=max(range(len(tools)), key=lambda i: scores[i]))

    def self_label(self, prompt, answer, names, choice):
        """The answer's calls checked against the request (self_check.py); when the tool name is
        uncertain, the runner-up tool's checked call instead if it uses more of the request. Each
        change is kept only when the model itself (the weights attached now) finds it likely enough
        (`check_odds`, weigh_changes)."""
        decoder, tools, messages = self.decoder, self.request.tools, self.request.messages
        context = context_text(messages)
        label = label_calls(decoder, prompt, tools, answer.calls, context)
        if names.score < names.threshold and len(tools) >= 2 and len(answer.calls) == 1:
            runner_up = next(c["name"] for c in names.candidates if c["name"] != answer.calls[0]["name"])
            rival = label_calls(decoder, prompt, tools, self.forced_call(prompt, choice, runner_up), context)
            label = better_tool(label, rival, tools, context, calls_made(messages))
        if not self.fmt.guided:  # free formats: the label is the model's call as written
            return label

        def score(options):  # the wrapper is written by the decoder whatever the calls: not weighed
            lead = self.fmt.start + self.fmt.open
            return decoder.score_after(prompt, [lead + self.fmt.written(calls) for calls in options])[0]

        label = weigh_changes(score, conformed(answer.calls, tools), label, self.settings.check_odds)
        return self.provided_first(prompt, label, choice, context)

    def forced_call(self, prompt, choice, name):
        """The call the model writes when the tool is `name` (a list of at most one call)."""
        forced = replace(choice, index=[t.name for t in self.request.tools].index(name))
        return self.decoder.decode(prompt, self.request.tools, forced).calls[:1]

    def provided_first(self, prompt, label, choice, context):
        """The checked call of the tool that returns a value the label needs, when it has not been
        called and the conversation holds what it takes (dependencies.py); else the label. Not weighed:
        the model's odds are what missed the dependency."""
        tools = self.request.tools
        needed = needed_provider(label, tools, calls_made(self.request.messages))
        if needed is None:
            return label
        key, provider = needed
        call = label_calls(self.decoder, prompt, tools, self.forced_call(prompt, choice, provider.name), context)
        if not supplies(call, label, key, provider, self.request.messages):
            return label
        self.clock.say("first", f"{provider.name}, which returns the {key} that {label[0]['name']} takes")
        return call

    def gate(self, names, base):
        """The uncertainty: the name margin, the argument margin, and whether the self-label agrees."""
        uncertainty = names.with_arguments(
            argument_margin(base.choices), None if self.label is None else self.label == base.calls
        )
        doubt = f"u {uncertainty.score:.3f} ({'uncertain' if uncertainty.uncertain else 'certain'})"
        if self.label is None:
            self.clock.say("gate", doubt)
        else:
            self.clock.lap("labelling", f"{doubt}, self-label {'agrees' if uncertainty.label_agrees else 'differs'}")
        return uncertainty

    def adapt(self, prompt):
        """The stored adapter installed, or examples synthesized and then trained on (or, for
        TT-ICL, put in the prompt)."""
        request, adapter = self.request, self.agent.adapter
        if request.plan.source == "stored":
            adapter.load(request.adapter_weights)
            self.clock.lap("adapter_load", "reused stored adapter")
            return Adaptation(Synthesis(), prompt, reused=True)
        synthesis = self.synthesize()
        self.clock.lap("synthesis", f"{len(synthesis.examples)} examples, {sum(synthesis.rejected.values())} rejected")
        if not synthesis.examples:
            return Adaptation(synthesis, prompt)
        if request.plan.method == "ticl":
            demonstrations = render_prompt(
                self.loaded.tokenizer, request.messages, request.tools, self.fmt, demonstrations=synthesis.examples
            )
            return Adaptation(synthesis, demonstrations)
        training = self.train(synthesis.examples)
        self.clock.lap("training", f"{training['steps']} steps, loss {training['loss']}")
        if request.save_adapter:
            adapter.save(request.save_adapter)
        return Adaptation(synthesis, prompt, training, adapter.weights() if request.keep_adapter else None)

    def synthesize(self):
        """The examples to adapt on: given ones (eval's oracle ablations), or a source's (sources/:
        TT-D's teacher, or the model's own as `--examples-from` names)."""
        request, settings = self.request, self.settings
        if request.plan.source == "given":
            given = list(request.examples)
            return Synthesis(
                examples=given, attempts=len(given), reason=None if given else "no examples were given to train on"
            )
        source = "teacher" if request.plan.source == "teacher" else settings.examples_from
        return SOURCES[source].synthesize(self.job())

    def job(self):
        """What a source of examples gets: the tools to write for are the label's (else the likeliest
        name's), then the runner-up when the name is uncertain; no example may hold a value of the
        user's request."""
        settings, tools, tok, uncertainty = self.settings, self.request.tools, self.loaded.tokenizer, self.uncertainty
        names = [self.label[0]["name"] if self.label else uncertainty.best]
        if uncertainty.name_score is not None and uncertainty.name_score < uncertainty.threshold:
            names += [c["name"] for c in uncertainty.candidates if c["name"] not in names][:1]
        writer = BatchWriter(self.loaded.model, tok, self.prefix.ids, self.prefix.arrays, self.request.cancelled)
        decoders = []  # made on first use: only sources that label requests need one

        def prompt(text):
            return self.render([{"role": "user", "content": text}])

        def own_calls(text):
            if not decoders:
                decoders.append(CallDecoder(self.fresh_state(), self.fmt, **decoder_options(settings)))
            return decoders[0].decode(prompt(text), tools).calls

        return Job(
            last_user_text(self.request.messages),
            tools,
            names,
            request_values(self.label),
            settings.examples,
            settings.seed,
            settings.temperature,
            writer,
            prompt,
            self.fmt,
            own_calls,
            self.request.messages,
            self.label,
            self.keep,
            self.loaded,
            self.fresh_state,
            decoder_options(settings),
            self.request.cancelled,
            self.agent.teacher,
            uncertainty.best if settings.same_tool else None,
        )

    def fresh_state(self):
        """A fresh context that starts from the tools prefix (for writing and labelling examples)."""
        return self.prefix.start(self.agent.new_state(self.request.cancelled))

    def keep(self, synthesis):
        """The verified examples to train on: at most K; with --keep informative or anchored, chosen by
        whether the base model already says each back (one teacher-forced pass each)."""
        keep, k = self.settings.keep, self.settings.examples
        if keep == "verified" or not synthesis.examples:
            return keep_examples(synthesis, [False] * len(synthesis.examples), k)
        pairs = self.agent.training_examples(synthesis.examples, self.request.tools)
        scores = answer_scores(self.loaded.model, pairs, self.prefix.frozen)
        return keep_examples(synthesis, [said for _, _, said in scores], k, anchored=keep == "anchored")

    def train(self, examples):
        """A fresh LoRA fitted to the examples over the frozen tools prefix; returns training stats."""
        settings, adapter = self.settings, self.agent.adapter
        adapter.reset(settings.seed)
        return adapter.train(
            self.agent.training_examples(examples, self.request.tools),
            settings.seed,
            self.loaded.context_length,
            prefix=self.prefix.frozen,
            settings=settings.lora,
            cancelled=self.request.cancelled,
        )

    def adapted_answer(self, prompt, base):
        """The answer decoded with the adapted weights (or demonstrations), on the prefix the LoRA was
        trained on; the label it was trained to say (else the base answer) is checked in one pass and
        decoding takes every token of it that it would write anyway. Also the draft's counts."""
        self.state.truncate(len(self.prefix))  # the weights changed: only the frozen prefix is still right
        guess = self.fmt.calls_text(self.label) if self.label else base.text
        self.decoder.draft(prompt, guess)
        on_piece = None if self.request.checks_after else self.request.on_piece
        answer = self.decoder.decode(prompt, self.request.tools, on_piece=on_piece)
        drafted, taken = self.state.draft_counts()
        self.clock.lap("answering", f"{taken} of {drafted} drafted tokens taken")
        draft = {
            "source": "label" if self.label else "base",
            "tokens": drafted,
            "taken": taken,
            "answer_is_draft": answer.text == guess,
        }
        return answer, draft

    def check_answer(self, prompt, answer, names, choice):
        """With --check-after, the adapted (or planned) answer self-checked as the base answer was, by
        the weights --check-weights names; also the calls before the check when it changed them (else None)."""
        if not self.request.checks_after:
            return answer, None
        calls = answer.calls
        if calls:
            with self.checking_weights():
                calls = self.self_label(prompt, answer, names, choice)
        if calls and self.label:  # an adapted answer keeps the values the self-label took from the user,
            context = context_text(self.request.messages)
            calls = kept_stated(calls, self.label, context)
            calls = settled(calls, self.label, self.request.tools, context)  # and changes it only where it earned that
        changed = calls != answer.calls
        self.clock.lap("checking", "the answer " + ("changed" if changed else "kept"))
        return (self.decoded(calls), answer.calls) if changed else (answer, None)

    @contextmanager
    def checking_weights(self):
        """The weights attached now, or with --check-weights base the base model's: the LoRA set aside
        and the context cut back to the frozen prefix (past it, it came from the other weights)."""
        if self.settings.check_weights != "base":
            yield
            return
        with self.agent.adapter.set_aside() as changed:
            if changed:
                self.state.truncate(len(self.prefix))
            yield
        if changed:
            self.state.truncate(len(self.prefix))

    def planned_answer(self):
        """Brief reasoning: the model writes "Function: name / key arguments" (at most PLAN_TOKENS),
        then its call after that line, self-checked with --check-after; no adaptation."""
        messages = list(self.request.messages)
        if messages[-1]["role"] == "user":
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + PLAN_ASK}
        prompt = self.open(self.render(messages) + PLAN_LEAD)
        self.state.set_text(prompt)
        line = self.state.sample(lambda logprobs: mx.argmax(logprobs, axis=-1), PLAN_TOKENS)
        line = line.split("\n")[0].rstrip()
        self.prefix = self.agent.keep_prefix(self.state, self.prefix)
        self.clock.lap("planning", PLAN_LEAD + line)
        prompt += line + "\n"
        names, choice = self.score(prompt)
        self.clock.lap("scoring", f"name margin {names.score:.3f}")
        answer = self.decoder.decode(prompt, self.request.tools, choice)
        self.clock.lap("decoding")
        arguments = argument_margin(answer.choices)
        answer, unchecked = self.check_answer(prompt, answer, names, choice)
        self.label = answer.calls if self.request.checks_after and answer.calls else None
        agrees = None if self.label is None else unchecked is None
        self.uncertainty = names.with_arguments(arguments, agrees)
        return self.result(prompt, answer, method="plan", unchecked=unchecked)

    def text_answer(self):
        """A request without tools: the model's own text, streamed (a stored adapter writes it too)."""
        request, tok = self.request, self.loaded.tokenizer
        if request.plan.source == "stored":  # a saved adapter (--adapter-path) writes text answers too
            self.agent.adapter.load(request.adapter_weights)
        ids = tok.encode(render_prompt(tok, request.messages, [], self.fmt), add_special_tokens=False)
        if len(ids) > self.loaded.context_length:
            raise RequestError(
                f"the prompt is {len(ids)} tokens, longer than the model's context of {self.loaded.context_length}"
            )
        mx.random.seed(self.settings.seed)
        pieces, last = [], None
        for last in stream_generate(self.loaded.model, tok, ids, max_tokens=self.settings.max_tokens):
            if request.cancelled is not None and request.cancelled():
                raise Cancelled("the request was cancelled while answering")
            pieces.append(last.text)
            if request.on_piece and last.text:
                request.on_piece("content", last.text)
        self.clock.lap("answering")
        return Answer(
            "".join(pieces).strip(),
            [],
            None,
            False,
            "base",
            [],
            {},
            self.clock.total(),
            self.loaded.name,
            prompt_tokens=len(ids),
            completion_tokens=last.generation_tokens if last else 0,
            finish_reason=(last.finish_reason if last else None) or "stop",
        )

    # -- the answer ----------------------------------------------------------------------------
    def keep_stage(self, mode, prompt, decoded, uncertainty, label=None, method=None):
        """With Request.stages, the Answer mode `mode` gives for this request, as it stands now (the base
        answer before the self-check, the checked one after it): eval answers those methods from one turn."""
        if self.request.stages:
            answer = self.result(prompt, decoded, streamed=True, method=method)
            self.stages[mode] = replace(
                answer, uncertainty=uncertainty, label=label, timings=dict(answer.timings), stages=None
            )

    def decoded(self, calls):
        return Decoded(calls, self.fmt.calls_text(calls))

    def result(self, prompt, decoded, adaptation=None, streamed=False, method=None, draft=None, unchecked=None):
        """The Answer for the decoded calls; a base answer decoded before the gate is replayed to on_piece."""
        on_piece = self.request.on_piece
        if on_piece and not streamed:
            for call in decoded.calls:
                on_piece("call", call["name"])
                on_piece("arguments", json.dumps(call.get("arguments", {}), ensure_ascii=False))
        adapted = adaptation is not None and adaptation.note is None
        synthesis = adaptation.synthesis if adaptation else Synthesis()
        tok = self.loaded.tokenizer
        return Answer(
            answer=decoded.text,
            tool_calls=decoded.calls,
            uncertainty=self.uncertainty,
            adapted=adapted,
            method=method or (self.request.plan.method if adapted else "base"),
            synthetic=synthesis.examples,
            rejected=synthesis.rejected,
            timings=self.clock.total(),
            model=self.loaded.name,
            training=adaptation.training if adapted else None,
            reused=adapted and adaptation.reused,
            adapter=adaptation.weights if adapted else None,
            asked=synthesis.attempts,
            label=self.label,
            note=(adaptation.note if adaptation else None) or decoded.error,
            prompt_tokens=len(tok.encode(prompt, add_special_tokens=False)),
            completion_tokens=len(tok.encode(decoded.text, add_special_tokens=False)),
            finish_reason="tool_calls" if decoded.calls else "stop",
            draft=draft,
            unchecked=unchecked,
            stages=dict(self.stages) or None,
        )
