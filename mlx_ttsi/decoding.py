"""Schema-guided decoding of tool calls.

The structure of a call is never left to chance: the tool name, which argument comes next, booleans
and enum values are chosen by scoring the allowed options; only free values (strings, numbers,
arrays) are generated token by token, greedily, within their type's characters. The result always
parses and names an offered tool; required arguments are always present. A value copied from the
request is read off prompt-lookup drafts (ContextState.push): fewer passes, the same answer.

Formats whose arguments are not JSON (formats.py: pythonic, Gemma...) are written by the model
after the chosen tool name, greedily, and read back with mlx-lm's parser and the schema; an answer
that does not read gives no calls and says why (`Decoded.error`).
"""

import json
import math
import re
import weakref
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import make_sampler

from .errors import CallError
from .formats import key_opening
from .prompts import end_of_turn
from .uncertainty import margin, relative_softmax

MAX_STRING_TOKENS = 48
MAX_VALUE_TOKENS = 64
MAX_CALL_TOKENS = 192  # a freely written call (non-JSON formats)
# Free values are written with prompt-lookup drafts of this many tokens (ContextState.push): a value
# copied from the request is read off one pass instead of one pass per token.
LOOKAHEAD = 8
_NUMBER_CHARS = re.compile(r"^ ?[0-9.\-]+$")


class Vocabulary:
    """Per-tokenizer token tables the decoder needs: text of every token and a few masks."""

    _cache = weakref.WeakKeyDictionary()  # tokenizer -> its Vocabulary, dropped with the tokenizer

    def __init__(self, tokenizer):
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        size = max(len(hf), max(hf.added_tokens_decoder, default=0) + 1)
        self.pieces = hf.batch_decode([[i] for i in range(size)])
        special = np.zeros(size, dtype=bool)
        special[list(hf.added_tokens_decoder)] = True
        special[[i for i in tokenizer.eos_token_ids if i < size]] = True
        self.special = special
        self.numeric = np.array([bool(_NUMBER_CHARS.match(p)) for p in self.pieces])
        self.single_chars = {}  # a character -> the token that is just it (grammar.py's forced steps)
        for i, p in enumerate(self.pieces):
            if len(p) == 1 and not special[i]:
                self.single_chars.setdefault(p, i)
        self.closing_quotes = np.array([i for i, p in enumerate(self.pieces) if p.startswith('"') and not special[i]])
        self._pieces_in = {}  # source text -> pieces_in(source)

    def pieces_in(self, source):
        """Ids of the ordinary tokens whose text (leading spaces aside) occurs in `source`.

        A request's self-check copies from the same text several times: the last few are kept."""
        if source not in self._pieces_in:
            if len(self._pieces_in) >= 8:
                self._pieces_in.pop(next(iter(self._pieces_in)))
            self._pieces_in[source] = [
                i for i, p in enumerate(self.pieces) if p.strip() and not self.special[i] and p.lstrip() in source
            ]
        return self._pieces_in[source]

    @classmethod
    def of(cls, tokenizer):
        vocabulary = cls._cache.get(tokenizer)
        if vocabulary is None:
            vocabulary = cls._cache[tokenizer] = cls(tokenizer)
        return vocabulary


def _masked_argmax(logprobs, allowed):
    values = np.array(logprobs.astype(mx.float32))[: len(allowed)]
    values[~allowed] = -np.inf
    return int(values.argmax())


@dataclass
class Choice:
    options: list
    logprobs: list  # summed log-prob per option
    lengths: list  # tokens per option
    index: int
    kind: str = "argument"  # "name" (which tool), "argument" (keys, enums, booleans) or "calls" (one more?)

    @property
    def chosen(self):
        return self.options[self.index]


@dataclass
class Decoded:
    calls: list
    text: str  # assistant text, in the model's call format
    choices: list = field(default_factory=list)
    error: str = None  # why a freely written answer gave no calls (non-JSON formats)


def normalized(logprobs, lengths, norm):
    if norm == "mean":
        return [lp / n for lp, n in zip(logprobs, lengths)]
    if norm == "sum":
        return list(logprobs)
    raise ValueError(f"unknown length normalisation {norm!r} (sum or mean)")


class CallDecoder:
    """Writes calls into its context, keeping the text so far and the choices it made."""

    def __init__(self, state, fmt, name_norm="sum", key_norm="sum", max_calls=1, lookahead=LOOKAHEAD):
        self.state = state
        self.lookahead = lookahead  # prompt-lookup draft size while free values are written (0: none)
        self.fmt = fmt
        self.name_norm = name_norm
        self.key_norm = key_norm
        self.max_calls = max_calls
        self.vocab = Vocabulary.of(state.tokenizer)
        self.text = ""
        self.choices = []
        self.on_piece = None  # (kind, text) while an answer is streamed: "call" (a tool name), "arguments"
        self._in_arguments = False
        self.guess = None  # the text the next answer is guessed to be (see draft)

    def _start(self, text, on_piece=None):
        self.text, self.choices, self.on_piece = text, [], on_piece

    def draft(self, prompt, text):
        """Guess that the next answer after `prompt` is `text` (e.g. the label a LoRA was just trained
        to say): the rest of the guess is run through the model in one pass before each value, and
        decoding takes each token it agrees with for free, so the answer is what decoding alone
        would write."""
        self.guess = prompt + text
        self._start(prompt)
        context, ids = self.state.encode(prompt), self.state.encode(prompt + text)
        if ids[: len(context)] == context:  # the prompt's rest and the guess in one pass
            self.state.draft(ids[len(context) :], context=context)
        else:
            self._sync()

    # -- primitives -------------------------------------------------------------------------
    def score(self, options, settle=False):
        """Summed log-prob and token count of each option text after self.text (one pass). With
        `settle`, a draft that settles the choice answers instead (ContextState.score_on_draft: the
        other options then get upper bounds of their log-probs, and no pass is run)."""
        encoded = [self.state.encode(self.text + option) for option in options]
        shared = min(len(ids) - 1 for ids in encoded)
        for ids in encoded[1:]:
            shared = min(shared, _common(encoded[0], ids))
        continuations = [ids[shared:] for ids in encoded]
        if settle and self.guess:  # the draft is read where the context has grown along it
            self.state.sync(encoded[0][:shared])
            settled = self.state.score_on_draft(continuations)
            if settled:
                return settled
        return self.state.score_continuations(continuations, context=encoded[0][:shared])

    def choose(self, options, norm, kind="argument"):
        logprobs, lengths = self.score(options, settle=norm == "sum")  # bounds order sums, not means
        scores = normalized(logprobs, lengths, norm)
        choice = Choice(list(options), logprobs, lengths, int(np.argmax(scores)), kind)
        self.choices.append(choice)
        self.emit(choice.chosen)
        return choice

    def emit(self, text):
        self.text += text
        if self._in_arguments and self.on_piece:
            self.on_piece("arguments", text)

    def score_after(self, text, options):
        """Summed log-prob and token count of each option text right after `text`."""
        self._start(text)
        return self.score(options)

    def _sync(self):
        self.state.set_text(self.text)
        guess = self.guess
        if guess and len(guess) > len(self.text) and guess.startswith(self.text) and not self.state.drafting():
            self.state.draft(self.state.encode(guess[len(self.text) :]))

    # -- values -----------------------------------------------------------------------------
    def write_string(self, within=None):
        """A free string value, greedily. With `within` (a text), writing stops as soon as the value
        is no longer a piece of that text: a probe for a value the user stated, cheap when there is none."""
        self.emit('"')
        self._sync()
        generated = []
        raw = ""
        for _ in range(MAX_STRING_TOKENS):
            token = _masked_argmax(self.state.logprobs, ~self.vocab.special)
            generated.append(token)
            raw = self.state.tokenizer.decode(generated)
            end = _string_end(raw)
            if end is not None or "\n" in raw:
                raw = raw[: end if end is not None else raw.index("\n")]
                break
            if within is not None and raw.strip().lower() not in within.lower():
                break
            self.state.push(token, self.lookahead)
        try:
            value = json.loads('"' + raw + '"')
        except json.JSONDecodeError:
            value = raw.replace('\\"', '"')
        self.emit(json.dumps(value, ensure_ascii=False)[1:])
        return value

    def write_copied_string(self, source):
        """A string value that is a piece of `source` (the user's words), chosen greedily token by token.

        Only tokens that keep the value a substring of `source` may be written; the value ends when
        a closing quote is likelier than every such token."""
        self.emit('"')
        self._sync()
        pieces, allowed = self.vocab.pieces, self.vocab.pieces_in(source)
        closing = self.vocab.closing_quotes
        value = ""
        for _ in range(MAX_STRING_TOKENS):
            logprobs = np.array(self.state.logprobs.astype(mx.float32))
            fits = [t for t in allowed if (value + pieces[t]).lstrip() in source]
            best = max(fits, key=lambda t: logprobs[t], default=None)
            if best is None or (value.strip() and logprobs[closing].max() > logprobs[best]):
                break
            value += pieces[best]
            self.state.push(best, self.lookahead)
        value = value.strip()
        self.emit(json.dumps(value, ensure_ascii=False)[1:])
        return value

    def value_after(self, text, schema, copy_from=None, within=None):
        """The value the model writes right after `text` (which ends with `"key": `).

        With `copy_from`, a string value is copied from that text (`write_copied_string`); with
        `within`, a free string value stops early once it leaves that text (`write_string`)."""
        self._start(text)
        if copy_from is not None:
            return self.write_copied_string(copy_from)
        return self.write_value(schema, within)

    def write_number(self, integer):
        self._sync()
        generated, text = [], ""
        for _ in range(24):
            token = _masked_argmax(self.state.logprobs, ~self.vocab.special)
            if not self.vocab.numeric[token]:
                if _parse_number(text, integer) is not None:
                    break
                token = _masked_argmax(self.state.logprobs, self.vocab.numeric)
            generated.append(token)
            text = self.state.tokenizer.decode(generated).strip()
            self.state.push(token, self.lookahead)
        value = _parse_number(text, integer)
        if value is None:
            value = 0
        self.emit(json.dumps(value))
        return value

    def write_json(self, fallback):
        """A free JSON value (arrays, objects, untyped), generated until it parses."""
        self._sync()
        generated = []
        decoder = json.JSONDecoder()
        for _ in range(MAX_VALUE_TOKENS):
            token = _masked_argmax(self.state.logprobs, ~self.vocab.special)
            generated.append(token)
            raw = self.state.tokenizer.decode(generated).lstrip()
            try:
                value, end = decoder.raw_decode(raw)
                if raw[end:].strip()[:1] in (",", "}", "\n") or end < len(raw.rstrip()):
                    break
            except json.JSONDecodeError:
                pass
            if "\n" in raw:
                value = fallback
                break
            self.state.push(token, self.lookahead)
        else:
            value = fallback
        self.emit(json.dumps(value, ensure_ascii=False))
        return value

    def write_value(self, schema, within=None):
        schema = schema if isinstance(schema, dict) else {}
        options = schema.get("enum")
        if isinstance(options, list) and options:
            choice = self.choose([json.dumps(v, ensure_ascii=False) for v in options], "sum")
            return options[choice.index]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if kind == "string":
            return self.write_string(within)
        if kind in ("number", "integer"):
            return self.write_number(kind == "integer")
        if kind == "boolean":
            return self.choose(["true", "false"], "sum").chosen == "true"
        if kind == "null":
            self.emit("null")
            return None
        return self.write_json([] if kind == "array" else {} if kind == "object" else None)

    def write_arguments(self, tool):
        """The arguments object, one key at a time.

        Before the first key, whether to write any argument is one choice (the probability of
        closing against that of opening a key); after it, closing competes with each next key
        (measured on SealTool: writing further optional arguments is mostly wrong)."""
        self.emit("{")
        arguments = {}
        properties = tool.properties
        remaining = list(properties)
        required = set(tool.required)
        while remaining:
            can_close = required.issubset(arguments)
            if not arguments and can_close:
                if self.choose(["}", '"'], "sum").index == 0:
                    return arguments
                options = [key_opening(key, first=True)[1:] for key in remaining]
            elif not arguments:
                self.emit('"')
                options = [key_opening(key, first=True)[1:] for key in remaining]
            else:
                options = [key_opening(key) for key in remaining] + (["}"] if can_close else [])
            choice = self.choose(options, self.key_norm)
            if choice.chosen == "}":
                return arguments
            key = remaining.pop(choice.index)
            arguments[key] = self.write_value(properties[key])
        self.emit("}")
        return arguments

    # -- calls ------------------------------------------------------------------------------
    def write_name(self, tools, name_choice=None):
        """The tool name, scored among the offered ones (or the given choice), and what follows it."""
        fmt = self.fmt
        if name_choice is None:
            name_choice = self.choose(fmt.name_options(tools), self.name_norm, "name")
        else:
            self.choices.append(name_choice)
            self.emit(name_choice.chosen)
        tool = tools[name_choice.index]
        if self.on_piece:
            self.on_piece("call", tool.name)
        self.emit(fmt.name_after[1:])
        return tool

    def write_call(self, tools, name_choice=None):
        self.emit(self.fmt.open + self.fmt.name_before)
        tool = self.write_name(tools, name_choice)
        self._in_arguments = True
        try:
            arguments = self.write_arguments(tool)
        finally:
            self._in_arguments = False
        self.emit("}" + self.fmt.close)
        return {"name": tool.name, "arguments": arguments}

    def decode(self, prompt, tools, name_choice=None, on_piece=None):
        """Write up to max_calls calls after `prompt`; returns the calls and the answer text.

        `on_piece(kind, text)` hears each call's tool name and its arguments' JSON in pieces, as written
        (in formats the decoder does not write, each call once the answer is read)."""
        self._start(prompt, on_piece)
        try:
            return self._decode(prompt, tools, name_choice)
        finally:
            self.guess = None

    def _decode(self, prompt, tools, name_choice):
        fmt = self.fmt
        if not fmt.guided:
            return self.generate_calls(prompt, tools, name_choice)
        self.emit(fmt.start)
        calls = [self.write_call(tools, name_choice)]
        stop = end_of_turn(self.state.tokenizer)
        while len(calls) < self.max_calls and stop:
            more = self.choose([fmt.end + stop, fmt.separator + fmt.open + fmt.name_before], "sum", "calls")
            self.text = self.text[: -len(more.chosen)]
            if more.index == 0:
                break
            self.emit(fmt.separator)
            calls.append(self.write_call(tools))
        self.emit(fmt.end)
        return Decoded(calls, self.text[len(prompt) :], list(self.choices))

    def generate_calls(self, prompt, tools, name_choice=None):
        """A non-JSON format: the name is chosen as in JSON formats, the model writes the rest
        greedily (until the format's end marker or end of turn) and mlx-lm's parser reads it."""
        fmt, on_piece = self.fmt, self.on_piece
        self.on_piece = None  # the calls are told once they read
        self.emit(fmt.name_prefix)
        self.write_name(tools, name_choice)
        self.on_piece = on_piece
        self._sync()
        finish = fmt.markers[1]
        written = self.state.sample(make_sampler(temp=0.0), MAX_CALL_TOKENS, stop=finish)  # greedy
        if finish and finish in written:
            written = written[: written.index(finish) + len(finish)]
        self.emit(written)
        text = self.text[len(prompt) :]
        try:
            calls = fmt.read(text, tools)[: self.max_calls]
        except CallError as error:
            return Decoded([], text, list(self.choices), str(error))
        for call in calls if on_piece else []:
            on_piece("call", call["name"])
            on_piece("arguments", json.dumps(call["arguments"], ensure_ascii=False))
        return Decoded(calls, text, list(self.choices))

    def name_choice(self, prompt, tools):
        """Every offered tool name scored where the format puts it: the candidates for
        self-awareness, and the choice to answer with. Returns (choice, normalised scores)."""
        options = self.fmt.name_options(tools)
        logprobs, lengths = self.score_after(prompt + self.fmt.name_prefix, options)
        scores = normalized(logprobs, lengths, self.name_norm)
        return Choice(options, logprobs, lengths, int(np.argmax(scores)), "name"), scores


def argument_margin(choices):
    """The smallest relative-softmax margin among a decode's argument choices (1.0 when it made none)."""
    margins = [margin(relative_softmax(c.logprobs)) for c in choices if c.kind == "argument" and len(c.options) > 1]
    return min(margins, default=1.0)


def _common(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _string_end(raw):
    """Index of the first unescaped double quote in raw, or None."""
    escaped = False
    for index, char in enumerate(raw):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index
    return None


def _parse_number(text, integer):
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if integer or (value.is_integer() and re.fullmatch(r"-?\d+", text)):
        return int(value) if value.is_integer() or integer else value
    return value


__all__ = ["CallDecoder", "Decoded", "Choice", "Vocabulary", "relative_softmax"]
