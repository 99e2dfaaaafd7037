"""The resident store: a data set held on the board, fed to the engine with no host traffic.

The encoding and the sampling rule are written down in ``ziphalp.hw.params``
("Resident data"); the golden model's :meth:`~ziphalp.sim.golden.GoldenEngine.run`
(:func:`~ziphalp.sim.golden.walk`, :func:`~ziphalp.sim.golden.sample_fields`,
:func:`~ziphalp.sim.golden.resident_beats`) is the same in NumPy.

:class:`ResidentSource` holds three memories, written a beat at a time by the
link's ``LOAD_DATA``:

* the codes: one memory per column ``c < lanes`` (8 bits, ``resident_rows`` deep),
  so that a feature beat reads ``K`` consecutive features from one or two rows
  in one cycle whatever ``K``: column ``c`` reads row ``base + f0 // lanes + (c <
  f0 % lanes)``, and the columns are rotated so that field ``i`` gets feature
  ``f0 + i``;
* the labels: words of ``beat_bits // 16`` labels;
* the sampler table: one copy per sampling lane (code to ``(j, t)``).

A ``RUN`` (``start`` with ``count``, ``first``, ``stride``, ``samples``, ``seed``) walks
the samples ``(first + u * stride) mod samples`` and emits, for each, the label
beat and ``ceil(d / K)`` feature beats in the stream format the link would
replay, at one beat a cycle. Pipeline: S0 issues a beat (memory addresses), S1
holds the code columns' and the label memory's words in flip-flops (nothing but
a register follows a block RAM's output), S2 rotates the codes into fields (the
label word is picked), S3 looks them up in the sampler table (so that no path
runs from one block RAM's output into another's address), S4 holds the table's
answers and each lane's xorshift32 output (the lane steps per feature beat), S5
draws and packs the fields for the run-time ``(k, double)`` (with
``deep_pipeline`` the draws are registered first, S4d, and packed a cycle later),
S6 holds the beat for the output FIFO. A beat is issued only when
the FIFO has room for it and every beat in flight, so the engine's
back-pressure never stalls the pipeline.
"""

from functools import reduce
from operator import or_
from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .banks import rotate
from .control import beat_layout
from .decode import modes
from .delay import delayed
from .params import (
    CODE_BITS,
    CODE_SCALE,
    CODE_ZERO,
    LABEL,
    SAMPLE_INDEX_OFFSET,
    SAMPLER_ENTRIES,
    SAMPLER_T_BITS,
    EngineParams,
    clog2,
    field_bits,
)
from .prng import PRNGLane
from .protocol import Region
from .replica import REPLICA, replica, replicas

__all__ = ["ResidentSource", "FIFO_DEPTH", "LAUNCH", "stages"]

#: Beats the output FIFO holds (the beats in flight, one issued on a registered
#: room, and a margin).
FIFO_DEPTH = 16


def stages(params: EngineParams) -> int:
    """Pipeline stages between issue and the FIFO (S4d too with ``deep_pipeline``)."""
    return 6 + params.deep_pipeline

#: Cycles from ``start`` to the run's first issue (the geometry's products).
LAUNCH = 1


#: The store's memories are written only while the link loads (its ``DATA_LOAD``
#: state) and read only while it runs (``RUN``), never both at once: what a read
#: returns when it meets a write to its word does not matter.
NO_RW_CHECK = {"no_rw_check": 1}


def _read_port(m, mem, name: str) -> SimpleNamespace:
    """A read port of ``mem`` whose ``data`` follows ``addr`` by a cycle, as
    ``mem.read_port()``'s does, made as a combinational read and a register.

    Yosys folds the register into the block RAM and, doing so, reads the memory's
    ``no_rw_check``: the collision result is left undefined. A synchronous read port
    is mapped as it stands, the attribute unread, with read-before-write emulated
    around the block RAM (a registered copy of the write address, data and enable,
    a comparison and a multiplexer per read): on the ULX3S that copy of the load
    address was a net across all 32 code block RAMs, the build's longest path. The
    gradient and model banks (``ziphalp.hw.banks``) read the same way."""
    port = mem.read_port(domain="comb")
    data = Signal.like(port.data, name=f"{name}_data", reset_less=True)
    m.d.sync += data.eq(port.data)
    return SimpleNamespace(addr=port.addr, data=data)


class ResidentSource(wiring.Component):
    """The resident store and its run sequencer (module docstring).

    Attributes
    ----------
    features : In(range(max_features + 1)); k : In(range(max_k + 1)); double : In(1)
        The engine's configuration (set at least a cycle before ``start``, held during
        the run).
    indexed : In(1)
        Label beats carry the sample index (the HALP phases).
    start : In(1)
        Begin a run of ``count`` samples from ``first``, ``stride`` and ``samples``,
        the sampling lanes seeded with ``seed``, the last feature made on chip as
        the constant 1.0 if ``bias`` (all set at least a cycle before ``start`` and
        held during the run).
    busy : Out(1)
        A run has beats still to emit.
    write : In(1); region : In(Region); addr : In(range(...)); data : In(beat_bits)
        Write beat ``addr`` of ``region``; ``write_ready`` says it is taken this
        cycle (a sampler beat takes one cycle per entry). With ``deep_pipeline``
        the memories are written two cycles later.
    beats : Out(stream.Signature(beat_layout(params)))
        The beats of the run, the last one flushing.
    """

    def __init__(self, params: EngineParams):
        if not params.resident:
            raise ValueError("ResidentSource needs a build with resident data")
        self.params = p = params
        most = max(region.beats(p) for region in Region)
        super().__init__({
            "features": In(range(p.max_features + 1)),
            "k": In(range(p.max_k + 1)),
            "double": In(1),
            "indexed": In(1),
            "start": In(1),
            "count": In(32), "first": In(16), "stride": In(16), "samples": In(16),
            "seed": In(32), "bias": In(1),
            "busy": Out(1),
            "write": In(1), "write_ready": Out(1), "region": In(Region),
            "addr": In(range(most)), "data": In(p.beat_bits),
            "beats": Out(stream.Signature(beat_layout(p))),
        })

    @property
    def entry_bits(self) -> int:
        """Bits of a sampler entry kept: ``j`` (8) and ``t``."""
        return 8 + SAMPLER_T_BITS

    def elaborate(self, platform):
        m = Module()
        p = self.params
        mems = self._memories(m)
        m.submodules.out = out = fifo.SyncFIFOBuffered(width=p.beat_bits + 1, depth=FIFO_DEPTH)
        m.d.comb += [self.beats.valid.eq(out.r_rdy), out.r_en.eq(self.beats.ready),
                     self.beats.payload.data.eq(out.r_data[:p.beat_bits]),
                     self.beats.payload.flush.eq(out.r_data[-1])]
        self._launch = Signal()                   # `start`, a cycle later
        stage = self._stage_signals()
        inflight = sum(s.valid for s in stage[1:])
        issue = Signal()
        running = self._issue(m, mems, stage[1], issue)
        # room for a beat, registered: it assumes a beat issued in the cycle it is
        # computed in, so it never admits one too many
        room = Signal()
        m.d.sync += room.eq(out.level + inflight + 1 < FIFO_DEPTH)
        m.d.comb += issue.eq(running & room)
        self._latch(m, mems, stage[1], stage[2])
        self._rotate(m, stage[2], stage[3])
        self._lookup(m, mems, stage[3], stage[4])
        self._hold(m, mems, stage[4], stage[5])
        self._draw(m, *stage[5:])
        m.d.comb += [out.w_data.eq(Cat(stage[-1].data, stage[-1].flush)),
                     out.w_en.eq(stage[-1].valid),
                     self.busy.eq(self._launch | running | (inflight != 0) | out.r_rdy)]
        return m

    # --- storage -------------------------------------------------------------------

    def _memories(self, m):
        """The code columns, the label words and the sampler copies, with their load
        ports; returns their read ports (:func:`_read_port`)."""
        p, L, W = self.params, self.params.lanes, self.params.beat_bits
        columns_per_beat = W // 8
        writing = {region: self.write & (self.region == region) for region in Region}
        # a sampler beat carries W // 32 entries, written one a cycle
        per_beat = W // 32
        sub = Signal(range(per_beat))
        m.d.comb += self.write_ready.eq((self.region != Region.SAMPLER) | (sub == per_beat - 1))
        with m.If(writing[Region.SAMPLER]):
            m.d.sync += sub.eq(Mux(sub == per_beat - 1, 0, sub + 1))
        addr, data = self.addr, self.data
        deep = p.deep_pipeline
        if deep:
            # the loaded beat comes from the link's frame buffer, a block RAM whose
            # output is timed unregistered (EngineParams.deep_pipeline): the writes go
            # through flip-flops, then each memory's address, data and enable through
            # registers of its own beside it (one net across the die from the first
            # to every memory was the longest path of a ULX3S build); they land two
            # cycles later (loads and runs never meet)
            addr, data, sub = (delayed(m, value, 1, name) for value, name in
                               ((addr, "load_addr"), (data, "load_data"), (sub, "load_sub")))
            writing = {region: delayed(m, en, 1, f"load_{region.name.lower()}")
                       for region, en in writing.items()}

        def held(value, name):
            # with deep_pipeline, in a register of this memory's own: a replica
            # (ziphalp.hw.replica), or synthesis merges it with another memory's
            # equal one and the merged net spans the die again
            return replica(m, value, name) if deep else value

        def write(mem, name, wr_addr, wr_data, wr_en):
            wr = mem.write_port()
            m.d.comb += [wr.addr.eq(held(wr_addr, f"{name}_waddr")),
                         wr.data.eq(held(wr_data, f"{name}_wdata")),
                         wr.en.eq(held(wr_en, f"{name}_wen"))]

        reads = {"codes": [], "tables": []}
        for c in range(L):
            mem = memory.Memory(shape=CODE_BITS, depth=p.resident_rows, init=[],
                                attrs=NO_RW_CHECK)
            m.submodules[f"codes{c}"] = mem
            group = c // columns_per_beat
            write(mem, f"codes{c}", addr // p.beats_per_row,
                  data.word_select(c % columns_per_beat, 8),
                  writing[Region.CODES] & (addr % p.beats_per_row == group))
            reads["codes"].append(_read_port(m, mem, f"codes{c}"))
        mem = memory.Memory(shape=W, depth=Region.LABELS.beats(p), init=[], attrs=NO_RW_CHECK)
        m.submodules.labels = mem
        write(mem, "labels", addr, data, writing[Region.LABELS])
        reads["labels"] = _read_port(m, mem, "labels")
        for i in range(L):
            mem = memory.Memory(shape=self.entry_bits, depth=SAMPLER_ENTRIES, init=[],
                                attrs=NO_RW_CHECK)
            m.submodules[f"sampler{i}"] = mem
            write(mem, f"sampler{i}", addr * per_beat + sub,
                  data.word_select(sub, 32)[:self.entry_bits], writing[Region.SAMPLER])
            reads["tables"].append(_read_port(m, mem, f"sampler{i}"))
        return reads

    def _stage_signals(self):
        """The registers after S0 .. S5 (index 1..6; index 0 unused)."""
        p, L = self.params, self.params.lanes
        common = {"valid": 1, "feature": 1, "flush": 1, "index": 16}
        first = {**common, "f0": range(p.max_features + L), "slot": range(p.beat_bits // 16)}
        s1 = Signal(data.StructLayout(first), name="s1")
        s1r = Signal(data.StructLayout({**first, "codes": data.ArrayLayout(CODE_BITS, L),
                                        "labels": p.beat_bits, "bias_at": L, "on": L}),
                     name="s1r")
        s2 = Signal(data.StructLayout({**common, "on": L, "label": LABEL.bits,
                                       "codes": data.ArrayLayout(CODE_BITS, L)}), name="s2")
        s3 = Signal(data.StructLayout({**common, "on": L, "label": LABEL.bits}), name="s3")
        s4 = Signal(data.StructLayout({**common, "on": L, "label": LABEL.bits,
                                       "entry": data.ArrayLayout(self.entry_bits, L),
                                       "draw": data.ArrayLayout(32, L)}), name="s4")
        s5 = Signal(data.StructLayout({"valid": 1, "flush": 1, "data": p.beat_bits}),
                    name="s5")
        if not p.deep_pipeline:
            return [None, s1, s1r, s2, s3, s4, s5]
        s4d = Signal(data.StructLayout({**common, "on": L, "label": LABEL.bits,
                                        "j": data.ArrayLayout(8, L), "up1": L, "up2": L}),
                     name="s4d")
        return [None, s1, s1r, s2, s3, s4, s4d, s5]

    # --- S0: the walk and the beat sequence ----------------------------------------------

    def _issue(self, m, mems, s1, issue):
        """The run's state; each issued beat's memory addresses and S1 register.
        Returns ``running`` (beats are left to issue)."""
        p, L = self.params, self.params.lanes
        lane_bits = clog2(L)
        row_bits = clog2(p.resident_rows) + 2
        running = Signal()
        remaining = Signal(32)
        index = Signal(16)                     # the current sample
        base = Signal(row_bits)                # its first row, index * R
        stride_rows, wrap_rows = Signal(row_bits + 16), Signal(row_bits + 16)
        label_next = Signal()                  # the next beat is a label beat
        f0 = Signal(range(p.max_features + L))     # the next feature beat's first feature
        per_beat = self._per_beat(m)
        # the run's geometry in registers, then its products in registers (the inputs
        # settle a cycle before `start` and are held): the run begins a cycle after
        # `start`, with each product a cycle of its own
        rows = Signal(range(p.max_features // L + 2))
        first, stride, samples = Signal(16), Signal(16), Signal(16)
        first_rows = Signal(row_bits)
        m.d.sync += [rows.eq((self.features - self.bias + L - 1) >> lane_bits),
                     first.eq(self.first), stride.eq(self.stride), samples.eq(self.samples),
                     first_rows.eq(first * rows), stride_rows.eq(stride * rows),
                     wrap_rows.eq(samples * rows), self._launch.eq(self.start)]
        # the walk's next sample, ready in registers: `index` changes at most every
        # other cycle (a sample is a label beat and a feature beat at least)
        step, step_back = Signal(17), Signal(17)
        wrap = Signal()
        ahead, ahead_back = Signal(row_bits + 16), Signal(row_bits + 16)
        m.d.sync += [step.eq(index + stride), step_back.eq(index + stride - samples),
                     wrap.eq(index + stride >= samples),
                     ahead.eq(stride_rows), ahead_back.eq(stride_rows - wrap_rows)]
        # whether the next feature beat is the sample's last, and whether the sample
        # is the run's last, kept in registers beside `f0` and `remaining`
        last_beat, final, one_beat = Signal(), Signal(), Signal()
        m.d.sync += one_beat.eq(per_beat >= self.features)
        # the feature beat's first row, base + f0 // lanes, kept with the walk: every
        # column's row is then ready in a register of its own (below)
        # (with `row + 1` and `row + 2` in registers beside it, so that no sum lies
        # between the walk's state and the columns' rows; each of the three's next
        # value is a register or a register's sum, chosen last)
        row, row1, row2 = Signal(row_bits), Signal(row_bits), Signal(row_bits)
        row_next, row1_next, row2_next = Signal(row_bits), Signal(row_bits), Signal(row_bits)
        m.d.comb += [row_next.eq(row), row1_next.eq(row1), row2_next.eq(row2)]
        m.d.sync += [row.eq(row_next), row1.eq(row1_next), row2.eq(row2_next)]

        def rows_from(first_row):
            return [row_next.eq(first_row), row1_next.eq(first_row + 1),
                    row2_next.eq(first_row + 2)]

        # label word of the sample; code rows of the feature beat: column c reads one
        # row further when it holds a feature after the row's wrap. Each column's row
        # leaves from its own register, loaded with the next beat's row: the sums
        # between the walk's registers and the 32 code block RAMs of the ULX3S were
        # its longest path, then the sums into these registers
        labels_per_word = p.beat_bits // 16
        m.d.comb += mems["labels"].addr.eq(index >> clog2(labels_per_word))
        column_rows = []
        for c, port in enumerate(mems["codes"]):
            column_row = Signal.like(port.addr, name=f"code_row{c}", attrs={REPLICA: 1})
            m.d.comb += port.addr.eq(column_row)
            column_rows.append(column_row)
        with m.If(self._launch):
            m.d.sync += [running.eq(1), remaining.eq(self.count), index.eq(first),
                         base.eq(first_rows), label_next.eq(1), f0.eq(0),
                         final.eq(self.count == 1)]
            m.d.comb += rows_from(first_rows)
            m.d.sync += [column_row.eq(first_rows) for column_row in column_rows]
        m.d.sync += s1.valid.eq(issue)
        with m.If(issue):
            m.d.sync += [s1.feature.eq(~label_next), s1.f0.eq(f0), s1.index.eq(index),
                         s1.slot.eq(index[:clog2(labels_per_word)]),
                         s1.flush.eq(~label_next & last_beat & final)]
            with m.If(label_next):
                m.d.sync += [label_next.eq(0), f0.eq(0), last_beat.eq(one_beat)]
                m.d.comb += rows_from(base)
                m.d.sync += [column_row.eq(base) for column_row in column_rows]
            with m.Elif(~last_beat):
                m.d.sync += [f0.eq(f0 + per_beat),
                             last_beat.eq(f0 + (per_beat << 1) >= self.features)]
                # per_beat <= lanes: the row moves on by at most one
                low = f0[:lane_bits] + per_beat
                carry, low_next = low[lane_bits:].any(), low[:lane_bits]
                m.d.comb += [row_next.eq(Mux(carry, row1, row)),
                             row1_next.eq(Mux(carry, row2, row1)),
                             row2_next.eq(Mux(carry, row2 + 1, row2))]
                m.d.sync += [column_row.eq(Mux(carry, Mux(c < low_next, row2, row1),
                                               Mux(c < low_next, row1, row)))
                             for c, column_row in enumerate(column_rows)]
            with m.Else():                     # the sample's last beat: walk on
                m.d.sync += [label_next.eq(1), remaining.eq(remaining - 1),
                             final.eq(remaining == 2),
                             index.eq(Mux(wrap, step_back, step)),
                             base.eq(base + Mux(wrap, ahead_back, ahead))]
                with m.If(final):
                    m.d.sync += running.eq(0)
        return running

    def _per_beat(self, m):
        """``K`` for the run-time mode, and the one-hot mode (registered)."""
        p = self.params
        per_beat = Signal(range(p.lanes + 1))
        self._selected = selected = Signal(len(modes(p)))
        for index, (k, double) in enumerate(modes(p)):
            m.d.sync += selected[index].eq((self.k == k) & (self.double == double))
        with m.Switch(Cat(self.double, self.k)):
            for k, double in modes(p):
                with m.Case(double | k << 1):
                    m.d.sync += per_beat.eq(p.values_per_beat(k, double))
        self._per_beat_reg = per_beat
        return per_beat

    # --- S1: the memories' words held; S2: codes into fields; S3: the sampler table ----

    def _latch(self, m, mems, s1, s1r):
        """The code columns' and the label memory's words into flip-flops (nothing but
        a register follows a block RAM's output), beside the beat's S1 register; which
        fields are in use and which is the bias feature, from the beat's first feature."""
        L = self.params.lanes
        last = Signal.like(self.features)          # static while the store runs
        m.d.sync += last.eq(self.features - 1)
        m.d.sync += [s1r.valid.eq(s1.valid), s1r.feature.eq(s1.feature),
                     s1r.flush.eq(s1.flush), s1r.index.eq(s1.index), s1r.f0.eq(s1.f0),
                     s1r.slot.eq(s1.slot), s1r.labels.eq(mems["labels"].data),
                     *(s1r.codes[c].eq(port.data) for c, port in enumerate(mems["codes"])),
                     s1r.bias_at.eq(Cat(self.bias & (s1.f0 + i == last) for i in range(L))),
                     s1r.on.eq(Cat((s1.f0 + i < self.features) & (i < self._per_beat_reg)
                                   for i in range(L)))]

    def _rotate(self, m, s1, s2):
        """The codes in field order (the bias feature's made), the fields in use and
        the label word, registered."""
        L = self.params.lanes
        lane_bits = clog2(L)
        codes = [s1.codes[c] for c in range(L)]
        # field i takes column (f0 + i) % L: rotate lane order by -f0
        slots = rotate(codes, (-s1.f0)[:lane_bits])
        one = CODE_ZERO + CODE_SCALE                # the bias feature's code
        for i in range(L):
            m.d.sync += s2.codes[i].eq(Mux(s1.bias_at[i], one, slots[i]))
        label = s1.labels.word_select(s1.slot, 16)
        m.d.sync += [s2.valid.eq(s1.valid), s2.feature.eq(s1.feature), s2.flush.eq(s1.flush),
                     s2.index.eq(s1.index), s2.on.eq(s1.on), s2.label.eq(label)]

    def _lookup(self, m, mems, s2, s3):
        for i, port in enumerate(mems["tables"]):
            m.d.comb += port.addr.eq(s2.codes[i])
        m.d.sync += [s3.valid.eq(s2.valid), s3.feature.eq(s2.feature), s3.flush.eq(s2.flush),
                     s3.index.eq(s2.index), s3.on.eq(s2.on), s3.label.eq(s2.label)]

    # --- S4: the table's answers and the draws held; S5: the fields packed -------------

    def _hold(self, m, mems, s3, s4):
        step = s3.valid & s3.feature
        # with deep_pipeline each lane is reseeded a cycle after `start`, from seed and
        # reseed registers of its own (`start` reached 32 flip-flops in each of the
        # lanes across the die, the seed their start-state adders); the first beat
        # steps the lanes cycles later
        L, deep = len(mems["tables"]), self.params.deep_pipeline
        seed = replicas(m, self.seed, L, "seed", registered=deep)
        reseed = replicas(m, self.start, L, "reseed", registered=deep)
        for i, port in enumerate(mems["tables"]):
            m.submodules[f"lane{i}"] = lane = PRNGLane(i)
            m.d.comb += [lane.seed.eq(seed[i]), lane.reseed.eq(reseed[i]),
                         lane.step.eq(step)]
            m.d.sync += [s4.entry[i].eq(port.data), s4.draw[i].eq(lane.next)]
        m.d.sync += [s4.valid.eq(s3.valid), s4.feature.eq(s3.feature), s4.flush.eq(s3.flush),
                     s4.index.eq(s3.index), s4.on.eq(s3.on), s4.label.eq(s3.label)]

    def _draw(self, m, s4, *after):
        """S5: each lane's draws against its threshold, and the fields packed for the
        run-time mode into ``s5`` (``after``'s last). With ``deep_pipeline`` the
        comparisons go into a register of their own (``after``'s first, S4d), and
        the packing follows a cycle later (the two together were a long path)."""
        p = self.params
        s5 = after[-1]
        drawn = []
        for i in range(p.lanes):
            entry, draw = s4.entry[i], s4.draw[i]
            j, t = entry[:8], entry[8:]
            up1 = Signal(name=f"up1_{i}")
            up2 = Signal(name=f"up2_{i}")
            m.d.comb += [up1.eq(draw[:16] < t), up2.eq(draw[16:] < t)]
            drawn.append((j, up1, up2))
        if len(after) == 2:
            s4d = after[0]
            m.d.sync += [s4d.valid.eq(s4.valid), s4d.feature.eq(s4.feature),
                         s4d.flush.eq(s4.flush), s4d.index.eq(s4.index), s4d.on.eq(s4.on),
                         s4d.label.eq(s4.label)]
            for i, (j, up1, up2) in enumerate(drawn):
                m.d.sync += [s4d.j[i].eq(j), s4d.up1[i].eq(up1), s4d.up2[i].eq(up2)]
            drawn = [(s4d.j[i], s4d.up1[i], s4d.up2[i]) for i in range(p.lanes)]
            s4 = s4d
        fields = {mode: [] for mode in modes(p)}
        for i, (j, up1, up2) in enumerate(drawn):
            for k, double in modes(p):
                if i < p.values_per_beat(k, double):
                    field = Cat(j[:k], up1, up2) if double else Cat(j[:k], up1)
                    fields[(k, double)].append(Mux(s4.on[i], field, 0))
        words = []
        for index, (k, double) in enumerate(modes(p)):
            word = Cat(*fields[(k, double)])
            assert len(word) == p.values_per_beat(k, double) * field_bits(k, double)
            words.append(Mux(self._selected[index], word, 0))
        packed = reduce(or_, words)
        label_beat = Cat(s4.label, Mux(self.indexed, s4.index, 0))
        assert len(label_beat) == SAMPLE_INDEX_OFFSET + 16
        m.d.sync += [s5.valid.eq(s4.valid), s5.flush.eq(s4.flush),
                     s5.data.eq(Mux(s4.feature, packed, label_beat))]
