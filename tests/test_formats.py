"""Native tool-call formats, one tiny random model per chat-template family.

The templates are short ones written here that mimic the real ones (Qwen2.5, Llama 3.2,
Mistral v0.3, LFM2, FunctionGemma, Gemma 4, Qwen3-Coder): the same markers, tool listing and
call rendering, so that mlx-lm's TokenizerWrapper picks its parser for them as it does for the
real models. Nothing here uses our own reading of the format to check itself: calls are read back
with mlx-lm's parser directly, and scores are recomputed with a plain forward pass.
"""

import json

from mlx_ttsi import models
from mlx_ttsi.adaptation import Adapter
from mlx_ttsi.agent import Agent
from mlx_ttsi.context import ContextState
from mlx_ttsi.decoding import CallDecoder
from mlx_ttsi.errors import CallError
from mlx_ttsi.formats import call_format
from mlx_ttsi.prompts import FALLBACK_SYSTEM, render_prompt
from mlx_ttsi.settings import LoRASettings, Settings
from mlx_ttsi.tools import check_call
from mlx_ttsi.verify import stated

import mlx.core as mx
import pytest
from conftest import TOOLS, build_tokenizer, write_tiny_model

# ---- templates -------------------------------------------------------------------------------

_SYSTEM_FIRST = "{%- if messages[0].role == 'system' %}{%- set messages = messages[1:] %}{%- endif %}"

QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{{- messages[0].content if messages[0].role == 'system' else 'You are Qwen, a helpful assistant.' }}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA32 = (
    "{{- bos_token }}{%- if messages[0].role == 'system' %}{%- set system_message = messages[0].content %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\n\\n' }}"
    "{%- if tools %}{{- 'You have access to the following functions. To call a function, please respond with "
    "JSON for a function call. ' }}"
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
    "value}. Do not use variables.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}{%- endif %}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "{%- set tool_call = message.tool_calls[0].function %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    '{{- \'{"name": "\' + tool_call.name + \'", "parameters": \' }}{{- tool_call.arguments | tojson }}'
    "{{- '}<|eot_id|>' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}"
    "{%- else %}{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim"
    " + '<|eot_id|>' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

MISTRAL_V03 = (
    _SYSTEM_FIRST.replace("{%- set messages", "{%- set system_message = messages[0].content %}{%- set messages")
    + "{%- set user_messages = messages | selectattr('role', 'equalto', 'user') | list %}{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{%- if tools and message == user_messages[-1] %}"
    "{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}"
    "{%- if system_message is defined and message == user_messages[-1] %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message.content + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message.content + '[/INST]' }}{%- endif %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}{{- '[TOOL_CALLS] [' }}"
    "{%- for tool_call in message.tool_calls %}{%- set f = tool_call.function %}"
    "{{- '{\"name\": \"' + f.name + '\", \"arguments\": ' + f.arguments | tojson + '}' }}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}{{- ']' + eos_token }}"
    "{%- elif message.role == 'assistant' %}{{- ' ' + message.content | trim + eos_token }}"
    "{%- elif message.role == 'tool' %}{{- '[TOOL_RESULTS] ' + message.content + '[/TOOL_RESULTS]' }}"
    "{%- endif %}{%- endfor %}"
)

LFM2 = (
    "{{- bos_token }}{%- set system_prompt = messages[0].content if messages[0].role == 'system' else '' %}"
    + _SYSTEM_FIRST
    + "{%- if tools %}{%- set system_prompt = system_prompt + ('\\n' if system_prompt else '') + "
    "'List of tools: <|tool_list_start|>' + tools | tojson + '<|tool_list_end|>' %}{%- endif %}"
    "{%- if system_prompt %}{{- '<|im_start|>system\\n' + system_prompt + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'tool' %}{{- '<|tool_response_start|>' + message.content + '<|tool_response_end|>' }}"
    "{%- elif message.tool_calls %}{{- '<|tool_call_start|>[' }}"
    "{%- for tool_call in message.tool_calls %}{%- set f = tool_call.function %}{{- f.name + '(' }}"
    "{%- for key, value in f.arguments.items() %}{{- key + '=' + value | tojson }}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}{{- ')' }}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}{{- ']<|tool_call_end|>' }}"
    "{%- else %}{{- message.content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

FUNCTION_GEMMA = (
    "{{- bos_token }}{%- if tools or messages[0].role == 'system' %}{{- '<start_of_turn>developer\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}"
    "{%- for tool in tools %}{%- set f = tool.function %}"
    "{{- '<start_function_declaration>declaration:' + f.name + '{description:<escape>' + f.description + "
    "'<escape>,parameters:' + f.parameters | tojson + '}<end_function_declaration>' }}{%- endfor %}"
    "{{- '<end_of_turn>\\n' }}{%- endif %}" + _SYSTEM_FIRST + "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}{{- '<start_function_response>response:' + message.content + "
    "'<end_function_response>' }}"
    "{%- else %}{{- '<start_of_turn>' + ('model' if message.role == 'assistant' else message.role) + '\\n' }}"
    "{%- for tool_call in message.tool_calls or [] %}{%- set f = tool_call.function %}"
    "{{- '<start_function_call>call:' + f.name + '{' }}"
    "{%- for key, value in f.arguments.items() %}{{- key + ':' }}"
    "{%- if value is string %}{{- '<escape>' + value + '<escape>' }}{%- else %}{{- value | tojson }}{%- endif %}"
    "{%- if not loop.last %}{{- ',' }}{%- endif %}{%- endfor %}{{- '}<end_function_call>' }}{%- endfor %}"
    "{{- message.content + '<end_of_turn>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

GEMMA4 = (
    "{{- bos_token }}{%- if tools or messages[0].role == 'system' %}{{- '<|turn>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}"
    "{%- for tool in tools %}{%- set f = tool.function %}"
    "{{- '<|tool>declaration:' + f.name + '{description:<|\"|>' + f.description + '<|\"|>,parameters:' + "
    "f.parameters | tojson + '}<tool|>' }}{%- endfor %}{{- '<turn|>\\n' }}{%- endif %}"
    + _SYSTEM_FIRST
    + "{%- for message in messages %}"
    "{{- '<|turn>' + ('model' if message.role == 'assistant' else message.role) + '\\n' }}"
    "{%- for tool_call in message.tool_calls or [] %}{%- set f = tool_call.function %}"
    "{{- '<|tool_call>call:' + f.name + '{' }}"
    "{%- for key, value in f.arguments.items() %}{{- key + ':' }}"
    "{%- if value is string %}{{- '<|\"|>' + value + '<|\"|>' }}{%- else %}{{- value | tojson }}{%- endif %}"
    "{%- if not loop.last %}{{- ',' }}{%- endif %}{%- endfor %}{{- '}<tool_call|>' }}{%- endfor %}"
    "{{- message.content + '<turn|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|turn>model\\n' }}{%- endif %}"
)

QWEN3_CODER = (
    "{%- if messages[0].role == 'system' %}{%- set system_message = messages[0].content %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = 'You are Qwen.' %}{%- endif %}"
    "{{- '<|im_start|>system\\n' + system_message }}"
    "{%- if tools %}{{- '\\n\\n# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n<function>\\n<name>' + tool.function.name + '</name>\\n<description>' + "
    "tool.function.description + '</description>\\n<parameters>' + "
    "tool.function.parameters | tojson + '</parameters>\\n</function>' }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nIf you choose to call a function, reply in the following format:\\n<tool_call>\\n"
    "<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n"
    "</function>\\n</tool_call>' }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content }}"
    "{%- for tool_call in message.tool_calls or [] %}{%- set f = tool_call.function %}"
    "{{- '<tool_call>\\n<function=' + f.name + '>\\n' }}"
    "{%- for key, value in f.arguments.items() %}{{- '<parameter=' + key + '>\\n' }}"
    "{{- value if value is string else value | tojson }}{{- '\\n</parameter>\\n' }}{%- endfor %}"
    "{{- '</function>\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# family -> (template, special tokens, bos, eos, mlx-lm parser module or None, generation prompt's end,
#            the answer's text before the tool name, the character after it)
FAMILIES = {
    "json_tools": (
        QWEN25,
        CHATML_TOKENS + ["<tool_call>", "</tool_call>"],
        None,
        "<|im_end|>",
        "json_tools",
        "<|im_start|>assistant\n",
        '<tool_call>\n{"name": "',
        '"',
    ),
    "llama3_json": (
        LLAMA32,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        '{"name": "',
        '"',
    ),
    "mistral": (
        MISTRAL_V03,
        [
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ],
        "<s>",
        "</s>",
        "mistral",
        "[/INST]",
        '[TOOL_CALLS] [{"name": "',
        '"',
    ),
    "pythonic": (
        LFM2,
        [
            "<|startoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|tool_list_start|>",
            "<|tool_list_end|>",
            "<|tool_call_start|>",
            "<|tool_call_end|>",
            "<|tool_response_start|>",
            "<|tool_response_end|>",
        ],
        "<|startoftext|>",
        "<|im_end|>",
        "pythonic",
        "<|im_start|>assistant\n",
        "<|tool_call_start|>[",
        "(",
    ),
    "function_gemma": (
        FUNCTION_GEMMA,
        [
            "<bos>",
            "<eos>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_function_declaration>",
            "<end_function_declaration>",
            "<start_function_call>",
            "<end_function_call>",
            "<start_function_response>",
            "<end_function_response>",
            "<escape>",
        ],
        "<bos>",
        "<end_of_turn>",
        "function_gemma",
        "<start_of_turn>model\n",
        "<start_function_call>call:",
        "{",
    ),
    "gemma4": (
        GEMMA4,
        ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", '<|"|>'],
        "<bos>",
        "<turn|>",
        "gemma4",
        "<|turn>model\n",
        "<|tool_call>call:",
        "{",
    ),
    "qwen3_coder": (
        QWEN3_CODER,
        CHATML_TOKENS + ["<tool_call>", "</tool_call>"],
        None,
        "<|im_end|>",
        "qwen3_coder",
        "<|im_start|>assistant\n",
        "<tool_call>\n<function=",
        ">",
    ),
}
JSON_FAMILIES = ("json_tools", "llama3_json", "mistral")

CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}},
    {"name": "set_alarm", "arguments": {"time": "07:30", "loud": True, "volume": 0.5}},
    {"name": "list_alarms", "arguments": {}},
]


def write_family_model(path, family, seed=0):
    template, special, bos, eos = FAMILIES[family][:4]
    return write_tiny_model(path, seed, build_tokenizer(template, special, bos, eos))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: write_family_model(root / family, family) for family in FAMILIES}


@pytest.fixture(params=list(FAMILIES))
def family(request, family_dirs):
    """(family name, freshly loaded tiny model with that family's template)."""
    return request.param, models.load(str(family_dirs[request.param]), precision="float32")


def mlx_lm_read(tokenizer, text):
    """The calls in `text`, read with mlx-lm's own parser between its own markers (no formats.py)."""
    if tokenizer.tool_parser is None:  # Llama 3.x JSON: mlx-lm has no parser; the format is bare JSON
        value = json.loads(text)
        return [{"name": value["name"], "arguments": value["parameters"]}]
    inner = text.split(tokenizer.tool_call_start, 1)[1]
    if tokenizer.tool_call_end:
        inner = inner.split(tokenizer.tool_call_end, 1)[0]
    parsed = tokenizer.tool_parser(inner, _openai_tools())
    return [
        {"name": c["name"], "arguments": c["arguments"]} for c in (parsed if isinstance(parsed, list) else [parsed])
    ]


def _openai_tools():
    from mlx_ttsi.tools import parse_tools

    return [t.as_openai() for t in parse_tools(TOOLS)]  # a superset of TAUGHT_TOOLS


def ask_prompt(loaded, tools, request="What is the weather in Paris?"):
    fmt = call_format(loaded.tokenizer)
    return fmt, render_prompt(loaded.tokenizer, [{"role": "user", "content": request}], tools, fmt)


# ---- tests -----------------------------------------------------------------------------------


def test_mlx_lm_picks_the_parser_and_we_follow_it(family):
    name, loaded = family
    expected = FAMILIES[name][4]
    parser = loaded.tokenizer.tool_parser
    assert (parser.__module__.rsplit(".", 1)[-1] if parser else None) == expected
    fmt = call_format(loaded.tokenizer)
    assert fmt.native and fmt.family == name
    assert fmt.guided == (name in JSON_FAMILIES)


def test_tools_are_rendered_by_the_models_own_template(family, tools):
    name, loaded = family
    fmt, prompt = ask_prompt(loaded, tools)
    assert prompt.endswith(FAMILIES[name][5])
    assert "What is the weather in Paris?" in prompt
    assert all(tool.name in prompt for tool in tools) and "Get the weather for a city" in prompt
    assert "function-calling assistant" not in prompt and FALLBACK_SYSTEM[:20] not in prompt


@pytest.mark.parametrize("name", list(FAMILIES))
def test_calls_text_round_trips_through_mlx_lm_parser(name, family_dirs, tools):
    loaded = models.load(str(family_dirs[name]), precision="float32")
    fmt = call_format(loaded.tokenizer)
    for call in CALLS:
        text = fmt.calls_text([call])
        assert mlx_lm_read(loaded.tokenizer, text) == [call], text
        assert fmt.read(text, tools) == [call]
    assert fmt.read(fmt.calls_text(CALLS[:2]), tools) == CALLS[:2]  # several calls in one answer


@pytest.mark.parametrize("name", list(FAMILIES))
def test_calls_text_is_what_the_template_renders_for_a_call(name, family_dirs):
    # the family's own template, given an assistant turn with a tool call, writes the same text
    loaded = models.load(str(family_dirs[name]), precision="float32")
    fmt = call_format(loaded.tokenizer)
    call = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
    turn = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}
    rendered = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Weather?"}, turn], tools=_openai_tools(), tokenize=False
    )
    assert fmt.calls_text([call]) in rendered


def test_the_name_is_scored_where_the_format_puts_it(family, tools):
    name, loaded = family
    fmt, prompt = ask_prompt(loaded, tools)
    decoder = CallDecoder(ContextState(loaded.model, loaded.tokenizer), fmt)
    choice, scores = decoder.name_choice(prompt, tools)
    before, after = FAMILIES[name][6:8]
    assert choice.options == [t.name + after for t in tools]
    # each option's log-prob, recomputed with one plain forward pass over prompt + prefix + option
    tok = loaded.tokenizer
    for option, logprob in zip(choice.options, choice.logprobs):
        context = tok.encode(prompt + before, add_special_tokens=False)
        ids = tok.encode(prompt + before + option, add_special_tokens=False)
        assert ids[: len(context) - 1] == context[:-1]
        shared = next(i for i in range(len(ids)) if i >= len(context) or ids[i] != context[i])
        logits = loaded.model(mx.array(ids[:-1])[None])[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        expected = sum(logprobs[i - 1, ids[i]].item() for i in range(shared, len(ids)))
        assert logprob == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("name", JSON_FAMILIES)
def test_json_formats_decode_under_the_schema(name, family_dirs, tools):
    loaded = models.load(str(family_dirs[name]), precision="float32")
    fmt, prompt = ask_prompt(loaded, tools, "Weather in Paris and an alarm at 7")
    decoded = CallDecoder(ContextState(loaded.model, loaded.tokenizer), fmt, max_calls=2).decode(prompt, tools)
    assert 1 <= len(decoded.calls) <= 2 and decoded.error is None
    assert all(check_call(call, tools) is None for call in decoded.calls)
    assert decoded.text.startswith(FAMILIES[name][6]) and decoded.text == fmt.calls_text(decoded.calls)
    if len(decoded.calls) == 1:
        assert mlx_lm_read(loaded.tokenizer, decoded.text) == decoded.calls


def test_unreadable_native_answers_get_a_one_line_error(family, tools):
    name, loaded = family
    fmt = call_format(loaded.tokenizer)
    broken = fmt.calls_text([CALLS[0]])
    for text in (
        "no call here",
        broken[: len(broken) // 2 + 3] + "\n(((",
        fmt.calls_text([{"name": "get_weather", "arguments": {"unit": "celsius"}}]),
        fmt.calls_text([{"name": "no_such_tool", "arguments": {}}]),
    ):
        with pytest.raises(CallError) as raised:
            fmt.read(text, tools)
        message = str(raised.value)
        assert "\n" not in message and message.startswith("the model's")


def _spy_training(monkeypatch):
    seen = []
    original = Adapter.train

    def train(self, examples, *args, **kwargs):
        seen.extend(examples)
        return original(self, examples, *args, **kwargs)

    monkeypatch.setattr(Adapter, "train", train)
    return seen


TAUGHT_REQUEST = "Set an alarm at 07:30, loud"
TAUGHT_CALL = {"name": "set_alarm", "arguments": {"time": "07:30", "loud": True}}
TAUGHT_TOOLS = TOOLS[1:2]  # a short prompt keeps teaching fast
FREE_FAMILIES = [name for name in FAMILIES if name not in JSON_FAMILIES]


def teach(loaded, tools, max_steps=120):
    """Fine-tune the whole tiny model until it answers TAUGHT_REQUEST with TAUGHT_CALL in its format."""
    from functools import partial

    import mlx.nn as nn
    import mlx.optimizers as optim

    fmt, prompt = ask_prompt(loaded, tools, TAUGHT_REQUEST)
    tok, model = loaded.tokenizer, loaded.model
    start = len(tok.encode(prompt, add_special_tokens=False))
    ids = tok.encode(prompt + fmt.calls_text([TAUGHT_CALL]) + tok.eos_token, add_special_tokens=False)
    inputs, targets = mx.array(ids[:-1])[None], mx.array(ids[1:])[None]
    weight = (mx.arange(len(ids) - 1) >= start - 1)[None]

    def loss(model):
        return (nn.losses.cross_entropy(model(inputs), targets) * weight).sum() / weight.sum()

    optimizer = optim.Adam(learning_rate=3e-3)
    gradient = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step():
        value, grads = gradient(model)
        optimizer.update(model, grads)
        return value

    for _ in range(max_steps):
        value = step()
        mx.eval(state, value)
        if value.item() < 0.005:
            return loaded
    raise AssertionError(f"the tiny model did not learn the call (loss {value.item():.3f})")


@pytest.fixture(scope="module")
def taught_dirs(family_dirs, tmp_path_factory):
    """Per family (taught on first use), a tiny model that answers TAUGHT_REQUEST with TAUGHT_CALL natively."""
    from mlx_ttsi.tools import parse_tools

    from mlx.utils import tree_flatten

    root, dirs = tmp_path_factory.mktemp("taught"), {}

    def taught(name):
        if name not in dirs:
            source, target = family_dirs[name], root / name
            loaded = teach(models.load(str(source), precision="float32"), parse_tools(TAUGHT_TOOLS))
            target.mkdir()
            for file in source.iterdir():
                if not file.name.endswith(".safetensors"):
                    (target / file.name).write_bytes(file.read_bytes())
            mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(loaded.model.parameters())))
            dirs[name] = target
        return dirs[name]

    return taught


@pytest.mark.parametrize("name", FREE_FAMILIES)
def test_a_model_that_writes_a_call_natively_is_read_by_mlx_lms_parser(name, taught_dirs):
    # the model writes the arguments after the chosen name; mlx-lm's parser and the schema read them
    from mlx_ttsi.tools import parse_tools

    tools = parse_tools(TAUGHT_TOOLS)
    loaded = models.load(str(taught_dirs(name)), precision="float32")
    fmt, prompt = ask_prompt(loaded, tools, TAUGHT_REQUEST)
    pieces = []
    decoder = CallDecoder(ContextState(loaded.model, loaded.tokenizer), fmt)
    decoded = decoder.decode(prompt, tools, on_piece=lambda kind, text: pieces.append((kind, text)))
    assert decoded.error is None and decoded.calls == [TAUGHT_CALL], decoded.text
    assert decoded.text == fmt.calls_text([TAUGHT_CALL])  # stopped right at the end marker
    assert pieces == [("call", "set_alarm"), ("arguments", json.dumps(TAUGHT_CALL["arguments"]))]  # streamed once read
    assert mlx_lm_read(loaded.tokenizer, decoded.text) == [TAUGHT_CALL]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_self_improvement_trains_on_native_examples(name, family_dirs, taught_dirs, tools, monkeypatch):
    # a forced TT-SI adaptation: self-label, twins, LoRA on them, answer; all in the native format.
    # JSON formats self-label with the guided decoder (any random model will do); the free ones
    # need a model whose answer reads, so they use the taught one.
    free = name in FREE_FAMILIES
    loaded = models.load(str(taught_dirs(name) if free else family_dirs[name]), precision="float32")
    fmt = call_format(loaded.tokenizer)
    seen = _spy_training(monkeypatch)
    settings = Settings(mode="ttsi", examples=2, same_tool=False, lora=LoRASettings(epochs=1))
    answer = Agent(loaded, settings).ask(TAUGHT_REQUEST, tools=TAUGHT_TOOLS, force=True)
    assert answer.adapted and answer.label and len(seen) == len(answer.synthetic) >= 1
    tok = loaded.tokenizer
    lead, tail = fmt.start + fmt.open, fmt.close + fmt.end
    for (ids, offset), example in zip(seen, answer.synthetic):
        # the loss covers the calls the model writes, not the wrapper the decoder writes around them
        text = fmt.calls_text(example["calls"])
        trained = text[len(lead) : len(text) - len(tail)] if lead or tail else text + tok.eos_token
        assert tok.decode(ids[offset:]) == trained and tok.decode(ids[:offset]).endswith(lead)
    assert answer.tool_calls and all(check_call(call, tools) is None for call in answer.tool_calls)
    if free:
        assert answer.label == [TAUGHT_CALL] and len(seen) == 2
        twin = answer.synthetic[1]["calls"][0]["arguments"]["time"]
        asked = tok.decode(seen[1][0][: seen[1][1]])
        assert twin != "07:30" and stated(twin, asked) and twin not in asked  # its request says the time in words
        assert answer.tool_calls == [TAUGHT_CALL], answer.answer


@pytest.mark.parametrize("name", FREE_FAMILIES)
def test_free_formats_give_no_calls_and_say_why_when_the_answer_does_not_read(name, family_dirs):
    # the random model writes gibberish after the tool name: no calls, a note, no adaptation on it
    loaded = models.load(str(family_dirs[name]), precision="float32")
    agent = Agent(loaded, Settings(mode="ttsi"))
    answer = agent.ask("What is the weather in Paris?", tools=TOOLS, force=True)
    assert answer.tool_calls == [] and not answer.adapted and answer.finish_reason == "stop"
    assert answer.note.startswith("not adapted: the model's own answer is not a readable tool call")
    base = agent.ask("What is the weather in Paris?", tools=TOOLS, mode="base")
    assert base.tool_calls == [] and base.answer.startswith(FAMILIES[name][6])
    assert base.note.startswith(f"the model's {name} tool call") and "\n" not in base.note


# ---- a Hugging Face repo id, loaded offline from the hub cache ---------------------------------


def _cache_repo(hub, repo, source):
    """Lay `source` out as huggingface-hub caches a download: blobs, a snapshot of links, refs/main."""
    import hashlib

    folder = hub / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        data = file.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(blob)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_a_repo_id_loads_offline_from_the_hub_cache(family_dirs, tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    snapshot = _cache_repo(home / "hub", "tiny-org/tiny-pythonic", family_dirs["pythonic"])
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = models.load("tiny-org/tiny-pythonic", precision="float32")
    assert loaded.name == "tiny-org/tiny-pythonic" and loaded.path == snapshot
    assert call_format(loaded.tokenizer).family == "pythonic"
    # HF_HUB_CACHE wins over HF_HOME; a repo that is not cached fails in one line
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(models.ModelError, match="cannot get model 'tiny-org/tiny-pythonic'"):
        models.load("tiny-org/tiny-pythonic")
