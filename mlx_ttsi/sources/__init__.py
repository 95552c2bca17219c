"""Where TT-SI's training examples come from: one module per source, each with three names.

    NAME       the setting that picks it (`--examples-from NAME`)
    HELP       one line on what it writes
    synthesize(job) -> Synthesis   the examples written for one request (job: `Job`)

Adding a source is one new module listed in SOURCES; the agent never changes for it. Every source
gets the same `Job`: the user's request, its tools, the tools to write examples for, the values of
the user's request (which no example may contain), a batched writer over the tools prefix, and the
--keep filter for examples that may teach nothing new.
"""

from dataclasses import dataclass

from . import calls, paper, requests, teacher, twins

# teacher is TT-D's (--mode ttd); the others are named by --examples-from
SOURCES = {module.NAME: module for module in (calls, requests, twins, paper, teacher)}


@dataclass
class Job:
    """What a source gets for one request."""

    original: str  # the user's request (its last user message)
    tools: list  # the offered tools (tools.Tool)
    tool_names: list  # the tools to write examples for: the model's choice, then the runner-up when unsure
    values: list  # the user's request's values, as its answer reads them: no example may contain one
    k: int  # verified examples wanted
    seed: int
    temperature: float  # of the sampled calls and requests
    writer: object  # writer.BatchWriter over the tools prefix
    prompt: object  # (user text) -> the prompt text with the tools, ending where the answer begins
    fmt: object  # the model's call format (formats.CallFormat)
    label: object = None  # (request text) -> the model's own calls for it (schema-guided)
    conversation: list = None  # the user's messages, normalised (prompts.normalize_messages)
    self_label: list = None  # the model's checked answer to the user's request (self_check.py)
    keep: object = None  # (Synthesis) -> the examples worth training on (--keep: informative, anchored ...)
    model: object = None  # the LoadedModel (sources that write with synthesis.ModelWriter)
    new_state: object = None  # () -> a fresh ContextState over the tools prefix
    decoder_options: dict = None  # CallDecoder's options from the request's settings
    cancelled: object = None  # () -> bool: the client gave up
    teacher: object = None  # () -> TT-D's teacher (synthesis.ModelWriter or EndpointTeacher)
    same_tool: str = None  # TT-D keeps only examples that call this tool (--same-tool), or None
