"""The board top level, for any board: clock, reset, UART, board core and LEDs.

:class:`BoardTop` takes its clock from a family-specific
:class:`ClockGenerator` (a PLL fed by the board's oscillator, such as
:class:`ziphalp.hw.ice40.ICE40PLL`) and builds the rest the same way on every
board:

- the ``sync`` domain is held in reset until the clock generator has locked and
  then for :data:`RESET_HOLD_S` more (which also covers block RAMs that read as
  zero for a few microseconds after configuration, as on the iCE40); a button,
  if the board names one, restarts the design;
- the UART runs through :class:`ziphalp.hw.uart.UARTRx` and
  :class:`ziphalp.hw.uart.UARTTx` at :func:`uart_divisor` clock cycles per bit,
  into :class:`ziphalp.hw.core.BoardCore`;
- one LED is lit once the design is out of reset, another shows UART traffic.

A board module (``ziphalp.hw.icebreaker``) names the pins (:class:`BoardPins`)
and picks the clock generator. This module must stay free of anything specific
to an FPGA family or a board: no primitives, no pin or resource defaults that
only one board has.
"""

import math
from dataclasses import dataclass, replace

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    Elaboratable,
    Module,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .core import BoardCore
from .params import EngineParams
from .uart import UARTRx, UARTTx

__all__ = [
    "BAUD_TOLERANCE",
    "RESET_HOLD_S",
    "UART_MIN_DIVISOR",
    "BoardPins",
    "BoardTop",
    "ClockGenerator",
    "ResetHold",
    "uart_divisor",
]

#: Time the ``sync`` reset stays asserted after the clock generator reports lock.
RESET_HOLD_S = 15e-6
#: Fewest clock cycles per bit the UART accepts.
UART_MIN_DIVISOR = 4
#: Largest relative baud-rate error accepted for the UART divisor.
BAUD_TOLERANCE = 0.02


def uart_divisor(clock_hz: int, baud: int) -> int:
    """Clock cycles per UART bit, checked against :data:`BAUD_TOLERANCE`.

    Raises
    ------
    ValueError
        If the rounded divisor misses ``baud`` by more than the tolerance.
    """
    if baud <= 0:
        raise ValueError(f"baud rate must be positive, not {baud}")
    divisor = round(clock_hz / baud)
    if divisor < UART_MIN_DIVISOR:
        raise ValueError(f"{baud} baud is too fast for a {clock_hz / 1e6:g} MHz clock")
    error = abs(clock_hz / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"{baud} baud from {clock_hz / 1e6:g} MHz: divisor {divisor} "
                         f"is {error:.1%} off (at most {BAUD_TOLERANCE:.0%})")
    return divisor


class ClockGenerator(wiring.Component):
    """The engine clock, made by an FPGA family's PLL from a board's oscillator.

    A family module subclasses this: its ``elaborate`` requests the oscillator
    from the platform, instantiates the PLL and drives :attr:`clk` (on a global
    clock network) and :attr:`lock`. The frequency is settled when the object is
    made, before elaboration, so that the top level can size its UART divisor
    and reset hold.

    Parameters
    ----------
    f_out_hz : int
        Frequency of :attr:`clk`, as the PLL really makes it.

    Attributes
    ----------
    clk : Out(1)
        The clock.
    lock : Out(1)
        High while the PLL is locked.
    f_out_hz : int
        Frequency of :attr:`clk`.
    """

    clk: Out(1)
    lock: Out(1)

    def __init__(self, f_out_hz: int):
        self.f_out_hz = f_out_hz
        super().__init__()

    def settings(self) -> dict:
        """The generator's settings, for ``report.json``."""
        return {"f_out_hz": self.f_out_hz}

    def distribute(self, m: Module, net: Signal, name: str) -> Value:
        """``net``, a register's output with a fan-out across the die (the reset),
        as its loads are to see it. A family with a global network for such nets
        adds the buffer to ``m`` and returns its output; by default ``net`` is
        returned as it is."""
        return net


class ResetHold(wiring.Component):
    """Release a reset ``hold`` cycles after a PLL has locked.

    ``lock`` and ``restart`` may be asynchronous: each goes through a two-flop
    synchroniser. ``ready`` rises ``hold`` cycles (plus the synchroniser's two)
    after ``lock`` rises, and falls as soon as ``lock`` falls or ``restart`` is
    high. All registers are reset-less and start at zero, so the domain driving
    this must not be reset by ``ready`` itself.

    Parameters
    ----------
    hold : int
        Cycles to wait after lock, at least 1.

    Attributes
    ----------
    lock : In(1)
        PLL lock indication.
    restart : In(1)
        Hold the reset (a button), then count ``hold`` cycles again.
    ready : Out(1)
        High when the design may leave reset.
    """

    lock: In(1)
    restart: In(1)
    ready: Out(1)

    def __init__(self, hold: int):
        if hold < 1:
            raise ValueError(f"reset hold must be at least 1 cycle, not {hold}")
        self.hold = hold
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        locked = Signal()
        restart = Signal()
        m.submodules.lock_sync = FFSynchronizer(self.lock, locked)
        m.submodules.restart_sync = FFSynchronizer(self.restart, restart)

        timer = Signal(range(self.hold + 1), reset_less=True)
        ready = Signal(reset_less=True)
        with m.If(~locked | restart):
            m.d.sync += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == self.hold):
            m.d.sync += ready.eq(1)
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        m.d.comb += self.ready.eq(ready)
        return m


@dataclass(frozen=True)
class BoardPins:
    """The platform resources :class:`BoardTop` uses, each as ``(name, number)``.

    Parameters
    ----------
    led_run : tuple
        LED lit once the design is out of reset.
    led_traffic : tuple
        LED lit for a window of about 20 ms after UART traffic.
    uart : tuple
        Serial port to the host, with ``rx`` and ``tx`` subsignals.
    button : tuple or None
        Button that restarts the design while pressed, if the board has one.
    """

    led_run: tuple[str, int]
    led_traffic: tuple[str, int]
    uart: tuple[str, int] = ("uart", 0)
    button: tuple[str, int] | None = None


class BoardTop(Elaboratable):
    """Board top level: clock generator, reset, UART and the board core.

    Parameters
    ----------
    params : EngineParams
        Engine parameters; :attr:`params` is a copy whose ``clock_hz`` is the
        frequency ``clock`` really makes.
    clock : ClockGenerator
        The family's clock generator, already set for the wanted frequency.
    pins : BoardPins
        Where the UART, LEDs and button are.
    baud : int
        UART bit rate.
    core : Elaboratable or None
        The design behind the UART, with ``rx: In(stream.Signature(8))`` and
        ``tx: Out(stream.Signature(8))``. Defaults to
        :class:`ziphalp.hw.core.BoardCore` built from :attr:`params`.

    Attributes
    ----------
    params : EngineParams
        Parameters with ``clock_hz`` set to the achieved clock frequency.
    clock : ClockGenerator
        The clock generator.
    divisor : int
        Clock cycles per UART bit.

    Raises
    ------
    ValueError
        If the UART cannot run at ``baud`` from the clock.
    """

    def __init__(self, params: EngineParams, clock: ClockGenerator, pins: BoardPins,
                 baud: int = 3_000_000, *, core: Elaboratable | None = None):
        self.params = replace(params, clock_hz=clock.f_out_hz)
        self.clock = clock
        self.pins = pins
        self.baud = baud
        self.divisor = uart_divisor(self.params.clock_hz, baud)
        self._core = core

    def elaborate(self, platform) -> Module:
        if platform is None:
            raise TypeError(f"{type(self).__name__} needs a platform")
        m = Module()
        m.submodules.clock = self.clock
        clk = Signal()      # the constraint files and nextpnr's report call this net clk
        m.d.comb += clk.eq(self.clock.clk)
        platform.add_clock_constraint(clk, self.params.clock_hz)
        ready = self._reset(m, platform, clk)

        core = BoardCore(self.params) if self._core is None else self._core
        m.submodules.core = core
        self._uart(m, platform, core)
        self._leds(m, platform, core, ready)
        return m

    def _reset(self, m: Module, platform, clk: Signal) -> Signal:
        """Hold ``sync`` in reset until lock plus :data:`RESET_HOLD_S`; return ready."""
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        hold = max(1, math.ceil(RESET_HOLD_S * self.params.clock_hz))
        m.submodules.reset_hold = reset_hold = DomainRenamer("por")(ResetHold(hold))
        m.d.comb += reset_hold.lock.eq(self.clock.lock)
        if self.pins.button is not None:
            button = io.Buffer("i", platform.request(*self.pins.button, dir="-"))
            m.submodules.button = button
            m.d.comb += reset_hold.restart.eq(button.i)

        # the reset reaches every register of the design: it leaves a flip-flop of
        # its own for the family's distribution (a global network on ECP5)
        reset = Signal(init=1)
        m.d.por += reset.eq(~reset_hold.ready)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("sync").eq(clk),
                     ResetSignal("sync").eq(self.clock.distribute(m, reset, "reset"))]
        return reset_hold.ready

    def _uart(self, m: Module, platform, core) -> None:
        """UART pins <-> receiver and transmitter <-> the core's byte streams."""
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        # Every subsignal raw: boards may add handshake lines (rts, dtr) left unused here.
        subsignals = platform.lookup(*self.pins.uart).ios
        uart = platform.request(*self.pins.uart, dir={sub.name: "-" for sub in subsignals})
        m.submodules.uart_rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.d.comb += [
            uart_rx.line.eq(rx_pin.i),      # UARTRx synchronises the line itself
            tx_pin.o.eq(uart_tx.line),
        ]
        wiring.connect(m, uart_rx.stream, core.rx)
        wiring.connect(m, core.tx, uart_tx.stream)

    def _leds(self, m: Module, platform, core, ready: Signal) -> None:
        """Run LED on when out of reset; traffic LED lit for a window with UART bytes."""
        m.submodules.led_run = led_run = io.Buffer(
            "o", platform.request(*self.pins.led_run, dir="-"))
        m.submodules.led_traffic = led_traffic = io.Buffer(
            "o", platform.request(*self.pins.led_traffic, dir="-"))
        m.d.comb += led_run.o.eq(ready)

        traffic = Signal()
        m.d.comb += traffic.eq((core.rx.valid & core.rx.ready) | (core.tx.valid & core.tx.ready))
        prescale = Signal((self.params.clock_hz // 50).bit_length())   # window of ~20 ms
        window_end = Signal()
        seen = Signal()
        lit = Signal()
        m.d.sync += Cat(prescale, window_end).eq(prescale + 1)
        with m.If(window_end):
            m.d.sync += [lit.eq(seen | traffic), seen.eq(0)]
        with m.Elif(traffic):
            m.d.sync += seen.eq(1)
        m.d.comb += led_traffic.o.eq(lit)
