"""Turning a conversation and tools into the model's prompt, and calls into assistant text.

Models whose chat template renders tools in a call format mlx-lm knows (formats.py) get their own
template and answer in that format; every other model (SmolLM2 included) gets the fallback system
prompt below, and answers with bare JSON objects, one per line.
"""

import json

from .errors import RequestError, ToolsError
from .formats import CallFormat, call_format  # noqa: F401  (the call formats live in formats.py)
from .tools import MAX_NESTING, loads, nesting

FALLBACK_SYSTEM = (
    "You are a function-calling assistant. You can call these tools:\n{tools}\n"
    'Answer the user\'s request with one JSON object per call, like {{"name": "tool_name", '
    '"arguments": {{"argument": "value"}}}}, using only the tools and arguments listed.'
)
ROLES = {"system", "user", "assistant", "tool"}
MAX_REQUEST_CHARS = 200_000


def tool_line(tool):
    return json.dumps(tool.as_plain(), ensure_ascii=False)


def calls_text(calls, fmt):
    """The assistant turn for a list of calls, exactly as the decoder writes it."""
    return fmt.calls_text(calls)


class Messages(list):
    """A conversation normalize_messages has checked: it is not checked again."""


def normalize_messages(messages):
    """Check a conversation and bring tool calls to {name, arguments} (OpenAI shape accepted)."""
    if isinstance(messages, Messages):
        return messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise RequestError(f"message #{index + 1} needs a role of {', '.join(sorted(ROLES))}")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise RequestError(f"message #{index + 1}: tool_calls must be a list")
        calls = [_plain_call(call, index) for call in calls]
        clean.append({"role": message["role"], "content": _content(message.get("content"), index), "tool_calls": calls})
    if clean[-1]["role"] == "system" or not any(m["role"] == "user" and m["content"].strip() for m in clean):
        raise RequestError("the conversation needs a non-empty user message and must not end with a system message")
    if sum(len(m["content"]) for m in clean) > MAX_REQUEST_CHARS:
        raise RequestError(f"the request is over {MAX_REQUEST_CHARS} characters")
    return Messages(clean)


def _content(content, index):
    """A message's text: a string, OpenAI content parts (their text kept), or other JSON as JSON text."""
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        if not all(isinstance(text, str) for text in texts):
            raise RequestError(f"message #{index + 1} has a content part whose text is not a string")
        content = "".join(texts)
    if content is not None and not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    return content or ""


def _plain_call(call, index):
    body = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise RequestError(f"message #{index + 1} has a malformed tool call")
    arguments = body.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = loads(arguments, "tool-call arguments") if arguments.strip() else {}
        except (json.JSONDecodeError, ToolsError):
            raise RequestError(
                f"message #{index + 1} has tool-call arguments that are not JSON of at most {MAX_NESTING} levels"
            ) from None
    if not isinstance(arguments, dict) or nesting(arguments) > MAX_NESTING:
        raise RequestError(
            f"message #{index + 1} has tool-call arguments that are not a JSON object of at most {MAX_NESTING} levels"
        )
    return {"name": body["name"], "arguments": arguments}


def last_user_text(messages):
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"]


def chat_messages(messages, tools, fmt, demonstrations=()):
    """Messages for the chat template: tools in the system prompt (fallback) and demonstrations."""
    out = []
    system = [m["content"] for m in messages if m["role"] == "system"]
    if not fmt.native and tools:
        system.append(FALLBACK_SYSTEM.format(tools="\n".join(tool_line(t) for t in tools)))
    if system:
        out.append({"role": "system", "content": "\n\n".join(system)})
    for example in demonstrations:
        out.append({"role": "user", "content": example["request"]})
        out.append({"role": "assistant", "content": calls_text(example["calls"], fmt)})
    for message in messages:
        if message["role"] == "system":
            continue
        if message["role"] == "assistant" and message["tool_calls"]:
            text = calls_text(message["tool_calls"], fmt)
            out.append({"role": "assistant", "content": (message["content"] + "\n" + text).strip()})
        elif message["role"] == "tool" and not fmt.native:
            out.append({"role": "user", "content": "Tool result: " + message["content"]})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    return out


def render_prompt(tokenizer, messages, tools, fmt, demonstrations=()):
    """The prompt text, ending where the assistant's answer begins."""
    chat = chat_messages(messages, tools, fmt, demonstrations)
    kwargs = {"tools": [t.as_openai() for t in tools]} if fmt.native and tools else {}
    try:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kwargs)
    except Exception as error:  # jinja errors from the model's own template
        raise RequestError(f"the model's chat template rejected this conversation: {error}") from None


def end_of_turn(tokenizer):
    """The text that ends an assistant turn (the EOS token as text)."""
    return tokenizer.eos_token or ""
