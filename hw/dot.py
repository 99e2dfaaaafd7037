"""Dot-product lanes: ``sum_f w_f q1_f`` over the beats of one sample.

``lanes`` products (model word x level value, each as DSP-sized terms from
``multiply.py``), a pipelined adder tree over all terms and an accumulator that
restarts on a sample's first beat. Fixed latency, no stalls:
the engine feeds one beat per cycle at most and delays its own tags by the same
``latency``. Model words arrive straight from block RAM, levels from the level
tables (in bank order: the sum does not care which lane holds which feature).
"""

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .adder_tree import AdderTree
from .delay import delayed
from .multiply import LATENCY as PRODUCT_LATENCY
from .multiply import product_terms, term_count
from .params import LEVEL, EngineParams

__all__ = ["DotProduct"]


class DotProduct(wiring.Component):
    """Accumulates ``sum_k weights[k] * levels[k]`` over the beats ``first`` .. ``last``.

    Attributes
    ----------
    weights, levels : In
        One beat: ``lanes`` model words and ``lanes`` level values (unused lanes zero).
    valid, first, last : In(1)
        The beat is valid / opens a sample / closes a sample.
    tag : In(tag_bits)
        Carried alongside, appears on ``tag_out`` with ``done``.
    dot : Out(signed(params.dot_bits))
        The exact dot product, valid while ``done``.
    done : Out(1)
        One cycle, ``latency`` cycles after a ``last`` beat.
    """

    @staticmethod
    def latency_of(params: EngineParams) -> int:
        """Cycles from a beat on the inputs to ``done`` in a build with ``params``."""
        return (params.deep_pipeline + PRODUCT_LATENCY + 1
                + AdderTree.latency_of(params.lanes * term_count(params.model_bits)))

    def __init__(self, params: EngineParams, tag_bits: int):
        self.params = params
        self._tree = AdderTree(params.model_bits + LEVEL.bits,
                               params.lanes * term_count(params.model_bits))
        #: cycles from a beat on the inputs to ``done``
        self.latency = self.latency_of(params)
        super().__init__({
            "weights": In(data.ArrayLayout(signed(params.model_bits), params.lanes)),
            "levels": In(data.ArrayLayout(signed(LEVEL.bits), params.lanes)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "tag": In(tag_bits),
            "dot": Out(signed(params.dot_bits)),
            "done": Out(1),
            "tag_out": Out(tag_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.tree = tree = self._tree

        # With deep_pipeline, a register stage first: the model words come from the
        # banks' block RAMs and the multipliers sit in rows of their own, and the
        # multipliers' operand registers were placed up to 30 tiles from them (the
        # longest path of a full ULX3S build: 6.8 ns of routing into a multiplier)
        weights = delayed(m, self.weights, p.deep_pipeline, "weights_in")
        levels = delayed(m, self.levels, p.deep_pipeline, "levels_in")

        # Stage 1: each lane's product as registered DSP-sized terms (see multiply.py).
        terms = []
        for k in range(p.lanes):
            terms += product_terms(m, weights[k], levels[k], name=f"lane{k}",
                                   platform=platform)
        for i, term in enumerate(terms):
            m.d.comb += tree.inputs[i].eq(term)

        # Control bits travel with the data: through the products, then the tree.
        ctl_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1,
                                        "tag": len(self.tag)})
        ctl = Signal(ctl_layout)
        m.d.comb += [ctl.valid.eq(self.valid), ctl.first.eq(self.first),
                     ctl.last.eq(self.last), ctl.tag.eq(self.tag)]
        for i in range(p.deep_pipeline + PRODUCT_LATENCY + tree.latency):
            nxt = Signal(ctl_layout, name=f"ctl_tree{i}")
            m.d.sync += nxt.eq(ctl)
            ctl = nxt

        # Stage 3: accumulate over the sample.
        acc = Signal(signed(p.dot_bits))
        with m.If(ctl.valid & ctl.first):
            m.d.sync += acc.eq(tree.sum)
        with m.Elif(ctl.valid):
            m.d.sync += acc.eq(acc + tree.sum)
        done = Signal()
        tag = Signal(len(self.tag))
        m.d.sync += [done.eq(ctl.valid & ctl.last), tag.eq(ctl.tag)]
        m.d.comb += [self.dot.eq(acc), self.done.eq(done), self.tag_out.eq(tag)]
        return m
