"""Update lanes: accumulate ``sigma * q2`` into the gradient, apply it at a batch end.

Per lane (model bank) and per beat: ``acc = g + sigma * q2``. Inside a batch the
gradient word becomes ``acc``; at the batch end the model word becomes
``sat(w - round_shift(acc, SIGMA_FRAC) - decay)`` (``decay = w >> l2_shift``, or 0
when ``l2_shift`` is 0) and the gradient word 0.

Fixed latency, no stalls. To keep block-RAM words out of delay registers the
operands arrive when they are needed: ``sigma``/``levels``/``end``/``valid`` at
cycle 0, the gradient word ``GRAD_AT`` cycles later and the model word
``MODEL_AT`` cycles later (the engine issues the RAM reads accordingly); the
results appear ``latency`` cycles after cycle 0.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .multiply import LATENCY as PRODUCT_LATENCY
from .multiply import product_terms
from .params import L2_SHIFT_MAX, LEVEL, SIGMA_FRAC, EngineParams
from .saturate import saturate

__all__ = ["UpdateLanes"]


class UpdateLanes(wiring.Component):
    """One word of the update pass.

    Attributes
    ----------
    sigma : In(signed(params.sigma.bits)); levels : In(lanes x signed(LEVEL.bits))
    l2_shift : In(range(L2_SHIFT_MAX + 1))
        Held while samples flow.
    end : In(1)
        This pass ends a batch: the model word is to be updated.
    valid : In(1)
    grad : In(lanes x signed(params.grad_bits))
        The word's gradient, ``GRAD_AT`` cycles after ``valid``.
    model : In(lanes x signed(model_bits))
        The word's model, ``MODEL_AT`` cycles after ``valid``.
    grad_out, model_out : Out, with ``valid_out``
        ``model_out`` is the updated model word; the engine writes it only when
        the pass ends a batch.
    overflow : Out(1)
        High with ``valid_out`` when a model lane saturated (only at a batch end).
    """

    GRAD_AT = PRODUCT_LATENCY + 1
    MODEL_AT = PRODUCT_LATENCY + 2
    latency = PRODUCT_LATENCY + 5

    def __init__(self, params: EngineParams):
        self.params = params
        K = params.lanes
        super().__init__({
            "sigma": In(signed(params.sigma.bits)),
            "levels": In(data.ArrayLayout(signed(LEVEL.bits), K)),
            "l2_shift": In(range(L2_SHIFT_MAX + 1)),
            "end": In(1),
            "valid": In(1),
            "grad": In(data.ArrayLayout(signed(params.grad_bits), K)),
            "model": In(data.ArrayLayout(signed(params.model_bits), K)),
            "grad_out": Out(data.ArrayLayout(signed(params.grad_bits), K)),
            "model_out": Out(data.ArrayLayout(signed(params.model_bits), K)),
            "overflow": Out(1),
            "valid_out": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        WM = p.model_bits

        valid = Signal(self.latency - 1)
        end = Signal(self.latency - 1)
        m.d.sync += [valid.eq(Cat(self.valid, valid)), end.eq(Cat(self.end, end))]
        last_valid, last_end = valid[-1], end[-1]

        # the decay shift is static while samples flow: register its decode
        l2_on = Signal()
        l2_shift = Signal.like(self.l2_shift)
        if p.l2_decay:
            m.d.sync += [l2_on.eq(self.l2_shift != 0), l2_shift.eq(self.l2_shift)]
        lane_overflow = []
        for k in range(p.lanes):
            # DSP products of sigma x code, PRODUCT_LATENCY cycles later
            terms = product_terms(m, self.sigma, self.levels[k], name=f"upd{k}")
            # the product (cycle GRAD_AT)
            prod = Signal(signed(p.product_bits), name=f"prod{k}")
            m.d.sync += prod.eq(sum(terms))
            # accumulate (the gradient word arrives at GRAD_AT)
            acc = Signal(signed(p.grad_bits), name=f"acc{k}")
            m.d.sync += acc.eq(self.grad[k] + prod)
            # the model word arrives at MODEL_AT: decay it; round the gradient meanwhile
            decayed = Signal(signed(WM + 1), name=f"decayed{k}")
            step = Signal(signed(p.grad_bits - SIGMA_FRAC + 1), name=f"step{k}")
            acc5 = Signal(signed(p.grad_bits), name=f"acc5_{k}")
            decay = Mux(l2_on, self.model[k] >> l2_shift, 0) if p.l2_decay else 0
            m.d.sync += [decayed.eq(self.model[k] - decay),
                         step.eq((acc + (1 << (SIGMA_FRAC - 1))) >> SIGMA_FRAC),
                         acc5.eq(acc)]
            # apply the rounded step
            new = Signal(signed(max(WM + 1, p.grad_bits - SIGMA_FRAC + 1) + 1), name=f"new{k}")
            acc6 = Signal(signed(p.grad_bits), name=f"acc6_{k}")
            m.d.sync += [new.eq(decayed - step), acc6.eq(acc5)]
            # saturate; at a batch end the gradient restarts from zero
            word, clipped = saturate(m, new, WM, f"model{k}")
            ovf = Signal(name=f"ovf{k}")
            m.d.sync += [
                self.model_out[k].eq(word),
                self.grad_out[k].eq(Mux(last_end, 0, acc6)),
                ovf.eq(last_valid & last_end & clipped),
            ]
            lane_overflow.append(ovf)
        m.d.comb += self.overflow.eq(Cat(*lane_overflow).any())
        m.d.sync += self.valid_out.eq(last_valid)
        return m
