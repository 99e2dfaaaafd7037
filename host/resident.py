"""Resident data on the host side: the store image a board keeps, and its sampler table.

A board built with resident data (``EngineParams.resident``; the section
"Resident data" of :mod:`ziphalp.hw.params` has the exact semantics) holds a
data set in its own memory and feeds the engine from it (``RUN``), drawing
fresh stochastic roundings on chip each run, so an epoch needs no host
traffic. This module builds what the host loads there (``LOAD_DATA``, one
:class:`~ziphalp.hw.protocol.Region` each) and chooses the walk of a run:

* **Codes.** Each normalised feature value ``x`` in [-1, 1] is stored once as
  an 8-bit code ``c = clip(rint(x * CODE_SCALE) + CODE_ZERO, 1, 255)``
  (:func:`encode_codes`), value ``(c - CODE_ZERO) / CODE_SCALE``
  (:func:`code_values`): a grid of step 1/127 on which -1, 0 and 1 are exact,
  so the stored value is within 1/254 of ``x``. That rounding is deterministic
  and happens once: whatever the engine later does, it does to the code value.
  :func:`code_rows` lays the codes out as the ``CODES`` region.
* **Labels.** ``LABEL`` words (:func:`ziphalp.host.quantize.quantize_labels`),
  one per sample, as the ``LABELS`` region (:func:`label_words`).
* **Sampler table.** ``SAMPLER_ENTRIES`` uint32 entries ``j | t << 8``, one per
  code (:func:`sampler_table`, :func:`sampler_bytes`): the interval ``j`` of the
  level table the code's value lies in and the threshold ``t`` (in ``2**-16``)
  with which a sampling lane rounds it up. The table carries the precision,
  the level set and the sampling mode, so one resident copy of the codes
  serves every run.

Unbiasedness (double and single sampling). For a code of value ``x`` in
``[l_j, l_{j+1})`` (``l_j < l_{j+1}``), with ``p = (x - l_j) / (l_{j+1} - l_j)``
and ``t = round(p * 2**16)``, a lane rounds up when its 16-bit draw ``r`` is
below ``t``. For ``r`` uniform on ``0 .. 2**16 - 1`` that has probability
exactly ``t / 2**16``, so the rounded value ``q`` has
``E[q] = l_j + (t / 2**16) (l_{j+1} - l_j)`` and, since ``|t / 2**16 - p| <=
2**-17``, ``|E[q] - x| <= 2**-17 (l_{j+1} - l_j)``: unbiased for the code value
to within ``2**-17`` of the interval width (at most ``2**-16`` for levels over
[-1, 1]; a code on a level is rounded exactly). The draws are xorshift32
outputs, not ideal uniform numbers: over the generator's period each nonzero
16-bit half occurs ``2**16`` times and zero ``2**16 - 1`` times, a deviation of
about ``2**-32`` that the bound neglects. Double sampling's two roundings use
the low and the high half of one draw, independent to that accuracy, so
``E[q1 q2] = E[q1] E[q2]``, which is ``x**2`` to within ``2**-16 |x| w + 2**-34
w**2`` for an interval of width ``w``; a single sample's square is biased:
``E[q**2] = E[q]**2 + (l_{j+1} - m)(m - l_j)`` with ``m = E[q]``, the rounding
variance.

Walks. ``RUN`` feeds resident sample ``(first + u * stride) mod n`` as its
``u``-th sample. :func:`epoch_walk` picks ``first`` and ``stride`` for an
epoch: with a stride coprime with ``n`` the walk visits every sample once (a
permutation). A shuffled epoch draws both from the host's generator; that is a
weaker shuffle than a uniformly random permutation (``n`` times Euler's
``phi(n)`` orders, each an arithmetic progression mod ``n``), the price of
shuffling without moving data.

Replayed data. A board with a replay store instead (``EngineParams.replay``;
"Replayed data" in :mod:`ziphalp.hw.params`) keeps the stream beats the host
packs, quantised once (:func:`ziphalp.host.quantize.encode_epoch`), and
``REPLAY`` feeds them again each epoch: no host traffic either, but the samples
are fixed at load time (the same roundings every epoch) and an epoch can only
start at another sample (:func:`replay_walk`), not visit them in a new order.
:func:`replay_capacity` and :func:`replay_does_not_fit` size it.

This module does no I/O (the driver's :meth:`ziphalp.host.driver.Board.load_data`
and :meth:`~ziphalp.host.driver.Board.run` send what it builds).
"""

from __future__ import annotations

import math

import numpy as np
from ziphalp.hw.params import (
    CODE_BITS,
    CODE_SCALE,
    CODE_ZERO,
    LABEL,
    SAMPLER_ENTRIES,
    SAMPLER_T_BITS,
    EngineParams,
)

from . import quantize

__all__ = [
    "T_ONE",
    "capacity",
    "code_rows",
    "code_values",
    "does_not_fit",
    "encode_codes",
    "epoch_walk",
    "label_words",
    "replay_capacity",
    "replay_does_not_fit",
    "replay_walk",
    "sample_beats",
    "sampler_bytes",
    "sampler_table",
]

#: The threshold that always rounds up (probability 1): ``2**16``.
T_ONE = 1 << (SAMPLER_T_BITS - 1)
#: Codes go from 1 to this; code 0 is unused (its sampler entry is code 1's).
_CODE_MAX = (1 << CODE_BITS) - 1


# --- codes ---------------------------------------------------------------------------

def encode_codes(features: np.ndarray) -> np.ndarray:
    """Normalised features to the 8-bit codes the resident store holds.

    Parameters
    ----------
    features : array of float, any shape
        Values in [-1, 1] (normalised, the bias column included).

    Returns
    -------
    ndarray of uint8, the same shape
        ``clip(rint(x * CODE_SCALE) + CODE_ZERO, 1, 255)``: -1, 0 and 1 become
        1, 128 and 255; every code value is within ``1 / (2 * CODE_SCALE)`` of
        ``x`` (``rint`` rounds half to even).

    Raises
    ------
    ValueError
        A value outside [-1, 1] or NaN.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.size and not (x.min() >= -1.0 and x.max() <= 1.0):    # False for NaN
        raise ValueError("features must be normalised to [-1, 1] before they become codes")
    return np.clip(np.rint(x * CODE_SCALE) + CODE_ZERO, 1, _CODE_MAX).astype(np.uint8)


def code_values(codes: np.ndarray) -> np.ndarray:
    """The values of codes: ``(c - CODE_ZERO) / CODE_SCALE`` (float64)."""
    return (np.asarray(codes, dtype=np.float64) - CODE_ZERO) / CODE_SCALE


# --- the sampler table -----------------------------------------------------------------

def sampler_table(levels: np.ndarray, k: int, sampling: str) -> np.ndarray:
    """The sampler table for a level table, precision and sampling mode.

    Parameters
    ----------
    levels : ndarray of float, shape (2**k + 1,)
        Non-decreasing levels covering [-1, 1] on the ``LEVEL`` grid, those the
        engine decodes (as :func:`ziphalp.host.quantize.quantize_features` takes
        them; :func:`ziphalp.host.levels.grid_levels`).
    k : int
        Precision (1..8): the table indexes intervals ``0 .. 2**k - 1``.
    sampling : {"double", "single", "nearest"}
        ``"double"`` and ``"single"`` give the same stochastic table (``CONFIGURE``'s
        ``double`` chooses one or two roundings); ``"nearest"`` a deterministic one.

    Returns
    -------
    ndarray of uint32, shape (SAMPLER_ENTRIES,)
        Entry ``c``: ``j | t << 8`` for the value ``x`` of code ``c``, ``j`` the
        interval with ``l_j <= x < l_{j+1}`` (the top level ``x = l_{2**k}`` in
        interval ``2**k - 1``; where neighbouring levels are equal, the last
        interval that starts at ``x``, as :mod:`~ziphalp.host.quantize` picks it).

        * stochastic: ``t = round(p * 2**16)`` with ``p = (x - l_j) / (l_{j+1} -
          l_j)`` (0 for a zero-width interval), so a value on the top level has
          ``t = 2**16`` and one on another level ``t = 0``. Unbiased to within
          ``2**-17`` of the interval width: ``|E[q] - x| <= 2**-17 (l_{j+1} -
          l_j)`` for a uniform 16-bit draw (module docstring).
        * nearest: ``t = 2**16`` when ``x`` is at least as close to ``l_{j+1}`` as
          to ``l_j`` (ties up), else 0: exactly the level
          ``quantize_features(x, levels, k, "nearest")`` decodes to.

        Code 0 (no feature value has it) gets code 1's entry.

    Raises
    ------
    ValueError
        Levels of the wrong count, off the grid or not covering [-1, 1], ``k``
        out of range, or an unknown sampling.
    """
    k = quantize._check_k(k)
    levels = quantize._check_levels(levels, k)
    if sampling not in quantize.SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(quantize.SAMPLINGS)}, "
                         f"not {sampling!r}")
    x = code_values(np.arange(SAMPLER_ENTRIES))
    x[0] = x[1]
    j = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, (1 << k) - 1)
    low, high = levels[j], levels[j + 1]
    if sampling == "nearest":
        t = np.where(2 * x >= low + high, T_ONE, 0)     # exact in float64; ties go up
    else:
        width = high - low
        p = np.divide(x - low, width, out=np.zeros_like(x), where=width > 0)
        t = np.rint(p * T_ONE).astype(np.int64)
    return (j.astype(np.uint32) | t.astype(np.uint32) << np.uint32(8)).astype(np.uint32)


def sampler_bytes(table: np.ndarray) -> bytes:
    """The ``SAMPLER`` region: the table's entries as little-endian uint32."""
    table = np.asarray(table)
    if table.shape != (SAMPLER_ENTRIES,) or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"a sampler table is {SAMPLER_ENTRIES} integers, not "
                         f"{table.dtype} {table.shape}")
    if table.min() < 0 or table.max() >= 1 << (8 + SAMPLER_T_BITS):
        raise ValueError(f"sampler entries are j | t << 8 with t < 2**{SAMPLER_T_BITS}")
    return table.astype("<u4").tobytes()


# --- the store image -------------------------------------------------------------------

def code_rows(codes: np.ndarray, params: EngineParams) -> bytes:
    """The ``CODES`` region of a resident set of ``n`` samples of ``d`` features.

    Sample ``s`` takes rows ``s*R .. s*R + R - 1`` (``R =
    params.resident_rows_for(d)``) of ``params.lanes`` codes; feature ``f`` is in
    row ``s*R + f // lanes``, column ``f % lanes``; the columns past ``d`` in a
    sample's last row are ``CODE_ZERO`` (the engine ignores them). Row ``r``
    is bytes ``r * lanes ..`` of the result, so the region fills whole beats.

    Parameters
    ----------
    codes : ndarray of uint8, shape (n, d)
        :func:`encode_codes` of the normalised features the store keeps (without
        the bias column when the runs make it on the board: ``RUN``'s ``bias``).
    params : EngineParams
        The engine's ``lanes`` (the capacity is :func:`capacity`'s business).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError(f"codes must be a uint8 (n, d) array, not {codes.dtype} "
                         f"{codes.shape}")
    n, d = codes.shape
    rows = params.resident_rows_for(d)
    image = np.full((n, rows * params.lanes), CODE_ZERO, dtype=np.uint8)
    image[:, :d] = codes
    return image.tobytes()


def label_words(labels: np.ndarray, params: EngineParams) -> bytes:
    """The ``LABELS`` region: ``LABEL`` words (int16, little-endian), label ``s`` of
    sample ``s``, padded with zeros to whole beats.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        ``LABEL`` words (:func:`ziphalp.host.quantize.quantize_labels`).
    params : EngineParams
        The engine's ``beat_bits``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be LABEL words (int16), not {y.dtype} {y.shape}")
    if y.size and (y.min() < LABEL.min_int or y.max() > LABEL.max_int):
        raise ValueError("labels must be LABEL words (int16)")
    per_beat = params.beat_bits // 16
    words = np.zeros(-(-len(y) // per_beat) * per_beat, dtype="<i2")
    words[:len(y)] = y
    return words.tobytes()


def capacity(params: EngineParams, d: int, bias: bool = False) -> int:
    """The most samples of ``d`` features a board's resident store holds:
    ``min(resident_samples, resident_rows // R)``, ``R = ceil(d' / lanes)`` rows a
    sample for the ``d' = d - bias`` features stored (with ``bias`` the last
    feature is the constant 1.0 the board makes itself; ``RUN``'s ``bias``); 0 for
    a board without resident data."""
    if not params.resident:
        return 0
    rows = params.resident_rows_for(d - bool(bias))
    return params.resident_samples if rows == 0 else min(params.resident_samples,
                                                         params.resident_rows // rows)


def does_not_fit(params: EngineParams, n: int, d: int, bias: bool = False) -> str | None:
    """Why ``n`` samples of ``d`` features (the last the constant bias if ``bias``)
    do not fit a board's resident store, or None when they do.

    The reason is a phrase naming the limit, e.g. ``"the board has no resident
    data"``, ``"the resident store holds at most 4096 samples (labels), not
    5000"`` or ``"the resident store holds at most 248 samples of 257 features
    (8192 rows of 8 codes, 33 rows a sample), not 300"``.
    """
    if not params.resident:
        return "the board has no resident data"
    if n > params.resident_samples:
        return (f"the resident store holds at most {params.resident_samples} samples "
                f"(labels), not {n}")
    rows = params.resident_rows_for(d - bool(bias))
    if n * rows > params.resident_rows:
        stored = " (the bias made on the board)" if bias else ""
        return (f"the resident store holds at most {capacity(params, d, bias)} samples of "
                f"{d} features{stored} ({params.resident_rows} rows of {params.lanes} codes, "
                f"{rows} rows a sample), not {n}")
    return None


# --- walks -----------------------------------------------------------------------------

def epoch_walk(n: int, shuffle: bool, rng: np.random.Generator | None = None
               ) -> tuple[int, int]:
    """``first`` and ``stride`` of a ``RUN`` of ``n`` samples that visits each of the
    ``n`` resident samples once.

    Unshuffled: ``(0, 1)`` (``(0, 0)`` for ``n == 1``, where the stride must be
    below ``n``). Shuffled: ``first`` uniform on ``0 .. n - 1`` and ``stride``
    uniform among ``1 .. n - 1`` coprime with ``n`` (so the walk is a
    permutation), both from ``rng``; not a uniformly random permutation
    (module docstring).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"a walk covers at least one sample, not {n!r}")
    if n == 1:
        return 0, 0
    if not shuffle:
        return 0, 1
    if not isinstance(rng, np.random.Generator):
        raise ValueError("a shuffled walk needs a numpy.random.Generator")
    strides = np.flatnonzero(np.gcd(np.arange(n), n) == 1)
    first = int(rng.integers(n))
    stride = int(strides[rng.integers(len(strides))])
    assert math.gcd(stride, n) == 1
    return first, stride


# --- replayed data ---------------------------------------------------------------------

def sample_beats(params: EngineParams, d: int, k: int, double: bool) -> int:
    """Beats of one streamed (and replayed) sample: the label beat and the feature
    beats."""
    return 1 + params.beats_for(d, k, double)


def replay_capacity(params: EngineParams, d: int, k: int, double: bool) -> int:
    """The most samples of ``d`` features (the bias included: the host packs it) a
    board's replay store holds at precision ``k``: ``replay_beats // (1 +
    ceil(d / K))``; 0 for a board without one."""
    return params.replay_beats // sample_beats(params, d, k, double) if params.replay else 0


def replay_does_not_fit(params: EngineParams, n: int, d: int, k: int,
                        double: bool) -> str | None:
    """Why ``n`` samples of ``d`` features at precision ``k`` do not fit a board's
    replay store, or None when they do; the reason names the limit, e.g. ``"the
    replay store holds at most 1985 samples of 64 features at k = 2 (65536 beats,
    33 a sample), not 2000"``."""
    if not params.replay:
        return "the board has no replay store"
    beats = sample_beats(params, d, k, double)
    if n * beats > params.replay_beats:
        return (f"the replay store holds at most {replay_capacity(params, d, k, double)} "
                f"samples of {d} features at k = {k} ({params.replay_beats} beats, {beats} a "
                f"sample), not {n}")
    return None


def replay_walk(n: int, shuffle: bool, rng: np.random.Generator | None = None) -> int:
    """The sample a replayed epoch of ``n`` samples starts at: 0 unshuffled, else
    uniform on ``0 .. n - 1`` from ``rng`` (the epoch then wraps round the store;
    the order is the one the samples were loaded in, rotated)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"an epoch covers at least one sample, not {n!r}")
    if not shuffle or n == 1:
        return 0
    if not isinstance(rng, np.random.Generator):
        raise ValueError("a shuffled epoch needs a numpy.random.Generator")
    return int(rng.integers(n))
