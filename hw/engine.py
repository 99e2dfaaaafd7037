"""The streaming SGD engine (least squares, mini-batch, fixed point).

Organisation (see ``ziphalp.hw.control`` for the ports and ``ziphalp.hw.params``
for the arithmetic; ``ziphalp.sim.golden`` is the bit-exact model):

* **Stage 1, dot.** Beats arrive on ``ctrl.beats``: a label beat, then
  ``n = ceil(d / lanes)`` feature beats. Each feature beat reads one model word
  and feeds :class:`DotProduct`; its codes wait in the sample FIFO. On the last
  beat the exact dot product goes to :class:`ScaledResidual`, which queues
  ``sigma`` (and whether the sample ends a batch) for stage 2.
* **Stage 2, update.** For each queued sample, one pass over its ``n`` words:
  codes from the FIFO, gradient (and at a batch end, model) words from RAM,
  through :class:`UpdateLanes`, written back ``UpdateLanes.latency`` cycles later.
* **Hazards.** The model is read-only inside a batch. After a sample that ends a
  batch, stage 1 accepts feature beat ``j`` of later samples only once stage 2
  has written model word ``j``, so every sample sees the model of the previous
  batch exactly as the golden model does, whatever the bubbles. Two stage-2
  passes start far enough apart that a pass never reads a gradient word the
  previous pass has not written yet.

Steady state: one beat per cycle while a batch fills (``n + 1`` cycles a
sample, the label beat included, when ``n`` is at least ``UpdateLanes.latency +
2``); a sample that ends a batch costs ``n`` cycles plus the fixed
:attr:`SGDEngine.batch_end_gap`, whatever ``d``.
This module holds no protocol logic; ``ziphalp.hw.link`` drives it.
"""

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In

from .control import control_signature
from .dot import DotProduct
from .params import CODE, LABEL, EngineParams
from .residual import ScaledResidual
from .update import UpdateLanes

__all__ = ["SGDEngine"]

#: Samples allowed between label beat and the start of their update pass.
INFLIGHT = 4


class SGDEngine(wiring.Component):
    """Least-squares mini-batch SGD over a stream of packed 8-bit samples.

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
        self._tag = data.StructLayout({"label": LABEL.bits, "end": 1})
        self._dot = DotProduct(params, tag_bits=self._tag.size)
        self._residual = ScaledResidual(params, tag_bits=1)
        self._update = UpdateLanes(params)
        super().__init__({"ctrl": In(control_signature(params))})

    @property
    def fifo_depth(self) -> int:
        """Sample FIFO depth: one whole sample plus the next one's beats during its pass."""
        return 2 * self.params.words + 8

    @property
    def batch_end_gap(self) -> int:
        """Idle input cycles after the last beat of a batch-ending sample before the
        next sample's first feature beat is accepted: the fixed cost of a model
        update. (Dot-product input register, dot product, scaled residual, sigma
        FIFO (2), pass start, RAM read, update lanes, write-back, and two for the
        registered, one-word-early hazard check.)"""
        return (self._dot.latency + self._residual.latency + self._update.latency + 7)

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
        K, WM, GB = p.lanes, p.model_bits, p.grad_bits
        words_shape = range(p.words + 1)

        # --- storage ----------------------------------------------------------------
        # No word is ever read in the cycle it is written (the hazard rules below), so
        # each read is an asynchronous port into a register and the memories carry
        # "no_rw_check": synthesis folds the register into the block RAM without
        # emulating read-during-write in logic. Timing is that of a synchronous port.
        m.submodules.model_mem = model_mem = memory.Memory(
            shape=unsigned(K * WM), depth=p.words, init=[], attrs={"no_rw_check": 1})
        m.submodules.grad_mem = grad_mem = memory.Memory(
            shape=unsigned(K * GB), depth=p.words, init=[], attrs={"no_rw_check": 1})
        model_dot = self._read_port(m, model_mem, "model_dot")   # stage 1; the link when idle
        model_upd = self._read_port(m, model_mem, "model_upd")   # stage 2 at a batch end
        model_wr = model_mem.write_port(granularity=WM)
        grad_rd = self._read_port(m, grad_mem, "grad_rd")
        grad_wr = grad_mem.write_port()
        # `start` empties the sample FIFO: a sample left half-streamed is dropped.
        samples = fifo.SyncFIFOBuffered(width=K * CODE.bits, depth=self.fifo_depth)
        m.submodules.samples = ResetInserter(ctrl.start)(samples)
        m.submodules.sigmas = sigmas = fifo.SyncFIFOBuffered(
            width=p.sigma.bits + 1, depth=INFLIGHT)
        m.submodules.dot = dot = self._dot
        m.submodules.residual = residual = self._residual
        m.submodules.update = update = self._update

        # --- run-time geometry, derived during the clear pass -----------------------
        last_word = Signal(range(p.words))            # feature beats per sample, minus 1
        last_mask = Signal(K)                         # lanes in use in the last beat
        clearing = Signal()
        clr_word = Signal(range(p.words))
        clr_base = Signal(range(p.words * K + 1))

        # --- stage 1 state ----------------------------------------------------------
        pos = Signal(words_shape)                     # 0: label beat next; j+1: word j
        label = Signal(signed(LABEL.bits))
        flush_seen = Signal()
        batch_pos = Signal(range(p.max_batch + 1))
        inflight = Signal(range(INFLIGHT + 1))
        end_pending = Signal()                        # a batch-ending pass is due
        end_written = Signal(words_shape)             # words it has written so far

        # --- stage 2 state ----------------------------------------------------------
        s2_active = Signal()
        s2_word = Signal(range(p.words))
        s2_sigma = Signal(signed(p.sigma.bits))
        s2_end = Signal()
        s2_gap = Signal(range(self._update.latency + 1))
        pending = Signal(range(INFLIGHT + 2))         # samples after last beat, before written

        # ============================== stage 1 ======================================
        # A register slice on the input keeps the link's handshake off the engine's
        # logic: `ready` towards the link is a flip-flop. (Amaranth 0.5 has no
        # stream register slice, so it is written here: a head and a skid register.)
        layout = ctrl.beats.payload.shape()
        head_valid, skid_valid = Signal(), Signal()
        head, skid = Signal(layout), Signal(layout)
        m.d.comb += ctrl.beats.ready.eq(~skid_valid)
        beat = head
        word = Signal(range(p.words))                  # pos - 1, kept in a register
        at_label = Signal(init=1)                      # the next beat is a label beat
        # Conditions held in registers, one cycle early and on the safe side, so the
        # accept decision is a few gates: the next beat is the sample's last; the
        # batch is one sample from full; the FIFO has room for two more words; and
        # model word `pos` (one beyond the one needed) is written, or no update is due.
        last_beat, batch_full, room, model_ready = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [room.eq(samples.level + 2 <= self.fifo_depth),
                     model_ready.eq(~end_pending | (end_written > pos))]
        take = head_valid & ~clearing & Mux(
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

        codes = Signal(data.ArrayLayout(signed(CODE.bits), K))
        for k in range(K):
            lane_on = ~last_beat | last_mask[k]
            m.d.comb += codes[k].eq(Mux(lane_on, beat.data[k * CODE.bits:(k + 1) * CODE.bits], 0))
        m.d.comb += [samples.w_data.eq(codes.as_value()), samples.w_en.eq(take_word)]

        sample_end = Signal()
        m.d.comb += sample_end.eq(batch_full | flush_seen | beat.flush)
        with m.If(take_label):
            m.d.sync += [label.eq(beat.data[:LABEL.bits]), flush_seen.eq(beat.flush), pos.eq(1),
                         word.eq(0), last_beat.eq(last_word == 0), at_label.eq(0)]
        with m.If(take_word):
            m.d.sync += [pos.eq(Mux(last_beat, 0, pos + 1)), word.eq(word + 1),
                         flush_seen.eq(flush_seen | beat.flush),
                         last_beat.eq(~last_beat & (pos == last_word))]
        # batch_full after this sample, both ways, ready in registers (batch_pos
        # changes at most every other cycle: a sample has a label and a feature beat)
        full_after_inc, full_after_reset = Signal(), Signal()
        m.d.sync += [full_after_inc.eq(batch_pos + 2 == ctrl.batch),
                     full_after_reset.eq(ctrl.batch == 1)]
        with m.If(take_last):
            m.d.sync += [batch_pos.eq(Mux(sample_end, 0, batch_pos + 1)), at_label.eq(1),
                         batch_full.eq(Mux(sample_end, full_after_reset, full_after_inc))]

        # The model read port serves stage 1, and the link while the engine is idle.
        m.d.comb += model_dot.addr.eq(Mux(ctrl.model_read, ctrl.model_word, word))
        lane_sel = Signal.like(ctrl.model_lane)
        m.d.sync += lane_sel.eq(ctrl.model_lane)
        model_word_view = data.ArrayLayout(signed(WM), K)(model_dot.data)
        m.d.comb += ctrl.model_rdata.eq(model_word_view[lane_sel])

        # Dot product: the RAM answers one cycle after the beat, so delay the beat.
        tag = Signal(self._tag)
        m.d.sync += [
            dot.codes.eq(codes), dot.valid.eq(take_word), dot.first.eq(take_word & (word == 0)),
            dot.last.eq(take_last), tag.label.eq(label), tag.end.eq(sample_end),
        ]
        m.d.comb += [dot.weights.eq(model_word_view), dot.tag.eq(tag)]
        dot_tag = data.View(self._tag, dot.tag_out)
        m.d.comb += [
            residual.dot.eq(dot.dot), residual.label.eq(dot_tag.label),
            residual.valid.eq(dot.done), residual.tag.eq(dot_tag.end),
            residual.shift.eq(ctrl.shift),
            sigmas.w_data.eq(Cat(residual.sigma, residual.tag_out)),
            sigmas.w_en.eq(residual.valid_out),
        ]

        # ============================== stage 2 ======================================
        # Pass start: at least (1 + latency - GRAD_AT) cycles after the previous one,
        # so a gradient word is never read before the previous pass wrote it.
        upd = self._update
        pass_start = ~s2_active & ~clearing & sigmas.r_rdy & (s2_gap == 0)
        m.d.comb += sigmas.r_en.eq(pass_start)
        with m.If(pass_start):
            m.d.sync += [
                s2_active.eq(1), s2_word.eq(0), s2_gap.eq(1 + upd.latency - upd.GRAD_AT),
                s2_sigma.eq(sigmas.r_data[:p.sigma.bits]), s2_end.eq(sigmas.r_data[-1]),
            ]
        with m.Elif(s2_gap != 0):
            m.d.sync += s2_gap.eq(s2_gap - 1)
        issue = s2_active                    # pop word s2_word from the sample FIFO
        issue_last = s2_active & (s2_word == last_word)
        with m.If(issue):
            m.d.sync += s2_word.eq(s2_word + 1)
        with m.If(issue_last):
            m.d.sync += s2_active.eq(0)
        m.d.comb += samples.r_en.eq(issue)
        # Cycle 0 of the update lanes is one cycle after the pop; word address,
        # last-word and batch-end flags follow it down a short delay line.
        trail = [Signal(data.StructLayout({"addr": range(p.words), "last": 1, "end": 1}),
                        name=f"trail{i}") for i in range(upd.latency + 1)]
        m.d.sync += [trail[0].addr.eq(s2_word), trail[0].last.eq(issue_last),
                     trail[0].end.eq(s2_end)]
        m.d.sync += [trail[i + 1].eq(trail[i]) for i in range(upd.latency)]
        s2_codes = Signal(K * CODE.bits)
        s2_valid = Signal()
        m.d.sync += [s2_codes.eq(samples.r_data), s2_valid.eq(issue)]
        m.d.comb += [
            update.sigma.eq(s2_sigma), update.codes.eq(s2_codes), update.end.eq(trail[0].end),
            update.valid.eq(s2_valid),
            grad_rd.addr.eq(trail[upd.GRAD_AT - 1].addr),      # data at GRAD_AT
            model_upd.addr.eq(trail[upd.MODEL_AT - 1].addr),   # data at MODEL_AT
            update.grad.eq(grad_rd.data), update.model.eq(model_upd.data),
        ]
        wb = trail[upd.latency]
        wb_addr, wb_last, wb_end = wb.addr, wb.last, wb.end
        write = update.valid_out
        write_model = write & wb_end
        pass_done = write & wb_last

        with m.If(clearing):
            m.d.comb += [grad_wr.addr.eq(clr_word), grad_wr.data.eq(0), grad_wr.en.eq(1)]
        with m.Else():
            m.d.comb += [grad_wr.addr.eq(wb_addr), grad_wr.data.eq(update.grad_out.as_value()),
                         grad_wr.en.eq(write)]
        with m.If(ctrl.model_write):
            m.d.comb += [model_wr.addr.eq(ctrl.model_word),
                         model_wr.data.eq(Cat(*[ctrl.model_wdata] * K)),
                         model_wr.en.eq(1 << ctrl.model_lane)]
        with m.Else():
            m.d.comb += [model_wr.addr.eq(wb_addr), model_wr.data.eq(update.model_out.as_value()),
                         model_wr.en.eq(Mux(write_model, (1 << K) - 1, 0))]

        # ============================== bookkeeping ==================================
        m.d.comb += [
            ctrl.sample_done.eq(pass_done),
            ctrl.update_done.eq(pass_done & wb_end),
        ]
        m.d.sync += inflight.eq(inflight + take_label - pass_start)
        m.d.sync += pending.eq(pending + take_last - pass_done)
        with m.If(write_model):
            m.d.sync += end_written.eq(end_written + 1)
        with m.If(pass_done & wb_end):
            m.d.sync += end_pending.eq(0)
        with m.If(take_last & sample_end):       # a new batch end; the old one is done
            m.d.sync += [end_pending.eq(1), end_written.eq(0)]

        with m.If(ctrl.clear_flags):
            m.d.sync += [ctrl.overflow.eq(0), ctrl.clipped.eq(0)]
        with m.Else():
            with m.If(update.overflow):
                m.d.sync += ctrl.overflow.eq(1)
            with m.If(residual.clipped):
                m.d.sync += ctrl.clipped.eq(1)

        m.d.comb += ctrl.idle.eq(~clearing & (pending == 0) & ~head_valid & ~skid_valid)

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
                    last_mask.eq(Cat(*[clr_base + k < ctrl.features for k in range(K)])),
                ]
            m.d.sync += [clr_word.eq(clr_word + 1), clr_base.eq(clr_base + K)]
            with m.If(clr_word == p.words - 1):
                m.d.sync += clearing.eq(0)
        return m

