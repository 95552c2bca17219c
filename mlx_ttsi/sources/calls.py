"""Call first, then request: labels that never come from the model's answer.

For each example the model writes a call of a tool it may use (sampled values; required arguments
and a random subset of the optional ones, kept inside the tool's schema by grammar.py), then, in the
style of the user's request and without it (REQUEST_ASKS), the requests a user would send for exactly
that call, side by side. The call is the label, right by construction once verify.py finds every value stated in a
request and the call valid for its schema; an optional argument the request leaves out is dropped from
the call first (verify.stated_only), and of the requests that pass, the one that keeps most of the
call's arguments is its example.
"""

import json
import random

from ..datetimes import spoken
from ..decoding import Vocabulary
from ..grammar import ArgumentsProcessor, advance, arguments_start, completion
from ..self_check import conformed
from ..synthesis import Synthesis, unlabelled
from ..verify import example_problem, stated_only
from ..writer import closed_json, quoted_line

NAME = "calls"
HELP = "the model writes example calls (sampled values), then the request for each; verified"

CALL_ASK = "Write an example call of the tool {name} with realistic, specific values for the arguments: {keys}."
STYLED_ASK = (
    'Example of a message from a user: "{original}"\n\nWrite a new message in that style from a user who wants '
    "this call of {name}, stating every one of its values in plain words:\n{arguments}\nReply with the message only."
)
# without the user's message, which the styled ask's requests copy or borrow values from
PLAIN_ASK = (
    "Write a message from a user who wants this call of {name}, stating every one of its values in plain "
    "words:\n{arguments}\nReply with the message only."
)
CALL_TOKENS = 16  # a call's budget: this, and TOKENS_PER_KEY for each of its arguments
TOKENS_PER_KEY = 28  # a key and a value of up to grammar.MAX_STRING_CHARS
MAX_OPTIONAL = 3  # optional arguments an example passes at most: a user states a few values, not twenty
REQUEST_TOKENS = 64
REQUEST_ASKS = (STYLED_ASK, PLAIN_ASK)  # one request of each call from each ask, all in one batch
CANDIDATES_PER_EXAMPLE = 2  # calls written per example wanted: some fail verification


def synthesize(job):
    """Up to CANDIDATES_PER_EXAMPLE * k candidates, each verified (verify.example_problem)."""
    if not job.self_label:  # the model's own answer did not read as a call (formats.py)
        return unlabelled()
    plans = key_plans(job)
    calls = write_calls(job, plans)
    requests = write_requests(job, calls)
    synthesis, by_name = Synthesis(), {tool.name: tool for tool in job.tools}
    for call, written in zip(calls, requests):
        synthesis.attempts += 1
        if call is None:
            synthesis.reject("call does not parse")
            continue
        example, problem = best_example(job, call, written, by_name[call["name"]], synthesis.examples)
        if problem:
            synthesis.reject(problem)
        else:
            synthesis.examples.append(example)
    return job.keep(synthesis)


def best_example(job, call, requests, tool, examples):
    """(example, None) from the request that verifies (verify.example_problem) with the most of the
    call's arguments kept, the first of them on a tie; (None, the first request's problem) when none does."""
    verified, problems = [], []
    for request in requests:
        fitted = stated_only(call, request, tool)
        problem = example_problem(request, [fitted], job.tools, job.original, job.values, examples)
        if problem:
            problems.append(problem)
        else:
            verified.append((request, fitted))
    if not verified:
        return None, problems[0]
    request, fitted = max(verified, key=lambda pair: len(pair[1]["arguments"]))  # max keeps the first
    # the label in the tool's documented date and time forms (its request says them in words)
    return {"request": request.strip(), "calls": conformed([fitted], job.tools), "source": NAME}, None


def key_plans(job):
    """(tool, argument names) per candidate: tools in turn, each with its required arguments and a
    random half of its optional ones, at most MAX_OPTIONAL of them (seeded), in the schema's order."""
    rng = random.Random(job.seed)
    by_name = {tool.name: tool for tool in job.tools}
    plans = []
    for index in range(CANDIDATES_PER_EXAMPLE * job.k):
        tool = by_name[job.tool_names[index % len(job.tool_names)]]
        required = set(tool.required)
        optional = [key for key in tool.properties if key not in required and rng.random() < 0.5]
        chosen = set(rng.sample(optional, min(len(optional), MAX_OPTIONAL)))
        plans.append((tool, [key for key in tool.properties if key in required or key in chosen]))
    return plans


def write_calls(job, plans):
    """The sampled call of each plan, its arguments held to the planned keys and their schemas
    (grammar.py); None where it does not read as JSON arguments."""
    fmt, heads, prompts = job.fmt, [], []
    for tool, keys in plans:
        ask = CALL_ASK.format(name=tool.name, keys=", ".join(keys) or "none (it takes no arguments)")
        heads.append('{"' if keys else "{}")
        prompts.append(job.prompt(ask) + _head(fmt, tool.name) + heads[-1])
    todo = [i for i, head in enumerate(heads) if head == '{"']
    vocabulary = Vocabulary.of(job.model.tokenizer)
    starts = [advance(arguments_start(plans[i][0].properties, plans[i][1]), heads[i]) for i in todo]
    budgets = [call_budget(plans[i][1], start) for i, start in zip(todo, starts)]
    processors = [[ArgumentsProcessor(start, vocabulary, n)] for start, n in zip(starts, budgets)]
    written = job.writer.write(
        [prompts[i] for i in todo],
        budgets,
        stop=_closed_after('"'),
        temperature=job.temperature,
        seed=job.seed,
        processors=processors,
    )
    texts = dict(zip(todo, written))
    return [_call(tool.name, heads[i] + texts.get(i, "")) for i, (tool, _) in enumerate(plans)]


def call_budget(keys, start):
    """Tokens a call of these keys may take: CALL_TOKENS and TOKENS_PER_KEY per key, and never fewer
    than its shortest close (one character a token) needs."""
    return max(CALL_TOKENS + TOKENS_PER_KEY * len(keys), len(completion(start)))


def write_requests(job, calls):
    """The requests written for each call, one from each of REQUEST_ASKS (sampled after an opening
    quote, all in one batch); [] where there is no call."""
    todo = [(i, ask) for i, call in enumerate(calls) if call is not None for ask in REQUEST_ASKS]
    prompts = [
        job.prompt(
            ask.format(
                original=job.original,
                name=calls[i]["name"],
                arguments=json.dumps(said(calls[i]["arguments"]), ensure_ascii=False),
            )
        )
        + '"'
        for i, ask in todo
    ]
    written = job.writer.write(
        prompts, REQUEST_TOKENS, stop=quoted_line, temperature=job.temperature, seed=job.seed + 1
    )
    texts = [[] for _ in calls]
    for (i, _), text in zip(todo, written):
        texts[i].append(text.strip())
    return texts


def said(arguments):
    """The call's arguments as its request should state them: dates and times in words
    (datetimes.spoken), so that an example teaches the tool's format rather than copying it."""
    return {key: spoken(value) for key, value in arguments.items()}


def _head(fmt, name):
    """The call's text before its arguments object: the model's own format when its arguments are JSON,
    else a plain JSON call (the label is read as JSON either way)."""
    return fmt.start + fmt.head(name) if fmt.guided else '{"name": "' + name + '", "arguments": '


def _closed_after(lead):
    """closed_json for a text that continues `lead` (written after the object's opening brace)."""
    closed = closed_json()

    def stop(text):
        end = closed(lead + text)
        return None if end is None else end - len(lead)

    return stop


def _call(name, text):
    """{name, arguments} from the arguments' JSON text, or None."""
    try:
        arguments, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    return {"name": name, "arguments": arguments} if isinstance(arguments, dict) else None
