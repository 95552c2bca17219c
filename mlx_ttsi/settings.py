"""Every setting a user can give: its default, range and help, in one table.

The CLI's options, the server's request checks, `Settings`/`LoRASettings` and the README's option
table (`python -m mlx_ttsi.settings`) are all made from OPTIONS.
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
                raise TTSIError(f"{label} must be between {self.range_text.replace(' .. ', ' and ')}")
            return self.kind(value)
        return value


OPTIONS = [
    Option("mode", "auto", "auto: adapt only when uncertain; ttsi/ttd/ticl: always use that method; base: never; "
           "check: answer with the self-checked answer, without training; plan: brief reasoning (a 'Function: "
           "name / key arguments' line, then the call), never adapts.",
           choices=MODES, env=True, request=True),
    Option("threshold", 0.5, "Uncertain when u = min(name margin, argument margin) is below this (tau); u = 0 "
           "when the self-label disagrees.", float, 0, 1, env=True, request=True),
    Option("examples", 3, "Examples per adapted request (K): the request with its self-label and K-1 twins.",
           int, 1, 16, short="-k", env=True, request=True),
    Option("candidates", "name", "Candidate actions scored for uncertainty: tool names or whole calls.",
           choices=("name", "call")),
    Option("norm", "sum", "Length normalisation of candidate log-likelihoods (sum measured better).",
           choices=("sum", "mean")),
    Option("check_odds", 0.1, "A self-check change (a value added, dropped or rewritten, another tool) is kept only "
           "when the base model finds the changed call at least this likely against the call before it; 0 keeps "
           "every change.", float, 0.0, 1.0, env=True, request=True),
    Option("max_calls", 1, "Most tool calls in one answer.", int, 1, 16),
    Option("max_tokens", 256, "Most tokens of a text answer (requests without tools).", int, 1, 4096),
    Option("temperature", 0.8, "Sampling temperature of a local TT-D teacher writing requests.", float, 0, 2),
    Option("same_tool", True, "TT-D keeps only teacher examples that call the tool the model picks for the request.",
           bool, flag="--same-tool/--any-tool"),
    Option("seed", 0, "Seed of the LoRA's initialisation, example order and sampling: the same seed gives the "
           "same answer.", int, 0, 2**32 - 1),
    Option("epochs", 5, "LoRA epochs over the K examples (the paper's 5; at lr 1e-3, see docs/results.md).",
           int, 1, 100),
    Option("learning_rate", 1e-3, "LoRA learning rate (the paper's 1e-4 teaches this model nothing).",
           float, 1e-7, 1.0, flag="--lr"),
    Option("stop_loss", 0.02, "Stop training after an epoch in which every example's loss was below this "
           "(the LoRA already says them back); 0: run every epoch.", float, 0.0, 10.0),
    Option("rank", 8, "LoRA rank.", int, 1, 256),
    Option("alpha", 16.0, "LoRA alpha: scale = alpha / rank, as in the paper.", float, 0.0, 1024.0),
    Option("layers", 8, "LoRA on the top N transformer blocks (-1: all); 8 measured as good as all.", int, -1, 1024),
]
BY_NAME = {option.name: option for option in OPTIONS}
LORA_FIELDS = ("rank", "alpha", "epochs", "learning_rate", "stop_loss", "layers")


def default(name):
    return BY_NAME[name].default


def _checked(obj):
    for f in fields(obj):
        if f.name in BY_NAME:
            BY_NAME[f.name].check(getattr(obj, f.name))
    return obj


@dataclass
class LoRASettings:
    rank: int = default("rank")
    alpha: float = default("alpha")
    epochs: int = default("epochs")
    learning_rate: float = default("learning_rate")
    stop_loss: float = default("stop_loss")
    layers: int = default("layers")
    warmup: float = 0.03  # fraction of steps, then cosine decay
    batch_size: int = 1

    def check(self):
        if self.batch_size < 1:
            raise TTSIError("batch size must be positive")
        return _checked(self)


@dataclass
class Settings:
    mode: str = default("mode")
    threshold: float = default("threshold")
    examples: int = default("examples")
    candidates: str = default("candidates")
    norm: str = default("norm")
    check_odds: float = default("check_odds")
    max_calls: int = default("max_calls")
    max_tokens: int = default("max_tokens")
    temperature: float = default("temperature")
    same_tool: bool = default("same_tool")
    seed: int = default("seed")
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
