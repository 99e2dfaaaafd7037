"""A register slice for an ``amaranth.lib.stream``: both directions registered.

The consumer's ``ready`` may be a deep function of its state (the engine's
accept decision is); a register slice keeps it off the producer's path, and
``i.ready`` is a flip-flop. Amaranth 0.5 has no stream register slice, so it is
written here: a head register that the consumer sees and a skid register that
catches the one beat in flight when the consumer stops taking.
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisterSlice"]


class RegisterSlice(wiring.Component):
    """Passes a stream through with one cycle of latency and full throughput.

    Parameters
    ----------
    payload_shape : shape-like

    Attributes
    ----------
    i : In(stream.Signature(payload_shape))
    o : Out(stream.Signature(payload_shape))
        ``o.valid`` and ``o.payload`` are registers.
    clear : In(1)
        Drop both registers (the beats in them are lost).
    empty : Out(1)
        Neither register holds a beat.
    """

    def __init__(self, payload_shape):
        super().__init__({
            "i": In(stream.Signature(payload_shape)),
            "o": Out(stream.Signature(payload_shape)),
            "clear": In(1),
            "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        skid_valid = Signal()
        skid = Signal.like(self.o.payload)
        m.d.comb += [self.i.ready.eq(~skid_valid),
                     self.empty.eq(~self.o.valid & ~skid_valid)]
        arrive = self.i.valid & self.i.ready
        take = self.o.valid & self.o.ready
        with m.If(self.clear):
            m.d.sync += [self.o.valid.eq(0), skid_valid.eq(0)]
        with m.Elif(arrive & self.o.valid & ~take):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        with m.Elif(arrive):
            m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(1)]
        with m.Elif(take):
            m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(skid_valid),
                         skid_valid.eq(0)]
        return m
