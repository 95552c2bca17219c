import math

from mlx_ttsi.decoding import normalized
from mlx_ttsi.uncertainty import estimate, margin, relative_softmax

import numpy as np
import pytest


def test_relative_softmax_matches_the_paper_formula():
    scores = [-1.0, -2.5, -0.3]
    top = max(scores)
    expected = [math.exp(s - top) / sum(math.exp(t - top) for t in scores) for s in scores]
    assert np.allclose(relative_softmax(scores), expected)
    assert math.isclose(sum(relative_softmax(scores)), 1.0)


def test_relative_softmax_is_shift_invariant_and_stable_for_very_negative_scores():
    scores = np.array([-1000.0, -1001.0, -1003.0])
    assert np.allclose(relative_softmax(scores), relative_softmax(scores + 1000))
    assert np.all(np.isfinite(relative_softmax(scores)))


def test_margin_is_gap_between_top_two():
    assert margin([0.7, 0.2, 0.1]) == pytest.approx(0.5)
    assert margin([0.1, 0.45, 0.45]) == pytest.approx(0.0)
    assert margin([1.0]) == 1.0


def test_estimate_flags_uncertain_below_threshold_and_sorts_candidates():
    u = estimate(["a", "b", "c"], [-3.0, -1.0, -1.1], [-3.0, -1.0, -1.1], [1, 1, 1], threshold=0.5)
    assert [c["name"] for c in u.candidates] == ["b", "c", "a"]
    assert u.uncertain and u.score < 0.5
    assert u.best == "b"
    sure = estimate(["a", "b"], [0.0, -10.0], [0.0, -10.0], [1, 1], threshold=0.5)
    assert not sure.uncertain and sure.score > 0.99


def test_mean_normalisation_divides_by_token_count():
    # a long candidate with higher total likelihood loses under sum but not under mean
    logprobs, lengths = [-6.0, -4.0], [6, 1]
    assert np.argmax(normalized(logprobs, lengths, "sum")) == 1
    assert np.argmax(normalized(logprobs, lengths, "mean")) == 0
    with pytest.raises(ValueError):
        normalized(logprobs, lengths, "max")
