"""Update lanes: accumulate ``sigma * q2`` into the gradient, apply it at a batch end.

Per lane (model bank) and per beat: ``acc = g + sigma * q2``. Inside a batch the
gradient word becomes ``acc``; at the batch end the model word becomes
``sat(w - round_shift(acc, SIGMA_FRAC) - decay)`` (``decay = w >> l2_shift``, or 0
when ``l2_shift`` is 0) and the gradient word 0.

HALP builds also run the inner-loop update (``inner`` high): ``acc = g + gamma +
sigma * q2`` (``gamma`` arrives with the gradient word ``g``), and at a batch end
``z' = clamp(z - ((acc + r) >> HALP_FRAC))`` to ``offset_bits`` bits, ``w' = sat(a + (z' << sh))``
from the offset ``z`` and anchor ``a`` words (arriving with the model word),
``r`` the top bits of a per-lane xorshift32 PRNG when ``stochastic``, else half
an LSB (``ziphalp.hw.params``). They take ``HALP_EXTRA`` cycles more (for every
phase): the rounded step, the difference, the clamp's comparisons, its choice,
the shift and the sum each get a cycle.

With ``deep_pipeline`` every word from block RAM goes into a flip-flop before any
logic (a cycle more). Fixed latency, no stalls. To keep block-RAM words out of
delay registers the operands arrive when they are needed: ``sigma``/``levels``/``end``/``valid`` at
cycle 0, the gradient word ``GRAD_AT`` cycles later, the model word ``MODEL_AT``
cycles later and (HALP) the anchor word ``ANCHOR_AT`` cycles later (the engine
issues the RAM reads accordingly). For the same reason the results leave as soon
as they are ready: the gradient word ``grad_latency`` cycles after cycle 0, the
model (and HALP offset) word ``latency`` cycles after it; the two are equal but
in HALP builds, whose model word takes ``HALP_EXTRA`` cycles more.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .delay import delayed
from .multiply import LATENCY as PRODUCT_LATENCY
from .multiply import product_terms
from .params import (
    HALP_FRAC,
    L2_SHIFT_MAX,
    LEVEL,
    OFFSET_BITS,
    OFFSET_SHIFT_MAX,
    SIGMA_FRAC,
    EngineParams,
)
from .prng import PRNGLane
from .replica import replica, replicas
from .saturate import fits, saturate

__all__ = ["UpdateLanes"]

#: Cycles the HALP inner-loop update takes beyond the SGD update.
HALP_EXTRA = 4


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
    grad_out : Out(lanes x signed(params.grad_bits))
        The word's new gradient, ``grad_latency`` cycles after ``valid``.
    model_out : Out(lanes x signed(model_bits))
        The updated model word, ``latency`` cycles after ``valid``; the engine
        writes it only when the pass ends a batch (the update pass's trail says when).
    overflow : Out(1)
        High with ``model_out`` when a model lane saturated (only at a batch end).
    inner, stochastic, offset_bits, offset_shift, seed, reseed : In
        HALP builds: the inner loop runs (held), its rounding, ``b``, ``sh`` and
        the PRNG seed, loaded into every lane's generator by the ``reseed`` strobe.
        ``b`` reaches the clamp through two registers: it must be held
        from two cycles before the first ``valid`` on (the engine holds every
        setting from ``start`` on, long before data reach the lanes).
    offset : In(lanes x signed(OFFSET_BITS)); anchor : In(lanes x signed(model_bits))
        HALP builds: the word's ``z``, ``MODEL_AT`` cycles after ``valid``, and
        ``a``, ``ANCHOR_AT`` cycles after it.
    gamma : In(lanes x signed(params.grad_bits))
        HALP builds: the word's ``gamma``, ``GRAD_AT`` cycles after ``valid``.
    offset_out : Out(lanes x signed(OFFSET_BITS))
        HALP builds: the updated offset word (with ``model_out``).
    """

    GRAD_AT = PRODUCT_LATENCY + 1
    MODEL_AT = PRODUCT_LATENCY + 2
    #: the anchor word meets the shifted offset (HALP builds)
    ANCHOR_AT = MODEL_AT + 5

    @staticmethod
    def grad_latency_of(params: EngineParams) -> int:
        """Cycles from ``valid`` to ``grad_out`` in a build with ``params``."""
        return PRODUCT_LATENCY + 5 + params.deep_pipeline

    @staticmethod
    def latency_of(params: EngineParams) -> int:
        """Cycles from ``valid`` to ``model_out`` in a build with ``params``."""
        return UpdateLanes.grad_latency_of(params) + (HALP_EXTRA if params.halp else 0)

    def __init__(self, params: EngineParams):
        self.params = params
        #: cycles from ``valid`` to ``model_out``
        self.latency = self.latency_of(params)
        #: cycles from ``valid`` to ``grad_out``
        self.grad_latency = self.grad_latency_of(params)
        K = params.lanes
        halp = {
            "inner": In(1), "stochastic": In(1), "offset_bits": In(range(OFFSET_BITS + 1)),
            "offset_shift": In(range(OFFSET_SHIFT_MAX + 1)), "seed": In(32), "reseed": In(1),
            "offset": In(data.ArrayLayout(signed(OFFSET_BITS), K)),
            "gamma": In(data.ArrayLayout(signed(params.grad_bits), K)),
            "anchor": In(data.ArrayLayout(signed(params.model_bits), K)),
            "offset_out": Out(data.ArrayLayout(signed(OFFSET_BITS), K)),
        } if params.halp else {}
        super().__init__(halp | {
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
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        valid = Signal(self.latency - 1)
        end = Signal(self.latency - 1)
        m.d.sync += [valid.eq(Cat(self.valid, valid)), end.eq(Cat(self.end, end))]
        halp = self._halp_settings(m, valid) if p.halp else None
        # the decay shift is static while samples flow: register it and its decode,
        # a copy per lane (ziphalp.hw.replica)
        K = p.lanes
        l2_on, l2_shift = [Signal()] * K, [Signal.like(self.l2_shift)] * K
        if p.l2_decay:
            l2_on = replicas(m, self.l2_shift != 0, K, "l2_on")
            l2_shift = replicas(m, self.l2_shift, K, "l2_shift")
        sgd_overflow, halp_overflow = [], []
        for k in range(p.lanes):
            acc, model_out, grad_out, ovf = self._sgd_lane(m, k, valid, end, l2_on[k],
                                                           l2_shift[k], halp, platform)
            sgd_overflow.append(ovf)
            m.d.comb += self.grad_out[k].eq(grad_out)
            if not p.halp:
                m.d.comb += self.model_out[k].eq(model_out)
                continue
            halp_overflow.append(self._halp_lane(m, k, acc, model_out, valid, halp))
        overflow = Cat(*sgd_overflow).any()
        if p.halp:      # the SGD flag waits for the HALP results
            overflow = delayed(m, overflow, HALP_EXTRA, "sgd_overflow") | Cat(*halp_overflow).any()
        m.d.comb += self.overflow.eq(overflow)
        return m

    def _halp_settings(self, m, valid) -> dict:
        """HALP: the registered run-time settings and the run-time bounds of ``z``,
        each a list with a register per lane (``ziphalp.hw.replica``)."""
        K = self.params.lanes
        # the clamp bounds: the offset width copied into each lane, then decoded
        # there into the lane's own bound registers (two stages: used with data only)
        z_min = [Signal(signed(OFFSET_BITS + 1), name=f"z_min{k}") for k in range(K)]
        z_max = [Signal(signed(OFFSET_BITS + 1), name=f"z_max{k}") for k in range(K)]
        for k, bits in enumerate(replicas(m, self.offset_bits, K, "offset_bits")):
            with m.Switch(bits):
                for b in range(2, OFFSET_BITS + 1):
                    with m.Case(b):
                        m.d.sync += [z_max[k].eq((1 << (b - 1)) - 1), z_min[k].eq(-(1 << (b - 1)))]
        inner = replicas(m, self.inner, K, "inner")
        # every lane's PRNG steps for every beat of the inner loop when its
        # accumulator is ready (MODEL_AT)
        at = self.MODEL_AT - 1 + self.params.deep_pipeline
        # each lane's generator is seeded from registers of its own with deep_pipeline
        # (the seed's register reached the lanes' start-state adders across the die),
        # a cycle later: the first beat steps them many cycles after `reseed`
        deep = self.params.deep_pipeline
        seed = replicas(m, self.seed, K, "prng_seed", registered=deep)
        reseed = replicas(m, self.reseed, K, "prng_reseed", registered=deep)
        return {"inner": inner, "stochastic": replicas(m, self.stochastic, K, "stochastic"),
                "seed": seed, "reseed": reseed,
                "z_min": z_min, "z_max": z_max,
                "sh": replicas(m, self.offset_shift, K, "sh"),
                "step_prng": [valid[at] & inner[k] for k in range(K)]}

    def _sgd_lane(self, m, k, valid, end, l2_on, l2_shift, halp, platform):
        """Lane ``k``'s gradient accumulation and SGD model update. Returns the
        accumulator and the (registered) SGD model word, gradient word and overflow."""
        p, WM = self.params, self.params.model_bits
        # the SGD results are ready grad_latency cycles after `valid`
        deep = int(p.deep_pipeline)
        last = PRODUCT_LATENCY + 3 + deep
        # the batch end clears the whole gradient word: a copy of its flag per lane
        last_valid, last_end = valid[last], replica(m, end[last - 1], f"last_end{k}_0")
        # DSP products of sigma x code, PRODUCT_LATENCY cycles later
        # (sigma is every lane's factor: with deep_pipeline, a copy of it per lane)
        terms = product_terms(m, self.sigma, self.levels[k], name=f"upd{k}",
                              shared_a=p.deep_pipeline, platform=platform)
        # the product (cycle GRAD_AT)
        prod = Signal(signed(p.product_bits), name=f"prod{k}")
        m.d.sync += prod.eq(sum(terms))
        # the gradient word (and in the HALP inner loop gamma) arrive at GRAD_AT; with
        # deep_pipeline they go into flip-flops first (nothing but a register follows
        # a block RAM's output) and the product waits a cycle beside them
        grad = delayed(m, self.grad[k], deep, f"grad{k}")
        prod = delayed(m, prod, deep, f"prod{k}_")
        acc = Signal(signed(p.grad_bits), name=f"acc{k}")
        if p.halp and deep:
            # gamma, or 0 outside the inner loop, chosen as the word goes into its
            # flip-flop: `inner` is held through a run, so the choice a cycle early is
            # the same, and the three-way add has no setting's multiplexer before it
            # (a lane's `inner` into it was a ULX3S build's longest path, 13.9 ns)
            gamma = Signal.like(self.gamma[k], name=f"gamma{k}_0")
            m.d.sync += [gamma.eq(Mux(halp["inner"][k], self.gamma[k], 0)),
                         acc.eq(grad + prod + gamma)]
        elif p.halp:
            m.d.sync += acc.eq(grad + prod + Mux(halp["inner"][k], self.gamma[k], 0))
        else:
            m.d.sync += acc.eq(grad + prod)
        # the model word arrives at MODEL_AT (into a flip-flop first, deep_pipeline);
        # then its decay is shifted out while the gradient is rounded
        model = delayed(m, self.model[k], deep, f"model{k}")
        held = Signal(signed(WM), name=f"held{k}")
        decay = Signal(signed(WM), name=f"decay{k}")
        # The rounded step matters only within +-2**(WM + 1): a larger one saturates
        # the model word whatever the model and its decay, on the side of its sign.
        # So it is rounded from the accumulator's low bits and replaced by
        # +-2**(WM + 1) when the top bits are not all the sign (shorter carry chains).
        keep = min(p.grad_bits, SIGMA_FRAC + WM + 2)
        rounded = (acc[:keep].as_signed() + (1 << (SIGMA_FRAC - 1))) >> SIGMA_FRAC
        if keep < p.grad_bits:
            far = 1 << (WM + 1)
            rounded = Mux(fits(acc, keep), rounded, Mux(acc[-1], -far, far))
        step = Signal(signed(keep - SIGMA_FRAC + 1), name=f"step{k}")
        acc5 = Signal(signed(p.grad_bits), name=f"acc5_{k}")
        m.d.sync += [held.eq(model), step.eq(rounded), acc5.eq(acc)]
        if p.l2_decay:
            m.d.sync += decay.eq(Mux(l2_on, model >> l2_shift, 0))
        # apply the decay and the rounded step
        new = Signal(signed(max(WM + 1, len(step)) + 1), name=f"new{k}")
        acc6 = Signal(signed(p.grad_bits), name=f"acc6_{k}")
        m.d.sync += [new.eq(held - decay - step), acc6.eq(acc5)]
        # saturate; at a batch end the gradient restarts from zero
        word, clipped = saturate(m, new, WM, f"model{k}")
        ovf = Signal(name=f"ovf{k}")
        model_out = Signal(signed(WM), name=f"sgd_model{k}")
        grad_out = Signal(signed(p.grad_bits), name=f"sgd_grad{k}")
        m.d.sync += [
            model_out.eq(word),
            grad_out.eq(Mux(last_end, 0, acc6)),
            ovf.eq(last_valid & last_end & clipped),
        ]
        return acc, model_out, grad_out, ovf

    def _prng(self, m, k, halp):
        """Lane ``k``'s xorshift32; returns the rounding term ``r`` (``HALP_FRAC`` bits)."""
        # with deep_pipeline the draw is a register (the adder of the step had the
        # generator's three xor levels in front of it: 11.7 ns on the ULX3S)
        m.submodules[f"prng{k}"] = prng = PRNGLane(
            k, registered_next=self.params.deep_pipeline)
        m.d.comb += [prng.seed.eq(halp["seed"][k]), prng.reseed.eq(halp["reseed"][k]),
                     prng.step.eq(halp["step_prng"][k])]
        return Mux(halp["stochastic"][k], prng.next[32 - HALP_FRAC:], 1 << (HALP_FRAC - 1))

    def _halp_lane(self, m, k, acc, model_out, valid, halp):
        """Lane ``k``'s HALP inner-loop update, from the accumulator: the rounded
        step, z - step, clamp to b bits (the comparisons, then the choice), the
        shift, a + (z' << sh), each in its own cycle; drives the lane's outputs.
        Returns its overflow."""
        WM, grad_bits = self.params.model_bits, self.params.grad_bits
        fine = self._prng(m, k, halp)
        z_min, z_max, inner = halp["z_min"][k], halp["z_max"][k], halp["inner"][k]
        # the offset word arrives at MODEL_AT, with the accumulator, and the anchor
        # word at ANCHOR_AT, when the shifted offset is ready (both into flip-flops
        # first with deep_pipeline)
        deep = int(self.params.deep_pipeline)
        offset = delayed(m, self.offset[k], deep, f"offset{k}")
        anchor = delayed(m, self.anchor[k], deep, f"anchor{k}")
        # The step (acc + r) >> HALP_FRAC matters only while it is within
        # +-2**(OFFSET_BITS + 1): any step beyond that puts z - step past every bound,
        # on the side its sign says. So the adder, the difference and the
        # comparisons are OFFSET_BITS + 4 bits wide, not the accumulator's width
        # (long carry chains limit the clock): ``in_reach`` says whether the
        # accumulator's top bits are all its sign; if not, the difference is
        # +-2**(OFFSET_BITS + 1), beyond every bound.
        keep = min(grad_bits, HALP_FRAC + OFFSET_BITS + 2)
        in_reach, negative = Signal(name=f"step_fits{k}"), Signal(name=f"step_neg{k}")
        step = Signal(signed(keep - HALP_FRAC + 1), name=f"halp_step{k}")
        far = 1 << (OFFSET_BITS + 1)
        zdiff = Signal(signed(max(OFFSET_BITS, keep - HALP_FRAC + 1, OFFSET_BITS + 2) + 1),
                       name=f"zdiff{k}")
        above, below = Signal(name=f"above{k}"), Signal(name=f"below{k}")
        zd = Signal.like(zdiff, name=f"zd{k}")
        znew = Signal(signed(OFFSET_BITS), name=f"znew{k}")
        zshift = Signal(signed(OFFSET_BITS + OFFSET_SHIFT_MAX), name=f"zshift{k}")
        wsum = Signal(signed(max(WM, OFFSET_BITS + OFFSET_SHIFT_MAX) + 1), name=f"wsum{k}")
        offset5 = delayed(m, offset, 1, f"offset5_{k}")
        m.d.sync += [
            step.eq((acc[:keep].as_signed() + fine) >> HALP_FRAC),
            in_reach.eq(fits(acc, keep)), negative.eq(acc[-1]),
            zdiff.eq(Mux(in_reach, offset5 - step, Mux(negative, far, -far))),
            zd.eq(zdiff), above.eq(zdiff > z_max), below.eq(zdiff < z_min),
            znew.eq(Mux(above, z_max, Mux(below, z_min, zd))),
            zshift.eq(znew << halp["sh"][k]),
            wsum.eq(anchor + zshift),
        ]
        z9 = delayed(m, znew, 2, f"z9_{k}")
        halp_word, halp_clipped = saturate(m, wsum, WM, f"halp_model{k}")
        halp_ovf = Signal(name=f"halp_ovf{k}")
        m.d.sync += [
            self.model_out[k].eq(Mux(inner, halp_word,
                                     delayed(m, model_out, HALP_EXTRA - 1, f"sgd_model{k}_"))),
            self.offset_out[k].eq(z9),
            halp_ovf.eq(valid[-1] & inner & halp_clipped),
        ]
        return halp_ovf

