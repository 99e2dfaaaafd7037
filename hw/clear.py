"""The clear pass: one sweep over the bank words after every ``start``.

While it sweeps, the engine clears the gradient (and in the HALP full pass
re-centres: anchor = model, offset = 0) one word of every bank per cycle, and
:class:`ClearPass` derives the run-time geometry of a sample from the
configured feature count and values per beat: the index of the last feature
beat and which lanes that beat uses. In builds with model copies (delayed
gradients), :class:`CopyFill` makes every copy of the model equal at the start of
an inner loop. Neither writes a memory itself.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .delay import delayed
from .params import EngineParams
from .replica import copies, replicas

__all__ = ["ClearPass", "CopyFill"]


class ClearPass(wiring.Component):
    """Sweeps ``cycles = max(bank_depth, max_beats)`` words after ``start``.

    Attributes
    ----------
    start : In(1)
        Begin the sweep.
    features : In(range(max_features + 1)); per_beat : In(range(lanes + 1))
        ``d`` (read in the ``start`` cycle, held with ``deep_pipeline``) and ``K``
        (held while ``busy``).
    busy : Out(1)
        The sweep runs; ``word`` is the bank word it is at.
    word : Out(range(cycles))
    word_valid : Out(1)
        ``busy`` and ``word`` is a bank word (below ``bank_depth``).
    late_word, late_valid : Out
        ``word`` and ``word_valid`` two cycles later, for writes of the words read:
        a cycle for the block RAM's read, a cycle for a register.
    done : Out(1)
        The sweep's last cycle.
    bank_busy, bank_valid : Out(lanes)
        ``busy`` and ``word_valid`` for each bank's write port: with
        ``deep_pipeline`` each from a register of its own (they select and enable
        the writes of banks that span the die), else the same signals.
    bank_word, bank_late_word : Out(lanes x range(cycles)); bank_late_valid : Out(lanes)
        ``word``, ``late_word`` and ``late_valid`` for each bank's write port, in
        the same way (a shared address register into the eight anchor banks' block
        RAMs was a ULX3S build's longest path, 14.2 ns, nearly all routing).
    last_word : Out(range(max_beats)); last_mask : Out(lanes)
        Feature beats of a sample minus one, and the lanes its last beat uses;
        valid once the sweep is done.
    """

    def __init__(self, params: EngineParams):
        self.params = params
        self.cycles = max(params.bank_depth, params.max_beats)
        super().__init__({
            "start": In(1),
            "features": In(range(params.max_features + 1)),
            "per_beat": In(range(params.lanes + 1)),
            "busy": Out(1), "word": Out(range(self.cycles)), "word_valid": Out(1),
            "late_word": Out(range(self.cycles)), "late_valid": Out(1),
            "done": Out(1),
            "bank_busy": Out(params.lanes), "bank_valid": Out(params.lanes),
            "bank_word": Out(data.ArrayLayout(range(self.cycles), params.lanes)),
            "bank_late_word": Out(data.ArrayLayout(range(self.cycles), params.lanes)),
            "bank_late_valid": Out(params.lanes),
            "last_word": Out(range(params.max_beats)), "last_mask": Out(params.lanes),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        base = Signal(range(p.max_beats * p.lanes + p.lanes + 1))   # first feature of `word`
        # deep_pipeline: `d` in a register of the pass's own, loaded at `start` (the
        # link's configuration registers sit across the die, and `features` into the
        # last-beat mask was a ULX3S build's longest path)
        features = Signal.like(self.features) if p.deep_pipeline else self.features
        m.d.comb += [self.word_valid.eq(self.busy & (self.word < p.bank_depth)),
                     self.done.eq(~self.start & self.busy & (self.word == self.cycles - 1))]
        m.d.comb += [self.late_word.eq(delayed(m, self.word, 2, "late_word")),
                     self.late_valid.eq(delayed(m, self.word_valid, 2, "late_valid"))]
        busy_next = self.start | (self.busy & ~self.done)
        valid_next = busy_next & (Mux(self.start, 0, self.word + 1) < p.bank_depth)
        m.d.comb += [
            self.bank_busy.eq(copies(m, self.busy, busy_next, p.lanes, "bank_busy",
                                     registered=p.deep_pipeline)),
            self.bank_valid.eq(copies(m, self.word_valid, valid_next, p.lanes, "bank_valid",
                                      registered=p.deep_pipeline)),
        ]
        # the per-bank words: copies loaded from the next word (so each equals
        # `word`), and from the word a cycle late (so each equals `late_word`)
        if p.deep_pipeline:
            word_next = Mux(self.start, 0, Mux(self.busy, self.word + 1, self.word))
            bank_word = replicas(m, word_next[:len(self.word)], p.lanes, "bank_word")
            bank_late_word = replicas(m, delayed(m, self.word, 1, "late1_word"), p.lanes,
                                      "bank_late_word")
            bank_late_valid = replicas(m, delayed(m, self.word_valid, 1, "late1_valid"),
                                       p.lanes, "bank_late_valid")
        else:
            bank_word, bank_late_word = [self.word] * p.lanes, [self.late_word] * p.lanes
            bank_late_valid = [self.late_valid] * p.lanes
        m.d.comb += [*(self.bank_word[b].eq(w) for b, w in enumerate(bank_word)),
                     *(self.bank_late_word[b].eq(w) for b, w in enumerate(bank_late_word)),
                     self.bank_late_valid.eq(Cat(*bank_late_valid))]
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.word.eq(0), base.eq(0)]
            if p.deep_pipeline:
                m.d.sync += features.eq(self.features)
        with m.Elif(self.busy):
            with m.If(base < features):
                m.d.sync += [
                    self.last_word.eq(self.word),
                    self.last_mask.eq(Cat(base + i < features for i in range(p.lanes))),
                ]
            m.d.sync += [self.word.eq(self.word + 1), base.eq(base + self.per_beat)]
            with m.If(self.done):
                m.d.sync += self.busy.eq(0)
        return m


class CopyFill(wiring.Component):
    """Builds with model copies: at the start of an inner loop, every other copy of
    the model becomes a copy of the current one (every word, one per bank a cycle).

    The inner loop's updates write the words of the ``d`` features into a new copy
    each; this keeps the words they do not write the same in every copy.

    Attributes
    ----------
    start : In(1); base : In(range(model_copies))
        Begin; the copy that holds the model (held).
    busy : Out(1)
    word : Out(range(bank_depth))
        While ``busy``, the word of copy ``base`` to read (every bank).
    write : Out(1); write_word : Out(range(bank_depth)); write_copy : Out(range(model_copies))
        Two cycles later (a cycle for the block RAM's read, a cycle for a
        register): write the words read into ``write_copy``.
    """

    def __init__(self, params: EngineParams):
        self.params = params
        copies, depth = params.model_copies, params.bank_depth
        super().__init__({
            "start": In(1), "base": In(range(copies)), "busy": Out(1),
            "word": Out(range(depth)),
            "write": Out(1), "write_word": Out(range(depth)), "write_copy": Out(range(copies)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        other = Signal(range(p.model_copies))          # the copy after `base` being filled
        m.d.comb += [self.write.eq(delayed(m, self.busy, 2, "write")),
                     self.write_word.eq(delayed(m, self.word, 2, "write_word")),
                     self.write_copy.eq(delayed(m, (self.base + other)[:len(self.write_copy)],
                                                2, "write_copy"))]
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.word.eq(0), other.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += self.word.eq(self.word + 1)
            with m.If(self.word == p.bank_depth - 1):
                m.d.sync += [self.word.eq(0), other.eq(other + 1)]
                with m.If(other == p.model_copies - 1):
                    m.d.sync += self.busy.eq(0)
        return m
