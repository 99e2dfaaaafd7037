"""Board top level for the iCEBreaker (iCE40UP5K-SG48).

The 12 MHz oscillator on pin 35 feeds the PLL's dedicated input pad
(``SB_PLL40_PAD``), which makes the engine clock (48 MHz by default). The ``sync``
domain is held in reset until the PLL has locked and then for
:data:`RESET_HOLD_S` more, which also covers the iCE40 block RAMs reading as zero
for a few microseconds after configuration. The user button resets the design.

The FTDI UART (resource ``"uart"``) runs through :class:`ziphalp.hw.uart.UARTRx`
and :class:`ziphalp.hw.uart.UARTTx` into :class:`ziphalp.hw.core.BoardCore`. The
green LED is lit once the design is out of reset; the red LED shows UART
traffic.
"""

import math
from dataclasses import dataclass, replace
from fractions import Fraction

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    DomainRenamer,
    Elaboratable,
    Instance,
    Module,
    ResetSignal,
    Signal,
)
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .params import EngineParams

__all__ = [
    "CLK_IN_HZ",
    "RESET_HOLD_S",
    "ICEBreakerTop",
    "PLLConfig",
    "ResetHold",
    "clock_plan",
    "ice40_pll",
    "uart_divisor",
]

#: Frequency of the iCEBreaker's oscillator (pin 35).
CLK_IN_HZ = 12_000_000
#: Time the ``sync`` reset stays asserted after the PLL reports lock.
RESET_HOLD_S = 15e-6
#: Fewest clock cycles per bit the UART accepts.
UART_MIN_DIVISOR = 4
#: Largest relative baud-rate error accepted for the UART divisor.
BAUD_TOLERANCE = 0.02

# iCE40 sysCLOCK PLL operating ranges (Hz), SIMPLE feedback path.
_F_REF = (10_000_000, 133_000_000)
_F_PFD = (10_000_000, 133_000_000)
_F_VCO = (533_000_000, 1_066_000_000)
_F_OUT = (16_000_000, 275_000_000)
_DIVR = range(16)    # 4 bits
_DIVF = range(128)   # 7 bits
_DIVQ = range(1, 7)     # 3 bits; 0 and 7 are not valid with SIMPLE feedback


@dataclass(frozen=True)
class PLLConfig:
    """Divider settings of one iCE40 PLL in SIMPLE feedback mode.

    ``f_out = f_in * (divf + 1) / ((divr + 1) * 2**divq)``.

    Parameters
    ----------
    f_in_hz : int
        Reference clock frequency.
    divr, divf, divq : int
        Reference, feedback and output dividers, as written to the primitive.
    filter_range : int
        Loop filter setting for the phase detector frequency.
    """

    f_in_hz: int
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self) -> Fraction:
        """Phase detector frequency (Hz)."""
        return Fraction(self.f_in_hz, self.divr + 1)

    @property
    def f_vco(self) -> Fraction:
        """VCO frequency (Hz)."""
        return self.f_pfd * (self.divf + 1)

    @property
    def f_out(self) -> Fraction:
        """Output frequency (Hz), exact."""
        return self.f_vco / (1 << self.divq)

    @property
    def f_out_hz(self) -> int:
        """Output frequency rounded to a whole number of Hz."""
        return round(self.f_out)

    def check(self) -> None:
        """Raise :exc:`ValueError` if a divider or frequency is outside the PLL's ranges."""
        for name, value, valid in (("DIVR", self.divr, _DIVR), ("DIVF", self.divf, _DIVF),
                                   ("DIVQ", self.divq, _DIVQ)):
            if value not in valid:
                raise ValueError(f"PLL {name}={value} outside {valid.start}..{valid.stop - 1}")
        for name, value, (lo, hi) in (("reference", self.f_in_hz, _F_REF),
                                      ("PFD", self.f_pfd, _F_PFD),
                                      ("VCO", self.f_vco, _F_VCO),
                                      ("output", self.f_out, _F_OUT)):
            if not lo <= value <= hi:
                raise ValueError(f"PLL {name} frequency {float(value) / 1e6:.3f} MHz outside "
                                 f"{lo / 1e6:g}..{hi / 1e6:g} MHz")
        if self.filter_range != _filter_range(self.f_pfd):
            raise ValueError(f"PLL FILTER_RANGE={self.filter_range} does not suit a "
                             f"{float(self.f_pfd) / 1e6:.3f} MHz PFD frequency")

    def __str__(self):
        return (f"{self.f_in_hz / 1e6:g} MHz -> {float(self.f_out) / 1e6:.4f} MHz "
                f"(DIVR={self.divr} DIVF={self.divf} DIVQ={self.divq} "
                f"FILTER_RANGE={self.filter_range}, VCO {float(self.f_vco) / 1e6:.1f} MHz)")


def _filter_range(f_pfd: Fraction) -> int:
    """Loop filter setting for a phase detector frequency (iCE40 PLL usage guide)."""
    mhz = f_pfd / 1_000_000
    for limit, setting in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if mhz < limit:
            return setting
    return 6


def ice40_pll(f_in_hz: int, f_out_hz: int, *, tolerance: float = 0.01) -> PLLConfig:
    """Find the PLL dividers that come closest to ``f_out_hz``.

    Searches all legal (DIVR, DIVF, DIVQ) triples; among equally close ones the
    smallest dividers win (the same choice as ``icepll``).

    Parameters
    ----------
    f_in_hz : int
        Reference clock frequency.
    f_out_hz : int
        Wanted output frequency.
    tolerance : float
        Largest accepted relative error of the achieved frequency.

    Returns
    -------
    PLLConfig
        Checked divider settings.

    Raises
    ------
    ValueError
        If no setting comes within ``tolerance`` of ``f_out_hz``.
    """
    lo, hi = _F_OUT
    if not lo <= f_out_hz <= hi:
        raise ValueError(f"PLL output {f_out_hz / 1e6:g} MHz outside "
                         f"{lo / 1e6:g}..{hi / 1e6:g} MHz")
    best: PLLConfig | None = None
    best_err: Fraction | None = None
    for divr in _DIVR:
        f_pfd = Fraction(f_in_hz, divr + 1)
        if not _F_PFD[0] <= f_pfd <= _F_PFD[1]:
            continue
        for divf in _DIVF:
            f_vco = f_pfd * (divf + 1)
            if not _F_VCO[0] <= f_vco <= _F_VCO[1]:
                continue
            for divq in _DIVQ:
                f_out = f_vco / (1 << divq)
                if not _F_OUT[0] <= f_out <= _F_OUT[1]:
                    continue
                err = abs(f_out - f_out_hz)
                if best_err is None or err < best_err:
                    best_err = err
                    best = PLLConfig(f_in_hz, divr, divf, divq, _filter_range(f_pfd))
    if best is None or best_err > tolerance * f_out_hz:
        near = "" if best is None else f"; nearest is {float(best.f_out) / 1e6:.4f} MHz"
        raise ValueError(f"no PLL setting makes {f_out_hz / 1e6:g} MHz from "
                         f"{f_in_hz / 1e6:g} MHz within {tolerance:.1%}{near}")
    best.check()
    return best


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


def clock_plan(params: EngineParams, baud: int = 3_000_000, *,
               clock_hz: int | None = None) -> tuple[EngineParams, PLLConfig, int]:
    """Clocking of the iCEBreaker top level, checked.

    Parameters
    ----------
    params : EngineParams
        Engine parameters; ``params.clock_hz`` is the wanted clock.
    baud : int
        UART bit rate.
    clock_hz : int or None
        Wanted clock, overriding ``params.clock_hz``.

    Returns
    -------
    tuple
        ``(params, pll, divisor)``: the parameters with ``clock_hz`` set to the
        frequency the PLL makes, the PLL settings, and the UART clocks per bit.

    Raises
    ------
    ValueError
        If the PLL cannot make the clock or the UART cannot run at ``baud``.
    """
    wanted = params.clock_hz if clock_hz is None else clock_hz
    pll = ice40_pll(CLK_IN_HZ, wanted)
    params = replace(params, clock_hz=pll.f_out_hz)
    return params, pll, uart_divisor(params.clock_hz, baud)


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


class ICEBreakerTop(Elaboratable):
    """iCEBreaker top level: PLL, reset, UART and the board core.

    Parameters
    ----------
    params : EngineParams
        Engine parameters. Their ``clock_hz`` is the wanted engine clock unless
        ``clock_hz`` is given; :attr:`params` holds a copy whose ``clock_hz`` is
        the frequency the PLL really makes.
    baud : int
        UART bit rate to the FTDI (3 Mbaud is safe with the FT2232H).
    clock_hz : int or None
        Wanted engine clock; overrides ``params.clock_hz``.
    core : Elaboratable or None
        The design behind the UART, with ``rx: In(stream.Signature(8))`` and
        ``tx: Out(stream.Signature(8))``. Defaults to
        :class:`ziphalp.hw.core.BoardCore` built from :attr:`params`.

    Attributes
    ----------
    params : EngineParams
        Parameters with ``clock_hz`` set to the achieved PLL frequency.
    pll : PLLConfig
        PLL divider settings.
    divisor : int
        Clock cycles per UART bit.
    """

    #: Platform resource of the oscillator (a :data:`CLK_IN_HZ` clock on the PLL pad).
    clk_resource = "clk12"

    def __init__(self, params: EngineParams, baud: int = 3_000_000, *,
                 clock_hz: int | None = None, core: Elaboratable | None = None):
        self.params, self.pll, self.divisor = clock_plan(params, baud, clock_hz=clock_hz)
        self.baud = baud
        self._core = core

    def elaborate(self, platform) -> Module:
        if platform is None:
            raise TypeError("ICEBreakerTop needs a platform (ICEBreakerPlatform)")
        m = Module()
        clk_res = platform.lookup(self.clk_resource, 0)
        if clk_res.clock is None or clk_res.clock.frequency != CLK_IN_HZ:
            raise ValueError(f"{self.clk_resource} must be a {CLK_IN_HZ / 1e6:g} MHz clock")

        # --- clock: oscillator pad -> PLL -> global network ---------------------------
        clk_pad = platform.request(self.clk_resource, 0, dir="-")
        clk = Signal()
        lock = Signal()
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_PLLOUT_SELECT="GENCLK",
            p_DIVR=Const(self.pll.divr, 4),
            p_DIVF=Const(self.pll.divf, 7),
            p_DIVQ=Const(self.pll.divq, 3),
            p_FILTER_RANGE=Const(self.pll.filter_range, 3),
            io_PACKAGEPIN=clk_pad.io,
            i_RESETB=Const(1),
            i_BYPASS=Const(0),
            o_PLLOUTGLOBAL=clk,
            o_LOCK=lock,
        )
        platform.add_clock_constraint(clk, self.params.clock_hz)

        # --- reset: held until lock, then RESET_HOLD_S more; the button restarts it --
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        m.submodules.button = button = io.Buffer("i", platform.request("button", 0, dir="-"))
        hold = max(1, math.ceil(RESET_HOLD_S * self.params.clock_hz))
        m.submodules.reset_hold = reset_hold = DomainRenamer("por")(ResetHold(hold))
        m.d.comb += [reset_hold.lock.eq(lock), reset_hold.restart.eq(button.i)]
        ready = reset_hold.ready

        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("sync").eq(clk), ResetSignal("sync").eq(~ready)]

        # --- UART <-> board core ------------------------------------------------------
        from .uart import UARTRx, UARTTx

        core = self._core
        if core is None:
            from .core import BoardCore
            core = BoardCore(self.params)
        m.submodules.core = core
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)

        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.uart_rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.d.comb += [
            uart_rx.line.eq(rx_pin.i),      # UARTRx synchronises the line itself
            tx_pin.o.eq(uart_tx.line),
        ]
        wiring.connect(m, uart_rx.stream, core.rx)
        wiring.connect(m, core.tx, uart_tx.stream)

        # --- LEDs: green when running, red lit for a window with UART traffic --------
        m.submodules.led_g = led_g = io.Buffer("o", platform.request("led_g", 0, dir="-"))
        m.submodules.led_r = led_r_pin = io.Buffer("o", platform.request("led_r", 0, dir="-"))
        m.d.comb += led_g.o.eq(ready)
        traffic = Signal()
        m.d.comb += traffic.eq((core.rx.valid & core.rx.ready) | (core.tx.valid & core.tx.ready))
        prescale = Signal((self.params.clock_hz // 50).bit_length())   # window of ~20 ms
        window_end = Signal()
        seen = Signal()
        led_r = Signal()
        m.d.sync += Cat(prescale, window_end).eq(prescale + 1)
        with m.If(window_end):
            m.d.sync += [led_r.eq(seen | traffic), seen.eq(0)]
        with m.Elif(traffic):
            m.d.sync += seen.eq(1)
        m.d.comb += led_r_pin.o.eq(led_r)

        return m
