"""Request first, then its call: the paper's direction, verified.

The model writes requests like the user's (sampled, side by side), then answers each with its own
schema-guided call; an example is kept when verify.py passes it. Its label is the model's own
answer, so the base model already says it back: the informative filter keeps none of these.
"""

from ..synthesis import WRITER_USER, Synthesis, request_problem, unlabelled
from ..verify import example_problem
from ..writer import quoted_line

NAME = "requests"
HELP = "the model writes requests like the user's, then its own call for each (the paper's direction); verified"

REQUEST_TOKENS = 64
CANDIDATES_PER_EXAMPLE = 2


def synthesize(job):
    """Up to k verified examples from CANDIDATES_PER_EXAMPLE * k requests written side by side."""
    if not job.self_label:  # the model's own answer did not read as a call (formats.py)
        return unlabelled()
    prompts = [
        job.prompt(WRITER_USER.format(request=job.original)) + '"' for _ in range(CANDIDATES_PER_EXAMPLE * job.k)
    ]
    requests = job.writer.write(prompts, REQUEST_TOKENS, stop=quoted_line, temperature=job.temperature, seed=job.seed)
    synthesis = Synthesis()
    for request in requests:
        if len(synthesis.examples) >= job.k:
            break
        synthesis.attempts += 1
        request = request.strip()
        calls = job.label(request) if request_problem(request, job.original) is None else []  # labelling costs
        problem = example_problem(request, calls, job.tools, job.original, job.values, synthesis.examples)
        if problem:
            synthesis.reject(problem)
        else:
            synthesis.examples.append({"request": request, "calls": calls, "source": NAME})
    return job.keep(synthesis)
