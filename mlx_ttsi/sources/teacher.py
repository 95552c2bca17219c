"""TT-D: a stronger teacher writes the examples (a local model, or an OpenAI-compatible URL).

A teacher may well know better than the model's own first choice, so its examples are not made
from the self-label; with --same-tool only those that call the tool the model picks are kept.
"""

NAME = "teacher"
HELP = "a teacher model or endpoint writes similar requests and their calls (TT-D, --mode ttd)"


def synthesize(job):
    """Up to k examples from the teacher (synthesis.ModelWriter or EndpointTeacher)."""
    return job.teacher().synthesize(
        job.original,
        job.tools,
        job.k,
        job.seed,
        same_tool=job.same_tool,
        temperature=job.temperature,
        decoder_options=job.decoder_options,
        cancelled=job.cancelled,
    )
