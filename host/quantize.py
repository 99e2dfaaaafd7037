"""Quantisation and bit packing: normalised data to the engine's beat stream.

A feature value ``v`` in [-1, 1] becomes a *field* over the ``2**k + 1`` levels
of the engine's level table (the layout is the "Data encoding (ZipML)" section
of :mod:`ziphalp.hw.params`): the interval ``j`` with ``l_j <= v <= l_{j+1}``
and one or two "round up" bits.

* ``"double"``: two independent bits ``up1``, ``up2``, each 1 with probability
  ``(v - l_j) / (l_{j+1} - l_j)``; the engine's two samples ``l[j + up1]`` and
  ``l[j + up2]`` are unbiased and independent (ZipML's double sampling).
* ``"single"``: one such bit, used for both samples.
* ``"nearest"``: ``up = 1`` iff ``v`` is at least as close to ``l_{j+1}`` as to
  ``l_j`` (deterministic rounding, single-field format).

The levels must be the ones the engine decodes, on the ``LEVEL`` grid
(:func:`ziphalp.host.levels.grid_levels`), so that sampling is unbiased with
respect to the engine's arithmetic. Quantisation runs in float32: values are
first rounded to float32 (a relative error of ``2**-24``, far below the ``LEVEL``
step ``2**-8``); the interval and the nearest level of that value are then
exact, the probability of rounding up exact to within ``2**-24``.
Uniform levels take an arithmetic fast path; other levels a lookup table over
the ``LEVEL`` grid cells (every level is a grid point, so a cell lies inside
one interval), which finds exactly the interval a binary search would.

Model words are exact: a weight word ``w`` has the value ``w * 2**-model_frac``
and multiplies the level values directly (:func:`words_to_coefficients`).
Labels become ``LABEL`` words, nearest. In the HALP phases every label beat
also carries the sample's index (``indices`` of the packers: bits 16..31, bytes
2..3 of the beat, little-endian; beats of at least 32 bits). This module does
no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from ziphalp.hw.params import LABEL, LEVEL, SHIFT_MAX, EngineParams, field_bits

from .levels import uniform_levels

__all__ = [
    "MAX_K",
    "SAMPLINGS",
    "coefficients_to_words",
    "decode_fields",
    "encode_epoch",
    "field_dtype",
    "frames",
    "pack_samples",
    "quantize_features",
    "quantize_labels",
    "sample_bytes",
    "shift_to_step",
    "step_to_shift",
    "unpack_fields",
    "words_to_coefficients",
]

#: Largest precision k of any engine (``EngineParams.max_k`` is at most 8).
MAX_K = 8
#: The ways a value becomes a field.
SAMPLINGS = ("double", "single", "nearest")

#: Values quantised and packed per block: the block's buffers stay in cache.
_BLOCK_VALUES = 1 << 15
#: ``LEVEL`` grid cells over [-1, 1]: cell ``g`` is ``[g, g + 1) / 2**LEVEL.frac - 1``.
_CELLS = 2 << LEVEL.frac


# --- checks --------------------------------------------------------------------------

def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise ValueError(f"precision k must be an integer 1..{MAX_K}, not {k!r}")
    return int(k)


def _is_double(sampling: str) -> bool:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    return sampling == "double"


def field_dtype(k: int, double: bool) -> np.dtype:
    """The unsigned dtype that holds a field: uint8 up to 8 bits, else uint16."""
    return np.dtype(np.uint8 if field_bits(_check_k(k), double) <= 8 else np.uint16)


def _check_levels(levels: np.ndarray, k: int) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64)
    count = (1 << k) + 1
    if levels.shape != (count,):
        raise ValueError(f"precision k={k} needs {count} levels, not an array of shape "
                         f"{levels.shape}")
    if not np.all(np.isfinite(levels)) or np.any(np.diff(levels) < 0):
        raise ValueError("levels must be finite and non-decreasing")
    if levels[0] > -1.0 or levels[-1] < 1.0:
        raise ValueError(f"levels must cover [-1, 1], not [{levels[0]}, {levels[-1]}]")
    words = levels * 2.0 ** LEVEL.frac
    if (np.any(words != np.rint(words)) or words[0] < LEVEL.min_int
            or words[-1] > LEVEL.max_int):
        raise ValueError("levels must be LEVEL words / 2**LEVEL.frac (the engine's level "
                         "table); round them with ziphalp.host.levels.grid_levels")
    return levels


def _check_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"features must be a numeric (n, d) array, not {x.dtype} {x.shape}")
    if x.size and not (x.min() >= -1.0 and x.max() <= 1.0):   # False for NaN
        raise ValueError("features must be normalised to [-1, 1] before quantisation")
    return x


def _check_indices(indices: np.ndarray | None, n: int, params: EngineParams):
    """``indices`` as uint16 (or ``None``), checked to fit the label beat."""
    if indices is None:
        return None
    i = np.asarray(indices)
    if i.shape != (n,) or not np.issubdtype(i.dtype, np.integer):
        raise ValueError(f"indices must be {n} integers, not {i.dtype} {i.shape}")
    if n and (i.min() < 0 or i.max() > 0xFFFF):
        raise ValueError("indices must be 0..65535 (bits 16..31 of the label beat)")
    if params.beat_bits < 32:
        raise ValueError(f"sample indices ride in bits 16..31 of the label beat: they need "
                         f"beats of at least 32 bits, not {params.beat_bits}")
    return i.astype("<u2")


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} LABEL words (int16), not {y.dtype} {y.shape}")
    if n and (y.min() < LABEL.min_int or y.max() > LABEL.max_int):
        raise ValueError("labels must be LABEL words (int16)")
    return y


# --- quantisation --------------------------------------------------------------------

class _Quantiser:
    """Fields of one precision, sampling and level table, a block of rows at a time."""

    def __init__(self, levels: np.ndarray, k: int, sampling: str,
                 rng: np.random.Generator | None):
        self.k = _check_k(k)
        self.double = _is_double(sampling)
        self.stochastic = sampling != "nearest"
        if self.stochastic and not isinstance(rng, np.random.Generator):
            raise ValueError(f"{sampling} sampling needs a numpy.random.Generator")
        self.rng = rng
        levels = _check_levels(levels, self.k)
        self.dtype = field_dtype(self.k, self.double)
        s = 1 << self.k
        self.uniform = bool(np.array_equal(levels, uniform_levels(self.k)))
        if not self.uniform:
            # Interval of each grid cell; the cell of v = 1 (index _CELLS) is the last one.
            cells = np.arange(_CELLS + 1) * LEVEL.scale - 1.0
            j = np.clip(np.searchsorted(levels, cells, side="right") - 1, 0, s - 1)
            lo, hi = levels[j], levels[j + 1]
            width = hi - lo
            self.j_of_cell = j.astype(self.dtype)
            self.lo_of_cell = lo.astype(np.float32)
            self.inv_of_cell = np.divide(1.0, width, out=np.zeros_like(width),
                                         where=width > 0).astype(np.float32)
            self.mid2_of_cell = (lo + hi).astype(np.float32)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        """Quantise ``x`` (float32, 1-D, in [-1, 1]) into ``out`` (fields, 1-D)."""
        k = self.k
        t = np.empty_like(x)
        if self.uniform:
            # Levels i / 2**(k-1) - 1: with t = v 2**(k-1) (exact) and f = floor(t)
            # (at most 2**(k-1) - 1, so v = 1 is in the last interval), j = f + 2**(k-1)
            # and the probability of up is t - f (exact but for t in (-1, 0)).
            half = np.float32(1 << (k - 1))
            np.multiply(x, half, out=t)
            f = np.floor(t)
            np.minimum(f, half - 1, out=f)
            np.subtract(t, f, out=t)                             # frac in [0, 1]
            f += half
            np.copyto(out, f, casting="unsafe")                  # j, exact: an integer
            if not self.stochastic:
                up = t >= np.float32(0.5)
        else:
            np.multiply(x, np.float32(2.0 ** LEVEL.frac), out=t)  # exact
            np.floor(t, out=t)
            cell = t.astype(np.intp)
            cell += _CELLS // 2                                  # in 0.._CELLS
            np.take(self.j_of_cell, cell, out=out, mode="clip")
            if self.stochastic:
                np.subtract(x, np.take(self.lo_of_cell, cell, mode="clip"), out=t)
                t *= np.take(self.inv_of_cell, cell, mode="clip")           # probability of up
            else:
                mid2 = np.take(self.mid2_of_cell, cell, mode="clip")   # lo + hi
                up = (x + x) >= mid2                             # exact; ties go up
        if not self.stochastic:
            _or_bit(out, up, k)
            return
        u = np.empty_like(x)
        for bit in range(k, k + 1 + self.double):
            self.rng.random(out=u, dtype=np.float32)
            _or_bit(out, u < t, bit)


def _or_bit(fields: np.ndarray, bit: np.ndarray, position: int) -> None:
    """``fields |= bit << position`` for a boolean array ``bit``."""
    shifted = np.left_shift(bit.view(np.uint8), position, dtype=fields.dtype)
    np.bitwise_or(fields, shifted, out=fields)


def _blocks(n: int, d: int):
    """Slices of about ``_BLOCK_VALUES`` values' worth of rows."""
    rows = max(1, _BLOCK_VALUES // max(d, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def quantize_features(features: np.ndarray, levels: np.ndarray, k: int, sampling: str,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Quantise normalised features to the engine's fields.

    Parameters
    ----------
    features : ndarray of float, shape (n, d)
        Values in [-1, 1] (bias column included).
    levels : ndarray of float, shape (2**k + 1,)
        Non-decreasing levels covering [-1, 1], on the ``LEVEL`` grid
        (:func:`ziphalp.host.levels.grid_levels`); equal neighbours allowed.
    k : int
        Precision, 1..:data:`MAX_K`.
    sampling : {"double", "single", "nearest"}
        See the module docstring.
    rng : numpy.random.Generator, optional
        Source of the draws (required unless ``"nearest"``); draw afresh each epoch.

    Returns
    -------
    ndarray of uint8 or uint16 (:func:`field_dtype`), shape (n, d)
        ``j | up1 << k | up2 << (k + 1)`` (double) or ``j | up << k``.

    Raises
    ------
    ValueError
        Features outside [-1, 1] (or NaN), levels of the wrong count or off the
        grid, ``k`` out of range, an unknown sampling, or no generator.
    """
    quantiser = _Quantiser(levels, k, sampling, rng)
    x = _check_features(features)
    n, d = x.shape
    fields = np.empty((n, d), quantiser.dtype)
    for rows in _blocks(n, d):
        block = np.ascontiguousarray(x[rows], dtype=np.float32).ravel()
        quantiser(block, fields[rows].reshape(-1))
    return fields


def decode_fields(fields: np.ndarray, levels: np.ndarray, k: int,
                  double: bool) -> tuple[np.ndarray, np.ndarray]:
    """The engine's two samples of each field: ``q1 = l[j + up1]``, ``q2 = l[j + up2]``.

    For single fields ``q1`` and ``q2`` are the same value.
    """
    k = _check_k(k)
    levels = _check_levels(levels, k)
    f = np.asarray(fields).astype(np.intp)
    j = f & ((1 << k) - 1)
    q1 = levels[j + ((f >> k) & 1)]
    q2 = levels[j + ((f >> (k + 1)) & 1)] if double else q1
    return q1, q2


def quantize_labels(labels: np.ndarray) -> np.ndarray:
    """Labels in [-2, 2) to the nearest ``LABEL`` words (``y * 2**LABEL.frac``), as int16.

    Raises
    ------
    ValueError
        A label outside [-2, 2) or NaN.
    """
    y = np.asarray(labels, np.float64)
    low, high = LABEL.min_int * LABEL.scale, (LABEL.max_int + 1) * LABEL.scale
    if y.size and not (y.min() >= low and y.max() < high):
        raise ValueError(f"labels must lie in [{low:g}, {high:g}) (LABEL range)")
    words = np.rint(y * 2.0 ** LABEL.frac)
    return np.clip(words, LABEL.min_int, LABEL.max_int).astype(np.int16)


# --- packing -------------------------------------------------------------------------

class _Layout:
    """Where the fields of one sample go (the layout of :mod:`ziphalp.hw.params`).

    A beat of at most 64 bits is assembled in one little-endian word of 16, 32
    or 64 bits: with few fields per beat by shifts and ORs, with many by an
    integer matrix product with the weights ``2**(i*b)`` (the fields do not
    overlap, so the sum is their OR). A wider beat is assembled in 64-bit words:
    the fields that start in word ``w`` are summed the same way (the part of a
    field that overflows the word drops out), then the high part of a field that
    straddles into word ``w + 1`` is OR'ed there.
    """

    #: Fields per beat up to which shifts and ORs beat the matrix product.
    FEW = 4

    def __init__(self, params: EngineParams, d: int, k: int, double: bool):
        k = _check_k(k)
        params.check_k(k)
        if not 1 <= d <= params.max_features:
            raise ValueError(f"features must be 1..{params.max_features}, not {d}")
        self.features = d
        self.bits = b = field_bits(k, double)
        self.per_beat = params.values_per_beat(k, double)
        self.beats = params.beats_for(d, k, double)
        self.beat = params.beat_bits // 8
        self.words = -(-params.beat_bits // 64)
        width = 64 if self.words > 1 else max(16, 1 << (params.beat_bits - 1).bit_length())
        self.word = np.dtype(f"<u{width // 8}")
        starts: dict[int, list[int]] = {}
        self.spills = []                      # (slot, next word, right shift)
        for i in range(self.per_beat):
            word, shift = divmod(i * b, 64)
            starts.setdefault(word, []).append(shift)
            if shift + b > 64:
                self.spills.append((i, word + 1, 64 - shift))
        self.groups = []                      # (word, first slot, weights)
        first = 0
        for word, shifts in starts.items():
            weights = np.left_shift(np.uint64(1), np.array(shifts, np.uint64))
            self.groups.append((word, first, weights))
            first += len(shifts)

    @property
    def sample(self) -> int:
        """Bytes per sample."""
        return (1 + self.beats) * self.beat

    def _narrow(self, slots: np.ndarray) -> np.ndarray:
        """Beats of at most 64 bits, ``(r, beats)`` words, from ``(r, beats, K)`` fields."""
        if self.per_beat > self.FEW:
            beats = np.matmul(slots, self.groups[0][2])
            return beats if beats.dtype == self.word else beats.astype(self.word)
        beats = slots[:, :, 0].astype(self.word)
        part = np.empty_like(beats)
        for i in range(1, self.per_beat):
            np.left_shift(slots[:, :, i], i * self.bits, out=part, dtype=self.word)
            beats |= part
        return beats

    def _wide(self, slots: np.ndarray) -> np.ndarray:
        """Beats of more than 64 bits, ``(r, beats, words)`` 64-bit words."""
        r, beats, _ = slots.shape
        words = np.zeros((r, beats, self.words), "<u8")
        for word, first, weights in self.groups:
            np.matmul(slots[:, :, first:first + len(weights)], weights, out=words[:, :, word])
        for i, word, shift in self.spills:
            words[:, :, word] |= slots[:, :, i].astype(np.uint64) >> np.uint64(shift)
        return words

    def pack(self, fields: np.ndarray, labels: np.ndarray, out: np.ndarray,
             indices: np.ndarray | None = None) -> None:
        """Pack ``fields`` (r, d), ``labels`` (r,) and ``indices`` (r,) ``<u2`` or
        ``None`` into ``out`` (r, sample bytes, uint8)."""
        r, d = fields.shape
        per_beat, beats = self.per_beat, self.beats
        if d < beats * per_beat:                 # unused slots of the last beat are zero
            padded = np.zeros((r, beats * per_beat), fields.dtype)
            padded[:, :d] = fields
            fields = padded
        slots = fields.reshape(r, beats, per_beat)
        sample = out.reshape(r, 1 + beats, self.beat)
        if self.words > 1:
            words = self._wide(slots)
        else:
            words = self._narrow(slots)
            if self.word.itemsize == self.beat:  # one word per beat: write in place
                out.view(self.word).reshape(r, 1 + beats)[:, 1:] = words
                words = None
        if words is not None:
            sample[:, 1:] = words.view(np.uint8).reshape(r, beats, -1)[:, :, :self.beat]
        sample[:, 0] = 0
        sample[:, 0, :2] = labels.astype("<i2").view(np.uint8).reshape(r, 2)
        if indices is not None:
            sample[:, 0, 2:4] = indices.view(np.uint8).reshape(r, 2)


def sample_bytes(params: EngineParams, d: int, k: int, double: bool) -> int:
    """Bytes one sample takes in the stream: a label beat plus ``ceil(d / K)`` feature beats."""
    return (1 + params.beats_for(d, k, double)) * (params.beat_bits // 8)


def pack_samples(fields: np.ndarray, labels: np.ndarray, params: EngineParams, k: int,
                 double: bool, indices: np.ndarray | None = None) -> bytes:
    """Pack fields and labels into the engine's beat stream.

    Parameters
    ----------
    fields : ndarray of unsigned int, shape (n, d)
        Fields of ``field_bits(k, double)`` bits (:func:`quantize_features`).
    labels : ndarray of int16, shape (n,)
        ``LABEL`` words (:func:`quantize_labels`).
    params : EngineParams
        Supplies ``beat_bits``, ``lanes`` and the precisions the engine runs.
    k : int
        Precision.
    double : bool
        Double-sampling fields (``k + 2`` bits) or single ones (``k + 1``).
    indices : ndarray of int, shape (n,), optional
        The samples' indices (0..65535) for the HALP phases, in bits 16..31 of
        the label beat; needs ``beat_bits >= 32``. ``None``: those bits are zero.

    Returns
    -------
    bytes
        Per sample one label beat (label little-endian in bits 0..15, the index
        if given in bits 16..31, the rest zero) then ``ceil(d / K)`` feature
        beats, field ``i`` of a beat in bits ``i*b .. i*b + b - 1`` and unused
        slots zero; each beat little-endian.

    Raises
    ------
    ValueError
        Fields, labels or indices of the wrong shape or out of range, or indices
        for beats narrower than 32 bits.
    """
    fields = np.asarray(fields)
    if fields.ndim != 2 or not np.issubdtype(fields.dtype, np.integer):
        raise ValueError(f"fields must be an integer (n, d) array, not {fields.dtype} "
                         f"{fields.shape}")
    n, d = fields.shape
    layout = _Layout(params, d, k, double)
    labels = _check_labels(labels, n)
    indices = _check_indices(indices, n, params)
    if fields.size and (fields.min() < 0 or fields.max() >= 1 << layout.bits):
        raise ValueError(f"fields must be {layout.bits}-bit unsigned values")
    fields = fields.astype(field_dtype(k, double), copy=False)
    out = np.empty((n, layout.sample), np.uint8)
    for rows in _blocks(n, d):
        layout.pack(fields[rows], labels[rows], out[rows],
                    None if indices is None else indices[rows])
    return out.tobytes()


def encode_epoch(features: np.ndarray, labels: np.ndarray, levels: np.ndarray, k: int,
                 sampling: str, rng: np.random.Generator | None,
                 params: EngineParams, indices: np.ndarray | None = None) -> bytes:
    """Quantise and pack one pass over the data: the stream of one epoch.

    Equivalent to ``pack_samples(quantize_features(features, levels, k, sampling,
    rng), labels, params, k, sampling == "double", indices)`` (with the same
    draws), a block of samples at a time so that the intermediates stay in cache.

    Parameters
    ----------
    features : ndarray of float, shape (n, d)
        Normalised features in [-1, 1], in the order to stream.
    labels : ndarray of int16, shape (n,)
        ``LABEL`` words.
    levels, k, sampling, rng
        As for :func:`quantize_features`.
    params : EngineParams
        The engine the stream is for.
    indices : ndarray of int, shape (n,), optional
        The samples' indices for the HALP phases (:func:`pack_samples`).
    """
    quantiser = _Quantiser(levels, k, sampling, rng)
    x = _check_features(features)
    n, d = x.shape
    layout = _Layout(params, d, quantiser.k, quantiser.double)
    labels = _check_labels(labels, n)
    indices = _check_indices(indices, n, params)
    out = np.empty((n, layout.sample), np.uint8)
    for rows in _blocks(n, d):
        block = np.ascontiguousarray(x[rows], dtype=np.float32)
        fields = np.empty(block.shape, quantiser.dtype)
        quantiser(block.reshape(-1), fields.reshape(-1))
        layout.pack(fields, labels[rows], out[rows],
                    None if indices is None else indices[rows])
    return out.tobytes()


def unpack_fields(stream: bytes, params: EngineParams, d: int, k: int,
                  double: bool, indices: bool = False) -> tuple[np.ndarray, ...]:
    """Read fields and labels back from a stream (the inverse of :func:`pack_samples`).

    Written bit by bit, independently of the packer, to check it. With
    ``indices`` the label beats' bits 16..31 are read too (HALP streams).

    Returns
    -------
    fields : ndarray (:func:`field_dtype`), shape (n, d)
    labels : ndarray of int16, shape (n,)
    indices : ndarray of uint16, shape (n,)
        Only with ``indices``.

    Raises
    ------
    ValueError
        The stream is not whole samples, or a bit outside the label, the
        indices (if read) and the fields is set.
    """
    layout = _Layout(params, d, k, double)
    if indices and params.beat_bits < 32:
        raise ValueError(f"{params.beat_bits}-bit label beats carry no sample index")
    size = layout.sample
    if len(stream) % size:
        raise ValueError(f"stream of {len(stream)} bytes is not whole samples of {size} bytes")
    raw = np.frombuffer(stream, np.uint8).reshape(-1, size)
    bits = np.unpackbits(raw, axis=1, bitorder="little")
    b, per_beat = layout.bits, layout.per_beat
    f = np.arange(d)
    start = (1 + f // per_beat) * params.beat_bits + (f % per_beat) * b
    where = start[:, None] + np.arange(b)                       # (d, b) bit positions
    fields = (bits[:, where].astype(np.uint16) << np.arange(b, dtype=np.uint16)).sum(
        axis=2, dtype=np.uint16)
    used = np.zeros(bits.shape[1], bool)
    used[:32 if indices else 16] = True
    used[where.ravel()] = True
    if bits[:, ~used].any():
        raise ValueError("a bit outside the label and the fields is set")
    labels = raw[:, :2].copy().view("<i2").reshape(-1).astype(np.int16)
    if not indices:
        return fields.astype(field_dtype(k, double)), labels
    index = raw[:, 2:4].copy().view("<u2").reshape(-1).astype(np.uint16)
    return fields.astype(field_dtype(k, double)), labels, index


def frames(stream: bytes, params: EngineParams, d: int, k: int, double: bool) -> list[bytes]:
    """Split a packed stream into ``STREAM`` payloads of at most ``params.frame_bytes``.

    Payloads hold whole samples. A sample larger than a frame (a long sample at a
    high precision on a board with a small frame buffer) is split at beat
    boundaries over consecutive payloads instead: the engine keeps its place in
    a sample from one ``STREAM`` to the next.

    Raises
    ------
    ValueError
        The stream is not whole samples.
    """
    size = sample_bytes(params, d, k, double)
    if len(stream) % size:
        raise ValueError(f"stream of {len(stream)} bytes is not whole samples of {size} bytes")
    per_frame = params.frame_bytes // size
    if per_frame:
        step = per_frame * size
    else:
        beat = params.beat_bits // 8
        step = params.frame_bytes // beat * beat
    return [stream[i:i + step] for i in range(0, len(stream), step)]


# --- model words and the step --------------------------------------------------------

def words_to_coefficients(words: np.ndarray, params: EngineParams) -> np.ndarray:
    """Model words read from the engine to coefficients: ``w * 2**-model_frac``."""
    return np.asarray(words, np.float64) * params.model.scale


def coefficients_to_words(beta: np.ndarray, params: EngineParams) -> np.ndarray:
    """Coefficients to the nearest model words (saturated to the model format), as int64."""
    words = np.rint(np.asarray(beta, np.float64) / params.model.scale)
    return np.clip(words, params.model.min_int, params.model.max_int).astype(np.int64)


def step_to_shift(step: float) -> int:
    """The engine shift whose step ``2**-shift`` is nearest to ``step`` (in log scale).

    Raises
    ------
    ValueError
        ``step`` is not positive or lies outside ``2**-SHIFT_MAX .. 1``.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number, not {step}")
    shift = round(-math.log2(step))
    if not 0 <= shift <= SHIFT_MAX:
        raise ValueError(f"step {step:g} is out of range: the engine's step is 2**-shift "
                         f"with shift 0..{SHIFT_MAX} ({2.0 ** -SHIFT_MAX:.3g} to 1)")
    return shift


def shift_to_step(shift: int) -> float:
    """The step size ``2**-shift`` of an engine shift."""
    return 2.0 ** -shift
