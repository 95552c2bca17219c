"""The previous TT-SI: the user's request with its own self-label, and twins of it.

K-1 twins (twins.py) swap every stated value of the request and of its label for another, to teach
copying values from the request. Every example carries the model's own answer, so the LoRA can at
best learn to say it back (docs/results.md); kept for comparison (`--examples-from twins`).
"""

from ..synthesis import Synthesis, unlabelled
from ..twins import twins

NAME = "twins"
HELP = "the request with its own self-label, and K-1 twins of it with other values (the previous TT-SI)"


def synthesize(job):
    """The request with its self-label, then up to k-1 twins; all of them, unfiltered."""
    if not job.self_label:  # the model's own answer did not read as a call (formats.py)
        return unlabelled()
    own = {"messages": job.conversation, "request": job.original, "calls": job.self_label, "source": "self-label"}
    examples = [own] + twins(job.conversation, job.self_label, job.tools, job.k - 1, job.seed)
    return Synthesis(examples=examples, attempts=job.k)
