"""Update lanes: accumulate ``sigma * c_j`` into the gradient, apply it at a batch end.

Per lane and per beat: ``acc = g + sigma * c``. Inside a batch the gradient
word becomes ``acc``; at the batch end the model word becomes
``sat(w - round_shift(acc, SIGMA_FRAC))`` and the gradient word 0. Fixed
latency, no stalls: the engine feeds words read from the gradient and model
RAMs and writes back what comes out ``latency`` cycles later.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .params import CODE, SIGMA_FRAC, EngineParams

__all__ = ["UpdateLanes"]


class UpdateLanes(wiring.Component):
    """One word of the update pass.

    Attributes
    ----------
    sigma : In(signed(params.sigma.bits)); codes : In(lanes x signed(8))
    grad : In(lanes x signed(params.grad_bits)); model : In(lanes x signed(model_bits))
    end : In(1)
        This pass ends a batch: update the model.
    valid : In(1)
    grad_out, model_out : Out, with ``valid_out``
        ``model_out`` is the updated model word; the engine writes it only when
        the pass ends a batch.
    overflow : Out(1)
        High with ``valid_out`` when a model lane saturated (only at a batch end).
    """

    latency = 4

    def __init__(self, params: EngineParams):
        self.params = params
        K = params.lanes
        super().__init__({
            "sigma": In(signed(params.sigma.bits)),
            "codes": In(data.ArrayLayout(signed(CODE.bits), K)),
            "grad": In(data.ArrayLayout(signed(params.grad_bits), K)),
            "model": In(data.ArrayLayout(signed(params.model_bits), K)),
            "end": In(1),
            "valid": In(1),
            "grad_out": Out(data.ArrayLayout(signed(params.grad_bits), K)),
            "model_out": Out(data.ArrayLayout(signed(params.model_bits), K)),
            "overflow": Out(1),
            "valid_out": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        K, WM = p.lanes, p.model_bits

        valid = Signal(3)
        end = Signal(3)
        m.d.sync += [valid.eq(valid << 1 | self.valid), end.eq(end << 1 | self.end)]

        lane_overflow = []
        for k in range(K):
            # cycle 1: product; grad and model words wait alongside
            prod = Signal(signed(p.product_bits), name=f"prod{k}", attrs={"keep": 1})
            grad1 = Signal(signed(p.grad_bits), name=f"grad1_{k}")
            model1 = Signal(signed(WM), name=f"model1_{k}")
            m.d.sync += [prod.eq(self.sigma * self.codes[k]),
                         grad1.eq(self.grad[k]), model1.eq(self.model[k])]
            # cycle 2: accumulate
            acc = Signal(signed(p.grad_bits), name=f"acc{k}")
            model2 = Signal(signed(WM), name=f"model2_{k}")
            m.d.sync += [acc.eq(grad1 + prod), model2.eq(model1)]
            # cycle 3: apply the rounded step to the model
            new = Signal(signed(max(WM, p.grad_bits - SIGMA_FRAC) + 2), name=f"new{k}")
            acc3 = Signal(signed(p.grad_bits), name=f"acc3_{k}")
            m.d.sync += [new.eq(model2 - ((acc + (1 << (SIGMA_FRAC - 1))) >> SIGMA_FRAC)),
                         acc3.eq(acc)]
            # cycle 4: saturate; at a batch end the gradient restarts from zero
            lo, hi = -(1 << (WM - 1)), (1 << (WM - 1)) - 1
            over, under = new > hi, new < lo
            ovf = Signal(name=f"ovf{k}")
            m.d.sync += [
                self.model_out[k].eq(Mux(over, hi, Mux(under, lo, new))),
                self.grad_out[k].eq(Mux(end[2], 0, acc3)),
                ovf.eq(valid[2] & end[2] & (over | under)),
            ]
            lane_overflow.append(ovf)
        m.d.comb += self.overflow.eq(Cat(*lane_overflow).any())
        m.d.sync += self.valid_out.eq(valid[2])
        return m
