"""Tool-call formats: where a model's calls go and how they are written, per chat-template family.

The family is mlx-lm's own reading of the chat template: the tool parser its TokenizerWrapper
picked at load time, or, for a template set after loading, mlx-lm's inference on the current one.
Llama 3.x templates, for which mlx-lm has no parser, are told by the answer format they ask for.
Templates that name no tool format (SmolLM2's) get the fallback prompt of prompts.py.

A call is written as: open + name_before + NAME + name_after + ARGUMENTS + close, calls joined by
the separator, between start and end. In JSON formats (Hermes/Qwen, Llama 3.x, Mistral) ARGUMENTS
is the JSON object plus the call object's closing brace, written by the schema-guided decoder.
In the others (pythonic, FunctionGemma, Gemma 4, Qwen3-Coder) the model writes it freely and
mlx-lm's parser reads the call back; `write_arguments` renders it for training examples.
"""

import importlib
import json
from dataclasses import dataclass
from typing import Callable

from .errors import CallError
from .tools import check_call, parse_calls

LLAMA3_JSON_HINT = '"parameters": dictionary of argument name'


def key_opening(key, first=False):
    """A JSON call's text before `key`'s value: `"key": `, after ", " but for the first key (as the
    schema-guided decoder writes it, and json.dumps)."""
    return ("" if first else ", ") + f'"{key}": '


@dataclass(frozen=True)
class CallFormat:
    """How a model writes tool calls (see the module's docstring)."""

    open: str = ""
    close: str = ""
    separator: str = "\n"
    native: bool = False  # the chat template renders the tools itself
    family: str = "fallback"
    start: str = ""
    end: str = ""
    name_before: str = '{"name": "'
    name_after: str = '", "arguments": '
    markers: tuple = ("", "")  # mlx-lm's tool_call_start and tool_call_end ("" end: to the end of the text)
    parser: Callable = None  # mlx-lm's parse_tool_call for the text between markers; None: JSON objects
    write_arguments: Callable = None  # non-JSON formats: arguments -> text up to `close`; None: JSON

    @property
    def guided(self):
        """Whether the schema-guided decoder writes the calls (the arguments are a JSON object)."""
        return self.write_arguments is None

    @property
    def name_prefix(self):
        """The answer's text before the first call's tool name."""
        return self.start + self.open + self.name_before

    def name_options(self, tools):
        """Each tool's name with the character that ends it: the options scored for the name."""
        return [tool.name + self.name_after[:1] for tool in tools]

    def head(self, name):
        """A call's text up to its arguments."""
        return self.open + self.name_before + name + self.name_after

    def open_key(self, name, arguments, key):
        """A JSON call's text up to `key`'s value, `arguments` written before it, exactly as the
        schema-guided decoder writes it (CallDecoder.write_arguments)."""
        written = (
            key_opening(k, i == 0) + json.dumps(v, ensure_ascii=False) for i, (k, v) in enumerate(arguments.items())
        )
        return self.head(name) + "{" + "".join(written) + key_opening(key, not arguments)

    def call_text(self, call):
        arguments = call.get("arguments", {})
        if self.guided:
            return self.head(call["name"]) + json.dumps(arguments, ensure_ascii=False) + "}" + self.close
        return self.head(call["name"]) + self.write_arguments(arguments) + self.close

    def calls_text(self, calls):
        """The assistant turn for a list of calls, exactly as the decoder writes it."""
        if not calls:
            return ""
        return self.start + self.separator.join(self.call_text(call) for call in calls) + self.end

    def written(self, calls):
        """The calls as the model writes them: `calls_text` without the wrapper the decoder writes
        around them (start and first open ... last close and end)."""
        text, lead, tail = self.calls_text(calls), self.start + self.open, self.close + self.end
        return text[len(lead) : len(text) - len(tail)]

    def lead(self, calls):
        """The answer's text before the next call's head, after these calls."""
        return self.start + "".join(self.call_text(call) + self.separator for call in calls)

    def read(self, text, tools):
        """The calls in a native answer, checked against the tools' schemas. CallError when the
        answer holds none, cannot be parsed, or a call breaks its tool's schema."""
        calls = parse_calls(text) if self.parser is None else self._parsed(text, tools)
        if not calls:
            raise CallError(f"the model's answer holds no {self.family} tool call")
        for call in calls:
            problem = check_call(call, tools)
            if problem:
                raise CallError(f"the model's {self.family} tool call {problem}")
        return calls

    def _parsed(self, text, tools):
        begin, finish = self.markers
        specs = [tool.as_openai() for tool in tools]
        calls, position = [], 0
        while (found := text.find(begin, position)) >= 0:
            inner_start = found + len(begin)
            stop = text.find(finish, inner_start) if finish else -1
            inner = text[inner_start : stop if stop >= 0 else len(text)]
            position = stop + len(finish) if stop >= 0 else len(text)
            try:
                parsed = self.parser(inner, specs)
            except Exception as error:  # mlx-lm's parsers raise ValueError, SyntaxError and others
                reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
                raise CallError(f"the model's {self.family} tool call cannot be read: {reason}") from None
            for call in parsed if isinstance(parsed, list) else [parsed]:
                if not isinstance(call, dict) or not isinstance(call.get("arguments", {}), dict):
                    raise CallError(f"the model's {self.family} tool call cannot be read")
                calls.append({"name": call.get("name"), "arguments": call.get("arguments", {})})
            if not begin:
                break
        return calls


# ---- arguments of the non-JSON formats, as each family's chat template renders them ----


def _python_value(value):
    if isinstance(value, bool) or value is None:
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # strings, numbers; containers in JSON (mlx-lm reads both)


def pythonic_arguments(arguments):
    return ", ".join(f"{key}={_python_value(value)}" for key, value in arguments.items()) + ")"


def function_gemma_arguments(arguments):
    def value(v):
        return f"<escape>{v}<escape>" if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    return ",".join(f"{key}:{value(v)}" for key, v in arguments.items()) + "}"


def _gemma4_value(value):
    if isinstance(value, str):
        return f'<|"|>{value}<|"|>'
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_gemma4_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_gemma4_value(v) for v in value) + "]"
    return json.dumps(value)


def gemma4_arguments(arguments):
    return _gemma4_value(arguments)[1:]


def qwen3_coder_arguments(arguments):
    def value(v):
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    return "".join(f"<parameter={key}>\n{value(v)}\n</parameter>\n" for key, v in arguments.items()) + "</function>"


def _family_format(family, template, module):
    markers = (module.tool_call_start, module.tool_call_end) if module else ("", "")
    common = {"native": True, "family": family, "markers": markers, "parser": module and module.parse_tool_call}
    if family == "json_tools":
        return CallFormat(open="<tool_call>\n", close="\n</tool_call>", separator="\n", **common)
    if family == "llama3_json":
        return CallFormat(name_after='", "parameters": ', separator="\n", **common)
    if family == "mistral" and "[ARGS]" not in template:  # the JSON-list flavour; [ARGS] headers are not covered
        start = "[TOOL_CALLS] [" if "[TOOL_CALLS] [" in template else "[TOOL_CALLS]["
        return CallFormat(start=start, separator=", ", end="]", **common)
    if family == "pythonic":
        return CallFormat(
            start=markers[0] + "[",
            name_before="",
            name_after="(",
            separator=", ",
            end="]" + markers[1],
            write_arguments=pythonic_arguments,
            **common,
        )
    if family in ("function_gemma", "gemma4"):  # the same wrapper; each writes its arguments its own way
        return CallFormat(
            open=markers[0],
            name_before="call:",
            name_after="{",
            close=markers[1],
            separator="",
            write_arguments=function_gemma_arguments if family == "function_gemma" else gemma4_arguments,
            **common,
        )
    if family == "qwen3_coder":
        return CallFormat(
            open=markers[0] + "\n",
            name_before="<function=",
            name_after=">\n",
            close="\n" + markers[1],
            separator="\n",
            write_arguments=qwen3_coder_arguments,
            **common,
        )
    return None


FAMILIES = ("json_tools", "llama3_json", "mistral", "pythonic", "function_gemma", "gemma4", "qwen3_coder")


def parser_family(tokenizer):
    """The name of mlx-lm's tool parser for this tokenizer's chat template, or None."""
    parser = getattr(tokenizer, "tool_parser", None)
    if parser is not None:
        return parser.__module__.rsplit(".", 1)[-1]
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not hasattr(tokenizer, "get_vocab"):
        return None
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    family = _infer_tool_parser(tokenizer)
    if family is None and LLAMA3_JSON_HINT in template:
        return "llama3_json"
    return family


def call_format(tokenizer):
    """The tokenizer's call format: its template's native one when covered, else the fallback."""
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else ""
    family = parser_family(tokenizer)
    if family not in FAMILIES:
        return CallFormat()
    module = importlib.import_module(f"mlx_lm.tool_parsers.{family}") if family != "llama3_json" else None
    return _family_format(family, template, module) or CallFormat()
