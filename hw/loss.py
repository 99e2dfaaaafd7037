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
from .delay import delay_line
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
        base = ScaledError.error_at(params) + 6
        if params.class_costs:
            return base + AdderTree.latency_of(COST_BITS) + params.deep_pipeline
        return base

    @staticmethod
    def error_at(params: EngineParams) -> int:
        """The stage ``e`` that holds ``E`` (with ``valid[e]``): the table's output
        goes straight into the loss's logic (1), or into a flip-flop first and
        ``E`` into another (3, ``deep_pipeline``)."""
        return 3 if params.deep_pipeline else 1

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
        tags = delay_line(m, self.tag, stages, "tag")[1:]
        m.d.sync += [valid.eq(Cat(self.valid, valid)), pos.eq(Cat(self.label > 0, pos))]
        # configuration held in a register (static while samples flow)
        loss = Signal.like(self.loss)
        m.d.sync += loss.eq(self.loss)

        derivative = self._derivative(m, loss, pos)
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
        """Stages 1 to ``e``: ``E`` by the loss (``error_at``; combinational from the
        table's output register, or registered after a flip-flop stage)."""
        frac, width = self._frac, self._width
        deep = self.params.deep_pipeline
        e = self.error_at(self.params)
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
        t = Signal(SIGMOID_FRAC, name="t2")
        diff2 = Signal.like(diff)
        neg2, active = Signal(), Signal()
        m.d.comb += read.addr.eq(index)
        m.d.sync += [
            t.eq(read.data), diff2.eq(diff), neg2.eq(neg),
            active.eq(Mux(pos[0], diff < 0, diff > 0)),
        ]
        if deep:
            # cycle 3: the table's answer in a flip-flop: nextpnr times a block RAM's
            # output at its unregistered delay, so nothing but a register follows it
            t3, diff3 = Signal(SIGMOID_FRAC), Signal.like(diff)
            neg3, active3 = Signal(), Signal()
            m.d.sync += [t3.eq(t), diff3.eq(diff2), neg3.eq(neg2), active3.eq(active)]
            t, diff2, neg2, active = t3, diff3, neg3, active3
        # E by the loss
        prob = Signal(SIGMOID_FRAC + 1)
        excess = Signal(signed(SIGMOID_FRAC + 2))
        m.d.comb += [prob.eq(Mux(neg2, (1 << SIGMOID_FRAC) - t, t)),
                     excess.eq(prob - Mux(pos[e - 1], 1 << SIGMOID_FRAC, 0))]
        logistic = excess << (frac - SIGMOID_FRAC)
        hinge = Mux(active, Mux(pos[e - 1], -one, one), 0)
        sq_hinge = Mux(active, diff2, 0)
        derivative = Signal(signed(width), name="derivative")
        domain = "sync" if deep else "comb"             # registered: stage 3
        with m.Switch(loss):
            with m.Case(Loss.SQUARED):
                m.d[domain] += derivative.eq(diff2)
            with m.Case(Loss.LOGISTIC):
                m.d[domain] += derivative.eq(logistic)
            with m.Case(Loss.HINGE):
                m.d[domain] += derivative.eq(hinge)
            with m.Case(Loss.SQUARED_HINGE):
                m.d[domain] += derivative.eq(sq_hinge)
        return derivative

    def _halp_error(self, m, derivative, valid):
        """HALP builds: the anchor-error cache. The sample's index addresses it so
        that the cached ``E`` is in a register at stage ``e`` beside ``E`` (with
        ``deep_pipeline`` the block RAM's output register is followed by a
        flip-flop); the full pass writes ``E`` at stage ``e``. Returns the value
        registered into ``error``: ``E << LEVEL.frac`` in the full pass, ``(E -
        C[i]) << LEVEL.frac`` in the inner loop, else ``E``."""
        p = self.params
        e = self.error_at(p)
        full, inner = Signal(), Signal()
        m.d.sync += [full.eq(self.phase == Phase.FULL), inner.eq(self.phase == Phase.INNER)]
        index = [Signal(SAMPLE_INDEX_BITS, name=f"index{i + 1}") for i in range(e + 1)]
        m.d.sync += [index[0].eq(self.index), *(index[i + 1].eq(index[i]) for i in range(e))]
        m.submodules.cache = cache = memory.Memory(
            shape=signed(p.residual_bits), depth=p.halp_samples, init=[],
            attrs={"no_rw_check": 1})
        cache_rd = cache.read_port(domain="comb")
        cache_wr = cache.write_port()
        cached = Signal(signed(self._width), name="cached")
        if p.deep_pipeline:
            # the read's register is the block RAM's own: the flip-flop after it takes
            # the inner loop's choice of its word (before the block RAM's register, it
            # was a long path of a ULX3S build; after the flip-flop, `inner` into
            # `error` was the longest path of another). `inner` is held through a
            # run, so choosing a cycle early is the same
            read = Signal(signed(p.residual_bits), name="cache_read")
            m.d.comb += cache_rd.addr.eq(index[e - 2])
            m.d.sync += [read.eq(cache_rd.data), cached.eq(Mux(inner, read, 0))]
        else:
            m.d.comb += cache_rd.addr.eq(index[e - 1])
            m.d.sync += cached.eq(Mux(inner, cache_rd.data, 0))
        m.d.comb += [cache_wr.addr.eq(index[e]), cache_wr.data.eq(derivative),
                     cache_wr.en.eq(full & valid[e])]
        return Mux(full | inner, (derivative - cached) << LEVEL.frac, derivative)

    def _scale(self, m, error, valid):
        """Stages ``e + 2`` to ``e + 4``: ``S = sat(round_shift(E, s))``.
        ``round_shift(E, s) = (floor(E / 2**(s-1)) + 1) >> 1`` for s >= 1: a
        constant shift, a barrel shift by ``shift`` only, then a narrow increment.
        Returns ``S`` and its clip flag."""
        coarse = error >> (BASE_SHIFT - 1)
        halved = Signal(signed(len(coarse)))
        rounded = Signal(signed(len(coarse)))
        m.d.sync += [halved.eq(coarse >> self.shift), rounded.eq((halved + 1) >> 1)]
        s_sat, s_clip = saturate(m, rounded, self.params.sigma.bits, "scaled")
        scaled = Signal(signed(self.params.sigma.bits))
        clip6 = Signal()
        m.d.sync += [scaled.eq(s_sat),
                     clip6.eq(valid[self.error_at(self.params) + 3] & s_clip)]
        return scaled, clip6

    def _cost(self, m, scaled, clip6, pos, valid_last):
        """Stages ``e + 5``..: ``sigma = sat(round_shift(S * cost, COST_FRAC))``,
        shift-and-add (with ``deep_pipeline`` the rounding has a cycle of its own)."""
        m.submodules.cost_tree = tree = self._cost_tree
        deep = self.params.deep_pipeline
        cost = Signal(COST_BITS)
        m.d.comb += cost.eq(Mux(pos[self.error_at(self.params) + 4], self.cost_pos,
                                self.cost_neg))
        for i in range(COST_BITS):
            m.d.comb += tree.inputs[i].eq(Mux(cost[i], scaled << i, 0))
        clip_late = Signal(max(1, tree.latency + deep))
        m.d.sync += clip_late.eq(Cat(clip6, clip_late))
        rounded = Signal(signed(len(tree.sum) - COST_FRAC + 1), name="cost_rounded")
        m.d["sync" if deep else "comb"] += rounded.eq(
            (tree.sum + (1 << (COST_FRAC - 1))) >> COST_FRAC)
        sigma, clip = saturate(m, rounded, self.params.sigma.bits, "sigma")
        m.d.sync += [self.sigma.eq(sigma),
                     self.clipped.eq(valid_last & (clip | clip_late[-1]))]
