"""The link's reply side: the byte sender with the reply CRC, and the STATUS counters.

:class:`ReplySender` puts reply bytes through a one-byte register onto the
serial stream and absorbs them into the reply's CRC; :class:`StatusCounters`
counts what ``STATUS`` reports (its widths come from
:data:`ziphalp.hw.protocol.STATUS`). Neither knows the commands: the executor
(:mod:`ziphalp.hw.link_executor`) says which byte to send and which events
happened.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream
from amaranth.lib.wiring import Component, In, Out

from .crc import FrameCRC
from .protocol import COUNTER_BITS

__all__ = ["ReplySender", "StatusCounters", "COUNTERS_LAYOUT"]

#: The STATUS counters, each as wide as it wraps.
COUNTERS_LAYOUT = data.StructLayout(COUNTER_BITS)


class ReplySender(Component):
    """Sends offered reply bytes, one at a time, and computes the reply CRC.

    A byte offered (``offer``) is sent once it has settled (the cycle after the
    offer began or after the previous send, so that the executor's byte sources
    follow its index) and the output register is empty; ``send`` says it went,
    and the executor moves on. (Waiting for an empty register rather than for
    ``tx.ready`` keeps the sink's logic off these paths and costs nothing:
    settling takes a cycle.)

    Attributes
    ----------
    tx : Out(stream.Signature(8))
        Reply bytes.
    offer : In(1)
        ``byte`` is to be sent.
    byte : In(8)
    checked : In(1)
        ``byte`` counts in the CRC (not the sync word or the CRC itself).
    send : Out(1)
        ``byte`` is sent this cycle.
    restart : In(1)
        Restart the CRC (between replies).
    crc : Out(16)
        CRC of the checked bytes sent since ``restart``.
    """

    tx: Out(stream.Signature(8))
    offer: In(1)
    byte: In(8)
    checked: In(1)
    send: Out(1)
    restart: In(1)
    crc: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = FrameCRC()
        settled = Signal()          # the offered byte reflects the executor's index
        m.d.comb += [
            self.send.eq(self.offer & settled & ~self.tx.valid),
            crc.reset.eq(self.restart),
            crc.valid.eq(self.send & self.checked),
            crc.data.eq(self.byte),
            self.crc.eq(crc.crc),
        ]
        m.d.sync += settled.eq(self.offer & ~self.send)
        with m.If(self.send):
            m.d.sync += [self.tx.payload.eq(self.byte), self.tx.valid.eq(1)]
        with m.Elif(self.tx.ready):
            m.d.sync += self.tx.valid.eq(0)
        return m


class StatusCounters(Component):
    """The counters of ``STATUS``; they wrap. ``clear`` wins over a count.

    Attributes
    ----------
    busy : In(1)
        Count a cycle (the engine is busy or being fed).
    sample, update, beat, frame_ok, frame_bad : In(1)
        Count one of each.
    clear : In(1)
        Zero every counter.
    counters : Out(COUNTERS_LAYOUT)
    """

    busy: In(1)
    sample: In(1)
    update: In(1)
    beat: In(1)
    frame_ok: In(1)
    frame_bad: In(1)
    clear: In(1)
    counters: Out(COUNTERS_LAYOUT)

    def elaborate(self, platform):
        m = Module()
        counters = self.counters
        # the cycle counter counts in two halves, the high one a cycle late
        half = COUNTER_BITS["cycles"] // 2
        carry = Signal()
        low, high = counters.cycles[:half], counters.cycles[half:]
        m.d.sync += carry.eq(0)
        with m.If(self.busy):
            m.d.sync += [low.eq(low + 1), carry.eq(low.all())]
        with m.If(carry):
            m.d.sync += high.eq(high + 1)
        for name, event in (("samples", self.sample), ("updates", self.update),
                            ("beats", self.beat), ("frames_ok", self.frame_ok),
                            ("frames_bad", self.frame_bad)):
            with m.If(event):
                m.d.sync += counters[name].eq(counters[name] + 1)
        with m.If(self.clear):
            m.d.sync += counters.eq(0)
        return m
