"""Self-awareness: relative softmax scoring over candidate actions (the paper's estimator).

For candidates a_1..a_N with log-likelihoods l_n, p_n = softmax(l)_n and the margin
u = p_(1) - p_(2); the request is uncertain when u < tau. A candidate is an offered tool name
(the default) or the whole call the model would write for that tool; l_n is the summed or the
per-token mean log-likelihood.
"""

from dataclasses import asdict, dataclass, replace

import numpy as np


def relative_softmax(scores):
    """Probabilities p_n = exp(l_n - max l) / sum_k exp(l_k - max l)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    shifted = np.exp(scores - scores.max())
    return shifted / shifted.sum()


def margin(probs):
    """Gap between the two most likely candidates (1.0 when there is only one)."""
    ordered = np.sort(np.asarray(probs))[::-1]
    if ordered.size == 0:
        return 0.0
    return float(ordered[0] - (ordered[1] if ordered.size > 1 else 0.0))


@dataclass
class Uncertainty:
    score: float
    threshold: float
    uncertain: bool
    candidates: list  # [{"name", "prob", "logprob", "tokens"}], most likely first
    form: str = "name"
    norm: str = "sum"
    name_score: float = None  # the margin over tool names (or whole calls)
    argument_score: float = None  # the smallest margin among the answer's argument choices
    label_agrees: bool = None  # whether the grounded self-label equals the answer (None: not checked)

    @property
    def best(self):
        return self.candidates[0]["name"] if self.candidates else None

    def as_dict(self):
        return asdict(self)

    def with_arguments(self, argument_score, label_agrees=None):
        """The request's uncertainty over names and arguments together.

        u = min(name margin, argument margin), and 0 when the self-label disagrees with the answer."""
        score = 0.0 if label_agrees is False else min(self.name_score, argument_score)
        return replace(
            self,
            score=round(score, 6),
            uncertain=bool(score < self.threshold),
            argument_score=round(argument_score, 6),
            label_agrees=label_agrees,
        )


def estimate(names, scores, logprobs, lengths, threshold, form="name", norm="sum"):
    probs = relative_softmax(scores)
    u = margin(probs)
    candidates = [
        {"name": n, "prob": round(float(p), 6), "logprob": round(float(lp), 4), "tokens": int(k)}
        for n, p, lp, k in zip(names, probs, logprobs, lengths)
    ]
    candidates.sort(key=lambda c: -c["prob"])
    return Uncertainty(round(u, 6), threshold, bool(u < threshold), candidates, form, norm, name_score=round(u, 6))
