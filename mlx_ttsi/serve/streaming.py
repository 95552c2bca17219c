"""A streamed answer as server-sent events: progress comments, OpenAI chunks, the finish and [DONE]."""

import json
import time
import uuid

PIECE = 16  # characters per replayed delta (an answer the agent did not stream)
WORDS = ("gate", "note", "first")  # progress reports that are words about the request, not timed phases


class Stream:
    """One streamed answer as SSE text: a comment per phase as it ends, then OpenAI chunks made from
    the answer's pieces as they are decoded, the finish chunk, usage, and [DONE]."""

    def __init__(self, model, usage_chunk=False):
        self.base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.usage_chunk = usage_chunk
        self.began = False  # the role delta is sent
        self.call = -1  # index of the tool call being streamed
        self.text = Trim()

    def event(self, kind, payload):
        """The SSE lines for one event from the model thread."""
        if kind == "progress":
            return [progress_comment(*payload)]
        kind, text = payload
        lines = [] if self.began else [self._data({"role": "assistant", "content": "" if kind == "content" else None})]
        self.began = True
        if kind == "content":
            text = self.text.piece(text)
            return lines + ([self._data({"content": text})] if text else [])
        if kind == "call":
            self.call += 1
            return lines + [
                self._data(
                    {
                        "tool_calls": [
                            {
                                "index": self.call,
                                "id": f"call_{uuid.uuid4().hex[:24]}",
                                "type": "function",
                                "function": {"name": text, "arguments": ""},
                            }
                        ]
                    }
                )
            ]
        return lines + [self._data({"tool_calls": [{"index": self.call, "function": {"arguments": text}}]})]

    def finish(self, response):
        """The last lines: the answer replayed if the agent streamed none of it, finish, usage, [DONE]."""
        lines = [] if self.began else self._replay(response["choices"][0]["message"])
        lines.append(self._data({}, response["choices"][0]["finish_reason"], ttsi=response["ttsi"]))
        if self.usage_chunk:
            lines.append(_sse({**self.base, "choices": [], "usage": response["usage"]}))
        return lines + ["data: [DONE]\n\n"]

    def _replay(self, message):
        calls = message.get("tool_calls") or []
        pieces = [
            piece
            for call in calls
            for piece in [("call", call["function"]["name"])]
            + [("arguments", text) for text in _pieces(call["function"]["arguments"])]
        ]
        if not calls:
            pieces = [("content", text) for text in _pieces(message.get("content") or "")] or [("content", "")]
        return [line for piece in pieces for line in self.event("piece", piece)]

    def _data(self, delta, finish=None, **extra):
        return _sse(
            {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        )


class Trim:
    """Text pieces as they come, less the whitespace around the whole (the answer is stripped)."""

    def __init__(self):
        self.began, self.held = False, ""

    def piece(self, text):
        if not self.began:
            text = text.lstrip()
            self.began = bool(text)
        text = self.held + text
        kept = text.rstrip()
        self.held = text[len(kept) :]  # trailing whitespace waits for what follows it
        return kept


def progress_comment(phase, seconds, detail=""):
    """`: scoring 0.27s name margin 0.941` (a timed phase) or `: gate u 0.312 (uncertain)` (a word)."""
    words = [phase] + ([] if phase in WORDS else [f"{seconds:.2f}s"]) + ([str(detail)] if detail else [])
    return ": " + " ".join(words).replace("\r", " ").replace("\n", " ") + "\n\n"


def error_event(error):
    return _sse(error.body()) + "data: [DONE]\n\n"


def _sse(data):
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _pieces(text):
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]
