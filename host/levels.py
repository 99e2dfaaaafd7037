"""Quantisation levels over [-1, 1] (uniform, and variance-optimal as in ZipML),
and unbiased stochastic rounding onto them with one or two independent samples.

A value ``v`` in ``[l_j, l_{j+1}]`` rounded stochastically to one of the two
levels has variance ``(l_{j+1} - v)(v - l_j)``. :func:`optimal_levels` picks
``2**bits + 1`` levels from ``candidates`` grid points (the ends -1 and 1
always included) that minimise the summed variance over a data set, by dynamic
programming over the candidates (ZipML's construction). The data enter only
through per-gap counts and first and second moments, so a million values cost
one histogram; the programme is ``O(s * M**2)`` for ``s`` intervals and ``M``
candidates, vectorised with NumPy.

Hand-written: no packaged library solves this particular interval programme.
"""

from __future__ import annotations

import numpy as np

__all__ = ["optimal_levels", "quantisation_variance", "sample_intervals", "uniform_levels"]


def uniform_levels(bits: int) -> np.ndarray:
    """``2**bits + 1`` evenly spaced levels from -1 to 1."""
    if not 1 <= bits <= 12:
        raise ValueError(f"bits must be 1..12, not {bits}")
    return np.linspace(-1.0, 1.0, (1 << bits) + 1)


def _check_levels(levels: np.ndarray) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or len(levels) < 2 or levels[0] != -1.0 or levels[-1] != 1.0:
        raise ValueError("levels must be a 1-D array from -1 to 1")
    if np.any(np.diff(levels) <= 0):
        raise ValueError("levels must be strictly increasing")
    return levels


def quantisation_variance(values: np.ndarray, levels: np.ndarray) -> float:
    """Summed variance of stochastic rounding of ``values`` (clipped to [-1, 1]) onto ``levels``."""
    levels = _check_levels(levels)
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), -1.0, 1.0)
    j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, len(levels) - 2)
    return float(np.sum((levels[j + 1] - v) * (v - levels[j])))


def optimal_levels(values: np.ndarray, bits: int, candidates: int | None = None) -> np.ndarray:
    """The ``2**bits + 1`` levels from ``candidates`` grid points with least total variance.

    Parameters
    ----------
    values : array
        The data (clipped to [-1, 1]); any shape.
    bits : int
        Precision k: ``s = 2**bits`` intervals.
    candidates : int, optional
        Grid points over [-1, 1] the levels are chosen from (ends included).
        Defaults to ``max(256, 4 * s + 1)``.

    Returns
    -------
    numpy.ndarray
        Increasing levels, ``levels[0] == -1`` and ``levels[-1] == 1``.
    """
    s = 1 << bits
    m = max(256, 4 * s + 1) if candidates is None else candidates
    if m < s + 1:
        raise ValueError(f"{m} candidates cannot hold {s + 1} levels")
    grid = np.linspace(-1.0, 1.0, m)
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), -1.0, 1.0)
    gap = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, m - 2)
    # prefix sums over gaps of count, sum v, sum v^2: P[i] covers gaps < i
    prefix = np.zeros((3, m))
    for row, weights in enumerate((None, v, v * v)):
        prefix[row, 1:] = np.cumsum(np.bincount(gap, weights=weights, minlength=m - 1))
    # cost[a, b]: variance of the values between grid[a] and grid[b] if they are
    # consecutive levels = sum (g_b - v)(v - g_a) = -S2 + (g_a + g_b) S1 - g_a g_b S0
    s0, s1, s2 = (p[None, :] - p[:, None] for p in prefix)
    cost = -s2 + (grid[:, None] + grid[None, :]) * s1 - np.outer(grid, grid) * s0
    cost[np.tril_indices(m)] = np.inf
    best = np.full(m, np.inf)
    best[0] = 0.0
    choice = np.zeros((s, m), dtype=np.int64)
    for t in range(s):
        total = best[:, None] + cost                 # [a, b]: end the interval at b from a
        choice[t] = np.argmin(total, axis=0)
        best = total[choice[t], np.arange(m)]
    picks = [m - 1]
    for t in range(s - 1, -1, -1):
        picks.append(int(choice[t, picks[-1]]))
    return grid[picks[::-1]]


def sample_intervals(values: np.ndarray, levels: np.ndarray, rng: np.random.Generator,
                     samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased stochastic rounding of ``values`` onto ``levels``, ``samples`` times.

    All samples of a value share its interval ``j`` (``levels[j] <= v <=
    levels[j + 1]``) and differ only in whether they round up: sample ``i`` is
    ``levels[j + up[i]]``, with ``up[i]`` independent and true with probability
    ``(v - levels[j]) / (levels[j + 1] - levels[j])``, so ``E[sample] = v``.
    With two samples this is ZipML's double sampling: ``(j, up1, up2)`` stores
    both in ``k + 2`` bits.

    Returns
    -------
    j : numpy.ndarray of int
        Interval index, the shape of ``values``.
    up : numpy.ndarray of bool
        Shape ``(samples, *values.shape)``.
    """
    levels = _check_levels(levels)
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, len(levels) - 2)
    lo = levels[j]
    p = (v - lo) / (levels[j + 1] - lo)
    up = rng.random((samples, *v.shape)) < p
    return j, up
