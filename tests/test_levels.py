"""Quantisation levels, their LEVEL words, and stochastic rounding onto them (host/levels.py)."""

import itertools
import time
import warnings

import numpy as np
import pytest
from ziphalp.host.levels import (
    GRID_CANDIDATES,
    grid_levels,
    level_words,
    optimal_levels,
    quantisation_variance,
    sample_intervals,
    uniform_levels,
)
from ziphalp.hw.params import LEVEL


def test_uniform_levels():
    assert np.array_equal(uniform_levels(2), [-1.0, -0.5, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        uniform_levels(0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_uniform_levels_are_exact_on_the_level_grid(bits):
    words = level_words(uniform_levels(bits))
    assert words.dtype == np.int16
    assert words[0] == -(1 << LEVEL.frac) and words[-1] == 1 << LEVEL.frac
    np.testing.assert_array_equal(words * LEVEL.scale, uniform_levels(bits))
    np.testing.assert_array_equal(grid_levels(uniform_levels(bits)), uniform_levels(bits))


def test_level_words_round_to_nearest_and_stay_monotone():
    levels = np.array([-1.0, -0.3, -0.2999, 0.001, 0.0021, 0.5 + 1 / 512 - 1e-9, 1.0])
    words = level_words(levels)
    np.testing.assert_array_equal(words, [-256, -77, -77, 0, 1, 128, 256])
    assert np.all(np.diff(words) >= 0)
    assert np.all(np.abs(words * LEVEL.scale - levels) <= LEVEL.scale / 2)
    np.testing.assert_array_equal(grid_levels(levels), words / 256)
    # random non-decreasing levels: nearest, monotone, ends kept
    rng = np.random.default_rng(0)
    for _ in range(20):
        levels = np.sort(rng.uniform(-1, 1, 17))
        levels[0], levels[-1] = -1, 1
        words = level_words(levels)
        assert np.all(np.diff(words) >= 0)
        assert words[0] == -256 and words[-1] == 256
        assert np.all(np.abs(words / 256 - levels) <= 1 / 512)
    # per-feature tables round row by row
    assert level_words(np.array([[-1, 0.5, 1], [-1, -0.5, 1]])).shape == (2, 3)


@pytest.mark.parametrize("bad, match", [
    ([1.0, -1.0], "non-decreasing"),
    ([-1.0, np.nan, 1.0], "finite"),
    ([-1.0, 2.0], "LEVEL range"),
    ([-2.01, 1.0], "LEVEL range"),
    ([0.5], "m >= 2"),
])
def test_level_words_reject(bad, match):
    with pytest.raises(ValueError, match=match):
        level_words(np.array(bad))


def test_variance_formula():
    # 0.25 between -0.5 and 0.5 (k = 1): (0.5 - 0.25)(0.25 + 0.5) = 0.1875; on a level: 0
    assert quantisation_variance([0.25, 1.0, -1.0], uniform_levels(1)) == pytest.approx(0.1875)


@pytest.mark.parametrize("bits,candidates,seed", [(1, 9, 0), (2, 11, 1), (2, 9, 2), (3, 12, 3),
                                                  (2, 5, 4)])
def test_optimal_levels_match_brute_force(bits, candidates, seed):
    """The programme's optimum equals the best of every choice of interior grid points."""
    v = np.random.default_rng(seed).uniform(-1, 1, 60) ** 3
    grid = np.linspace(-1, 1, candidates)
    s = 1 << bits
    brute = min(quantisation_variance(v, np.r_[-1.0, grid[list(c)], 1.0])
                for c in itertools.combinations(range(1, candidates - 1), s - 1))
    levels = optimal_levels(v, bits, candidates=candidates)
    assert len(levels) == s + 1 and levels[0] == -1 and levels[-1] == 1
    assert np.all(np.diff(levels) > 0)
    assert quantisation_variance(v, levels) == pytest.approx(brute, rel=1e-12)


def test_optimal_levels_beat_uniform_on_skewed_data():
    v = np.clip(np.random.default_rng(4).normal(0, 0.3, 200_000), -1, 1)
    for bits in (2, 3, 4):
        ratio = (quantisation_variance(v, uniform_levels(bits))
                 / quantisation_variance(v, optimal_levels(v, bits)))
        assert ratio > 1.2, (bits, ratio)       # measured 1.39 to 1.58 on this data


def test_default_candidates_are_the_level_grid():
    assert GRID_CANDIDATES == 513
    v = np.random.default_rng(6).standard_t(3, 5000) / 4
    for bits in (3, 8):
        levels = optimal_levels(v, bits)
        np.testing.assert_array_equal(grid_levels(levels), levels)
        assert len(np.unique(levels)) == len(levels)


def test_optimal_levels_of_a_million_values_take_seconds():
    v = np.clip(np.random.default_rng(7).normal(0, 0.25, 1_000_000), -1, 1)
    start = time.perf_counter()
    levels = optimal_levels(v, 8)
    seconds = time.perf_counter() - start
    assert len(levels) == 257
    assert seconds < 5, seconds                  # about 0.2 s on one core


def test_per_feature_levels():
    rng = np.random.default_rng(8)
    scales = np.array([0.05, 0.2, 0.6, 1.0, 0.1])
    x = np.clip(rng.normal(0, 1, (4000, len(scales))) * scales, -1, 1)
    for bits, candidates in ((2, 33), (3, None)):
        per = optimal_levels(x, bits, candidates=candidates, per_feature=True)
        assert per.shape == (len(scales), (1 << bits) + 1)
        for f in range(len(scales)):
            np.testing.assert_array_equal(per[f], optimal_levels(x[:, f], bits,
                                                                 candidates=candidates))
        shared = optimal_levels(x, bits, candidates=candidates)
        total = quantisation_variance(x, per)
        assert total == pytest.approx(sum(quantisation_variance(x[:, f], per[f])
                                          for f in range(len(scales))), rel=1e-12)
        assert total < 0.9 * quantisation_variance(x, shared)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        optimal_levels(x.ravel(), 2, per_feature=True)


def test_double_sampling_is_unbiased_and_independent():
    """Mean of Q is v; mean of Q1*Q2 is v^2 (independent); mean of Q1^2 is v^2 + variance."""
    rng = np.random.default_rng(5)
    levels = optimal_levels(rng.uniform(-1, 1, 1000), 2)
    v = np.array([-0.9, -0.31, 0.0, 0.42, 0.77])
    n = 200_000
    j, up = sample_intervals(np.broadcast_to(v, (n, len(v))), levels, rng, samples=2)
    q1, q2 = levels[j + up[0]], levels[j + up[1]]
    var = (levels[j[0] + 1] - v) * (v - levels[j[0]])
    bound = 5 * np.sqrt(np.maximum(var, 1e-12) / n) + 1e-12     # 5 standard errors
    assert np.all(np.abs(q1.mean(0) - v) <= bound)
    assert np.all(np.abs((q1 * q2).mean(0) - v * v) <= 5 * np.sqrt((var + v * v) / n) * 2)
    # one sample squared carries the quantisation variance (the hidden ridge term)
    assert np.all(np.abs((q1 * q1).mean(0) - v * v - var) <= 5 / np.sqrt(n))
    assert np.all(j == j[0])                     # both samples share the interval


def test_zero_width_intervals_are_exact():
    """Equal neighbouring levels (as rounding to the grid can make) divide by nothing."""
    rng = np.random.default_rng(9)
    for levels in ([-1.0, 0.0, 0.0, 0.5, 1.0], [-1.0, -0.5, 0.0, 1.0, 1.0],
                   [-1.0, -1.0, 0.25, 1.0, 1.0]):
        levels = np.array(levels)
        v = np.unique(levels)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            j, up = sample_intervals(np.broadcast_to(v, (1000, len(v))), levels, rng)
            assert quantisation_variance(v, levels) == 0
        np.testing.assert_array_equal(levels[j + up[0]], np.broadcast_to(v, (1000, len(v))))
        assert np.all(levels[j] <= v) and np.all(v <= levels[j + 1])
