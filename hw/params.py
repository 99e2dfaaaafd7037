"""Build-time parameters of the SGD engine and its fixed-point formats.

This module is the single place where every number format of the engine is
written down. The gateware (``ziphalp.hw``), the golden model
(``ziphalp.sim.golden``) and the host (``ziphalp.host``) all derive their widths
from here. It must not import Amaranth: the host and the golden model use it
without a hardware toolchain.

Arithmetic of one least-squares sample (all integers; see ``ziphalp.sim.golden``):

====================  ==========================================================
``c_j``               feature code, ``CODE`` (signed 8 bit, value ``c * 2**-7``)
``y``                 label, ``LABEL`` (signed 16 bit, value ``y * 2**-14``)
``w_j``               model word, ``params.model`` (value ``w * 2**-model.frac``)
``R``                 ``sum_j w_j c_j - (y << (model.frac + CODE.frac - LABEL.frac))``
                      exact residual, value ``R * 2**-(model.frac + CODE.frac)``
``sigma``             ``sat(round_shift(R, 2*CODE.frac + shift - SIGMA_FRAC), model.frac)``
                      scaled residual: step times residual, in model LSBs per code
                      unit, with ``SIGMA_FRAC`` extra fraction bits
``g_j``               ``sum over the batch of sigma * c_j`` (exact)
``w_j'``              ``sat(w_j - round_shift(g_j, SIGMA_FRAC), model.bits)``
====================  ==========================================================

``round_shift(x, s)`` is ``(x + 2**(s-1)) >> s`` (round half up) for ``s > 0``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

__all__ = [
    "QFormat", "CODE", "LABEL", "SIGMA_FRAC", "SHIFT_MAX", "EngineParams", "BOARD_PARAMS",
]


@dataclass(frozen=True)
class QFormat:
    """A signed fixed-point format: ``bits`` in total, ``frac`` of them fractional."""

    bits: int
    frac: int

    def __post_init__(self):
        if not 2 <= self.bits <= 64:
            raise ValueError(f"fixed-point width must be 2..64 bits, not {self.bits}")
        if not 0 <= self.frac < self.bits:
            raise ValueError(f"fraction bits must be 0..{self.bits - 1}, not {self.frac}")

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Value of one LSB."""
        return 2.0 ** -self.frac

    def __str__(self):
        return f"Q{self.bits - self.frac}.{self.frac}"


#: Feature codes: signed 8-bit, value ``c / 128``.
CODE = QFormat(8, 7)
#: Labels: signed 16-bit, value ``y / 16384`` (range [-2, 2)).
LABEL = QFormat(16, 14)
#: Extra fraction bits carried by the scaled residual ``sigma`` and the gradient.
SIGMA_FRAC = 6
#: Largest step shift: the step size is ``2**-shift``.
SHIFT_MAX = 31


def clog2(n: int) -> int:
    """Bits needed to count ``n`` distinct values (``ceil(log2(n))``, 0 for n <= 1)."""
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class EngineParams:
    """Build-time parameters of one engine (one bitstream).

    Parameters
    ----------
    beat_bits : int
        Width W of an input beat, a multiple of 8 from 8 to 512.
    lanes : int or None
        Features per beat, K (8-bit codes); at most ``beat_bits // 8``. Defaults
        to ``beat_bits // 8``.
    max_features : int
        Largest feature count d the engine accepts at run time.
    max_batch : int
        Largest mini-batch size B the engine accepts at run time.
    model_bits, model_frac : int
        Model word format (``QFormat(model_bits, model_frac)``).
    frame_bytes : int
        Largest payload of one link frame, a multiple of ``beat_bits // 8``.
    clock_hz : int
        Engine clock, reported by ``identify``.
    """

    beat_bits: int = 32
    lanes: int | None = None
    max_features: int = 512
    max_batch: int = 16
    model_bits: int = 32
    model_frac: int = 24
    frame_bytes: int = 1024
    clock_hz: int = 48_000_000

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"EngineParams: {msg}")

        if self.beat_bits % 8 or not 8 <= self.beat_bits <= 512:
            fail(f"beat_bits must be a multiple of 8 from 8 to 512, not {self.beat_bits}")
        if self.lanes is None:
            object.__setattr__(self, "lanes", self.beat_bits // CODE.bits)
        if not 1 <= self.lanes <= self.beat_bits // CODE.bits:
            fail(f"lanes must be 1..{self.beat_bits // CODE.bits} for {self.beat_bits}-bit "
                 f"beats of {CODE.bits}-bit codes, not {self.lanes}")
        if self.beat_bits < LABEL.bits:
            fail(f"beat_bits must be at least {LABEL.bits} to carry a label, "
                 f"not {self.beat_bits}")
        if not 1 <= self.max_features <= 65535:
            fail(f"max_features must be 1..65535, not {self.max_features}")
        if not 1 <= self.max_batch <= 65535:
            fail(f"max_batch must be 1..65535, not {self.max_batch}")
        if not 16 <= self.model_bits <= 32:   # the link carries weights as int32
            fail(f"model_bits must be 16..32, not {self.model_bits}")
        if not LABEL.frac - CODE.frac <= self.model_frac <= self.model_bits - 2:
            fail(f"model_frac must be {LABEL.frac - CODE.frac}..{self.model_bits - 2}, "
                 f"not {self.model_frac}")
        if self.residual_bits > 63:
            fail(f"model_bits {self.model_bits} with max_features {self.max_features} needs a "
                 f"{self.residual_bits}-bit residual; at most 63 bits are supported")
        if self.frame_bytes % (self.beat_bits // 8) or not 64 <= self.frame_bytes <= 65535:
            fail(f"frame_bytes must be a multiple of {self.beat_bits // 8} from 64 to 65535, "
                 f"not {self.frame_bytes}")
        if self.frame_bytes < 4 * self.lanes + 4:
            fail("frame_bytes too small to load one model word")
        if self.clock_hz <= 0:
            fail(f"clock_hz must be positive, not {self.clock_hz}")

    # --- derived sizes -------------------------------------------------------------

    @property
    def model(self) -> QFormat:
        return QFormat(self.model_bits, self.model_frac)

    @property
    def sigma(self) -> QFormat:
        """Scaled residual ``sigma``: model LSBs per code unit, ``SIGMA_FRAC`` fraction bits."""
        return QFormat(self.model_frac, SIGMA_FRAC)

    @property
    def words(self) -> int:
        """Model words (rows of ``lanes`` weights) needed for ``max_features``."""
        return math.ceil(self.max_features / self.lanes)

    def words_for(self, features: int) -> int:
        """Beats carrying the features of one sample with ``features`` features."""
        return math.ceil(features / self.lanes)

    @property
    def dot_bits(self) -> int:
        """Width of the exact dot product ``sum_j w_j c_j``."""
        return self.model_bits + CODE.bits + clog2(self.max_features)

    @property
    def residual_bits(self) -> int:
        """Width of the exact residual ``R`` (dot product minus aligned label)."""
        label_aligned = LABEL.bits + self.model_frac + CODE.frac - LABEL.frac
        return max(self.dot_bits, label_aligned) + 1

    @property
    def product_bits(self) -> int:
        """Width of one lane's gradient term ``sigma * c``."""
        return self.sigma.bits + CODE.bits

    @property
    def grad_bits(self) -> int:
        """Width of the gradient accumulator: a full batch of products cannot overflow it."""
        return self.product_bits + clog2(self.max_batch)

    @property
    def build_id(self) -> int:
        """A 32-bit identifier of this parameter set and protocol version."""
        from .protocol import VERSION
        text = repr(sorted(asdict(self).items())) + f"/protocol{VERSION}"
        return zlib.crc32(text.encode())


#: The engine each supported board is built with. The simulated board runs the
#: same parameters as the iCEBreaker, so what trains in simulation fits the board.
#: iCEBreaker: two lanes. Each lane's model x code and sigma x code products are
#: wider than 16 bits, two SB_MAC16 each, and the UP5K has eight. 36 MHz: the
#: engine does not yet close timing at 48 MHz on the UP5K (nextpnr reaches about
#: 39 MHz; the 49-bit dot-product accumulator is the critical path).
BOARD_PARAMS: dict[str, EngineParams] = {
    "icebreaker": EngineParams(beat_bits=16, max_features=512, max_batch=16,
                               model_bits=32, model_frac=24, frame_bytes=4096,
                               clock_hz=36_000_000),
}
BOARD_PARAMS["sim"] = BOARD_PARAMS["icebreaker"]
