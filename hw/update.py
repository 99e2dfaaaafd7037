"""Update lanes: accumulate ``sigma * c_j`` into the gradient, apply it at a batch end.

Per lane and per beat: ``acc = g + sigma * c``. Inside a batch the gradient
word becomes ``acc``; at the batch end the model word becomes
``sat(w - round_shift(acc, SIGMA_FRAC))`` and the gradient word 0.

Fixed latency, no stalls. To keep block-RAM words out of delay registers the
operands arrive when they are needed: ``sigma``/``codes``/``end``/``valid`` at
cycle 0, the gradient word ``GRAD_AT`` cycles later and the model word
``MODEL_AT`` cycles later (the engine issues the RAM reads accordingly); the
results appear ``latency`` cycles after cycle 0.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .multiply import LATENCY as PRODUCT_LATENCY
from .multiply import product_terms
from .params import CODE, SIGMA_FRAC, EngineParams
from .saturate import saturate

__all__ = ["UpdateLanes"]


class UpdateLanes(wiring.Component):
    """One word of the update pass.

    Attributes
    ----------
    sigma : In(signed(params.sigma.bits)); codes : In(lanes x signed(8))
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
    latency = PRODUCT_LATENCY + 4

    def __init__(self, params: EngineParams):
        self.params = params
        K = params.lanes
        super().__init__({
            "sigma": In(signed(params.sigma.bits)),
            "codes": In(data.ArrayLayout(signed(CODE.bits), K)),
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

        lane_overflow = []
        for k in range(p.lanes):
            # DSP products of sigma x code, PRODUCT_LATENCY cycles later
            terms = product_terms(m, self.sigma, self.codes[k], name=f"upd{k}")
            # the product (cycle GRAD_AT)
            prod = Signal(signed(p.product_bits), name=f"prod{k}")
            m.d.sync += prod.eq(sum(terms))
            # accumulate (the gradient word arrives at GRAD_AT)
            acc = Signal(signed(p.grad_bits), name=f"acc{k}")
            m.d.sync += acc.eq(self.grad[k] + prod)
            # apply the rounded step (the model word arrives at MODEL_AT)
            new = Signal(signed(max(WM, p.grad_bits - SIGMA_FRAC) + 2), name=f"new{k}")
            acc4 = Signal(signed(p.grad_bits), name=f"acc4_{k}")
            m.d.sync += [new.eq(self.model[k] - ((acc + (1 << (SIGMA_FRAC - 1))) >> SIGMA_FRAC)),
                         acc4.eq(acc)]
            # saturate; at a batch end the gradient restarts from zero
            word, clipped = saturate(m, new, WM, f"model{k}")
            ovf = Signal(name=f"ovf{k}")
            m.d.sync += [
                self.model_out[k].eq(word),
                self.grad_out[k].eq(Mux(last_end, 0, acc4)),
                ovf.eq(last_valid & last_end & clipped),
            ]
            lane_overflow.append(ovf)
        m.d.comb += self.overflow.eq(Cat(*lane_overflow).any())
        m.d.sync += self.valid_out.eq(last_valid)
        return m
