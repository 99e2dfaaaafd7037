"""The batch scheduler: when the engine may take the next beat, and what it is.

Stage 1 of the engine takes a sample's label beat, then its ``n`` feature
beats, one a cycle at most. :class:`SampleScheduler` decides each cycle whether
the waiting beat may enter and keeps the per-sample and per-batch position:

* A label beat enters while fewer than :func:`inflight_limit` samples wait for
  their update pass (the ``sigma`` FIFO has room).
* A feature beat enters while the sample FIFO has room for it and the beats in
  flight, and, when a batch-ending update is due, only once that update has
  written the model words of this beat (the model is read-only inside a batch;
  every sample sees the model of the previous batch, whatever the bubbles, as
  the golden model does). With delayed gradients (``stale`` = tau, builds with
  model copies) a sample waits only for the updates of batches that ended more
  than tau samples before it, and reads the model copy they wrote.
* A sample ends a batch when the batch is full or a flush came with one of its
  beats; never in the HALP full pass.

The accept decision is a few gates over registers that are computed a cycle
early and on the safe side. This module decodes no fields and touches no
memory; ``ziphalp.hw.engine`` wires it to the decoder and the update pass.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .banks import BeatCursor
from .control import beat_layout
from .params import LABEL, SAMPLE_INDEX_BITS, SAMPLE_INDEX_OFFSET, EngineParams

__all__ = ["SampleScheduler", "inflight_limit"]


def inflight_limit(p: EngineParams) -> int:
    """Samples allowed between their label beat and the start of their update pass
    (more where delayed gradients let stage 1 run further ahead)."""
    return 8 if p.model_copies == 1 else 16


class SampleScheduler(wiring.Component):
    """Admits beats into stage 1 and tracks the sample, the batch and the hazards.

    Parameters
    ----------
    params : EngineParams
    fifo_depth : int
        Depth of the engine's sample FIFO (``q2`` of the beats waiting for their pass).
    decode_latency : int
        Cycles from taking a beat to pushing it into that FIFO.

    Attributes
    ----------
    beats : In(stream.Signature(beat_layout(params)))
        The waiting beat; ``ready`` is the accept decision.
    batch, full, last_word, per_beat : In
        Batch size B; the HALP full pass runs (no batch ever ends); feature beats
        per sample minus one; values per beat ``K``. Held while beats flow.
    start, clearing, hold : In(1)
        Restart at a label beat with an empty batch; the clear pass runs (the
        batch position is reset meanwhile); take nothing (the engine is busy).
    fifo_level : In(range(fifo_depth + 1))
    pass_start, pass_done : In(1)
        A sample's update pass starts / has written its last beat.
    model_written, update_done : In(1)
        A batch-ending pass wrote one beat of model words / all of them.
    word, first, last, end : Out
        Of the feature beat taken this cycle (``ready & valid`` and not a label
        beat: ``take``): its index, whether it is the sample's first or last,
        and whether the sample ends the batch (valid with ``last``).
    take : Out(1)
    last_beat : Out(1)
        The waiting feature beat is the sample's last (a register).
    label, index : Out
        The current sample's label and anchor-error cache index.
    bank, addr : Out
        Where the waiting feature beat's first feature sits (:class:`BeatCursor`).
    drained : Out(1)
        Every sample whose last beat was taken has been written back.
    stale : In(range(max_stale + 1)); base : In(range(model_copies)); rotate : In(1)
        Builds with model copies: the delay tau, the copy that holds the model at
        ``start``, and whether each update writes the next copy (HALP's inner
        loop; else every update writes copy ``base`` in place and tau must be 0).
        Held.
    copy : Out(range(model_copies))
        The model copy the current sample reads.
    """

    def __init__(self, params: EngineParams, fifo_depth: int, decode_latency: int):
        self.params, self.fifo_depth, self.decode_latency = params, fifo_depth, decode_latency
        p = params
        self._cursor = BeatCursor(p.lanes, p.bank_depth)
        super().__init__({
            "beats": In(stream.Signature(beat_layout(p))),
            "batch": In(range(p.max_batch + 1)), "full": In(1),
            "last_word": In(range(p.max_beats)), "per_beat": In(range(p.lanes + 1)),
            "start": In(1), "clearing": In(1), "hold": In(1),
            "fifo_level": In(range(fifo_depth + 1)),
            "pass_start": In(1), "pass_done": In(1),
            "model_written": In(1), "update_done": In(1),
            "take": Out(1), "word": Out(range(p.max_beats)),
            "first": Out(1), "last": Out(1), "end": Out(1), "last_beat": Out(1),
            "label": Out(signed(LABEL.bits)), "index": Out(SAMPLE_INDEX_BITS),
            "bank": Out(range(p.lanes)), "addr": Out(range(p.bank_depth + 1)),
            "drained": Out(1),
            "stale": In(range(p.max_stale + 1)), "base": In(range(p.model_copies)),
            "rotate": In(1),
            "copy": Out(range(p.model_copies)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.cursor = cursor = self._cursor
        at_label = Signal(init=1)                 # the next beat is a label beat
        take_label = self.beats.valid & self.beats.ready & at_label
        take_word = self.beats.valid & self.beats.ready & ~at_label
        m.d.comb += [self.take.eq(take_word), self.first.eq(take_word & (self.word == 0)),
                     self.last.eq(take_word & self.last_beat),
                     cursor.per_beat.eq(self.per_beat), cursor.restart.eq(take_label),
                     cursor.step.eq(take_word),
                     self.bank.eq(cursor.bank), self.addr.eq(cursor.addr)]
        self._admit(m, at_label)
        self._sample(m, at_label, take_label, take_word)
        self._batch(m, at_label)
        return m

    def _admit(self, m, at_label):
        """The accept decision and the counts it rests on."""
        p, limit = self.params, inflight_limit(self.params)
        inflight = Signal(range(limit + 1))       # label taken, pass not started
        pending = Signal(range(limit + 2))        # last beat taken, not written back
        pos = Signal(range(p.max_beats + 1))      # 0: label beat next; j+1: beat j
        room = Signal()
        self._pos = pos
        take_label = self.beats.valid & self.beats.ready & at_label
        if p.model_copies == 1:
            model_ready = self._latest_model(m)
        else:
            model_ready = self._delayed_model(m, at_label, take_label)
        m.d.sync += room.eq(self.fifo_level + self.decode_latency + 3 <= self.fifo_depth)
        m.d.comb += self.beats.ready.eq(~self.hold & Mux(at_label, inflight < limit,
                                                         room & model_ready))
        m.d.sync += [inflight.eq(inflight + take_label - self.pass_start),
                     pending.eq(pending + self.last - self.pass_done)]
        m.d.comb += self.drained.eq(pending == 0)

    def _latest_model(self, m):
        """The hazard without delayed gradients: after a batch end, beat ``j`` waits
        until that update has written its words (a register, one beat early)."""
        end_pending = Signal()                    # a batch-ending pass is due
        end_written = Signal(range(self.params.max_beats + 1))   # beats it has written
        model_ready = Signal()
        m.d.sync += model_ready.eq(~end_pending | (end_written > self._pos))
        with m.If(self.model_written):
            m.d.sync += end_written.eq(end_written + 1)
        with m.If(self.update_done):
            m.d.sync += end_pending.eq(0)
        with m.If(self.last & self.end):          # a new batch end; the old one is done
            m.d.sync += [end_pending.eq(1), end_written.eq(0)]
        with m.If(self.start):
            m.d.sync += end_pending.eq(0)
        return model_ready

    def _delayed_model(self, m, at_label, take_label):
        """The hazard with delayed gradients (``stale`` = tau): sample ``u`` reads the
        model copy of the updates of the batches that ended at samples ``< u - tau``,
        and beat ``j`` waits until the last of them has written its words. Updates
        are written in order, one after the other."""
        p, copies = self.params, self.params.model_copies
        done = Signal(8)                          # updates written since `start`
        written = Signal(range(p.max_beats + 1))  # beats of update `done` written
        recent = Signal(p.max_stale)              # the last samples' batch ends, newest first
        need, base = Signal(8), Signal(range(copies))
        # updates the next sample must see: all but those of its `stale` predecessors
        # (the batch ends since `start` less those in `recent[:stale]`), kept in a
        # register: a sample's last beat adds the batch end that leaves the window
        # (its own when `stale` is 0), so no sum of the window lies on a path
        need_next = Signal(8)
        leaving = Signal()
        m.d.comb += leaving.eq(Mux(self.stale == 0, self.end,
                                   recent.bit_select((self.stale - 1).as_unsigned(), 1)))
        lag = Signal(signed(8))
        m.d.comb += lag.eq(Mux(at_label, need_next, need) - done)
        model_ready = Signal()
        m.d.sync += model_ready.eq((lag <= 0) | ((lag == 1) & (written > self._pos)))
        with m.If(take_label):
            m.d.sync += [need.eq(need_next),
                         self.copy.eq(base + Mux(self.rotate, need_next, 0))]
        with m.If(self.last):
            m.d.sync += [need_next.eq(need_next + leaving), recent.eq(Cat(self.end, recent))]
        with m.If(self.update_done):
            m.d.sync += [done.eq(done + 1), written.eq(0)]
        with m.Elif(self.model_written):
            m.d.sync += written.eq(written + 1)
        with m.If(self.start):
            m.d.sync += [need_next.eq(0), done.eq(0), written.eq(0), recent.eq(0), need.eq(0),
                         base.eq(self.base)]
        return model_ready

    def _sample(self, m, at_label, take_label, take_word):
        """The position inside the sample, its label and cache index."""
        pos, beat = self._pos, self.beats.payload
        flush_seen = Signal()
        self._flush_seen = flush_seen
        with m.If(take_label):
            index = beat.data[SAMPLE_INDEX_OFFSET:SAMPLE_INDEX_OFFSET + SAMPLE_INDEX_BITS]
            if self.params.halp:
                m.d.sync += self.index.eq(index)
            m.d.sync += [self.label.eq(beat.data[:LABEL.bits]), flush_seen.eq(beat.flush),
                         pos.eq(1), self.word.eq(0), self.last_beat.eq(self.last_word == 0),
                         at_label.eq(0)]
        with m.If(take_word):
            m.d.sync += [pos.eq(Mux(self.last_beat, 0, pos + 1)), self.word.eq(self.word + 1),
                         flush_seen.eq(flush_seen | beat.flush),
                         self.last_beat.eq(~self.last_beat & (pos == self.last_word))]
        with m.If(self.start):
            m.d.sync += [pos.eq(0), flush_seen.eq(0)]

    def _batch(self, m, at_label):
        """The position inside the batch, and whether the current sample ends it."""
        batch_pos = Signal(range(self.params.max_batch + 1))
        batch_full = Signal()                     # the current sample fills the batch
        # batch_full after this sample, both ways, ready in registers (batch_pos
        # changes at most every other cycle: a sample has a label and a feature beat)
        full_after_inc, full_after_reset = Signal(), Signal()
        m.d.comb += self.end.eq(~self.full & (batch_full | self._flush_seen
                                              | self.beats.payload.flush))
        m.d.sync += [full_after_inc.eq(batch_pos + 2 == self.batch),
                     full_after_reset.eq(self.batch == 1)]
        with m.If(self.last):
            m.d.sync += [batch_pos.eq(Mux(self.end, 0, batch_pos + 1)), at_label.eq(1),
                         batch_full.eq(Mux(self.end, full_after_reset, full_after_inc))]
        with m.If(self.start):
            m.d.sync += [at_label.eq(1), batch_pos.eq(0)]
        with m.Elif(self.clearing):
            m.d.sync += batch_full.eq(self.batch == 1)
