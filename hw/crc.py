"""The link's frame check: CRC-16/CCITT-FALSE over a byte stream, one byte per cycle.

The algorithm comes from Amaranth's CRC catalogue (``amaranth.lib.crc``); it is
:func:`ziphalp.hw.protocol.crc16` (polynomial 0x1021, initial value 0xFFFF, no
reflection, no final XOR), checked at import. The wrapper only adds a reset
that wins over a byte given in the same cycle, as a synchronous reset of the
CRC register, which costs no logic on iCE40 (its flip-flops have one).
"""

from amaranth.hdl import Module, ResetInserter
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import Component, In, Out

from .protocol import crc16

__all__ = ["FRAME_CRC", "FrameCRC"]

#: The link's CRC, one byte at a time.
FRAME_CRC = catalog.CRC16_CCITT_FALSE(data_width=8)
assert FRAME_CRC.compute(b"123456789") == crc16(b"123456789") == 0x29B1


class FrameCRC(Component):
    """CRC of the bytes given since the last ``reset``.

    Attributes
    ----------
    reset : In(1)
        Restart from the initial value 0xFFFF. It takes precedence over ``valid``:
        a byte given in the same cycle is ignored.
    valid : In(1)
        Absorb ``data`` this cycle.
    data : In(8)
        The byte to absorb.
    crc : Out(16)
        CRC of the bytes absorbed so far (registered: a byte given in one cycle
        shows in the next).
    """

    reset: In(1)
    valid: In(1)
    data: In(8)
    crc: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.processor = processor = ResetInserter(self.reset)(FRAME_CRC.create())
        m.d.comb += [
            processor.valid.eq(self.valid),
            processor.data.eq(self.data),
            self.crc.eq(processor.crc),
        ]
        return m
