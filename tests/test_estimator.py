"""The double-sampling estimator, checked statistically through the golden model.

One sample ``a`` (values in [-1, 1]), a model ``w`` and a label ``b`` are fixed; the
host quantises ``a`` afresh many times (ZipML's stochastic rounding onto a k-bit
level table) and the golden model, the engine's exact fixed-point arithmetic,
accumulates the gradients of all copies in one mini-batch. The mean gradient it
applies is then compared with the float gradients:

* double sampling (``q1`` in the dot product, an independent ``q2`` outside) is
  unbiased: the mean equals ``(a.w - b) a`` within a 5-sigma confidence bound;
* a single sample (``q1 = q2``) is biased by a hidden ridge term: the mean
  equals ``(a a^T + D) w - a b`` with ``D`` the diagonal of the quantisation
  variances ``(l_{j+1} - a)(a - l_j)``, and is many sigmas away from the
  unbiased gradient.

The sample has coordinates in the middle of their intervals, where the variance
(and so the bias) is largest, and the precision is low (k = 2), so the bias is
large against the noise. Standard errors are estimated from independent batches.
"""

import numpy as np
import pytest
from ziphalp.host import quantize
from ziphalp.host.levels import grid_levels, level_words, uniform_levels
from ziphalp.hw.params import LABEL, LEVEL, EngineParams
from ziphalp.sim.golden import GoldenEngine

K = 2                     # precision: levels -1, -1/2, 0, 1/2, 1
D = 6
BATCH = 4000              # quantised copies per mini-batch
BATCHES = 12              # independent batches, for the standard error
SHIFT = 10                # sigma ~ E * 2**12 LSB: its rounding is far below the noise
PARAMS = EngineParams(beat_bits=16, lanes=2, max_k=K, max_features=D, max_batch=BATCH,
                      class_costs=False, l2_decay=False)


def mean_gradients(sampling: str, a: np.ndarray, w_words: np.ndarray, label: int,
                   seed: int) -> np.ndarray:
    """Per batch, the mean gradient the golden model applies (float, normalised units)."""
    levels = grid_levels(uniform_levels(K))
    golden = GoldenEngine(PARAMS)
    golden.load_levels(level_words(levels))
    rng = np.random.default_rng(seed)
    step = 2.0 ** -SHIFT
    out = []
    for _ in range(BATCHES):
        golden.load_model(0, w_words)
        golden.configure(D, BATCH, SHIFT, k=K, double=sampling == "double")
        fields = quantize.quantize_features(np.tile(a, (BATCH, 1)), levels, K, sampling, rng)
        golden.train(fields, np.full(BATCH, label))
        delta = (w_words - golden.read_model(0, D)) * 2.0 ** -PARAMS.model_frac
        out.append(delta / (step * BATCH))
    assert not golden.overflow and not golden.clipped
    return np.array(out)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    # mid-interval coordinates (largest variance), on the LEVEL grid
    a = np.round((rng.integers(-2, 2, D) * 0.5 + 0.25) * 2 ** LEVEL.frac) / 2 ** LEVEL.frac
    w_words = np.round(rng.uniform(-0.5, 0.5, D) * 2 ** PARAMS.model_frac).astype(np.int64)
    label = int(round(0.3 * 2 ** LABEL.frac))
    w = w_words * 2.0 ** -PARAMS.model_frac
    b = label * 2.0 ** -LABEL.frac
    levels = grid_levels(uniform_levels(K))
    j = np.clip(np.searchsorted(levels, a, side="right") - 1, 0, len(levels) - 2)
    variance = (levels[j + 1] - a) * (a - levels[j])
    unbiased = (a @ w - b) * a
    ridge = (np.outer(a, a) + np.diag(variance)) @ w - a * b
    return a, w_words, label, unbiased, ridge


def z_scores(batches: np.ndarray, expected: np.ndarray) -> np.ndarray:
    mean = batches.mean(axis=0)
    standard_error = batches.std(axis=0, ddof=1) / np.sqrt(len(batches))
    return (mean - expected) / standard_error


def test_double_sampling_is_unbiased(problem):
    a, w_words, label, unbiased, ridge = problem
    batches = mean_gradients("double", a, w_words, label, seed=1)
    assert np.all(np.abs(z_scores(batches, unbiased)) < 5)
    # and the ridge-biased value is rejected: the test can tell the two apart
    assert np.max(np.abs(z_scores(batches, ridge))) > 10


def test_single_sample_has_the_ridge_bias(problem):
    a, w_words, label, unbiased, ridge = problem
    batches = mean_gradients("single", a, w_words, label, seed=2)
    assert np.all(np.abs(z_scores(batches, ridge)) < 5)
    assert np.max(np.abs(z_scores(batches, unbiased))) > 10
