"""Sampled tool arguments kept inside the tool's schema, one token at a time.

The examples' calls (sources/calls.py) are sampled side by side by writer.BatchWriter, not decoded
by decoding.CallDecoder, so nothing kept them well-formed: a call could break its schema, offer an
argument its tool lacks, or run out of tokens before it closed. `arguments_start` reads an
arguments object as a pushdown automaton over its characters (the planned keys in order, each
value by its schema: a string, an enum's word, a number, a boolean, an array, an object), and
`ArgumentsProcessor`, an mlx-lm logits processor, lets a step take only the tokens whose text keeps
the object a valid start: those of the TOP_K likeliest that fit, else one character that does; and
when no more tokens are left than the object needs to close, it writes the shortest close
(`completion`), so that every call it writes parses.

A stack is a tuple of frames, the top last; the empty stack is a closed object.
"""

import json

import mlx.core as mx

TOP_K = 32  # the likeliest tokens tried at each step
MAX_STRING_CHARS = 80  # a longer string value must close
MAX_DIGITS = 12
MAX_DEPTH = 3  # arrays and objects nested in a value
_FALLBACK = '"}],0tn{[: '  # characters tried, after the frame's own, when no likely token fits
_REFEED = "refeed"  # a number ends at a character that belongs to what follows it


def arguments_start(properties, keys):
    """The stack for the object `{"k1": v1, "k2": v2}` of these keys, in order, each value by its
    property's schema (an untyped or unknown property takes any JSON value)."""
    frames = [("lit", "{")]
    for index, key in enumerate(keys):
        if index:
            frames += [("lit", ","), ("sp",)]
        schema = properties.get(key)
        frames += [("lit", json.dumps(key, ensure_ascii=False) + ":"), ("sp",), ("val", schema, 0)]
    frames.append(("lit", "}"))
    return tuple(reversed(frames))


def advance(stack, text):
    """The stack after `text`, or None where the text cannot continue the object. Once the object
    is closed, any text is taken (the writer's stop rule cuts it there)."""
    for char in text:
        if not stack:
            return stack
        stack = _step(stack, char)
        if stack is None:
            return None
    return stack


def completion(stack):
    """The shortest text that closes the object from here ('"}' inside its last string value)."""
    return "".join(_CLOSING[frame[0]](frame) for frame in reversed(stack))


def _minimal(schema):
    """The shortest value of a schema."""
    schema = schema if isinstance(schema, dict) else {}
    words, kinds = _words(schema), _kinds(schema)
    if words:
        return '"' + words[0] + '"'
    for kind, text in (("string", '""'), ("integer", "0"), ("number", "0"), ("boolean", "true"), ("array", "[]")):
        if kind in kinds:
            return text
    return "{}" if "object" in kinds else "null"


def _closing_string(frame):
    _, written, words = frame
    rest = next((word[len(written) :] for word in words if word.startswith(written)), "") if words else ""
    return rest + '"'


_CLOSING = {
    "lit": lambda frame: frame[1],
    "sp": lambda frame: "",
    "str": _closing_string,
    "num": lambda frame: "0" if frame[2] in ("start", "sign", "dot") else "",
    "val": lambda frame: _minimal(frame[1]),
    "arr": lambda frame: (_minimal(frame[1]) if frame[2] == "next" else "") + "]",
    "obj": lambda frame: {"colon": ": null}", "key": '"_": null}'}.get(frame[1], "}"),
}


def _step(stack, char):
    while stack:
        top, rest = stack[-1], stack[:-1]
        kind = top[0]
        if kind == "sp":  # an optional space
            if char == " ":
                return rest
            stack = rest
            continue
        if kind == "num":
            result = _number(top, char)
            if result == _REFEED:
                stack = rest
                continue
            return None if result is None else rest + result
        handled = _STEPS[kind](top, char)
        return None if handled is None else rest + handled
    return stack


def _literal(top, char):
    text = top[1]
    if char != text[0]:
        return None
    return (("lit", text[1:]),) if len(text) > 1 else ()


def _string(top, char):
    _, written, words = top
    if char == '"':
        return () if words is None or written in words else None
    if char == "\\" or char < " " or len(written) >= MAX_STRING_CHARS:
        return None
    written += char
    if words is not None and not any(word.startswith(written) for word in words):
        return None
    return (("str", written, words),)


def _number(top, char):
    _, integer, stage, digits = top
    if char.isdigit() and stage != "zero" and digits < MAX_DIGITS:
        following = {"dot": "frac", "frac": "frac"}.get(
            stage, "zero" if char == "0" and stage in ("start", "sign") else "int"
        )
        return (("num", integer, following, digits + 1),)
    if char == "-" and stage == "start":
        return (("num", integer, "sign", digits),)
    if char == "." and stage in ("int", "zero") and not integer:
        return (("num", integer, "dot", digits),)
    return _REFEED if stage in ("int", "zero", "frac") else None


def _value(top, char):
    _, schema, depth = top
    return _opened(schema, char, depth)


def _opened(schema, char, depth):
    """The frames of a value of `schema` that begins with `char`, or None."""
    schema = schema if isinstance(schema, dict) else {}
    kinds = _kinds(schema)
    words = _words(schema)

    def allows(kind):
        return not kinds or kind in kinds

    if char == '"' and (allows("string") or words):
        return (("str", "", words),)
    if words is not None:  # an enum of words: nothing but one of them
        return None
    if (char.isdigit() or char == "-") and (allows("number") or allows("integer")):
        integer = bool(kinds) and "number" not in kinds
        return _number(("num", integer, "start", 0), char)
    for word, kind in (("true", "boolean"), ("false", "boolean"), ("null", "null")):
        if char == word[0] and allows(kind):
            return (("lit", word[1:]),)
    if char == "[" and allows("array") and depth < MAX_DEPTH:
        return (("arr", schema.get("items"), "first", depth + 1),)
    if char == "{" and allows("object") and depth < MAX_DEPTH:
        return (("obj", "first", depth + 1),)
    return None


def _array(top, char):
    _, items, stage, depth = top
    if char == "]" and stage != "next":
        return ()
    if stage == "after":
        return (("arr", items, "next", depth), ("sp",)) if char == "," else None
    opened = _opened(items, char, depth)
    return None if opened is None else (("arr", items, "after", depth),) + opened


def _object(top, char):
    """An object inside a value: any keys, any values."""
    _, stage, depth = top
    if char == "}" and stage in ("first", "after"):
        return ()
    if char == '"' and stage in ("first", "key"):
        return (("obj", "colon", depth), ("str", "", None))
    if char == ":" and stage == "colon":
        return (("obj", "after", depth), ("val", None, depth), ("sp",))
    if char == "," and stage == "after":
        return (("obj", "key", depth), ("sp",))
    return None


_STEPS = {"lit": _literal, "str": _string, "val": _value, "arr": _array, "obj": _object}


def _kinds(schema):
    kind = schema.get("type")
    return {k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str)}


def _words(schema):
    """An enum's words, when every option is a string; else None (the value is not held to them)."""
    options = schema.get("enum")
    if isinstance(options, list) and options and all(isinstance(option, str) for option in options):
        return tuple(options)
    return None


def _next_chars(stack):
    """Characters that may come next, the frame's own first (a literal's, an enum word's)."""
    top = stack[-1]
    own = ""
    if top[0] == "lit":
        own = top[1][0]
    elif top[0] == "str" and top[2] is not None:
        own = "".join(word[len(top[1])] for word in top[2] if word.startswith(top[1]) and len(word) > len(top[1]))
    elif top[0] == "val":
        words = _words(top[1] if isinstance(top[1], dict) else {})
        own = '"' if words else ""
    return own + _FALLBACK


class ArgumentsProcessor:
    """An mlx-lm logits processor (`processor(tokens, logits) -> logits`) for one sequence that
    writes an arguments object: every token it leaves possible keeps the object valid.

    `stack` is where the object stands when the prompt ends (arguments_start advanced over the text
    the prompt already holds, such as '{"'); `vocabulary` is decoding.Vocabulary; `max_tokens` is the
    sequence's budget (the writer's), within which the object is closed."""

    def __init__(self, stack, vocabulary, max_tokens):
        self.stack = stack
        self.pieces = vocabulary.pieces
        self.special = vocabulary.special
        self.chars = vocabulary.single_chars
        self.left = max_tokens  # tokens this sequence may still write, this step's included
        self.started = False
        self.forced = 0  # steps where one character was forced (no likely token fitted, or closing)

    def __call__(self, tokens, logits):
        if self.started and self.stack:  # the last token is the one written at the previous step
            self.stack = advance(self.stack, self._piece(int(tokens[-1].item())) or "")
            self.left -= 1
        self.started = True
        if not self.stack:  # closed (or, never expected, broken): the stop rule ends it
            return logits
        closing = completion(self.stack)
        if self.left <= len(closing):
            allowed = self._forced(closing[0])
        else:
            allowed = self._fitting(logits) or self._forced(_next_chars(self.stack))
        if not allowed:  # no token of the vocabulary is one such character: the step is left free
            return logits
        keep = mx.array(allowed)
        masked = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
        masked[:, keep] = logits[:, keep]
        return masked

    def _piece(self, token):
        return self.pieces[token] if token < len(self.pieces) and not self.special[token] else None

    def _fitting(self, logits):
        """Of the TOP_K likeliest tokens, those whose text continues the object and leaves it
        closable within the budget."""
        k = min(TOP_K, logits.shape[-1] - 1)
        likeliest = mx.argpartition(-logits[0], k)[:k].tolist()
        fitting = []
        for token in likeliest:
            piece = self._piece(token)
            after = advance(self.stack, piece) if piece else None
            if after is not None and len(completion(after)) < self.left:
                fitting.append(token)
        return fitting

    def _forced(self, chars):
        """The token of the first of `chars` that continues the object ([] when none is a token)."""
        self.forced += 1
        for char in chars:
            token = self.chars.get(char)
            if token is not None and advance(self.stack, char) is not None:
                return [token]
        return []
