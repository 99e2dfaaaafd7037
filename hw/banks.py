"""Banked storage: per-feature words spread over ``lanes`` banks, and the beat geometry.

Feature ``f`` is word ``f // L`` of bank ``f % L`` (``L = lanes``). A beat of
``K <= L`` consecutive features whose first feature sits at ``(bank, addr)``
covers one word in each of ``K`` banks: bank ``b`` holds word ``addr + (b <
bank)``. So every memory the engine keeps per feature (model, gradient, HALP
anchor, offset and gamma) is a :class:`Banks`, a beat's words are read and
written in one cycle, and values arriving in lane order (lane ``i`` = the
beat's ``i``-th feature) are turned into bank order by :func:`rotate`.

:class:`BeatCursor` follows ``(bank, addr)`` from beat to beat. Nothing here
knows what the words mean.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out, Signature

__all__ = ["Banks", "BeatCursor", "rotate", "word_address"]


def word_address(b: int, bank, addr):
    """Word of bank ``b`` in a beat whose first feature is word ``addr`` of ``bank``."""
    return addr + (b < bank)


def rotate(values, bank):
    """Lane-order ``values`` into bank order: bank ``b`` gets lane ``(b - bank) % L``.

    A barrel rotator, one stage of two-way multiplexers per bit of ``bank``
    (``L log L`` multiplexers rather than an ``L``-way one per bank).
    """
    values = list(values)
    count = len(values)
    for bit in range((count - 1).bit_length()):
        step = 1 << bit
        values = [Mux(bank[bit], values[(b - step) % count], values[b]) for b in range(count)]
    return values


def read_signature(shape, lanes: int, depth: int) -> Signature:
    """A read port of :class:`Banks`, seen from its user: a word address per bank
    now, the words one cycle later."""
    return Signature({"addr": Out(data.ArrayLayout(range(depth), lanes)),
                      "data": In(data.ArrayLayout(shape, lanes))})


def write_signature(shape, lanes: int, depth: int) -> Signature:
    """The write port of :class:`Banks`, seen from its user: per bank an address, a
    word and an enable."""
    return Signature({"addr": Out(data.ArrayLayout(range(depth), lanes)),
                      "data": Out(data.ArrayLayout(shape, lanes)),
                      "en": Out(lanes)})


class Banks(wiring.Component):
    """``lanes`` memories of ``depth`` words each, read and written a word per bank.

    No word is ever read in the cycle it is written (the engine's hazard rules),
    so each read is an asynchronous port into a register and the memories carry
    ``no_rw_check``: synthesis folds the register into the block RAM without
    emulating read-during-write in logic. Timing is that of a synchronous port.

    Parameters
    ----------
    shape : shape-like
        Shape of one word.
    lanes, depth : int
        Banks, and words per bank.
    reads : tuple of str
        Names of the read ports.

    Attributes
    ----------
    <read name> : In(read_signature(shape, lanes, depth))
        ``addr`` per bank; ``data`` the words one cycle later.
    write : In(write_signature(shape, lanes, depth))
    """

    def __init__(self, shape, lanes: int, depth: int, reads: tuple[str, ...]):
        self.shape, self.lanes, self.depth = shape, lanes, depth
        self._reads = tuple(reads)
        members = {name: In(read_signature(shape, lanes, depth)) for name in reads}
        super().__init__(members | {"write": In(write_signature(shape, lanes, depth))})

    def elaborate(self, platform):
        m = Module()
        for b in range(self.lanes):
            mem = memory.Memory(shape=self.shape, depth=self.depth, init=[],
                                attrs={"no_rw_check": 1})
            m.submodules[f"bank{b}"] = mem
            for name in self._reads:
                port = mem.read_port(domain="comb")
                m.d.comb += port.addr.eq(getattr(self, name).addr[b])
                m.d.sync += getattr(self, name).data[b].eq(port.data)
            write = mem.write_port()
            m.d.comb += [write.addr.eq(self.write.addr[b]), write.data.eq(self.write.data[b]),
                         write.en.eq(self.write.en[b])]
        return m


class BeatCursor(wiring.Component):
    """Where the current beat's first feature sits: ``bank`` and word ``addr``.

    Attributes
    ----------
    per_beat : In(range(lanes + 1))
        ``K``, features per beat (held while beats flow).
    restart : In(1)
        Back to feature 0 (bank 0, word 0) next cycle; wins over ``step``.
    step : In(1)
        Move on by one beat (``K`` features) next cycle.
    bank : Out(range(lanes)); addr : Out(range(depth + 1))
    """

    def __init__(self, lanes: int, depth: int):
        self.lanes = lanes
        super().__init__({
            "per_beat": In(range(lanes + 1)),
            "restart": In(1),
            "step": In(1),
            "bank": Out(range(lanes)),
            "addr": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        total = Signal(range(2 * self.lanes + 1))
        m.d.comb += total.eq(self.bank + self.per_beat)
        wrap = total >= self.lanes
        with m.If(self.restart):
            m.d.sync += [self.bank.eq(0), self.addr.eq(0)]
        with m.Elif(self.step):
            m.d.sync += [self.bank.eq(Mux(wrap, total - self.lanes, total)),
                         self.addr.eq(self.addr + wrap)]
        return m
