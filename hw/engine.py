"""The streaming SGD engine: ZipML-encoded samples, mini-batch, fixed point.

Organisation (see ``ziphalp.hw.control`` for the ports and ``ziphalp.hw.params``
for the encoding and the arithmetic; ``ziphalp.sim.golden`` is the bit-exact
model):

* **Decode.** Beats arrive on ``ctrl.beats``: a label beat, then ``n = ceil(d /
  K)`` feature beats of ``K`` fields (``K`` set by the run-time precision and
  sampling mode). Field ``i`` of a beat is cut out by lane ``i``, looked up in
  the lane's copy of the level table (the pair ``l_j, l_{j+1}`` in one read) and
  becomes the two samples ``q1``, ``q2``.
* **Banks.** The model and the gradient live in ``lanes`` banks: feature ``f`` is
  word ``f // lanes`` of bank ``f % lanes``. A beat holds ``K <= lanes``
  consecutive features starting at some bank, so each bank reads one of two
  neighbouring words, and the beat's ``q1``/``q2`` are rotated into bank order.
* **Stage 1, dot.** Each feature beat reads one word per bank and feeds
  :class:`DotProduct`; its ``q2`` (bank order) waits in the sample FIFO. On the
  last beat the exact dot product goes to :class:`ScaledError` (the loss), which
  queues ``sigma`` (and whether the sample ends a batch) for stage 2.
* **Stage 2, update.** For each queued sample, one pass over its ``n`` beats:
  ``q2`` from the FIFO, gradient (and at a batch end, model) words from the
  banks, through :class:`UpdateLanes`, written back ``UpdateLanes.latency``
  cycles later to the banks the beat covers.
* **Hazards.** The model is read-only inside a batch. After a sample that ends a
  batch, stage 1 accepts feature beat ``j`` of later samples only once stage 2
  has written beat ``j``'s words, so every sample sees the model of the
  previous batch exactly as the golden model does, whatever the bubbles. Two
  stage-2 passes start far enough apart that a pass never reads a gradient word
  the previous pass has not written yet.

* **HALP** (builds with ``halp_samples``; arithmetic in ``ziphalp.hw.params``).
  Two more banked memories, the anchor ``a`` and the ``OFFSET_BITS``-bit offset
  ``z``, sit beside the model, which always holds ``w = a + (z << sh)`` so the
  dot product and ``READ_MODEL`` use it unchanged. The full pass is SGD whose
  batch never ends: its clear pass copies ``w`` into ``a`` and zeroes ``z``, the
  gradient banks accumulate ``G``, and :class:`ScaledError` caches each sample's
  ``E`` under the index carried by its label beat. The inner loop's clear pass
  keeps ``G``; then ``S = sum G**2`` is taken one word a cycle through one
  squarer, ``sh`` follows from ``S`` in five steps, and a pass over the words
  turns ``G`` into ``gamma`` (in its own banks) and clears ``G``. The inner loop is
  SGD in mini-batches again: stage 1's loss uses ``E - C[i]`` and the shift
  ``shift + sh``; stage 2 adds ``gamma`` with each sample's products, reads ``a``
  and ``z`` with the model word and at a batch end writes back ``w'`` and
  ``z'``. Both run at the SGD engine's rates: a beat a cycle while a batch fills,
  ``batch_end_gap`` more per batch. Preparing the inner loop takes about
  ``max_features + bank_depth`` cycles.

Steady state: one beat per cycle while a batch fills (``n + 1`` cycles a
sample, the label beat included, once ``n`` is at least ``UpdateLanes.latency -
GRAD_AT``); a sample that ends a batch costs ``n`` cycles plus the fixed
:attr:`SGDEngine.batch_end_gap`, whatever ``d``.
This module holds no protocol logic; ``ziphalp.hw.link`` drives it.
"""

from functools import reduce
from operator import or_
from types import SimpleNamespace

from amaranth import Array, Cat, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In

from .control import control_signature
from .dot import DotProduct
from .loss import ScaledError
from .params import (
    HALP_FRAC,
    LABEL,
    LEVEL,
    LOG_FRAC,
    OFFSET_BITS,
    OFFSET_SHIFT_MAX,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    Phase,
    clog2,
    field_bits,
)
from .update import UpdateLanes

__all__ = ["SGDEngine"]

#: Samples allowed between label beat and the start of their update pass.
INFLIGHT = 8
#: Cycles from taking a feature beat to its decoded levels (field register, table read).
DECODE_LATENCY = 2


class SGDEngine(wiring.Component):
    """Mini-batch SGD over a stream of ZipML-encoded samples.

    Parameters
    ----------
    params : EngineParams
        Build-time parameters (checked when they are made).

    Attributes
    ----------
    ctrl : In(control_signature(params))
    """

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"SGDEngine needs EngineParams, not {params!r}")
        self.params = params
        #: the run-time modes (k, double) the engine decodes, in ``mode`` order
        self.modes = [(k, double) for k in range(1, params.max_k + 1) for double in (0, 1)]
        tag = {"label": LABEL.bits, "end": 1}
        if params.halp:
            tag["index"] = 16                                 # the sample's cache index
        self._tag = data.StructLayout(tag)
        self._dot = DotProduct(params, tag_bits=self._tag.size)
        self._loss = ScaledError(params, tag_bits=1)
        self._update = UpdateLanes(params)
        super().__init__({"ctrl": In(control_signature(params))})

    @property
    def fifo_depth(self) -> int:
        """Sample FIFO depth: the longest sample plus the beats in flight around it."""
        return self.params.max_beats + 16

    @property
    def batch_end_gap(self) -> int:
        """Idle input cycles after the last beat of a batch-ending sample before the
        next sample's first feature beat is accepted: the fixed cost of a model
        update. (Decode, dot product, loss, sigma FIFO (2), pass start, RAM read,
        update lanes, write-back, and two for the registered, one-word-early
        hazard check.)"""
        return (DECODE_LATENCY + self._dot.latency + self._loss.latency
                + self._update.latency + 6)

    @staticmethod
    def _read_port(m, mem, name):
        """A read port with one cycle of latency: ``.addr`` now, ``.data`` next cycle."""
        port = mem.read_port(domain="comb")
        data_reg = Signal(mem.shape, name=f"{name}_data")
        m.d.sync += data_reg.eq(port.data)
        return SimpleNamespace(addr=port.addr, data=data_reg)

    def elaborate(self, platform):
        m = Module()
        p, ctrl = self.params, self.ctrl
        L, WM, GB, LB = p.lanes, p.model_bits, p.grad_bits, LEVEL.bits
        beats_shape = range(p.max_beats + 1)
        addr_shape = range(p.bank_depth + 1)

        # --- run-time mode, decoded into registers (the configuration is static
        # from the cycle before `start` on) --------------------------------------------
        mode_sel = Signal(len(self.modes))                   # one-hot (k, double)
        per_beat = Signal(range(L + 1))                       # K
        lane_in_mode = Signal(L)                              # lanes 0..K-1
        for index, (k, double) in enumerate(self.modes):
            m.d.sync += mode_sel[index].eq((ctrl.k == k) & (ctrl.double == double))
        with m.Switch(Cat(ctrl.double, ctrl.k)):
            for k, double in self.modes:
                with m.Case(double | k << 1):
                    K = p.values_per_beat(k, double)
                    m.d.sync += [per_beat.eq(K), lane_in_mode.eq((1 << K) - 1)]

        # the phase (HALP builds), registered like the mode
        full, inner = Signal(), Signal()
        if p.halp:
            m.d.sync += [full.eq(ctrl.phase == Phase.FULL), inner.eq(ctrl.phase == Phase.INNER)]

        # --- storage ----------------------------------------------------------------
        # No word is ever read in the cycle it is written (the hazard rules below), so
        # each read is an asynchronous port into a register and the memories carry
        # "no_rw_check": synthesis folds the register into the block RAM without
        # emulating read-during-write in logic. Timing is that of a synchronous port.
        def bank_mem(shape, name, b):
            mem = memory.Memory(shape=shape, depth=p.bank_depth, init=[],
                                attrs={"no_rw_check": 1})
            m.submodules[f"{name}{b}"] = mem
            return mem
        model_mem = [bank_mem(signed(WM), "model", b) for b in range(L)]
        grad_mem = [bank_mem(signed(GB), "grad", b) for b in range(L)]
        model_dot = [self._read_port(m, mem, f"model_dot{b}") for b, mem in enumerate(model_mem)]
        model_upd = [self._read_port(m, mem, f"model_upd{b}") for b, mem in enumerate(model_mem)]
        model_wr = [mem.write_port() for mem in model_mem]
        grad_rd = [self._read_port(m, mem, f"grad_rd{b}") for b, mem in enumerate(grad_mem)]
        grad_wr = [mem.write_port() for mem in grad_mem]
        if p.halp:      # HALP: the anchor and the offset, banked like the model
            anchor_mem = [bank_mem(signed(WM), "anchor", b) for b in range(L)]
            offset_mem = [bank_mem(signed(OFFSET_BITS), "offset", b) for b in range(L)]
            anchor_upd = [self._read_port(m, mem, f"anchor_upd{b}")
                          for b, mem in enumerate(anchor_mem)]
            offset_upd = [self._read_port(m, mem, f"offset_upd{b}")
                          for b, mem in enumerate(offset_mem)]
            anchor_wr = [mem.write_port() for mem in anchor_mem]
            offset_wr = [mem.write_port() for mem in offset_mem]
            # gamma, banked like the gradient (the inner loop accumulates in the latter)
            gamma_mem = [bank_mem(signed(GB), "gamma", b) for b in range(L)]
            gamma_rd = [self._read_port(m, mem, f"gamma_rd{b}") for b, mem in enumerate(gamma_mem)]
            gamma_wr = [mem.write_port() for mem in gamma_mem]

        # Level tables, one copy per lane sized for the largest k that lane serves:
        # entry j holds l_j (lo) and l_{j+1} (hi), so one read gives both samples.
        tables = []
        for i in range(L):
            depth = 1 << p.lane_max_k(i)
            lo = memory.Memory(shape=signed(LB), depth=depth, init=[], attrs={"no_rw_check": 1})
            hi = memory.Memory(shape=signed(LB), depth=depth, init=[], attrs={"no_rw_check": 1})
            m.submodules[f"levels_lo{i}"], m.submodules[f"levels_hi{i}"] = lo, hi
            lo_w, hi_w = lo.write_port(), hi.write_port()
            above = Signal.like(ctrl.level_index, name=f"level_above{i}")
            m.d.comb += [
                above.eq(ctrl.level_index - 1),
                lo_w.addr.eq(ctrl.level_index), lo_w.data.eq(ctrl.level_data),
                lo_w.en.eq(ctrl.level_write & (ctrl.level_index < depth)),
                hi_w.addr.eq(above), hi_w.data.eq(ctrl.level_data),
                hi_w.en.eq(ctrl.level_write & (ctrl.level_index != 0) & (above < depth)),
            ]
            tables.append((self._read_port(m, lo, f"lo{i}"), self._read_port(m, hi, f"hi{i}")))

        # `start` empties the sample FIFO: a sample left half-streamed is dropped.
        entry = data.StructLayout({"q2": data.ArrayLayout(signed(LB), L), "active": L})
        samples = fifo.SyncFIFOBuffered(width=entry.size, depth=self.fifo_depth)
        m.submodules.samples = ResetInserter(ctrl.start)(samples)
        m.submodules.sigmas = sigmas = fifo.SyncFIFOBuffered(
            width=p.sigma.bits + 1, depth=INFLIGHT)
        m.submodules.dot = dot = self._dot
        m.submodules.loss = loss = self._loss
        m.submodules.update = update = self._update

        # --- run-time geometry, derived during the clear pass -----------------------
        last_word = Signal(range(p.max_beats))        # feature beats per sample, minus 1
        last_mask = Signal(L)                         # lanes in use in the last beat
        clearing = Signal()
        clear_cycles = max(p.bank_depth, p.max_beats)
        # HALP inner-loop preparation after the clear pass: the norm of G, the
        # offset shift, then gamma (see _prepare_inner)
        norming, deciding, scaling = Signal(), Signal(), Signal()
        prep_count = Signal(range(p.bank_depth * L + 8))
        prep_word = Signal(addr_shape)
        norm2 = Signal(2 * p.grad_bits + clog2(p.bank_depth * L))
        gamma = [Signal(signed(p.grad_bits), name=f"gamma{b}") for b in range(L)]
        gamma_word = Signal(addr_shape)
        gamma_write = Signal()
        copy_word = Signal(range(clear_cycles))
        copy_write = Signal()
        preparing = clearing | norming | deciding | scaling
        offset_shift = Signal(range(OFFSET_SHIFT_MAX + 1))
        clr_word = Signal(range(clear_cycles))
        clr_base = Signal(range(p.max_beats * L + L + 1))

        # --- stage 1 state ----------------------------------------------------------
        pos = Signal(beats_shape)                     # 0: label beat next; j+1: beat j
        label = Signal(signed(LABEL.bits))
        sample_index = Signal(16)
        flush_seen = Signal()
        batch_pos = Signal(range(p.max_batch + 1))
        inflight = Signal(range(INFLIGHT + 1))
        end_pending = Signal()                        # a batch-ending pass is due
        end_written = Signal(beats_shape)             # beats it has written so far

        # --- stage 2 state ----------------------------------------------------------
        s2_active = Signal()
        s2_word = Signal(range(p.max_beats))
        s2_sigma = Signal(signed(p.sigma.bits))
        s2_end = Signal()
        s2_gap = Signal(range(self._update.latency + 1))
        pending = Signal(range(INFLIGHT + 2))         # samples after last beat, before written

        def advance(bank, addr):
            """The first bank and word of the beat after one starting at (bank, addr)."""
            total = Signal(range(2 * L + 1), name=f"{bank.name}_total")
            m.d.comb += total.eq(bank + per_beat)
            wrap = total >= L
            return Mux(wrap, total - L, total), addr + wrap

        def bank_addr(b, bank, addr):
            """Word of bank ``b`` in a beat whose first feature is in (bank, addr)."""
            return addr + (b < bank)

        def to_banks(values, bank):
            """Rotate lane-order ``values`` into bank order: bank b gets lane (b - bank) % L.

            A barrel rotator, one stage of two-way multiplexers per bit of ``bank``
            (L log L multiplexers rather than an L-way one per bank)."""
            values = list(values)
            for bit in range((L - 1).bit_length()):
                step = 1 << bit
                values = [Mux(bank[bit], values[(b - step) % L], values[b]) for b in range(L)]
            return values

        # ============================== stage 1 ======================================
        # A register slice on the input keeps the link's handshake off the engine's
        # logic: `ready` towards the link is a flip-flop. (Amaranth 0.5 has no
        # stream register slice, so it is written here: a head and a skid register.)
        layout = ctrl.beats.payload.shape()
        head_valid, skid_valid = Signal(), Signal()
        head, skid = Signal(layout), Signal(layout)
        m.d.comb += ctrl.beats.ready.eq(~skid_valid)
        beat = head
        word = Signal(range(p.max_beats))              # pos - 1, kept in a register
        at_label = Signal(init=1)                      # the next beat is a label beat
        # Conditions held in registers, one cycle early and on the safe side, so the
        # accept decision is a few gates: the next beat is the sample's last; the
        # batch is one sample from full; the FIFO has room for the beats in flight;
        # and beat `pos` (one beyond the one needed) is written, or no update is due.
        last_beat, batch_full, room, model_ready = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [room.eq(samples.level + DECODE_LATENCY + 3 <= self.fifo_depth),
                     model_ready.eq(~end_pending | (end_written > pos))]
        take = head_valid & ~preparing & Mux(
            at_label, inflight < INFLIGHT, room & model_ready)
        take_label = take & at_label
        take_word = take & ~at_label
        take_last = take_word & last_beat
        arrive = ctrl.beats.valid & ctrl.beats.ready
        with m.If(arrive & head_valid & ~take):
            m.d.sync += [skid.eq(ctrl.beats.payload), skid_valid.eq(1)]
        with m.Elif(arrive):
            m.d.sync += [head.eq(ctrl.beats.payload), head_valid.eq(1)]
        with m.Elif(take):
            m.d.sync += [head.eq(skid), head_valid.eq(skid_valid), skid_valid.eq(0)]

        # Decode, cycle 0 -> 1: each lane cuts its field out of the beat for the mode.
        first_bank = Signal(range(L))                  # where this beat's first feature sits
        first_addr = Signal(addr_shape)
        fields = []
        for i in range(L):
            kmax = p.lane_max_k(i)
            j_opts, up1_opts, up2_opts = [], [], []
            for index, (k, double) in enumerate(self.modes):
                if i >= p.values_per_beat(k, double):
                    continue                           # lane unused in this mode
                off = i * field_bits(k, double)
                sel = mode_sel[index]
                j_opts.append(Mux(sel, beat.data[off:off + k], 0))
                up1_opts.append(sel & beat.data[off + k])
                up2_opts.append(sel & beat.data[off + k + double])
            field = SimpleNamespace(j=Signal(kmax, name=f"j{i}"), up1=Signal(name=f"up1_{i}"),
                                    up2=Signal(name=f"up2_{i}"), on=Signal(name=f"on{i}"))
            m.d.sync += [
                field.j.eq(reduce(or_, j_opts, 0)),
                field.up1.eq(reduce(or_, up1_opts, 0)), field.up2.eq(reduce(or_, up2_opts, 0)),
                field.on.eq(lane_in_mode[i] & (~last_beat | last_mask[i])),
            ]
            fields.append(field)
        ctl_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "bank": range(L),
                                        "addr": addr_shape, "tag": self._tag})
        ctl1, ctl2 = Signal(ctl_layout), Signal(ctl_layout)
        sample_end = Signal()
        # HALP: the full pass never ends a batch
        m.d.comb += sample_end.eq(~full & (batch_full | flush_seen | beat.flush))
        m.d.sync += [
            ctl1.valid.eq(take_word), ctl1.first.eq(take_word & (word == 0)),
            ctl1.last.eq(take_last), ctl1.bank.eq(first_bank), ctl1.addr.eq(first_addr),
            ctl1.tag.label.eq(label), ctl1.tag.end.eq(sample_end),
            *([ctl1.tag.index.eq(sample_index)] if p.halp else []),
            ctl2.eq(ctl1),
        ]
        # cycle 1 -> 2: table reads; model reads, one word per bank
        up1_2, up2_2, on2 = Signal(L), Signal(L), Signal(L)
        for i, field in enumerate(fields):
            lo, hi = tables[i]
            m.d.comb += [lo.addr.eq(field.j), hi.addr.eq(field.j)]
            m.d.sync += [up1_2[i].eq(field.up1), up2_2[i].eq(field.up2), on2[i].eq(field.on)]
        for b in range(L):
            m.d.comb += model_dot[b].addr.eq(
                Mux(ctrl.model_read, ctrl.model_word, bank_addr(b, ctl1.bank, ctl1.addr)))
        # cycle 2: the two samples of each lane, rotated into bank order
        q1_lanes, q2_lanes = [], []
        for i in range(L):
            lo, hi = tables[i]
            q1_lanes.append(Mux(on2[i], Mux(up1_2[i], hi.data, lo.data), 0))
            q2_lanes.append(Mux(on2[i], Mux(up2_2[i], hi.data, lo.data), 0))
        q1_banks = to_banks(q1_lanes, ctl2.bank)
        q2_banks = to_banks(q2_lanes, ctl2.bank)
        active_banks = to_banks([on2[i] for i in range(L)], ctl2.bank)
        pushed = Signal(entry)
        for b in range(L):
            m.d.comb += [dot.levels[b].eq(q1_banks[b]), dot.weights[b].eq(model_dot[b].data),
                         pushed.q2[b].eq(q2_banks[b]), pushed.active[b].eq(active_banks[b])]
        m.d.comb += [samples.w_data.eq(pushed.as_value()), samples.w_en.eq(ctl2.valid)]

        with m.If(take_label):
            if p.halp:
                m.d.sync += sample_index.eq(beat.data[16:32])
            m.d.sync += [label.eq(beat.data[:LABEL.bits]), flush_seen.eq(beat.flush), pos.eq(1),
                         word.eq(0), last_beat.eq(last_word == 0), at_label.eq(0),
                         first_bank.eq(0), first_addr.eq(0)]
        with m.If(take_word):
            next_bank, next_addr = advance(first_bank, first_addr)
            m.d.sync += [pos.eq(Mux(last_beat, 0, pos + 1)), word.eq(word + 1),
                         flush_seen.eq(flush_seen | beat.flush),
                         last_beat.eq(~last_beat & (pos == last_word)),
                         first_bank.eq(next_bank), first_addr.eq(next_addr)]
        # batch_full after this sample, both ways, ready in registers (batch_pos
        # changes at most every other cycle: a sample has a label and a feature beat)
        full_after_inc, full_after_reset = Signal(), Signal()
        m.d.sync += [full_after_inc.eq(batch_pos + 2 == ctrl.batch),
                     full_after_reset.eq(ctrl.batch == 1)]
        with m.If(take_last):
            m.d.sync += [batch_pos.eq(Mux(sample_end, 0, batch_pos + 1)), at_label.eq(1),
                         batch_full.eq(Mux(sample_end, full_after_reset, full_after_inc))]

        # The link reads the model while the engine is idle.
        lane_sel = Signal.like(ctrl.model_lane)
        m.d.sync += lane_sel.eq(ctrl.model_lane)
        m.d.comb += ctrl.model_rdata.eq(Array(port.data for port in model_dot)[lane_sel])

        m.d.comb += [
            dot.valid.eq(ctl2.valid), dot.first.eq(ctl2.first), dot.last.eq(ctl2.last),
            dot.tag.eq(ctl2.tag),
        ]
        dot_tag = data.View(self._tag, dot.tag_out)
        # the inner loop's sigma is in offset LSBs: the shift grows by sh
        loss_shift = Signal.like(loss.shift)
        m.d.sync += loss_shift.eq(ctrl.shift + Mux(inner, offset_shift, 0))
        if p.halp:
            m.d.comb += [loss.phase.eq(ctrl.phase), loss.index.eq(dot_tag.index)]
        m.d.comb += [
            loss.dot.eq(dot.dot), loss.label.eq(dot_tag.label),
            loss.valid.eq(dot.done), loss.tag.eq(dot_tag.end),
            loss.loss.eq(ctrl.loss), loss.shift.eq(loss_shift),
            loss.cost_pos.eq(ctrl.cost_pos), loss.cost_neg.eq(ctrl.cost_neg),
            sigmas.w_data.eq(Cat(loss.sigma, loss.tag_out)),
            sigmas.w_en.eq(loss.valid_out),
        ]

        # ============================== stage 2 ======================================
        # Pass start: at least (1 + latency - GRAD_AT) cycles after the previous one,
        # so a gradient word is never read before the previous pass wrote it.
        upd = self._update
        pass_start = ~s2_active & ~preparing & sigmas.r_rdy & (s2_gap == 0)
        m.d.comb += sigmas.r_en.eq(pass_start)
        s2_bank = Signal(range(L))
        s2_addr = Signal(addr_shape)
        with m.If(pass_start):
            m.d.sync += [
                s2_active.eq(1), s2_word.eq(0), s2_gap.eq(1 + upd.latency - upd.GRAD_AT),
                s2_sigma.eq(sigmas.r_data[:p.sigma.bits]), s2_end.eq(sigmas.r_data[-1]),
                s2_bank.eq(0), s2_addr.eq(0),
            ]
        with m.Elif(s2_gap != 0):
            m.d.sync += s2_gap.eq(s2_gap - 1)
        issue = s2_active                    # pop beat s2_word from the sample FIFO
        issue_last = s2_active & (s2_word == last_word)
        with m.If(issue):
            next_bank, next_addr = advance(s2_bank, s2_addr)
            m.d.sync += [s2_word.eq(s2_word + 1), s2_bank.eq(next_bank), s2_addr.eq(next_addr)]
        with m.If(issue_last):
            m.d.sync += s2_active.eq(0)
        m.d.comb += samples.r_en.eq(issue)
        # Cycle 0 of the update lanes is one cycle after the pop; the beat's first
        # bank and word, its active banks and last/end flags follow down a delay line.
        popped = data.View(entry, samples.r_data)
        trail_layout = data.StructLayout({"bank": range(L), "addr": addr_shape, "active": L,
                                          "last": 1, "end": 1})
        trail = [Signal(trail_layout, name=f"trail{i}") for i in range(upd.latency + 1)]
        m.d.sync += [trail[0].bank.eq(s2_bank), trail[0].addr.eq(s2_addr),
                     trail[0].active.eq(popped.active), trail[0].last.eq(issue_last),
                     trail[0].end.eq(s2_end)]
        m.d.sync += [trail[i + 1].eq(trail[i]) for i in range(upd.latency)]
        s2_levels = Signal(data.ArrayLayout(signed(LB), L))
        s2_valid = Signal()
        m.d.sync += [s2_levels.eq(popped.q2), s2_valid.eq(issue)]
        grad_at, model_at = trail[upd.GRAD_AT - 1], trail[upd.MODEL_AT - 1]
        m.d.comb += [
            update.sigma.eq(s2_sigma), update.levels.eq(s2_levels), update.end.eq(trail[0].end),
            update.valid.eq(s2_valid), update.l2_shift.eq(ctrl.l2_shift),
        ]
        if p.halp:
            m.d.comb += [
                update.inner.eq(inner), update.stochastic.eq(ctrl.stochastic),
                update.offset_bits.eq(ctrl.offset_bits), update.offset_shift.eq(offset_shift),
                update.seed.eq(ctrl.seed), update.reseed.eq(ctrl.start),
            ]
            for b in range(L):
                model_addr = bank_addr(b, model_at.bank, model_at.addr)
                m.d.comb += [anchor_upd[b].addr.eq(model_addr), offset_upd[b].addr.eq(model_addr),
                             update.anchor[b].eq(anchor_upd[b].data),
                             update.offset[b].eq(offset_upd[b].data),
                             gamma_rd[b].addr.eq(bank_addr(b, grad_at.bank, grad_at.addr)),
                             update.gamma[b].eq(gamma_rd[b].data)]
        for b in range(L):
            m.d.comb += [
                grad_rd[b].addr.eq(Mux(norming | scaling, prep_word,                # HALP prep
                                       bank_addr(b, grad_at.bank, grad_at.addr))),  # at GRAD_AT
                model_upd[b].addr.eq(Mux(clearing, clr_word,                         # re-centre
                                         bank_addr(b, model_at.bank, model_at.addr))),  # MODEL_AT
                update.grad[b].eq(grad_rd[b].data), update.model[b].eq(model_upd[b].data),
            ]
        wb = trail[upd.latency]
        write = update.valid_out
        write_model = write & wb.end
        pass_done = write & wb.last

        for b in range(L):
            wb_addr = bank_addr(b, wb.bank, wb.addr)
            with m.If(clearing):          # the inner loop keeps G for gamma
                m.d.comb += [grad_wr[b].addr.eq(clr_word), grad_wr[b].data.eq(0),
                             grad_wr[b].en.eq((clr_word < p.bank_depth) & ~inner)]
            with m.Elif(scaling):         # G becomes gamma; the inner loop starts from 0
                m.d.comb += [grad_wr[b].addr.eq(gamma_word), grad_wr[b].data.eq(0),
                             grad_wr[b].en.eq(gamma_write)]
            with m.Else():
                m.d.comb += [grad_wr[b].addr.eq(wb_addr), grad_wr[b].data.eq(update.grad_out[b]),
                             grad_wr[b].en.eq(write & wb.active[b])]
            if p.halp:
                m.d.comb += [gamma_wr[b].addr.eq(gamma_word), gamma_wr[b].data.eq(gamma[b]),
                             gamma_wr[b].en.eq(gamma_write)]
                # re-centre (full pass): a = w, z = 0; the inner loop writes z'
                m.d.comb += [anchor_wr[b].addr.eq(copy_word),
                             anchor_wr[b].data.eq(model_upd[b].data),
                             anchor_wr[b].en.eq(copy_write)]
                with m.If(clearing):
                    m.d.comb += [offset_wr[b].addr.eq(clr_word), offset_wr[b].data.eq(0),
                                 offset_wr[b].en.eq((clr_word < p.bank_depth) & full)]
                with m.Else():
                    m.d.comb += [offset_wr[b].addr.eq(wb_addr),
                                 offset_wr[b].data.eq(update.offset_out[b]),
                                 offset_wr[b].en.eq(write_model & inner & wb.active[b])]
            with m.If(ctrl.model_write):
                m.d.comb += [model_wr[b].addr.eq(ctrl.model_word),
                             model_wr[b].data.eq(ctrl.model_wdata),
                             model_wr[b].en.eq(ctrl.model_lane == b)]
            with m.Else():
                m.d.comb += [model_wr[b].addr.eq(wb_addr),
                             model_wr[b].data.eq(update.model_out[b]),
                             model_wr[b].en.eq(write_model & wb.active[b])]

        # ============================== bookkeeping ==================================
        m.d.comb += [
            ctrl.sample_done.eq(pass_done),
            ctrl.update_done.eq(pass_done & wb.end),
        ]
        m.d.sync += inflight.eq(inflight + take_label - pass_start)
        m.d.sync += pending.eq(pending + take_last - pass_done)
        with m.If(write_model):
            m.d.sync += end_written.eq(end_written + 1)
        with m.If(pass_done & wb.end):
            m.d.sync += end_pending.eq(0)
        with m.If(take_last & sample_end):       # a new batch end; the old one is done
            m.d.sync += [end_pending.eq(1), end_written.eq(0)]

        with m.If(ctrl.clear_flags):
            m.d.sync += [ctrl.overflow.eq(0), ctrl.clipped.eq(0)]
        with m.Else():
            with m.If(update.overflow):
                m.d.sync += ctrl.overflow.eq(1)
            with m.If(loss.clipped):
                m.d.sync += ctrl.clipped.eq(1)

        m.d.comb += ctrl.idle.eq(~preparing & (pending == 0) & ~head_valid & ~skid_valid)

        # ============================== clear pass ===================================
        with m.If(ctrl.start):
            m.d.sync += [
                head_valid.eq(0), skid_valid.eq(0), at_label.eq(1),
                clearing.eq(1), clr_word.eq(0), clr_base.eq(0),
                pos.eq(0), batch_pos.eq(0), flush_seen.eq(0), end_pending.eq(0),
            ]
        with m.Elif(clearing):
            m.d.sync += batch_full.eq(ctrl.batch == 1)
            with m.If(clr_base < ctrl.features):
                m.d.sync += [
                    last_word.eq(clr_word),
                    last_mask.eq(Cat(*[clr_base + i < ctrl.features for i in range(L)])),
                ]
            m.d.sync += [clr_word.eq(clr_word + 1), clr_base.eq(clr_base + per_beat)]
            with m.If(clr_word == clear_cycles - 1):
                m.d.sync += clearing.eq(0)
                if p.halp:
                    with m.If(inner):
                        m.d.sync += [norming.eq(1), prep_count.eq(0), norm2.eq(0)]
        # the anchor copy of the full pass trails the model read by a cycle
        m.d.sync += [copy_word.eq(clr_word),
                     copy_write.eq(clearing & full & (clr_word < p.bank_depth))]
        if p.halp:
            self._prepare_inner(m, SimpleNamespace(
                ctrl=ctrl, grad_rd=grad_rd, prep_word=prep_word, prep_count=prep_count,
                norming=norming, deciding=deciding, scaling=scaling, norm2=norm2,
                offset_shift=offset_shift, gamma=gamma, gamma_word=gamma_word,
                gamma_write=gamma_write))
        return m

    def _prepare_inner(self, m, v: SimpleNamespace):
        """HALP: after the clear pass of the inner loop, ``S = sum G_f**2`` (one word
        of one bank per cycle, exact), the offset shift ``sh`` from ``S`` and
        ``scale_log``, then ``gamma_f = round_shift(G_f, sh + shift)`` in place (a
        word of every bank per cycle). Written out in ``ziphalp.hw.params``."""
        p, ctrl, L = self.params, v.ctrl, self.params.lanes
        grad_rd, prep_word, prep_count = v.grad_rd, v.prep_word, v.prep_count
        norming, deciding, scaling = v.norming, v.deciding, v.scaling
        norm2, offset_shift = v.norm2, v.offset_shift
        total = p.bank_depth * L
        lane_bits = (L - 1).bit_length()
        # --- S: address, select a lane, square, accumulate (three cycles behind) ----
        lane1 = Signal(range(L))
        g2 = Signal(signed(p.grad_bits))
        sq = Signal(2 * p.grad_bits)
        v1, v2, v3 = Signal(), Signal(), Signal()
        m.d.comb += prep_word.eq(Mux(norming, prep_count >> lane_bits, prep_count))
        m.d.sync += [lane1.eq(prep_count[:lane_bits] if lane_bits else 0),
                     v1.eq(norming & (prep_count < total)),
                     g2.eq(Array(port.data for port in grad_rd)[lane1]), v2.eq(v1),
                     sq.eq(g2 * g2), v3.eq(v2)]
        with m.If(v3):
            m.d.sync += norm2.eq(norm2 + sq)
        with m.If(norming):
            m.d.sync += prep_count.eq(prep_count + 1)
            with m.If(prep_count == total + 3):
                m.d.sync += [norming.eq(0), deciding.eq(1), prep_count.eq(0)]
        # --- sh: msb and the bits below it, the log-domain rule, the clamp ----------
        msb = Signal(range(len(norm2)))
        for i in range(len(norm2)):
            with m.If(norm2[i]):
                m.d.comb += msb.eq(i)
        msb_r = Signal.like(msb)
        zero = Signal()
        mant = Signal(LOG_FRAC)
        x = Signal(signed(len(norm2).bit_length() + LOG_FRAC + SCALE_LOG_BITS + 2))
        rounded = Signal(signed(len(x)))
        with m.If(deciding):
            m.d.sync += prep_count.eq(prep_count + 1)
            with m.Switch(prep_count):
                with m.Case(0):
                    m.d.sync += [msb_r.eq(msb), zero.eq(norm2 == 0)]
                with m.Case(1):
                    m.d.sync += mant.eq(((norm2 << LOG_FRAC) >> msb_r)[:LOG_FRAC])
                with m.Case(2):
                    m.d.sync += x.eq((msb_r << LOG_FRAC) + mant - (HALP_FRAC << (LOG_FRAC + 1))
                                     - 2 * ctrl.scale_log)
                with m.Case(3):
                    m.d.sync += rounded.eq((x + (1 << LOG_FRAC)) >> (LOG_FRAC + 1))
                with m.Case(4):
                    m.d.sync += [
                        offset_shift.eq(Mux(zero | (rounded < 0), 0,
                                            Mux(rounded > OFFSET_SHIFT_MAX, OFFSET_SHIFT_MAX,
                                                rounded))),
                        deciding.eq(0), scaling.eq(1), prep_count.eq(0),
                    ]
        # --- gamma: read a word of every bank, round-shift it, write it back ---------
        amount = Signal(range(OFFSET_SHIFT_MAX + SHIFT_MAX + 1))
        m.d.sync += amount.eq(offset_shift + ctrl.shift)
        less = Signal.like(amount)
        m.d.comb += less.eq(amount - 1)
        gamma, gamma_word, gamma_write = v.gamma, v.gamma_word, v.gamma_write
        read_valid = Signal()
        read_word = Signal.like(gamma_word)
        m.d.sync += [read_valid.eq(scaling & (prep_count < p.bank_depth)), read_word.eq(prep_count),
                     gamma_write.eq(read_valid), gamma_word.eq(read_word)]
        for b in range(L):
            g = grad_rd[b].data
            m.d.sync += gamma[b].eq(Mux(amount == 0, g, ((g >> less) + 1) >> 1))
        with m.If(scaling):
            m.d.sync += prep_count.eq(prep_count + 1)
            with m.If(prep_count == p.bank_depth + 1):
                m.d.sync += scaling.eq(0)

