"""The scaled loss derivative ``sigma``: step size times dL/d(prediction), once per sample.

For a sample's exact dot product ``D`` and label ``y`` it computes, as written in
``ziphalp.hw.params``: the loss derivative ``E`` (squared, logistic through a
sigmoid table, hinge, squared hinge), ``S = sat(round_shift(E, 2*LEVEL.frac +
shift - SIGMA_FRAC))`` and ``sigma = sat(round_shift(S * cost, COST_FRAC))`` with
the cost of the sample's class. One barrel shift and one small multiply per
sample instead of per lane: the update lanes then only multiply ``sigma`` by a
level. Fixed latency, no stalls, one sample per cycle at most.

The cost multiply is a shift-and-add over the cost's bits into a pipelined adder
tree (``COST_BITS`` terms): it stays out of the DSP blocks, which the lanes use.

HALP builds hold the anchor-error cache ``C`` (``halp_samples`` words of ``E``):
in the full pass ``E`` is written to ``C[index]``; in the inner loop ``E - C[index]``
takes the place of ``E`` (the caller adds the offset shift to ``shift``). Both HALP
phases shift it left by ``LEVEL.frac`` first (a finer ``sigma``, see
``ziphalp.hw.params``).
"""

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .adder_tree import AdderTree
from .params import (
    COST_BITS,
    COST_FRAC,
    LABEL,
    LEVEL,
    OFFSET_SHIFT_MAX,
    SAMPLE_INDEX_BITS,
    SHIFT_MAX,
    SIGMA_FRAC,
    SIGMOID_CELL_BITS,
    SIGMOID_CELLS,
    SIGMOID_FRAC,
    EngineParams,
    Loss,
    Phase,
    sigmoid_table,
)
from .saturate import saturate

__all__ = ["ScaledError", "BASE_SHIFT"]

#: Right shift applied to ``E`` for a step shift of 0.
BASE_SHIFT = 2 * LEVEL.frac - SIGMA_FRAC


class ScaledError(wiring.Component):
    """Computes ``sigma`` for one sample.

    Attributes
    ----------
    dot : In(signed(params.dot_bits)); label : In(signed(LABEL.bits))
    loss : In(range(len(Loss))); shift : In(range(SHIFT_MAX + 1))
    cost_pos, cost_neg : In(COST_BITS)
        Configuration, held while samples flow (and for a cycle before the first one).
        In HALP builds ``shift`` goes up to ``SHIFT_MAX + OFFSET_SHIFT_MAX``.
    phase : In(range(len(Phase))); index : In(SAMPLE_INDEX_BITS)
        HALP builds: the phase (held) and the sample's cache index (with ``valid``).
    valid : In(1); tag : In(tag_bits)
    sigma : Out(signed(params.sigma.bits)); clipped : Out(1)
        ``clipped`` is high with ``valid_out`` when ``S`` or ``sigma`` saturated.
    valid_out : Out(1); tag_out : Out(tag_bits)
    """

    @staticmethod
    def latency_of(params: EngineParams) -> int:
        """Cycles from ``valid`` to ``valid_out`` in a build with ``params``."""
        return 10 + AdderTree.latency_of(COST_BITS) if params.class_costs else 9

    def __init__(self, params: EngineParams, tag_bits: int):
        assert BASE_SHIFT >= 1
        self.params = params
        self._cost_tree = (AdderTree(params.sigma.bits + COST_BITS, COST_BITS)
                           if params.class_costs else None)
        #: cycles from ``valid`` to ``valid_out``
        self.latency = self.latency_of(params)
        self.shift_max = SHIFT_MAX + (OFFSET_SHIFT_MAX if params.halp else 0)
        super().__init__({
            "dot": In(signed(params.dot_bits)),
            "label": In(signed(LABEL.bits)),
            "loss": In(range(len(Loss))),
            "shift": In(range(self.shift_max + 1)),
            "phase": In(range(len(Phase))),
            "index": In(SAMPLE_INDEX_BITS),
            "cost_pos": In(COST_BITS),
            "cost_neg": In(COST_BITS),
            "valid": In(1),
            "tag": In(tag_bits),
            "sigma": Out(signed(params.sigma.bits)),
            "clipped": Out(1),
            "valid_out": Out(1),
            "tag_out": Out(tag_bits),
        })

    @property
    def _frac(self) -> int:
        """Fraction bits of the dot product ``D`` and of ``E``."""
        return self.params.model_frac + LEVEL.frac

    @property
    def _width(self) -> int:
        """Width of ``E`` and of the values it is made from (HALP builds: the inner
        loop's ``Ed << LEVEL.frac``, see ``ziphalp.hw.params``)."""
        p = self.params
        return max(p.residual_bits + (LEVEL.frac if p.halp else 0),
                   BASE_SHIFT + self.shift_max + 1) + 1

    def elaborate(self, platform):
        m = Module()
        p = self.params
        # valid, tag and the class travel alongside
        # bit i of `valid`, `pos` and tags[i]: the sample in stage i + 1 (cycle i + 1)
        stages = self.latency - 1
        valid = Signal(stages)
        pos = Signal(stages)
        tags = [Signal(len(self.tag), name=f"tag{i}") for i in range(stages)]
        m.d.sync += [valid.eq(Cat(self.valid, valid)), pos.eq(Cat(self.label > 0, pos)),
                     tags[0].eq(self.tag)]
        m.d.sync += [tags[i + 1].eq(tags[i]) for i in range(stages - 1)]
        # configuration held in a register (static while samples flow)
        loss = Signal.like(self.loss)
        m.d.sync += loss.eq(self.loss)

        derivative = self._derivative(m, loss, pos)
        # cycle 5: the HALP error (its own cycle in every build)
        error = Signal(signed(self._width), name="error")
        if p.halp:
            m.d.sync += error.eq(self._halp_error(m, derivative, valid))
        else:
            m.d.sync += error.eq(derivative)
        scaled, clip6 = self._scale(m, error, valid)
        last = stages - 1                       # stage latency - 1, registered into the outputs
        m.d.sync += [self.valid_out.eq(valid[last]), self.tag_out.eq(tags[last])]
        if not p.class_costs:                   # sigma = S: costs are 1.0
            m.d.sync += [self.sigma.eq(scaled), self.clipped.eq(clip6)]
        else:
            self._cost(m, scaled, clip6, pos, valid[last])
        return m

    def _derivative(self, m, loss, pos):
        """Cycles 1-4: ``E`` by the loss (registered: with ``valid[3]``)."""
        frac, width = self._frac, self._width
        one = 1 << frac
        # cycle 1: one subtraction serves every loss: D - Y (squared) or
        # D - (pos ? ONE : -ONE) (the margin of the hinges); the sigmoid table index
        diff = Signal(signed(width), name="diff")
        neg = Signal()
        index = Signal(range(SIGMOID_CELLS))
        u = Mux(self.dot < 0, ~self.dot, self.dot).as_unsigned()
        cell = u[frac - SIGMOID_CELL_BITS:]
        target = Mux(loss == Loss.SQUARED, self.label << (frac - LABEL.frac),
                     Mux(self.label > 0, one, -one))
        m.d.sync += [
            diff.eq(self.dot - target),
            neg.eq(self.dot < 0),
            index.eq(Mux(cell >= SIGMOID_CELLS, SIGMOID_CELLS - 1, cell)),
        ]
        # cycle 2: the table's answer (the block RAM's own output register); the
        # hinge is active inside the margin
        m.submodules.sigmoid = table = memory.Memory(
            shape=unsigned(SIGMOID_FRAC), depth=SIGMOID_CELLS, init=sigmoid_table())
        read = table.read_port(domain="comb")
        t2 = Signal(SIGMOID_FRAC)
        diff2 = Signal.like(diff)
        neg2, active2 = Signal(), Signal()
        m.d.comb += read.addr.eq(index)
        m.d.sync += [
            t2.eq(read.data), diff2.eq(diff), neg2.eq(neg),
            active2.eq(Mux(pos[0], diff < 0, diff > 0)),
        ]
        # cycle 3: the table's answer in a flip-flop: nextpnr times a block RAM's
        # output at its unregistered delay, so nothing but a register follows it
        t3 = Signal(SIGMOID_FRAC)
        diff3 = Signal.like(diff)
        neg3, active3 = Signal(), Signal()
        m.d.sync += [t3.eq(t2), diff3.eq(diff2), neg3.eq(neg2), active3.eq(active2)]
        # cycle 4: E by the loss, registered
        prob = Signal(SIGMOID_FRAC + 1)
        excess = Signal(signed(SIGMOID_FRAC + 2))
        m.d.comb += [prob.eq(Mux(neg3, (1 << SIGMOID_FRAC) - t3, t3)),
                     excess.eq(prob - Mux(pos[2], 1 << SIGMOID_FRAC, 0))]
        logistic = excess << (frac - SIGMOID_FRAC)
        hinge = Mux(active3, Mux(pos[2], -one, one), 0)
        sq_hinge = Mux(active3, diff3, 0)
        derivative = Signal(signed(width), name="derivative")
        with m.Switch(loss):
            with m.Case(Loss.SQUARED):
                m.d.sync += derivative.eq(diff3)
            with m.Case(Loss.LOGISTIC):
                m.d.sync += derivative.eq(logistic)
            with m.Case(Loss.HINGE):
                m.d.sync += derivative.eq(hinge)
            with m.Case(Loss.SQUARED_HINGE):
                m.d.sync += derivative.eq(sq_hinge)
        return derivative

    def _halp_error(self, m, derivative, valid):
        """HALP builds: the anchor-error cache. The sample's index addresses it in
        cycle 2, the cached ``E`` is in the block RAM's output register in cycle 3
        and in a flip-flop in cycle 4, beside ``E``; the full pass writes ``E`` in
        cycle 4. Returns the value registered into ``error``: ``E << LEVEL.frac`` in
        the full pass, ``(E - C[i]) << LEVEL.frac`` in the inner loop, else ``E``."""
        p = self.params
        full, inner = Signal(), Signal()
        m.d.sync += [full.eq(self.phase == Phase.FULL), inner.eq(self.phase == Phase.INNER)]
        index = [Signal(SAMPLE_INDEX_BITS, name=f"index{i + 1}") for i in range(4)]
        m.d.sync += [index[0].eq(self.index), *(index[i + 1].eq(index[i]) for i in range(3))]
        m.submodules.cache = cache = memory.Memory(
            shape=signed(p.residual_bits), depth=p.halp_samples, init=[],
            attrs={"no_rw_check": 1})
        cache_rd = cache.read_port(domain="comb")
        cache_wr = cache.write_port()
        read = Signal(signed(p.residual_bits), name="cache_read")
        cached = Signal(signed(self._width), name="cached")
        m.d.comb += cache_rd.addr.eq(index[1])
        m.d.sync += [read.eq(cache_rd.data), cached.eq(Mux(inner, read, 0))]
        m.d.comb += [cache_wr.addr.eq(index[3]), cache_wr.data.eq(derivative),
                     cache_wr.en.eq(full & valid[3])]
        return Mux(full | inner, (derivative - cached) << LEVEL.frac, derivative)

    def _scale(self, m, error, valid):
        """Cycles 6-8: ``S = sat(round_shift(E, s))``. ``round_shift(E, s) = (floor(E /
        2**(s-1)) + 1) >> 1`` for s >= 1: a constant shift, a barrel shift by
        ``shift`` only, then a narrow increment. Returns ``S`` and its clip flag."""
        coarse = error >> (BASE_SHIFT - 1)
        halved = Signal(signed(len(coarse)))
        rounded = Signal(signed(len(coarse)))
        m.d.sync += [halved.eq(coarse >> self.shift), rounded.eq((halved + 1) >> 1)]
        s_sat, s_clip = saturate(m, rounded, self.params.sigma.bits, "scaled")
        scaled = Signal(signed(self.params.sigma.bits))
        clip6 = Signal()
        m.d.sync += [scaled.eq(s_sat), clip6.eq(valid[6] & s_clip)]
        return scaled, clip6

    def _cost(self, m, scaled, clip6, pos, valid_last):
        """Cycles 9..: ``sigma = sat(round_shift(S * cost, COST_FRAC))``, shift-and-add;
        the rounding has a cycle, the saturation another."""
        m.submodules.cost_tree = tree = self._cost_tree
        cost = Signal(COST_BITS)
        m.d.comb += cost.eq(Mux(pos[7], self.cost_pos, self.cost_neg))
        for i in range(COST_BITS):
            m.d.comb += tree.inputs[i].eq(Mux(cost[i], scaled << i, 0))
        clip_late = Signal(tree.latency + 1)
        m.d.sync += clip_late.eq(Cat(clip6, clip_late))
        rounded = Signal(signed(len(tree.sum) - COST_FRAC + 1), name="cost_rounded")
        m.d.sync += rounded.eq((tree.sum + (1 << (COST_FRAC - 1))) >> COST_FRAC)
        sigma, clip = saturate(m, rounded, self.params.sigma.bits, "sigma")
        m.d.sync += [self.sigma.eq(sigma),
                     self.clipped.eq(valid_last & (clip | clip_late[-1]))]
