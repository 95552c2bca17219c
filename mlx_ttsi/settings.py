"""Every setting a user can give: its default, range and help, in one table.

The CLI's options, the server's request checks, the fields of `Settings`/`LoRASettings`, the
defaults of the modules they configure (server queue, adapter memory, teacher endpoint) and the
README's option table (`python -m mlx_ttsi.settings`) are all made from OPTIONS.
"""

from dataclasses import dataclass, field, fields

from .errors import TTSIError

MODES = ("auto", "base", "ttsi", "ttd", "ticl", "check", "plan")
PRECISIONS = ("auto", "native", "float32", "float16", "bfloat16")  # auto: float32 on CPU, native on a GPU


@dataclass(frozen=True)
class Option:
    name: str  # the Settings (or LoRASettings) field
    default: object
    help: str
    kind: type = str  # int, float, str or bool
    low: float = None
    high: float = None
    choices: tuple = ()
    flag: str = None  # the CLI flag when it is not --name-with-dashes
    short: str = None  # a one-letter CLI flag too
    env: bool = False  # also read from MLX_TTSI_<NAME>
    request: bool = False  # a server request may set it (in its `ttsi` object)
    group: str = "agent"  # agent: a Settings field; lora: a LoRASettings field; load: how the model and
    # teacher are loaded (ask, eval, serve); serve: `mlx-ttsi serve` only

    @property
    def cli_flag(self):
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def range_text(self):
        if self.choices:
            return " | ".join(self.choices)
        if self.kind is bool:
            return "on | off"
        if self.low is None and self.high is None:
            return "any"
        if self.high is None:
            return f">= {self.low}"
        return f"{'' if self.low is None else self.low} .. {'' if self.high is None else self.high}"

    def check(self, value, label=None):
        """The value, or a TTSIError saying which values are allowed."""
        label = label or self.name
        if self.choices:
            if value not in self.choices:
                raise TTSIError(f"{label} must be one of {', '.join(self.choices)}, not {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise TTSIError(f"{label} must be true or false")
            return value
        if self.kind in (int, float):
            integer = self.kind is int
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise TTSIError(f"{label} must be {'an integer' if integer else 'a number'}")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                bounds = f"at least {self.low}" if self.high is None else f"between {self.low} and {self.high}"
                raise TTSIError(f"{label} must be {bounds}")
            return self.kind(value)
        return value


OPTIONS = [
    Option(
        "mode",
        "check",
        "check (the default): answer with the self-checked answer, without training (ttsi on every request is "
        "one row above it on 144 fresh rows, at about 5x the time: docs/results.md); auto: TT-SI only "
        "when uncertain; ttsi/ttd/ticl: always use that method; "
        "base: never; plan: brief reasoning (a 'Function: name / key arguments' line, then the call), never adapts.",
        choices=MODES,
        env=True,
        request=True,
    ),
    Option(
        "threshold",
        0.5,
        "Uncertain when u = min(name margin, argument margin) is below this (tau); u = 0 "
        "when the self-label disagrees.",
        float,
        0,
        1,
        env=True,
        request=True,
    ),
    Option(
        "examples",
        3,
        "Examples per adapted request (K): at most K verified examples are trained on "
        "(--examples-from twins: the request with its self-label and K-1 twins).",
        int,
        1,
        16,
        short="-k",
        env=True,
        request=True,
    ),
    Option(
        "examples_from",
        "calls",
        "Where TT-SI's examples come from: calls = the model writes example calls, "
        "then the request for each (labels independent of its answer); requests = similar requests, then its "
        "own call for each (the paper's direction); twins = the request with its self-label and twins of it; "
        "paper = one similar request and its call, unverified (the paper's TT-SI, with K 1).",
        choices=("calls", "requests", "twins", "paper"),
        env=True,
        request=True,
    ),
    Option(
        "keep",
        "anchored",
        "Which verified examples are trained on (at most K): informative = those the base model does not already "
        "say back (teacher-forced argmax); anchored = those first, then ones it already says (anchors against "
        "drift), and none when it already says all; verified = all of them.",
        choices=("informative", "anchored", "verified"),
        request=True,
    ),
    Option(
        "check_after",
        True,
        "TT-SI/TT-ICL/TT-D: the adapted answer is self-checked against the request as well, each change weighed "
        "by the adapted model or as --check-weights says, and a value the self-label took from the conversation "
        "is put back where the adapted answer writes one the conversation does not state; the self-label stays the "
        "answer when the adapted one uses less of the request, or calls another tool without using more of it "
        "(off: the adapted answer "
        "as written, which can undo the check's fixes); TT-D then checks its base answer too, its answer when no "
        "teacher example is kept. "
        "Mode plan: the call written after the plan line is checked.",
        bool,
        flag="--check-after/--no-check-after",
        request=True,
    ),
    Option(
        "check_weights",
        "adapted",
        "With --check-after: the weights that check the adapted answer (write its copies and weigh each "
        "change): the adapted ones, or the base model's, the LoRA set aside meanwhile (a checker that did not "
        "make the answer).",
        choices=("adapted", "base"),
        request=True,
    ),
    Option(
        "candidates",
        "name",
        "Candidate actions scored for uncertainty: tool names or whole calls.",
        choices=("name", "call"),
    ),
    Option(
        "norm",
        "sum",
        "Length normalisation of candidate log-likelihoods (sum measured better).",
        choices=("sum", "mean"),
    ),
    Option(
        "check_odds",
        0.1,
        "A self-check change (a value added, dropped or rewritten, another tool) is kept only "
        "when the base model finds the changed call at least this likely against the call before it; 0 keeps "
        "every change.",
        float,
        0.0,
        1.0,
        env=True,
        request=True,
    ),
    Option("max_calls", 1, "Most tool calls in one answer.", int, 1, 16),
    Option("max_tokens", 256, "Most tokens of a text answer (requests without tools).", int, 1, 4096),
    Option("temperature", 0.8, "Sampling temperature of a local TT-D teacher writing requests.", float, 0, 2),
    Option(
        "same_tool",
        True,
        "TT-D keeps only teacher examples that call the tool the model picks for the request.",
        bool,
        flag="--same-tool/--any-tool",
    ),
    Option(
        "seed",
        0,
        "Seed of the LoRA's initialisation, example order and sampling: the same seed gives the same answer.",
        int,
        0,
        2**32 - 1,
    ),
    Option(
        "epochs",
        5,
        "LoRA epochs over the K examples (the paper's 5; at lr 1e-3, see docs/results.md).",
        int,
        1,
        100,
        group="lora",
    ),
    Option(
        "learning_rate",
        1e-4,
        "LoRA learning rate: the paper's 1e-4 nudges the model toward calls-first examples without breaking what "
        "it got right (docs/results.md); twins of the self-label need 1e-3 to be said back.",
        float,
        1e-7,
        1.0,
        flag="--lr",
        group="lora",
    ),
    Option(
        "stop_loss",
        0.02,
        "Stop training after an epoch in which every example's loss was below this "
        "(the LoRA already says them back); 0: run every epoch.",
        float,
        0.0,
        10.0,
        group="lora",
    ),
    Option(
        "stop_said_back",
        True,
        "Also stop training after an epoch in which the LoRA said back every example: "
        "each answer token its argmax, teacher-forced (read off the step's own pass; docs/performance.md).",
        bool,
        flag="--stop-said-back/--no-stop-said-back",
        group="lora",
    ),
    Option(
        "batch_size",
        1,
        "Examples per LoRA training step (at most K): 1 = one at a time; 3 = the K examples in "
        "one padded step an epoch, 2x faster training on Qwen2.5-Coder-0.5B but too few steps for SmolLM2-135M "
        "(docs/performance.md).",
        int,
        1,
        16,
        group="lora",
    ),
    Option("rank", 8, "LoRA rank.", int, 1, 256, group="lora"),
    Option("alpha", 16.0, "LoRA alpha: scale = alpha / rank, as in the paper.", float, 0.0, 1024.0, group="lora"),
    Option(
        "layers",
        8,
        "LoRA on the top N transformer blocks (-1: all); 8 measured as good as all.",
        int,
        -1,
        1024,
        group="lora",
    ),
    Option(
        "precision",
        "auto",
        "Weights dtype: auto = float32 on CPU, the model's own on a GPU.",
        choices=PRECISIONS,
        env=True,
        group="load",
    ),
    Option("teacher_model", "gpt-5-mini", "Model name sent to a TT-D teacher URL.", env=True, group="load"),
    Option(
        "max_queue",
        16,
        "serve: requests that may wait for the model; more get 503 with Retry-After.",
        int,
        1,
        env=True,
        group="serve",
    ),
    Option(
        "parallel",
        4,
        "serve: up to this many waiting requests that never train (modes base, check, plan) are answered side "
        "by side, their forward passes batched (1: one at a time).",
        int,
        1,
        64,
        env=True,
        group="serve",
    ),
    Option(
        "memory_size", 32, "serve --memory: most adapters kept (least recently used dropped).", int, 1, group="serve"
    ),
    Option(
        "memory_similarity",
        0.95,
        "serve --memory: reuse an adapter when the request's embedding is at least this close (cosine).",
        float,
        -1,
        1,
        group="serve",
    ),
]
BY_NAME = {option.name: option for option in OPTIONS}
LORA_FIELDS = tuple(o.name for o in OPTIONS if o.group == "lora")


def default(name):
    return BY_NAME[name].default


def _checked(obj):
    for f in fields(obj):
        if f.name in BY_NAME:
            BY_NAME[f.name].check(getattr(obj, f.name))
    return obj


def from_table(group):
    """A class decorator: a dataclass whose first fields are the table's rows of `group`, with their defaults."""

    def make(cls):
        rows = [o for o in OPTIONS if o.group == group]
        cls.__annotations__ = {**{o.name: o.kind for o in rows}, **cls.__dict__.get("__annotations__", {})}
        for o in rows:
            setattr(cls, o.name, o.default)
        return dataclass(cls)

    return make


@from_table("lora")
class LoRASettings:
    warmup: float = 0.03  # fraction of steps, then cosine decay

    def check(self):
        return _checked(self)


@from_table("agent")
class Settings:
    lora: LoRASettings = field(default_factory=LoRASettings)

    @classmethod
    def from_options(cls, values):
        """Settings from a flat {option name: value} (the CLI's), LoRA fields included."""
        lora = LoRASettings(**{k: values.pop(k) for k in LORA_FIELDS if k in values})
        return cls(lora=lora, **values)

    def check(self):
        self.lora.check()
        return _checked(self)


def markdown_table():
    """The README's option table."""
    lines = ["| option | default | range | request may set | what it does |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        flag = o.cli_flag.split("/")[0]
        lines.append(f"| `{flag}` | {o.default} | {o.range_text} | {'yes' if o.request else ''} | {o.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
