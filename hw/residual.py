"""The scaled residual: step size times prediction error, once per sample.

``sigma = sat(round_shift(dot - (label << A), 2*CODE.frac + shift - SIGMA_FRAC))``
with ``A = model.frac + CODE.frac - LABEL.frac`` (see ``ziphalp.hw.params``).
One barrel shift per sample instead of one per lane: the update lanes then only
multiply ``sigma`` by a code. Fixed latency of 4 cycles, no stalls.
"""

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import CODE, LABEL, SHIFT_MAX, SIGMA_FRAC, EngineParams
from .saturate import saturate

__all__ = ["ScaledResidual"]

#: Right shift applied to the residual for a step shift of 0.
BASE_SHIFT = 2 * CODE.frac - SIGMA_FRAC


class ScaledResidual(wiring.Component):
    """Computes ``sigma`` for one sample.

    Attributes
    ----------
    dot : In(signed(params.dot_bits)); label : In(signed(LABEL.bits))
    shift : In(range(SHIFT_MAX + 1))
        Held while samples flow (and for a cycle before the first one).
    valid : In(1); tag : In(tag_bits)
    sigma : Out(signed(params.sigma.bits)); clipped : Out(1)
        ``clipped`` is high with ``valid_out`` when ``sigma`` saturated.
    valid_out : Out(1); tag_out : Out(tag_bits)
    """

    latency = 4

    def __init__(self, params: EngineParams, tag_bits: int):
        assert BASE_SHIFT >= 1
        self.params = params
        super().__init__({
            "dot": In(signed(params.dot_bits)),
            "label": In(signed(LABEL.bits)),
            "shift": In(range(SHIFT_MAX + 1)),
            "valid": In(1),
            "tag": In(tag_bits),
            "sigma": Out(signed(params.sigma.bits)),
            "clipped": Out(1),
            "valid_out": Out(1),
            "tag_out": Out(tag_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        width = max(p.residual_bits, BASE_SHIFT + SHIFT_MAX + 1) + 1
        align = p.model_frac + CODE.frac - LABEL.frac

        residual = Signal(signed(width))
        rounded = Signal(signed(width))
        shifted = Signal(signed(width))
        valid = Signal(3)
        tags = [Signal(len(self.tag), name=f"tag{i}") for i in range(3)]

        m.d.sync += residual.eq(self.dot - (self.label << align))
        # the rounding constant: `shift` is static while samples flow, so a register
        half = Signal(width - 1)
        m.d.sync += half.eq(1 << (self.shift + (BASE_SHIFT - 1)))
        m.d.sync += rounded.eq(residual + half)
        m.d.sync += shifted.eq(rounded >> (self.shift + BASE_SHIFT))

        sigma, clipped = saturate(m, shifted, p.sigma.bits, "sigma")
        m.d.sync += [
            self.sigma.eq(sigma),
            self.clipped.eq(valid[2] & clipped),
            self.valid_out.eq(valid[2]),
            self.tag_out.eq(tags[2]),
        ]
        m.d.sync += [valid.eq(valid << 1 | self.valid)]
        m.d.sync += [tags[0].eq(self.tag), tags[1].eq(tags[0]), tags[2].eq(tags[1])]
        return m
