"""The streaming SGD engine: ZipML-encoded samples, mini-batch, fixed point.

The engine only wires its stages (``ziphalp.hw.control`` has the ports,
``ziphalp.hw.params`` the encoding and the arithmetic, ``ziphalp.sim.golden``
the bit-exact model)::

    ctrl.beats -> RegisterSlice -> SampleScheduler --(beat taken)--> BeatDecoder
                  (skid.py)        (scheduler.py)                    (decode.py:
                                                                      FieldDecoder,
                                                                      LevelTable)
                                                                         | q1, q2 per lane
                       model Banks (banks.py) --weights--> rotate into bank order
                                                                         |
                     DotProduct (dot.py) <------------- q1     q2 ---> sample FIFO
                          | exact dot                                    |
                     ScaledError (loss.py) --sigma--> sigma FIFO --> UpdatePass
                                                                  (update_pass.py)
                                                                         |
              gradient / model / HALP Banks <--write back-- UpdateLanes (update.py)

    ClearPass (clear.py): after `start`, clears G (re-centres in HALP's full
      pass) and derives the sample geometry; InnerLoopPrep (halp_prep.py):
      HALP's |G|^2, offset shift and gamma before the inner loop.

* **Stage 1** takes a label beat, then ``n = ceil(d / K)`` feature beats (``K``
  set by the run-time precision and sampling mode). :class:`BeatDecoder` turns
  each into the two samples ``q1``, ``q2`` of every lane; they are rotated into
  bank order (feature ``f`` is word ``f // lanes`` of bank ``f % lanes``);
  ``q1`` and one model word per bank feed :class:`DotProduct`, ``q2`` waits in
  the sample FIFO. On the last beat the loss turns the exact dot product and the
  label into ``sigma`` (and whether the sample ends a batch).
* **Stage 2**, for each ``sigma``: :class:`UpdatePass` pops the sample's beats
  and :class:`UpdateLanes` accumulates ``sigma * q2`` into the gradient and, at
  a batch end, updates the model; the gradient words go back
  ``UpdateLanes.grad_latency`` cycles after their beat, the model words
  ``UpdateLanes.latency`` cycles after it.
* **Hazards** (:class:`SampleScheduler`): the model is read-only inside a
  batch; after a batch end, feature beat ``j`` of later samples enters only once
  its model words are written, so results never depend on bubbles.
* **HALP** (builds with ``halp_samples``): anchor ``a``, offset ``z`` and
  ``gamma`` banks beside the model, which always holds ``w = a + (z << sh)``.
  The full pass is SGD whose batch never ends, its clear pass re-centres, and
  the loss caches each sample's ``E`` under the index its label beat carries.
  The inner loop's clear pass keeps ``G``; :class:`InnerLoopPrep` turns it into
  ``sh`` and ``gamma``; then the inner loop is SGD in mini-batches on ``z``.

Steady state: one beat per cycle while a batch fills (``n + 1`` cycles a
sample, the label beat included, once ``n`` is at least
``UpdateLanes.grad_latency - GRAD_AT``, or ``UpdateLanes.latency - GRAD_AT``
with delayed gradients); a sample that ends a batch costs ``n`` cycles plus the fixed
:attr:`SGDEngine.batch_end_gap`, whatever ``d``. Preparing HALP's inner loop
takes about ``max_features + bank_depth`` cycles.
This module holds no protocol logic; ``ziphalp.hw.link`` drives it.
"""

from types import SimpleNamespace

from amaranth import Array, Cat, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In

from .banks import Banks, rotate, word_address
from .clear import ClearPass, CopyFill
from .control import beat_layout, control_signature
from .decode import BeatDecoder
from .delay import delayed
from .dot import DotProduct
from .halp_prep import InnerLoopPrep
from .loss import ScaledError
from .params import LABEL, OFFSET_BITS, SAMPLE_INDEX_BITS, EngineParams, Phase
from .replica import replicas
from .scheduler import SampleScheduler, inflight_limit
from .skid import RegisterSlice
from .update import UpdateLanes
from .update_pass import UpdatePass, sample_entry

__all__ = ["SGDEngine"]


class SGDEngine(wiring.Component):
    """Mini-batch SGD (and HALP) over a stream of ZipML-encoded samples.

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
        self.params = p = params
        tag = {"label": LABEL.bits, "end": 1}
        if p.halp:
            tag["index"] = SAMPLE_INDEX_BITS                  # the sample's cache index
        self._tag = data.StructLayout(tag)
        self._slice = RegisterSlice(beat_layout(p))
        self._decoder = BeatDecoder(p)
        self._scheduler = SampleScheduler(p, self.fifo_depth, self._decoder.latency)
        self._clear = ClearPass(p)
        self._dot = DotProduct(p, tag_bits=self._tag.size)
        self._loss = ScaledError(p, tag_bits=1)
        self._update = UpdateLanes(p)
        self._pass = UpdatePass(p, grad_at=UpdateLanes.GRAD_AT, model_at=UpdateLanes.MODEL_AT,
                                anchor_at=UpdateLanes.ANCHOR_AT if p.halp else None,
                                grad_latency=self._update.grad_latency,
                                latency=self._update.latency)
        L, depth = p.lanes, p.bank_depth
        # builds with delayed gradients keep model_copies copies of the model, copy c
        # of word w at address (c, w)
        self._word_bits = (depth - 1).bit_length()
        model_depth = depth if p.model_copies == 1 else p.model_copies << self._word_bits
        self._model = Banks(signed(p.model_bits), L, model_depth, reads=("dot", "update"))
        self._grad = Banks(signed(p.grad_bits), L, depth, reads=("read",))
        if p.halp:
            self._anchor = Banks(signed(p.model_bits), L, depth, reads=("update",))
            self._offset = Banks(signed(OFFSET_BITS), L, depth, reads=("update",))
            self._gamma = Banks(signed(p.grad_bits), L, depth, reads=("read",))
            self._prep = InnerLoopPrep(p)
            self._fill = CopyFill(p)
        super().__init__({"ctrl": In(control_signature(p))})

    @property
    def fifo_depth(self) -> int:
        """Sample FIFO depth: the longest sample plus the beats in flight around it."""
        return self.params.max_beats + 16

    @staticmethod
    def update_gap(params: EngineParams) -> int:
        """Idle input cycles after the last beat of a batch-ending sample before the
        next sample's first feature beat is accepted: the fixed cost of a model
        update (without delayed gradients). (Decode, dot product, loss, sigma FIFO
        (2), pass start, RAM read, update lanes, write-back, and two for the
        registered, one-word-early hazard check.) The board reports it
        (``IDENTIFY``'s ``update_gap``)."""
        return (BeatDecoder.latency_of(params) + DotProduct.latency_of(params)
                + ScaledError.latency_of(params) + UpdateLanes.latency_of(params) + 6)

    @property
    def batch_end_gap(self) -> int:
        """:meth:`update_gap` of this engine."""
        return self.update_gap(self.params)

    def elaborate(self, platform):
        m = Module()
        p, ctrl = self.params, self.ctrl
        for name in ("slice", "decoder", "scheduler", "clear", "dot", "loss", "update",
                     "pass", "model", "grad") + (("anchor", "offset", "gamma", "prep", "fill")
                                                  if p.halp else ()):
            m.submodules[name] = getattr(self, f"_{name}")
        # `start` empties the sample FIFO: a sample left half-streamed is dropped.
        samples = fifo.SyncFIFOBuffered(width=sample_entry(p).size, depth=self.fifo_depth)
        m.submodules.samples = ResetInserter(ctrl.start)(samples)
        m.submodules.sigmas = sigmas = fifo.SyncFIFOBuffered(
            width=p.sigma.bits + 1, depth=inflight_limit(p))
        # the phase (HALP builds), registered (the configuration is static from
        # the cycle before `start` on)
        self._full, self._inner = Signal(), Signal()
        # what happens in the `start` cycle itself follows the phase the link drives
        # in that cycle (the registers above catch up a cycle later)
        self._inner_now = (ctrl.phase == Phase.INNER) if p.halp else 0
        if p.halp:
            m.d.sync += [self._full.eq(ctrl.phase == Phase.FULL),
                         self._inner.eq(ctrl.phase == Phase.INNER)]
        self._offset_shift = self._prep.offset_shift if p.halp else 0
        # the staleness in force (the inner loop's, else 0), registered; delayed
        # gradients run when it is not 0
        self._stale = Signal(range(p.max_stale + 1)) if p.model_copies > 1 else Signal()
        if p.model_copies > 1:
            m.d.sync += self._stale.eq(Mux(ctrl.phase == Phase.INNER, ctrl.stale, 0))
        self._delayed = self._stale != 0
        # the model copy that holds the newest model (builds with model copies: the
        # inner loop's updates each write the next copy)
        self._current = Signal(range(p.model_copies))
        m.d.sync += self._current.eq(self._current + (self._pass.update_done & self._inner))
        # a pass before training (clearing, HALP's preparation, the copy fill) runs:
        # registered, and high from the cycle after `start` (the passes start then),
        # so that it leaves the preparing modules on a register; it falls a cycle
        # after they finish
        self._preparing = Signal()
        m.d.sync += self._preparing.eq(
            ctrl.start | self._clear.busy | (self._prep.busy | self._fill.busy if p.halp else 0))
        self._link_requests(m)
        self._input(m, samples)
        self._addresses(m)
        self._stage1(m, samples, sigmas)
        self._stage2(m, samples, sigmas)
        self._grad_writes(m)
        self._model_writes(m)
        self._status(m)
        return m

    def _link_requests(self, m):
        """The link's model and level requests as the memories see them.

        With ``deep_pipeline`` each goes into registers first: the requests come from
        the link's state machine across the die, and a write enable runs into the
        model block RAMs' addresses. A write then lands, and a read's address is
        applied, a cycle after the request (:func:`~ziphalp.hw.control.model_read_latency`);
        the selects and enables are a register per bank. Without, the memories see
        the link's signals themselves (the iCEBreaker has no logic cells to spare)."""
        p, ctrl = self.params, self.ctrl
        lk = self._link = SimpleNamespace()
        # the lane whose word a read returns, for the read's multiplexers (at least
        # three bits with deep_pipeline: a bank in its group of four, then the group)
        lk.lane = Signal(max(3, len(ctrl.model_lane)) if p.deep_pipeline
                         else len(ctrl.model_lane), name="link_lane")
        m.d.sync += lk.lane.eq(ctrl.model_lane)
        address = self._model_address(ctrl.model_word, self._current)
        if not p.deep_pipeline:
            lk.read, lk.write = [ctrl.model_read] * p.lanes, [ctrl.model_write] * p.lanes
            lk.en = [ctrl.model_lane == b for b in range(p.lanes)]
            lk.addr, lk.wdata = address, ctrl.model_wdata
            lk.level_write, lk.level_index, lk.level_data = (
                ctrl.level_write, ctrl.level_index, ctrl.level_data)
            return
        lk.read = replicas(m, ctrl.model_read, p.lanes, "link_read")
        lk.write = replicas(m, ctrl.model_write, p.lanes, "link_write")
        lk.en = [Signal(name=f"link_en{b}") for b in range(p.lanes)]
        m.d.sync += [en.eq(ctrl.model_write & (ctrl.model_lane == b))
                     for b, en in enumerate(lk.en)]
        lk.addr = Signal(self._model_addr_shape(), name="link_addr")
        lk.wdata = Signal.like(ctrl.model_wdata, name="link_wdata")
        lk.level_write = Signal(name="link_level_write")
        lk.level_index = Signal.like(ctrl.level_index, name="link_level_index")
        lk.level_data = Signal.like(ctrl.level_data, name="link_level_data")
        m.d.sync += [lk.addr.eq(address), lk.wdata.eq(ctrl.model_wdata),
                     lk.level_write.eq(ctrl.level_write), lk.level_index.eq(ctrl.level_index),
                     lk.level_data.eq(ctrl.level_data)]

    def _model_addr_shape(self) -> range:
        """A model bank address (a word, and the copy in builds with model copies)."""
        p = self.params
        return range(p.model_copies << self._word_bits if p.model_copies > 1
                     else p.bank_depth + 1)

    def _input(self, m, samples):
        """Beats into the register slice, the scheduler and the decoder; the clear pass."""
        p, ctrl, sched, dec, clear = (self.params, self.ctrl, self._scheduler, self._decoder,
                                      self._clear)
        wiring.connect(m, wiring.flipped(ctrl.beats), self._slice.i)
        wiring.connect(m, self._slice.o, sched.beats)
        m.d.comb += [
            self._slice.clear.eq(ctrl.start),
            sched.batch.eq(ctrl.batch), sched.full.eq(self._full),
            sched.last_word.eq(clear.last_word), sched.per_beat.eq(dec.per_beat),
            sched.start.eq(ctrl.start), sched.clearing.eq(clear.busy),
            sched.hold.eq(self._preparing), sched.fifo_level.eq(samples.level),
            sched.pass_start.eq(self._pass.pass_start), sched.pass_done.eq(self._pass.pass_done),
            sched.model_written.eq(self._pass.model_write),
            sched.update_done.eq(self._pass.update_done), sched.base.eq(self._current),
            # the scheduler uses these from the cycle after `start` on
            *([sched.stale.eq(self._stale),
               sched.rotate.eq(self._inner)]
              if p.model_copies > 1 else []),
            dec.k.eq(ctrl.k), dec.double.eq(ctrl.double),
            dec.data.eq(self._slice.o.payload.data), dec.last.eq(sched.last_beat),
            dec.last_mask.eq(clear.last_mask),
            dec.level_write.eq(self._link.level_write),
            dec.level_index.eq(self._link.level_index),
            dec.level_data.eq(self._link.level_data),
            clear.start.eq(ctrl.start), clear.features.eq(ctrl.features),
            clear.per_beat.eq(dec.per_beat),
        ]

    def _addresses(self, m):
        """Each bank's word addresses, computed into registers a cycle ahead from the
        places a cycle ahead: the dot product's model read, the update pass's
        gradient and model reads and its write-back. (An address's adder then never
        lies on the path into the block RAMs, which span the die.)"""
        p, ps = self.params, self._pass
        # each beat's place and tag, delayed to meet its decoded lane values (stage 1)
        layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "bank": range(p.lanes),
                                    "addr": range(p.bank_depth + 1), "tag": self._tag,
                                    "copy": range(p.model_copies)})
        self._ctl = ctl = [Signal(layout, name=f"ctl{i}")
                           for i in range(self._decoder.latency + 1)]
        # the update pass's points: each bank's address of each, per bank
        points = {"grad": ps.grad_ahead, "model": ps.model_ahead, "wb": ps.write_ahead,
                  "grad_wb": ps.grad_write_ahead}
        if p.halp:
            points["anchor"] = ps.anchor_ahead
        self._addr = {name: [] for name in points}
        self._dot_addr = []
        # the model words meet the lane values: read a cycle ahead, the address
        # registered a cycle before that
        early = ctl[self._decoder.latency - 2]
        for b in range(p.lanes):
            for name, place in points.items():
                reg = Signal(range(p.bank_depth + 1), name=f"{name}_addr{b}")
                m.d.sync += reg.eq(word_address(b, place.bank, place.addr))
                self._addr[name].append(reg)
            dot = Signal(self._model_addr_shape(), name=f"dot_addr{b}")
            m.d.sync += dot.eq(self._model_address(word_address(b, early.bank, early.addr),
                                                   early.copy))
            self._dot_addr.append(dot)

    def _stage1(self, m, samples, sigmas):
        """Decoded beats into the dot product and the sample FIFO; the loss into ``sigma``."""
        p, ctrl, sched, dec = self.params, self.ctrl, self._scheduler, self._decoder
        dot, loss, model = self._dot, self._loss, self._model
        ctl = self._ctl
        m.d.comb += [ctl[0].valid.eq(sched.take), ctl[0].first.eq(sched.first),
                     ctl[0].last.eq(sched.last), ctl[0].bank.eq(sched.bank),
                     ctl[0].addr.eq(sched.addr), ctl[0].copy.eq(sched.copy),
                     ctl[0].tag.label.eq(sched.label),
                     ctl[0].tag.end.eq(sched.end)]
        if p.halp:
            m.d.comb += ctl[0].tag.index.eq(sched.index)
        m.d.sync += [ctl[i + 1].eq(ctl[i]) for i in range(dec.latency)]
        ready = ctl[dec.latency]
        # model words are read a cycle ahead (the address registered in
        # `_addresses`); the link reads the model through the same port while the engine
        # is idle
        for b in range(p.lanes):
            m.d.comb += model.dot.addr[b].eq(Mux(self._link.read[b], self._link.addr,
                                                 self._dot_addr[b]))
        # the lane's word, registered; deep_pipeline: the words first held in
        # flip-flops (the same as the dot product's input stage, which synthesis
        # merges with them), then in two steps, each into a register, a word of
        # every group of up to four banks and the group's (the banks span the die)
        lk = self._link
        if p.deep_pipeline:
            held = [delayed(m, model.dot.data[b], 1, f"link_held{b}") for b in range(p.lanes)]
            groups = [Array(held[g:g + 4]) for g in range(0, p.lanes, 4)]
            picked = [Signal(signed(p.model_bits), name=f"link_group{i}")
                      for i in range(len(groups))]
            m.d.sync += [reg.eq(group[lk.lane[:2]])
                         for reg, group in zip(picked, groups, strict=True)]
            m.d.sync += ctrl.model_rdata.eq(Array(picked)[lk.lane[2:]])
        else:
            m.d.sync += ctrl.model_rdata.eq(
                Array(model.dot.data[b] for b in range(p.lanes))[lk.lane])
        q1 = rotate(dec.q1, ready.bank)
        pushed = Signal(sample_entry(p))
        m.d.comb += [dot.levels[b].eq(q1[b]) for b in range(p.lanes)]
        m.d.comb += [dot.weights.eq(model.dot.data),
                     pushed.q2.eq(Cat(rotate(dec.q2, ready.bank))),
                     pushed.active.eq(Cat(rotate(dec.active, ready.bank))),
                     samples.w_data.eq(pushed.as_value()), samples.w_en.eq(ready.valid),
                     dot.valid.eq(ready.valid), dot.first.eq(ready.first),
                     dot.last.eq(ready.last), dot.tag.eq(ready.tag)]
        dot_tag = data.View(self._tag, dot.tag_out)
        # the inner loop's sigma is in offset LSBs: the shift grows by sh
        loss_shift = Signal.like(loss.shift)
        m.d.sync += loss_shift.eq(ctrl.shift + Mux(self._inner, self._offset_shift, 0))
        if p.halp:
            m.d.comb += [loss.phase.eq(ctrl.phase), loss.index.eq(dot_tag.index)]
        m.d.comb += [
            loss.dot.eq(dot.dot), loss.label.eq(dot_tag.label),
            loss.valid.eq(dot.done), loss.tag.eq(dot_tag.end),
            loss.loss.eq(ctrl.loss), loss.shift.eq(loss_shift),
            loss.cost_pos.eq(ctrl.cost_pos), loss.cost_neg.eq(ctrl.cost_neg),
            sigmas.w_data.eq(Cat(loss.sigma, loss.tag_out)), sigmas.w_en.eq(loss.valid_out),
        ]

    def _stage2(self, m, samples, sigmas):
        """Update passes: ``sigma`` and ``q2`` with the banks' words into the update lanes."""
        p, ctrl, upd, ps = self.params, self.ctrl, self._update, self._pass
        m.d.comb += [
            ps.sigmas.valid.eq(sigmas.r_rdy), ps.sigmas.payload.eq(sigmas.r_data),
            sigmas.r_en.eq(ps.sigmas.ready),
            ps.samples.valid.eq(samples.r_rdy), ps.samples.payload.eq(samples.r_data),
            samples.r_en.eq(ps.samples.ready),
            ps.hold.eq(self._preparing), ps.last_word.eq(self._clear.last_word),
            ps.delayed.eq(self._delayed),
            ps.start.eq(ctrl.start), ps.base.eq(self._current), ps.rotate.eq(self._inner_now),
            ps.per_beat.eq(self._decoder.per_beat),
            upd.sigma.eq(ps.sigma), upd.levels.eq(ps.levels), upd.end.eq(ps.end),
            upd.valid.eq(ps.valid), upd.l2_shift.eq(ctrl.l2_shift),
            upd.grad.eq(self._grad.read.data), upd.model.eq(self._model.update.data),
        ]
        if p.halp:
            prep = self._prep
            m.d.comb += [
                upd.inner.eq(self._inner), upd.stochastic.eq(ctrl.stochastic),
                upd.offset_bits.eq(ctrl.offset_bits), upd.offset_shift.eq(prep.offset_shift),
                upd.seed.eq(ctrl.seed), upd.reseed.eq(ctrl.start),
                upd.anchor.eq(self._anchor.update.data), upd.offset.eq(self._offset.update.data),
                upd.gamma.eq(self._gamma.read.data),
                prep.start.eq(self._clear.done & self._inner), prep.scale_log.eq(ctrl.scale_log),
                prep.shift.eq(ctrl.shift), prep.grad.eq(self._grad.read.data),
                self._fill.start.eq(ctrl.start & self._inner_now),
                self._fill.base.eq(self._current),
            ]
        for b in range(p.lanes):
            grad_addr, model_addr = self._addr["grad"][b], self._addr["model"][b]
            if p.halp:
                m.d.comb += [self._anchor.update.addr[b].eq(self._addr["anchor"][b]),
                             self._offset.update.addr[b].eq(model_addr),
                             self._gamma.read.addr[b].eq(grad_addr)]
                grad_addr = Mux(self._prep.reading, self._prep.word, grad_addr)   # HALP prep
            m.d.comb += [
                self._grad.read.addr[b].eq(grad_addr),
                # the clear pass reads the model to re-centre the anchor on it, the
                # copy fill to copy it; the updates read it (SGD) from the newest copy
                self._model.update.addr[b].eq(self._model_address(
                    Mux(self._fill.busy, self._fill.word,
                        Mux(self._clear.bank_busy[b], self._clear.word, model_addr))
                    if p.halp else Mux(self._clear.bank_busy[b], self._clear.word, model_addr),
                    self._current)),
            ]

    def _model_address(self, word, copy):
        """The model banks' address of ``word`` in model copy ``copy``."""
        if self.params.model_copies == 1:
            return word
        return Cat(word[:self._word_bits], copy)

    def _grad_writes(self, m):
        """Gradient (and HALP gamma) writes: the clear pass, gamma, the update lanes."""
        p, clear, ps, upd, grad = self.params, self._clear, self._pass, self._update, self._grad
        for b in range(p.lanes):
            with m.If(clear.bank_busy[b]):        # the inner loop keeps G for gamma
                m.d.comb += [grad.write.addr[b].eq(clear.word), grad.write.data[b].eq(0),
                             grad.write.en[b].eq(clear.bank_valid[b] & ~self._inner)]
            if p.halp:                            # G becomes gamma; the inner loop starts at 0
                with m.Elif(self._prep.gamma_write_bank[b]):
                    m.d.comb += [grad.write.addr[b].eq(self._prep.gamma_word),
                                 grad.write.data[b].eq(0), grad.write.en[b].eq(1)]
            with m.Else():
                m.d.comb += [grad.write.addr[b].eq(self._addr["grad_wb"][b]),
                             grad.write.data[b].eq(upd.grad_out[b]),
                             grad.write.en[b].eq(ps.grad_write_at.valid
                                                 & ps.grad_write_at.active[b])]
        if p.halp:
            gamma, prep = self._gamma, self._prep
            m.d.comb += [gamma.write.addr[b].eq(prep.gamma_word) for b in range(p.lanes)]
            m.d.comb += [gamma.write.data.eq(prep.gamma),
                         gamma.write.en.eq(Mux(prep.gamma_write, (1 << p.lanes) - 1, 0))]

    def _model_writes(self, m):
        """Model (and HALP anchor and offset) writes: the link, the clear pass, updates."""
        p, clear, ps, upd = self.params, self._clear, self._pass, self._update
        model = self._model
        # HALP: the model words the clear pass (re-centring) and the copy fill read,
        # registered before they are written (a block RAM's output feeds no other
        # block RAM directly)
        held = [Signal(signed(p.model_bits), name=f"model_held{b}") for b in range(p.lanes)]
        full = [self._full] * p.lanes
        if p.halp:
            m.d.sync += [held[b].eq(model.update.data[b]) for b in range(p.lanes)]
            if p.deep_pipeline:     # the phase, registered as `_full` is, per bank
                full = replicas(m, self.ctrl.phase == Phase.FULL, p.lanes, "bank_full")
        for b in range(p.lanes):
            wb_addr = self._addr["wb"][b]
            wb_model = ps.model_write & ps.write_at.active[b]
            with m.If(self._link.write[b]):
                m.d.comb += [model.write.addr[b].eq(self._link.addr),
                             model.write.data[b].eq(self._link.wdata),
                             model.write.en[b].eq(self._link.en[b])]
            if p.halp:
                fill = self._fill
                with m.Elif(fill.write):
                    m.d.comb += [model.write.addr[b].eq(self._model_address(fill.write_word,
                                                                            fill.write_copy)),
                                 model.write.data[b].eq(held[b]),
                                 model.write.en[b].eq(1)]
            with m.Else():
                m.d.comb += [model.write.addr[b].eq(self._model_address(wb_addr,
                                                                        ps.write_at.copy)),
                             model.write.data[b].eq(upd.model_out[b]),
                             model.write.en[b].eq(wb_model)]
            if not p.halp:
                continue
            anchor, offset = self._anchor, self._offset
            # re-centre (full pass): a = w, z = 0; the anchor copy trails the model
            # read by two cycles; the inner loop writes z' (each bank's address,
            # enable and phase from registers of its own with deep_pipeline)
            m.d.comb += [anchor.write.addr[b].eq(clear.bank_late_word[b]),
                         anchor.write.data[b].eq(held[b]),
                         anchor.write.en[b].eq(clear.bank_late_valid[b] & full[b])]
            with m.If(clear.bank_busy[b]):
                m.d.comb += [offset.write.addr[b].eq(clear.bank_word[b]),
                             offset.write.data[b].eq(0),
                             offset.write.en[b].eq(clear.bank_valid[b] & full[b])]
            with m.Else():
                m.d.comb += [offset.write.addr[b].eq(wb_addr),
                             offset.write.data[b].eq(upd.offset_out[b]),
                             offset.write.en[b].eq(wb_model & self._inner)]

    def _status(self, m):
        """Strobes, sticky flags and ``idle`` for the link."""
        ctrl, ps = self.ctrl, self._pass
        m.d.comb += [ctrl.sample_done.eq(ps.pass_done), ctrl.update_done.eq(ps.update_done)]
        # `idle` leaves from a register: the link's model and level writes wait on it,
        # and its logic before their multiplexers was the longest path of a ULX3S
        # build. A cycle late is still right, as only `start` and a beat make the
        # engine busy: the register is low the cycle after either.
        beat = ctrl.beats.valid & ctrl.beats.ready
        m.d.sync += ctrl.idle.eq(~self._preparing & self._scheduler.drained & self._slice.empty
                                 & ~ctrl.start & ~beat & ~ctrl.model_write & ~ctrl.level_write)
        with m.If(ctrl.clear_flags):
            m.d.sync += [ctrl.overflow.eq(0), ctrl.clipped.eq(0)]
        with m.Else():
            with m.If(self._update.overflow):
                m.d.sync += ctrl.overflow.eq(1)
            with m.If(self._loss.clipped):
                m.d.sync += ctrl.clipped.eq(1)
