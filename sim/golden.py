"""The golden model: the SGD engine's exact fixed-point arithmetic in NumPy.

Given the engine parameters, the run-time configuration, an initial model and
the packed beat stream the board receives, :class:`GoldenEngine` returns the
model the gateware produces, bit for bit, and the same sticky flags and
counters. It is the contract between ``ziphalp.hw.engine`` and the host; the
cocotb benches and the simulated-board tests compare the RTL against it. The
formats and the formulas are written down in ``ziphalp.hw.params``; this module
implements them and nothing else (no timing: the engine's results do not depend
on bubbles or back-pressure).

It reads the beat stream on its own (``unpack_beats``) rather than sharing the
host's packer, so a packing mistake on either side shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np
from ziphalp.hw.params import CODE, LABEL, SHIFT_MAX, SIGMA_FRAC, EngineParams

__all__ = ["round_shift", "saturate", "unpack_beats", "GoldenEngine"]


def round_shift(x, s: int):
    """``x * 2**-s`` rounded half up: ``(x + 2**(s-1)) >> s`` (``x`` for ``s == 0``)."""
    if s == 0:
        return x
    return (x + (1 << (s - 1))) >> s


def saturate(x: np.ndarray, bits: int) -> tuple[np.ndarray, bool]:
    """Clip ``x`` to a signed ``bits``-bit range; also say whether anything was clipped."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    clipped = bool(np.any((x < lo) | (x > hi)))
    return np.clip(x, lo, hi), clipped


def unpack_beats(stream: bytes, params: EngineParams) -> np.ndarray:
    """Split a little-endian byte stream into beats: an ``(m, beat_bits // 8)`` uint8 array."""
    width = params.beat_bits // 8
    if len(stream) % width:
        raise ValueError(f"stream of {len(stream)} bytes is not whole {width}-byte beats")
    return np.frombuffer(stream, dtype=np.uint8).reshape(-1, width)


class GoldenEngine:
    """Bit-exact model of one ``SGDEngine`` (least squares, mini-batch SGD).

    State mirrors the hardware: the model (``max_features`` words), the
    gradient buffer, the position inside the current sample and batch, the
    sticky ``overflow``/``clipped`` flags, and ``samples``/``updates`` counters.
    """

    def __init__(self, params: EngineParams):
        self.p = params
        self.model = np.zeros(params.max_features, dtype=np.int64)
        self.overflow = False
        self.clipped = False
        self.samples = 0
        self.updates = 0
        self.features = 0
        self._reset_position()

    # --- commands -----------------------------------------------------------------

    def configure(self, features: int, batch: int, shift: int) -> None:
        """Set d, B and the step shift; clear the gradient and the position."""
        p = self.p
        if not 1 <= features <= p.max_features:
            raise ValueError(f"features must be 1..{p.max_features}, not {features}")
        if not 1 <= batch <= p.max_batch:
            raise ValueError(f"batch must be 1..{p.max_batch}, not {batch}")
        if not 0 <= shift <= SHIFT_MAX:
            raise ValueError(f"shift must be 0..{SHIFT_MAX}, not {shift}")
        self.features, self.batch, self.shift = features, batch, shift
        self._reset_position()

    def load_model(self, start: int, weights) -> None:
        weights = np.asarray(weights, dtype=np.int64)
        if start < 0 or start + len(weights) > self.p.max_features:
            raise ValueError("model range outside the engine")
        if saturate(weights, self.p.model_bits)[1]:
            raise ValueError(f"weights do not fit {self.p.model_bits} bits")
        self.model[start:start + len(weights)] = weights

    def read_model(self, start: int = 0, count: int | None = None) -> np.ndarray:
        count = self.p.max_features - start if count is None else count
        return self.model[start:start + count].copy()

    def clear_flags(self) -> None:
        self.overflow = self.clipped = False

    def stream(self, data: bytes, flush: bool = False) -> None:
        """Consume beats exactly as the engine's ``beats`` stream does.

        ``flush`` marks the last beat (``STREAM_FLUSH``): the batch ends with the
        sample that holds it, possibly once later beats complete that sample.
        """
        if self.features == 0:
            raise RuntimeError("stream before configure")
        beats = unpack_beats(data, self.p)
        for index, beat in enumerate(beats):
            self._beat(beat, flush and index == len(beats) - 1)

    def train(self, codes: np.ndarray, labels: np.ndarray, flush: bool = True) -> None:
        """Consume whole samples: ``codes`` int ``(n, d)``, ``labels`` int ``(n,)``.

        Equivalent to streaming their packed beats; ``flush`` ends the batch
        after the last sample.
        """
        codes = np.asarray(codes, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if self._pos != 0:
            raise RuntimeError("train() needs the engine at a sample boundary")
        if codes.ndim != 2 or codes.shape[1] != self.features or len(labels) != len(codes):
            raise ValueError(f"codes must be (n, {self.features}) with n labels")
        for i in range(len(codes)):
            self._sample(codes[i], int(labels[i]), flush and i == len(codes) - 1)

    # --- arithmetic ---------------------------------------------------------------

    def _reset_position(self) -> None:
        self._grad = np.zeros(self.p.max_features, dtype=np.int64)
        self._pos = 0                 # 0: expecting the label beat; k: feature beat k
        self._batch_pos = 0
        self._flush = False
        self._label = 0
        self._codes: list[np.ndarray] = []

    def _beat(self, beat: np.ndarray, flush: bool) -> None:
        p = self.p
        self._flush |= flush
        if self._pos == 0:
            raw = int(beat[0]) | int(beat[1]) << 8
            self._label = raw - (1 << 16) if raw & 0x8000 else raw
            self._pos = 1
            return
        self._codes.append(beat[:p.lanes].view(np.int8).astype(np.int64))
        if self._pos < p.words_for(self.features):
            self._pos += 1
            return
        codes = np.concatenate(self._codes)[:self.features]
        label, flush = self._label, self._flush
        self._pos, self._codes, self._flush = 0, [], False
        self._sample(codes, label, flush)

    def _sample(self, codes: np.ndarray, label: int, flush: bool) -> None:
        p, d = self.p, self.features
        w = self.model[:d]
        # exact residual, units 2**-(model.frac + CODE.frac)
        residual = int(np.dot(w, codes)) - (label << (p.model_frac + CODE.frac - LABEL.frac))
        # scaled residual: step x residual, model LSBs per code unit, SIGMA_FRAC fraction bits
        sigma = round_shift(residual, 2 * CODE.frac + self.shift - SIGMA_FRAC)
        sigma_arr, clipped = saturate(np.array([sigma]), p.sigma.bits)
        self.clipped |= clipped
        self._grad[:d] += int(sigma_arr[0]) * codes
        self._batch_pos += 1
        self.samples += 1
        if flush or self._batch_pos == self.batch:
            updated, overflow = saturate(w - round_shift(self._grad[:d], SIGMA_FRAC),
                                         p.model_bits)
            self.model[:d] = updated
            self.overflow |= overflow
            self._grad[:d] = 0
            self._batch_pos = 0
            self.updates += 1
