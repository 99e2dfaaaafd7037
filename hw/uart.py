"""Asynchronous serial (UART, 8N1) receiver and transmitter with byte streams.

The board's link runs over these: :class:`UARTRx` turns the serial line into a
stream of bytes, :class:`UARTTx` turns a stream of bytes into the serial line.
Both take the bit time as ``divisor`` clock cycles per bit. They know nothing
of the link protocol and hold no buffers beyond one byte.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import cdc, stream
from amaranth.lib.wiring import Component, In, Out

__all__ = ["UARTRx", "UARTTx"]


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an integer of at least 4 clock cycles "
                         f"per bit, not {divisor!r}")
    return divisor


class UARTRx(Component):
    """UART receiver, 8 data bits, no parity, 1 stop bit, least significant bit first.

    The line goes through a two-flop synchroniser. A falling edge starts a frame;
    the start bit is checked half a bit later (a shorter low pulse is ignored) and
    every following bit is sampled in its middle. A byte whose stop bit is low is
    dropped and reported on ``framing_error``; the receiver then waits for the
    line to return high (so a held break gives one error, not a stream of them).

    A received byte stays on ``stream`` until it is taken; a byte that completes
    before the previous one was taken replaces it.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    line : In(1)
        Serial input (idle high), asynchronous to the clock.
    stream : Out(stream.Signature(8))
        Received bytes.
    framing_error : Out(1)
        One-cycle strobe: a frame ended with a low stop bit.
    """

    line: In(1, init=1)
    stream: Out(stream.Signature(8))
    framing_error: Out(1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        line = Signal(init=1)
        m.submodules.sync_line = cdc.FFSynchronizer(self.line, line, init=1)

        timer = Signal(range(self.divisor))
        bits = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.stream.ready):
            m.d.sync += self.stream.valid.eq(0)

        m.d.sync += timer.eq(timer - 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bits.eq(0)]
                    m.next = "DATA"
                    with m.If(line):
                        m.next = "IDLE"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [
                        timer.eq(self.divisor - 1),
                        shreg.eq(Cat(shreg[1:], line)),
                        bits.eq(bits + 1),
                    ]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.stream.payload.eq(shreg), self.stream.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(Component):
    """UART transmitter, 8 data bits, no parity, 1 stop bit, least significant bit first.

    ``stream.ready`` is high while the transmitter is idle (and in the last cycle
    of a stop bit, so that a steady stream of bytes goes out back to back). A
    byte taken is sent as start bit, eight data bits and stop bit, ``divisor``
    cycles each. The line is driven from a register.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    stream : In(stream.Signature(8))
        Bytes to send.
    line : Out(1)
        Serial output (idle high).
    """

    stream: In(stream.Signature(8))
    line: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        timer = Signal(range(self.divisor))
        bits = Signal(range(11))        # bits of the frame still to send
        shreg = Signal(10, init=1)      # stop, data[7..0], start: bit 0 is on the line

        m.d.comb += [
            self.line.eq(shreg[0]),
            # ready also in the last cycle of a stop bit: frames go back to back
            self.stream.ready.eq((bits == 0) | ((bits == 1) & (timer == 0))),
        ]
        with m.If(self.stream.valid & self.stream.ready):
            m.d.sync += [
                shreg.eq(Cat(Const(0, 1), self.stream.payload, Const(1, 1))),
                bits.eq(10),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(bits != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [
                    shreg.eq(Cat(shreg[1:], Const(1, 1))),
                    bits.eq(bits - 1),
                    timer.eq(self.divisor - 1),
                ]
        return m
