import json

from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import CallDecoder, _parse_number, _string_end
from mlx_ttsi.prompts import CallFormat, call_format, calls_text, render_prompt
from mlx_ttsi.tools import check_call, parse_tools

import mlx.core as mx
import pytest

SCHEMAS = parse_tools(
    [
        {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {
                    "guests": {"type": "integer"},
                    "price": {"type": "number"},
                    "vip": {"type": "boolean"},
                    "room": {"enum": ["single", "double", 3]},
                    "names": {"type": "array", "items": {"type": "string"}},
                    "note": {"type": ["string", "null"]},
                },
                "required": ["guests", "price", "vip", "room"],
            },
        },
        {
            "name": "cancel",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
    ]
)


def decode(tiny, tools, request, **options):
    fmt = call_format(tiny.tokenizer)
    prompt = render_prompt(tiny.tokenizer, [{"role": "user", "content": request}], tools, fmt)
    decoder = CallDecoder(ContextState(tiny.model, tiny.tokenizer), fmt, **options)
    return prompt, decoder.decode(prompt, tools)


@pytest.mark.parametrize("seed", range(4))
def test_guided_calls_always_parse_name_an_offered_tool_and_validate(tiny, seed):
    # even a random model cannot produce an invalid call
    mx.random.seed(seed)
    for tools, request in [(SCHEMAS, "Book a double room for 2 guests"), (parse_tools([{"name": "noop"}]), "hi")]:
        prompt, decoded = decode(tiny, tools, request + str(seed))
        assert len(decoded.calls) == 1
        assert check_call(decoded.calls[0], tools) is None
        assert decoded.text == calls_text(decoded.calls, call_format(tiny.tokenizer))
        assert json.loads(decoded.text) == decoded.calls[0]


@pytest.mark.parametrize("seed", range(2))
def test_the_format_opens_a_key_as_the_decoder_writes_it(tiny, seed):
    # self_check asks for a value after CallFormat.open_key: the decoder's own text up to that value
    mx.random.seed(seed)
    fmt = call_format(tiny.tokenizer)
    _, decoded = decode(tiny, SCHEMAS, "Book a double room for 2 guests" + str(seed))
    call = decoded.calls[0]
    for i, key in enumerate(call["arguments"]):
        before = dict(list(call["arguments"].items())[:i])
        assert decoded.text.startswith(fmt.start + fmt.open_key(call["name"], before, key))


def test_required_arguments_are_always_present(tiny):
    _, decoded = decode(tiny, SCHEMAS, "Book it")
    call = decoded.calls[0]
    required = {t.name: set(t.required) for t in SCHEMAS}[call["name"]]
    assert required <= set(call["arguments"])


def test_several_calls_when_allowed(tiny, tools):
    _, decoded = decode(tiny, tools, "Weather in Paris and an alarm at 7", max_calls=3)
    assert 1 <= len(decoded.calls) <= 3
    assert all(check_call(c, tools) is None for c in decoded.calls)


def test_native_call_format_wraps_calls_in_tags():
    fmt = CallFormat(open="<tool_call>\n", close="\n</tool_call>", native=True)
    text = calls_text([{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}], fmt)
    assert (
        text
        == '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>'
    )


def test_string_end_skips_escaped_quotes():
    assert _string_end('abc"') == 3
    assert _string_end('a\\"b"c') == 4
    assert _string_end("no end") is None


def test_parse_number():
    assert _parse_number("40", False) == 40 and isinstance(_parse_number("40", False), int)
    assert _parse_number("40.7", False) == 40.7
    assert _parse_number("12.0", True) == 12
    assert _parse_number("-", False) is None
    assert _parse_number("1.2.3", False) is None


HERMES = (
    "{%- if tools %}<|im_start|>system\nTools:\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n"
    'Call one with <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{%- endif %}'
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}<tool_call>{{ tool_call.name }}</tool_call>"
    "{%- endfor %}{%- endif %}<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_models_with_a_tool_template_get_their_own_format(tiny, tools):
    # a Hermes/Qwen-style template renders the tools itself and calls go in <tool_call> tags
    tokenizer = tiny.tokenizer
    tokenizer._tokenizer.chat_template = HERMES
    fmt = call_format(tokenizer)
    assert fmt.native and fmt.open == "<tool_call>\n"
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Weather in Oslo?"}], tools, fmt)
    assert '"name": "get_weather"' in prompt and "function-calling assistant" not in prompt
    decoded = CallDecoder(ContextState(tiny.model, tokenizer), fmt).decode(prompt, tools)
    assert decoded.text.startswith("<tool_call>\n{") and decoded.text.endswith("}\n</tool_call>")
    from mlx_ttsi.tools import parse_calls

    assert parse_calls(decoded.text) == decoded.calls


def test_a_new_tokenizer_never_gets_the_vocabulary_of_a_dead_one():
    import gc
    import weakref

    from mlx_ttsi.decoding import Vocabulary

    from conftest import build_tokenizer
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    small, large = build_tokenizer(vocab_size=300), build_tokenizer(vocab_size=400)
    for _ in range(20):  # CPython often gives a freed object's address (its id) to the next one of its size
        first = TokenizerWrapper(small)
        assert len(Vocabulary.of(first).pieces) == len(small)
        vocabulary = weakref.ref(Vocabulary.of(first))
        del first
        gc.collect()
        assert vocabulary() is None  # gone with its tokenizer: nothing left for a reused id to find
        second = TokenizerWrapper(large)
        assert len(Vocabulary.of(second).pieces) == len(large)
        del second


def decode_with_draft(tiny, tools, request, guess):
    fmt = call_format(tiny.tokenizer)
    prompt = render_prompt(tiny.tokenizer, [{"role": "user", "content": request}], tools, fmt)
    state = ContextState(tiny.model, tiny.tokenizer)
    decoder = CallDecoder(state, fmt)
    decoder.draft(prompt, guess)
    return decoder.decode(prompt, tools), state.draft_counts()


@pytest.mark.parametrize("seed", range(3))
def test_a_draft_never_changes_the_answer(tiny, seed):
    # the answer's own text is taken whole; a wrong guess is taken up to where it differs
    mx.random.seed(seed)
    request = f"Book a double room for 2 guests {seed}"
    _, plain = decode(tiny, SCHEMAS, request)
    right, (drafted, taken) = decode_with_draft(tiny, SCHEMAS, request, plain.text)
    assert right.calls == plain.calls and right.text == plain.text
    assert taken > 0.5 * len(tiny.tokenizer.encode(plain.text))  # a right guess saves most decoding steps
    wrong_text = plain.text.replace(plain.calls[0]["name"], "cancel" if plain.calls[0]["name"] == "book" else "book")
    wrong, (drafted, taken) = decode_with_draft(tiny, SCHEMAS, request, wrong_text + " extra words")
    assert wrong.calls == plain.calls and wrong.text == plain.text
    assert taken < drafted


def test_a_draft_keeps_the_log_probs_of_step_by_step_decoding(tiny):
    fmt = call_format(tiny.tokenizer)
    prompt = render_prompt(tiny.tokenizer, [{"role": "user", "content": "Cancel 42"}], SCHEMAS, fmt)
    stepped, drafted = ContextState(tiny.model, tiny.tokenizer), ContextState(tiny.model, tiny.tokenizer)
    stepped.set_text(prompt)
    drafted.set_text(prompt)
    ids = stepped.encode(prompt + ' {"id": "42"}')[len(stepped.tokens) :]
    drafted.draft(ids)
    for token in ids:
        stepped.push(token)
        drafted.push(token)
        assert mx.allclose(stepped.logprobs, drafted.logprobs, atol=1e-4).item()
    assert drafted.draft_counts() == (len(ids), len(ids)) and stepped.forward_tokens > drafted.forward_tokens - len(ids)
    drafted.push(ids[0])  # off the draft: fed as usual
    stepped.push(ids[0])
    assert mx.allclose(stepped.logprobs, drafted.logprobs, atol=1e-4).item()


@pytest.mark.parametrize("seed", range(3))
def test_lookup_drafts_never_change_the_answer(tiny, seed):
    # free values are written with drafts looked up in the prompt (ContextState.push): same calls
    mx.random.seed(seed)
    fmt = call_format(tiny.tokenizer)
    request = f"Cancel booking AB-{seed}42 for Maria Lopez, note: late check-in {seed}"
    prompt = render_prompt(tiny.tokenizer, [{"role": "user", "content": request}], SCHEMAS, fmt)
    answers, fed = [], []
    for lookahead in (0, 8):
        state = ContextState(tiny.model, tiny.tokenizer)
        answers.append(CallDecoder(state, fmt, max_calls=2, lookahead=lookahead).decode(prompt, SCHEMAS))
        fed.append(state.forward_tokens)
    assert answers[1].calls == answers[0].calls and answers[1].text == answers[0].text
    assert fed[1] > fed[0]  # drafts were run (a random model rarely copies, so most are dropped)
