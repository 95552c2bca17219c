"""The paper's TT-SI: one similar request written by the model and labelled by its own call, unverified.

Eval's `ttsi-paper(-all)` runs it with K 1 and lr 1e-4, the paper's schedule, so that the table shows
the paper's method on our models.
"""

from ..synthesis import ModelWriter

NAME = "paper"
HELP = "one similar request and the model's own call for it, unverified (the paper's TT-SI, with K 1)"


def synthesize(job):
    """Up to k requests sampled by the model, each labelled by its schema-guided call."""
    return ModelWriter(job.model).synthesize(
        job.original,
        job.tools,
        job.k,
        job.seed,
        state=job.new_state(),
        temperature=job.temperature,
        decoder_options=job.decoder_options,
        cancelled=job.cancelled,
    )
