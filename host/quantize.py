"""Quantisation and bit packing: normalised data to the engine's beat stream.

Features in [-1, 1] become 8-bit codes ``c = floor(127 x + u)`` (``u`` uniform in
[0, 1) for unbiased stochastic rounding, ``u = 1/2`` for round-to-nearest). The
engine reads a code as the value ``c / 128`` (:data:`ziphalp.hw.params.CODE`), so
a weight ``w`` the engine learns multiplies ``127 x / 128``: the coefficient in
normalised units is ``w * 127 / 128`` (:func:`words_to_coefficients`, the one
place that conversion is written). Labels become ``LABEL`` words, nearest.

The beat layout is the one of ``STREAM`` in :mod:`ziphalp.hw.protocol`. This
module does no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from ziphalp.hw.params import CODE, LABEL, SHIFT_MAX, EngineParams

__all__ = [
    "LEVELS",
    "coefficients_to_words",
    "frames",
    "pack_samples",
    "quantize_features",
    "quantize_labels",
    "sample_bytes",
    "shift_to_step",
    "step_to_shift",
    "words_to_coefficients",
]

#: Code of the normalised value 1.0: the codes of [-1, 1] are -LEVELS..LEVELS.
LEVELS = CODE.max_int


def quantize_features(features: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Quantise normalised features to 8-bit codes.

    Parameters
    ----------
    features : ndarray of float, values in [-1, 1]
    rng : numpy.random.Generator, optional
        Source of the stochastic rounding draws ``u``; draw afresh each epoch.
        None rounds to nearest (``u = 1/2``).

    Returns
    -------
    ndarray of int8, same shape
        ``floor(LEVELS * x + u)``: within one code of ``LEVELS * x`` and, with
        ``rng``, equal to it in expectation.
    """
    x = np.asarray(features, np.float64)
    if x.size and not (np.abs(x) <= 1.0).all():
        raise ValueError("features must be normalised to [-1, 1] before quantisation")
    u = 0.5 if rng is None else rng.random(x.shape)
    codes = np.floor(LEVELS * x + u)
    return np.clip(codes, -LEVELS, LEVELS).astype(np.int8)


def quantize_labels(labels: np.ndarray) -> np.ndarray:
    """Labels in [-1, 1] to ``LABEL`` words (``round(y * 2**LABEL.frac)``), as int16."""
    words = np.rint(np.asarray(labels, np.float64) * 2.0 ** LABEL.frac)
    return np.clip(words, LABEL.min_int, LABEL.max_int).astype(np.int16)


def words_to_coefficients(words: np.ndarray, params: EngineParams) -> np.ndarray:
    """Model words read from the engine to coefficients in normalised units."""
    values = np.asarray(words, np.float64) * params.model.scale
    return values * (LEVELS * CODE.scale)


def coefficients_to_words(beta: np.ndarray, params: EngineParams) -> np.ndarray:
    """Coefficients in normalised units to the nearest model words (saturated)."""
    words = np.rint(np.asarray(beta, np.float64) / (LEVELS * CODE.scale) / params.model.scale)
    return np.clip(words, params.model.min_int, params.model.max_int).astype(np.int64)


def sample_bytes(params: EngineParams, features: int) -> int:
    """Bytes one sample takes in the stream: a label beat plus its feature beats."""
    return (1 + params.words_for(features)) * (params.beat_bits // 8)


def pack_samples(codes: np.ndarray, labels: np.ndarray, params: EngineParams) -> bytes:
    """Pack samples into the ``STREAM`` beat layout.

    Parameters
    ----------
    codes : ndarray of int8, shape (n, d)
        Feature codes (bias column included).
    labels : ndarray of int16, shape (n,)
        Label words.
    params : EngineParams
        Supplies ``beat_bits`` and ``lanes``.

    Returns
    -------
    bytes
        Per sample one label beat (label in bits 0..15, the rest zero) then
        ``ceil(d / lanes)`` feature beats (code ``j`` of a beat in bits
        ``8j .. 8j+7``, unused lanes zero); each beat little-endian.
    """
    codes = np.asarray(codes)
    labels = np.asarray(labels)
    if codes.ndim != 2 or labels.shape != (codes.shape[0],):
        raise ValueError(f"codes must be (n, d) and labels (n,), not {codes.shape} "
                         f"and {labels.shape}")
    n, d = codes.shape
    beat = params.beat_bits // 8
    beats = params.words_for(d)
    out = np.zeros((n, 1 + beats, beat), np.uint8)
    out[:, 0, :2] = labels.astype("<i2").view(np.uint8).reshape(n, 2)
    lanes = np.zeros((n, beats * params.lanes), np.int8)
    lanes[:, :d] = codes
    out[:, 1:, :params.lanes] = lanes.view(np.uint8).reshape(n, beats, params.lanes)
    return out.tobytes()


def frames(beats: bytes, params: EngineParams, features: int) -> list[bytes]:
    """Split a packed stream into ``STREAM`` payloads holding whole samples.

    Each payload is at most ``params.frame_bytes`` long.
    """
    size = sample_bytes(params, features)
    if len(beats) % size:
        raise ValueError(f"stream of {len(beats)} bytes is not whole samples of {size} bytes")
    per_frame = params.frame_bytes // size
    if per_frame == 0:
        raise ValueError(f"one sample ({size} bytes) does not fit a frame "
                         f"({params.frame_bytes} bytes)")
    step = per_frame * size
    return [beats[i:i + step] for i in range(0, len(beats), step)]


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
