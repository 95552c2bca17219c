"""The TT-SI agent: score uncertainty, synthesize examples, adapt, answer, reset.

    agent = Agent.load("smollm2-135m")
    answer = agent.ask("Book a table for two at 7pm", tools=[...])
    answer.tool_calls, answer.uncertainty.score, answer.adapted, answer.timings

`Agent` keeps what lives across requests: the model, its one LoRA, the call format, the tools-prefix
cache and the teacher. Each request is a `Turn` (turn.py) that holds its own state and runs the stages;
the LoRA is reset after every request.
"""

import threading
from dataclasses import replace

from . import models
from .adaptation import Adapter, answer_scores
from .context import ContextState, PrefixCache, forward_pass, prefix_length
from .errors import RequestError, TTSIError
from .lockstep import Lockstep
from .prompts import call_format, calls_text, normalize_messages, render_prompt
from .settings import LORA_FIELDS, Settings, default
from .synthesis import EndpointTeacher, ModelWriter
from .tools import parse_tools
from .turn import PLAN_LEAD, PLAN_TOKENS, Answer, Clock, Request, Turn, plan_request  # noqa: F401  (the API)


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
        self._forward = forward_pass  # how contexts run the model: a Lockstep's while requests run together

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
            state, prefix = self.context(prompt, tools)
            state.set_text(prompt)
            self.keep_prefix(state, prefix)

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
        stages=False,
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
        decoding and training step, stops the request (Cancelled) when it returns True. `stages`
        keeps, in Answer.stages, the answers modes base and check would have given (the same
        decoding, met on the way: eval answers those methods from one turn). Any other keyword
        overrides a Settings field for this request."""
        request = self._request(
            request,
            tools,
            messages,
            force,
            adapter_weights,
            keep_adapter,
            save_adapter,
            train_on,
            on_piece,
            cancelled,
            stages,
            **overrides,
        )
        with self._lock:
            return self._answer(request, progress)

    def ask_together(self, asks, progress=None):
        """Answer several requests side by side, their forward passes batched (lockstep.py): for each
        dict of `ask`'s keywords, (Answer, None) or (None, the error it raised, e.g. a RequestError for
        a request over the context). Only modes that never change the weights (base, check, plan) run
        together; each answer is the one `ask` gives. An ask's own `progress` hears its phases."""
        asks = [dict(ask) for ask in asks]
        reports = [ask.pop("progress", None) or progress for ask in asks]
        requests = [self._request(**ask) for ask in asks]
        for request in requests:
            if not request.plan.keeps_weights:
                raise TTSIError(f"mode {request.settings.mode} trains: its requests cannot run together")
        with self._lock:
            group = Lockstep()
            self._forward = group.forward
            try:
                return group.run([lambda r=r, p=p: self._answer(r, p) for r, p in zip(requests, reports)])
            finally:
                self._forward = forward_pass

    def keeps_weights(self, **overrides):
        """Whether a request with these Settings overrides never changes the weights, so that it may
        run in `ask_together` (modes base, check and plan, unless a saved adapter answers it)."""
        settings = self._settings(dict(overrides))
        return self._planned(settings)[1].keeps_weights

    def _request(
        self,
        request=None,
        tools=None,
        messages=None,
        force=None,
        adapter_weights=None,
        keep_adapter=False,
        save_adapter=None,
        train_on=None,
        on_piece=None,
        cancelled=None,
        stages=False,
        **overrides,
    ):
        """The Request the stages see: `ask`'s arguments checked and settled."""
        settings, plan, adapter_weights = self._planned(self._settings(overrides), force, adapter_weights, train_on)
        messages = normalize_messages(messages if messages is not None else _request_messages(request))
        tools = parse_tools(tools) if tools else []
        return Request(
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
            stages,
        )

    def _planned(self, settings, force=None, adapter_weights=None, train_on=None):
        """(settings, Plan, adapter weights) of a request: a saved adapter (--adapter-path) answers every
        request but those of mode base."""
        if adapter_weights is None and self.saved is not None and settings.mode != "base":
            adapter_weights, force, settings = self.saved, True, replace(settings, mode="ttsi")
        plan = plan_request(
            settings.mode,
            self.teacher_spec is not None,
            force,
            stored=adapter_weights is not None,
            given=train_on is not None,
        )
        return settings, plan, adapter_weights

    def _answer(self, request, progress):
        """The Turn of one request (the caller holds the lock); the LoRA reset after it."""
        report = progress or (lambda phase, seconds, detail="": None)
        try:
            return Turn(self, request, Clock(report)).answer()
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
            _, prefix = self.context(render_prompt(self.loaded.tokenizer, messages, tools, self.fmt), tools)

            def scores():
                return [round(total, 4) for total, _, _ in answer_scores(self.loaded.model, pairs, prefix.frozen)]

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

    def context(self, prompt, tools, cancelled=None):
        """A fresh context for `prompt` that starts from the cached tools prefix when there is one; also
        that prefix (its arrays None until `keep_prefix` has them)."""
        state = self.new_state(cancelled)
        ids = state.encode(prompt)
        tok = self.loaded.tokenizer
        probes = [state.encode(render_prompt(tok, [{"role": "user", "content": c}], tools, self.fmt)) for c in "AB"]
        prefix = self.prefixes.get(ids[: prefix_length(ids, probes)])
        return prefix.start(state), prefix

    def keep_prefix(self, state, prefix):
        """The prefix with its KV arrays, computed by the base model in `state`, cached for later requests."""
        return self.prefixes.kept(state, prefix)

    def new_state(self, cancelled=None):
        """An empty context on this agent's model."""
        loaded = self.loaded
        return ContextState(loaded.model, loaded.tokenizer, loaded.context_length, cancelled, self._forward)

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


def _request_messages(request):
    if request is None or not str(request).strip():
        raise RequestError("the request is empty")
    return [{"role": "user", "content": str(request)}]
