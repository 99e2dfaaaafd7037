"""Quantisation levels over [-1, 1] (uniform, and variance-optimal as in ZipML),
their words in the engine's level table, and unbiased stochastic rounding onto
them with one or two independent samples.

A value ``v`` in ``[l_j, l_{j+1}]`` rounded stochastically to one of the two
levels has variance ``(l_{j+1} - v)(v - l_j)``. :func:`optimal_levels` picks
``2**bits + 1`` levels from ``candidates`` grid points (the ends -1 and 1
always included) that minimise the summed variance over a data set, by dynamic
programming over the candidates (ZipML's construction), for the whole data set
or for each feature on its own. The data enter only through per-gap counts and
first and second moments, so a million values cost one histogram; the programme
is ``O(s * (M - s)**2)`` for ``s`` intervals and ``M`` candidates, vectorised
with NumPy. The default candidates are the engine's ``LEVEL`` grid over [-1, 1]
(multiples of 1/256), so the chosen levels are exactly representable.

The engine holds one level table of ``LEVEL`` words (:func:`level_words`); the
host must round against the levels the engine decodes, :func:`grid_levels`.

Hand-written: no packaged library solves this particular interval programme.
This module does no I/O and knows nothing of the beat stream
(:mod:`ziphalp.host.quantize` packs it).
"""

from __future__ import annotations

import numpy as np
from ziphalp.hw.params import LEVEL

__all__ = [
    "GRID_CANDIDATES",
    "grid_levels",
    "level_words",
    "optimal_levels",
    "quantisation_variance",
    "sample_intervals",
    "uniform_levels",
]

#: Points of the ``LEVEL`` grid over [-1, 1] (``2 * 2**LEVEL.frac + 1``): the
#: default candidates of :func:`optimal_levels`.
GRID_CANDIDATES = 2 * (1 << LEVEL.frac) + 1

#: Cost-matrix entries :func:`optimal_levels` holds at once (bounds memory, ~16 MB).
_COST_ENTRIES = 1 << 21


def uniform_levels(bits: int) -> np.ndarray:
    """``2**bits + 1`` evenly spaced levels from -1 to 1.

    For ``bits <= LEVEL.frac + 1`` (every precision the engine runs) they lie
    exactly on the ``LEVEL`` grid.
    """
    if not 1 <= bits <= 12:
        raise ValueError(f"bits must be 1..12, not {bits}")
    return np.linspace(-1.0, 1.0, (1 << bits) + 1)


def level_words(levels: np.ndarray) -> np.ndarray:
    """Levels rounded to the nearest ``LEVEL`` words (value ``word / 2**LEVEL.frac``).

    Rounding to nearest is monotone, so non-decreasing levels stay
    non-decreasing; close levels may become equal (a zero-width interval, which
    the samplers handle). The first and last words are the rounded first and
    last levels.

    Parameters
    ----------
    levels : array of float, shape (m,) or (d, m)
        Non-decreasing levels (along the last axis), ``m >= 2``.

    Returns
    -------
    numpy.ndarray of int16, the shape of ``levels``

    Raises
    ------
    ValueError
        Levels that are not finite or not non-decreasing, fewer than two, or a
        word outside the ``LEVEL`` range.
    """
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim not in (1, 2) or levels.shape[-1] < 2:
        raise ValueError(f"levels must be (m,) or (d, m) with m >= 2, not {levels.shape}")
    if not np.all(np.isfinite(levels)):
        raise ValueError("levels must be finite")
    if np.any(np.diff(levels, axis=-1) < 0):
        raise ValueError("levels must be non-decreasing")
    words = np.rint(levels * 2.0 ** LEVEL.frac)
    if words.min() < LEVEL.min_int or words.max() > LEVEL.max_int:
        raise ValueError(f"levels must lie in the LEVEL range [{LEVEL.min_int * LEVEL.scale}, "
                         f"{LEVEL.max_int * LEVEL.scale}]")
    return words.astype(np.int16)


def grid_levels(levels: np.ndarray) -> np.ndarray:
    """The levels the engine decodes for ``levels``: ``level_words(levels) / 2**LEVEL.frac``.

    Quantise against these (not the unrounded levels) so that sampling is
    unbiased with respect to what the engine computes with.
    """
    return level_words(levels) * LEVEL.scale


def _check_levels(levels: np.ndarray) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim not in (1, 2) or levels.shape[-1] < 2:
        raise ValueError(f"levels must be (m,) or (d, m) with m >= 2, not {levels.shape}")
    if np.any(levels[..., 0] != -1.0) or np.any(levels[..., -1] != 1.0):
        raise ValueError("levels must run from -1 to 1")
    if np.any(np.diff(levels, axis=-1) < 0):
        raise ValueError("levels must be non-decreasing")
    return levels


def _intervals(v: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interval ``j`` of each value (``levels[j] <= v <= levels[j+1]``), its ends.

    ``levels`` is 1-D, or ``(d, m)`` with the features on the last axis of ``v``.
    Among equal levels the last is taken, so only a value equal to the top
    level can land in a zero-width interval.
    """
    m = levels.shape[-1]
    if levels.ndim == 1:
        j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, m - 2)
        return j, levels[j], levels[j + 1]
    d = levels.shape[0]
    if v.shape[-1] != d:
        raise ValueError(f"per-feature levels for {d} features, values of shape {v.shape}")
    # One search over all features: offset feature f's levels by 4 f (levels lie in [-1, 1]).
    shift = 4.0 * np.arange(d)
    flat = (levels + shift[:, None]).ravel()
    pos = np.searchsorted(flat, v + shift, side="right") - 1 - m * np.arange(d)
    j = np.clip(pos, 0, m - 2)
    col = np.arange(d)
    return j, levels[col, j], levels[col, j + 1]


def quantisation_variance(values: np.ndarray, levels: np.ndarray) -> float:
    """Summed variance of stochastic rounding of ``values`` (clipped to [-1, 1]) onto ``levels``.

    Parameters
    ----------
    values : array
        Any shape for 1-D ``levels``; ``(n, d)`` for per-feature levels.
    levels : array, shape (m,) or (d, m)
        Non-decreasing levels from -1 to 1, one table or one per feature.
    """
    levels = _check_levels(levels)
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    if levels.ndim == 1:
        v = v.ravel()
    elif v.ndim != 2:
        raise ValueError(f"per-feature levels need (n, d) values, not {v.shape}")
    _, lo, hi = _intervals(v, levels)
    return float(np.sum((hi - v) * (v - lo)))


def _gap_moments(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Prefix sums over the gaps of ``grid`` of count, sum v and sum v^2, per feature.

    ``v`` is ``(n, F)``; returns ``(F, 3, M)`` with ``[f, :, i]`` covering gaps ``< i``.
    """
    m = len(grid)
    features = v.shape[1]
    gap = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, m - 2)
    gap += (m - 1) * np.arange(features)          # one histogram for all features
    gap, v = gap.ravel(), v.ravel()
    prefix = np.zeros((features, 3, m))
    for row, weights in enumerate((None, v, v * v)):
        counts = np.bincount(gap, weights=weights, minlength=features * (m - 1))
        prefix[:, row, 1:] = np.cumsum(counts.reshape(features, m - 1), axis=1)
    return prefix


def _solve(prefix: np.ndarray, grid: np.ndarray, s: int) -> np.ndarray:
    """Indices into ``grid`` of the ``s + 1`` best levels, for each of ``F`` programmes.

    ``prefix`` is ``(F, 3, M)`` from :func:`_gap_moments`.
    """
    features, _, m = prefix.shape
    # cost[f, a, b]: variance of the values between grid[a] and grid[b] if they are
    # consecutive levels = sum (g_b - v)(v - g_a) = -S2 + (g_a + g_b) S1 - g_a g_b S0
    s0, s1, s2 = (prefix[:, i, None, :] - prefix[:, i, :, None] for i in range(3))
    cost = -s2 + (grid[:, None] + grid[None, :]) * s1 - np.outer(grid, grid) * s0
    below = np.tril_indices(m)
    cost[:, below[0], below[1]] = np.inf
    # Interval t (0-based) starts at a grid point a in [t, w + t) and ends at
    # b in (t, w + t]: room is left for the other intervals, w = m - s points each.
    w = m - s
    rows = np.arange(features)[:, None]
    best = np.zeros((features, w))                   # best[:, i]: cost to grid point t + i
    best[:, 1:] = np.inf                             # layer 0 starts at grid point 0 only
    choice = np.zeros((s, features, w), dtype=np.int64)
    for t in range(s):
        total = best[:, :, None] + cost[:, t:t + w, t + 1:t + 1 + w]   # [f, a, b]
        choice[t] = np.argmin(total, axis=1)
        best = total[rows, choice[t], np.arange(w)]
    # Walk back from the last grid point (index w - 1 of the last layer's window).
    picks = np.empty((features, s + 1), dtype=np.int64)
    picks[:, s] = m - 1
    col = np.full(features, w - 1)
    for t in range(s - 1, -1, -1):
        col = choice[t, np.arange(features), col]    # start a of interval t, at t + col
        picks[:, t] = t + col
    return picks


def optimal_levels(values: np.ndarray, bits: int, candidates: int | None = None,
                   per_feature: bool = False) -> np.ndarray:
    """The ``2**bits + 1`` levels from ``candidates`` grid points with least total variance.

    Parameters
    ----------
    values : array
        The data (clipped to [-1, 1]); any shape, or ``(n, d)`` with ``per_feature``.
    bits : int
        Precision k: ``s = 2**bits`` intervals.
    candidates : int, optional
        Grid points over [-1, 1] the levels are chosen from (ends included).
        Defaults to :data:`GRID_CANDIDATES`, the ``LEVEL`` grid, so the levels
        are exactly what the engine's level table holds.
    per_feature : bool
        Choose one set of levels for each column of ``values`` instead of one
        for all of them (for variance analysis: the engine holds one table).

    Returns
    -------
    numpy.ndarray
        Increasing levels, ``levels[..., 0] == -1`` and ``levels[..., -1] == 1``:
        shape ``(2**bits + 1,)``, or ``(d, 2**bits + 1)`` with ``per_feature``.
    """
    if not 1 <= bits <= 12:
        raise ValueError(f"bits must be 1..12, not {bits}")
    s = 1 << bits
    m = GRID_CANDIDATES if candidates is None else candidates
    if m < s + 1:
        raise ValueError(f"{m} candidates cannot hold {s + 1} levels")
    grid = np.linspace(-1.0, 1.0, m)
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    if not per_feature:
        return grid[_solve(_gap_moments(v.reshape(-1, 1), grid), grid, s)[0]]
    if v.ndim != 2:
        raise ValueError(f"per-feature levels need (n, d) values, not {v.shape}")
    out = np.empty((v.shape[1], s + 1))
    step = max(1, _COST_ENTRIES // (m * m))          # features solved at once
    for start in range(0, v.shape[1], step):
        block = slice(start, start + step)
        out[block] = grid[_solve(_gap_moments(v[:, block], grid), grid, s)]
    return out


def sample_intervals(values: np.ndarray, levels: np.ndarray, rng: np.random.Generator,
                     samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased stochastic rounding of ``values`` onto ``levels``, ``samples`` times.

    All samples of a value share its interval ``j`` (``levels[j] <= v <=
    levels[j + 1]``) and differ only in whether they round up: sample ``i`` is
    ``levels[j + up[i]]``, with ``up[i]`` independent and true with probability
    ``(v - levels[j]) / (levels[j + 1] - levels[j])``, so ``E[sample] = v``.
    With two samples this is ZipML's double sampling: ``(j, up1, up2)`` stores
    both in ``k + 2`` bits. A zero-width interval (equal levels) holds only a
    value equal to it, which never rounds up.

    This is the float64 reference; :mod:`ziphalp.host.quantize` is the fast
    path that produces the engine's fields.

    Returns
    -------
    j : numpy.ndarray of int
        Interval index, the shape of ``values``.
    up : numpy.ndarray of bool
        Shape ``(samples, *values.shape)``.
    """
    levels = _check_levels(levels)
    if levels.ndim != 1:
        raise ValueError("sample_intervals takes one table of levels")
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    j, lo, hi = _intervals(v, levels)
    width = hi - lo
    p = np.divide(v - lo, width, out=np.zeros_like(v), where=width > 0)
    up = rng.random((samples, *v.shape)) < p
    return j, up
