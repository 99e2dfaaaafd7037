"""CRC-16/CCITT-FALSE over a byte stream, one byte per cycle.

This is the link's frame check: the same function as
:func:`ziphalp.hw.protocol.crc16` (polynomial 0x1021, initial value 0xFFFF, no
reflection, no final XOR). The byte update is a fixed XOR network derived at
elaboration time from the polynomial; the CRC itself is a register.
"""

from functools import reduce
from operator import xor

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib.wiring import Component, In, Out

__all__ = ["CRC16"]

POLY = 0x1021
INIT = 0xFFFF


def _byte_update_terms():
    """For each bit of the CRC after one byte, the old CRC and data bits it XORs.

    Runs the bitwise CRC algorithm over symbols instead of bits: each bit is a
    set of terms ``("crc", i)`` or ``("data", i)`` whose XOR it equals.
    """
    crc = [frozenset({("crc", i)}) for i in range(16)]
    for i in range(8):
        crc[8 + i] ^= {("data", i)}
    for _ in range(8):
        top = crc[15]
        crc = [frozenset()] + crc[:15]
        for i in range(16):
            if POLY >> i & 1:
                crc[i] ^= top
    return crc


class CRC16(Component):
    """CRC-16/CCITT-FALSE of the bytes given since the last ``reset``.

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
    crc: Out(16, init=INIT)

    def elaborate(self, platform):
        m = Module()

        sources = {"crc": self.crc, "data": self.data}
        nxt = Signal(16)
        m.d.comb += nxt.eq(Cat(
            reduce(xor, (sources[name][i] for name, i in sorted(terms)))
            for terms in _byte_update_terms()
        ))

        with m.If(self.reset):
            m.d.sync += self.crc.eq(INIT)
        with m.Elif(self.valid):
            m.d.sync += self.crc.eq(nxt)
        return m
