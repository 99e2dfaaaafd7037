"""Stage 2 of the engine: one update pass over the beats of each sample.

For every ``sigma`` the loss queues, :class:`UpdatePass` pops the sample's
``n`` beats of ``q2`` from the sample FIFO, one a cycle, and feeds them with
``sigma`` to :class:`~ziphalp.hw.update.UpdateLanes`. The lanes want the
gradient word ``GRAD_AT`` cycles after a beat, the model (and HALP offset) words
``MODEL_AT`` cycles after it and the HALP anchor word ``ANCHOR_AT`` cycles after
it, and give the new gradient word ``grad_latency`` and the new model word
``latency`` cycles after it; so the pass carries each beat's place (first bank
and word, active banks, last beat, batch end) down a delay line and shows it at
those points, a cycle ahead of where the engine addresses the banks (the engine
registers the addresses).

Two passes start at least ``2 + grad_latency - GRAD_AT`` cycles apart, so a pass
never reads a gradient word the previous pass has not written yet. With delayed
gradients (``stale``) a pass may follow a batch-ending one as closely, and then
it must also see that pass's model words (and the model copy it made the
newest): passes start ``2 + latency - GRAD_AT`` cycles apart. Without them the
scheduler holds a batch end's next sample until its update is written, so the
model needs no gap here (the two are equal but in HALP builds).
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .banks import BeatCursor
from .delay import delay_line
from .params import LEVEL, EngineParams

__all__ = ["UpdatePass", "sample_entry"]


def sample_entry(p: EngineParams) -> data.StructLayout:
    """One beat in the sample FIFO: ``q2`` in bank order and the banks it covers."""
    return data.StructLayout({"q2": data.ArrayLayout(signed(LEVEL.bits), p.lanes),
                              "active": p.lanes})


def place_layout(p: EngineParams) -> data.StructLayout:
    """Where a beat of a pass sits, and what it is."""
    return data.StructLayout({"valid": 1, "bank": range(p.lanes),
                              "addr": range(p.bank_depth + 1),
                              "active": p.lanes, "last": 1, "end": 1,
                              "copy": range(p.model_copies)})


class UpdatePass(wiring.Component):
    """Sequences update passes: ``sigma`` and ``q2`` in, the update lanes' inputs out.

    Parameters
    ----------
    params : EngineParams
    grad_at, model_at, grad_latency, latency : int
        The update lanes' operand and result timing (``UpdateLanes``).
    anchor_at : int or None
        HALP builds: when the update lanes want the anchor word.

    Attributes
    ----------
    sigmas : In(stream.Signature(sigma.bits + 1))
        ``sigma`` of a sample, and (top bit) whether it ends a batch.
    samples : In(stream.Signature(sample_entry(params)))
        The sample FIFO; a pass pops one beat a cycle (they are there: a sample's
        ``sigma`` follows all its beats).
    hold : In(1)
        Start no pass (the engine is clearing or preparing).
    delayed : In(1)
        Delayed gradients run (held): the longer gap between passes.
    start : In(1); base : In(range(model_copies)); rotate : In(1)
        Builds with model copies: the engine restarts, and the model is in copy
        ``base``; with ``rotate`` (held), the ``i``-th batch-ending pass after
        ``start`` writes copy ``base + i + 1`` (its place's ``copy``), else copy
        ``base``.
    last_word, per_beat : In
        Feature beats per sample minus one; values per beat ``K``.
    sigma, levels, valid, end : Out
        The update lanes' cycle-0 operands.
    grad_ahead, model_ahead, anchor_ahead : Out(place_layout(params))
        The place of the beat whose gradient (model, anchor) words are to be read
        a cycle from now: they arrive ``grad_at`` (``model_at``, ``anchor_at``)
        cycles after its ``valid``. (The engine computes the address into a
        register, which the block RAM reads a cycle later.) ``anchor_ahead`` only
        with ``anchor_at``.
    write_at : Out(place_layout(params))
        The place of the beat whose model word is on the update lanes' outputs.
    write_ahead : Out(place_layout(params))
        ``write_at`` a cycle ahead.
    grad_write_at, grad_write_ahead : Out(place_layout(params))
        The same for the gradient word (``grad_latency``).
    pass_start, pass_done, model_write, update_done : Out(1)
        A pass starts; a pass's last beat is written back; a batch-ending pass
        writes a beat of model words; it writes its last.
    """

    def __init__(self, params: EngineParams, *, grad_at: int, model_at: int,
                 grad_latency: int, latency: int, anchor_at: int | None = None):
        assert 2 <= grad_at <= grad_latency <= latency and 2 <= model_at <= latency
        assert anchor_at is None or 2 <= anchor_at <= latency
        self.params = params
        self.grad_at_cycle, self.model_at_cycle, self.anchor_at_cycle = (grad_at, model_at,
                                                                         anchor_at)
        self.grad_latency, self.latency = grad_latency, latency
        p = params
        self._cursor = BeatCursor(p.lanes, p.bank_depth)
        place = place_layout(p)
        super().__init__({
            "sigmas": In(stream.Signature(p.sigma.bits + 1)),
            "samples": In(stream.Signature(sample_entry(p))),
            "hold": In(1), "delayed": In(1),
            "start": In(1), "base": In(range(p.model_copies)), "rotate": In(1),
            "last_word": In(range(p.max_beats)), "per_beat": In(range(p.lanes + 1)),
            "sigma": Out(signed(p.sigma.bits)),
            "levels": Out(data.ArrayLayout(signed(LEVEL.bits), p.lanes)),
            "valid": Out(1), "end": Out(1),
            **({"anchor_ahead": Out(place)} if anchor_at is not None else {}),
            "grad_ahead": Out(place), "model_ahead": Out(place),
            "write_at": Out(place), "write_ahead": Out(place),
            "grad_write_at": Out(place), "grad_write_ahead": Out(place),
            "pass_start": Out(1), "pass_done": Out(1),
            "model_write": Out(1), "update_done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.cursor = cursor = self._cursor
        active = Signal()
        word = Signal(range(p.max_beats))
        end = Signal()
        gap = Signal(range(self.latency + 1))
        gap_over = Signal(init=1)                     # gap == 0, in a register
        start = ~active & ~self.hold & self.sigmas.valid & gap_over
        m.d.comb += [self.pass_start.eq(start), self.sigmas.ready.eq(start)]
        copy = Signal(range(p.model_copies))        # this pass's model copy
        target = Signal(range(p.model_copies))      # the next batch end's
        with m.If(self.start):
            m.d.sync += target.eq(self.base + self.rotate)
        with m.Elif(start & self.sigmas.payload[-1] & self.rotate):
            m.d.sync += target.eq(target + 1)
        with m.If(start):
            m.d.sync += [active.eq(1), word.eq(0), copy.eq(target),
                         gap.eq(Mux(self.delayed, 1 + self.latency - self.grad_at_cycle,
                                    1 + self.grad_latency - self.grad_at_cycle)),
                         gap_over.eq(0),
                         self.sigma.eq(self.sigmas.payload[:p.sigma.bits]),
                         end.eq(self.sigmas.payload[-1])]
        with m.Elif(~gap_over):
            m.d.sync += [gap.eq(gap - 1), gap_over.eq(gap == 1)]
        issue = active                                # pop beat `word` of the pass
        issue_last = active & (word == self.last_word)
        with m.If(issue):
            m.d.sync += word.eq(word + 1)
        with m.If(issue_last):
            m.d.sync += active.eq(0)
        m.d.comb += [self.samples.ready.eq(issue), cursor.per_beat.eq(self.per_beat),
                     cursor.restart.eq(start), cursor.step.eq(issue)]

        # cycle 0 of the update lanes is one cycle after the pop; the beat's place
        # follows down a delay line
        place = Signal(place_layout(p))
        m.d.sync += [place.valid.eq(issue), place.bank.eq(cursor.bank),
                     place.addr.eq(cursor.addr), place.active.eq(self.samples.payload.active),
                     place.last.eq(issue_last), place.end.eq(end), place.copy.eq(copy)]
        trail = delay_line(m, place, self.latency, "trail")    # trail[i]: cycle i
        m.d.sync += self.levels.eq(self.samples.payload.q2)
        if self.anchor_at_cycle is not None:
            m.d.comb += self.anchor_ahead.eq(trail[self.anchor_at_cycle - 2])
        write_at = trail[self.latency]
        m.d.comb += [
            self.valid.eq(place.valid), self.end.eq(place.end),
            self.grad_ahead.eq(trail[self.grad_at_cycle - 2]),
            self.model_ahead.eq(trail[self.model_at_cycle - 2]),
            self.write_at.eq(write_at),
            self.write_ahead.eq(trail[self.latency - 1]),
            self.grad_write_at.eq(trail[self.grad_latency]),
            self.grad_write_ahead.eq(trail[self.grad_latency - 1]),
            self.pass_done.eq(write_at.valid & write_at.last),
            self.model_write.eq(write_at.valid & write_at.end),
            self.update_done.eq(write_at.valid & write_at.last & write_at.end),
        ]
        return m
