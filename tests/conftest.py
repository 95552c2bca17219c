"""Fixtures: a tiny random llama model with a small byte-level BPE tokenizer, built in the test.

Like mlx-lm's own tests, nothing is downloaded; the embedded SmolLM2 is used only by tests marked
`model`.
"""

import json
import os
from pathlib import Path

import mlx_ttsi  # noqa: F401  (loads OpenBLAS before mlx)

import mlx.core as mx
import pytest

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "You are a function-calling assistant. You can call these tools:",
    '{"name": "get_weather", "description": "Get the weather for a city", "parameters": {"type": "object"}}',
    '{"name": "set_alarm", "arguments": {"time": "07:30", "label": "work"}}',
    "What is the weather in Paris tomorrow? Set an alarm at 7 for work. Convert 100 USD to EUR.",
    "Write one new request from a different user that needs the same kind of tool call.",
    "0123456789 true false null [] {} , : \" \\ ' ( ) - _ . ! ?",
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "name": "set_alarm",
        "description": "Set an alarm",
        "parameters": {
            "type": "object",
            "properties": {"time": {"type": "string"}, "loud": {"type": "boolean"}, "volume": {"type": "number"}},
            "required": ["time", "loud"],
        },
    },
    {"name": "list_alarms", "description": "List all alarms"},
]


def build_tokenizer(
    template=CHATML,
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos="<|im_start|>",
    eos="<|im_end|>",
    vocab_size=400,
):
    """A small byte-level BPE tokenizer trained on CORPUS, with a chat template and its special tokens
    (the first is the unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=special[0],
        pad_token=eos,
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def tiny_config(vocab_size):
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }


def write_tiny_model(path, seed=0, tokenizer=None):
    """A random 2-layer llama and its tokenizer (by default the small BPE one), saved as an mlx-lm directory."""
    from mlx_lm.models import llama
    from mlx_lm.utils import save_model

    tokenizer = tokenizer or build_tokenizer()
    config = tiny_config(len(tokenizer))
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, model)
    config["eos_token_id"] = tokenizer.eos_token_id
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


PLAUSIBLE_REQUESTS = [
    "Please set an alarm at nine for the gym",
    "What will the weather be in Madrid on Friday?",
    "List every alarm I have set this week",
]


def scripted_sampler(tokenizer, text):
    """A sampler that writes `text` token by token, then end-of-turn, whatever the log-probs."""
    ids = iter(tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] * 256)
    return lambda logprobs: mx.array([next(ids)])


SAMPLERS = []  # the make_sampler options of each request the writer wrote in this test


@pytest.fixture(autouse=True)
def plausible_requests(monkeypatch):
    """The tiny random model writes gibberish that the synthesis checks rightly refuse, so its
    request writer samples these texts in turn instead (a test may replace the list): the real
    writer, sampling, labelling, training and answering all run (the sampler's options are kept in
    SAMPLERS). The embedded model writes its own."""
    from unittest import mock

    from mlx_ttsi.models import EMBEDDED_NAME
    from mlx_ttsi.synthesis import ModelWriter

    script = list(PLAUSIBLE_REQUESTS)
    original = ModelWriter.write_request
    counter = iter(range(10**9))
    SAMPLERS.clear()

    def write_request(self, state, request, tools, *args):
        if self.loaded.name == EMBEDDED_NAME:
            return original(self, state, request, tools, *args)
        text = script[next(counter) % len(script)]

        def sampler(**options):
            SAMPLERS.append(options)
            return scripted_sampler(self.loaded.tokenizer, text)

        with mock.patch("mlx_ttsi.synthesis.make_sampler", sampler):
            return original(self, state, request, tools, *args)

    monkeypatch.setattr(ModelWriter, "write_request", write_request)
    return script


# what the tiny model's batched writer writes instead of its gibberish: the rest of a call's arguments
# after '{"', per tool, in turn; the request for a call states every value of it
SCRIPTED_CALLS = {
    "get_weather": ['city": "Madrid", "days": 3}', 'city": "Oslo", "unit": "fahrenheit"}', 'city": "Lima"}'],
    "set_alarm": ['time": "06:15", "loud": true}', 'time": "21:40", "loud": false, "volume": 7}'],
}
TINY_VOCABULARY = 1000  # models with fewer tokens than this are the tests' tiny random ones


@pytest.fixture(autouse=True)
def scripted_writer(monkeypatch):
    """The tiny random model's batched writer (writer.BatchWriter) writes SCRIPTED_CALLS, requests that
    state their values and PLAUSIBLE_REQUESTS, so that verification, the informative filter, training
    and answering all run on real examples; the embedded models write their own."""
    import re

    from mlx_ttsi.writer import BatchWriter

    original, turns = BatchWriter.write, iter(range(10**9))

    def text_for(prompt):
        head = re.search(r'"name": "([^"]+)", "(?:arguments|parameters)": \{"$', prompt)
        if head:
            calls = SCRIPTED_CALLS[head.group(1)]
            return calls[next(turns) % len(calls)]
        wanted = re.search(r"plain words:\n(\{.*\})\nReply", prompt)
        if wanted:
            values = [str(v).lower() if isinstance(v, bool) else str(v) for v in json.loads(wanted.group(1)).values()]
            return "Please do this for " + " and ".join(values) + ' today"'
        return PLAUSIBLE_REQUESTS[next(turns) % len(PLAUSIBLE_REQUESTS)] + '"'

    def write(self, prompts, max_tokens, stop=None, **options):
        if self.model.args.vocab_size >= TINY_VOCABULARY:
            return original(self, prompts, max_tokens, stop, **options)
        texts = [text_for(prompt) for prompt in prompts]
        return [text[: stop(text)] if stop and stop(text) is not None else text for text in texts]

    monkeypatch.setattr(BatchWriter, "write", write)
    return original  # the real BatchWriter.write, for the writer's own tests


@pytest.fixture
def train_on_seen(monkeypatch):
    """The `train_on` examples each request got; only eval's oracle ablations (the gold answer) pass any."""
    from mlx_ttsi.turn import Turn

    seen, original = [], Turn.synthesize

    def spy(self):
        seen.append(self.request.examples if self.request.plan.source == "given" else None)
        return original(self)

    monkeypatch.setattr(Turn, "synthesize", spy)
    return seen


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and config locations."""
    monkeypatch.setenv("MLX_TTSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLX_TTSI_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny(tiny_model_dir):
    """A freshly loaded tiny model (LoadedModel), float32."""
    from mlx_ttsi import models

    return models.load(str(tiny_model_dir), precision="float32")


@pytest.fixture
def tools():
    from mlx_ttsi.tools import parse_tools

    return parse_tools(TOOLS)


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    return path


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def embedded_available(name="smollm2-135m"):
    from mlx_ttsi.errors import ModelError
    from mlx_ttsi.models import embedded_gguf_path

    try:
        embedded_gguf_path(name)
        return True
    except ModelError:
        return False


def require_embedded(name="smollm2-135m"):
    """Skip without the embedded model; fail instead under MLX_TTSI_REQUIRE_EMBEDDED=1 (make test, CI)."""
    if not embedded_available(name):
        from mlx_ttsi.embedded import EMBEDDED

        hint = EMBEDDED[name].install_hint()
        if os.environ.get("MLX_TTSI_REQUIRE_EMBEDDED") == "1":
            pytest.fail(f"the embedded model {name} is not installed: {hint}")
        pytest.skip(f"embedded model {name} not installed: {hint}")


@pytest.fixture(scope="session")
def embedded_agent():
    """The embedded SmolLM2 agent; CI (make test) requires it, a bare checkout skips."""
    require_embedded()
    from mlx_ttsi.agent import Agent

    return Agent.load("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_agent():
    """The embedded Qwen2.5-Coder-0.5B agent (joined and imported into the user's cache once, like
    the SmolLM2 one: session fixtures run before the per-test cache is set)."""
    require_embedded("qwen2.5-coder-0.5b")
    from mlx_ttsi.agent import Agent

    return Agent.load("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def embedded_requests():
    """The project's own requests for the embedded-model tests, by id: {request, tools, tool}."""
    path = FIXTURES / "requests.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: the embedded-model tests need it")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


@pytest.fixture
def trap():
    """A loopback HTTP server that answers any GET with a small JSON schema and records its path:
    a test asserts that nothing ever came to it."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}/s.json"
    server.hits = hits
    yield server
    server.shutdown()
    server.server_close()
